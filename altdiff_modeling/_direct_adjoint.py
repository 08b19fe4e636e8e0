"""The reverse-mode Alt-Diff fixed point by one factorization instead of iterations.

At the limit of the transposed recursion (see `_altdiff`), ``w = (a, c)`` satisfies::

    a = sigma t + g_x,        t = H^{-1} (a + C'c),    H = P + sigma*I + C' R C
    c = (2D - I) R C t + (I - D) c + g_v

Substituting ``a`` cancels sigma: ``t = K^{-1} (g_x + C'c)`` with ``K = P + C' R C``.
The inactive rows (D) give ``c_D = R_D C_D t + g_v,D`` and the others ``R C t = g_v``.
Two equivalent systems follow, and each batch gets the cheaper one. Each is factored
once and solved for any source ``(g_x, g_v)``: the caller solves for the gradient's
and then for the residual's, to verify the first (`_altdiff`).

**Shared P, C and rho** (``m x m``). With ``S = C K^{-1} C'`` and ``u = C K^{-1} g_x``
both conditions read, row by row,

    (R S - D) c = s - R u,         s = g_v on the active rows, -g_v on the inactive

``K``, ``S`` are computed once for the batch; the instances' systems then differ only
in D, and `_woodbury.MajoritySystems` solves them with one small system each (the rows
where an instance differs from the batch's majority). Where that is ill-conditioned,
each instance's ``m x m`` system is factored instead. K's factor, ``L^{-1} C'`` and the
inverses around the majority patterns stay in the memo of the forward's factor of H,
which a layer with constant matrices keeps across calls.

**Per-instance matrices** (``n + |a|``). Eliminating ``c_D`` from ``K t = g_x + C'c``
leaves the active rows' KKT system, the one a polish solves::

    [P  C_a'] [t]   [g_x + C_D' g_v,D]
    [C_a  0 ] [mu] = [R_a^{-1} g_v,a  ],      c_a = g_v,a - mu

one ``n x n`` factorization per instance (`_polish.ReducedKKT`) instead of K's
and an ``m x m`` one.

**After a shared polish** (`adjoint_through_polish`). The polish of the forward solved
``(R S_H - D) mu = r`` with ``S_H = C H^{-1} C'`` for each instance's active-set
estimate (`_polish.SharedPolisher`), and keeps those systems. Where the final active
sets are those estimates, the fixed point follows from the same systems: with
``f = g_x + sigma t``, ``t = H^{-1} (f + C'c)`` and the conditions above read
``(R S_H - D) c = s - R C H^{-1} f``. A guess of t gives c and a new t; the error
shrinks by about ``sigma / lambda_min`` of K on the active rows' null space per step
(about 4e-6 on the layer batch of 64 problems with n = 100), so two or three steps
reach round-off, and no matrix is factored or inverted.

A factorization's answer can satisfy the fixed-point equation to round-off and still
be far from the recursion's limit: where the system is singular or nearly so (linearly
dependent active rows, a solution that is not unique), any multiple of its null vector
may be added. The caller accepts it only where it is verified, and solves the other
instances by GMRES (`_altdiff.reverse_gradients`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ._batched_sparse import BatchedSparse
from ._costs import STEP_OPERATIONS, Rates, cholesky_flops, step_flops
from ._polish import ReducedKKT
from ._qp import matvec
from .linsys.cholesky import CholeskyFactor
from .linsys.systems import ActiveSystems
from .linsys.woodbury import MajorityBases, MajoritySystems, differing_rows, regular_inverse

__all__ = [
    "AdjointSolver",
    "adjoint_through_polish",
    "direct_adjoint",
    "gmres_seconds",
    "predicted_seconds",
]

# `predicted_seconds`: operator applications GMRES typically needs at backward_eps 1e-8,
# and tensor operations (counted in the code) of one GMRES step beyond the recursion's
# step, of the shared direct solve and of the per-instance one (both with their check).
_KRYLOV_STEPS = 50
_KRYLOV_OPERATIONS = 10
_SHARED_DIRECT_OPERATIONS = 40
_PER_INSTANCE_DIRECT_OPERATIONS = 150
_POLISH_ADJOINT_STEPS = 6  # most steps of `adjoint_through_polish`


def predicted_seconds(
    n: int, inactive: torch.Tensor, shared: bool, rates: Rates | None
) -> tuple[float, float] | None:
    """The predicted times ``(direct, gmres)`` of `direct_adjoint` and of GMRES on a
    batch of problems of n variables with inactive rows ``inactive`` ``(B, m)``
    (``shared``: one K and S for the batch), at the rates the forward solve measured;
    None where those are unknown."""
    if rates is None:
        return None
    batch, m = inactive.shape
    if shared:
        k = int(differing_rows(inactive)[1].sum(1).max()) if batch else 0
        setup = n**3 / 3 + n * n * m + n * m * m
        flops = setup + 2 * m**3 + batch * (2 * k**3 / 3 + 10 * m * m + 4 * n * m)
        direct = rates.seconds(flops, _SHARED_DIRECT_OPERATIONS)
    else:  # the active rows' KKT system, with a few refinement steps
        flops = batch * (n * n * m + n**3 / 3 + 10 * (2 * n * n + 4 * n * m))
        direct = rates.seconds(flops, _PER_INSTANCE_DIRECT_OPERATIONS)
    return direct, gmres_seconds(n, m, batch, rates)


def gmres_seconds(n: int, m: int, batch: int, rates: Rates) -> float:
    """The predicted time of GMRES on the transposed recursion of a batch of problems
    of n variables and m rows, at the rates the forward solve measured."""
    step = rates.seconds(batch * step_flops(n, m), STEP_OPERATIONS + _KRYLOV_OPERATIONS)
    return _KRYLOV_STEPS * step


class _SharedAdjoint:
    """What `direct_adjoint` computes from a batch's shared P, C and R alone: the
    Cholesky factor of K ``(1, n, n)``, ``L^{-1} C'`` ``(1, n, m)`` and the majority
    bases of ``R S`` ``(m, m)``."""

    def __init__(self, L: torch.Tensor, LinvCt: torch.Tensor, rows: torch.Tensor) -> None:
        self.L, self.LinvCt = L, LinvCt
        RS = rows[0].unsqueeze(-1) * (LinvCt[0].T @ LinvCt[0])
        self.bases = MajorityBases(RS, LinvCt.shape[-2])

    def nbytes(self) -> int:
        """Bytes held (for the budget of a layer's factor cache)."""
        own = sum(t.numel() * t.element_size() for t in (self.L, self.LinvCt))
        return own + self.bases.nbytes()


def _factor_K(
    P: torch.Tensor, C: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``L`` with ``L L' = K = P + C'RC`` and ``L^{-1} C'`` ``(1|B, n, m)``, or None
    where K is not numerically positive definite."""
    K = P + C.mT @ (rows.unsqueeze(-1) * C)
    L, info = torch.linalg.cholesky_ex(K)
    if bool((info != 0).any()):
        return None
    return L, torch.linalg.solve_triangular(L, C.mT, upper=False)


class AdjointSolver(Protocol):
    """Maps source terms ``g_x (B, n)``, ``g_v (B, m)`` to the fixed point ``a (B, n)``,
    ``c (B, m)`` of ``w = M'w + (g_x, g_v)``. ``rough``: a few digits suffice (an error
    estimate), where the solver iterates."""

    def __call__(
        self, g_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def direct_adjoint(
    P: torch.Tensor,
    C: torch.Tensor,
    rows: torch.Tensor,
    inactive: torch.Tensor,
    sigma: float,
    memo: dict[str, object] | None = None,
    systems: ActiveSystems | None = None,
    multiplier_rows: torch.Tensor | None = None,
) -> AdjointSolver | None:
    """Factor the fixed-point equations of the transposed Alt-Diff recursion.

    Args:
        P: ``(1|B, n, n)``.  C: ``(1|B, m, n)``.  rows: ``(1|B, m)`` per-row penalty R.
        inactive: ``(B, m)`` bool, the rows D where the projection is the identity.
        sigma: The proximal weight of H.
        memo: Where a batch with shared P, C and R keeps what depends on them alone
            (the memo of the forward's factor of H, which a layer may keep across
            calls), or None.
        systems: Sparse data's active rows' systems, shared with the backward's other
            uses (a new set where None).
        multiplier_rows: ``(1|B, m)`` bool, the rows whose multipliers reach the
            gradients asked for (None: all). Where no active row is one, dependent
            active rows (their multipliers not unique, as at a degenerate vertex of
            an LP) leave the gradients unique, and the active rows' KKT system serves.

    Returns:
        A solver mapping source terms ``g_x (B, n)``, ``g_v (B, m)`` to the fixed point
        ``a (B, n)``, ``c (B, m)`` of ``w = M'w + (g_x, g_v)``, in the dtype of
        ``g_x``; or None where ``K = P + C'RC`` is not numerically positive definite.
        An instance whose system is singular or too ill-conditioned to trust gets
        ``c = 0`` or ``(a, c) = 0``, which the caller's check rejects.
    """
    if isinstance(C, BatchedSparse):
        assert isinstance(P, BatchedSparse)
        return _sparse_adjoint(systems or ActiveSystems(P, C), rows, inactive, sigma)
    work = torch.float64  # the small dense factorizations are cheap in float64
    rows = rows.to(work)
    unseen = torch.zeros(inactive.shape[0], dtype=torch.bool, device=inactive.device)
    if multiplier_rows is not None:
        unseen = ReducedKKT.multipliers_unseen(~inactive, multiplier_rows)
    if not (P.shape[0] == 1 and C.shape[0] == 1 and rows.shape[0] == 1):
        return _per_instance_adjoint(P.to(work), C.to(work), rows, inactive, sigma, unseen)
    kept = memo.get("adjoint") if memo is not None else None
    if not isinstance(kept, _SharedAdjoint):
        factored = _factor_K(P.to(work), C.to(work), rows)
        if factored is None:
            return None
        kept = _SharedAdjoint(*factored, rows)
        if memo is not None:
            memo["adjoint"] = kept
    L, LinvCt = kept.L[0], kept.LinvCt[0]  # (n, n), (n, m)
    systems = kept.bases.systems(inactive)
    n, m = L.shape[0], inactive.shape[-1]
    active_rows = int((~inactive).sum(-1).max()) if inactive.shape[0] else 0
    reduced_flops = cholesky_flops(n) + 2 * n * n * active_rows  # and its Gram matrix
    if systems is None and ((active_rows > n and bool(unseen.any())) or reduced_flops < 2 * m**3):
        # Each instance's active rows' KKT system: where the m x m systems below are
        # singular (more active rows than n) on instances whose gradients stay unique,
        # or where it costs fewer operations than their inverses.
        return _per_instance_adjoint(P.to(work), C.to(work), rows, inactive, sigma, unseen)
    if systems is None:  # each instance's own m x m system
        system = kept.bases.RS.expand(inactive.shape[0], -1, -1).clone()
        system.diagonal(dim1=-2, dim2=-1).sub_(inactive.to(work))
        inverse = regular_inverse(system)[0]

    def solve(
        grad_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = grad_x.dtype
        g_x, g_v = grad_x.to(work), g_v.to(work)
        Linv_gx = torch.linalg.solve_triangular(L, g_x.T, upper=False).T  # (B, n)
        rhs = torch.where(inactive, -g_v, g_v) - rows * (Linv_gx @ LinvCt)
        if systems is not None:
            c = systems.solve(rhs)
        else:
            c = matvec(inverse, rhs)
        c = torch.where(torch.isfinite(c), c, 0.0)
        # t = K^{-1} (g_x + C'c) = L'^{-1} (L^{-1} g_x + L^{-1} C' c)
        half = Linv_gx + c @ LinvCt.T
        t = torch.linalg.solve_triangular(L.T, half.T, upper=True).T
        a = sigma * t + g_x
        return a.to(dtype), c.to(dtype)

    return solve


def _per_instance_adjoint(
    P: torch.Tensor,
    C: torch.Tensor,
    rows: torch.Tensor,
    inactive: torch.Tensor,
    sigma: float,
    unseen: torch.Tensor,
) -> AdjointSolver:
    """`direct_adjoint` by the active rows' KKT system of each instance (module
    docstring). ``a`` and ``c`` are zero for an instance whose system is singular: its
    regularized solve would return one of many solutions, with no sign of it in the
    residual. On the ``unseen`` ``(B,)`` instances, whose active rows' multipliers reach
    no gradient asked for, dependent active rows are allowed: t, and so every gradient
    asked for, is unique where x is."""
    active = ~inactive
    system = ReducedKKT(P, C, active)
    if bool(unseen.all()):
        singular = system.primal_singular()
    elif bool(unseen.any()):
        singular = torch.where(unseen, system.primal_singular(), system.singular())
    else:
        singular = system.singular()
    regular = (~singular).unsqueeze(-1)

    def solve(
        grad_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = grad_x.dtype
        g_x, g_v = grad_x.to(P.dtype), g_v.to(P.dtype)
        target_x = g_x + matvec(C.mT, torch.where(inactive, g_v, 0.0))
        t, mu = system.solve(target_x, g_v / rows)
        c = torch.where(active, g_v - mu, rows * matvec(C, t) + g_v)
        a = sigma * t + g_x
        usable = regular & torch.isfinite(a).all(-1, keepdim=True)
        usable = usable & torch.isfinite(c).all(-1, keepdim=True)
        return torch.where(usable, a, 0.0).to(dtype), torch.where(usable, c, 0.0).to(dtype)

    return solve


def _sparse_adjoint(
    systems: ActiveSystems, rows: torch.Tensor, inactive: torch.Tensor, sigma: float
) -> AdjointSolver:
    """`direct_adjoint` for sparse data: each instance's active rows' KKT system (module
    docstring) by its `linsys.sparse_kkt.ActiveKKT` in ``systems`` (the variables short
    active rows pin solved exactly, the rest by one sparse LDL' with iterative
    refinement). Its regularization is small (1e-9), so a singular system amplifies
    round-off almost without bound, which the caller's check of the implied error sees.
    ``a`` and ``c`` are zero for an instance whose system could not be factored."""
    B = inactive.shape[0]
    active = (~inactive).cpu().numpy()
    rows_np = rows.detach().cpu().double().numpy()

    def solve(
        grad_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g_x = grad_x.detach().cpu().double().numpy()
        v = g_v.detach().cpu().double().numpy()
        a, c = np.zeros_like(g_x), np.zeros_like(v)
        for k in range(B):
            Ck = systems.matrices(k)[1]
            r = rows_np[k if rows_np.shape[0] > 1 else 0]
            on = active[k]
            target_x = g_x[k] + Ck.T @ np.where(on, 0.0, v[k])
            solved = systems.get(k, on).solve(target_x, v[k] / r)
            if solved is None:
                continue
            t, mu = solved
            c[k] = np.where(on, v[k] - mu, r * (Ck @ t) + v[k])
            a[k] = sigma * t + g_x[k]
        return (
            torch.from_numpy(a).to(grad_x),
            torch.from_numpy(c).to(grad_x),
        )

    return solve


def adjoint_through_polish(
    factor: CholeskyFactor,
    C: torch.Tensor,
    rows: torch.Tensor,
    systems: MajoritySystems,
    HinvCt: torch.Tensor,
    sigma: float,
    tol: float,
    recursion_rows: torch.Tensor | None = None,
) -> AdjointSolver:
    """`direct_adjoint` through the systems a shared polish solved (module docstring),
    for a batch whose inactive rows are theirs.

    The systems may be of another penalty R' than the recursion's R
    (``recursion_rows``): with ``c~ = c - R C t`` the fixed point reads
    ``P t = g_x + C'c~``, ``c~_D = g_v,D``, ``C_a t = R_a^{-1} g_v,a``, in which R
    enters only through ``R_a^{-1} g_v,a``. So the systems of R' solve it for
    ``g_v,a' = R_a' R_a^{-1} g_v,a``, and ``c = c' + (R - R') C t``.

    Args:
        factor: The shared factor of H ``(1, n, n)`` the systems were built for.
        C: ``(1, m, n)``.  rows: ``(1, m)`` the per-row penalty R of that factor.
        systems: `_woodbury.MajoritySystems` of ``R S_H`` on the batch's inactive rows.
        HinvCt: ``H^{-1} C'`` ``(n, m)`` (`_polish.SharedPolishData`).
        sigma: The proximal weight of H.
        tol: Relative accuracy of t to stop at (estimated from successive changes).
        recursion_rows: ``(1, m)`` the recursion's per-row penalty R where it is not
            ``rows`` (the penalty of ``factor`` and the systems), else None.

    Returns:
        A solver as `direct_adjoint`'s; ``c`` is zero for an instance whose system is
        singular (``systems.regular``), which the caller's check rejects.
    """
    work = systems.RS.dtype
    C, rows = C[0].to(work), rows.to(work)
    inactive = systems.inactive
    if recursion_rows is not None:
        recursion_rows = recursion_rows.to(work)

    def solve(
        grad_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = grad_x.dtype
        g_x, g_v = grad_x.to(work), g_v.to(work)
        if recursion_rows is not None:
            g_v = torch.where(inactive, g_v, g_v * (rows / recursion_rows))
        signed = torch.where(inactive, -g_v, g_v)
        t, last_change = torch.zeros_like(g_x), None
        for _ in range(1 if rough else _POLISH_ADJOINT_STEPS):
            h = factor.solve(g_x + sigma * t)
            c = systems.solve(signed - rows * (h @ C.T))
            t_next = torch.addmm(h, c, HinvCt.T)  # H^{-1} (g_x + sigma t + C'c)
            change, t = (t_next - t).norm(dim=-1), t_next
            if last_change is not None:
                # Linear convergence at the rate change / last_change: the error left is
                # about change^2 / last_change.
                left = change * change / last_change.clamp_min(torch.finfo(work).tiny)
                if bool((left <= tol * (1 + t.norm(dim=-1))).all()):
                    break
            last_change = change
        if recursion_rows is not None:
            c = c + (recursion_rows - rows) * (t @ C.T)
        a = sigma * t + g_x
        return a.to(dtype), c.to(dtype)

    return solve
