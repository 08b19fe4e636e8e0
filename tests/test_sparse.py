"""The sparse backend: solutions and gradients against the dense backend, Clarabel and
finite differences on down-scaled copies of the sparse benchmark problems; the
automatic choice of backend, its override, and the inputs it rejects."""

from __future__ import annotations

import tracemalloc

import cvxpy as cp
import numpy as np
import pytest
import torch
from reference import finite_difference_gradient, relative_error, solve_reference
from sparse_families import SparseFamily, isotonic, lasso, mpc, portfolio

from altdiff_modeling import AltDiffLayer, InputError, SolverError

TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_eps": 1e-12}


def _small(name: str) -> SparseFamily:
    """Down-scaled copies of the four benchmark problems (fixed seeds: the instances
    are checked to be non-degenerate at the finite-difference step)."""
    if name == "lasso":
        return lasso(40, np.random.default_rng(1), density=0.1)
    if name == "portfolio":
        return portfolio(60, 4, np.random.default_rng(2))
    if name == "mpc":
        return mpc(6, 4, np.random.default_rng(3), n_u=2, dynamics_parameters=True)
    return isotonic(50, np.random.default_rng(4))


def _tensors(values: list[np.ndarray], requires_grad: bool = True) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64, requires_grad=requires_grad) for v in values]


def _solve(
    fam: SparseFamily, backend: str, weights: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray], AltDiffLayer]:
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={**TIGHT, "backend": backend}
    )
    inputs = _tensors(fam.values)
    outputs = layer(*inputs)
    loss = sum((out * torch.as_tensor(w)).sum() for out, w in zip(outputs, weights))
    loss.backward()
    return [o.detach().numpy() for o in outputs], [t.grad.numpy() for t in inputs], layer


@pytest.mark.parametrize("name", ["lasso", "portfolio", "mpc", "isotonic"])
def test_sparse_matches_dense_clarabel_and_finite_differences(name: str) -> None:
    fam = _small(name)
    rng = np.random.default_rng(10)
    weights = [rng.standard_normal(v.shape) for v in fam.variables]
    x_sparse, g_sparse, layer = _solve(fam, "sparse", weights)
    assert layer.backend == "sparse"
    x_dense, g_dense, _ = _solve(fam, "dense", weights)
    values = dict(zip(fam.parameters, fam.values))
    x_ref = solve_reference(fam.problem, values, fam.variables)
    assert relative_error(x_sparse, x_ref) < 1e-6
    assert relative_error(x_sparse, x_dense) < 1e-6
    # Central differences of Clarabel solves at tolerance 1e-12 (step 1e-4): about 1e-7
    # of noise (see `finite_difference_gradient`); measured 1e-12 to 6e-8 here.
    fd = finite_difference_gradient(fam.problem, values, fam.variables, weights)
    for i in fam.grad_wrt:
        param = fam.parameters[i]
        assert relative_error(g_sparse[i], fd[param]) < 1e-6, param.name()
        assert relative_error(g_sparse[i], g_dense[i]) < 1e-8, param.name()


@pytest.mark.parametrize("name", ["lasso", "portfolio", "mpc", "isotonic"])
def test_down_scaled_copies_are_strictly_complementary(name: str) -> None:
    """The finite-difference reference above is only the derivative where no
    constraint is close to changing activity: every canonical inequality's slack or
    multiplier exceeds the step (1e-4) by a margin. (Near-degenerate coordinates,
    multipliers of 3e-7 to 7e-7 where Clarabel's interior point leaves the weights at
    2e-8 to 8e-8, are why the 5,000-asset benchmark portfolio's finite difference
    differs, by 0.3%, from the exact derivative on the solution's active set, which the
    layer returns to 1e-12.) The active-set KKT matrix is
    nonsingular except for MPC, whose |u| <= u_max becomes epigraph variables t with
    |u| <= t <= u_max: t is not unique where the bound is inactive, u is."""
    from reference import canonical_margins

    fam = _small(name)
    margins = canonical_margins(fam.problem, dict(zip(fam.parameters, fam.values)))
    assert margins.complementarity > 5e-4
    if name != "mpc":
        assert margins.kkt_sigma_min > 1e-2


def _random_qp(rng: np.random.Generator, n: int = 12, m: int = 8):
    """Every block a parameter (P through a PSD quad_form), and a constraint's dual
    among the outputs."""
    x = cp.Variable(n)
    Q, q = cp.Parameter((n, n), PSD=True), cp.Parameter(n)
    G, h, b = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(1)
    inequality = G @ x <= h
    problem = cp.Problem(
        cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x + cp.sum_squares(x)),
        [inequality, cp.sum(x) == b],
    )
    M = rng.standard_normal((n, n))
    values = [M @ M.T / n, rng.standard_normal(n), rng.standard_normal((m, n)), rng.random(m)]
    values.append(np.array([0.3]))
    return problem, [Q, q, G, h, b], [x, inequality.dual_variables[0]], values


