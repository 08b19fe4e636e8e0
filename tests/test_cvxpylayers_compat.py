"""Programs written for cvxpylayers 1.2 run with only the import changed.

Each ``program_*`` function's body is a cvxpylayers program, verbatim; its argument
``CvxpyLayer`` stands for the import line, which is the only thing a user changes:

    from cvxpylayers.torch import CvxpyLayer                     # before
    from altdiff_modeling import AltDiffLayer as CvxpyLayer      # after

Each test runs the program with both classes and compares what it returns (solutions,
dual variables, gradients) between them and with CVXPY + Clarabel; the error cases
are matched by cvxpylayers' own messages, for both. Where the libraries differ on
purpose (float32 outputs stay float32 here; solver-specific keys and ``solver=`` are
accepted with a warning; ``gp=True`` is rejected; a call's ``warm_start=True`` works
with every solver), the test says so.
"""

from __future__ import annotations

import logging
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import torch
from cvxpylayers.torch import CvxpyLayer as CvxpyLayersLayer
from reference import solve_reference

from altdiff_modeling import AltDiffLayer, ProblemError, SolverWarning
from altdiff_modeling._settings import parse_solver_args

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
BOTH = pytest.mark.parametrize(
    "CvxpyLayer", [CvxpyLayersLayer, AltDiffLayer], ids=["cvxpylayers", "altdiff"]
)
# cvxpylayers' SCS at this tolerance agrees with Clarabel to about 1e-8 on these problems.
TIGHT = {"eps": 1e-10, "max_iters": 100_000}


def _run_both(program, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The program's result with cvxpylayers and with this library (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = program(CvxpyLayersLayer, *args, **kwargs)
        ours = program(AltDiffLayer, *args, **kwargs)
    return theirs, ours


def _close(a: Any, b: Any, tol: float = 1e-6) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(
            torch.as_tensor(u, dtype=F64), torch.as_tensor(v, dtype=F64), atol=tol, rtol=tol
        )


def _qp(rng: np.random.Generator, n: int = 6, m: int = 8):
    """A QP with a parameterized linear term and right-hand side, and feasible data."""
    x = cp.Variable(n, name="x")
    q = cp.Parameter(n, name="q")
    h = cp.Parameter(m, name="h")
    G = rng.standard_normal((m, n))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h])
    values = (rng.standard_normal(n), G @ rng.standard_normal(n) + 0.5)
    return problem, x, q, h, values


# -- 1. solver_args with cvxpylayers' keys --------------------------------------------


