"""CVXPY's data maps of a canonical problem as triplets, for the presolve's reductions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["Triplets", "renumbered"]


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


def renumbered(keep: np.ndarray, size: int) -> np.ndarray:
    """``(size,)``: the new index of each kept index, -1 for the others."""
    new = np.full(size, -1, dtype=np.int64)
    new[keep] = np.arange(keep.size)
    return new
