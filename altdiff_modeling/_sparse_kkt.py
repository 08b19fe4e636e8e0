"""Sparse LDL' factorization of the quasi-definite KKT matrix (the sparse backend).

The x-update of ADMM and every step of the Alt-Diff recursion solve with
``H = P + sigma I + C' diag(r) C``. Forming H would fill in (a dense row of C makes H
dense), so the sparse backend factors OSQP's quasi-definite KKT matrix instead::

    K = [[P + sigma I,  C'          ],
         [C,            -diag(1/r)  ]]

whose solution of ``K [u; w] = [rhs; 0]`` has ``u = H^{-1} rhs``. qdldl computes
``K = L D L'`` after an AMD ordering; the symbolic analysis is done once and only the
values are refactored when r changes. Where C has quasi-dense rows, which make AMD
slow, SuperLU (symmetric ordering, diagonal pivots) factors K instead
(`_choose_engine`).
"""

from __future__ import annotations

import numpy as np
import qdldl
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from ._errors import SolverError

__all__ = ["KKTFactor", "solve_active_kkt"]

# Regularization of the active-set systems: smaller than OSQP's 1e-6, because the Schur
# complement of a long chain of active rows (an isotonic projection) has eigenvalues far
# below 1e-6, where refinement from a 1e-6 regularization diverges.
_DELTA = 1e-9
_REFINE_STEPS = 10
_REFINE_TOL = 1e-13


def _norm(v: np.ndarray) -> float:
    return float(np.abs(v).max()) if v.size else 0.0


