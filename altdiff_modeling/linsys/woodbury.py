"""Batched solves of ``(R S - D_i) c_i = r_i``: one shared matrix, per-instance 0/1
diagonals D_i.

Both the direct backward (`_direct_adjoint`) and the polishing of a batch that shares
its data (`_polish.SharedPolisher`) meet these systems: ``R S`` comes from the shared
data and penalty, D_i marks the constraint rows instance i has inactive. The
instances differ mostly in few rows: with D0 the batch's majority pattern,
``R S - D_i = (R S - D0) - E d E'`` with E selecting the k rows where instance i
differs from D0 and ``d = +-1`` there. The Woodbury identity solves it with the shared
inverse ``W = (R S - D0)^{-1}`` and one ``k x k`` system per instance::

    (d - W_EE) xi = (W r)_E,      c = W r + W E xi

(k is typically the number of active inequalities, a fraction of m), followed by one
step of iterative refinement against the instance's own matrix where the condition
numbers of the base and of the capacitance systems could make the solution inaccurate.
"""

from __future__ import annotations

import torch

from .._qp import matvec

__all__ = [
    "MajorityBase",
    "MajorityBases",
    "MajoritySystems",
    "differing_rows",
    "regular_inverse",
]

_MAX_CONDITION = 1e10  # of the majority pattern's matrix
_KEPT_BASES = 4  # per RS (`MajorityBases`)
# Below this product of the base's and the worst capacitance system's condition
# numbers, the identity's solution is accurate to about 1e-10 and a refinement step
# changes it in the last digits only (w2-B64-n100: products near 1e5, refinement
# changes of 2e-15): the step is skipped.
_REFINE_ABOVE = 1e6


