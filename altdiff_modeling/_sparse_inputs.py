"""`solve_qp`'s sparse matrices: scipy.sparse and torch sparse (COO, CSR) inputs.

Where any of P, A, G is sparse the whole problem is solved in the sparse layout: each
matrix becomes a `BatchedSparse` on its pattern (a dense block on the pattern of its
nonzeros over the batch), P is symmetrized on the union of its pattern and its
transpose's, and A and G are stacked into C. A torch sparse matrix's values stay
differentiable (its gradient is sparse, on its pattern); a scipy one is a constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ._batched_sparse import BatchedSparse, SparsePattern
from ._errors import InputError
from ._qp import QPData

__all__ = ["Entries", "is_sparse", "sparse_problem", "to_entries"]


def is_sparse(value: Any) -> bool:
    """Whether ``value`` is a scipy.sparse or torch sparse matrix."""
    if sp.issparse(value):
        return True
    return isinstance(value, torch.Tensor) and value.layout != torch.strided


class Entries:
    """One matrix as entries ``values (1|B, E)`` at ``(rows, cols)`` of a ``shape``."""

    def __init__(
        self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple
    ) -> None:
        self.rows, self.cols, self.values, self.shape = rows, cols, values, shape

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device


def to_entries(name: str, value: Any, device: torch.device) -> Entries:
    """``value`` (a 2-d sparse matrix) as `Entries` on ``device``."""
    if sp.issparse(value):
        if value.ndim != 2:
            raise InputError(f"{name} must be a 2-d sparse matrix, got {value.ndim} dimensions")
        coo = sp.coo_array(value)
        coo.sum_duplicates()
        rows = torch.as_tensor(coo.row.astype(np.int64), device=device)
        cols = torch.as_tensor(coo.col.astype(np.int64), device=device)
        values = torch.as_tensor(coo.data, device=device)
        if not (values.dtype.is_floating_point or values.dtype in (torch.int32, torch.int64)):
            raise InputError(f"{name} has dtype {coo.data.dtype}, which is not a real number type")
        return Entries(rows, cols, values[None], tuple(coo.shape))
    if value.dim() != 2:
        raise InputError(
            f"{name} must be a 2-d sparse matrix (a batch of sparse matrices is not "
            f"supported; pass a dense (B, ...) tensor instead), got shape {tuple(value.shape)}"
        )
    coo = value.to_sparse_coo() if value.layout != torch.sparse_coo else value
    coo = coo.coalesce()
    indices = coo.indices()
    return Entries(indices[0], indices[1], coo.values()[None], tuple(value.shape))


def _dense_entries(block: torch.Tensor) -> Entries:
    """A dense ``(1|B, r, c)`` block on the pattern of its nonzeros over the batch."""
    nonzero = (block.detach() != 0).any(0)
    rows, cols = torch.nonzero(nonzero, as_tuple=True)
    return Entries(rows, cols, block[:, rows, cols], tuple(block.shape[1:]))


def _matrix(entries: Entries | torch.Tensor) -> Entries:
    return entries if isinstance(entries, Entries) else _dense_entries(entries)


def sparse_problem(
    P: Entries | torch.Tensor,
    q: torch.Tensor,
    A: Entries | torch.Tensor,
    b: torch.Tensor,
    G: Entries | torch.Tensor,
    h: torch.Tensor,
    dtype: torch.dtype,
    batch: int,
) -> QPData:
    """The sparse-layout `QPData` of the blocks (matrices as `Entries` or dense
    ``(1|B, r, c)`` tensors, vectors ``(1|B, k)``), in ``dtype``."""
    P, A, G = (_matrix(M) for M in (P, A, G))
    n, n_eq = q.shape[-1], b.shape[-1]
    device = q.device
    # (P + P') / 2 on the union of the two patterns, each position once (the Ruiz
    # passes take the largest entry of a row: duplicates would halve it).
    half = P.values.to(dtype) / 2
    keys = torch.cat([P.rows * n + P.cols, P.cols * n + P.rows])
    unique, position = torch.unique(keys, return_inverse=True)
    values = half.new_zeros(half.shape[0], unique.numel())
    values = values.index_add(1, position, torch.cat([half, half], dim=1))
    P_pattern = SparsePattern(unique // n, unique % n, (n, n))
    P_sparse = BatchedSparse(values, P_pattern)
    rows = A.values.shape[0], G.values.shape[0]
    width = max(rows) if min(rows) == 1 else batch
    C_values = torch.cat(
        [A.values.to(dtype).expand(width, -1), G.values.to(dtype).expand(width, -1)], dim=1
    )
    C_pattern = SparsePattern(
        torch.cat([A.rows, G.rows + n_eq]).to(device),
        torch.cat([A.cols, G.cols]).to(device),
        (n_eq + h.shape[-1], n),
    )
    C = BatchedSparse(C_values, C_pattern)
    bound = torch.cat(
        [
            b.to(dtype).expand(max(b.shape[0], h.shape[0]), -1),
            h.to(dtype).expand(max(b.shape[0], h.shape[0]), -1),
        ],
        dim=1,
    )
    return QPData(P_sparse, q.to(dtype), C, bound, n_eq, batch)
