"""The default backward returns the Alt-Diff recursion's own limit on every call.

Its direct shortcuts (one factorization instead of GMRES's iterations) are accepted only
where they are verified: their answer must satisfy the recursion's fixed-point equation,
the error that its residual implies must be small, and the system must not be singular.
On a singular system (dependent active rows, or a solution that is not unique) any
multiple of a null vector may be added to a factorization's answer with no sign of it in
the residual, and the shortcut returned gradients off by their own size, or a billion
times too large; GMRES started from the source reaches the recursion's limit there.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from altdiff_modeling import AltDiffLayer, SolverWarning
from altdiff_modeling import _altdiff as altdiff_module
from altdiff_modeling._direct_adjoint import adjoint_through_polish, direct_adjoint
from altdiff_modeling._krylov import batched_gmres
from altdiff_modeling._polish import ReducedKKT, SharedPolisher
from altdiff_modeling.linsys.cholesky import CholeskyFactor

SIGMA = 1e-6


def _transposed_step_matrix(
    P: np.ndarray, C: np.ndarray, rows: np.ndarray, inactive: np.ndarray
) -> np.ndarray:
    """``M'`` ``(n + m, n + m)`` of one instance, built from the recursion's definition
    (``_altdiff``): ``t = H^{-1}(a + C'c)``, ``a+ = sigma t``,
    ``c+ = R C t`` on the inactive rows and ``c - R C t`` on the others."""
    n, m = P.shape[0], C.shape[0]
    H = P + SIGMA * np.eye(n) + C.T @ (rows[:, None] * C)
    T = np.linalg.solve(H, np.hstack([np.eye(n), C.T]))  # t as a map of (a, c)
    RCT = rows[:, None] * (C @ T)
    c_next = np.where(inactive[:, None], RCT, np.hstack([np.zeros((m, n)), np.eye(m)]) - RCT)
    return np.vstack([SIGMA * T, c_next])


def _fixed_points(
    P: np.ndarray, C: np.ndarray, rows: np.ndarray, inactive: np.ndarray, source: np.ndarray
) -> np.ndarray:
    """``(I - M')^{-1} source`` ``(B, n + m)`` for each instance, by dense solves."""
    N = source.shape[1]
    return np.stack(
        [
            np.linalg.solve(np.eye(N) - _transposed_step_matrix(P, C, rows, d), s)
            for d, s in zip(inactive, source)
        ]
    )


def _small_case(seed: int, B: int = 5, n: int = 12, m: int = 16, n_eq: int = 3):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    P = M.T @ M / n + 0.1 * np.eye(n)
    C = rng.standard_normal((m, n))
    rows = np.where(np.arange(m) < n_eq, 100.0, 0.7)
    inactive = rng.random((B, m)) < 0.6
    inactive[:, :n_eq] = False
    # A source with parts on every row, inactive ones included: the residual the
    # verification solves for is of that kind.
    source = rng.standard_normal((B, n + m))
    return P, C, rows, inactive, source


def _answer(solver, source: np.ndarray, n: int) -> np.ndarray:
    g = torch.from_numpy(source)
    return torch.cat(solver(g[:, :n], g[:, n:]), dim=1).numpy()


def test_the_direct_solvers_give_the_fixed_point_for_any_source():
    P, C, rows, inactive, source = _small_case(0)
    n = P.shape[0]
    expected = _fixed_points(P, C, rows, inactive, source)
    P_t, C_t = torch.from_numpy(P)[None], torch.from_numpy(C)[None]
    rows_t, inactive_t = torch.from_numpy(rows)[None], torch.from_numpy(inactive)
    shared = direct_adjoint(P_t, C_t, rows_t, inactive_t, SIGMA)
    per_instance = direct_adjoint(P_t.expand(5, -1, -1).clone(), C_t, rows_t, inactive_t, SIGMA)
    H = P_t + SIGMA * torch.eye(n, dtype=torch.float64) + C_t.mT @ (rows_t[..., None] * C_t)
    factor = CholeskyFactor(H)
    polish = SharedPolisher(C_t, 3).shared_data(factor, rows_t)
    systems = polish.systems(inactive_t)
    assert shared is not None and per_instance is not None and systems is not None
    through = adjoint_through_polish(factor, C_t, rows_t, systems, polish.HinvCt, SIGMA, 1e-14)
    for solver in (shared, per_instance, through):
        got = _answer(solver, source, n)
        error = np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)
        assert float(error.max()) <= 1e-9, error


def _dependent_rows_case():
    """Three instances: the first with a regular reduced KKT system, the second with an
    active row that repeats another (``C_a' y = 0`` has a solution), the third with a
    variable that neither P nor an active row sees (``P x = 0 = C_a x``)."""
    rng = np.random.default_rng(4)
    n, m = 6, 8
    P = np.diag([2.0, 1.0, 3.0, 1.5, 0.5, 0.0])  # the last variable only through row 4
    C = rng.standard_normal((m, n))
    C[:, 5] = 0.0
    C[4, 5] = 1.0
    C[7] = C[1]
    active = np.zeros((3, m), dtype=bool)
    for i, rows in enumerate(([0, 1, 2, 4], [0, 1, 7, 4], [0, 2, 3])):
        active[i, rows] = True
    return torch.from_numpy(P)[None], torch.from_numpy(C)[None], torch.from_numpy(active)


def test_reduced_kkt_flags_singular_systems():
    P, C, active = _dependent_rows_case()
    system = ReducedKKT(P, C, active)
    assert system.ok.all()
    assert system.singular().tolist() == [False, True, True]
    # Nearly singular (a row within 1e-9 of another) counts as singular, a row well
    # away from it does not.
    for offset, expected in ((1e-9, True), (1e-1, False)):
        C_near = C.clone()
        C_near[0, 7] = C[0, 1] + offset * torch.ones_like(C[0, 1])
        assert bool(ReducedKKT(P, C_near, active[1:2]).singular()) is expected


def test_the_per_instance_solver_refuses_singular_systems():
    # Its regularized solve on the second and third instances above would return one of
    # many fixed points: their answers are zero, which the residual check rejects.
    P, C, active = _dependent_rows_case()
    rows = torch.full((1, C.shape[1]), 0.5, dtype=torch.float64)
    solver = direct_adjoint(P.expand(3, -1, -1).clone(), C, rows, ~active, SIGMA)
    assert solver is not None
    g = torch.from_numpy(np.random.default_rng(1).standard_normal((3, P.shape[-1])))
    a, c = solver(g, torch.zeros(3, C.shape[1], dtype=torch.float64))
    assert float(a[0].norm()) > 0 and float(c[0].norm()) > 0
    assert float(a[1:].abs().max()) == 0.0 and float(c[1:].abs().max()) == 0.0


def _portfolio_problem(n_assets: int = 12, factors: int = 3):
    w = cp.Variable(n_assets)
    holdings = cp.Parameter(n_assets)
    F = cp.Parameter((n_assets, factors))
    mu = cp.Parameter(n_assets)
    objective = (
        mu @ w
        - cp.sum_squares(F.T @ w)
        - 0.1 * cp.sum(cp.abs(w - holdings))
        - 0.005 * cp.sum(cp.neg(w))
    )
    problem = cp.Problem(cp.Maximize(objective), [cp.sum(w) == 1, w >= -0.5, w <= 1])
    return problem, [holdings, F, mu], w


def test_portfolio_training_gradients_are_the_recursions(unlimited_polishing):
    # A Markowitz layer with abs transaction and neg shorting costs, trained by Adam at
    # eps 1e-5, its covariance factor and returns shared by the batch: transaction
    # costs keep many weights at their holdings, where the active rows are dependent
    # and the direct shortcut's systems singular. Every call's gradient is the
    # recursion's limit (GMRES to 1e-10, on a layer given the same calls), and no call
    # amplifies the incoming gradient more than the recursion does. Before the
    # shortcut was verified, the first call's gradient was off by 87%.
    problem, parameters, w = _portfolio_problem()
    tolerances = {"eps_abs": 1e-5, "eps_rel": 1e-5}
    layers = {
        method: AltDiffLayer(problem, parameters, [w], solver_args={**tolerances, **extra})
        for method, extra in (
            ("default", {}),
            ("recursion", {"backward_method": "gmres", "backward_eps": 1e-10}),
        )
    }
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    N, k, B = 12, 3, 8
    F = torch.nn.Parameter(0.3 * torch.randn(N, k, dtype=torch.float64))
    mu = torch.nn.Parameter(0.05 * torch.randn(N, dtype=torch.float64))
    optimizer = torch.optim.Adam([F, mu], lr=1e-2)
    for _ in range(15):
        holdings = torch.tensor(rng.dirichlet(np.ones(N), size=B))
        target = torch.tensor(rng.dirichlet(np.ones(N), size=B))
        grads, weights, amplification = {}, {}, {}
        for method, layer in layers.items():
            optimizer.zero_grad()
            held = holdings.clone().requires_grad_()
            (weights[method],) = layer(held, F, mu)
            residual = weights[method] - target
            (residual**2).sum().backward()
            grads[method] = torch.cat([held.grad.flatten(), F.grad.flatten(), mu.grad])
            amplification[method] = float(grads[method].norm() / (2 * residual).detach().norm())
        assert torch.equal(weights["default"], weights["recursion"])
        got, want = grads["default"], grads["recursion"]
        assert float((got - want).norm() / want.norm()) <= 1e-6
        assert amplification["default"] <= amplification["recursion"] * (1 + 1e-6)
        F.grad, mu.grad = got[B * N : B * N + N * k].view(N, k), got[B * N + N * k :]
        optimizer.step()


@pytest.mark.parametrize("other_rows", [1, 4])
def test_gmres_solves_each_row_as_if_alone(other_rows: int):
    # A singular but consistent system (its limit from the source is unique) next to
    # rows that take longer: the row reaches the same answer alone and in the batch,
    # because a solved row is left alone while the others go on.
    rng = np.random.default_rng(2)
    N = 20
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    singular = Q @ np.diag(np.r_[np.linspace(0.2, 1.5, N - 1), 0.0]) @ Q.T
    slow = [Q @ np.diag(np.geomspace(1e-3, 1.0, N)) @ Q.T for _ in range(other_rows)]
    matrices = torch.from_numpy(np.stack([singular, *slow]))
    rhs = torch.from_numpy(rng.standard_normal((1 + other_rows, N)))
    rhs[0] = matrices[0] @ rhs[0]  # in the range: consistent

    def operator(x: torch.Tensor) -> torch.Tensor:
        return (matrices[: x.shape[0]] @ x.unsqueeze(-1)).squeeze(-1)

    alone, _, solved_alone = batched_gmres(operator, rhs[:1], rhs[:1].clone(), 1e-12, 500)
    batch, _, solved = batched_gmres(operator, rhs, rhs.clone(), 1e-12, 500)
    assert bool(solved_alone.all()) and bool(solved.all())
    assert float((batch[0] - alone[0]).norm() / alone[0].norm()) <= 1e-12
    # Its limit: the solution in rhs + range(A).
    null = torch.from_numpy(Q[:, -1])
    particular = torch.linalg.lstsq(matrices[0], rhs[0].unsqueeze(-1)).solution.squeeze(-1)
    limit = particular - null * (null @ (particular - rhs[0]))
    assert float((batch[0] - limit).norm() / limit.norm()) <= 1e-10


def test_gmres_stopped_while_its_residual_shrinks_is_not_solved():
    """Stopped by its budget of operator applications or by its deadline, a row still
    converging is not counted as solved, however small its residual already is."""
    import time

    rng = np.random.default_rng(3)
    N = 40
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    matrices = torch.from_numpy(Q @ np.diag(np.geomspace(0.1, 1.0, N)) @ Q.T).unsqueeze(0)
    rhs = torch.from_numpy(rng.standard_normal((1, N)))

    def operator(x: torch.Tensor) -> torch.Tensor:
        return (matrices @ x.unsqueeze(-1)).squeeze(-1)

    # 20 applications take the residual to about 5e-7 of the right-hand side: below the
    # round-off level of a stagnated row (1e-4), far above the tolerance
    x, matvecs, solved = batched_gmres(operator, rhs, rhs.clone(), 1e-12, 20)
    residual = float((rhs - operator(x)).norm() / (1 + rhs.norm()))
    assert 1e-10 < residual < 1e-4
    assert matvecs <= 21 and not bool(solved.any())  # its budget, and the last residual
    past = time.perf_counter()
    _, matvecs, solved = batched_gmres(operator, rhs, rhs.clone(), 1e-12, 500, deadline=past)
    assert matvecs == 1 and not bool(solved.any())
    _, _, solved = batched_gmres(operator, rhs, rhs.clone(), 1e-12, 500)
    assert bool(solved.all())


def test_the_direct_shortcut_is_checked_on_every_call(monkeypatch):
    # The verification runs for the default backward, and a rejected instance falls to
    # GMRES (more than the one check's application). Its refinement steps do not make a
    # singular system's answer pass: each refined answer is checked again, and rejected.
    calls = []
    original = altdiff_module._verified

    def spy(*args):
        accepted = original(*args)
        calls.append(accepted.clone())
        return accepted

    monkeypatch.setattr(altdiff_module, "_verified", spy)
    problem, parameters, w = _portfolio_problem()
    layer = AltDiffLayer(problem, parameters, [w])
    rng = np.random.default_rng(0)
    holdings = torch.tensor(rng.dirichlet(np.ones(12), size=4), requires_grad=True)
    F = torch.tensor(0.05 * rng.standard_normal((4, 12, 3)), requires_grad=True)
    mu = torch.zeros(4, 12, dtype=torch.float64, requires_grad=True)  # no trade
    (weights,), info = layer(holdings, F, mu, return_info=True)
    weights.sum().backward()
    assert 1 <= len(calls) <= 1 + altdiff_module._DIRECT_REFINEMENTS
    # With zero returns nothing is traded: every weight sits at its holding, and the
    # active rows (both sides of every abs, and the budget) are dependent.
    np.testing.assert_allclose(weights.detach().numpy(), holdings.detach().numpy(), atol=1e-6)
    assert not any(bool(accepted.any()) for accepted in calls)
    assert info.backward_iterations > len(calls)


def _segment_lp(on_failure: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``min q'x  s.t.  x1 + x2 >= 1, 0 <= x <= 2`` at ``q = (1, 1)``: every point of a
    segment solves it, and ``x1`` has no derivative there. Returns the solution and
    the gradient of ``x1`` with respect to q."""
    from altdiff_modeling import solve_qp

    G = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([-1.0, 0.0, 0.0, 2.0, 2.0])
    q = torch.ones(2, dtype=torch.float64, requires_grad=True)
    args = {"on_failure": on_failure, "backward_max_iter": 2000}
    x = solve_qp(torch.zeros(2, 2), q, None, None, G.double(), h.double(), solver_args=args)
    (grad,) = torch.autograd.grad(x[0], q)
    return x, grad


def test_a_backward_with_no_derivative_says_so():
    # The degenerate LP's recursion "converges" to a point amplified by 1e15 (rounding
    # along the segment): never returned silently. By default the backward raises; with
    # on_failure "warn" it warns and returns it; with "nan" its gradient is NaN.
    from altdiff_modeling import SolverError, SolverWarning, solve_qp

    with pytest.raises(SolverError, match="no reliable derivative"):
        _segment_lp("raise")
    with pytest.warns(SolverWarning, match=r"0: singular"):
        _, grad = _segment_lp("warn")
    assert float(grad.abs().max()) > 1e10
    with pytest.warns(SolverWarning):
        _, grad = _segment_lp("nan")
    assert bool(torch.isnan(grad).all())
    # A regular instance of the same LP converges, and says so.
    G = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    h = torch.tensor([-1.0, 0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    x, info = solve_qp(torch.zeros(2, 2), q, None, None, G.double(), h, return_info=True)
    torch.autograd.grad(x[0], q)
    assert info.backward_status == ["converged"]


def test_a_backward_that_runs_out_of_iterations_says_so(monkeypatch):
    # GMRES and the plain recursion stopped before the fixed point: status max_iter.
    import altdiff_modeling._altdiff as module

    def no_gmres(operator, rhs, x0, tol, max_matvecs, deadline=None):
        return x0, 1, torch.zeros(rhs.shape[0], dtype=torch.bool)

    monkeypatch.setattr(module, "batched_gmres", no_gmres)
    problem, parameters, w = _portfolio_problem()
    layer = AltDiffLayer(problem, parameters, [w])
    rng = np.random.default_rng(2)
    holdings = torch.tensor(rng.dirichlet(np.ones(12), size=3), requires_grad=True)
    F = torch.tensor(0.3 * rng.standard_normal((3, 12, 3)))
    mu = torch.tensor(0.05 * rng.standard_normal((3, 12)))
    args = {"backward_method": "gmres", "backward_max_iter": 2, "on_failure": "warn"}
    (weights,), info = layer(holdings, F, mu, solver_args=args, return_info=True)
    with pytest.warns(SolverWarning, match="max_iter"):
        weights.sum().backward()
    assert info.backward_status == ["max_iter"] * 3


def test_gmres_takes_only_the_instances_the_direct_solve_left(monkeypatch):
    """Where the direct solve's check rejects some instances, GMRES runs on those alone
    (its steps on the whole batch cost 16 s for one instance of 256), and their
    gradients are those of GMRES on the whole batch."""
    x, q = cp.Variable(6), cp.Parameter(6)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [cp.sum(x) == 1, x >= 0, x <= 0.5])
    rng = np.random.default_rng(3)
    q_value = torch.tensor(rng.normal(0.2, 0.4, (6, 6)))
    w = torch.tensor(rng.standard_normal((6, 6)))

    def gradient(settings: dict) -> torch.Tensor:
        layer = AltDiffLayer(problem, [q], [x], solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9})
        values = q_value.clone().requires_grad_()
        (solution,) = layer(values, solver_args=settings)
        return torch.autograd.grad((w * solution).sum(), values)[0]

    reference = gradient({"backward_method": "gmres"})
    original_verified, original_gmres = altdiff_module._verified, altdiff_module.batched_gmres
    rejected = torch.tensor([False, True, False, False, True, False])
    rows = []

    def reject_two(*args):
        return original_verified(*args) & ~rejected

    def gmres_spy(operator, rhs, *args, **kwargs):
        rows.append(rhs.shape[0])
        return original_gmres(operator, rhs, *args, **kwargs)

    monkeypatch.setattr(altdiff_module, "_verified", reject_two)
    monkeypatch.setattr(altdiff_module, "batched_gmres", gmres_spy)
    grad = gradient({"backward_method": "direct", "remember_active_sets": False})
    assert rows == [2]
    np.testing.assert_allclose(grad.numpy(), reference.numpy(), atol=1e-8)


def test_the_plain_recursion_takes_only_the_instances_gmres_left(monkeypatch):
    """Where GMRES leaves instances unsolved (a singular system), the plain recursion
    that follows runs on those alone, to their fixed point."""
    x, q = cp.Variable(6), cp.Parameter(6)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [cp.sum(x) == 1, x >= 0, x <= 0.5])
    rng = np.random.default_rng(4)
    q_value = torch.tensor(rng.normal(0.2, 0.4, (6, 6)))
    w = torch.tensor(rng.standard_normal((6, 6)))

    def gradient() -> torch.Tensor:
        layer = AltDiffLayer(problem, [q], [x], solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9})
        values = q_value.clone().requires_grad_()
        (solution,) = layer(values, solver_args={"backward_method": "gmres"})
        return torch.autograd.grad((w * solution).sum(), values)[0]

    reference = gradient()
    original_gmres, original_iterate = altdiff_module.batched_gmres, altdiff_module._iterate
    unsolved = torch.tensor([False, True, False, False, True, False])
    rows = []

    def gmres_leaving_two(*args, **kwargs):
        solution, matvecs, converged = original_gmres(*args, **kwargs)
        return solution, matvecs, converged & ~unsolved

    def iterate_spy(step, state, *args):
        rows.append(state[0].shape[0])
        return original_iterate(step, state, *args)

    monkeypatch.setattr(altdiff_module, "batched_gmres", gmres_leaving_two)
    monkeypatch.setattr(altdiff_module, "_iterate", iterate_spy)
    grad = gradient()
    assert rows == [2]
    np.testing.assert_allclose(grad.numpy(), reference.numpy(), atol=1e-7)
