"""Degenerate solutions: where the backward's derivative is not unique.

A QP's solution map is differentiable at a solution whose inequality rows are strictly
complementary and whose active rows' KKT system ``[[P, C_a'], [C_a, 0]]`` is regular.
The backward reports the instances where either fails in a way that changes the
gradient asked for (`SolveInfo.backward_status` ``"degenerate"``), and returns the
recursion's limit there (docs/theory.md, "Degenerate solutions"):

- **Weakly active rows** (`weakly_active`): an inequality whose slack and multiplier
  both vanish, to ten times the forward's tolerances. The recursion's limit is the
  derivative of the piece on which the rows with a positive multiplier stay active;
  `pieces_differ` says where the other side's piece gives another gradient, `absorbed`
  where a free variable of the row takes the change alone, and where the other side
  gives the same fixed point, its system is tested as below.
- **A singular active rows' system** (`singular_systems`): a solution that is not
  unique along a direction the loss sees, or dependent active rows whose multipliers
  reach the gradients asked for.
"""

from __future__ import annotations

import torch

from ._admm import SolveResult
from ._batched_sparse import BatchedSparse
from ._polish import ReducedKKT, gather_active_rows
from ._qp import Matrix, QPData, matvec, select_rows
from ._scaling import Scaling
from .linsys.systems import ActiveSystems, sparse_P

__all__ = [
    "WEAK_WITHIN",
    "absorbed",
    "dense_test_flops",
    "pieces_differ",
    "singular_systems",
    "weakly_active",
]

WEAK_WITHIN = 10.0  # times the tolerances
# A system is singular where its smallest eigenvalue modulus is at most this fraction
# of its largest entry (the sparse test resolves down to ten times its regularization,
# 1e-9, on the solver's equilibrated data); its unit null vector's part on the rows whose
# multipliers matter counts above `_PART`.
_SINGULAR_WITHIN = 1e-8
_PART = 0.1
_SHIFT = 1e-12  # of the dense test, relative to the system's largest entry
_INVERSE_ITERATIONS = 3
# The cotangent sees a direction where their cosine exceeds this.
_SEEN = 1e-6


def weakly_active(data: QPData, scaling: Scaling, result: SolveResult) -> torch.Tensor:
    """``(B, m)`` bool: the weakly active inequality rows of the forward's solution
    (scaled units, of the scaled ``data``), measured against the tolerances its
    residuals were tested with."""
    inv_D, inv_E = 1 / scaling.D, 1 / scaling.E
    slack = (data.bound - matvec(data.C, result.x)) * inv_E
    multiplier = scaling.E * result.y / scaling.c  # the user's nu
    share = multiplier * _row_norms(data.C, inv_D, inv_E)
    weak = (slack <= WEAK_WITHIN * result.primal_tolerance.unsqueeze(-1)) & (
        share <= WEAK_WITHIN * result.dual_tolerance.unsqueeze(-1)
    )
    weak[:, : data.n_eq] = False
    return weak


def pieces_differ(
    weak: torch.Tensor,
    inactive: torch.Tensor,
    c: torch.Tensor,
    rCt: torch.Tensor,
    g_v: torch.Tensor,
    size: torch.Tensor,
    tol: float,
) -> torch.Tensor:
    """``(B, m)`` bool: the weakly active rows that change the gradient if they change
    side.

    The transposed recursion's fixed point ``(a, c)`` with ``t`` (`_altdiff`) satisfies
    ``c_i = R_i (C t)_i + g_v,i`` on an inactive row and ``R_i (C t)_i = g_v,i`` on an
    active one. Where it also satisfies the other side's condition on each weakly active
    row, it is the fixed point with those rows on either side, and every gradient is
    the same; otherwise the one-sided derivatives differ (see also `absorbed`).

    Args:
        weak: ``(B, m)`` the weakly active rows.  inactive: ``(B, m)`` D.
        c, rCt, g_v: ``(B, m)`` the fixed point's c, ``R C t`` and the source's part.
        size: ``(B,)`` the fixed point's and the source's size (infinity norm).
        tol: The relative change that counts.
    """
    other_side = torch.where(inactive, (rCt - g_v).abs(), (c - 2 * g_v).abs())
    return weak & (other_side > tol * size.unsqueeze(-1))