def program_solver_args(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(problem, parameters=[q, h], variables=[x])
    q_t = torch.tensor(q_val, requires_grad=True)
    h_t = torch.tensor(h_val, requires_grad=True)
    (sol,) = layer(
        q_t, h_t, solver_args={"eps": 1e-10, "max_iters": 100_000, "acceleration_lookback": 0}
    )
    (sol * torch.arange(1.0, 7.0, dtype=torch.float64)).sum().backward()
    return sol.detach(), q_t.grad, h_t.grad


def test_solver_args_with_cvxpylayers_keys(rng):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    theirs, ours = _run_both(program_solver_args, problem, x, q, h, q_val, h_val)
    _close(theirs, ours)
    (reference,) = solve_reference(problem, {q: q_val, h: h_val}, [x])
    assert np.abs(ours[0].numpy() - reference).max() < 1e-8
    # The keys reach the solver under this library's names.
    settings = parse_solver_args({"eps": 1e-10, "max_iters": 7})
    assert (settings.eps_abs, settings.eps_rel, settings.max_iter) == (1e-10, 1e-10, 7)
    layer = AltDiffLayer(problem, parameters=[q, h], variables=[x])
    _, info = layer(
        torch.tensor(q_val),
        torch.tensor(h_val),
        solver_args={"max_iters": 2, "on_failure": "nan"},
        return_info=True,
    )
    assert int(info.iterations.max()) <= 2
    # The key only SCS reads is accepted, with one warning that names it.
    with pytest.warns(SolverWarning, match=r"\['acceleration_lookback'\].*ignored") as record:
        program_solver_args(AltDiffLayer, problem, x, q, h, q_val, h_val)
    assert len([w for w in record if issubclass(w.category, SolverWarning)]) == 1


def program_diffcp_keys(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(problem, [q, h], [x], solver_args={"n_jobs_forward": 1, "mode": "dense"})
    q_t = torch.tensor(q_val, requires_grad=True)  # diffcp reads "mode" when differentiating
    (sol,) = layer(q_t, torch.tensor(h_val), solver_args={"n_jobs_backward": 1})
    sol.sum().backward()
    return sol.detach(), q_t.grad


def test_diffcp_keys_are_accepted_and_a_key_neither_knows_is_not(rng):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    theirs, ours = _run_both(program_diffcp_keys, problem, x, q, h, q_val, h_val)
    _close(theirs, ours, tol=1e-3)  # both at their default tolerances
    with pytest.warns(SolverWarning, match=r"n_jobs_forward.*mode='dense'"):
        AltDiffLayer(problem, [q, h], [x], solver_args={"n_jobs_forward": 1, "mode": "dense"})
    layer = AltDiffLayer(problem, [q, h], [x])
    with pytest.raises(ValueError, match=r"unknown solver_args key\(s\) \['epsilon'\]"):
        layer(torch.tensor(q_val), torch.tensor(h_val), solver_args={"epsilon": 1e-6})


# -- 2. constructor arguments: solver=, gp=False, verbose=True, canon_backend ---------


def program_constructor_arguments(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(
        problem,
        parameters=[q, h],
        variables=[x],
        solver="DIFFCP",
        gp=False,
        canon_backend="SCIPY",
        solver_args=TIGHT,
    )
    positional = CvxpyLayer(problem, [q, h], [x], "DIFFCP", False, False, None, TIGHT)
    (a,) = layer(torch.tensor(q_val), torch.tensor(h_val))
    (b,) = positional(torch.tensor(q_val), torch.tensor(h_val))
    return a, b


def test_constructor_arguments(rng):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    theirs, ours = _run_both(program_constructor_arguments, problem, x, q, h, q_val, h_val)
    _close(theirs, ours)
    with pytest.warns(SolverWarning, match=r"solver='DIFFCP' is ignored") as record:
        AltDiffLayer(problem, parameters=[q, h], variables=[x], solver="DIFFCP")
    assert len(record) == 1


def test_gp_true_is_a_problem_error_that_says_why():
    x = cp.Variable(pos=True, name="x")
    a = cp.Parameter(pos=True, name="a")
    problem = cp.Problem(cp.Minimize(x + a / x))
    CvxpyLayersLayer(problem, parameters=[a], variables=[x], gp=True)  # fine there
    with pytest.raises(ProblemError, match=r"geometric programs \(gp=True\) are not supported"):
        AltDiffLayer(problem, parameters=[a], variables=[x], gp=True)
    assert issubclass(ProblemError, ValueError)


def program_verbose(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(problem, parameters=[q, h], variables=[x], verbose=True)
    q_t = torch.tensor(np.stack([q_val, -q_val]), requires_grad=True)
    (sol,) = layer(q_t, torch.tensor(h_val))
    sol.sum().backward()
    return sol.detach(), q_t.grad


def test_verbose_logs_each_call(rng, caplog, capsys):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    with caplog.at_level(logging.INFO, logger="altdiff_modeling"):
        theirs, ours = _run_both(program_verbose, problem, x, q, h, q_val, h_val)
    _close(theirs, ours, tol=1e-3)
    records = [r.getMessage() for r in caplog.records if r.name == "altdiff_modeling"]
    assert any(m.startswith("AltDiffLayer built in") for m in records)
    (call,) = [m for m in records if m.startswith("AltDiffLayer: batch 2")]
    assert re.search(r"status: solved 2; ADMM iterations: median \d+ .*solve [\d.]+ ms", call)
    (backward,) = [m for m in records if m.startswith("AltDiffLayer backward")]
    assert re.search(r"Alt-Diff iterations \d+, [\d.]+ ms", backward)
    assert "AltDiffLayer" not in capsys.readouterr().out  # logged, never printed


# -- 3. dtypes: float32, mixed and integer inputs ------------------------------------


def program_float32(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(problem, parameters=[q, h], variables=[x])
    q_t = torch.tensor(q_val, dtype=torch.float32, requires_grad=True)
    h_t = torch.tensor(h_val, dtype=torch.float32, requires_grad=True)
    (sol,) = layer(q_t, h_t, solver_args={"eps": 1e-8})
    sol.sum().backward()
    return sol, q_t.grad


def test_float32_inputs(rng):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    theirs, ours = _run_both(program_float32, problem, x, q, h, q_val, h_val)
    assert theirs[0].dtype == torch.float64  # cvxpylayers always returns float64
    assert ours[0].dtype == torch.float32  # here, float32 inputs give float32 outputs
    assert ours[1].dtype == torch.float32
    _close([t.detach() for t in theirs], [o.detach() for o in ours], tol=1e-4)
    # eps = 1e-8 is out of float32's reach: raised to 1e-6, with a warning that says so.
    with pytest.warns(SolverWarning, match=r"eps_abs=1e-08, eps_rel=1e-08 are below"):
        program_float32(AltDiffLayer, problem, x, q, h, q_val, h_val)


def program_mixed_dtypes(CvxpyLayer, problem, x, q, h, q_val, h_val):
    layer = CvxpyLayer(problem, parameters=[q, h], variables=[x])
    q_t = torch.tensor(q_val, dtype=torch.float32, requires_grad=True)
    h_t = torch.tensor(h_val, dtype=torch.float64, requires_grad=True)
    (sol,) = layer(q_t, h_t, solver_args=TIGHT)
    sol.sum().backward()
    (from_ints,) = layer(torch.round(q_t.detach()).to(torch.int64), h_t.detach(), solver_args=TIGHT)
    return sol.detach(), q_t.grad, h_t.grad, from_ints


def test_mixed_and_integer_inputs(rng):
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    theirs, ours = _run_both(program_mixed_dtypes, problem, x, q, h, q_val, h_val)
    assert ours[0].dtype == F64 and ours[3].dtype == F64  # the widest input's dtype
    assert ours[1].dtype == torch.float32  # each gradient in its input's dtype
    _close(theirs, ours, tol=1e-5)  # q is float32: its rounding is in both


# -- 4. errors, matched by cvxpylayers' messages ------------------------------------


@BOTH
def test_construction_errors_match_cvxpylayers_messages(CvxpyLayer, rng):
    problem, x, q, h, _ = _qp(rng)
    with pytest.raises(ValueError, match=r"must exactly match problem\.parameters"):
        CvxpyLayer(problem, parameters=[q], variables=[x])
    with pytest.raises(ValueError, match=r"must be a subset of problem\.variables"):
        CvxpyLayer(problem, parameters=[q, h], variables=[cp.Variable(2)])


@BOTH
@pytest.mark.parametrize(
    ("shapes", "phrase"),
    [
        (((6,),), "A tensor must be provided for each CVXPY parameter"),
        (((6,), (7,)), "Invalid parameter shape"),
        (((6,), (3, 7)), "Invalid parameter shape"),
        (((6,), (1, 1, 8)), "Invalid parameter dimensionality"),
        (((4, 6), (5, 8)), "Inconsistent batch sizes"),
    ],
)
def test_call_errors_match_cvxpylayers_messages(CvxpyLayer, rng, shapes, phrase):
    problem, x, q, h, _ = _qp(rng)
    layer = CvxpyLayer(problem, parameters=[q, h], variables=[x])
    with pytest.raises(ValueError, match=phrase):
        layer(*(torch.zeros(shape, dtype=F64) for shape in shapes))


def test_messages_name_the_parameter_and_shape(rng):
    problem, x, q, h, _ = _qp(rng)
    layer = AltDiffLayer(problem, parameters=[q, h], variables=[x])
    with pytest.raises(
        ValueError, match=r"parameter 'h' \(parameters\[1\]\): expected \(8,\).*got \(7,\)"
    ):
        layer(torch.zeros(6, dtype=F64), torch.zeros(7, dtype=F64))


# -- 5. dual variables as outputs ----------------------------------------------------


def program_duals(CvxpyLayer, rng_values):
    n, p, m = 5, 2, 7
    A_val, G_val, q_val, x0 = rng_values
    x = cp.Variable(n)
    q = cp.Parameter(n)
    b = cp.Parameter(p)
    h = cp.Parameter(m)
    equality = A_val @ x == b
    inequality = G_val @ x <= h
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [equality, inequality])
    layer = CvxpyLayer(
        problem,
        parameters=[q, b, h],
        variables=[x, equality.dual_variables[0], inequality.dual_variables[0]],
    )
    params = [
        torch.tensor(q_val, requires_grad=True),
        torch.tensor(A_val @ x0, requires_grad=True),
        torch.tensor(G_val @ x0 + 0.3, requires_grad=True),
    ]
    x_t, lam_t, nu_t = layer(*params, solver_args=TIGHT)
    (x_t.sum() + 2 * lam_t.sum() + 3 * nu_t.sum()).backward()
    return [x_t.detach(), lam_t.detach(), nu_t.detach()] + [p.grad for p in params]


def test_dual_variables_as_outputs(rng):
    values = (
        rng.standard_normal((2, 5)),
        rng.standard_normal((7, 5)),
        rng.standard_normal(5),
        rng.standard_normal(5),
    )
    theirs, ours = _run_both(program_duals, values)
    _close(theirs, ours)
    assert ours[2].min() >= -1e-8 and ours[2].max() > 1e-3  # some inequality is active


# -- 6. batching and broadcasting -----------------------------------------------------


def program_batched(CvxpyLayer, n, m, G_val, h_val, q_batch):
    x = cp.Variable(n)
    q = cp.Parameter(n)
    G = cp.Parameter((m, n))
    h = cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h])
    layer = CvxpyLayer(problem, parameters=[q, G, h], variables=[x])
    q_t = torch.tensor(q_batch, requires_grad=True)  # batched: (B, n)
    G_t = torch.tensor(G_val, requires_grad=True)  # shared by the batch
    h_t = torch.tensor(h_val, requires_grad=True)
    (sol,) = layer(q_t, G_t, h_t, solver_args=TIGHT)
    sol.square().sum().backward()
    (single,) = layer(q_t[1].detach(), G_t.detach(), h_t.detach(), solver_args=TIGHT)
    return sol.detach(), q_t.grad, G_t.grad, h_t.grad, single


def test_batching_and_broadcasting(rng):
    n, m, batch = 4, 6, 5
    G_val = rng.standard_normal((m, n))
    h_val = G_val @ rng.standard_normal(n) + 0.2
    q_batch = rng.standard_normal((batch, n))
    theirs, ours = _run_both(program_batched, n, m, G_val, h_val, q_batch)
    assert ours[0].shape == (batch, n) and ours[4].shape == (n,)
    assert ours[2].shape == (m, n)  # the shared parameter's gradient sums over the batch
    _close(theirs, ours)
    torch.testing.assert_close(ours[0][1], ours[4], atol=1e-8, rtol=0)


# -- 7. familiar programs: least squares, sparsemax, an LP; warm starts --------------


def program_least_squares(CvxpyLayer, A_val, b_val):
    # The example of cvxpylayers' README.
    n, m = 2, 3
    x = cp.Variable(n)
    A = cp.Parameter((m, n))
    b = cp.Parameter(m)
    constraints = [x >= 0]
    objective = cp.Minimize(0.5 * cp.pnorm(A @ x - b, p=1))
    problem = cp.Problem(objective, constraints)
    assert problem.is_dpp()
    layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    A_tch = torch.tensor(A_val, requires_grad=True)
    b_tch = torch.tensor(b_val, requires_grad=True)
    (solution,) = layer(A_tch, b_tch, solver_args=TIGHT)
    solution.sum().backward()
    return solution.detach(), A_tch.grad, b_tch.grad


def test_readme_example(rng):
    A_val = rng.standard_normal((3, 2))
    b_val = A_val @ np.abs(rng.standard_normal(2)) + 0.1 * rng.standard_normal(3)
    theirs, ours = _run_both(program_least_squares, A_val, b_val)
    _close(theirs[:1], ours[:1])
    # The LP's gradient is defined where its solution is non-degenerate: compare there.
    _close(theirs[1:], ours[1:], tol=1e-4)


def program_sparsemax(CvxpyLayer, z_val):
    d = z_val.shape[1]
    x = cp.Variable(d)
    z = cp.Parameter(d)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - z)), [cp.sum(x) == 1, x >= 0])
    layer = CvxpyLayer(problem, parameters=[z], variables=[x])
    z_t = torch.tensor(z_val, requires_grad=True)
    (p,) = layer(z_t, solver_args=TIGHT)
    (p * torch.arange(d, dtype=torch.float64)).sum().backward()
    return p.detach(), z_t.grad


