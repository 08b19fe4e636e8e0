"""A layer computes what depends only on its constant matrices (the Ruiz equilibration
of P and C, and the penalty weights C'SC) once, and reuses it on later calls."""

from __future__ import annotations

import inspect

import cvxpy as cp
import numpy as np
import pytest
import torch

import altdiff_modeling._function as function_module
from altdiff_modeling import AltDiffLayer

#: These tests compare a layer's later calls with its first, or with a fresh layer's,
#: bit for bit: without the active-set memory, which answers repeated calls exactly.
NO_MEMORY = {"remember_active_sets": False}


def _problem(rng: np.random.Generator, n: int = 8):
    M = rng.standard_normal((n, n))
    A, G = rng.standard_normal((3, n)), rng.standard_normal((n, n))
    x = cp.Variable(n)
    q, b, h = cp.Parameter(n), cp.Parameter(3), cp.Parameter(n)
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(M.T @ M + np.eye(n))) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
    x0 = rng.standard_normal(n)
    values = [rng.standard_normal(n), A @ x0, G @ x0 + 0.5]
    return problem, [q, b, h], x, values


@pytest.fixture
def equilibrate_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = function_module.equilibrate

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(function_module, "equilibrate", counting)
    return calls


def test_constant_matrices_are_equilibrated_once(equilibrate_calls):
    problem, params, x, values = _problem(np.random.default_rng(0))
    layer = AltDiffLayer(problem, parameters=params, variables=[x])
    rng = np.random.default_rng(1)
    for _ in range(3):
        q = torch.tensor(rng.standard_normal(8), requires_grad=True)
        (out,) = layer(q, *(torch.tensor(v) for v in values[1:]))
        out.sum().backward()
    assert equilibrate_calls[0] == 1


def test_reused_results_equal_a_fresh_layers(unlimited_polishing):
    problem, params, x, values = _problem(np.random.default_rng(2))
    warm = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    tensors = [torch.tensor(v) for v in values]
    warm(*[t * 1.5 for t in tensors])  # fills the cache with other data
    q = tensors[0].clone().requires_grad_()
    (reused,) = warm(q, *tensors[1:])
    (grad_reused,) = torch.autograd.grad(reused.sum(), q)
    fresh = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    q = tensors[0].clone().requires_grad_()
    (first,) = fresh(q, *tensors[1:])
    (grad_first,) = torch.autograd.grad(first.sum(), q)
    assert torch.equal(reused, first)
    assert torch.equal(grad_reused, grad_first)


def test_parametric_and_batched_matrices_are_not_cached(equilibrate_calls):
    rng = np.random.default_rng(3)
    n = 5
    x = cp.Variable(n)
    G = cp.Parameter((4, n))
    h = cp.Parameter(4)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [G @ x <= h])
    layer = AltDiffLayer(problem, parameters=[G, h], variables=[x])
    G1, G2 = torch.tensor(rng.standard_normal((4, n))), torch.tensor(rng.standard_normal((4, n)))
    h_t = torch.ones(4, dtype=torch.float64)
    layer(G1, h_t)
    (b,) = layer(G2, h_t)
    assert equilibrate_calls[0] == 2
    fresh = AltDiffLayer(problem, parameters=[G, h], variables=[x])
    assert torch.equal(b, fresh(G2, h_t)[0])


def test_factors_of_constant_matrices_are_reused_across_calls(monkeypatch, unlimited_polishing):
    # H(rho) depends only on the constant matrices, rho (on a fixed grid) and the cost
    # scaling: a second call with the same data factors nothing, and its results are
    # those of a fresh layer bit for bit.
    from altdiff_modeling.linsys.systems import DenseSystems

    factorizations = [0]
    original = DenseSystems.factor

    def counting(self, rho):
        factorizations[0] += 1
        return original(self, rho)

    monkeypatch.setattr(DenseSystems, "factor", counting)
    problem, params, x, values = _problem(np.random.default_rng(4), n=12)
    tensors = [torch.tensor(v) for v in values]
    layer = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    (first,) = layer(*tensors)
    assert factorizations[0] >= 1
    before = factorizations[0]
    q = tensors[0].clone().requires_grad_()
    (again,) = layer(q, *tensors[1:])
    (grad_again,) = torch.autograd.grad(again.sum(), q)
    assert factorizations[0] == before
    fresh = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    q = tensors[0].clone().requires_grad_()
    (out,) = fresh(q, *tensors[1:])
    (grad_fresh,) = torch.autograd.grad(out.sum(), q)
    assert torch.equal(again, first) and torch.equal(again, out)
    assert torch.equal(grad_again, grad_fresh)