def absorbed(
    data: QPData,
    rows: torch.Tensor,
    inactive: torch.Tensor,
    grad_x: torch.Tensor,
    live_q: torch.Tensor,
    multiplier_rows: torch.Tensor,
) -> torch.Tensor:
    """``(B, m)`` bool: the rows ``rows`` whose change of side changes no gradient asked
    for, because a free variable of theirs absorbs it.

    A variable is free where no term of the objective (its column of P), no other active
    row, the loss (``grad_x``) or a gradient asked for (``live_q``) sees it: an
    auxiliary variable of a canonical form, such as the epigraph t of ``|u| <= 1`` away
    from the bound. A row on such a variable moves only that variable when it changes
    side, and its own multiplier's gradients, which count only on ``multiplier_rows``.
    """
    active = (~inactive).to(grad_x.dtype)
    if isinstance(data.C, BatchedSparse):
        C, P = data.C, sparse_P(data)
        on = (C.values != 0).to(grad_x.dtype)  # (1|B, E)
        own = active[:, C.rows] * on  # (B, E): the active rows' entries
        in_rows = torch.zeros_like(grad_x).index_add_(1, C.cols, own)  # per variable
        P_on = (P.values != 0).to(grad_x.dtype)
        in_P = P_on.new_zeros(P_on.shape[0], grad_x.shape[1]).index_add_(1, P.cols, P_on)
        free = (in_P == 0) & (grad_x == 0) & ~live_q
        # Whether another active row than an entry's own touches its variable.
        entry_free = free[:, C.cols] & (in_rows[:, C.cols] - own == 0) & (on > 0)
        absorbing = torch.zeros_like(active).index_add_(1, C.rows, entry_free.to(active.dtype)) > 0
    else:
        on = (data.C != 0).to(grad_x.dtype)  # (1|B, m, n)
        count = (active.unsqueeze(1) @ on).squeeze(1)  # (B, n) active rows per variable
        free = ((data.P != 0).sum(-2) == 0) & (grad_x == 0) & ~live_q  # (B, n)

        # No other active row touches a free variable of a row where the active rows
        # touching it are the row itself (an active row) or none (an inactive one):
        # two products with the 0/1 pattern, not a (B, m, n) comparison.
        def reaches(alone: torch.Tensor) -> torch.Tensor:
            return (on @ alone.to(on.dtype).unsqueeze(-1)).squeeze(-1) > 0  # (B, m)

        alone_active, alone_inactive = free & (count == 1), free & (count == 0)
        absorbing = torch.where(active > 0, reaches(alone_active), reaches(alone_inactive))
    return rows & absorbing & ~multiplier_rows


def _row_norms(C: Matrix, inv_D: torch.Tensor, inv_E: torch.Tensor) -> torch.Tensor:
    """``(1|B, m)``: the largest absolute entry of each row of the user's C,
    ``E^-1 C D^-1`` of the scaled C: how much a multiplier moves the dual residual."""
    if isinstance(C, BatchedSparse):
        unscaled = C.with_values(C.values * inv_D[:, C.cols])
        return unscaled.row_abs_max() * inv_E
    return (C.abs() * inv_D.unsqueeze(-2)).amax(-1) * inv_E


def singular_systems(
    data: QPData,
    inactive: torch.Tensor,
    candidates: torch.Tensor,
    multiplier_rows: torch.Tensor,
    grad_x: torch.Tensor,
    systems: ActiveSystems | None = None,
) -> torch.Tensor:
    """``(B,)`` bool: the instances whose active rows' system is singular in a way that
    matters to the gradients asked for (module docstring).

    Args:
        data: The scaled QP data.
        inactive: ``(B, m)`` bool, the rows the backward treats as inactive.
        candidates: ``(B,)`` bool, the instances to test: the caller's choice (every
            sparse one; dense ones by cost, `dense_test_flops`).
        multiplier_rows: ``(1|B, m)`` bool, the rows whose multipliers reach the
            gradients asked for (of C's rows, of the bounds or of the multipliers, where
            they depend on a parameter): dependent rows matter only there.
        grad_x: ``(B, n)`` the cotangent of x: a solution that is not unique only along
            directions it does not see (an auxiliary variable of a canonical form) leaves
            the loss, and its gradient, unique.
        systems: Sparse data's active rows' systems, shared with the direct backward
            (a new set where None).
    """
    active = ~inactive
    found = (active.sum(1) > data.n) & (active & multiplier_rows).any(1) & candidates
    index = torch.nonzero(candidates & ~found).flatten()
    if index.numel() and not isinstance(data.C, BatchedSparse):
        index = index[~_cleared(data, active, multiplier_rows, index)]
    if index.numel() == 0:
        return found
    if isinstance(data.C, BatchedSparse):
        systems = systems or ActiveSystems(sparse_P(data), data.C)
        relative, primal, dual = _sparse_null_spaces(systems, active, index)
    else:
        relative, primal, dual = _dense_null_spaces(data, active, index)
    primal, dual = primal.to(grad_x), dual.to(grad_x)
    singular = (relative <= _SINGULAR_WITHIN).to(found.device)
    g = grad_x[index]
    size = primal.norm(dim=-1)
    seen = (size > _PART) & ((g * primal).sum(-1).abs() > _SEEN * g.norm(dim=-1) * size)
    rows = multiplier_rows[index] if multiplier_rows.shape[0] > 1 else multiplier_rows
    reaching = (dual * rows).norm(dim=-1) > _PART  # dependent rows whose multipliers matter
    flagged = singular & (seen | reaching)
    found = found.clone()
    found[index] = flagged
    return found


