"""The direct backward's linear algebra: the Woodbury solve around a batch's majority
pattern against each instance's own system, and its use on a layer-style batch."""

from __future__ import annotations

import numpy as np
import torch

from altdiff_modeling import _woodbury as woodbury_module
from altdiff_modeling import solve_qp
from altdiff_modeling._woodbury import MajorityBases, MajoritySystems, differing_rows


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


def test_woodbury_solve_matches_each_instance_system():
    rng = np.random.default_rng(0)
    m, B = 40, 16
    RS = _shared_system(rng, m, rank=30)
    # Mostly inactive inequality rows, each instance with its own few active ones.
    inactive, rhs = _layer_like_batch(rng, B, m)
    inactive[0] = inactive.sum(0) * 2 > B  # one instance on the majority pattern itself
    _, differ = differing_rows(inactive)
    assert int(differ[0].sum()) == 0 and int(differ.sum(1).max()) >= 5

    systems = MajorityBases(RS).systems(inactive)
    assert systems is not None and bool(systems.regular.all())
    error = _relative_errors(systems.solve(rhs), _each_instance_solution(RS, inactive, rhs))
    assert float(error.max()) <= 1e-11, error


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
    systems = MajorityBases(RS).systems(inactive)
    assert systems is not None and bool(systems.regular.all()) and not systems.refine
    error = _relative_errors(systems.solve(rhs), _each_instance_solution(RS, inactive, rhs))
    assert float(error.max()) <= 1e-12, error


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
    systems = MajorityBases(RS).systems(inactive)
    assert systems is not None and systems.refine
    error = _relative_errors(systems.solve(rhs), _each_instance_solution(RS, inactive, rhs))
    assert float(error.max()) <= 1e-10, error


def test_woodbury_solve_gives_none_where_the_majority_matrix_is_singular():
    RS, inactive = _singular_majority_case()
    B, m = inactive.shape
    systems = RS.expand(B, m, m) - torch.diag_embed(inactive.to(RS.dtype))
    assert float(torch.linalg.cond(systems).max()) < 1e8
    assert MajorityBases(RS).systems(inactive) is None


def _counting_base_builds(monkeypatch) -> list[object]:
    built: list[object] = []
    original = woodbury_module.MajorityBase.build.__func__

    def spy(cls, *args):
        built.append(original(cls, *args))
        return built[-1]

    monkeypatch.setattr(woodbury_module.MajorityBase, "build", classmethod(spy))
    return built


def test_kept_bases_serve_later_batches_near_their_pattern(monkeypatch):
    # A later batch on the same pattern, and a few instances whose own majority differs
    # from it in a few rows (the corrected polishes), reuse the kept inverse.
    built = _counting_base_builds(monkeypatch)
    rng = np.random.default_rng(5)
    m, B = 40, 16
    RS = _shared_system(rng, m, rank=30)
    bases = MajorityBases(RS)
    inactive, rhs = _layer_like_batch(rng, B, m)
    again, rhs_again = _layer_like_batch(rng, B, m)
    few = inactive[:3].clone()
    few[:, 10:13] = ~few[:, 10:13]
    assert not torch.equal(differing_rows(few)[0], differing_rows(inactive)[0])
    for batch, right in ((inactive, rhs), (few, rhs[:3]), (again, rhs_again)):
        systems = bases.systems(batch)
        assert systems is not None and bool(systems.regular.all())
        error = _relative_errors(systems.solve(right), _each_instance_solution(RS, batch, right))
        assert float(error.max()) <= 1e-11, error
    assert len(built) == 1


def test_a_batch_whose_pattern_gives_no_base_is_solved_on_a_kept_one(monkeypatch):
    # The three instances of the singular-majority case, after a batch whose base is
    # regular but far from their pattern (8 rows, more than the 2 + 4 a kept base may
    # add): they are solved around that base instead of falling back.
    built = _counting_base_builds(monkeypatch)
    RS, inactive = _singular_majority_case()
    B, m = inactive.shape
    rng = np.random.default_rng(11)
    bases = MajorityBases(RS)
    first = torch.ones(2, m, dtype=torch.bool)
    first[:, 6:] = False
    assert bases.systems(first) is not None
    rhs = torch.from_numpy(rng.standard_normal((B, m)))
    systems = bases.systems(inactive)
    assert [base is None for base in built] == [False, True]
    assert systems is not None and bool(systems.regular.all())
    error = _relative_errors(systems.solve(rhs), _each_instance_solution(RS, inactive, rhs))
    assert float(error.max()) <= 1e-9, error
    # A pattern known to fail is not inverted again.
    assert MajorityBases(RS).systems(inactive) is None
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
    systems = MajorityBases(RS).systems(inactive)
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
