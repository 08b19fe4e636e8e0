"""A batch of sparse matrices on one sparsity pattern, as torch tensors.

CVXPY's canonical forms are sparse (auxiliary variables, identity blocks) even where the
user's matrices are dense, and a parameter that reaches a matrix changes its values,
never its pattern. `BatchedSparse` holds such a batch as values ``(1|B, E)`` at fixed
positions ``(rows, cols)``: a leading 1 is one matrix shared by the batch. Its products
are gathers and index-adds over the pattern (any device, differentiable by autograd);
the solver treats it like a dense ``(1|B, r, c)`` block wherever it only needs products
(see `_qp.matvec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["BatchedSparse", "SparsePattern"]


class SparsePattern:
    """The positions ``(rows[e], cols[e])`` of the entries of ``(r, c)`` matrices, and
    the compressed-row layouts that the CPU products use (built once per pattern)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> None:
        self.rows, self.cols, self.size = rows, cols, (int(size[0]), int(size[1]))
        self._layouts: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def to(self, device: torch.device) -> SparsePattern:
        if self.rows.device == device:
            return self
        return SparsePattern(self.rows.to(device), self.cols.to(device), self.size)

    def transpose(self) -> SparsePattern:
        transposed = self._layouts.get(("transposed", 0))
        if transposed is None:
            transposed = SparsePattern(self.cols, self.rows, (self.size[1], self.size[0]))
            self._layouts[("transposed", 0)] = transposed  # type: ignore[assignment]
        return transposed  # type: ignore[return-value]

    def layout(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order, indices, indptr)``: ``values[:, order]`` raveled are the data of the
        block-diagonal CSR matrix of ``batch`` instances with these index arrays."""
        key = ("csr", batch)
        cached = self._layouts.get(key)
        if cached is None:
            rows = self.rows.cpu().numpy()
            cols = self.cols.cpu().numpy()
            r, c = self.size
            order = np.lexsort((cols, rows))
            counts = np.bincount(rows, minlength=r)
            indptr = np.concatenate([[0], np.cumsum(counts)])
            E = rows.size
            offsets = (np.arange(batch) * E)[:, None]
            indptr_b = np.concatenate([[0], (indptr[1:][None, :] + offsets).ravel()])
            indices_b = (cols[order][None, :] + (np.arange(batch) * c)[:, None]).ravel()
            cached = (order, indices_b.astype(np.int64), indptr_b.astype(np.int64))
            self._layouts[key] = cached
        return cached


@dataclass(frozen=True)
class BatchedSparse:
    """Matrices ``(1|B, r, c)`` with values ``(1|B, E)`` at the entries of ``pattern``.

    On the CPU the products go through scipy's compressed-row kernels (a batch of
    per-instance matrices as one block-diagonal matrix); elsewhere through gathers and
    index-adds.

    Attributes:
        values: ``(1|B, E)`` the entries (duplicates are summed).
        pattern: Their positions.
    """

    values: torch.Tensor
    pattern: SparsePattern
    # The scipy matrices of the CPU products and the transpose, built on first use.
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_scipy(
        cls, matrix: sp.sparray | sp.spmatrix, dtype: torch.dtype, device: torch.device
    ) -> BatchedSparse:
        """One shared matrix from a scipy sparse matrix."""
        coo = sp.coo_array(matrix)
        pattern = SparsePattern(
            torch.as_tensor(coo.row.astype(np.int64), device=device),
            torch.as_tensor(coo.col.astype(np.int64), device=device),
            (int(coo.shape[0]), int(coo.shape[1])),
        )
        values = torch.as_tensor(coo.data, dtype=dtype, device=device).unsqueeze(0)
        return cls(values, pattern)

    @property
    def rows(self) -> torch.Tensor:
        return self.pattern.rows

    @property
    def cols(self) -> torch.Tensor:
        return self.pattern.cols

    @property
    def size(self) -> tuple[int, int]:
        return self.pattern.size

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.values.shape[0], *self.size)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def requires_grad(self) -> bool:
        return self.values.requires_grad

    def with_values(self, values: torch.Tensor) -> BatchedSparse:
        """The same pattern with other values ``(1|B, E)``."""
        return BatchedSparse(values, self.pattern)

    def select(self, index: torch.Tensor) -> BatchedSparse:
        """The matrices of the instances ``index`` ``(K,)`` (a shared one as is)."""
        if self.values.shape[0] == 1:
            return self
        return self.with_values(self.values[index])

    def expand(self, batch: int) -> BatchedSparse:
        """The batch of ``batch`` matrices (a shared one repeated)."""
        return self.with_values(self.values.expand(batch, -1))

    def scaled(self, row: torch.Tensor, col: torch.Tensor) -> BatchedSparse:
        """``diag(row) M diag(col)`` for ``row`` ``(1|B, r)`` and ``col`` ``(1|B, c)``."""
        return self.with_values(self.values * row[:, self.rows] * col[:, self.cols])

    def transpose(self) -> BatchedSparse:
        transposed = self._cache.get("transposed")
        if transposed is None:
            transposed = BatchedSparse(self.values, self.pattern.transpose())
            self._cache["transposed"] = transposed
        return transposed

    def _scipy_matrix(self) -> sp.csr_array:
        """The matrix (shared) or block-diagonal matrix of the batch, as scipy CSR."""
        matrix = self._cache.get("scipy")
        if matrix is None:
            values = self.values.detach().cpu().double().numpy()
            B = values.shape[0]
            order, indices, indptr = self.pattern.layout(B)
            r, c = self.size
            matrix = sp.csr_array((B * r, B * c))  # filled below, without validation
            matrix.data = np.ascontiguousarray(values[:, order]).ravel()
            matrix.indices, matrix.indptr = indices, indptr
            self._cache["scipy"] = matrix
        return matrix

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c) -> (B, r)``: each instance's matrix times its row of x."""
        if x.device.type == "cpu" and not (x.requires_grad or self.values.requires_grad):
            X = x.detach().double().numpy()
            M = self._scipy_matrix()
            if self.values.shape[0] == 1:
                out = np.ascontiguousarray((M @ X.T).T)
            else:
                out = (M @ X.ravel()).reshape(X.shape[0], self.size[0])
            return torch.from_numpy(out).to(x.dtype)
        out = x.new_zeros(x.shape[0], self.size[0])
        return out.index_add(1, self.rows, self.values * x[:, self.cols])

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, r) -> (B, c)``: each instance's transposed matrix times its row of y."""
        return self.transpose().matvec(y)

    def on_pattern(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(u v')`` at the pattern's positions: ``(B, E)`` from ``u`` ``(B, r)`` and
        ``v`` ``(B, c)`` (the gradient of ``sum(u' M v)`` with respect to the values)."""
        return u[:, self.rows] * v[:, self.cols]

    def row_abs_max(self) -> torch.Tensor:
        """``(1|B, r)``: the largest absolute entry of each row (0 for an empty one);
        a pattern that repeats a position gives the largest of its parts, not of their
        sum (the solver's patterns hold each position once)."""
        return self._abs_max(self.rows, self.size[0])

    def col_abs_max(self) -> torch.Tensor:
        """``(1|B, c)``: the largest absolute entry of each column."""
        return self._abs_max(self.cols, self.size[1])

    def _abs_max(self, index: torch.Tensor, length: int) -> torch.Tensor:
        values = self.values.abs()
        out = values.new_zeros(values.shape[0], length)
        return out.scatter_reduce(1, index.expand_as(values), values, reduce="amax")

    def to_scipy(self, instance: int = 0) -> sp.csr_array:
        """One instance's matrix as a scipy CSR array (float64, on the CPU)."""
        values = self.values[instance if self.values.shape[0] > 1 else 0]
        return sp.csr_array(
            (
                values.detach().cpu().double().numpy(),
                (self.rows.cpu().numpy(), self.cols.cpu().numpy()),
            ),
            shape=self.size,
        )

    def to_dense(self) -> torch.Tensor:
        """``(1|B, r, c)`` dense matrices (for small sizes and tests)."""
        batch = self.values.shape[0]
        out = self.values.new_zeros(batch, self.size[0] * self.size[1])
        flat = self.rows * self.size[1] + self.cols
        out = out.index_add(1, flat, self.values)
        return out.view(batch, *self.size)

    def to(
        self, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> BatchedSparse:
        """The matrices on another device or in another dtype."""
        device = self.device if device is None else device
        return BatchedSparse(self.values.to(device=device, dtype=dtype), self.pattern.to(device))
