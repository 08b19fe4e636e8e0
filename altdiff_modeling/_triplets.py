"""CVXPY's data maps of a canonical problem as triplets, for the presolve's reductions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["Triplets", "entries_of", "renumbered"]

_FIELDS = ("row", "col", "column", "value")


@dataclass(frozen=True)
class Triplets:
    """CVXPY's maps as triplets: entry (row, col) of a matrix, a column of CVXPY's
    parameter vector (the last one: the constant), a value."""

    row: np.ndarray
    col: np.ndarray
    column: np.ndarray
    value: np.ndarray

    @staticmethod
    def of(tensor: sp.sparray, n_rows: int) -> Triplets:
        """``tensor``'s rows ``row + n_rows * col`` as triplets."""
        coo = sp.coo_array(tensor)
        keep = coo.data != 0
        flat = coo.row[keep].astype(np.int64)
        return Triplets(
            flat % n_rows, flat // n_rows, coo.col[keep].astype(np.int64), coo.data[keep]
        )

    def where(self, mask: np.ndarray) -> Triplets:
        return Triplets(self.row[mask], self.col[mask], self.column[mask], self.value[mask])

    def renumbered(self, new_row: np.ndarray, new_col: np.ndarray) -> Triplets:
        """The entries whose row and column a reduced problem keeps, in its numbering
        (``new_row``, ``new_col``: -1 for what it drops)."""
        kept = self.where((new_row[self.row] >= 0) & (new_col[self.col] >= 0))
        return Triplets(new_row[kept.row], new_col[kept.col], kept.column, kept.value)

    @staticmethod
    def concatenated(parts: list[Triplets]) -> Triplets:
        return Triplets(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def tensor(self, n_rows: int, n_cols: int, width: int) -> sp.coo_array:
        """The entries in CVXPY's layout, row ``row + n_rows * col``, duplicates summed:
        ``(n_rows * n_cols, width)``."""
        tensor = sp.coo_array(
            (self.value, (self.row + n_rows * self.col, self.column)),
            shape=(n_rows * n_cols, width),
        )
        tensor.sum_duplicates()
        return tensor


def renumbered(keep: np.ndarray, size: int) -> np.ndarray:
    """``(size,)``: the new index of each kept index, -1 for the others."""
    new = np.full(size, -1, dtype=np.int64)
    new[keep] = np.arange(keep.size)
    return new


def entries_of(entry_rows: np.ndarray, n_rows: int, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(k, entry)``: the entries (indices into ``entry_rows``) of each of ``rows``,
    with the position k in ``rows`` of the row each one is of."""
    order = np.argsort(entry_rows, kind="stable")
    start = np.searchsorted(entry_rows[order], np.arange(n_rows + 1))
    counts = start[rows + 1] - start[rows]
    k = np.repeat(np.arange(rows.size), counts)
    offset = np.arange(k.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return k, order[start[rows][k] + offset]
