"""QPData: the batched data of ``min 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ._errors import InputError

__all__ = [
    "QPData",
    "matvec",
    "rmatvec",
    "select_rows",
    "semidefinite_violations",
    "stack_rows",
]


@dataclass(frozen=True)
class QPData:
    """Data of a batch of QPs; each block's leading dimension is 1 (shared) or B.

    Attributes:
        P: ``(1|B, n, n)`` symmetric positive semidefinite.
        q: ``(1|B, n)``.
        A: ``(1|B, n_eq, n)``.
        b: ``(1|B, n_eq)``.
        G: ``(1|B, n_ineq, n)``.
        h: ``(1|B, n_ineq)``.
        batch_size: B, the number of instances (1 for an unbatched call).
    """

    P: torch.Tensor
    q: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    G: torch.Tensor
    h: torch.Tensor
    batch_size: int

    @property
    def n(self) -> int:
        return self.q.shape[-1]

    @property
    def n_eq(self) -> int:
        return self.b.shape[-1]

    @property
    def n_ineq(self) -> int:
        return self.h.shape[-1]

    @cached_property
    def C(self) -> torch.Tensor:
        """``(1|B, n_eq + n_ineq, n)``: the stacked constraint matrix ``[A; G]`` (built
        once: with per-instance blocks it is a copy of the whole batch's matrices)."""
        return stack_rows(self.A, self.G)

    @cached_property
    def bound(self) -> torch.Tensor:
        """``(1|B, n_eq + n_ineq)``: the stacked right-hand side ``[b; h]``."""
        return stack_rows(self.b, self.h)

    def blocks(self) -> tuple[torch.Tensor, ...]:
        return (self.P, self.q, self.A, self.b, self.G, self.h)

    def with_stacked(self, C: torch.Tensor) -> QPData:
        """This data, with `C` taken as ``C`` (``[A; G]`` stacked before, by the
        caller that keeps constant matrices) instead of stacked anew."""
        self.__dict__["C"] = C  # the cache of the `C` property
        return self

    def select(self, index: torch.Tensor) -> QPData:
        """The instances ``index`` ``(K,)`` of the batch (shared blocks stay shared)."""
        P, q, A, b, G, h = (select_rows(block, index) for block in self.blocks())
        return QPData(P, q, A, b, G, h, batch_size=index.shape[0])

    def check_finite(self) -> None:
        """Raise `InputError` naming the first block holding NaN or Inf."""
        for name, block in zip(["P", "q", "A", "b", "G", "h"], self.blocks(), strict=True):
            if block.numel() and not bool(torch.isfinite(block).all()):
                raise InputError(f"the QP data block {name} contains NaN or Inf values")


def semidefinite_violations(M: torch.Tensor) -> tuple[list[int], float]:
    """Batch indices where ``sym(M)`` ``(B, n, n)`` is not positive semidefinite up to
    round-off, and the smallest eigenvalue among those (0.0 when there are none).

    The test is a Cholesky factorization of ``sym(M) + shift I`` with ``shift`` a
    round-off multiple of ``||M||_inf`` (a bound on the largest eigenvalue): a third of
    the work of an eigendecomposition, which runs only to word the error.
    """
    if M.numel() == 0:
        return [], 0.0
    sym = 0.5 * (M + M.transpose(-1, -2))
    n = M.shape[-1]
    scale = sym.abs().sum(-1).amax(-1)  # ||M||_inf >= |eigenvalues|
    # A zero matrix (an LP) is PSD: give it a unit scale, not one that underflows.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shift = 10 * n * torch.finfo(M.dtype).eps * scale
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    _, info = torch.linalg.cholesky_ex(sym + shift[:, None, None] * eye)
    bad = torch.nonzero(info != 0).flatten().tolist()
    if not bad:
        return [], 0.0
    smallest = torch.linalg.eigvalsh(sym[bad])[:, 0].min()
    return bad, float(smallest)


def select_rows(block: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``block[index]`` for a batched ``(B, ...)`` block; a shared ``(1, ...)`` one as is."""
    return block if block.shape[0] == 1 else block[index]


def stack_rows(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 1, broadcasting a shared (leading 1) block to the batch."""
    batch = max(top.shape[0], bottom.shape[0])
    return torch.cat(
        [top.expand(batch, *top.shape[1:]), bottom.expand(batch, *bottom.shape[1:])], dim=1
    )


def matvec(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(1|B, r, c) @ (B, c) -> (B, r)``; a shared M is one matrix-matrix product."""
    if M.shape[0] == 1:
        return x @ M[0].T
    return torch.bmm(M, x.unsqueeze(-1)).squeeze(-1)


def rmatvec(M: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1|B, r, c)' @ (B, r) -> (B, c)``."""
    if M.shape[0] == 1:
        return y @ M[0]
    return torch.bmm(y.unsqueeze(1), M).squeeze(1)
