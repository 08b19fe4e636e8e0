"""QPData: the batched data of ``min 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h``, stacked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._batched_sparse import BatchedSparse
from ._cones import SecondOrderCones, second_order_cones
from ._errors import InputError

__all__ = [
    "PSD_TOLERANCE",
    "Matrix",
    "QPData",
    "matvec",
    "rmatvec",
    "select_rows",
    "semidefinite_violations",
    "stack_rows",
]


Matrix = torch.Tensor | BatchedSparse


@dataclass(frozen=True)
class QPData:
    """Data of a batch of QPs in the solver's stacked form
    ``min 1/2 x'Px + q'x  s.t.  C[:n_eq] x = bound[:n_eq], C[n_eq:] x <= bound[n_eq:]``,
    with ``C = [A; G]`` and ``bound = [b; h]``; each block's leading dimension is 1
    (shared) or B.

    The matrices are dense tensors, or `BatchedSparse` batches on a fixed pattern (the
    sparse layout): the solver reaches them through `matvec` and `rmatvec` wherever it
    needs only their products.

    Attributes:
        P: ``(1|B, n, n)`` symmetric positive semidefinite.
        q: ``(1|B, n)``.
        C: ``(1|B, m, n)``.
        bound: ``(1|B, m)``.
        n_eq: Number of equality rows (the first rows of C).
        batch_size: B, the number of instances (1 for an unbatched call).
        cone_sizes: The sizes of the second-order cones that the last
            ``sum(cone_sizes)`` rows form, in order: there ``bound - C x`` lies in the
            product of the cones instead of the nonnegative orthant (empty for a QP).
    """

    P: Matrix
    q: torch.Tensor
    C: Matrix
    bound: torch.Tensor
    n_eq: int
    batch_size: int
    cone_sizes: tuple[int, ...] = ()

    @classmethod
    def from_blocks(
        cls,
        P: torch.Tensor,
        q: torch.Tensor,
        A: torch.Tensor,
        b: torch.Tensor,
        G: torch.Tensor,
        h: torch.Tensor,
        batch_size: int,
    ) -> QPData:
        """The stacked data of dense blocks (differentiable through the stacking)."""
        return cls(P, q, stack_rows(A, G), stack_rows(b, h), b.shape[-1], batch_size)

    def like(
        self,
        P: Matrix,
        q: torch.Tensor,
        C: Matrix,
        bound: torch.Tensor,
        batch_size: int | None = None,
    ) -> QPData:
        """Data of the same rows (equalities, inequalities, cones) with other blocks."""
        batch = self.batch_size if batch_size is None else batch_size
        return QPData(P, q, C, bound, self.n_eq, batch, self.cone_sizes)

    @property
    def n(self) -> int:
        return self.q.shape[-1]

    @property
    def m(self) -> int:
        return self.bound.shape[-1]

    @property
    def n_ineq(self) -> int:
        """Inequality rows, those of the cones included."""
        return self.m - self.n_eq

    @property
    def n_cone(self) -> int:
        """Rows of the second-order cones (the last rows of C)."""
        return sum(self.cone_sizes)

    @property
    def cones(self) -> SecondOrderCones | None:
        """The second-order cones of the last `n_cone` rows, or None (a QP)."""
        if not self.cone_sizes:
            return None
        return second_order_cones(self.cone_sizes, self.q.device)

    @property
    def sparse(self) -> bool:
        """Whether the matrices are `BatchedSparse` (the sparse layout)."""
        return isinstance(self.C, BatchedSparse)

    @property
    def A(self) -> torch.Tensor:
        """``(1|B, n_eq, n)`` the equality rows of a dense C."""
        return self.C[:, : self.n_eq]

    @property
    def G(self) -> torch.Tensor:
        """``(1|B, n_ineq, n)`` the inequality rows of a dense C."""
        return self.C[:, self.n_eq :]

    @property
    def b(self) -> torch.Tensor:
        return self.bound[:, : self.n_eq]

    @property
    def h(self) -> torch.Tensor:
        return self.bound[:, self.n_eq :]

    def blocks(self) -> tuple[Matrix | torch.Tensor, ...]:
        """``(P, q, C, bound)``."""
        return (self.P, self.q, self.C, self.bound)

    def to(self, device: torch.device) -> QPData:
        """The data on ``device`` (autograd follows the copies)."""
        P, q, C, bound = (block.to(device) for block in self.blocks())
        return self.like(P, q, C, bound)

    def select(self, index: torch.Tensor) -> QPData:
        """The instances ``index`` ``(K,)`` of the batch (shared blocks stay shared)."""
        P, q, C, bound = (select_rows(block, index) for block in self.blocks())
        return self.like(P, q, C, bound, batch_size=index.shape[0])

    def check_finite(self) -> None:
        """Raise `InputError` naming the first block holding NaN or Inf."""
        for name, block in zip(["P", "q", "C", "bound"], self.blocks(), strict=True):
            values = block.values if isinstance(block, BatchedSparse) else block
            if values.numel() and not bool(torch.isfinite(values).all()):
                raise InputError(f"the QP data block {name} contains NaN or Inf values")


#: `semidefinite_violations` accepts eigenvalues down to minus this fraction of
#: ``||P||_inf`` (a bound on the largest eigenvalue): the rounding of data that were
#: meant to be positive semidefinite (Maros-Meszaros' VALUES has -1.3e-5 against 10.8),
#: far above CVXPY's absolute 1e-10 for quad_form's constants, which psd_wrap lifts.
PSD_TOLERANCE = 1e-5


def semidefinite_violations(M: torch.Tensor) -> tuple[list[int], float]:
    """Batch indices where ``sym(M)`` ``(B, n, n)`` is not positive semidefinite within
    ``PSD_TOLERANCE`` relative to its size, and the smallest eigenvalue among those
    (0.0 when there are none).

    The test is a Cholesky factorization of ``sym(M) + shift I`` with ``shift`` that
    tolerance (or round-off, whichever is larger) times ``||M||_inf``: a third of the
    work of an eigendecomposition, which runs only to word the error.
    """
    if M.numel() == 0:
        return [], 0.0
    sym = 0.5 * (M + M.transpose(-1, -2))
    n = M.shape[-1]
    scale = sym.abs().sum(-1).amax(-1)  # ||M||_inf >= |eigenvalues|
    # A zero matrix (an LP) is PSD: give it a unit scale, not one that underflows.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shift = max(PSD_TOLERANCE, 10 * n * torch.finfo(M.dtype).eps) * scale
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    _, info = torch.linalg.cholesky_ex(sym + shift[:, None, None] * eye)
    bad = torch.nonzero(info != 0).flatten().tolist()
    if not bad:
        return [], 0.0
    smallest = torch.linalg.eigvalsh(sym[bad])[:, 0].min()
    return bad, float(smallest)


def select_rows(block: Matrix, index: torch.Tensor) -> Matrix:
    """``block[index]`` for a batched ``(B, ...)`` block; a shared ``(1, ...)`` one as is."""
    if isinstance(block, BatchedSparse):
        return block.select(index)
    return block if block.shape[0] == 1 else block[index]


def stack_rows(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 1, broadcasting a shared (leading 1) block to the batch."""
    batch = max(top.shape[0], bottom.shape[0])
    return torch.cat(
        [top.expand(batch, *top.shape[1:]), bottom.expand(batch, *bottom.shape[1:])], dim=1
    )


def matvec(M: Matrix, x: torch.Tensor) -> torch.Tensor:
    """``(1|B, r, c) @ (B, c) -> (B, r)``; a shared M is one matrix-matrix product."""
    if isinstance(M, BatchedSparse):
        return M.matvec(x)
    if M.shape[0] == 1:
        return x @ M[0].T
    # x' M' rather than M x: the same product, as a row vector times a matrix, which
    # the BLAS's batched kernels run about twice as fast as a matrix times a column.
    return torch.bmm(x.unsqueeze(1), M.transpose(1, 2)).squeeze(1)


def rmatvec(M: Matrix, y: torch.Tensor) -> torch.Tensor:
    """``(1|B, r, c)' @ (B, r) -> (B, c)``."""
    if isinstance(M, BatchedSparse):
        return M.rmatvec(y)
    if M.shape[0] == 1:
        return y @ M[0]
    return torch.bmm(y.unsqueeze(1), M).squeeze(1)