def test_rho_is_kept_on_its_grid():
    from altdiff_modeling.linsys.factor_cache import quantize_rho

    rho = torch.tensor([1e-6, 3.7e-3, 0.1, 0.42, 7.0, 1e6], dtype=torch.float64)
    grid = quantize_rho(rho)
    exponents = torch.log10(grid) * 8
    assert torch.allclose(exponents, exponents.round(), atol=1e-9)
    assert (torch.abs(torch.log10(grid / rho)) <= 1 / 16 + 1e-12).all()
    assert torch.equal(quantize_rho(grid), grid)  # a grid value stays put


def test_the_factor_cache_keeps_the_most_recent_within_its_budget(monkeypatch):
    import altdiff_modeling.linsys.factor_cache as cache_module
    from altdiff_modeling.linsys.cholesky import CholeskyFactor

    monkeypatch.setattr(cache_module, "_MAX_FACTORS", 2)
    cache = cache_module.FactorCache()
    c = torch.ones(1, 1, dtype=torch.float64)
    made = []

    def make(value: float):
        def compute():
            made.append(value)
            return CholeskyFactor(value * torch.eye(3, dtype=torch.float64)[None])

        return compute

    for value in (1.0, 2.0, 1.0, 3.0, 1.0, 2.0):
        factor = cache.factor(torch.tensor([value]), c, make(value))
        assert torch.allclose(factor.L[0, 0, 0], torch.tensor(value).sqrt().double())
    # 1 and 2 computed, 1 reused, 3 evicts 2 (least recent), 1 reused, 2 computed again
    assert made == [1.0, 2.0, 3.0, 2.0]
    assert len(cache) == 2
    monkeypatch.setattr(cache_module, "_MAX_BYTES", 8)  # less than one 3 x 3 factor
    cache.reset()
    cache.factor(torch.tensor([5.0]), c, make(5.0))
    assert len(cache) == 0


def test_a_batchs_later_calls_reuse_what_its_factors_kept(monkeypatch, unlimited_polishing):
    # With constant matrices, the polisher's S and majority inverses stay with the
    # cached factors of H, and the backward solves its systems on their bases (no
    # factor of K): a second call with the same batch inverts and factors nothing, and
    # returns the first call's results.
    import altdiff_modeling._direct_adjoint as adjoint_module
    import altdiff_modeling.linsys.woodbury as woodbury_module

    counts = {"base": 0, "K": 0}
    build_base = woodbury_module.MajorityBase.build.__func__
    factor_K = adjoint_module._factor_K

    def counting_base(cls, *args):
        counts["base"] += 1
        return build_base(cls, *args)

    def counting_K(*args):
        counts["K"] += 1
        return factor_K(*args)

    monkeypatch.setattr(woodbury_module.MajorityBase, "build", classmethod(counting_base))
    monkeypatch.setattr(adjoint_module, "_factor_K", counting_K)
    rng = np.random.default_rng(6)
    problem, params, x, _ = _problem(rng, n=12)
    B = 16
    A = problem.constraints[0].args[0].args[0].value
    G = problem.constraints[1].args[0].args[0].value
    x0 = rng.standard_normal((B, 12))
    values = [rng.standard_normal((B, 12)), x0 @ A.T, x0 @ G.T + rng.uniform(-0.3, 1, (B, 12))]
    layer = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    results = []
    for call in range(2):
        q = torch.tensor(values[0], requires_grad=True)
        (out,) = layer(q, *(torch.tensor(v) for v in values[1:]))
        (grad,) = torch.autograd.grad((out * out).sum(), q)
        results.append((out, grad))
        if call == 0:
            assert counts["base"] >= 1 and counts["K"] == 0
            counts.update(base=0, K=0)
    assert counts == {"base": 0, "K": 0}
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)


