"""Alt-Diff gradients: reverse and forward mode against implicit differentiation of the
KKT conditions, multipliers as outputs, full Jacobians, and degenerate points."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from families import build_family, random_qp
from reference import kkt_implicit_gradient, relative_error

from altdiff_modeling import AltDiffLayer, solve_qp

TIGHT = {"eps_abs": 1e-11, "eps_rel": 1e-11, "max_iter": 50_000, "backward_eps": 1e-12}
NAMES = ("P", "q", "A", "b", "G", "h")


def _random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 11))
    if seed % 5 == 4:  # an LP at a non-degenerate vertex
        n_eq = int(rng.integers(0, n))
        return random_qp(rng, n=n, n_eq=n_eq, n_ineq=n + 3, n_active=n - n_eq, lp=True)
    n_eq = int(rng.integers(1, n))
    n_ineq = int(rng.integers(2, 2 * n))
    n_active = int(rng.integers(1, min(n_ineq, n - n_eq) + 1))
    return random_qp(rng, n=n, n_eq=n_eq, n_ineq=n_ineq, n_active=n_active)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("seed", range(50))
def test_gradients_match_kkt_implicit_differentiation(seed: int, mode: str):
    case = _random_case(seed)
    tensors = _tensors(case)
    x = solve_qp(*tensors, solver_args={**TIGHT, "mode": mode})
    np.testing.assert_allclose(x.detach().numpy(), case["x"], rtol=1e-7, atol=1e-8)
    weights = np.random.default_rng(1000 + seed).standard_normal(x.shape[0])
    grads = _grad(x @ torch.from_numpy(weights), tensors)
    reference = kkt_implicit_gradient(
        *(case[k] for k in NAMES), case["x"], case["lam"], case["nu"], weights
    )
    _assert_gradients_close(grads, reference, 1e-6, (seed, mode))


def _tensors(case: dict) -> list[torch.Tensor | None]:
    """The QP data as leaf tensors; an absent block (an LP with no equality) stays None."""
    return [None if case[k] is None else torch.tensor(case[k], requires_grad=True) for k in NAMES]


def _grad(loss: torch.Tensor, tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    present = [t for t in tensors if t is not None]
    grads = iter(torch.autograd.grad(loss, present))
    return [None if t is None else next(grads) for t in tensors]


def _assert_gradients_close(grads, reference, tol: float, label: object) -> None:
    """Each block within ``tol`` relative, with blocks whose true gradient vanishes (e.g.
    dx/dP at a vertex fixed by the constraints) measured against a thousandth of the
    whole gradient's norm instead of their own."""
    total = np.sqrt(sum(np.sum(np.asarray(r) ** 2) for r in reference if r is not None))
    for name, grad, ref in zip(NAMES, grads, reference, strict=True):
        assert (grad is None) == (ref is None), (name, label)
        if ref is None:
            continue
        error = np.linalg.norm(grad.numpy() - ref)
        assert error <= tol * max(np.linalg.norm(ref), 1e-3 * total), (name, label, error)


@pytest.mark.parametrize("seed", [*range(0, 50, 5), 4, 9])  # 4, 9: LPs
def test_backward_methods_agree_and_gmres_takes_fewer_steps(seed: int):
    case = _random_case(seed)
    results = {}
    for method in ("direct", "gmres", "fixed_point"):
        tensors = _tensors(case)
        x, info = solve_qp(
            *tensors, solver_args={**TIGHT, "backward_method": method}, return_info=True
        )
        grads = _grad(x.sum(), tensors)
        results[method] = (grads, info.backward_iterations)
    reference = [None if g is None else g.numpy() for g in results["fixed_point"][0]]
    _assert_gradients_close(results["gmres"][0], reference, 1e-7, seed)
    _assert_gradients_close(results["direct"][0], reference, 1e-7, seed)
    assert results["gmres"][1] < results["fixed_point"][1]
    # At a non-degenerate point the factorization's answer passes the recursion's check.
    assert results["direct"][1] == 1


@pytest.mark.parametrize("per_instance", ["none", "P", "A"])
def test_direct_backward_agrees_with_gmres_on_batches(per_instance: str):
    # Shared data use one K and S for the batch; per-instance P or A one per instance.
    base = _random_case(10)  # a QP with equalities: three copies, q (and P or A) moved
    rng = np.random.default_rng(5)
    blocks = {name: np.stack([base[name]] * 3) for name in ("P", "q", "A", "b", "G", "h")}
    blocks["q"] = blocks["q"] + 0.1 * rng.standard_normal(blocks["q"].shape)
    if per_instance == "P":
        M = 0.1 * rng.standard_normal(blocks["P"].shape)
        blocks["P"] = blocks["P"] + M @ M.transpose(0, 2, 1)
    elif per_instance == "A":
        blocks["A"] = blocks["A"] + 0.05 * rng.standard_normal(blocks["A"].shape)
    grads = {}
    for method in ("direct", "gmres"):
        tensors = [torch.tensor(blocks[name], requires_grad=True) for name in NAMES]
        x, info = solve_qp(
            *tensors, solver_args={**TIGHT, "backward_method": method}, return_info=True
        )
        assert info.status == ["solved"] * 3
        grads[method] = _grad((x * x).sum(), tensors)
        if method == "direct":
            assert info.backward_iterations == 1
    reference = [g.numpy() for g in grads["gmres"]]
    _assert_gradients_close(grads["direct"], reference, 1e-7, per_instance)