def test_sparse_matches_dense_with_matrix_parameters_and_duals(rng) -> None:
    problem, params, outputs, values = _random_qp(rng)
    results = {}
    for backend in ("dense", "sparse"):
        layer = AltDiffLayer(problem, params, outputs, solver_args={**TIGHT, "backend": backend})
        inputs = _tensors(values)
        x, nu = layer(*inputs)
        (x.pow(2).sum() + (nu * torch.arange(nu.numel())).sum()).backward()
        results[backend] = [x.detach(), nu.detach(), *(t.grad for t in inputs)]
    for dense, sparse in zip(results["dense"], results["sparse"]):
        assert relative_error(sparse, dense) < 1e-7


def test_batch_of_vector_parameters_shares_one_factorization() -> None:
    fam = isotonic(200, np.random.default_rng(5))
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={**TIGHT, "backend": "sparse"}
    )
    rng = np.random.default_rng(6)
    y = torch.tensor(fam.values[0] + rng.standard_normal((3, 200)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((3, 200)))
    (x,), info = layer(y, return_info=True)
    assert x.shape == (3, 200) and info.rho.shape == (1,)
    (x * w).sum().backward()
    for k in range(3):
        y_k = y[k].detach().clone().requires_grad_()
        (x_k,) = layer(y_k)
        (x_k * w[k]).sum().backward()
        assert relative_error(x[k], x_k) < 1e-8
        assert relative_error(y.grad[k], y_k.grad) < 1e-7


def test_batched_matrix_parameters_refactor_per_instance() -> None:
    fam = mpc(5, 3, np.random.default_rng(7), n_u=2, dynamics_parameters=True)
    x0, A, B = fam.values
    rng = np.random.default_rng(8)
    A_batch = A + 0.02 * rng.standard_normal((2, *A.shape))
    results = {}
    for backend in ("dense", "sparse"):
        layer = AltDiffLayer(
            fam.problem, fam.parameters, fam.variables, solver_args={**TIGHT, "backend": backend}
        )
        inputs = _tensors([x0, A_batch, B])
        (u,), info = layer(*inputs, return_info=True)
        u.pow(2).sum().backward()
        results[backend] = [u.detach(), *(t.grad for t in inputs)]
        if backend == "sparse":
            assert info.rho.shape == (2,) and info.status == ["solved", "solved"]
    for dense, sparse in zip(results["dense"], results["sparse"]):
        assert relative_error(sparse, dense) < 1e-6


def test_auto_picks_sparse_for_large_sparse_and_dense_for_small_dense(rng) -> None:
    large = isotonic(2000, np.random.default_rng(9))
    assert AltDiffLayer(large.problem, large.parameters, large.variables).backend == "sparse"
    problem, params, outputs, _ = _random_qp(rng)
    assert AltDiffLayer(problem, params, outputs).backend == "dense"
    # Large but dense: a dense parametric matrix fills most of C.
    x, G, h = cp.Variable(400), cp.Parameter((700, 400)), cp.Parameter(700)
    dense_problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [G @ x <= h])
    assert AltDiffLayer(dense_problem, [G, h], [x]).backend == "dense"


def test_override_at_construction_and_per_call() -> None:
    # n + m = 1039 once the residuals x - y are substituted: just above the size.
    fam = isotonic(520, np.random.default_rng(11))
    auto = AltDiffLayer(fam.problem, fam.parameters, fam.variables)
    forced = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "dense"}
    )
    assert auto.backend == "sparse" and forced.backend == "dense"
    (y,) = _tensors(fam.values, requires_grad=False)
    (x_auto,) = auto(y)
    (x_forced,) = forced(y)
    (x_call,) = auto(y, solver_args={"backend": "dense"})
    assert relative_error(x_forced, x_auto) < 1e-5
    assert relative_error(x_call, x_auto) < 1e-5
    assert "backend='sparse'" in repr(auto)


def test_auto_serves_forward_mode_and_jacobian_with_the_dense_backend() -> None:
    n = 600  # n + m = 1199 once the residuals are substituted
    x, shift = cp.Variable(n), cp.Parameter()
    points = np.linspace(0.0, 3.0, n) + np.random.default_rng(19).standard_normal(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - points - shift)), [cp.diff(x) >= 0])
    layer = AltDiffLayer(problem, [shift], [x])
    assert layer.backend == "sparse"
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (x_forward,) = layer(s, solver_args={"mode": "forward"})
    x_forward.sum().backward()
    ((jac,),) = layer.jacobian(s.detach())
    # A shift of every point shifts the projection: dx/ds = 1, d(sum x)/ds = n.
    assert torch.allclose(jac, torch.ones(n, dtype=torch.float64), atol=1e-5)
    assert abs(float(s.grad) - n) < 1e-3


