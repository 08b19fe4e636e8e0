"""The direct backward's linear algebra: the Woodbury solve around a batch's majority
pattern against each instance's own system, and its use on a layer-style batch."""

from __future__ import annotations

import numpy as np
import torch
from reference import kkt_implicit_gradient, solve_qp_reference

from altdiff_modeling import _altdiff as altdiff_module
from altdiff_modeling import _function as function_module
from altdiff_modeling import solve_qp
from altdiff_modeling.linsys import woodbury as woodbury_module
from altdiff_modeling.linsys.woodbury import MajorityBases, MajoritySystems, differing_rows


def _shared_system(rng: np.random.Generator, m: int, rank: int) -> torch.Tensor:
    """``R S`` as the backward builds it: S = C K^{-1} C' of rank ``rank``, R > 0."""
    C = rng.standard_normal((m, rank))
    M = rng.standard_normal((rank, rank))
    S = C @ np.linalg.inv(M @ M.T + np.eye(rank)) @ C.T
    R = np.where(np.arange(m) < 3, 100.0, 0.5)  # stiff "equality" rows first
    return torch.from_numpy(R[:, None] * S)


def _layer_like_batch(
    rng: np.random.Generator, B: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inactive rows ``(B, m)`` (mostly inactive, the first 3 always active, as equality
    rows are) and right-hand sides ``(B, m)``."""
    inactive = torch.from_numpy(rng.random((B, m)) > 0.2)
    inactive[:, :3] = False
    return inactive, torch.from_numpy(rng.standard_normal((B, m)))


def _each_instance_solution(
    RS: torch.Tensor, inactive: torch.Tensor, rhs: torch.Tensor
) -> torch.Tensor:
    """``(RS - D_i)^{-1} rhs_i`` by one dense solve per instance."""
    systems = RS.expand(inactive.shape[0], -1, -1) - torch.diag_embed(inactive.to(RS.dtype))
    return torch.linalg.solve(systems, rhs.unsqueeze(-1)).squeeze(-1)


def _relative_errors(c: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return (c - expected).norm(dim=1) / expected.norm(dim=1)


def _assert_solves_each_instance(
    systems: MajoritySystems,
    RS: torch.Tensor,
    inactive: torch.Tensor,
    rhs: torch.Tensor,
    tol: float,
) -> None:
    """``systems.solve(rhs)`` is each instance's own solution, to ``tol`` relative."""
    error = _relative_errors(systems.solve(rhs), _each_instance_solution(RS, inactive, rhs))
    assert float(error.max()) <= tol, error


def test_woodbury_solve_matches_each_instance_system():
    rng = np.random.default_rng(0)
    m, B = 40, 16
    RS = _shared_system(rng, m, rank=30)
    # Mostly inactive inequality rows, each instance with its own few active ones.
    inactive, rhs = _layer_like_batch(rng, B, m)
    inactive[0] = inactive.sum(0) * 2 > B  # one instance on the majority pattern itself
    _, differ = differing_rows(inactive)
    assert int(differ[0].sum()) == 0 and int(differ.sum(1).max()) >= 5

    systems = MajorityBases(RS, rank=RS.shape[0]).systems(inactive)
    assert systems is not None and bool(systems.regular.all())
    _assert_solves_each_instance(systems, RS, inactive, rhs, 1e-11)


def test_woodbury_solve_where_an_instance_differs_in_row_zero_and_in_fewer_rows():
    # Instance 0 differs from the majority in row 0 and one more row, instance 1 in six
    # rows: instance 0's padding slots point at row 0 as well. They were written over
    # its row-0 term (a shared polish of a box-constrained batch came out 10 off).
    rng = np.random.default_rng(4)
    m, B = 12, 5
    RS = _shared_system(rng, m, rank=10)
    inactive = torch.ones(B, m, dtype=torch.bool)  # the majority: every row inactive
    inactive[0, [0, 5]] = False
    inactive[1, [1, 2, 3, 4, 6, 7]] = False
    rhs = torch.as_tensor(rng.standard_normal((B, m)))
    _, differ = differing_rows(inactive)
    assert bool(differ[0, 0]) and int(differ[0].sum()) < int(differ.sum(1).max())
    systems = MajorityBases(RS, rank=RS.shape[0]).systems(inactive)
    assert systems is not None and bool(systems.regular.all())
    _assert_solves_each_instance(systems, RS, inactive, rhs, 1e-11)


def test_merged_systems_solve_each_instance_on_its_replaced_pattern():
    # A batch's systems, then three instances polished again on corrected patterns (one
    # of them with more differing rows than any before): the merged systems solve every
    # instance's own system, and systems around another base do not merge.
    rng = np.random.default_rng(3)
    m, B = 40, 16
    RS = _shared_system(rng, m, rank=30)
    bases = MajorityBases(RS, rank=RS.shape[0])
    inactive, rhs = _layer_like_batch(rng, B, m)
    systems = bases.systems(inactive)
    index = torch.tensor([2, 7, 11])
    corrected = inactive[index].clone()
    corrected[0, 20:24] = ~corrected[0, 20:24]
    corrected[2, 25:40] = False
    assert systems is not None
    (base,) = bases._bases  # the one a correction's systems are built around
    again = MajoritySystems.build(RS, corrected, base)
    assert again.rows.shape[1] > systems.rows.shape[1]
    merged = systems.merged(index, again)
    assert merged is not None and bool(merged.regular.all())
    expected_inactive = inactive.clone()
    expected_inactive[index] = corrected
    assert torch.equal(merged.inactive, expected_inactive)
    c = merged.solve(rhs)
    # The merged systems are the parts' (padded), and solve each instance's own system.
    keep = torch.ones(B, dtype=torch.bool)
    keep[index] = False
    assert float(_relative_errors(c[keep], systems.solve(rhs)[keep]).max()) <= 1e-10
    assert float(_relative_errors(c[index], again.solve(rhs[index])).max()) <= 1e-10
    error = _relative_errors(c, _each_instance_solution(RS, expected_inactive, rhs))
    assert float(error.max()) <= 1e-10, error
    other = MajorityBases(RS, rank=RS.shape[0]).systems(corrected)
    assert other is not None and systems.merged(index, other) is None


def _layer_batch_data(seed: int, B: int, n: int) -> list[np.ndarray]:
    """Shared P, A, G (n/2 equalities, n inequalities) and batched q, b, h of feasible
    instances, as the benchmarks' layer-style batches draw them."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A, G = rng.standard_normal((n // 2, n)), rng.standard_normal((n, n))
    q, b, h = (rng.standard_normal((B, k)) for k in (n, n // 2, n))
    x0 = np.linalg.lstsq(A, b.T, rcond=None)[0].T
    lifted = x0 @ G.T + np.abs(rng.standard_normal((B, n)))
    return [M.T @ M, q, A, b, G, np.where(x0 @ G.T + 0.1 <= h, h, lifted)]


def _spy(monkeypatch, module, name: str) -> list[object]:
    calls: list[object] = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(module, name, spy)
    return calls


def _layer_batch_gradients(data: list[np.ndarray], weights: np.ndarray):
    """The solution ``(B, n)``, the solve's info and the gradients of
    ``sum(weights * x)`` with respect to q, b, h."""
    P, q, A, b, G, h = data
    wanted = [torch.tensor(v, requires_grad=True) for v in (q, b, h)]
    x, info = solve_qp(
        torch.from_numpy(P),
        wanted[0],
        torch.from_numpy(A),
        wanted[1],
        torch.from_numpy(G),
        wanted[2],
        return_info=True,
    )
    grads = torch.autograd.grad((x * torch.from_numpy(weights)).sum(), wanted)
    return x.detach().numpy(), info, [g.numpy() for g in grads]


def test_backward_after_a_shared_polish_reuses_its_systems(monkeypatch, unlimited_polishing):
    # Every instance is polished at one check (20 iterations), some of them after a
    # correction: the backward solves the polish's systems, merged with the
    # correction's (no factorization, no capacitance system), and its gradients agree
    # with implicit differentiation of each instance's KKT system at Clarabel's solution.
    through = _spy(monkeypatch, altdiff_module, "adjoint_through_polish")
    direct = _spy(monkeypatch, altdiff_module, "direct_adjoint")
    merged = _spy(monkeypatch, MajoritySystems, "merged")
    data = _layer_batch_data(1, 16, 30)
    weights = np.random.default_rng(0).standard_normal((16, 30))
    x, info, grads = _layer_batch_gradients(data, weights)
    assert info.status == ["solved"] * 16 and info.iterations.tolist() == [20] * 16
    assert len(merged) == 1 and merged[0] is not None
    assert len(through) == 1 and not direct and info.backward_iterations == 1
    P, q, A, b, G, h = data
    for i in range(16):
        x_ref, lam, nu = solve_qp_reference(P, q[i], A, b[i], G, h[i])
        assert np.abs(x[i] - x_ref).max() <= 1e-7
        reference = kkt_implicit_gradient(P, q[i], A, b[i], G, h[i], x_ref, lam, nu, weights[i])
        for got, expected in zip(grads, reference[1::2], strict=True):
            error = np.linalg.norm(got[i] - expected) / np.linalg.norm(expected)
            assert error <= 1e-7, (i, error)


def test_backward_on_other_active_sets_than_the_polished_ones_solves_their_own(monkeypatch):
    # Systems of the polish's factor on patterns that are not the solution's (one row
    # flipped in each instance) are not used: the backward builds the solution's own
    # systems on the factor's kept bases, with no factor of K, and the gradients are
    # those of the polish's systems.
    data = _layer_batch_data(2, 16, 30)
    weights = np.random.default_rng(0).standard_normal((16, 30))
    _, _, expected = _layer_batch_gradients(data, weights)
    solve = function_module.admm_solve
    final = []

    def with_other_patterns(*args, **kwargs):
        result = solve(*args, **kwargs)
        systems = result.polish_systems
        assert systems is not None
        final.append(systems.inactive)
        flipped = systems.inactive.clone()
        flipped[:, -1] = ~flipped[:, -1]
        result.polish_systems = result.factor.memo["polish"].systems(flipped)
        return result

    monkeypatch.setattr(function_module, "admm_solve", with_other_patterns)
    used = []
    through = altdiff_module.adjoint_through_polish

    def spy(factor, C, rows, systems, *args):
        used.append(systems.inactive)
        return through(factor, C, rows, systems, *args)

    monkeypatch.setattr(altdiff_module, "adjoint_through_polish", spy)
    direct = _spy(monkeypatch, altdiff_module, "direct_adjoint")
    _, info, grads = _layer_batch_gradients(data, weights)
    assert len(used) == 1 and torch.equal(used[0], final[0])
    assert not direct and info.backward_iterations == 1
    for got, want in zip(grads, expected, strict=True):
        assert np.linalg.norm(got - want) <= 1e-9 * np.linalg.norm(want)


def _singular_majority_case() -> tuple[torch.Tensor, torch.Tensor]:
    """``R S`` of rank 5 (m = 10) and three instances with 4 active rows each among rows
    0-5, each row active in two of them: the majority pattern has 6 active rows and a
    singular matrix, while each instance's own system is regular."""
    RS = _shared_system(np.random.default_rng(1), 10, rank=5)
    inactive = torch.ones(3, 10, dtype=torch.bool)
    for i, active in enumerate([(0, 1, 2, 3), (2, 3, 4, 5), (0, 1, 4, 5)]):
        inactive[i, list(active)] = False
    return RS, inactive


def test_woodbury_solve_of_a_well_conditioned_batch_skips_the_refinement():
    rng = np.random.default_rng(0)
    m, B = 40, 16
    C = rng.standard_normal((m, 60)) / np.sqrt(60)
    RS = torch.from_numpy(0.5 * C @ C.T)  # condition numbers in the hundreds
    inactive, rhs = _layer_like_batch(rng, B, m)
    systems = MajorityBases(RS, rank=RS.shape[0]).systems(inactive)
    assert systems is not None and bool(systems.regular.all()) and not systems.refine
    _assert_solves_each_instance(systems, RS, inactive, rhs, 1e-12)


def test_woodbury_solve_around_a_nearly_singular_majority_matrix_is_refined():
    # The majority pattern's matrix has a condition number near 2e9: its inverse carries
    # rounding of ~1e-7 into the identity, while each instance's own matrix is well
    # conditioned (below 1e6): the refinement step against it recovers the digits.
    RS, inactive = _singular_majority_case()
    B, m = inactive.shape
    RS = RS + 1e-6 * torch.eye(m, dtype=RS.dtype)
    own = RS.expand(B, m, m) - torch.diag_embed(inactive.to(RS.dtype))
    assert float(torch.linalg.cond(own).max()) < 1e6
    rhs = torch.from_numpy(np.random.default_rng(2).standard_normal((B, m)))
    systems = MajorityBases(RS, rank=RS.shape[0]).systems(inactive)
    assert systems is not None and systems.refine
    _assert_solves_each_instance(systems, RS, inactive, rhs, 1e-10)


def test_woodbury_solve_gives_none_where_the_majority_matrix_is_singular():
    RS, inactive = _singular_majority_case()
    B, m = inactive.shape
    systems = RS.expand(B, m, m) - torch.diag_embed(inactive.to(RS.dtype))
    assert float(torch.linalg.cond(systems).max()) < 1e8
    assert MajorityBases(RS, rank=RS.shape[0]).systems(inactive) is None


def _counting_base_builds(monkeypatch) -> list[object]:
    built: list[object] = []
    original = woodbury_module.MajorityBase.build.__func__

    def spy(cls, *args):
        built.append(original(cls, *args))
        return built[-1]

    monkeypatch.setattr(woodbury_module.MajorityBase, "build", classmethod(spy))
    return built


def test_a_pattern_with_more_active_rows_than_the_rank_is_not_inverted(monkeypatch):
    # S = C K^{-1} C' has rank 30: with 35 rows active, a null vector of C_a' (zero on
    # the inactive rows) solves RS - D0 to zero. No m x m inverse is tried for it.
    built = _counting_base_builds(monkeypatch)
    rng = np.random.default_rng(7)
    m, B = 40, 8
    RS = _shared_system(rng, m, rank=30)
    inactive = torch.zeros(B, m, dtype=torch.bool)
    inactive[:, 35:] = True
    singular = RS - torch.diag(inactive[0].to(RS.dtype))
    assert int(torch.linalg.matrix_rank(singular)) < m
    assert MajorityBases(RS, rank=30).systems(inactive) is None
    assert built == []
    assert MajorityBases(RS, rank=m).systems(inactive) is None  # the inverse fails
    assert len(built) == 1 and built[0] is None


def test_kept_bases_serve_later_batches_near_their_pattern(monkeypatch):
    # A later batch on the same pattern, and a few instances whose own majority differs
    # from it in a few rows (the corrected polishes), reuse the kept inverse.
    built = _counting_base_builds(monkeypatch)
    rng = np.random.default_rng(5)
    m, B = 40, 16
    RS = _shared_system(rng, m, rank=30)
    bases = MajorityBases(RS, rank=RS.shape[0])
    inactive, rhs = _layer_like_batch(rng, B, m)
    again, rhs_again = _layer_like_batch(rng, B, m)
    few = inactive[:3].clone()
    few[:, 10:13] = ~few[:, 10:13]
    assert not torch.equal(differing_rows(few)[0], differing_rows(inactive)[0])
    for batch, right in ((inactive, rhs), (few, rhs[:3]), (again, rhs_again)):
        systems = bases.systems(batch)
        assert systems is not None and bool(systems.regular.all())
        _assert_solves_each_instance(systems, RS, batch, right, 1e-11)
    assert len(built) == 1


def test_a_lone_instance_reuses_a_kept_base_within_a_quarter_of_the_rows(monkeypatch):
    # A layer's single problem on moving data: its active set moves by more rows than
    # the few a batch may add (4), but capacitance systems of up to m / 4 rows cost
    # little against a new m x m inverse, so the kept base serves; beyond, a new one.
    built = _counting_base_builds(monkeypatch)
    rng = np.random.default_rng(4)
    m = 40
    RS = _shared_system(rng, m, rank=30)
    bases = MajorityBases(RS, rank=RS.shape[0])
    first = torch.from_numpy(rng.random((1, m)) > 0.3)
    first[:, :3] = False
    assert bases.systems(first) is not None and len(built) == 1
    for moved, new_bases in ((10, 0), (11, 1)):
        later = first.clone()
        later[:, 3 : 3 + moved] = ~later[:, 3 : 3 + moved]
        rhs = torch.from_numpy(rng.standard_normal((1, m)))
        systems = bases.systems(later)
        assert systems is not None and len(built) == 1 + new_bases
        _assert_solves_each_instance(systems, RS, later, rhs, 1e-10)


def test_a_batch_whose_pattern_gives_no_base_is_solved_on_a_kept_one(monkeypatch):
    # The three instances of the singular-majority case, after a batch whose base is
    # regular but far from their pattern (8 rows, more than the 2 + 4 a kept base may
    # add): they are solved around that base instead of falling back.
    built = _counting_base_builds(monkeypatch)
    RS, inactive = _singular_majority_case()
    B, m = inactive.shape
    rng = np.random.default_rng(11)
    bases = MajorityBases(RS, rank=RS.shape[0])
    first = torch.ones(2, m, dtype=torch.bool)
    first[:, 6:] = False
    assert bases.systems(first) is not None
    rhs = torch.from_numpy(rng.standard_normal((B, m)))
    systems = bases.systems(inactive)
    assert [base is None for base in built] == [False, True]
    assert systems is not None and bool(systems.regular.all())
    _assert_solves_each_instance(systems, RS, inactive, rhs, 1e-9)
    # A pattern known to fail is not inverted again.
    assert MajorityBases(RS, rank=RS.shape[0]).systems(inactive) is None
    assert bases.systems(inactive) is not None and len(built) == 3


def test_direct_backward_on_a_batch_with_different_active_sets_matches_gmres(monkeypatch):
    # Shared P, A, G with batched q, b, h, drawn so that the instances' active sets
    # differ: the Woodbury path, checked against GMRES on the same solves.
    built = []
    original = MajoritySystems.build.__func__

    def spy(cls, *args):
        built.append(original(cls, *args))
        return built[-1]

    monkeypatch.setattr(MajoritySystems, "build", classmethod(spy))
    rng = np.random.default_rng(2)
    B, n, n_eq, n_ineq = 12, 15, 4, 20
    M = rng.standard_normal((n, n))
    P = M @ M.T + np.eye(n)
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((n_ineq, n))
    q = rng.standard_normal((B, n))
    x0 = rng.standard_normal((B, n))
    b = x0 @ A.T
    h = x0 @ G.T + rng.uniform(-0.5, 1.0, (B, n_ineq))
    grads, active = {}, None
    for method in ("direct", "gmres"):
        q_t = torch.tensor(q, requires_grad=True)
        h_t = torch.tensor(h, requires_grad=True)
        args = [torch.from_numpy(P), q_t, torch.from_numpy(A), torch.from_numpy(b)]
        x, info = solve_qp(
            *args,
            torch.from_numpy(G),
            h_t,
            solver_args={"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_method": method},
            return_info=True,
        )
        assert info.status == ["solved"] * B
        built.clear()  # the forward pass may have polished through it too
        grads[method] = torch.autograd.grad((x * x).sum(), [q_t, h_t])
        if method == "direct":
            assert info.backward_iterations == 1
            assert len(built) == 1 and built[0] is not None and bool(built[0].regular.all())
            slack = h - x.detach().numpy() @ G.T
            active = slack < 1e-7
    # The precondition: instances differ from each other in which rows are active.
    assert len({tuple(row) for row in active}) >= B // 2
    for direct, gmres in zip(grads["direct"], grads["gmres"], strict=True):
        assert float((direct - gmres).norm() / gmres.norm()) <= 1e-7


def test_a_singular_instance_is_flagged_and_the_others_are_solved():
    # Instance 1 has every row active: 40 rows of a rank-30 R S, a singular system.
    rng = np.random.default_rng(4)
    m, B = 40, 6
    RS = _shared_system(rng, m, rank=30)
    inactive, rhs = _layer_like_batch(rng, B, m)
    inactive[1] = False
    systems = MajorityBases(RS, rank=RS.shape[0]).systems(inactive)
    assert systems is not None
    assert systems.regular.tolist() == [i != 1 for i in range(B)]
    c = systems.solve(rhs)
    assert float(c[1].abs().max()) == 0.0
    keep = [i for i in range(B) if i != 1]
    expected = _each_instance_solution(RS, inactive[keep], rhs[keep])
    error = _relative_errors(c[keep], expected)
    assert float(error.max()) <= 1e-11, error


def test_direct_backward_with_per_instance_matrices_solves_the_active_rows_system(
    monkeypatch,
):
    # Per-instance P and G: each instance's active-rows KKT system, against GMRES.
    import altdiff_modeling._direct_adjoint as adjoint_module

    used = []
    original = adjoint_module._per_instance_adjoint

    def spy(*args):
        used.append(original(*args))
        return used[-1]

    monkeypatch.setattr(adjoint_module, "_per_instance_adjoint", spy)
    rng = np.random.default_rng(8)
    B, n, n_eq, n_ineq = 10, 14, 3, 20
    M = rng.standard_normal((B, n, n))
    P = M @ M.transpose(0, 2, 1) + np.eye(n)
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((B, n_ineq, n))
    q = rng.standard_normal((B, n))
    x0 = rng.standard_normal((B, n))
    b = x0 @ A.T
    h = np.einsum("bij,bj->bi", G, x0) + rng.uniform(0.0, 1.0, (B, n_ineq))
    grads = {}
    for method in ("direct", "gmres"):
        inputs = [torch.tensor(v, requires_grad=True) for v in (P, q, G, h)]
        P_t, q_t, G_t, h_t = inputs
        x, info = solve_qp(
            P_t,
            q_t,
            torch.from_numpy(A),
            torch.from_numpy(b),
            G_t,
            h_t,
            solver_args={"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_method": method},
            return_info=True,
        )
        assert info.status == ["solved"] * B
        grads[method] = torch.autograd.grad((x * x).sum(), inputs)
        if method == "direct":
            assert info.backward_iterations == 1 and len(used) == 1
            slack = h - np.einsum("bij,bj->bi", G, x.detach().numpy())
            assert int((slack < 1e-7).sum()) >= B  # active inequalities to pass through
    for direct, gmres in zip(grads["direct"], grads["gmres"], strict=True):
        assert float((direct - gmres).norm() / gmres.norm()) <= 1e-7


def test_backward_through_the_systems_of_another_penalty_matches_its_own():
    # A layer polishes with the factor it kept for polishing, whose rho may differ from
    # the final iteration's: the systems of H(R') give the recursion's fixed point for
    # R once g_v is scaled by R'/R and c corrected by (R - R') C t.
    from altdiff_modeling._altdiff import adjoint_through_polish as through
    from altdiff_modeling._polish import SharedPolisher
    from altdiff_modeling.linsys.cholesky import CholeskyFactor
    from altdiff_modeling.linsys.systems import penalty_rows

    rng = np.random.default_rng(12)
    n, n_eq, m, B, sigma = 30, 5, 35, 4, 1e-6
    M = rng.standard_normal((n, n))
    P = torch.from_numpy(M.T @ M / n)[None]
    C = torch.from_numpy(rng.standard_normal((m, n)))[None]
    inactive = torch.from_numpy(rng.random((B, m)) > 0.4)
    inactive[:, :n_eq] = False
    g_x = torch.from_numpy(rng.standard_normal((B, n)))
    g_v = torch.where(inactive, 0.0, torch.from_numpy(rng.standard_normal((B, m))))
    answers = []
    for rho in (0.1, 3.0):
        rows = penalty_rows(torch.tensor([rho], dtype=torch.float64), n_eq, m)
        H = P + sigma * torch.eye(n, dtype=torch.float64) + C.mT @ (rows[..., None] * C)
        factor = CholeskyFactor(H)
        shared = SharedPolisher(C, n_eq).shared_data(factor, rows)
        answers.append((factor, rows, shared))
    (f_own, r_own, own), (f_other, r_other, other) = answers
    expected = through(f_own, C, r_own, own.systems(inactive), own.HinvCt, sigma, 1e-14)(g_x, g_v)
    got = through(f_other, C, r_other, other.systems(inactive), other.HinvCt, sigma, 1e-14, r_own)
    for value, want in zip(got(g_x, g_v), expected, strict=True):
        assert float((value - want).norm() / want.norm()) <= 1e-9
    unconverted = through(f_other, C, r_other, other.systems(inactive), other.HinvCt, sigma, 1e-14)
    unconverted = unconverted(g_x, g_v)
    assert float((unconverted[1] - expected[1]).norm() / expected[1].norm()) > 1e-3


def test_a_direct_backward_of_an_ill_conditioned_p_is_refined_instead_of_rejected(monkeypatch):
    # P's eigenvalues from 1e-3 to 1e3: the direct answer through the polish's systems
    # is about 1e-4 off the fixed point, and the check rejected it on every instance,
    # leaving the backward to GMRES (seconds at n = 100, B = 64, and at a point polished
    # at the first check, its iteration limit). Refined by the same solver, the answer
    # passes the check on every instance. Instances drawn from a strictly complementary
    # certificate, so that the exact gradient is unique.
    gmres = _spy(monkeypatch, altdiff_module, "batched_gmres")
    rng = np.random.default_rng(5)
    n, B, n_eq = 20, 8, 5
    U = np.linalg.qr(rng.standard_normal((n, n)))[0]
    P = (U * np.logspace(-3, 3, n)) @ U.T
    P = (P + P.T) / 2
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((n, n))
    x_star, lam = rng.standard_normal((B, n)), rng.standard_normal((B, n_eq))
    nu, slack = np.zeros((B, n)), rng.uniform(0.1, 1.0, (B, n))
    for i in range(B):
        rows = rng.choice(n, 2, replace=False)
        nu[i, rows], slack[i, rows] = rng.uniform(0.1, 1.0, 2), 0.0
    q = -(x_star @ P + lam @ A + nu @ G)
    b, h = x_star @ A.T, x_star @ G.T + slack
    weights = rng.standard_normal((B, n))
    q_t, h_t = (torch.tensor(v, requires_grad=True) for v in (q, h))
    matrices = (torch.from_numpy(v) for v in (P, A, G))
    P_t, A_t, G_t = matrices
    x, info = solve_qp(P_t, q_t, A_t, torch.from_numpy(b), G_t, h_t, return_info=True)
    grads = torch.autograd.grad((x * torch.from_numpy(weights)).sum(), (q_t, h_t))
    assert info.status == ["solved"] * B and info.backward_status == ["converged"] * B
    assert not gmres
    for i in range(B):
        reference = kkt_implicit_gradient(
            P, q[i], A, b[i], G, h[i], x_star[i], lam[i], nu[i], weights[i]
        )
        for got, expected in zip(grads, (reference[1], reference[5]), strict=True):
            error = np.linalg.norm(got[i].numpy() - expected) / np.linalg.norm(expected)
            assert error <= 1e-7, (i, error)


def test_a_degenerate_lp_layer_backward_is_solved_directly():
    # A regularized shortest path with every conservation row: the edges sit at their
    # bounds, so more rows are active than there are variables and the multipliers are
    # not unique. x is, and the costs are the only parameters: the active rows' KKT
    # system gives the backward in one solve (GMRES on the recursion took a hundred
    # steps and more on such layers), with the gradients of central differences.
    import cvxpy as cp
    from lp_layers import grid_shortest_path
    from reference import finite_difference_gradient

    from altdiff_modeling import AltDiffLayer

    N, supply = grid_shortest_path(3)
    n = N.shape[1]
    x = cp.Variable(n)
    cost = cp.Parameter(n)
    problem = cp.Problem(
        cp.Minimize(cost @ x + 0.005 * cp.sum_squares(x)), [N @ x == supply, x >= 0, x <= 1]
    )
    rng = np.random.default_rng(11)
    costs = np.exp(0.5 * rng.standard_normal((4, n)))
    weights = rng.standard_normal((4, n))
    args = {"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_method": "direct"}
    layer = AltDiffLayer(problem, [cost], [x], solver_args=args)
    costs_t = torch.tensor(costs, requires_grad=True)
    (solution,), info = layer(costs_t, return_info=True)
    (solution * torch.from_numpy(weights)).sum().backward()
    assert info.backward_iterations == 1 and info.backward_status == ["converged"] * 4
    active = (solution.detach().numpy() < 1e-8) | (solution.detach().numpy() > 1 - 1e-8)
    assert int(active.sum(1).min()) + N.shape[0] > n  # more active rows than variables
    for i in range(4):
        expected = finite_difference_gradient(problem, {cost: costs[i]}, [x], [weights[i]])
        np.testing.assert_allclose(costs_t.grad[i].numpy(), expected[cost], atol=1e-6)
