"""Solution polishing: guess the active set from an ADMM iterate and solve the
equality-constrained QP it defines, as OSQP does (Stellato et al., 2020, section 4.4).

ADMM identifies the active set long before its residuals reach a tight tolerance, most
of all on LPs, where its last digits come slowly. Polishing turns a correct guess into
the exact solution at the cost of one factorization. The reduced KKT system::

    [ P    C_a' ] [x  ]   [-q  ]
    [ C_a  0    ] [y_a] = [ u_a]

is solved through its regularized Schur complement ``P + delta I + C_a'C_a / delta``
(positive definite), with iterative refinement against the unregularized system. The
caller accepts a polished point only if it meets the termination criteria.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from ._contraction import contraction
from ._qp import matvec, rmatvec
from .linsys.cholesky import CholeskyFactor, cholesky_solve
from .linsys.woodbury import MajorityBases, MajoritySystems

__all__ = [
    "ReducedKKT",
    "SharedPolishData",
    "SharedPolisher",
    "active_set",
    "contradicted_rows",
    "first_of",
    "gather_active_rows",
    "gather_rows",
    "polish",
    "solve_reduced_kkt",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

_DELTA = 1e-6
_REFINE_STEPS = 5
_REFINE_TOL = 1e-14
# `ReducedKKT.singular`: inverse iteration steps, and how close to delta the smallest
# eigenvalue modulus may come (a regular system's is at least ten times delta).
_INVERSE_ITERATIONS = 3
_SINGULAR_WITHIN = 10.0
_TINY = 1e-300
SHARED_REFINE_STEPS = 2  # of `SharedPolisher.polish`; its cost model counts them
# More where the error they leave (estimated from the ratio of successive changes) is
# above this, relative to x: a P of condition 1e6 contracts its error by about half a
# step, and two steps left a point 1e-3 off the solution, within the residual tolerances.
_SHARED_REFINE_TOL = 1e-12
_SHARED_REFINE_MAX = 30


def _settled(change: torch.Tensor, previous: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether refinement steps whose last changes of x ``(B, n)`` were ``previous`` and
    ``change`` ``(B,)`` have left every instance within ``_SHARED_REFINE_TOL`` of their
    limit (`contraction`), or have stopped contracting (round-off)."""
    if previous is None:
        return False
    tol = _SHARED_REFINE_TOL * (1 + x.abs().amax(-1))
    rate, error = contraction(change, previous)
    return bool(((change <= tol) | (rate >= 1) | (error <= tol)).all())


def _max_abs(v: torch.Tensor) -> float:
    return float(v.abs().amax()) if v.numel() else 0.0


def active_set(z: ArrayT, y: ArrayT, bound: ArrayT, n_eq: int) -> ArrayT:
    """``(..., m)`` bool: the rows an iterate ``(z, y)`` ``(..., m)`` estimates active,
    as tensors or (the sparse backend's) NumPy arrays.

    A row is active when its multiplier outweighs its slack (OSQP's rule); equality rows
    always are.
    """
    active = (bound - z) < y
    active[..., :n_eq] = True
    return active