@pytest.mark.parametrize("value", ["Sparse", "cholmod", 1, None, ["sparse"]])
def test_bad_backend_values_raise_input_error(value) -> None:
    fam = isotonic(20, np.random.default_rng(12))
    with pytest.raises(InputError, match="backend"):
        AltDiffLayer(fam.problem, fam.parameters, fam.variables, solver_args={"backend": value})
    layer = AltDiffLayer(fam.problem, fam.parameters, fam.variables)
    with pytest.raises(InputError, match="backend"):
        layer(torch.tensor(fam.values[0]), solver_args={"backend": value})


def test_unsupported_uses_of_the_sparse_backend_raise_input_error() -> None:
    fam = isotonic(20, np.random.default_rng(13))
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "sparse"}
    )
    y = torch.tensor(fam.values[0], requires_grad=True)
    with pytest.raises(InputError, match="'forward'"):
        layer(y, solver_args={"mode": "forward"})
    with pytest.raises(InputError, match="jacobian"):
        layer.jacobian(y)


def _infeasible_layer() -> tuple[AltDiffLayer, torch.Tensor]:
    x, lo = cp.Variable(3), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, cp.sum(x) <= 0])
    layer = AltDiffLayer(problem, [lo], [x], solver_args={"backend": "sparse"})
    return layer, torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]], requires_grad=True)


def test_statuses_and_failure_policy() -> None:
    layer, lo = _infeasible_layer()
    with pytest.raises(SolverError, match="primal_infeasible"):
        layer(lo)
    (x,), info = layer(lo, solver_args={"on_failure": "nan"}, return_info=True)
    assert info.status == ["primal_infeasible", "solved"]
    assert torch.isnan(x[0]).all() and torch.isfinite(x[1]).all()
    x[1].sum().backward()
    assert torch.equal(lo.grad[0], torch.zeros(3)) and torch.isfinite(lo.grad).all()


def test_warm_start_reuses_the_previous_solution() -> None:
    fam = portfolio(80, 4, np.random.default_rng(14))
    layer = AltDiffLayer(
        fam.problem,
        fam.parameters,
        fam.variables,
        solver_args={"backend": "sparse", "warm_start": True, "polish": False},
    )
    (mu,) = _tensors(fam.values, requires_grad=False)
    (x_cold,), cold = layer(mu, return_info=True)
    (x_warm,), warm = layer(mu, return_info=True)
    assert int(warm.iterations[0]) < int(cold.iterations[0])
    assert relative_error(x_warm, x_cold) < 1e-4


def test_empty_batch_gives_empty_outputs() -> None:
    fam = isotonic(30, np.random.default_rng(17))
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "sparse"}
    )
    y = torch.zeros(0, 30, dtype=torch.float64, requires_grad=True)
    (x,) = layer(y)
    x.sum().backward()
    assert x.shape == (0, 30) and y.grad.shape == (0, 30)


def test_float32_inputs_give_float32_outputs_and_gradients() -> None:
    fam = isotonic(100, np.random.default_rng(15))
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "sparse"}
    )
    y32 = torch.tensor(fam.values[0], dtype=torch.float32, requires_grad=True)
    y64 = torch.tensor(fam.values[0], dtype=torch.float64, requires_grad=True)
    (x32,) = layer(y32)
    (x64,) = layer(y64)
    x32.sum().backward()
    x64.sum().backward()
    assert x32.dtype == torch.float32 and y32.grad.dtype == torch.float32
    assert relative_error(x32, x64) < 1e-4
    assert relative_error(y32.grad, y64.grad) < 1e-4


def test_large_layer_is_built_without_dense_intermediates() -> None:
    """50,000 points: a dense n x n block (n = 100,000 canonical variables) would need
    80 GB; the sparse layer's construction and one solve stay far below 1 GB."""
    n = 50_000
    fam = isotonic(n, np.random.default_rng(16))
    tracemalloc.start()
    try:
        layer = AltDiffLayer(fam.problem, fam.parameters, fam.variables)
        y = torch.tensor(fam.values[0], requires_grad=True)
        (x,) = layer(y)
        x.sum().backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layer.backend == "sparse"
    assert peak < 1e9
    # The gradient of sum(x) w.r.t. y is 1 everywhere (x's blocks are averages of y).
    assert torch.allclose(y.grad, torch.ones(n, dtype=torch.float64), atol=1e-6)