def _repeated_row_gradients(shared: bool) -> tuple[dict, dict]:
    """Gradients w.r.t. q of a batch of 2 whose instance 1 repeats an equality row
    (``shared``: both do, with one A), by the direct and the fixed-point backward, and
    the backward iterations of each."""
    case = _random_case(7)
    assert case["A"].shape[0] >= 2  # a repeated row replaces the last of two or more
    repeated_A = np.vstack([case["A"][:-1], case["A"][0]])
    repeated_b = np.concatenate([case["b"][:-1], case["b"][:1]])
    if shared:
        A, b = repeated_A, np.stack([repeated_b, repeated_b])
    else:
        A, b = np.stack([case["A"], repeated_A]), np.stack([case["b"], repeated_b])
    weights = torch.from_numpy(np.random.default_rng(7).standard_normal(case["q"].size))
    grads, iterations = {}, {}
    for method in ("direct", "fixed_point"):
        q = torch.tensor(np.stack([case["q"], case["q"] + 0.1]), requires_grad=True)
        args = [case["P"], q, A, b, case["G"], case["h"]]
        args = [a if isinstance(a, torch.Tensor) else torch.from_numpy(a) for a in args]
        x, info = solve_qp(
            *args, solver_args={**TIGHT, "backward_method": method}, return_info=True
        )
        (grads[method],) = torch.autograd.grad((x @ weights).sum(), q)
        iterations[method] = info.backward_iterations
    return grads, iterations


@pytest.mark.parametrize("shared", [False, True])
def test_direct_backward_where_the_multipliers_are_not_unique(shared: bool):
    # The repeated row makes the multipliers non-unique and the direct method's systems
    # singular but consistent (the per-instance active-rows KKT system, or the shared
    # path's m x m one); dx/dq is unique all the same.
    grads, _ = _repeated_row_gradients(shared)
    assert relative_error(grads["direct"].numpy(), grads["fixed_point"].numpy()) <= 1e-7
    assert torch.isfinite(grads["direct"]).all()


def test_a_direct_answer_off_the_fixed_point_goes_to_gmres(monkeypatch):
    # The caller accepts the direct method's answer only as a fixed point of the
    # recursion: a spoiled answer for instance 1 must be caught and that instance
    # solved by GMRES.
    import altdiff_modeling._altdiff as altdiff_module

    direct = altdiff_module.direct_adjoint

    def spoiled(*args, **kwargs):
        solve = direct(*args, **kwargs)

        def spoiled_solve(g_x, g_v, rough=False):
            a, c = solve(g_x, g_v, rough)
            return a, torch.cat([c[:1], c[1:] + 1.0])

        return spoiled_solve

    monkeypatch.setattr(altdiff_module, "direct_adjoint", spoiled)
    grads, iterations = _repeated_row_gradients(shared=False)
    assert relative_error(grads["direct"].numpy(), grads["fixed_point"].numpy()) <= 1e-7
    assert iterations["direct"] > 1


def test_multipliers_are_outputs_with_cvxpy_signs_and_gradients():
    rng = np.random.default_rng(3)
    n = 5
    x = cp.Variable(n, name="x")
    q = cp.Parameter(n, name="q")
    b = cp.Parameter(2, name="b")
    A = rng.standard_normal((2, n))
    G = rng.standard_normal((4, n))
    x0 = rng.standard_normal(n)
    equality = A @ x == b
    inequality = G @ x <= G @ x0 + np.array([0.0, 0.0, 0.5, 0.8])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x), [equality, inequality])
    # q makes the first two inequalities active with multipliers 1 and 0.5.
    lam = rng.standard_normal(2)
    q.value = -2 * x0 - A.T @ lam - G[:2].T @ np.array([1.0, 0.5])
    b.value = A @ x0
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    duals = [equality.dual_variables[0], inequality.dual_variables[0]]
    layer = AltDiffLayer(problem, parameters=[q, b], variables=[x, *duals])
    q_t = torch.tensor(q.value, requires_grad=True)
    b_t = torch.tensor(b.value, requires_grad=True)
    _, lam_star, nu_star = layer(q_t, b_t, solver_args=TIGHT)
    np.testing.assert_allclose(lam_star.detach().numpy(), equality.dual_value, atol=1e-8)
    np.testing.assert_allclose(nu_star.detach().numpy(), inequality.dual_value, atol=1e-8)
    np.testing.assert_allclose(nu_star.detach().numpy(), [1.0, 0.5, 0.0, 0.0], atol=1e-8)

    # d(weights . multipliers)/d(q, b) by central differences of the layer's tight solve.
    weights = torch.from_numpy(rng.standard_normal(6))

    def loss(q_v: torch.Tensor, b_v: torch.Tensor) -> torch.Tensor:
        _, l_v, n_v = layer(q_v, b_v, solver_args=TIGHT)
        return torch.cat([l_v, n_v]) @ weights

    grads = torch.autograd.grad(loss(q_t, b_t), (q_t, b_t))
    step = 1e-5
    for tensor, grad in zip((q_t, b_t), grads, strict=True):
        numeric = torch.zeros_like(grad)
        for i in range(tensor.numel()):
            bump = torch.zeros_like(tensor)
            bump[i] = step
            args_plus = [(t + bump if t is tensor else t).detach() for t in (q_t, b_t)]
            args_minus = [(t - bump if t is tensor else t).detach() for t in (q_t, b_t)]
            numeric[i] = (loss(*args_plus) - loss(*args_minus)) / (2 * step)
        assert relative_error(grad.numpy(), numeric.numpy()) <= 1e-6


