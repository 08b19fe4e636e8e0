"""Sparse LDL' factorization of the quasi-definite KKT matrix (the sparse backend).

The x-update of ADMM and every step of the Alt-Diff recursion solve with
``H = P + sigma I + C' diag(r) C``. Forming H would fill in (a dense row of C makes H
dense), so the sparse backend factors OSQP's quasi-definite KKT matrix instead::

    K = [[P + sigma I,  C'          ],
         [C,            -diag(1/r)  ]]

whose solution of ``K [u; w] = [rhs; 0]`` has ``u = H^{-1} rhs``. qdldl computes
``K = L D L'`` after an AMD ordering; the symbolic analysis is done once and only the
values are refactored when r changes. A few long rows of C (longer than
``sqrt(n + m)``: a lasso's data rows, a budget or factor constraint) are set aside and
eliminated last through their dense Schur complement, which is what a fill-reducing
ordering would do but without AMD's cost on such rows (seconds); many quasi-dense rows
go to SuperLU (symmetric ordering, diagonal pivots) instead (`_choose_engine`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import qdldl
import scipy.linalg as sla_dense
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from .._errors import SolverError
from .pinned import PinnedBlockFinder, PinnedBlocks

__all__ = ["ActiveKKT", "KKTFactor", "solve_active_kkt"]

# Regularization of the active-set systems: smaller than OSQP's 1e-6, because the Schur
# complement of a long chain of active rows (an isotonic projection) has eigenvalues far
# below 1e-6, where refinement from a 1e-6 regularization diverges.
_DELTA = 1e-9
_REFINE_STEPS = 10
_REFINE_TOL = 1e-13
# Most long rows set aside for a dense Schur complement (one short solve each per
# factorization, a k x k Cholesky factor).
_MAX_LONG_ROWS = 500
# Fill (nonzeros over rows x columns) above which a block of long-row data is better
# dense: the long rows themselves (kept as a dense array), and `_sparse_complement`'s W
# (which then gives way to one solve per long row).
_DENSE_LONG_FILL = 0.25
# Most sparse products for the Schur complement of sparse long rows (`_sparse_complement`)
# before it falls back to one solve per long row.
_MAX_SCHUR_DEPTH = 8
_NULL_SPACE_ITERATIONS = 3  # of `ActiveKKT.null_space`
_TINY = 1e-300


def _norm(v: np.ndarray) -> float:
    return float(np.abs(v).max()) if v.size else 0.0


_FACTOR_ERROR = (
    "the sparse KKT matrix [[P + sigma*I, C'], [C, -1/rho]] could not be factored "
    "({}); is P positive semidefinite?"
)


class _LDL:
    """qdldl's LDL' of ``[[P + sigma I, C'], [C, -diag(row_diag)]]`` on a fixed pattern:
    the AMD ordering and symbolic analysis on the first factorization, only the values
    afterwards."""

    def __init__(self, P: sp.sparray, C: sp.sparray, check_inertia: bool) -> None:
        n, m = P.shape[0], C.shape[0]
        self.n, self.m = n, m
        P_coo, C_coo = sp.coo_array(P), sp.coo_array(C)
        # P's diagonal is added to the sigma diagonal, so (for P and C without
        # duplicate entries) every entry of the upper triangle appears once and
        # sorting the keys orders them in CSC, three times faster than np.unique.
        off = P_coo.row < P_coo.col
        on = P_coo.row == P_coo.col
        self._P_diag = np.bincount(P_coo.row[on], weights=P_coo.data[on], minlength=n)
        diag_n, diag_m = np.arange(n), np.arange(m)
        rows = np.concatenate([P_coo.row[off], diag_n, C_coo.col, n + diag_m])
        cols = np.concatenate([P_coo.col[off], diag_n, n + C_coo.row, n + diag_m])
        size = n + m
        keys = cols.astype(np.int64) * size + rows
        order = np.argsort(keys)
        ordered = keys[order]
        self._slot = np.empty(keys.size, dtype=np.int64)
        if ordered.size and bool((ordered[1:] == ordered[:-1]).any()):
            ordered, self._slot = np.unique(keys, return_inverse=True)  # duplicates summed
        else:
            self._slot[order] = np.arange(keys.size)
        self._indices = (ordered % size).astype(np.int32)
        counts = np.bincount(ordered // size, minlength=size)
        self._indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        self._P_off, self._C_data = P_coo.data[off], C_coo.data
        self._solver: qdldl.Solver | None = None
        self._check_inertia = check_inertia

    def matrix(self, sigma: float, row_diag: np.ndarray) -> sp.csc_matrix:
        """The upper triangle of the KKT matrix (CSC)."""
        values = np.concatenate([self._P_off, self._P_diag + sigma, self._C_data, -row_diag])
        data = np.bincount(self._slot, weights=values, minlength=self._indices.size)
        size = self.n + self.m
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(size, size))

    def factor(self, sigma: float, row_diag: np.ndarray) -> None:
        K = self.matrix(sigma, row_diag)
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
            raise SolverError(_FACTOR_ERROR.format(exc)) from None

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``(n + m,)`` right-hand side to ``(n + m,)`` solution."""
        assert self._solver is not None
        return self._solver.solve(rhs)

    def factors(self) -> tuple[sp.csr_array, np.ndarray, np.ndarray]:
        """``L`` (strictly lower, ``(n + m, n + m)``), ``D`` ``(n + m,)`` and the
        ordering ``p`` ``(n + m,)`` of the last factorization: ``K[p][:, p] = (I + L) D
        (I + L)'``."""
        assert self._solver is not None
        L, D, p = self._solver.factors()
        return sp.csr_array(L), D, p


class KKTFactor:
    """LDL' factor of ``[[P + sigma I, C'], [C, -diag(row_diag)]]``.

    Three engines (`_choose_engine`): ``"qdldl"`` factors the whole matrix;
    ``"schur"``, for a C with a few long rows (a lasso's data rows, a budget or factor
    constraint over every variable), factors the matrix without those rows with qdldl
    and their ``k x k`` Schur complement densely, which is the elimination order a
    fill-reducing ordering would choose anyway, without the cost of ordering long rows
    (AMD takes seconds on them); ``"splu"`` (SuperLU, symmetric ordering, diagonal
    pivots) serves matrices with too many long rows for a dense complement.

    Args:
        P: ``(n, n)`` symmetric sparse matrix (both triangles stored).
        C: ``(m, n)`` sparse constraint matrix.
        sigma: Regularization added to P's diagonal.
        row_diag: ``(m,)`` positive values; the lower-right block is ``-diag(row_diag)``.
        check_inertia: Check on the first factorization that it has n positive pivots
            (P + sigma I positive definite); the active-set solves skip it.
        engine: ``"qdldl"``, ``"schur"`` or ``"splu"``; None chooses by C's row lengths.

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
        engine: str | None = None,
    ) -> None:
        n, m = P.shape[0], C.shape[0]
        self.n, self.m = n, m
        C = sp.csr_array(C)
        self.engine, long_rows = _choose_engine(np.diff(C.indptr), n + m)
        self.engine = engine or self.engine
        self._check_inertia = check_inertia
        self._lu: sla.SuperLU | None = None
        self._ldl: _LDL | None = None
        self._S: tuple | None = None
        if self.engine == "splu":
            self._splu_pattern = _LDL(P, C, check_inertia=False)
        elif self.engine == "schur":
            self._long = np.flatnonzero(long_rows)
            self._short = np.flatnonzero(~long_rows)
            self._C_long = sp.csr_array(C[self._long])
            self._C_long_t = sp.csr_array(self._C_long.T)
            # Long rows that are mostly filled (a portfolio's factor rows) are kept dense:
            # their products are then BLAS calls, faster than scipy's sparse ones there.
            filled = self._C_long.nnz > _DENSE_LONG_FILL * self._long.size * n
            self._C_long_dense = self._C_long.toarray() if filled else None
            # See `_sparse_complement`; whether it applies depends on the pattern only.
            self._permuted_long_t: sp.csr_array | None = None
            self._complement_by_products = self._C_long_dense is None
            self._ldl = _LDL(P, C[self._short], check_inertia)
        else:
            self._ldl = _LDL(P, C, check_inertia)
        self.sigma = float(sigma)
        self.row_diag = np.asarray(row_diag, dtype=np.float64)
        self.refactor(self.row_diag)

    def refactor(self, row_diag: np.ndarray, sigma: float | None = None) -> None:
        """Refactor with a new lower-right diagonal ``-diag(row_diag)`` ``(m,)`` (and a
        new ``sigma``); the ordering and symbolic analysis are reused."""
        self.sigma = self.sigma if sigma is None else float(sigma)
        self.row_diag = np.asarray(row_diag, dtype=np.float64)
        if self.engine == "splu":
            self._factor_splu(self._splu_pattern.matrix(self.sigma, self.row_diag))
        elif self.engine == "schur":
            self._factor_schur()
        else:
            assert self._ldl is not None
            self._ldl.factor(self.sigma, self.row_diag)

    def _factor_schur(self) -> None:
        """qdldl on the short rows, then the dense Schur complement of the long ones:
        ``S = -diag(row_diag_long) - C_long H_short^{-1} C_long'`` (negative definite
        when the short part is quasi-definite), by one short solve per long row."""
        assert self._ldl is not None
        n, k = self.n, self._long.size
        self._ldl.factor(self.sigma, self.row_diag[self._short])
        minus_S = None  # C_long H_short^{-1} C_long'
        if self._complement_by_products:
            minus_S = self._sparse_complement()
            self._complement_by_products = minus_S is not None
        if minus_S is None:
            rows = self._C_long_dense if self._C_long_dense is not None else self._C_long.toarray()
            rhs = np.zeros(n + self._short.size)
            U = np.empty((k, n))  # H_short^{-1} C_long', by rows
            for i in range(k):
                rhs[:n] = rows[i]
                U[i] = self._ldl.solve(rhs)[:n]
            minus_S = self._long_times(U).T
        minus_S = 0.5 * (minus_S + minus_S.T)
        minus_S[np.diag_indices(k)] += self.row_diag[self._long]
        try:
            self._S = ("cholesky", sla_dense.cho_factor(minus_S, lower=True))
        except np.linalg.LinAlgError:
            if self._check_inertia:
                raise SolverError(
                    "the sparse KKT matrix [[P + sigma*I, C'], [C, -1/rho]] is not "
                    "quasi-definite (its Schur complement on the long rows is not "
                    "negative definite); is P positive semidefinite?"
                ) from None
            self._S = ("lu", sla_dense.lu_factor(minus_S))

    def _sparse_complement(self) -> np.ndarray | None:
        """``C_long H_short^{-1} C_long'`` ``(k, k)`` as ``W' D^{-1} W``, with ``W = (I +
        L)^{-1} p [C_long'; 0]`` from the short factor, for sparse long rows; None where
        W is not found within `_MAX_SCHUR_DEPTH` sparse products.

        L is nilpotent, so ``W = (I - L + L^2 - ...) B`` (``B`` the permuted right-hand
        sides) ends after as many terms as the longest chain of L's elimination below
        B's rows. Where the short rows barely couple the variables (a lasso's two rows
        per weight), that is two or three products with sparse W: 15 to 20 ms against
        about 75 ms for one qdldl solve per long row at 10,000 features.
        """
        assert self._ldl is not None
        L, D, p = self._ldl.factors()
        if self._permuted_long_t is None:  # the ordering is fixed after the first factor
            padding = sp.csr_array((self._short.size, self._long.size))
            stacked = sp.vstack([self._C_long_t, padding], format="csr")
            self._permuted_long_t = sp.csr_array(stacked[p])
        W = change = self._permuted_long_t
        for _ in range(_MAX_SCHUR_DEPTH):
            change = sp.csr_array(L @ change)  # the next term of W = (I - L + L^2 - ...) B
            if change.nnz == 0:
                scaled = W.copy()  # D^{-1} W, scaling each row's entries in place
                scaled.data *= np.repeat(1.0 / D, np.diff(W.indptr))
                return (sp.csr_array(W.T) @ scaled).toarray()
            change = -change
            W = sp.csr_array(W + change)
            if W.nnz > _DENSE_LONG_FILL * W.shape[0] * W.shape[1]:
                return None  # filling in: the solves are cheaper
        return None

    def _long_times(self, V: np.ndarray) -> np.ndarray:
        """``(C_long V')'``: ``(B, n)`` to ``(B, k)``."""
        if self._C_long_dense is not None:
            return V @ self._C_long_dense.T
        return (self._C_long @ V.T).T

    def _long_t_times(self, W: np.ndarray) -> np.ndarray:
        """``(C_long' W')'``: ``(B, k)`` to ``(B, n)``."""
        if self._C_long_dense is not None:
            return W @ self._C_long_dense
        return (self._C_long_t @ W.T).T

    def _solve_schur(self, rhs_x: np.ndarray, rhs_y: np.ndarray | None) -> np.ndarray:
        """Block elimination: a short solve, the long rows' multipliers from the Schur
        complement, a second short solve (``rhs_y`` None: zero)."""
        assert self._ldl is not None and self._S is not None
        n, B = self.n, rhs_x.shape[0]
        short, long = self._short, self._long
        rhs = np.zeros(n + short.size)
        first = np.empty((B, n))
        for k in range(B):
            rhs[:n] = rhs_x[k]
            if rhs_y is not None:
                rhs[n:] = rhs_y[k, short]
            first[k] = self._ldl.solve(rhs)[:n]
        residual = -self._long_times(first)
        if rhs_y is not None:
            residual += rhs_y[:, long]
        kind, S = self._S
        if kind == "cholesky":
            w_long = -sla_dense.cho_solve(S, residual.T).T
        else:
            w_long = -sla_dense.lu_solve(S, residual.T).T
        correction = self._long_t_times(w_long)
        if rhs_y is None:
            out = np.empty((B, n))
            for k in range(B):
                rhs[:n] = rhs_x[k] - correction[k]
                out[k] = self._ldl.solve(rhs)[:n]
            return out
        out = np.empty((B, n + self.m))
        for k in range(B):
            rhs[:n] = rhs_x[k] - correction[k]
            rhs[n:] = rhs_y[k, short]
            second = self._ldl.solve(rhs)
            out[k, :n] = second[:n]
            out[k, n + short] = second[n:]
        out[:, n + long] = w_long
        return out

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
            raise SolverError(_FACTOR_ERROR.format(exc)) from None
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
        if self.engine == "splu":
            assert self._lu is not None
            out = np.ascontiguousarray(self._lu.solve(np.concatenate([rhs_x, rhs_y], 1).T).T)
        elif self.engine == "schur":
            out = self._solve_schur(rhs_x, rhs_y)
        else:
            assert self._ldl is not None
            out = np.empty((rhs_x.shape[0], self.n + self.m))
            for k in range(rhs_x.shape[0]):  # qdldl solves one vector at a time
                out[k] = self._ldl.solve(np.concatenate([rhs_x[k], rhs_y[k]]))
        if not np.isfinite(out).all():
            raise SolverError(
                "the sparse KKT solve returned NaN or Inf values; is P positive semidefinite?"
            )
        return out[:, : self.n], out[:, self.n :]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``H^{-1} rhs`` for ``(B, n)`` right-hand sides, ``H = P + sigma I + C' diag(1 /
        row_diag) C``."""
        if self.engine != "schur":
            u, _ = self.solve_kkt(rhs, np.zeros((rhs.shape[0], self.m)))
            return u
        u = self._solve_schur(rhs, None)
        if not np.isfinite(u).all():
            raise SolverError(
                "the sparse KKT solve returned NaN or Inf values; is P positive semidefinite?"
            )
        return u


def _choose_engine(row_counts: np.ndarray, size: int) -> tuple[str, np.ndarray]:
    """The engine for a C with these row lengths, and which rows are long.

    Rows longer than ``sqrt(size)`` are long. Without any, qdldl factors the whole
    matrix (AMD orders it quickly). With up to ``_MAX_LONG_ROWS`` of them (and at most
    a tenth of the rows), ``"schur"`` sets them aside: AMD would either take seconds
    to order rows just below its own dense threshold (``10 sqrt(size)``, a lasso's data
    rows) or fill every column they touch (a budget row over all variables), while
    their dense complement costs one short solve per long row. Beyond that, rows just
    below AMD's threshold go to SuperLU's minimum-degree ordering and the rest to
    qdldl.
    """
    long_rows = row_counts > np.sqrt(size)
    k = int(long_rows.sum())
    if k == 0:
        return "qdldl", long_rows
    if k <= min(_MAX_LONG_ROWS, max(row_counts.size // 10, 1)):
        return "schur", long_rows
    longest = int(row_counts.max())
    return ("splu" if longest <= 10 * np.sqrt(size) else "qdldl"), long_rows


class ActiveKKT:
    """One instance's equality-constrained KKT system of the active rows of C,
    ``[[P, C_a'], [C_a, 0]]``, reduced and factored once.

    Variables that their own short active rows fix (`altdiff_modeling.linsys.pinned`)
    are eliminated exactly; the remaining variables and rows go through one LDL' (its
    own ordering) of the regularized quasi-definite
    ``[[P + delta I, C_a'], [C_a, -delta I]]``, factored on first use. Its solves
    (`solve`, refined against the unregularized system) and its null-space test
    (`null_space`) share that factor: a backward that solves the system and tests it
    factors it once. (Reusing the ADMM factor's ordering for this matrix was tried:
    with delta this small it loses several digits more, and refinement then diverges.)

    Args:
        P: ``(n, n)``.  C: ``(m, n)``.  active: ``(m,)`` bool.
        finder: The fixing blocks' finder for this C (kept across a polish's rounds or
            a batch's instances), or None for a new one.
        eliminate: Whether to eliminate the pinned variables (else the whole system
            goes through the LDL').
    """

    def __init__(
        self,
        P: sp.sparray,
        C: sp.csr_array,
        active: np.ndarray,
        finder: PinnedBlockFinder | None = None,
        eliminate: bool = True,
    ) -> None:
        self.P, self.C, self.active = P, C, active
        self.reduced = _without_pinned(P, C, active, finder) if eliminate else None
        if self.reduced is None:
            self.free, self.rows = np.arange(C.shape[1]), np.flatnonzero(active)
            self.P_free, self.C_free = P, sp.csr_array(C[self.rows])
        else:
            self.free, self.rows = self.reduced.free_index, self.reduced.kept_rows
            self.P_free, self.C_free = self.reduced.P, self.reduced.C
        self._factor: KKTFactor | None = None
        self._unfactorable = False

    def _factored(self) -> KKTFactor | None:
        """The regularized system's factor (None where it cannot be factored)."""
        if self._factor is None and not self._unfactorable:
            k = self.C_free.shape[0]
            try:
                self._factor = KKTFactor(
                    self.P_free, self.C_free, _DELTA, np.full(k, _DELTA), check_inertia=False
                )
            except SolverError:
                self._unfactorable = True
        return self._factor

    def solve(
        self, rhs_x: np.ndarray, rhs_y: np.ndarray, start: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``[[P, C_a'], [C_a, 0]] [u; w_a] = [rhs_x; rhs_y_a]``.

        Args:
            rhs_x: ``(n,)``.  rhs_y: ``(m,)`` (read on the active rows).
            start: ``(n,)`` where the refinement starts, or None (zero).

        Returns:
            ``u (n,)`` and ``w (m,)`` (zero off the active rows), or None when the
            regularized system cannot be factored or solved.
        """
        P, C, reduced = self.P, self.C, self.reduced
        m, n = C.shape
        u, free_x, free_y = np.zeros(n), rhs_x[self.free], rhs_y[self.rows]
        if reduced is not None:  # the pinned variables' values move to the right side
            u = reduced.pinned.values(rhs_y, n)
            free_x, free_y = free_x - (P @ u)[self.free], free_y - reduced.C_kept @ u
        solved = self._solve_free(free_x, free_y, None if start is None else start[self.free])
        if solved is None:
            return None
        u[self.free] = solved[0]
        w = np.zeros(m)
        w[self.rows] = solved[1]
        if reduced is not None:
            reduced.pinned.multipliers(rhs_x - P @ u - C.T @ w, w)
        return u, w

    def _solve_free(
        self, rhs_x: np.ndarray, rhs_y: np.ndarray, start: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The free variables' system on the kept rows, refined: ``u`` and ``w_a``."""
        factor = self._factored()
        if factor is None:
            return None
        P, C_a = self.P_free, self.C_free
        u = np.zeros(rhs_x.shape[0]) if start is None else start.copy()
        w_a = np.zeros(C_a.shape[0])
        size = 1 + _norm(rhs_x) + _norm(rhs_y)
        for _ in range(_REFINE_STEPS):
            r_x = rhs_x - (P @ u + C_a.T @ w_a)
            r_y = rhs_y - C_a @ u
            if max(_norm(r_x), _norm(r_y)) <= _REFINE_TOL * size:
                break
            try:
                du, dw = factor.solve_kkt(r_x[None], r_y[None])
            except SolverError:
                return None
            u, w_a = u + du[0], w_a + dw[0]
        return u, w_a

    def null_space(self) -> tuple[float, np.ndarray, np.ndarray]:
        """How close the system is to singular.

        Inverse iteration (a few steps, from a fixed start) with the regularized
        factor, whose eigenvalues are the unregularized ones moved by at most delta.
        Returns the smallest eigenvalue modulus it finds relative to the matrix's
        largest entry (inf where the system cannot be factored: no answer), and the
        primal and dual parts ``(n,)``, ``(m,)`` of its unit eigenvector (zero on the
        pinned variables and rows): a solution that is not unique
        (``P v = 0 = C_a v``) has the primal part, dependent active rows the dual part.
        """
        m_all, n_all = self.C.shape
        P, C_a = self.P_free, self.C_free
        n, k = P.shape[0], C_a.shape[0]
        primal, dual = np.zeros(n_all), np.zeros(m_all)
        factor = self._factored() if n + k else None
        if factor is None:
            return math.inf, primal, dual
        scale = max(_norm(sp.csr_array(P).data), _norm(C_a.data), _TINY)
        v = np.sin(np.arange(1, n + k + 1) * 0.7548776662)
        growth = 0.0
        for _ in range(_NULL_SPACE_ITERATIONS):
            v = v / max(float(np.linalg.norm(v)), _TINY)
            try:
                u, w = factor.solve_kkt(v[None, :n], v[None, n:])
            except SolverError:
                return math.inf, primal, dual
            v = np.concatenate([u[0], w[0]])
            growth = float(np.linalg.norm(v))
        primal[self.free] = v[:n] / max(growth, _TINY)
        dual[self.rows] = v[n:] / max(growth, _TINY)
        return 1.0 / (max(growth, _TINY) * scale), primal, dual


def solve_active_kkt(
    P: sp.sparray,
    C: sp.csr_array,
    active: np.ndarray,
    rhs_x: np.ndarray,
    rhs_y: np.ndarray,
    start: np.ndarray | None = None,
    finder: PinnedBlockFinder | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """`ActiveKKT` ``(P, C, active, finder)``'s solve of ``rhs_x``, ``rhs_y`` from
    ``start``: one system solved once."""
    return ActiveKKT(P, C, active, finder).solve(rhs_x, rhs_y, start)


class _Reduced(NamedTuple):
    """The active rows' system without its pinned variables (`_without_pinned`)."""

    pinned: PinnedBlocks
    free_index: np.ndarray  # the free variables
    kept_rows: np.ndarray  # the active rows that pin none
    C_kept: sp.csr_array  # those rows of C
    P: sp.csr_array  # P on the free variables
    C: sp.csr_array  # C_kept on the free variables


def _without_pinned(
    P: sp.sparray, C: sp.csr_array, active: np.ndarray, finder: PinnedBlockFinder | None
) -> _Reduced | None:
    """The active rows' system without the variables that their own short active rows
    fix; None where no variable is fixed, or every one is."""
    n = C.shape[1]
    pinned = (finder or PinnedBlockFinder(C)).find(active)
    if pinned is None or pinned.fixed_variables.size == n:
        return None
    free = np.ones(n, dtype=bool)
    free[pinned.fixed_variables] = False
    kept = active.copy()
    kept[pinned.fixed_rows] = False
    free_index, kept_rows = np.flatnonzero(free), np.flatnonzero(kept)
    P_free = sp.csr_array(sp.csr_array(P)[free_index][:, free_index])
    C_kept = sp.csr_array(C[kept_rows])
    return _Reduced(
        pinned, free_index, kept_rows, C_kept, P_free, sp.csr_array(C_kept[:, free_index])
    )