class KKTFactor:
    """LDL' factor of ``[[P + sigma I, C'], [C, -diag(row_diag)]]``.

    Args:
        P: ``(n, n)`` symmetric sparse matrix (both triangles stored).
        C: ``(m, n)`` sparse constraint matrix.
        sigma: Regularization added to P's diagonal.
        row_diag: ``(m,)`` positive values; the lower-right block is ``-diag(row_diag)``.
        check_inertia: Check on the first factorization that it has n positive pivots
            (P + sigma I positive definite); the active-set solves skip it.

    Raises:
        SolverError: The matrix is not quasi-definite (P not positive semidefinite).
    """

    def __init__(
        self,
        P: sp.sparray,
        C: sp.sparray,
        sigma: float,
        row_diag: np.ndarray,
        check_inertia: bool = True,
    ) -> None:
        n, m = P.shape[0], C.shape[0]
        self.n, self.m = n, m
        P_coo, C_coo = sp.coo_array(P), sp.coo_array(C)
        upper = P_coo.row <= P_coo.col
        diag_n, diag_m = np.arange(n), np.arange(m)
        rows = np.concatenate([P_coo.row[upper], diag_n, C_coo.col, n + diag_m])
        cols = np.concatenate([P_coo.col[upper], diag_n, n + C_coo.row, n + diag_m])
        size = n + m
        keys = cols.astype(np.int64) * size + rows
        unique, self._slot = np.unique(keys, return_inverse=True)
        self._indices = (unique % size).astype(np.int32)
        counts = np.bincount(unique // size, minlength=size)
        self._indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        self._P_upper, self._C_data = P_coo.data[upper], C_coo.data
        self.engine = _choose_engine(np.diff(sp.csr_array(C).indptr), size)
        self._lu: sla.SuperLU | None = None
        self._solver: qdldl.Solver | None = None
        self._check_inertia = check_inertia
        self.sigma = float(sigma)
        self.row_diag = np.asarray(row_diag, dtype=np.float64)
        self.refactor(self.row_diag)

    def refactor(self, row_diag: np.ndarray, sigma: float | None = None) -> None:
        """Refactor with a new lower-right diagonal ``-diag(row_diag)`` ``(m,)`` (and a
        new ``sigma``); the ordering and symbolic analysis are reused."""
        self.sigma = self.sigma if sigma is None else float(sigma)
        self.row_diag = np.asarray(row_diag, dtype=np.float64)
        values = np.concatenate(
            [self._P_upper, np.full(self.n, self.sigma), self._C_data, -self.row_diag]
        )
        data = np.bincount(self._slot, weights=values, minlength=self._indices.size)
        size = self.n + self.m
        K = sp.csc_matrix((data, self._indices, self._indptr), shape=(size, size))
        if self.engine == "splu":
            self._factor_splu(K)
            return
        try:
            if self._solver is None:
                self._solver = qdldl.Solver(K, upper=True)
                # Inertia (n positive, m negative pivots) certifies quasi-definiteness,
                # hence P + sigma I positive definite; checked once (P does not change).
                positive = self.n
                if self._check_inertia:
                    positive = int((self._solver.factors()[1] > 0).sum())
                if positive != self.n:
                    raise ValueError(f"{self.n - positive} pivot(s) of the P block are <= 0")
            else:
                self._solver.update(K, upper=True)
        except (ValueError, RuntimeError) as exc:
            raise SolverError(
                "the sparse KKT matrix [[P + sigma*I, C'], [C, -1/rho]] could not be factored "
                f"({exc}); is P positive semidefinite?"
            ) from None

    def _factor_splu(self, K_upper: sp.csc_matrix) -> None:
        """SuperLU with symmetric ordering and diagonal pivots: an LDL'-like
        factorization of the quasi-definite K (no fill-reducing reuse across refactors)."""
        diagonal = sp.diags_array(K_upper.diagonal())
        K = sp.csc_array(K_upper + K_upper.T - diagonal)
        try:
            lu = sla.splu(
                K,
                permc_spec="MMD_AT_PLUS_A",
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
        except RuntimeError as exc:
            raise SolverError(
                "the sparse KKT matrix [[P + sigma*I, C'], [C, -1/rho]] could not be factored "
                f"({exc}); is P positive semidefinite?"
            ) from None
        if self._check_inertia and self._lu is None:
            positive = int((lu.U.diagonal() > 0).sum())
            if positive != self.n or not np.array_equal(lu.perm_r, lu.perm_c):
                raise SolverError(
                    "the sparse KKT matrix [[P + sigma*I, C'], [C, -1/rho]] is not "
                    f"quasi-definite ({self.n - positive} pivot(s) of the P block are <= 0); "
                    "is P positive semidefinite?"
                )
        self._lu = lu

    def solve_kkt(self, rhs_x: np.ndarray, rhs_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``K [u; w] = [rhs_x; rhs_y]`` for ``(B, n)``, ``(B, m)`` right-hand sides."""
        if self._lu is not None:
            out = np.ascontiguousarray(self._lu.solve(np.concatenate([rhs_x, rhs_y], 1).T).T)
        else:
            assert self._solver is not None
            out = np.empty((rhs_x.shape[0], self.n + self.m))
            for k in range(rhs_x.shape[0]):  # qdldl solves one vector at a time
                out[k] = self._solver.solve(np.concatenate([rhs_x[k], rhs_y[k]]))
        if not np.isfinite(out).all():
            raise SolverError(
                "the sparse KKT solve returned NaN or Inf values; is P positive semidefinite?"
            )
        return out[:, : self.n], out[:, self.n :]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``H^{-1} rhs`` for ``(B, n)`` right-hand sides, ``H = P + sigma I + C' diag(1 /
        row_diag) C``."""
        u, _ = self.solve_kkt(rhs, np.zeros((rhs.shape[0], self.m)))
        return u


def _choose_engine(row_counts: np.ndarray, size: int) -> str:
    """``"qdldl"`` (AMD ordering) unless C has quasi-dense rows.

    AMD sets aside rows with more than ``10 sqrt(size)`` entries as dense and orders
    the rest quickly; rows just below that threshold (a lasso's few data rows) make its
    ordering slow, seconds at 40,000 rows, where SuperLU's minimum-degree ordering with
    symmetric pivoting takes a fraction of a second. Truly dense rows (a budget or
    factor constraint over every variable) are the other way round.
    """
    longest = int(row_counts.max()) if row_counts.size else 0
    quasi_dense = int(np.sum(row_counts > np.sqrt(size)))
    if longest <= 10 * np.sqrt(size) and quasi_dense > 0:
        return "splu"
    return "qdldl"


def solve_active_kkt(
    P: sp.sparray, C: sp.csr_array, active: np.ndarray, rhs_x: np.ndarray, rhs_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Solve the equality-constrained KKT system of the active rows of C.

    ``[[P, C_a'], [C_a, 0]] [u; w_a] = [rhs_x; rhs_y_a]``, through a fresh LDL' (its own
    ordering) of the regularized quasi-definite ``[[P + delta I, C_a'], [C_a, -delta
    I]]`` and iterative refinement against the unregularized system. (Reusing the ADMM
    factor's ordering for this matrix was tried: with delta this small it loses
    several digits more, and refinement then diverges.)

    Args:
        P: ``(n, n)``.  C: ``(m, n)``.  active: ``(m,)`` bool.
        rhs_x: ``(n,)``.  rhs_y: ``(m,)`` (read on the active rows).

    Returns:
        ``u (n,)`` and ``w (m,)`` (zero off the active rows), or None when the
        regularized system cannot be factored or solved.
    """
    rows = np.flatnonzero(active)
    C_a = sp.csr_array(C[rows])
    b_a = rhs_y[rows]
    try:
        factor = KKTFactor(P, C_a, _DELTA, np.full(rows.size, _DELTA), check_inertia=False)
    except SolverError:
        return None
    u = np.zeros(rhs_x.shape[0])
    w_a = np.zeros(rows.size)
    size = 1 + _norm(rhs_x) + _norm(b_a)
    for _ in range(_REFINE_STEPS):
        r_x = rhs_x - (P @ u + C_a.T @ w_a)
        r_y = b_a - C_a @ u
        if max(_norm(r_x), _norm(r_y)) <= _REFINE_TOL * size:
            break
        try:
            du, dw = factor.solve_kkt(r_x[None], r_y[None])
        except SolverError:
            return None
        u, w_a = u + du[0], w_a + dw[0]
    w = np.zeros(C.shape[0])
    w[rows] = w_a
    return u, w