def _sparsemax(z: np.ndarray) -> np.ndarray:
    """The Euclidean projection of each row onto the simplex (Martins & Astudillo)."""
    s = -np.sort(-z, axis=1)
    k = np.arange(1, z.shape[1] + 1)
    cumulative = np.cumsum(s, axis=1) - 1
    support = (s - cumulative / k) > 0
    count = support.sum(axis=1, keepdims=True)
    tau = np.take_along_axis(cumulative, count - 1, axis=1) / count
    return np.maximum(z - tau, 0)


def test_sparsemax(rng):
    z_val = 2 * rng.standard_normal((4, 6))
    theirs, ours = _run_both(program_sparsemax, z_val)
    _close(theirs, ours)
    np.testing.assert_allclose(ours[0].numpy(), _sparsemax(z_val), atol=1e-8)


def test_warm_start_call_argument(rng):
    # cvxpylayers takes warm_start=True with its Moreau solver only; here with any.
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    layer = AltDiffLayer(problem, parameters=[q, h], variables=[x])
    q_t, h_t = torch.tensor(q_val), torch.tensor(h_val)
    (cold,), cold_info = layer(q_t, h_t, return_info=True)
    (warm,), warm_info = layer(q_t, h_t, warm_start=True, return_info=True)
    torch.testing.assert_close(warm, cold, atol=1e-6, rtol=0)
    assert int(warm_info.iterations.max()) < int(cold_info.iterations.max())
    with pytest.raises(ValueError, match="warm_start=True is only supported with solver='MOREAU'"):
        CvxpyLayersLayer(problem, parameters=[q, h], variables=[x])(q_t, h_t, warm_start=True)


