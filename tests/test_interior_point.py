"""The interior-point fallback against Clarabel, on dense and sparse data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from reference import solve_qp_reference

from altdiff_modeling._batched_sparse import BatchedSparse
from altdiff_modeling._interior_point import interior_point_solve
from altdiff_modeling._qp import QPData

DT = torch.float64


def _problem(seed: int, n: int, n_eq: int, n_in: int, lp: bool):
    """A feasible, bounded QP (an LP when ``lp``) with a known interior point."""
    r = np.random.default_rng(seed)
    M = r.standard_normal((n, n))
    P = np.zeros((n, n)) if lp else M @ M.T / n
    A = r.standard_normal((n_eq, n))
    G = np.vstack([r.standard_normal((n_in, n)), np.eye(n), -np.eye(n)])
    x0 = r.uniform(-0.5, 0.5, n)
    b = A @ x0
    h = G @ x0 + r.uniform(0.1, 1.0, G.shape[0])
    q = r.standard_normal(n)
    return P, q, A, b, G, h


def _data(blocks, sparse: bool) -> QPData:
    P, q, A, b, G, h = (torch.from_numpy(v) for v in blocks)
    data = QPData.from_blocks(P[None], q[None], A[None], b[None], G[None], h[None], 1)
    if not sparse:
        return data
    C = BatchedSparse.from_scipy(sp.csr_array(data.C[0].numpy()), DT, data.C.device)
    Ps = BatchedSparse.from_scipy(sp.csr_array(data.P[0].numpy()), DT, data.P.device)
    return QPData(Ps, data.q, C, data.bound, data.n_eq, 1)


def _stacked(data: QPData, instances: list[QPData]) -> QPData:
    """The instances as one batch (dense data) or their first (sparse data)."""
    if data.sparse:
        return data
    blocks = [torch.cat([getattr(d, k) for d in instances]) for k in ("P", "q", "C", "bound")]
    return QPData(*blocks, data.n_eq, len(instances))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("lp", [False, True])
def test_solutions_match_clarabel(sparse, lp):
    problems = [_problem(seed, 12, 3, 8, lp) for seed in range(3 if not sparse else 1)]
    instances = [_data(p, sparse) for p in problems]
    data = _stacked(instances[0], instances)

    C = data.C.to_dense() if sparse else data.C
    P = torch.stack([torch.from_numpy(p[0]) for p in problems])

    def accept(x, z, y):
        """A tight test of the KKT conditions (z is C x on the constraints' box)."""
        Cx = (C @ x.unsqueeze(-1)).squeeze(-1)
        dual = (P @ x.unsqueeze(-1)).squeeze(-1) + data.q + (y.unsqueeze(1) @ C).squeeze(1)
        primal = (Cx - data.bound)[:, data.n_eq :].clamp_min(0)
        slack = (data.bound - Cx)[:, data.n_eq :]
        complementarity = (y[:, data.n_eq :] * slack).abs()
        worst = torch.cat([dual.abs(), primal, complementarity], 1).amax(-1)
        return worst <= 1e-9

    result = interior_point_solve(data, accept)
    assert bool(result.converged.all())
    for (P, q, A, b, G, h), x in zip(problems, result.x):
        x_ref, _, _ = solve_qp_reference(P, q, A, b, G, h)
        assert np.abs(x.numpy() - x_ref).max() < 1e-6 * max(1.0, np.abs(x_ref).max())


def test_infeasible_instance_is_given_up_without_error():
    P, q, A, b, G, h = _problem(0, 6, 0, 2, lp=False)
    # x_0 <= -1 and x_0 >= 1: no feasible point
    G = np.vstack([G, np.eye(6)[:1], -np.eye(6)[:1]])
    h = np.concatenate([h, [-1.0, -1.0]])
    data = _data((P, q, A, b, G, h), sparse=False)
    result = interior_point_solve(data, lambda x, z, y: torch.zeros(1, dtype=torch.bool))
    assert not bool(result.converged.any())


def test_a_cost_shared_by_instances_with_their_own_bounds():
    """A layer's constant q with batched h: q ``(1, n)``, bound ``(K, m)``."""
    P, q, A, b, G, h = _problem(1, 8, 2, 5, lp=False)
    shifts = [0.0, 0.3, 1.0]
    bound = torch.stack([torch.from_numpy(np.concatenate([b, h + s])) for s in shifts])
    C = torch.from_numpy(np.vstack([A, G]))[None]
    data = QPData(torch.from_numpy(P)[None], torch.from_numpy(q)[None], C, bound, 2, 3)

    def accept(x, z, y):
        dual = x @ torch.from_numpy(P) + data.q + y @ C[0]
        slack = (bound - x @ C[0].T)[:, 2:]
        worst = torch.cat([dual.abs(), (-slack).clamp_min(0), (y[:, 2:] * slack).abs()], 1)
        return worst.amax(-1) <= 1e-9

    result = interior_point_solve(data, accept)
    assert bool(result.converged.all())
    for s, x in zip(shifts, result.x):
        x_ref, _, _ = solve_qp_reference(P, q, A, b, G, h + s)
        assert np.abs(x.numpy() - x_ref).max() < 1e-6 * max(1.0, np.abs(x_ref).max())


def test_steps_after_the_first_accepted_point_go_far_below_the_tolerance():
    """The solve takes two more Newton steps once the test accepts: with a test at
    1e-4, the solution is much closer to Clarabel's than 1e-4."""
    P, q, A, b, G, h = _problem(2, 12, 3, 8, lp=False)
    data = _data((P, q, A, b, G, h), sparse=False)
    C = data.C

    def loose(x, z, y):
        dual = x @ torch.from_numpy(P) + data.q + y @ C[0]
        slack = (data.bound - x @ C[0].T)[:, 3:]
        worst = torch.cat([dual.abs(), (-slack).clamp_min(0), (y[:, 3:] * slack).abs()], 1)
        return worst.amax(-1) <= 1e-4

    result = interior_point_solve(data, loose)
    x_ref, _, _ = solve_qp_reference(P, q, A, b, G, h)
    assert bool(result.converged.all())
    assert np.abs(result.x[0].numpy() - x_ref).max() < 1e-7


def test_a_dual_residual_at_the_rounding_of_huge_multipliers_is_not_resolved():
    """x_0 <= 1 and -x_0 <= -1 (dependent active rows) at x_0 = 1: multipliers
    (1e12 - 1, 1e12) meet stationarity of min 1/2 ||x||^2 only to the rounding of their
    1e12 terms, so the fallback's acceptance refuses that point; (0, 1) is resolved."""
    from altdiff_modeling._admm import Residuals
    from altdiff_modeling._scaling import Scaling
    from altdiff_modeling._settings import SolverSettings

    P, q = torch.eye(2, dtype=DT)[None], torch.zeros(1, 2, dtype=DT)
    C = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=DT)
    data = QPData(P, q, C, torch.tensor([[1.0, -1.0]], dtype=DT), 0, 1)
    unit = Scaling(
        D=torch.ones(1, 2, dtype=DT), E=torch.ones(1, 2, dtype=DT), c=torch.ones(1, 1, dtype=DT)
    )
    residuals = Residuals(data, unit, SolverSettings(eps_abs=1e-6, eps_rel=0.0))
    x, z = torch.tensor([[1.0, 0.0]], dtype=DT), torch.tensor([[1.0, -1.0]], dtype=DT)
    for y, resolved in (([1e12 - 1.0, 1e12], False), ([0.0, 1.0], True)):
        residuals.measure(x, z, torch.tensor([y], dtype=DT))
        assert bool(residuals.dual_resolved()[0]) is resolved