@pytest.mark.parametrize("name", ["eq_ineq_params", "psd_quad_form", "matrix_variable"])
@pytest.mark.parametrize("batched", [False, True])
def test_forward_mode_jacobian_matches_autograd_of_reverse_mode(name: str, batched: bool):
    family = build_family(name)
    layer = AltDiffLayer(family.problem, family.parameters, family.variables)
    values = [torch.tensor(v) for v in family.values]
    if batched:  # two instances: the first parameter batched, the others shared
        values[0] = torch.stack([values[0], values[0] * 1.01])
    values = [v.requires_grad_() for v in values]
    jacobian = layer.jacobian(*values, solver_args=TIGHT)

    def outputs(*params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return layer(*params, solver_args=TIGHT)

    expected = torch.autograd.functional.jacobian(outputs, tuple(values))
    for i, output in enumerate(outputs(*values)):
        for j, value in enumerate(values):
            ours = jacobian[i][j]
            ref = expected[i][j]
            if batched and j == 0:
                # Autograd differentiates every instance w.r.t. every instance's
                # parameter; instances are independent, so keep the diagonal blocks.
                out_ndim = output.dim() - 1
                ref = torch.stack([ref[k].select(out_ndim, k) for k in range(output.shape[0])])
            assert ours.shape == output.shape + value.shape[int(batched and j == 0) :]
            assert ours.shape == ref.shape
            assert relative_error(ours.numpy(), ref.numpy()) <= 1e-6, (name, i, j)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_degenerate_lp_gives_a_finite_gradient(mode: str):
    # Three constraints meet at the optimal vertex (1, 1) of a 2-variable LP, and the
    # bound x0 <= 1 is weakly active: a degenerate point.
    c = torch.tensor([-1.0, -1.0], dtype=torch.float64, requires_grad=True)
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    h = torch.tensor([1.0, 1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    P = torch.zeros(2, 2, dtype=torch.float64)
    x = solve_qp(
        P, c, None, None, G, h, solver_args={"mode": mode, "eps_abs": 1e-9, "eps_rel": 1e-9}
    )
    np.testing.assert_allclose(x.detach().numpy(), [1.0, 1.0], atol=1e-6)
    grads = torch.autograd.grad(x.sum(), (c, h))
    for grad in grads:
        assert torch.isfinite(grad).all()
    # Moving the binding constraints moves the vertex: d(x0 + x1)/dh is bounded.
    assert grads[1].abs().max() <= 10.0


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("seed", [2, 4, 31])  # 4: an LP (P = 0)
def test_float32_backward_stops_at_roundoff_and_is_close_to_float64(seed: int, mode: str):
    # The default backward_eps (1e-8) is out of reach in float32: GMRES must notice the
    # stagnation and stop, not run to backward_max_iter. The gradient then carries the
    # float32 error of the solve amplified by the problem's conditioning (up to 3e-2
    # relative on seed 31, whose float32 solution itself is off by 1.5e-3), so the
    # comparison with float64 is a sanity bound, not an accuracy claim.
    case = _random_case(seed)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        tensors = [None if t is None else t.detach().to(dtype) for t in _tensors(case)]
        tensors = [None if t is None else t.requires_grad_() for t in tensors]
        x, info = solve_qp(*tensors, solver_args={"mode": mode}, return_info=True)
        grads[dtype] = torch.cat(
            [g.double().flatten() for g in _grad(x.sum(), tensors) if g is not None]
        )
        if dtype == torch.float32:
            # well before backward_max_iter (10 000)
            assert info.backward_iterations < 5000, info.backward_iterations
    error = (grads[torch.float32] - grads[torch.float64]).norm() / grads[torch.float64].norm()
    assert error < 1e-1, error
