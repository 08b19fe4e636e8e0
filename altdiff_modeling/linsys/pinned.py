"""Variables that their own active rows fix, eliminated before an active-set solve.

An active-set KKT system (`altdiff_modeling.linsys.sparse_kkt.solve_active_kkt`) often holds
many variables that a few short active rows determine alone: a bound at its limit, a
lasso weight held at zero by its two rows ``w - t <= 0`` and ``-w - t <= 0``. Grouping
the short active rows with their variables into connected components, a component
with as many rows as variables and a well-conditioned square block fixes them:
``C_cc x_c = b_c``. Solving those blocks exactly and the remaining system for the other
variables (the fixed ones move to the right-hand side) gives the same solution as the
whole system, and the remaining system is much smaller (at the lasso-10k benchmark's
solution 19,850 of its 20,100 variables are fixed: 9,925 weights at zero and their t). Each fixed block's multipliers then follow from its
variables' stationarity, ``C_cc' w_c = rhs_x_c - (P u + C' w)_c`` over the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = ["PinnedBlockFinder", "PinnedBlocks"]

# Rows with more entries than this are never part of a fixing block (they couple
# variables across the problem: a lasso's data rows, a budget row).
_SHORT_ROW = 4
# Largest fixing block solved densely (variables = rows).
_MAX_BLOCK = 4
# Blocks whose condition number exceeds this stay in the regularized system, whose
# refinement then decides their values.
_MAX_CONDITION = 1e6


@dataclass
class PinnedBlocks:
    """Square blocks of active rows that fix their variables, grouped by size.

    Attributes:
        variables: Per block size d, ``(G, d)`` the variables of G blocks.
        rows: Per block size d, ``(G, d)`` their rows (indices into C).
        inverses: Per block size d, ``(G, d, d)`` the inverses of ``C[rows][:, variables]``.
    """

    variables: list[np.ndarray]
    rows: list[np.ndarray]
    inverses: list[np.ndarray]

    @property
    def fixed_variables(self) -> np.ndarray:
        """``(p,)`` all fixed variables."""
        return np.concatenate([v.ravel() for v in self.variables])

    @property
    def fixed_rows(self) -> np.ndarray:
        """``(p,)`` all their rows."""
        return np.concatenate([r.ravel() for r in self.rows])

    def values(self, rhs_y: np.ndarray, n: int) -> np.ndarray:
        """``(n,)`` with the fixed variables' values (``C_cc x_c = rhs_y_c``), 0 elsewhere."""
        u = np.zeros(n)
        for variables, rows, inverses in zip(self.variables, self.rows, self.inverses):
            u[variables] = (inverses @ rhs_y[rows][..., None])[..., 0]
        return u

    def multipliers(self, residual_x: np.ndarray, w: np.ndarray) -> None:
        """Set ``w`` ``(m,)`` on the fixed rows from ``C_cc' w_c = residual_x_c``, where
        ``residual_x`` ``(n,)`` is ``rhs_x - P u - C' w`` with ``w`` zero on those rows."""
        for variables, rows, inverses in zip(self.variables, self.rows, self.inverses):
            transposed = np.swapaxes(inverses, -1, -2)
            w[rows] = (transposed @ residual_x[variables][..., None])[..., 0]


