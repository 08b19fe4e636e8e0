"""ADMM on sparse data: the iteration of `altdiff_modeling._admm` for one group of
instances that share P and C (one KKT factorization), in numpy/scipy.

The same iterates, per-row penalties (equality rows a thousand times stiffer), adaptive
rho (one penalty per group, the geometric mean of the unfinished instances' proposals,
refactoring only when it moves by more than a factor of five), over-relaxation,
residuals and duality gap in the user's units, OSQP's infeasibility certificates and
polishing, as on the dense path; the x-update solves with the quasi-definite KKT matrix
(`altdiff_modeling._sparse_kkt`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ._admm import (
    DUAL_INFEASIBLE,
    MAX_ITER,
    PRIMAL_INFEASIBLE,
    SOLVED,
    SOLVED_INACCURATE,
)
from ._polish import active_set
from ._settings import SolverSettings
from ._sparse_kkt import KKTFactor
from ._sparse_polish import sparse_polish
from ._sparse_scaling import SparseQP, SparseScaling

__all__ = ["SparseSolveResult", "penalty_rows", "sparse_admm_solve"]

_EQUALITY_RHO_SCALE = 1e3
_RHO_MIN, _RHO_MAX = 1e-6, 1e6
_RHO_UPDATE_FACTOR = 5.0
_INACCURATE_FACTOR = 10.0
_TINY = 1e-30
_FIRST_POLISH = 100
# From half the first polish's iteration on, an instance whose active-set estimate
# changed in at most this fraction of the rows since the previous check polishes at
# once (once): an estimate that has stopped moving is no longer improved by iterating
# (a lasso's stays 40 to 90 rows away from the solution's from iteration 20 on, while
# a chain's or an MPC problem's keeps improving).
_SETTLED_ROWS = 0.005


@dataclass
class SparseSolveResult:
    """The forward solve of one group, in the solver's (scaled) units.

    Attributes:
        x: ``(B, n)``.  z: ``(B, m)``.  y: ``(B, m)``.
        rho: Final penalty of the inequality rows.
        rho_rows: ``(m,)`` per-row penalty of the final factor.
        factor: The KKT factor for ``rho_rows``, reused by the backward pass.
        status: ``(B,)`` codes into ``STATUS_NAMES``.
        iterations: ``(B,)``.
        primal_residual, dual_residual: ``(B,)`` in the user's units.
        solve_time: Seconds.
    """

    x: np.ndarray
    z: np.ndarray
    y: np.ndarray
    rho: float
    rho_rows: np.ndarray
    factor: KKTFactor
    status: np.ndarray
    iterations: np.ndarray
    primal_residual: np.ndarray
    dual_residual: np.ndarray
    solve_time: float


def penalty_rows(rho: float, n_eq: int, m: int) -> np.ndarray:
    """``(m,)``: rho on inequality rows, stiffer on equality rows."""
    rows = np.full(m, rho)
    rows[:n_eq] *= _EQUALITY_RHO_SCALE
    return rows


def _inf_norm(v: np.ndarray) -> np.ndarray:
    if v.shape[-1] == 0:
        return np.zeros(v.shape[:-1])
    return np.abs(v).max(axis=-1)


def _mv(M, v: np.ndarray) -> np.ndarray:
    """``M @ v`` for each row of ``v`` ``(B, k)``."""
    return np.asarray((M @ v.T).T)


def _rmv(M, v: np.ndarray) -> np.ndarray:
    """``M' @ v`` for each row of ``v``."""
    return np.asarray((M.T @ v.T).T)


def project(v: np.ndarray, bound: np.ndarray, n_eq: int) -> np.ndarray:
    """Project ``(B, m)`` onto ``{z : z[:n_eq] = b, z[n_eq:] <= h}``."""
    out = np.minimum(v, bound)
    out[:, :n_eq] = bound[:, :n_eq]
    return out