def test_kkt_factor_engines_agree_with_a_dense_solve() -> None:
    """Short rows only select qdldl, a few long rows its Schur-complement variant (with
    the long rows kept dense or sparse, below a chain or box rows), many quasi-dense
    rows SuperLU; all solve the KKT system (with and without a right-hand side on the
    constraint rows)."""
    import scipy.sparse as sp

    from altdiff_modeling.linsys.sparse_kkt import KKTFactor

    rng = np.random.default_rng(18)
    n = 400
    P = sp.csc_array(sp.diags_array(rng.uniform(0.0, 1.0, n)))
    chain = sp.diags_array([np.ones(n - 1), -np.ones(n - 1)], offsets=[0, 1], shape=(n - 1, n))
    few_long = sp.vstack([sp.random_array((3, n), density=0.15, rng=rng), np.ones((1, n))])
    many_long = sp.random_array((60, n), density=0.15, rng=rng)  # 60 entries a row
    cases = (
        (chain, "qdldl", None),
        # long rows 36% filled (a row of ones among them): kept dense; 15%: sparse
        (sp.vstack([few_long[:2], chain, few_long[2:]]), "schur", True),
        (sp.vstack([few_long[:2], chain]), "schur", False),
        (sp.vstack([few_long[:2], sp.eye_array(n)]), "schur", False),
        (sp.vstack([chain, many_long]), "splu", None),
    )
    for C, engine, dense_long_rows in cases:
        C = sp.csr_array(C)
        m = C.shape[0]
        row_diag = rng.uniform(0.1, 1.0, m)
        factor = KKTFactor(P, C, 1e-6, row_diag)
        assert factor.engine == engine
        if dense_long_rows is not None:
            assert (factor._C_long_dense is not None) == dense_long_rows
        rhs = rng.standard_normal((2, n))
        H = P.toarray() + 1e-6 * np.eye(n) + C.T.toarray() @ (C.toarray() / row_diag[:, None])
        assert relative_error(factor.solve(rhs), np.linalg.solve(H, rhs.T).T) < 1e-9
        K = np.block(
            [
                [H - C.T.toarray() @ (C.toarray() / row_diag[:, None]), C.T.toarray()],
                [C.toarray(), -np.diag(row_diag)],
            ]
        )
        rhs_y = rng.standard_normal((2, m))
        u, w = factor.solve_kkt(rhs, rhs_y)
        expected = np.linalg.solve(K, np.concatenate([rhs, rhs_y], 1).T).T
        assert relative_error(np.concatenate([u, w], 1), expected) < 1e-9


def test_schur_complement_of_sparse_long_rows_by_sparse_products(monkeypatch) -> None:
    """Below box rows, which couple no variables, the sparse long rows' Schur complement
    comes from two sparse products with the short factor, and equals the one from a
    solve per long row; below a chain (depth 399) it falls back to the solves."""
    import scipy.sparse as sp

    import altdiff_modeling.linsys.sparse_kkt as sparse_kkt

    rng = np.random.default_rng(5)
    n = 400
    P = sp.csc_array(sp.diags_array(rng.uniform(0.0, 1.0, n)))
    long_rows = sp.random_array((3, n), density=0.15, rng=rng)
    chain = sp.diags_array([np.ones(n - 1), -np.ones(n - 1)], offsets=[0, 1], shape=(n - 1, n))
    box = sp.csr_array(sp.vstack([long_rows, sp.eye_array(n)]))
    row_diag = rng.uniform(0.1, 1.0, box.shape[0])
    rhs = rng.standard_normal((2, n))

    factor = sparse_kkt.KKTFactor(P, box, 1e-6, row_diag)
    assert factor.engine == "schur" and factor._C_long_dense is None
    by_products = factor._sparse_complement()
    assert by_products is not None
    u = factor.solve(rhs)
    monkeypatch.setattr(sparse_kkt, "_MAX_SCHUR_DEPTH", 0)
    by_solves = sparse_kkt.KKTFactor(P, box, 1e-6, row_diag)
    assert by_solves._sparse_complement() is None
    H_short = P.toarray() + 1e-6 * np.eye(n) + np.diag(1 / row_diag[3:])
    expected = long_rows.toarray() @ np.linalg.solve(H_short, long_rows.toarray().T)
    assert relative_error(by_products, expected) < 1e-10  # H_short: condition 1e6
    assert relative_error(u, by_solves.solve(rhs)) < 1e-10

    monkeypatch.setattr(sparse_kkt, "_MAX_SCHUR_DEPTH", 8)
    below_chain = sparse_kkt.KKTFactor(
        P, sp.csr_array(sp.vstack([long_rows, chain])), 1e-6, row_diag[:-1]
    )
    assert below_chain._sparse_complement() is None
    assert factor._complement_by_products and not below_chain._complement_by_products