def test_an_output_modified_in_place_leaves_the_next_warm_start_as_it_was(rng):
    # The outputs are the layer's own tensors: filling one does not move the point
    # that the next call starts from (the same iterates and iterations as without).
    problem, x, q, h, (q_val, h_val) = _qp(rng)
    q_t, h_t = torch.tensor(q_val), torch.tensor(h_val)
    runs = []
    for modify in (False, True):
        layer = AltDiffLayer(
            problem, parameters=[q, h], variables=[x], solver_args={"remember_active_sets": False}
        )
        (first,) = layer(q_t, h_t)
        if modify:
            first.fill_(1e3)
        (warm,), info = layer(q_t + 0.01, h_t, warm_start=True, return_info=True)
        runs.append((warm, int(info.iterations.max())))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    assert runs[1][1] == runs[0][1] > 0


def test_out_of_scope_problem_is_named_as_written():
    x = cp.Variable(3, name="x")
    y = cp.Parameter(3, name="y")
    r = cp.Parameter(nonneg=True, name="r")
    A = np.arange(60.0).reshape(20, 3) / 60
    objective = cp.norm(x - y, 2) + cp.sum(cp.exp(A @ x))
    problem = cp.Problem(cp.Minimize(objective), [x >= 0, x <= 1, cp.norm(x, 2) <= r])
    CvxpyLayersLayer(problem, parameters=[y, r], variables=[x])  # in cvxpylayers' scope
    with pytest.raises(ProblemError) as error:
        AltDiffLayer(problem, parameters=[y, r], variables=[x])
    message = str(error.value)
    # the exponential cone's atom, as written; not the second-order cones' (supported)
    assert "cp.exp(<(20, 3) array> @ x) in the objective needs an exponential cone" in message
    assert "norm" not in message and "constraint 2" not in message
    assert "param" not in message.replace("parameter", "")  # no auto-generated names
    assert "[[" not in message and "PnormApprox" not in message  # no arrays, no CVXPY forms