def test_the_factor_cache_budget_counts_what_the_factors_memos_hold(monkeypatch):
    import altdiff_modeling.linsys.factor_cache as cache_module
    from altdiff_modeling.linsys.cholesky import CholeskyFactor

    class Held:
        def nbytes(self) -> int:
            return 1000

    monkeypatch.setattr(cache_module, "_MAX_BYTES", 1200)  # a 3 x 3 factor is 72 bytes
    cache = cache_module.FactorCache()
    c = torch.ones(1, 1, dtype=torch.float64)

    def make(value: float):
        return lambda: CholeskyFactor(value * torch.eye(3, dtype=torch.float64)[None])

    first = cache.factor(torch.tensor([1.0]), c, make(1.0))
    cache.factor(torch.tensor([2.0]), c, make(2.0))
    assert len(cache) == 2
    first.memo["held"] = Held()  # grows after it was cached
    assert first.nbytes() == 72 + 1000
    third = cache.factor(torch.tensor([3.0]), c, make(3.0))
    # 1072 + 72 + 72 > 1200: the least recently used (the one with the memo) goes.
    assert len(cache) == 2
    assert cache.factor(torch.tensor([3.0]), c, make(9.0)) is third
    assert cache.factor(torch.tensor([1.0]), c, make(1.0)) is not first


def test_the_factors_a_layer_keeps_share_one_work_ledger():
    # What the iterations with any of a layer's factors cost is the credit from which
    # the shared polish's setup is bought (rent or buy); buying it spends the credit.
    from altdiff_modeling._polish import SharedPolisher
    from altdiff_modeling.linsys.cholesky import CholeskyFactor
    from altdiff_modeling.linsys.factor_cache import FactorCache

    cache = FactorCache()
    c = torch.ones(1, 1, dtype=torch.float64)
    rng = np.random.default_rng(3)
    C = torch.from_numpy(rng.standard_normal((1, 6, 4)))

    def make(value: float):
        return lambda: CholeskyFactor(value * torch.eye(4, dtype=torch.float64)[None])

    first = cache.factor(torch.tensor([1.0]), c, make(1.0))
    second = cache.factor(torch.tensor([2.0]), c, make(2.0))
    alone = CholeskyFactor(torch.eye(4, dtype=torch.float64)[None])
    assert first.ledger is second.ledger and alone.ledger is not first.ledger
    first.ledger.work += 3e9
    assert SharedPolisher.credit(second) == 3e9 and SharedPolisher.credit(alone) == 0.0
    rows = torch.ones(1, 6, dtype=torch.float64)
    SharedPolisher(C, 2, kept=True).shared_data(second, rows)
    assert SharedPolisher.credit(second) == float("inf")
    assert SharedPolisher.credit(first) == 0.0  # the credit went into the setup
    cache.reset(("other",))
    assert cache.factor(torch.tensor([1.0]), c, make(1.0)).ledger is not first.ledger


