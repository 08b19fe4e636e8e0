"""Sparse QP data of one factorization group, and its Ruiz equilibration.

A group is a set of B instances that share P and ``C = [A; G]`` (so one KKT
factorization serves them all) and differ in q and ``[b; h]``. The scaling follows
`altdiff_modeling._scaling` (OSQP's Ruiz passes on ``[[P, C'], [C, 0]]``, then a cost
scale c), on sparse matrices: ``P~ = c D P D``, ``q~ = c D q``, ``C~ = E C D``,
``bound~ = E bound``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["SparseQP", "SparseScaling", "sparse_ruiz"]

_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass(frozen=True)
class SparseQP:
    """A group of QPs sharing their matrices (float64).

    Attributes:
        P: ``(n, n)`` symmetric, both triangles stored (CSC).
        C: ``(m, n)`` ``[A; G]`` (CSR).
        q: ``(B, n)``.  bound: ``(B, m)`` ``[b; h]``.
        n_eq: Number of equality rows (the first rows of C).
    """

    P: sp.csc_array
    C: sp.csr_array
    q: np.ndarray
    bound: np.ndarray
    n_eq: int

    @property
    def n(self) -> int:
        return self.q.shape[1]

    @property
    def m(self) -> int:
        return self.bound.shape[1]


@dataclass(frozen=True)
class SparseScaling:
    """Diagonal scaling of a group: ``D (n,)``, ``E (m,)``, cost scale ``c``."""

    D: np.ndarray
    E: np.ndarray
    c: float

    def scale(self, qp: SparseQP) -> SparseQP:
        """The data the solver sees."""
        D, E, c = self.D, self.E, self.c
        P = sp.csc_array(sp.diags_array(c * D) @ qp.P @ sp.diags_array(D))
        C = sp.csr_array(sp.diags_array(E) @ qp.C @ sp.diags_array(D))
        return SparseQP(P=P, C=C, q=c * D * qp.q, bound=E * qp.bound, n_eq=qp.n_eq)

    def unscale(
        self, x: np.ndarray, z: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scaled ``(x~, z~, y~)`` to the user's ``(x, z, y)``."""
        return self.D * x, z / self.E, self.E * y / self.c

    def rescale(
        self, x: np.ndarray, z: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The user's ``(x, z, y)`` to the solver's units."""
        return x / self.D, z * self.E, y * self.c / self.E


class _GroupMax:
    """Maxima of a sparse matrix's absolute entries over the groups (rows or columns)
    given by ``labels``: the entries are sorted by group once, each pass is one
    ``np.maximum.reduceat``."""

    def __init__(self, labels: np.ndarray, size: int) -> None:
        self.order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.nonempty = np.flatnonzero(counts)
        self.starts = starts[self.nonempty]
        self.size = size

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.size)
        if self.nonempty.size:
            out[self.nonempty] = np.maximum.reduceat(values[self.order], self.starts)
        return out


def _inv_sqrt(norm: np.ndarray) -> np.ndarray:
    safe = np.where(norm < _MIN_SCALE, 1.0, norm)
    return 1.0 / np.sqrt(np.minimum(safe, _MAX_SCALE))


def sparse_ruiz(qp: SparseQP, iterations: int) -> SparseScaling:
    """Equilibrate ``[[P, C'], [C, 0]]`` in the infinity norm (see the module docstring).

    Args:
        qp: The user's data of one group.
        iterations: Number of Ruiz passes (0: identity D and E).

    Returns:
        The group's scaling; c uses the median over the group's q norms, so that the
        group keeps one factorization.
    """
    n, m = qp.n, qp.m
    D, E = np.ones(n), np.ones(m)
    P, C = sp.coo_array(qp.P), sp.coo_array(qp.C)
    P_abs, C_abs = np.abs(P.data), np.abs(C.data)
    P_row, P_col, C_row, C_col = P.row, P.col, C.row, C.col
    P_col_max, C_col_max, C_row_max = _GroupMax(P_col, n), _GroupMax(C_col, n), _GroupMax(C_row, m)
    P_s = P_abs
    for _ in range(iterations):
        P_s = P_abs * D[P_row] * D[P_col]
        C_s = C_abs * E[C_row] * D[C_col]
        col = np.maximum(P_col_max(P_s), C_col_max(C_s))
        d, e = _inv_sqrt(col), _inv_sqrt(C_row_max(C_s))
        D, E = D * d, E * e
    P_s = P_abs * D[P_row] * D[P_col]
    P_norm = float(P_col_max(P_s).mean()) if n else 0.0
    q_norms = np.abs(D * qp.q).max(axis=1) if n and qp.q.shape[0] else np.zeros(1)
    norm = max(P_norm, float(np.median(q_norms)))
    c = 1.0 if norm == 0 else 1.0 / min(max(norm, _MIN_SCALE), _MAX_SCALE)
    return SparseScaling(D=D, E=E, c=c)