class _Residuals:
    """Residuals, tolerances and certificates of one check, in the user's units."""

    def __init__(
        self, qp: SparseQP, scaling: SparseScaling, settings: SolverSettings, dtype
    ) -> None:
        self.qp, self.s, self.settings = qp, scaling, settings
        self.eps_abs, self.eps_rel = settings.tolerances(dtype)

    def measure(self, x: np.ndarray, z: np.ndarray, y: np.ndarray) -> None:
        qp, s = self.qp, self.s
        Cx_s, Px_s = _mv(qp.C, x), _mv(qp.P, x)
        Cx, z_user = Cx_s / s.E, z / s.E
        Px, Cty, q = Px_s / s.D, _rmv(qp.C, y) / s.D, qp.q / s.D
        self.primal = _inf_norm(Cx - z_user)
        self.dual = _inf_norm(Px + q + Cty) / s.c
        self.primal_scale = np.maximum(_inf_norm(Cx), _inf_norm(z_user))
        dual_scale = np.maximum(np.maximum(_inf_norm(Px), _inf_norm(Cty)), _inf_norm(q))
        self.dual_scale = dual_scale / s.c
        self.primal_tol = self.eps_abs + self.eps_rel * self.primal_scale
        self.dual_tol = self.eps_abs + self.eps_rel * self.dual_scale
        quadratic = (x * Px_s).sum(-1) / s.c
        linear = (qp.q * x).sum(-1) / s.c
        support = (qp.bound * y).sum(-1) / s.c
        self.gap = np.abs(quadratic + linear + support)
        gap_scale = np.maximum(np.maximum(np.abs(quadratic), np.abs(linear)), np.abs(support))
        self.gap_tol = self.eps_abs + self.eps_rel * gap_scale

    def converged(self, factor: float = 1.0) -> np.ndarray:
        return (
            (self.primal <= factor * self.primal_tol)
            & (self.dual <= factor * self.dual_tol)
            & (self.gap <= factor * self.gap_tol)
        )

    def rho_ratio(self) -> np.ndarray:
        primal = self.primal / np.maximum(self.primal_scale, _TINY)
        dual = self.dual / np.maximum(self.dual_scale, _TINY)
        return np.maximum(primal / np.maximum(dual, _TINY), _TINY)

    def primal_infeasible(self, dy: np.ndarray) -> np.ndarray:
        s, n_eq, eps = self.s, self.qp.n_eq, self.settings.eps_prim_inf
        dy = dy.copy()
        dy[:, n_eq:] = np.maximum(dy[:, n_eq:], 0)
        size = _inf_norm(s.E * dy)
        Ct_dy = _inf_norm(_rmv(self.qp.C, dy) / s.D)
        support = (self.qp.bound * dy).sum(-1)
        return (size > _TINY) & (Ct_dy <= eps * size) & (support <= -eps * size)

    def dual_infeasible(self, dx: np.ndarray) -> np.ndarray:
        s, n_eq, eps = self.s, self.qp.n_eq, self.settings.eps_dual_inf
        size = _inf_norm(s.D * dx)
        P_dx = _inf_norm(_mv(self.qp.P, dx) / s.D)
        q_dx = (self.qp.q * dx).sum(-1)
        C_dx = _mv(self.qp.C, dx) / s.E
        eq_ok = _inf_norm(C_dx[:, :n_eq]) <= eps * size
        ineq_ok = (C_dx[:, n_eq:] <= eps * size[:, None]).all(-1)
        c = s.c
        return (
            (size > _TINY) & (P_dx <= c * eps * size) & (q_dx <= -c * eps * size) & eq_ok & ineq_ok
        )