def test_a_single_problem_layer_differentiates_through_its_kept_polish_systems(
    monkeypatch, unlimited_polishing
):
    # One problem (n = 40, 3 equalities, 40 inequalities) on moving data: the kept
    # factor brings the shared polish's S and bases to every call, each call polishes
    # through them, and each backward solves their systems (no factor of K, no GMRES).
    # The gradients agree with implicit differentiation of the KKT system at Clarabel's
    # solution. (Systems of a kept factor of another rho than the final one are
    # converted to the final penalty: `tests/test_direct_adjoint.py`.)
    from reference import kkt_implicit_gradient, solve_qp_reference

    import altdiff_modeling._altdiff as altdiff_module

    calls = {"through": 0, "direct": 0, "gmres": 0}
    for name, key in (
        ("adjoint_through_polish", "through"),
        ("direct_adjoint", "direct"),
        ("batched_gmres", "gmres"),
    ):
        original = getattr(altdiff_module, name)

        def counting(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(altdiff_module, name, counting)
    rng = np.random.default_rng(8)
    n = 40
    problem, params, x, _ = _problem(rng, n=n)
    M = np.random.default_rng(8).standard_normal((n, n))  # _problem's first draw
    P = M.T @ M + np.eye(n)
    A = problem.constraints[0].args[0].args[0].value
    G = problem.constraints[1].args[0].args[0].value
    # Without the active-set memory, which would answer the later calls from the first's set.
    layer = AltDiffLayer(problem, parameters=params, variables=[x], solver_args=NO_MEMORY)
    x0 = rng.standard_normal(n)
    for _ in range(3):
        q_value = rng.standard_normal(n)
        h_value = G @ x0 + rng.uniform(-0.5, 1.0, n)
        weights = rng.standard_normal(n)
        q, b, h = (torch.tensor(v, requires_grad=True) for v in (q_value, A @ x0, h_value))
        (out,) = layer(q, b, h)
        grads = torch.autograd.grad((out * torch.from_numpy(weights)).sum(), (q, b, h))
        x_ref, lam, nu = solve_qp_reference(P, q_value, A, A @ x0, G, h_value)
        assert np.abs(out.detach().numpy() - x_ref).max() <= 1e-7
        reference = kkt_implicit_gradient(
            P, q_value, A, A @ x0, G, h_value, x_ref, lam, nu, weights
        )
        for got, expected in zip(grads, reference[1::2], strict=True):
            error = np.linalg.norm(got.numpy() - expected) / np.linalg.norm(expected)
            assert error <= 1e-7, error
    assert calls == {"through": 3, "direct": 0, "gmres": 0}


def test_the_factor_kept_for_polishing_serves_its_cost_scaling_and_is_never_evicted(
    monkeypatch,
):
    import altdiff_modeling.linsys.factor_cache as cache_module
    from altdiff_modeling.linsys.cholesky import CholeskyFactor

    monkeypatch.setattr(cache_module, "_MAX_FACTORS", 2)
    cache = cache_module.FactorCache()
    c, other_c = (torch.full((1, 1), v, dtype=torch.float64) for v in (1.0, 2.0))

    def make(value: float):
        return lambda: CholeskyFactor(value * torch.eye(3, dtype=torch.float64)[None])

    rho = torch.tensor([1.0], dtype=torch.float64)
    kept = cache.factor(rho, c, make(1.0))
    cache.keep_for_polishing(rho, c, kept)
    assert cache.polishing(other_c) is None
    kept_rho, factor = cache.polishing(c)
    assert factor is kept and torch.equal(kept_rho, rho)
    for value in (2.0, 3.0, 4.0):  # the least recently used goes, but not the kept one
        cache.factor(torch.tensor([value]), c, make(value))
    assert len(cache) == 2 and cache.factor(rho, c, make(9.0)) is kept
    stray = CholeskyFactor(torch.eye(3, dtype=torch.float64)[None])
    cache.keep_for_polishing(torch.tensor([5.0]), c, stray)  # not a cached factor
    assert cache.polishing(c)[1] is kept
    cache.reset(("other",))
    assert cache.polishing(c) is None


def test_only_a_layers_factors_are_kept_across_calls(monkeypatch):
    # A setup bought with kept factors pays off in later calls: a layer's cache outlives
    # its calls, a one-off solve's does not (its polish takes the cheaper method now).
    from altdiff_modeling import solve_qp

    seen = []
    solve = function_module.admm_solve

    def spy(*args, **kwargs):
        factors = inspect.signature(solve).bind(*args, **kwargs).arguments["factors"]
        seen.append(factors.across_calls)
        return solve(*args, **kwargs)

    monkeypatch.setattr(function_module, "admm_solve", spy)
    problem, params, x, values = _problem(np.random.default_rng(4))
    layer = AltDiffLayer(problem, parameters=params, variables=[x])
    layer(*(torch.tensor(v) for v in values))
    rng = np.random.default_rng(4)
    M = rng.standard_normal((8, 8))
    A, G = rng.standard_normal((3, 8)), rng.standard_normal((8, 8))
    solve_qp(
        *(torch.from_numpy(v) for v in (M.T @ M + np.eye(8), values[0], A, values[1], G)),
        torch.from_numpy(values[2]),
    )
    assert seen == [True, False]