class PinnedBlockFinder:
    """Finds the fixing blocks among the active rows of one C (see the module
    docstring), for the changing active sets of a polish.

    C's entries are read once. After a search that finds no block the later ones are
    skipped: the rounds of a polish change few rows, and where the active rows form
    no square block (a chain's rows never close into one) the search would cost a
    tenth of each round (isotonic-100k).

    Args:
        C: ``(m, n)`` CSR.
    """

    def __init__(self, C: sp.csr_array) -> None:
        self.m, self.n = C.shape
        lengths = np.diff(C.indptr)
        self._short = (lengths <= _SHORT_ROW) & (lengths > 0)
        entries = np.flatnonzero(np.repeat(self._short, lengths))
        self._row = np.repeat(np.arange(self.m), lengths)[entries]
        self._col = C.indices[entries]
        self._data = C.data[entries]
        self._exhausted = not self._short.any()

    def find(self, active: np.ndarray) -> PinnedBlocks | None:
        """The fixing blocks of the rows ``active`` ``(m,)`` (bool), or None."""
        if self._exhausted:
            return None
        blocks = self._search(active)
        self._exhausted = blocks is None
        return blocks

    def _search(self, active: np.ndarray) -> PinnedBlocks | None:
        m, n = self.m, self.n
        candidate = active & self._short
        used = candidate[self._row]
        row, col, data = self._row[used], self._col[used], self._data[used]
        # Bipartite graph: variables 0..n-1, rows n..n+m-1 (rows off the candidates
        # are isolated nodes: components with one row and no variable).
        graph = sp.coo_array(
            (np.ones(row.size, dtype=np.int8), (col, n + row)), shape=(n + m, n + m)
        )
        _, labels = connected_components(graph, directed=False)
        variable_label, row_label = labels[:n], labels[n:]
        size = int(labels.max()) + 1
        n_variables = np.bincount(variable_label, minlength=size)
        n_rows = np.bincount(row_label, minlength=size)
        square = (n_rows == n_variables) & (n_rows <= _MAX_BLOCK)
        if not square.any():
            return None
        # Position of every variable and row within its component.
        variable_order = np.argsort(variable_label, kind="stable")
        row_order = np.argsort(row_label, kind="stable")
        variable_start = np.concatenate([[0], np.cumsum(n_variables)])
        row_start = np.concatenate([[0], np.cumsum(n_rows)])
        variable_position = np.empty(n, dtype=np.int64)
        variable_position[variable_order] = (
            np.arange(n) - variable_start[variable_label[variable_order]]
        )
        blocks: tuple[list, list, list] = ([], [], [])
        for d in range(1, _MAX_BLOCK + 1):
            components = np.flatnonzero(square & (n_rows == d))
            if components.size == 0:
                continue
            offsets = np.arange(d)
            variables = variable_order[variable_start[components][:, None] + offsets]
            rows = row_order[row_start[components][:, None] + offsets]
            # The dense blocks from the rows' entries.
            block_of = np.full(m, -1, dtype=np.int64)
            block_of[rows.ravel()] = np.repeat(np.arange(components.size), d)
            row_position = np.zeros(m, dtype=np.int64)
            row_position[rows.ravel()] = np.tile(offsets, components.size)
            mine = block_of[row] >= 0
            block = block_of[row[mine]]
            flat = (block * d + row_position[row[mine]]) * d + variable_position[col[mine]]
            matrices = np.bincount(
                flat, weights=data[mine], minlength=components.size * d * d
            ).reshape(components.size, d, d)
            inverses, well = _inverses(matrices)
            if not well.any():
                continue
            blocks[0].append(variables[well])
            blocks[1].append(rows[well])
            blocks[2].append(inverses[well])
        if not blocks[0]:
            return None
        return PinnedBlocks(variables=blocks[0], rows=blocks[1], inverses=blocks[2])


def _inverses(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses of ``(G, d, d)`` blocks and which are well conditioned (1-norm
    condition number at most `_MAX_CONDITION`); closed forms for d = 1 and 2, which
    are most blocks and where batched LAPACK calls cost more than the arithmetic."""
    d = matrices.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if d == 1:
            inverses = 1.0 / matrices
            condition = np.where(matrices[:, 0, 0] != 0, 1.0, np.inf)
        elif d == 2:
            a, b = matrices[:, 0, 0], matrices[:, 0, 1]
            c, e = matrices[:, 1, 0], matrices[:, 1, 1]
            det = a * e - b * c
            inverses = np.empty_like(matrices)
            inverses[:, 0, 0], inverses[:, 0, 1] = e / det, -b / det
            inverses[:, 1, 0], inverses[:, 1, 1] = -c / det, a / det
            absolute = np.abs(matrices)
            first, second = absolute[:, 0, :], absolute[:, 1, :]  # rows a b, c e
            norm = np.maximum(first[:, 0] + second[:, 0], first[:, 1] + second[:, 1])
            # The inverse's column sums are |e| + |c| and |b| + |a|, over |det|.
            inverse_norm = np.maximum(second[:, 1] + second[:, 0], first[:, 1] + first[:, 0])
            condition = norm * inverse_norm / np.abs(det)
        else:
            inverses = np.full_like(matrices, np.nan)
            regular = np.abs(np.linalg.det(matrices)) > 0
            if regular.any():
                inverses[regular] = np.linalg.inv(matrices[regular])
            norm = np.abs(matrices).sum(-2).max(-1)
            condition = norm * np.abs(inverses).sum(-2).max(-1)
        well = np.isfinite(condition) & (condition <= _MAX_CONDITION)
    return inverses, well