def gather_rows(
    C: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gather_active_rows` of the rows ``rows`` ``(B, m)``, or where they are many,
    all m rows with the others zeroed: ``(B, k, n)``, their ``(B, k)`` validity and
    ``(B, k)`` distinct row indices."""
    gathered = gather_active_rows(C, rows)
    if gathered is not None:
        return gathered
    index = torch.arange(rows.shape[1], device=rows.device).expand_as(rows)
    return C * rows.unsqueeze(-1).to(C.dtype), rows, index


# A polished point's estimate is corrected where it contradicts the estimate in at most
# this fraction of the rows (at least 2); more wrong rows say the iterate is not ready.
CORRECTABLE_ROWS = 0.1


def contradicted_rows(
    estimate: torch.Tensor,
    y: torch.Tensor,
    Cx: torch.Tensor,
    bound: torch.Tensor,
    n_eq: int,
    pinned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of a polished point ``(x, y)`` that contradict its active-set estimate
    ``(K, m)``: active inequality rows whose multiplier ``y`` ``(K, m)`` is not positive,
    inactive rows that ``Cx`` ``(K, m)`` violates (``> bound``); and the ``(K,)`` mask
    of the instances whose estimate they correct (a primal-dual active-set step): those
    with at least one such row and at most ``CORRECTABLE_ROWS`` of the rows (at least 2).
    The ``pinned`` ``(K, m)`` rows of the estimate (`_free_variables`) may have a zero
    multiplier: they contradict nothing."""
    contradicted = torch.where(estimate, y <= 0, Cx > bound)
    contradicted[:, :n_eq] = False
    if pinned is not None:
        contradicted &= ~pinned
    wrong = contradicted.sum(-1)
    limit = max(2, CORRECTABLE_ROWS * estimate.shape[1])
    return contradicted, (wrong > 0) & (wrong <= limit)


def gather_active_rows(
    C: torch.Tensor, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Each instance's active rows of ``C`` ``(1|B, m, n)``: ``(B, k, n)``, padded with
    zero rows to the most any instance has, their ``(B, k)`` validity and ``(B, k)``
    row indices; None where the rows are not few (over three quarters of m)."""
    B, m = active.shape
    index, valid = first_of(active)
    k = index.shape[1]
    if 4 * k > 3 * m:
        return None
    if C.shape[0] == 1:
        rows = C[0][index]
    else:
        rows = C.gather(1, index.unsqueeze(-1).expand(B, k, C.shape[-1]))
    return rows * valid.unsqueeze(-1).to(C.dtype), valid, index


def _masked_gram(
    C: torch.Tensor,
    rows: torch.Tensor,
    gathered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """``C' diag(rows) C`` ``(B, n, n)`` for ``C`` ``(1|B, m, n)`` and ``rows`` ``(B, m)``,
    from ``gathered``, their `gather_active_rows`, where they are few."""
    if gathered is None:
        return C.transpose(-1, -2) @ (rows.to(C.dtype).unsqueeze(-1) * C)
    return gathered[0].transpose(-1, -2) @ gathered[0]


def active_gram(C: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``C_a' C_a`` ``(B, n, n)``: the sum of ``c_i c_i'`` over each instance's active
    rows ``active`` ``(B, m)`` of ``C`` ``(1|B, m, n)``.

    Where C is shared, its rows with one entry (bounds on a variable, most of an LP's
    rows) add to the diagonal only, and the other rows active in every instance
    (equalities) are summed once for the batch: only the rest is summed per instance.
    """
    if C.shape[0] != 1:
        return _masked_gram(C, active, gather_active_rows(C, active))
    single = (C[0] != 0).sum(-1) == 1  # (m,)
    common = (active.all(0) & ~single).unsqueeze(0)
    rest = active & ~single & ~common
    gram = _masked_gram(C, common, gather_active_rows(C, common))
    if bool(rest.any()):
        gram = gram + _masked_gram(C, rest, gather_active_rows(C, rest))
    else:
        gram = gram.expand(active.shape[0], -1, -1)
    column = C[0].abs().argmax(-1)  # (m,): a bound's variable
    weight = torch.where(active & single, C[0].gather(1, column[:, None])[:, 0] ** 2, 0.0)
    diagonal = weight.new_zeros(active.shape[0], C.shape[-1]).index_add_(1, column, weight)
    return gram + torch.diag_embed(diagonal)


def first_of(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's True positions of ``mask`` ``(B, m)`` first, in order: ``(B, k)``
    distinct indices (k the most any row has; after its own, a row's further indices
    are its False positions) and their ``(B, k)`` validity."""
    counts = mask.sum(1)
    k = int(counts.max()) if mask.shape[0] else 0
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]
    return index, torch.arange(k, device=mask.device) < counts.unsqueeze(1)


class ReducedKKT:
    """The systems ``[[P, C_a'], [C_a, 0]] [x; y_a] = [target_x; target_y_a]`` of a
    batch, factored once and solved for any number of right-hand sides.

    Through the Cholesky factor of the regularized Schur complement
    ``P + delta I + C_a'C_a / delta``, with iterative refinement against the
    unregularized system (module docstring). Where the active rows are few, ``C_a'C_a``
    comes from them alone, and so do the refinement's products with a per-instance C
    (a shared C keeps its products with the whole C: one matrix-matrix product each).

    Args:
        P: ``(1|B, n, n)``.  C: ``(1|B, m, n)``.
        active: ``(B, m)`` bool, the rows of ``C_a``.

    Attributes:
        ok: ``(B,)`` mask of the instances whose system could be factored.
    """

    def __init__(self, P: torch.Tensor, C: torch.Tensor, active: torch.Tensor) -> None:
        B, m = active.shape
        n = P.shape[-1]
        eye = torch.eye(n, dtype=P.dtype, device=P.device)
        # A per-instance C's Gram matrix and refinement products use its active rows
        # alone, gathered once.
        gathered = None
        if C.shape[0] > 1:
            gathered = gather_active_rows(C, active)
            gram = _masked_gram(C, active, gathered)
        else:
            gram = active_gram(C, active)
        L, info = torch.linalg.cholesky_ex((P + _DELTA * eye + gram / _DELTA).expand(B, n, n))
        self.ok = info == 0
        self._L = torch.where(self.ok[:, None, None], L, eye)
        self._P, self._C, self._active, self._m = P, C, active, m
        self._index = None
        if gathered is not None:
            self._C, self._active, self._index = gathered

    def solve(
        self,
        target_x: torch.Tensor,
        target_y: torch.Tensor,
        start: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, n)`` and ``y (B, m)`` (zero on the inactive rows) for ``target_x``
        ``(B, n)`` and ``target_y`` ``(B, m)`` (read on the active rows only).

        The refinement starts from ``start`` ``(x (B, n), y (B, m))``, zero where None.
        Where the solution is not unique (dependent active rows: a degenerate vertex of
        an LP has more active rows than variables), it ends at the one nearest its start.
        """
        active = self._active
        if start is None:
            start = (target_x.new_zeros(target_x.shape), torch.zeros_like(target_y))
        x0, y0 = start
        if self._index is not None:
            target_y, y0 = target_y.gather(1, self._index), y0.gather(1, self._index)
        x, y = _refine(
            self._P, self._C, active, self._L, target_x, torch.where(active, target_y, 0.0),
            x0, torch.where(active, y0, 0.0),
        )  # fmt: skip
        if self._index is not None:
            y = y.new_zeros(y.shape[0], self._m).scatter_(1, self._index, y)
        return x, y

    def singular(self) -> torch.Tensor:
        """``(B,)`` bool: the instances whose system is singular or nearly so (its
        solutions not unique: a null vector ``(x, 0)`` with ``P x = 0``, ``C_a x = 0``,
        or ``(0, y_a)`` with ``C_a' y_a = 0``: dependent active rows).

        The regularized matrix ``[[P + delta I, C_a'], [C_a, -delta I]]``, which the
        factor solves exactly, has an eigenvalue of modulus about delta along each null
        vector, and its others stay near the unregularized ones. A few steps of inverse
        iteration from a fixed start find the smallest modulus: against the next
        one, it grows by their ratio each step.
        """
        n = self._L.shape[-1]
        C, active = self._C, self._active
        weight = active.to(self._L.dtype) / _DELTA
        start = _fixed_start(n + active.shape[1], self._L)
        start = torch.cat(
            [start[:n].expand(active.shape[0], n), torch.where(active, start[n:], 0.0)], 1
        )

        def inverse(v: torch.Tensor) -> torch.Tensor:
            # The regularized matrix's inverse: the Schur complement's factor, then y.
            v_x, v_y = v[:, :n], v[:, n:]
            u_x = cholesky_solve((v_x + rmatvec(C, weight * v_y)).unsqueeze(-1), self._L)
            u_x = u_x.squeeze(-1)
            return torch.cat([u_x, torch.where(active, weight * (matvec(C, u_x) - v_y), -v_y)], 1)

        return self._flagged(inverse, start)

    @staticmethod
    def multipliers_unseen(active: torch.Tensor, multiplier_rows: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: the instances none of whose ``active`` ``(B, m)`` rows is one of
        the ``multiplier_rows`` ``(1|B, m)`` whose multipliers reach the gradients asked
        for. Their systems need only be regular in x (`primal_singular`): dependent
        active rows, whose multipliers are not unique, change no gradient of theirs."""
        return ~(active & multiplier_rows).any(-1)

    def primal_singular(self) -> torch.Tensor:
        """``(B,)`` bool: the instances whose solutions are not unique in x (a null
        vector ``(x, 0)``: ``P x = 0``, ``C_a x = 0``), or whose system could not be
        factored. Dependent active rows alone leave x unique.

        Along such an x the Schur complement ``P + delta I + C_a'C_a / delta`` is
        ``delta``; elsewhere it is at least the smallest positive eigenvalue of ``P``
        on the null space of ``C_a`` or of ``C_a'C_a / delta``. Inverse iteration with
        its factor finds the smallest, as in `singular`.
        """
        B, n = self._L.shape[0], self._L.shape[-1]

        def inverse(v: torch.Tensor) -> torch.Tensor:
            return cholesky_solve(v.unsqueeze(-1), self._L).squeeze(-1)

        return self._flagged(inverse, _fixed_start(n, self._L).expand(B, n))

    def _flagged(
        self, inverse: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)``: where `_INVERSE_ITERATIONS` steps of inverse iteration by
        ``inverse`` from ``v`` ``(B, N)`` grow past ``1 / (10 delta)`` (a smallest
        eigenvalue modulus within ten times delta), or the system was not factored."""
        growth = torch.ones(v.shape[0], dtype=v.dtype, device=v.device)
        for _ in range(_INVERSE_ITERATIONS):
            v = inverse(v / v.norm(dim=1, keepdim=True).clamp_min(_TINY))
            growth = v.norm(dim=1)
        return ~self.ok | (growth * _DELTA * _SINGULAR_WITHIN >= 1)


def _fixed_start(size: int, like: torch.Tensor) -> torch.Tensor:
    """``(size,)`` a fixed start of inverse iteration, in ``like``'s dtype and device,
    with no structure a null vector could be orthogonal to."""
    steps = torch.arange(1, size + 1, dtype=like.dtype, device=like.device)
    return torch.sin(steps * 0.7548776662)


def solve_reduced_kkt(
    P: torch.Tensor,
    C: torch.Tensor,
    active: torch.Tensor,
    target_x: torch.Tensor,
    target_y: torch.Tensor,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ReducedKKT` for one right-hand side (from ``start``, as `ReducedKKT.solve`):
    ``x (B, n)``, ``y (B, m)`` (zero on the inactive rows) and the ``(B,)`` mask of the
    instances whose system could be factored."""
    system = ReducedKKT(P, C, active)
    x, y = system.solve(target_x, target_y, start)
    return x, y, system.ok


def _refine(
    P: torch.Tensor,
    C: torch.Tensor,
    active: torch.Tensor,
    L: torch.Tensor,
    target_x: torch.Tensor,
    target_y: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterative refinement of `ReducedKKT` from ``(x, y)``, with the factor ``L`` of
    its regularized Schur complement; ``target_y`` and ``y`` are zero off the active
    rows, and so is the returned y. A step moves along a null vector of the system only
    by its rounding: where the solution is not unique, the one returned is the start's
    nearest."""
    weight = active.to(target_x.dtype) / _DELTA  # (B, m)

    def solve_regularized(
        r_x: torch.Tensor, r_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dx = cholesky_solve((r_x + rmatvec(C, weight * r_y)).unsqueeze(-1), L).squeeze(-1)
        dy = torch.where(active, weight * (matvec(C, dx) - r_y), -r_y)
        return dx, dy

    # Refinement usually reaches round-off in three steps; the rest would be wasted.
    size = 1.0 + max(_max_abs(target_x), _max_abs(target_y))
    for _ in range(_REFINE_STEPS):
        # Residual of the unregularized system [[P, C'M], [MC, -(I - M)]].
        Cx = matvec(C, x)
        r_x = target_x - (matvec(P, x) + rmatvec(C, torch.where(active, y, 0.0)))
        r_y = target_y - torch.where(active, Cx, -y)
        residual = max(_max_abs(r_x), _max_abs(r_y))
        if residual <= _REFINE_TOL * size:
            break
        dx, dy = solve_regularized(r_x, r_y)
        x, y = x + dx, y + dy
    return x, torch.where(active, y, 0.0)


def polish(
    P: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    bound: torch.Tensor,
    n_eq: int,
    active: torch.Tensor,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Polish a batch of iterates (scaled units).

    Args:
        P: ``(1|B, n, n)``.  q: ``(1|B, n)``.  C: ``(1|B, m, n)``.  bound: ``(1|B, m)``.
        n_eq: Number of equality rows.
        active: ``(B, m)`` bool, the iterates' `active_set` (equality rows included).
        start: The iterates ``x (B, n)``, ``y (B, m)``, where the reduced system's
            solve starts: at a degenerate vertex, whose multipliers are not unique, it
            then returns those nearest the iterate's, which are nearly feasible (the
            minimum-norm ones, nearest zero, have negative entries that fail the dual
            residual once clamped: shortest-path LPs failed every polish so).

    Returns:
        ``x (B, n)``, ``z (B, m)``, ``y (B, m)`` of the polished points, and a ``(B,)``
        mask of the instances whose reduced system could be factored.
    """
    B, m = active.shape
    n = q.shape[-1]
    bound = bound.expand(B, m)
    x, y_p, ok = solve_reduced_kkt(P, C, active, -q.expand(B, n), bound, start)
    Cx = matvec(C, x)
    z_p = torch.cat([bound[:, :n_eq], torch.minimum(Cx[:, n_eq:], bound[:, n_eq:])], dim=1)
    y_p = torch.cat([y_p[:, :n_eq], y_p[:, n_eq:].clamp_min(0)], dim=1)
    return x, z_p, y_p, ok


class SharedPolishData:
    """What the polishes with one factor of H share: the majority bases of ``R S``
    (`_woodbury.MajorityBases`, ``S = C H^{-1} C'``) and ``H^{-1} C'`` ``(n, m)``, whose
    products replace a solve with H in each refinement step (and in the backward pass
    through the polish's systems, `_direct_adjoint.adjoint_through_polish`)."""

    def __init__(self, bases: MajorityBases, HinvCt: torch.Tensor) -> None:
        self.bases, self.HinvCt = bases, HinvCt

    def systems(self, inactive: torch.Tensor) -> MajoritySystems | None:
        """`MajorityBases.systems` of the inactive rows ``(B, m)``."""
        return self.bases.systems(inactive)

    def nbytes(self) -> int:
        """Bytes held (for the budget of a layer's factor cache)."""
        return self.bases.nbytes() + self.HinvCt.numel() * self.HinvCt.element_size()


class SharedPolisher:
    """Polishing of a batch that shares P and C, through the ADMM factor of H.

    With ``H = P + sigma*I + C'RC`` (R the per-row penalty) and ``D`` the inactive
    rows of an instance, the reduced KKT system is equivalent to the ``m x m`` system::

        (R S - D) mu = R e,     S = C H^{-1} C',   f = -q + sigma x0,
        e = (I - D) u - C H^{-1} f,
        x = H^{-1} (f + C' mu),   y = (I - D) (R u - mu)

    which holds ``P x + C_a' y_a = -q + sigma (x0 - x)``, ``C_a x = u_a``: exact once
    ``x0 = x``, which a few refinement steps from the ADMM iterate reach. H's factor
    and S are shared by the batch, the instances' systems differ only in D, and
    `_woodbury.MajoritySystems` solves them with one small system each: a
    polish costs a few dozen ADMM steps' worth of small operations instead of a
    factorization per instance, so a batch can try it often. S, ``H^{-1} C'`` and the
    inverses around the majority patterns (`SharedPolishData`) stay with the factor
    (its ``memo``) for the next polish with it, in this call or a later one.
    ``kept`` says that the factors are a layer's, kept across calls (`FactorCache`).
    """

    def __init__(self, C: torch.Tensor, n_eq: int, kept: bool = False) -> None:
        self.C, self.n_eq, self.kept = C[0], n_eq, kept

    @staticmethod
    def prepared(factor: CholeskyFactor) -> bool:
        """Whether ``S`` of this factor is computed already (a polish then pays only its
        instances' systems, and the majority pattern's inverse where it is new)."""
        return "polish" in factor.memo

    @staticmethod
    def credit(factor: CholeskyFactor) -> float:
        """How much of the shared setup (``S``, ``H^{-1} C'``, a majority inverse) counts
        as paid for with this factor, in seconds: all of it once computed, else the time
        of the iterations taken since the last setup was paid (its
        `linsys.cholesky.WorkLedger`, which the factors a layer keeps share).

        A layer keeps its factors across calls; where its calls are long (a single
        large problem iterates at the speed of memory), the setup, a few calls' worth
        of steps, makes every later call's polish and backward a few steps' worth.
        Buying it once the iterations have cost as much (a rent-or-buy rule) spends at
        most twice what the better of never and at once would have.
        """
        return math.inf if SharedPolisher.prepared(factor) else factor.ledger.work

    def shared_data(self, factor: CholeskyFactor, rows: torch.Tensor) -> SharedPolishData:
        """What the polishes with this factor share, kept in its memo: a layer's cached
        factors bring it to its later calls."""
        shared = factor.memo.get("polish")
        if not isinstance(shared, SharedPolishData):
            L = factor.L[0]
            LinvCt = torch.linalg.solve_triangular(L, self.C.T, upper=False)
            HinvCt = torch.linalg.solve_triangular(L.T, LinvCt, upper=True)
            shared = SharedPolishData(
                MajorityBases(rows[0].unsqueeze(-1) * (LinvCt.T @ LinvCt), L.shape[-1]), HinvCt
            )
            factor.memo["polish"] = shared
            factor.ledger.work = 0.0  # spent on this setup
        return shared

    def polish(
        self,
        factor: CholeskyFactor,
        rows: torch.Tensor,
        sigma: float,
        q: torch.Tensor,
        bound: torch.Tensor,
        active: torch.Tensor,
        x0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, MajoritySystems] | None:
        """Polish the instances ``x0`` ``(B, n)`` on their estimates ``active`` ``(B, m)``.

        Args:
            factor: The shared factor of H for the per-row penalty ``rows`` ``(1, m)``.
            sigma: H's proximal weight.  q: ``(1|B, n)``.  bound: ``(1|B, m)``.

        Returns:
            ``x``, ``z``, ``y`` and the ``(B,)`` mask of the instances whose reduced
            system could be solved, as `polish` does, and the systems ``(RS - D_i)`` it
            solved (the direct backward at these points solves the same ones); or None
            where the batch's majority system is too ill-conditioned to solve this way.
        """
        B, m = active.shape
        n_eq = self.n_eq
        inactive = ~active
        bound = bound.expand(B, m)
        u = torch.where(active, bound, 0.0)
        C = self.C
        shared = self.shared_data(factor, rows)
        systems = shared.systems(inactive)
        if systems is None:
            return None
        x, previous = x0, None
        for step in range(1, _SHARED_REFINE_MAX + 1):
            h = factor.solve(sigma * x - q)
            mu = systems.solve(rows * (u - h @ C.T))
            refined = torch.addmm(h, mu, shared.HinvCt.T)  # H^{-1} (f + C' mu)
            change = (refined - x).abs().amax(-1)  # (B,)
            x = refined
            if step >= SHARED_REFINE_STEPS and _settled(change, previous, x):
                break
            previous = change
        y = torch.where(active, rows * u - mu, 0.0)
        Cx = x @ C.T
        z = torch.cat([bound[:, :n_eq], torch.minimum(Cx[:, n_eq:], bound[:, n_eq:])], dim=1)
        y = torch.cat([y[:, :n_eq], y[:, n_eq:].clamp_min(0)], dim=1)
        return x, z, y, systems.regular, systems