def _try_polish(
    qp: SparseQP,
    residuals: _Residuals,
    x: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    pending: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polish the pending instances; keep a polished point only if it converged."""
    index = np.flatnonzero(pending)
    x_new, z_new, y_new = x.copy(), z.copy(), y.copy()
    ok = np.zeros(pending.shape, dtype=bool)
    for k in index:
        one = SparseQP(P=qp.P, C=qp.C, q=qp.q[k : k + 1], bound=qp.bound[k : k + 1], n_eq=qp.n_eq)
        check = _Residuals(one, residuals.s, residuals.settings, None)
        check.eps_abs, check.eps_rel = residuals.eps_abs, residuals.eps_rel

        def good(x_k, z_k, y_k, check=check) -> bool:
            check.measure(x_k[None], z_k[None], y_k[None])
            return bool(check.converged()[0])

        polished = sparse_polish(qp.P, qp.q[k], qp.C, qp.bound[k], qp.n_eq, z[k], y[k], x[k], good)
        if polished is not None:
            x_new[k], z_new[k], y_new[k] = polished
            ok[k] = True
    residuals.measure(x_new, z_new, y_new)
    accept = ok & residuals.converged()
    x = np.where(accept[:, None], x_new, x)
    z = np.where(accept[:, None], z_new, z)
    y = np.where(accept[:, None], y_new, y)
    residuals.measure(x, z, y)
    return x, z, y


def sparse_admm_solve(
    qp: SparseQP,
    scaling: SparseScaling,
    settings: SolverSettings,
    dtype,
    warm: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None,
) -> SparseSolveResult:
    """Solve a group of (scaled) sparse QPs with ADMM.

    Args:
        qp: The group's data, already scaled by ``scaling``.
        scaling: The scaling, to measure residuals in the user's units.
        settings: Tolerances, penalty and iteration limits.
        dtype: The torch dtype of the call, which sets the default tolerances.
        warm: Starting ``x (B, n)``, ``z (B, m)``, ``y (B, m)`` (scaled) and rho.

    Returns:
        Each instance's final iterate, status and residuals, and the factor.
    """
    start = time.perf_counter()
    B, n, m, n_eq = qp.q.shape[0], qp.n, qp.m, qp.n_eq
    P, C, q, bound = qp.P, qp.C, qp.q, qp.bound
    alpha, sigma = settings.alpha, settings.sigma
    residuals = _Residuals(qp, scaling, settings, dtype)

    rho = settings.rho
    x, z, y = np.zeros((B, n)), np.zeros((B, m)), np.zeros((B, m))
    if warm is not None:
        x, z, y, rho = warm
    rho_rows = penalty_rows(rho, n_eq, m)
    factor = KKTFactor(P, C, sigma, 1.0 / rho_rows)

    out_x, out_z, out_y = x, z, y
    status = np.full(B, MAX_ITER, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    iterations = np.full(B, settings.max_iter, dtype=np.int64)
    out_primal = np.full(B, math.inf)
    out_dual = np.full(B, math.inf)

    first = max(settings.check_every, _FIRST_POLISH // settings.check_every * settings.check_every)
    polish_at = {first * 2**j for j in range(64) if first * 2**j < settings.max_iter}
    early = np.zeros(B, dtype=bool)  # instances that polished early
    estimate: np.ndarray | None = None

    def record(mask: np.ndarray, code: int, k: int) -> None:
        nonlocal out_x, out_z, out_y, status, done, iterations, out_primal, out_dual
        out_x = np.where(mask[:, None], x, out_x)
        out_z = np.where(mask[:, None], z, out_z)
        out_y = np.where(mask[:, None], y, out_y)
        status = np.where(mask, code, status)
        iterations = np.where(mask, k, iterations)
        out_primal = np.where(mask, residuals.primal, out_primal)
        out_dual = np.where(mask, residuals.dual, out_dual)
        done = done | mask

    for k in range(1, settings.max_iter + 1):
        x_before, y_before = x, y
        # OSQP's form of the x-update: K [x~; w] = [sigma x - q; z - y/r] gives
        # H x~ = sigma x - q + C'(r z - y) and C x~ = z + (w - y)/r, so a step needs no
        # product with C or C' besides the solve.
        y_over_rho = y / rho_rows
        shifted = z - y_over_rho
        x_tilde, w = factor.solve_kkt(sigma * x - q, shifted)
        v = alpha * (shifted + w / rho_rows) + (1 - alpha) * z + y_over_rho
        x = alpha * x_tilde + (1 - alpha) * x
        z_next = project(v, bound, n_eq)
        y = rho_rows * (v - z_next)
        z = z_next

        last = k == settings.max_iter
        if k % settings.check_every and not last:
            continue
        residuals.measure(x, z, y)
        record(residuals.converged() & ~done, SOLVED, k)
        if settings.polish and not done.all():
            previous, estimate = estimate, active_set(z, y, bound, n_eq)
            if last or k in polish_at:
                chosen = ~done
            elif previous is not None and first <= 2 * k < 2 * first:
                settled = (estimate != previous).sum(-1) <= _SETTLED_ROWS * m
                chosen = settled & ~done & ~early
                early |= chosen
            else:
                chosen = np.zeros(B, dtype=bool)
            if chosen.any():
                x, z, y = _try_polish(qp, residuals, x, z, y, chosen)
                record(residuals.converged() & ~done, SOLVED, k)
        record(residuals.primal_infeasible(y - y_before) & ~done, PRIMAL_INFEASIBLE, k)
        record(residuals.dual_infeasible(x - x_before) & ~done, DUAL_INFEASIBLE, k)
        if last:
            close = residuals.converged(_INACCURATE_FACTOR)
            pending = ~done
            record(pending & close, SOLVED_INACCURATE, k)
            record(pending & ~close, MAX_ITER, k)
        if done.all():
            break
        if settings.adaptive_rho:
            ratio = residuals.rho_ratio()[~done]
            proposal = rho * math.sqrt(math.exp(float(np.log(ratio).mean())))
            proposal = min(max(proposal, _RHO_MIN), _RHO_MAX)
            if proposal > _RHO_UPDATE_FACTOR * rho or proposal < rho / _RHO_UPDATE_FACTOR:
                rho = proposal
                rho_rows = penalty_rows(rho, n_eq, m)
                factor.refactor(1.0 / rho_rows)

    return SparseSolveResult(
        x=out_x,
        z=out_z,
        y=out_y,
        rho=rho,
        rho_rows=rho_rows,
        factor=factor,
        status=status,
        iterations=iterations,
        primal_residual=out_primal,
        dual_residual=out_dual,
        solve_time=time.perf_counter() - start,
    )