def differing_rows(inactive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's majority pattern ``(m,)`` of inactive rows, and the ``(B, m)`` mask
    of the rows where each instance differs from it."""
    majority = inactive.sum(0) * 2 > inactive.shape[0]
    return majority, inactive != majority


def _norm_1(M: torch.Tensor) -> torch.Tensor:
    """``(..., k, k) -> (...)``: the 1-norm (largest column sum) of each matrix (0 for
    an empty one)."""
    if M.shape[-1] == 0:
        return M.new_zeros(M.shape[:-2])
    return M.abs().sum(-2).amax(-1)


def regular_inverse(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverses of a batch of matrices ``(B, k, k)``, the ``(B,)`` mask of those
    regular and well-conditioned enough to trust (1-norm condition number at most
    ``_MAX_CONDITION``; the others' inverses are zero), and the condition numbers."""
    inverse, info = torch.linalg.inv_ex(M)
    condition = _norm_1(M) * _norm_1(inverse)
    regular = (info == 0) & torch.isfinite(condition) & (condition <= _MAX_CONDITION)
    return torch.where(regular[:, None, None], inverse, 0.0), regular, condition


class MajorityBase:
    """The inverse ``W = (RS - D0)^{-1}`` for one majority pattern D0, shared by every
    batch whose systems are built around that pattern.

    Build with `MajorityBase.build`, which returns None where ``RS - D0`` is singular or
    too ill-conditioned for the identity to be accurate. `MajorityBases` keeps the bases
    built for one ``RS``, so that many batches (successive calls of a layer, or the
    corrected polishes of a few instances) pay the ``m x m`` inverse once.
    """

    def __init__(self, majority: torch.Tensor, W: torch.Tensor, condition: float) -> None:
        self.majority, self.W, self.condition = majority, W, condition

    @classmethod
    def build(cls, RS: torch.Tensor, majority: torch.Tensor) -> MajorityBase | None:
        """The base of ``RS`` ``(m, m)`` for the inactive rows ``majority`` ``(m,)``."""
        base = RS - torch.diag(majority.to(RS.dtype))
        W, info = torch.linalg.inv_ex(base)
        # LAPACK's column-major result, once in row-major order: the systems gather
        # W_EE from its flat storage, which would otherwise copy all of W each time.
        W = W.contiguous()
        if int(info) != 0 or not bool(torch.isfinite(W).all()):
            return None
        # Woodbury inherits the rounding of W, which grows with D0's condition number
        # even where the instances' own matrices are well conditioned: beyond the
        # bound, the caller factors each instance's system instead.
        condition = float(_norm_1(base) * _norm_1(W))
        if condition > _MAX_CONDITION:
            return None
        return cls(majority, W, condition)

    def differing(self, inactive: torch.Tensor) -> int:
        """The most rows ``(B, m)`` any instance differs in from this base's pattern."""
        return int((inactive != self.majority).sum(1).max()) if inactive.shape[0] else 0


class MajoritySystems:
    """The systems ``(RS - D_i) c_i = r_i`` of a batch, factored once around its
    majority pattern (module docstring) and solved for any number of right-hand sides.

    Build with `MajorityBases.systems`, which returns None where no majority pattern's
    matrix is regular and well-conditioned enough for the identity to be accurate.
    ``regular`` ``(B,)`` marks the instances whose own system could be solved; the
    solutions of the others are zero. ``refine`` says whether `solve` takes a step of
    iterative refinement (the conditioning could cost accuracy).
    """

    def __init__(
        self,
        RS: torch.Tensor,
        inactive: torch.Tensor,
        W: torch.Tensor,
        rows: torch.Tensor,
        valid: torch.Tensor,
        inverse: torch.Tensor | None,
        regular: torch.Tensor,
        refine: bool,
    ) -> None:
        self.RS, self.inactive, self.W, self.Wt = RS, inactive, W, W.T
        self.rows, self.valid, self.inverse = rows, valid, inverse
        self.regular, self.refine = regular, refine

    @classmethod
    def build(cls, RS: torch.Tensor, inactive: torch.Tensor, base: MajorityBase) -> MajoritySystems:
        """Factor the systems of ``RS`` ``(m, m)`` with inactive rows ``(B, m)`` around
        ``base``."""
        B, m = inactive.shape
        majority, W = base.majority, base.W
        differ = inactive != majority
        counts = differ.sum(1)
        k = int(counts.max()) if B else 0
        # Each instance's differing rows first, padded to k with rows that solve to zero.
        slot = torch.where(differ, differ.cumsum(1) - 1, k)
        every_row = torch.arange(m, device=RS.device).expand(B, m)
        rows = torch.zeros(B, k + 1, dtype=torch.int64, device=RS.device)
        rows = rows.scatter_(1, slot, every_row)[:, :k]
        valid = torch.arange(k, device=RS.device) < counts.unsqueeze(1)  # (B, k)
        inverse = None
        regular = torch.ones(B, dtype=torch.bool, device=RS.device)
        condition = base.condition
        if k:
            pair = valid.unsqueeze(2) & valid.unsqueeze(1)
            d = inactive.gather(1, rows).to(RS.dtype) - majority.to(RS.dtype)[rows]  # +-1
            eye = torch.eye(k, dtype=RS.dtype, device=RS.device)
            # W_EE by flat positions: a fifth of the time of W[rows, rows'] advanced
            # indexing, half of W.take's.
            flat = (rows.unsqueeze(2) * m + rows.unsqueeze(1)).view(-1)
            W_EE = W.reshape(-1).index_select(0, flat).view(B, k, k)
            capacitance = torch.where(pair, torch.diag_embed(d) - W_EE, eye)
            # A (numerically) singular capacitance matrix is a singular system of that
            # instance (a degenerate point, or a guess with dependent active rows).
            inverse, regular, capacitance_condition = regular_inverse(capacitance)
            condition *= float(torch.where(regular, capacitance_condition, 0.0).amax())
        return cls(RS, inactive, W, rows, valid, inverse, regular, condition > _REFINE_ABOVE)

    def _padded(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rows``, ``valid`` and ``inverse`` padded to k differing rows (padding rows
        are invalid, which `_apply` masks)."""
        B, width = self.rows.shape
        rows = self.rows.new_zeros(B, k)
        valid = self.valid.new_zeros(B, k)
        inverse = self.W.new_zeros(B, k, k)
        rows[:, :width], valid[:, :width] = self.rows, self.valid
        if self.inverse is not None:
            inverse[:, :width, :width] = self.inverse
        return rows, valid, inverse

    def merged(self, index: torch.Tensor, other: MajoritySystems) -> MajoritySystems | None:
        """These systems with those of the instances ``index`` ``(K,)`` replaced by
        ``other``'s ``K`` systems (a corrected polish of a few instances); None where
        ``other`` was built around another base."""
        if other.W is not self.W or other.RS is not self.RS:
            return None
        k = max(self.rows.shape[1], other.rows.shape[1])
        rows, valid, inverse = self._padded(k)
        rows[index], valid[index], inverse[index] = other._padded(k)
        inactive, regular = self.inactive.clone(), self.regular.clone()
        inactive[index], regular[index] = other.inactive, other.regular
        refine = self.refine or other.refine
        return MajoritySystems(self.RS, inactive, self.W, rows, valid, inverse, regular, refine)

    def _apply(self, r: torch.Tensor) -> torch.Tensor:
        p = r @ self.Wt
        if self.inverse is None:
            return p
        e = torch.where(self.valid, p.gather(1, self.rows), 0.0)
        xi = torch.where(self.valid, matvec(self.inverse, e), 0.0)
        # Added, not written: a padding slot (row 0, xi = 0) may repeat a differing row.
        return p + torch.zeros_like(p).scatter_add_(1, self.rows, xi) @ self.Wt

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``c`` ``(B, m)`` with ``(RS - D_i) c_i = rhs_i`` ``(B, m)`` (zero where the
        instance's system is singular, see ``regular``)."""
        c = self._apply(rhs)
        if not self.refine:
            return torch.where(self.regular[:, None], c, 0.0)
        # One refinement step against each instance's own matrix: W is the inverse of
        # another matrix, and the rounding it carries grows with that one's condition.
        residual = rhs - (c @ self.RS.T - torch.where(self.inactive, c, 0.0))
        return torch.where(self.regular[:, None], c + self._apply(residual), 0.0)


def _reuses(batch: int, m: int, own: int, differing: int) -> bool:
    """Whether a batch of ``batch`` systems of size m whose instances differ from their
    own majority pattern in at most ``own`` rows is better served by a kept base they
    differ from in ``differing`` rows than by a new base.

    Hardly more rows than their own pattern's: the capacitance systems grow by a few
    rows. Or capacitance systems that cost little against a new ``m x m`` inverse
    (``batch k^3 <= (m / 4)^3``: at most a sixty-fourth of its flops): a lone
    instance (own = 0) of a later call of a layer, whose active set moved by a few
    hundred rows out of thousands, keeps the base its first call paid for.
    """
    return differing <= own + max(4, own // 4) or 64 * batch * differing**3 <= m**3


class MajorityBases:
    """The bases built for one ``RS`` ``(m, m)``, kept to build later batches' systems.

    ``rank`` bounds the rank of ``S = C H^{-1} C'`` (n, C's columns). A pattern with
    more active rows than that is singular (a null vector of ``C_a'``, zero on the
    inactive rows, solves it to zero), as at a degenerate vertex of an LP: no base is
    built for it, at the price of an ``m x m`` inverse that would fail.

    A batch whose instances differ from a kept base's pattern in hardly more rows than
    from their own majority pattern reuses that base: its capacitance systems grow by
    a few rows, and the ``m x m`` inverse is saved (`_reuses`). The successive calls of
    a layer mostly meet the same majority pattern, or one a few hundred rows from it,
    and the corrected polishes of a few instances differ from the batch's by a few
    rows. Where a batch's own pattern gives
    no base (too ill-conditioned), the nearest kept one serves it.
    """

    def __init__(self, RS: torch.Tensor, rank: int) -> None:
        self.RS, self.rank = RS, rank
        self._bases: list[MajorityBase] = []
        self._failed: list[torch.Tensor] = []  # patterns whose base could not be built

    def nbytes(self) -> int:
        """Bytes held by ``RS`` and the kept inverses."""
        tensors = [self.RS, *(base.W for base in self._bases)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def systems(self, inactive: torch.Tensor) -> MajoritySystems | None:
        """`MajoritySystems.build` of the inactive rows ``(B, m)`` on a kept base or a
        new one (None where that cannot be built)."""
        majority, differ = differing_rows(inactive)
        own = int(differ.sum(1).max()) if inactive.shape[0] else 0
        counts = [base.differing(inactive) for base in self._bases]
        nearest = min(range(len(counts)), key=counts.__getitem__) if counts else None
        if nearest is not None and _reuses(
            inactive.shape[0], self.RS.shape[0], own, counts[nearest]
        ):
            return MajoritySystems.build(self.RS, inactive, self._bases[nearest])
        base = None
        singular = self.RS.shape[0] - int(majority.sum()) > self.rank
        if not singular and not any(bool((majority == failed).all()) for failed in self._failed):
            base = MajorityBase.build(self.RS, majority)
            if base is None:
                self._failed = [*self._failed[-_KEPT_BASES + 1 :], majority]
        if base is not None:
            self._bases = [*self._bases[-_KEPT_BASES + 1 :], base]
        elif nearest is not None:
            # Larger capacitance systems on a kept base rather than none at all.
            base = self._bases[nearest]
        else:
            return None
        return MajoritySystems.build(self.RS, inactive, base)