# -- 8. the migration guide's code runs ----------------------------------------------


def _guide_blocks() -> list[str]:
    text = (ROOT / "docs" / "migrating" / "cvxpylayers.md").read_text()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    return [
        textwrap.dedent("".join(line[len(indent) :] for line in body.splitlines(True)))
        for indent, body in blocks
    ]


def test_migration_guide_snippets_run():
    """Every ``python`` block of the guide runs; the side-by-side pair agrees."""
    blocks = _guide_blocks()
    assert len(blocks) >= 2
    results = []
    for block in blocks:
        namespace: dict[str, Any] = {}
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block, "docs/migrating/cvxpylayers.md", "exec"), namespace)
        results.append(namespace)
    pair = [i for i, block in enumerate(blocks) if "x_star" in block]
    assert len(pair) == 2
    cvxpylayers_run, altdiff_run = results[pair[0]], results[pair[1]]
    assert "from cvxpylayers.torch import CvxpyLayer" in blocks[pair[0]]
    # The second program is the first with only the import changed.
    assert blocks[pair[1]] == blocks[pair[0]].replace(
        "from cvxpylayers.torch import CvxpyLayer",
        "from altdiff_modeling import AltDiffLayer as CvxpyLayer",
    )
    torch.testing.assert_close(
        altdiff_run["x_star"].double(), cvxpylayers_run["x_star"].double(), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        altdiff_run["q_t"].grad.double(), cvxpylayers_run["q_t"].grad.double(), atol=1e-3, rtol=0
    )