def _cleared(
    data: QPData, active: torch.Tensor, multiplier_rows: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``(K,)`` bool: the dense instances ``index`` ``(K,)`` that no null vector can make
    degenerate, by a screen far cheaper than their null spaces (an LDL' of n plus the
    active rows each).

    Where no active row's multiplier reaches a gradient, only a null vector ``(x, 0)``
    could, and `ReducedKKT.primal_singular` rules one out: along one, the regularized
    Schur complement is within ten times its regularization (1e-6), while the null space
    test flags a smallest eigenvalue modulus of at most 1e-8 of the largest entry.
    """
    cleared = torch.zeros_like(index, dtype=torch.bool)
    unseen = ReducedKKT.multipliers_unseen(active[index], select_rows(multiplier_rows, index))
    if not bool(unseen.any()):
        return cleared
    screened = index[unseen]
    # float64: the Schur complement is regularized by 1e-6, as the polish's
    P, C = (select_rows(block, screened).to(torch.float64) for block in (data.P, data.C))
    system = ReducedKKT(P, C, active[screened])
    cleared[unseen] = ~system.primal_singular()
    return cleared


def dense_test_flops(n: int, m: int) -> float:
    """Operations of `singular_systems`' test of one dense instance with m rows (its
    active ones, where `_dense_null_spaces` gathers them): the LDL' factor of its
    ``n + m`` system and the inverse iteration's solves."""
    size = n + m
    return size**3 / 3 + 2 * _INVERSE_ITERATIONS * size * size


def _dense_null_spaces(
    data: QPData, active: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smallest eigenvalue modulus ``(K,)`` (relative to the largest entry) and the
    primal and dual parts ``(K, n)``, ``(K, m)`` of its unit eigenvector, of the
    instances ``index``' systems ``[[P, C_a'], [C_a, -s I_inactive]]`` (the active rows,
    gathered where they are few, and the others decoupled at the scale s of the
    matrix), by inverse iteration with a Bunch-Kaufman LDL' factor of the system
    shifted by ``+-_SHIFT s`` (positive on the primal block, negative on the dual: it
    keeps an exactly singular system factorable and moves no eigenvalue across the
    test's threshold)."""
    P, C = data.P, data.C
    P = P[index] if P.shape[0] > 1 else P.expand(index.numel(), -1, -1)
    C = C[index] if C.shape[0] > 1 else C.expand(index.numel(), -1, -1)
    on = active[index]
    count, m, n = C.shape
    C_a, rows = C * on.unsqueeze(-1).to(C.dtype), None
    gathered = gather_active_rows(C, on)
    if gathered is not None:  # the active rows alone (padded with zero rows)
        C_a, on, rows = gathered
        m = C_a.shape[1]
    scale = P.abs().flatten(1).amax(1)
    if C_a.numel():
        scale = torch.maximum(scale, C_a.abs().flatten(1).amax(1))
    scale = scale.clamp_min(torch.finfo(C.dtype).tiny).unsqueeze(-1)
    K = C.new_zeros(count, n + m, n + m)
    K[:, :n, :n] = P
    K[:, n:, :n] = C_a
    K[:, :n, n:] = C_a.mT
    dual_diagonal = -scale * torch.where(on, _SHIFT, 1.0)
    K.diagonal(dim1=-2, dim2=-1).add_(torch.cat([_SHIFT * scale.expand(-1, n), dual_diagonal], 1))
    LD, pivots, _ = torch.linalg.ldl_factor_ex(K)
    start = torch.sin(torch.arange(1, n + m + 1, dtype=C.dtype, device=C.device) * 0.7548776662)
    v = start.expand(count, -1)
    growth = torch.ones(count, dtype=C.dtype, device=C.device)
    for _ in range(_INVERSE_ITERATIONS):
        v = v / v.norm(dim=-1, keepdim=True)
        v = torch.linalg.ldl_solve(LD, pivots, v.unsqueeze(-1)).squeeze(-1)
        growth = v.norm(dim=-1)
    finite = torch.isfinite(growth)
    v = torch.where(finite.unsqueeze(-1), v / growth.unsqueeze(-1), 0.0)
    # No usable factor: taken as singular, with both parts, so that it counts.
    relative = torch.where(finite, 1 / (growth * scale.squeeze(-1)), 0.0)
    v = torch.where(finite.unsqueeze(-1), v, 1.0)
    dual = torch.where(on, v[:, n:], 0.0)
    if rows is not None:
        dual = dual.new_zeros(count, active.shape[1]).scatter_(1, rows, dual)
    return relative, v[:, :n], dual


def _sparse_null_spaces(
    systems: ActiveSystems, active: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As `_dense_null_spaces`, for sparse data (`linsys.sparse_kkt.ActiveKKT.null_space`
    on each instance, with the factor its direct solve used where it had one)."""
    on = active.cpu().numpy()
    relative, primal, dual = [], [], []
    for k in index.tolist():
        smallest, v_x, v_y = systems.get(k, on[k]).null_space()
        relative.append(smallest)
        primal.append(torch.from_numpy(v_x))
        dual.append(torch.from_numpy(v_y))
    as_tensor = torch.tensor(relative, dtype=torch.float64)
    return as_tensor, torch.stack(primal), torch.stack(dual)
