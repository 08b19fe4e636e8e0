"""Every error a user can provoke: its type and a message that names the culprit."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from altdiff_modeling import AltDiffError, AltDiffLayer, InputError, ProblemError, solve_qp


@pytest.fixture
def simple():
    x = cp.Variable(3, name="x")
    q = cp.Parameter(3, name="q")
    h = cp.Parameter(2, name="h")
    G = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h])
    layer = AltDiffLayer(problem, parameters=[q, h], variables=[x])
    return problem, layer, x, q, h


def _q_h(batch: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(*batch, 3, dtype=torch.float64), torch.ones(*batch, 2, dtype=torch.float64)


def test_errors_share_a_base_class():
    for error in (InputError, ProblemError):
        assert issubclass(error, AltDiffError)
        assert issubclass(error, ValueError)


# -- construction -----------------------------------------------------------------------


def test_parameter_missing_from_list(simple):
    problem, _, x, q, _ = simple
    with pytest.raises(ProblemError, match=r"in the problem but not listed: \['h'\]"):
        AltDiffLayer(problem, parameters=[q], variables=[x])


def test_parameter_not_in_problem(simple):
    problem, _, x, q, h = simple
    stray = cp.Parameter(2, name="stray")
    with pytest.raises(ProblemError, match=r"not in the problem: \['stray'\]"):
        AltDiffLayer(problem, parameters=[q, h, stray], variables=[x])


def test_duplicate_parameter(simple):
    problem, _, x, q, h = simple
    with pytest.raises(
        ProblemError,
        match=r"parameter 'q' appears twice in parameters \(again at parameters\[2\]\)",
    ):
        AltDiffLayer(problem, parameters=[q, h, q], variables=[x])


def test_parameters_not_a_list(simple):
    problem, _, x, q, _ = simple
    with pytest.raises(ProblemError, match="parameters must be a list"):
        AltDiffLayer(problem, parameters=q, variables=[x])


def test_parameter_entry_of_wrong_type(simple):
    problem, _, x, q, _ = simple
    with pytest.raises(
        ProblemError, match=r"parameters\[1\] must be a cvxpy Parameter, got ndarray"
    ):
        AltDiffLayer(problem, parameters=[q, np.ones(2)], variables=[x])


def test_variable_not_in_problem(simple):
    problem, _, _, q, h = simple
    other = cp.Variable(2, name="other")
    with pytest.raises(ProblemError, match=r"variables \['other'\] do not appear in the problem"):
        AltDiffLayer(problem, parameters=[q, h], variables=[other])


def test_not_a_problem():
    with pytest.raises(ProblemError, match=r"problem must be a cvxpy\.Problem, got str"):
        AltDiffLayer("minimize x", parameters=[], variables=[])


def test_not_dpp_names_the_constraint():
    x = cp.Variable(2, name="x")
    a, s = cp.Parameter(2, name="a"), cp.Parameter(name="s", nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= 0, s * a @ x == 1])
    with pytest.raises(ProblemError, match=r"not DPP.*constraint 1"):
        AltDiffLayer(problem, parameters=[a, s], variables=[x])


def test_not_dcp_names_the_objective():
    x = cp.Variable(2, name="x")
    q = cp.Parameter(2, name="q")
    problem = cp.Problem(cp.Minimize(-cp.sum_squares(x) + q @ x), [x >= 0])
    with pytest.raises(ProblemError, match=r"not DCP.*the objective"):
        AltDiffLayer(problem, parameters=[q], variables=[x])


@pytest.mark.parametrize(
    ("make_constraint", "atom"),
    [
        (lambda x: cp.exp(x[0]) <= 2, r"cp\.exp\(x\[0\]\)"),
        (lambda x: cp.entr(x[0]) >= -1, r"cp\.entr\(x\[0\]\)"),
        (lambda x: cp.norm(x, 2) + cp.exp(x[1]) <= 3, r"cp\.exp\(x\[1\]\)"),
    ],
)
def test_unsupported_cone_in_a_constraint_is_named(make_constraint, atom):
    x = cp.Variable(2, name="x")
    q = cp.Parameter(2, name="q")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x), [x >= -1, make_constraint(x)])
    with pytest.raises(
        ProblemError,
        match=rf"cone that is not supported.*: {atom} in constraint 1 \(.*\) needs an "
        r"exponential cone \(ExpCone\)\.$",
    ):
        AltDiffLayer(problem, parameters=[q], variables=[x])


def test_unsupported_cone_in_the_objective_names_its_atom_only():
    x = cp.Variable(2, name="x")
    q = cp.Parameter(2, name="q")
    objective = cp.norm(x, 2) + cp.sum(cp.exp(x)) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [x >= -1])
    with pytest.raises(
        ProblemError,
        match=r"cone that is not supported.*: cp\.exp\(x\) in the objective needs an "
        r"exponential cone \(ExpCone\)\.$",
    ):
        AltDiffLayer(problem, parameters=[q], variables=[x])


@pytest.mark.parametrize(
    ("make_problem", "expected"),
    [
        # inside the ball: the unconstrained minimizer -q / 2
        (
            lambda x, q: cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x), [cp.norm(x, 2) <= 1]),
            [-0.75, 0.2],
        ),
        # x0 = -1, and x1 / sqrt(1 + x1^2) = 0.4
        (
            lambda x, q: cp.Problem(cp.Minimize(cp.norm(x, 2) + q @ x), [x >= -1]),
            [-1.0, 0.4 / np.sqrt(0.84)],
        ),
        # x0^1.5 needs x0 >= 0: x0 = 0, x1 = -q1 / 2
        (
            lambda x, q: cp.Problem(
                cp.Minimize(cp.sum_squares(x) + q @ x), [x >= -1, cp.power(x[0], 1.5) <= 2]
            ),
            [0.0, 0.2],
        ),
    ],
)
def test_second_order_cone_problems_are_supported(make_problem, expected):
    x = cp.Variable(2, name="x")
    q = cp.Parameter(2, name="q")
    layer = AltDiffLayer(make_problem(x, q), parameters=[q], variables=[x])
    value = torch.tensor(
        [1.5, -0.4], dtype=torch.float64
    )  # ||q|| > 1: the second problem is bounded by x >= -1
    (solution,) = layer(value, solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9})
    np.testing.assert_allclose(solution.numpy(), expected, atol=1e-7)


def test_psd_constraint_is_rejected():
    X = cp.Variable((2, 2), symmetric=True, name="X")
    C = cp.Parameter((2, 2), name="C")
    problem = cp.Problem(cp.Minimize(cp.trace(C @ X)), [X >> 0, cp.trace(X) == 1])
    with pytest.raises(ProblemError, match=r"cone that is not supported.*constraint 0"):
        AltDiffLayer(problem, parameters=[C], variables=[X])


@pytest.mark.parametrize("attribute", ["integer", "boolean"])
def test_integer_variables_are_rejected(attribute):
    x = cp.Variable(2, name="x", **{attribute: True})
    q = cp.Parameter(2, name="q")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x), [x >= 0])
    with pytest.raises(ProblemError, match=f"variable 'x' is {attribute}"):
        AltDiffLayer(problem, parameters=[q], variables=[x])


def test_problem_without_variables():
    q = cp.Parameter(2, name="q")
    problem = cp.Problem(cp.Minimize(cp.sum(q)))
    with pytest.raises(ProblemError, match="no variables"):
        AltDiffLayer(problem, parameters=[q], variables=[])


def test_unknown_solver_args_key_at_construction(simple):
    problem, _, x, q, h = simple
    with pytest.raises(InputError, match=r"unknown solver_args key\(s\) \['tol'\]"):
        AltDiffLayer(problem, parameters=[q, h], variables=[x], solver_args={"tol": 1e-3})


# -- call time --------------------------------------------------------------------------


def test_wrong_number_of_tensors(simple):
    _, layer, *_ = simple
    q, _ = _q_h()
    with pytest.raises(InputError, match=r"takes 2 tensor\(s\).*\['q', 'h'\].*called with 1"):
        layer(q)


def test_wrong_shape_names_parameter_and_expected_shape(simple):
    _, layer, *_ = simple
    q, _ = _q_h()
    with pytest.raises(
        InputError,
        match=r"Invalid parameter shape for parameter 'h' \(parameters\[1\]\): expected \(2,\).*got \(3,\)",
    ):
        layer(q, torch.ones(3, dtype=torch.float64))


def test_wrong_rank(simple):
    _, layer, *_ = simple
    q, _ = _q_h()
    with pytest.raises(
        InputError,
        match=r"Invalid parameter dimensionality for parameter 'h'.*expected 1 or 2 dimensions.*got 3 \(shape \(1, 1, 2\)\)",
    ):
        layer(q, torch.ones(1, 1, 2, dtype=torch.float64))


def test_inconsistent_batch_sizes(simple):
    _, layer, *_ = simple
    q, _ = _q_h((4,))
    _, h = _q_h((5,))
    with pytest.raises(InputError, match=r"Inconsistent batch sizes \{'q': 4, 'h': 5\}"):
        layer(q, h)


def test_integer_inputs_compute_in_the_default_float_dtype(simple, unlimited_polishing):
    # torch's promotion: integers next to float64 compute in float64; integers alone in
    # torch's default dtype (float32 here). The calls are compared to rounding, so the
    # solver's time-based choices are fixed (`unlimited_polishing`).
    _, layer, *_ = simple
    _, h = _q_h()
    q_int = torch.tensor([1, -2, 0])
    (x_float,) = layer(q_int.double(), h)
    (x_mixed,) = layer(q_int, h)
    assert x_mixed.dtype == torch.float64
    torch.testing.assert_close(x_mixed, x_float)
    (x_ints,) = layer(q_int, torch.ones(2, dtype=torch.int32))
    assert x_ints.dtype == torch.get_default_dtype()
    torch.testing.assert_close(x_ints.double(), x_float, atol=1e-3, rtol=0)


def test_mixed_float_dtypes_compute_in_the_widest(simple):
    _, layer, *_ = simple
    q, _ = _q_h()
    q = q.clone().requires_grad_()
    h32 = torch.ones(2, dtype=torch.float32, requires_grad=True)
    (x,) = layer(q, h32)
    assert x.dtype == torch.float64
    (x_ref,) = layer(q.detach(), h32.detach().double())
    torch.testing.assert_close(x.detach(), x_ref)
    x.sum().backward()
    assert h32.grad is not None and h32.grad.dtype == torch.float32  # each input's own dtype
    assert h32.dtype == torch.float32  # the input itself is not converted


def test_not_a_tensor(simple):
    _, layer, *_ = simple
    _, h = _q_h()
    with pytest.raises(
        InputError, match=r"parameter 'q' must be given as a torch\.Tensor, got list"
    ):
        layer([0.0, 0.0, 0.0], h)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_names_parameter(simple, bad):
    _, layer, *_ = simple
    q, h = _q_h()
    h[1] = bad
    with pytest.raises(InputError, match="parameter 'h' contains NaN or Inf"):
        layer(q, h)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ({"eps_abs": -1.0}, r"solver_args\['eps_abs'\] must be a finite number >= 0"),
        ({"max_iter": 0}, r"solver_args\['max_iter'\] must be an integer >= 1"),
        ({"max_iter": 10.5}, r"solver_args\['max_iter'\] must be an integer >= 1"),
        ({"rho": 0.0}, r"solver_args\['rho'\] must be a finite number > 0"),
        ({"mode": "sideways"}, r"solver_args\['mode'\] must be one of"),
        ({"alpha": 2.5}, r"solver_args\['alpha'\] must lie in \(0, 2\)"),
        ({"eps_abs": 0.0, "eps_rel": 0.0}, "cannot both be 0"),
        ({"bogus": 1}, r"unknown solver_args key\(s\) \['bogus'\]"),
    ],
)
def test_invalid_solver_args_at_call(simple, args, pattern):
    _, layer, *_ = simple
    with pytest.raises(InputError, match=pattern):
        layer(*_q_h(), solver_args=args)


def test_solver_args_not_a_dict(simple):
    _, layer, *_ = simple
    with pytest.raises(InputError, match="solver_args must be a dict, got list"):
        layer(*_q_h(), solver_args=[("eps_abs", 1e-3)])


# -- solve_qp ---------------------------------------------------------------------------


def _qp(n: int = 3) -> dict[str, torch.Tensor]:
    return {
        "P": torch.eye(n, dtype=torch.float64),
        "q": torch.zeros(n, dtype=torch.float64),
        "G": torch.eye(n, dtype=torch.float64),
        "h": torch.ones(n, dtype=torch.float64),
    }


def test_solve_qp_wrong_shape_names_block():
    data = _qp()
    data["h"] = torch.ones(4, dtype=torch.float64)
    with pytest.raises(InputError, match=r"h has shape \(4,\).*must be \(3,\)"):
        solve_qp(**data)


def test_solve_qp_half_a_pair():
    data = _qp()
    with pytest.raises(InputError, match="A and b must be given together"):
        solve_qp(**data, A=torch.ones(1, 3, dtype=torch.float64))


def test_solve_qp_inconsistent_batch():
    data = _qp()
    data["q"] = torch.zeros(2, 3, dtype=torch.float64)
    data["h"] = torch.ones(5, 3, dtype=torch.float64)
    with pytest.raises(InputError, match=r"inconsistent batch sizes \{'q': 2, 'h': 5\}"):
        solve_qp(**data)


def test_solve_qp_nan_names_block():
    data = _qp()
    data["P"][0, 0] = float("nan")
    with pytest.raises(InputError, match="block P contains NaN or Inf"):
        solve_qp(**data)


def test_solve_qp_mixed_dtype_computes_in_the_widest():
    data = _qp()
    x_ref = solve_qp(**data)
    data["G"] = data["G"].float()
    x = solve_qp(**data)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, x_ref)


def test_inputs_are_not_modified(simple):
    _, layer, *_ = simple
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    h = torch.ones(2, dtype=torch.float64, requires_grad=True)
    q_before, h_before = q.detach().clone(), h.detach().clone()
    (x,) = layer(q, h)
    x.sum().backward()
    assert torch.equal(q.detach(), q_before)
    assert torch.equal(h.detach(), h_before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_alone_is_rejected(simple, dtype):
    _, layer, *_ = simple
    with pytest.raises(
        InputError,
        match=rf"parameter 'q' \({dtype}\).*would compute in {dtype}.*float32 or float64",
    ):
        layer(torch.zeros(3, dtype=dtype), torch.ones(2, dtype=dtype))


def test_half_precision_next_to_float32_computes_in_float32(simple):
    _, layer, *_ = simple
    (x,) = layer(torch.zeros(3, dtype=torch.float16), torch.ones(2, dtype=torch.float32))
    assert x.dtype == torch.float32


def test_complex_dtype_is_rejected(simple):
    _, layer, *_ = simple
    with pytest.raises(InputError, match=r"parameter 'q': complex dtypes are not supported"):
        layer(torch.zeros(3, dtype=torch.complex128), torch.ones(2, dtype=torch.float64))
