"""Reverse-mode Alt-Diff on sparse data (see `altdiff_modeling._altdiff`).

The transposed recursion ``w <- M' w + g`` on ``w = (a, c)``::

    t  = H^{-1} (a + C' c)
    a+ = sigma t + g_x
    c+ = (2D - I) r C t + (I - D) c + g_v

reuses the forward solve's KKT factor (one sparse LDL' solve per step and instance),
is accelerated by the same GMRES, started at the recursion's fixed point computed
directly by an active-set KKT solve (see `_kkt_start`), and ends in the same closed
forms, evaluated only on the sparsity patterns of P and C::

    dL/dq = -t                          dL/dP_ij = -(t_i x_j + x_i t_j) / 2
    dL/dC_ij = -y_i t_j + (c - r C t)_i x_j      dL/d[b; h] = (I - D) (2 r C t - c)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._krylov import batched_gmres
from ._settings import SolverSettings
from ._sparse_admm import SparseSolveResult
from ._sparse_kkt import solve_active_kkt
from ._sparse_scaling import SparseQP

__all__ = ["SparseDataGradients", "sparse_reverse_gradients"]


@dataclass
class SparseDataGradients:
    """Gradients of a loss w.r.t. a group's data (scaled units, leading dim B).

    Attributes:
        P: ``(B, E_P)`` on P's pattern (the order of ``P_rows``, ``P_cols``).
        q: ``(B, n)``.  C: ``(B, E_C)`` on C's pattern.  bound: ``(B, m)``.
        iterations: Alt-Diff iterations (GMRES: operator applications).
    """

    P: np.ndarray
    q: np.ndarray
    C: np.ndarray
    bound: np.ndarray
    iterations: int


def _fixed_point(step, state: np.ndarray, settings: SolverSettings, budget: int):
    """Iterate ``state <- step(state)`` until its change is below ``backward_eps``."""
    steps = 0
    for k in range(1, budget + 1):
        new = step(state)
        steps = k
        change = np.linalg.norm(new - state, axis=-1)
        state = new
        if k % settings.check_every == 0 and bool(
            (change <= settings.backward_eps * (1 + np.linalg.norm(state, axis=-1))).all()
        ):
            break
    return state, steps


def _kkt_start(
    qp: SparseQP,
    inactive: np.ndarray,
    r: np.ndarray,
    sigma: float,
    grad_x: np.ndarray,
    grad_y: np.ndarray | None,
    source: np.ndarray,
) -> np.ndarray:
    """A starting point for GMRES: the recursion's fixed point, solved directly.

    With the active rows ``a`` (those where D is 0) fixed, the fixed point of
    ``w = M'w + g`` satisfies ``P t + C_a' mu = g_x``, ``C_a t = grad_y_a`` and
    ``c = r C t - mu`` (``mu`` zero off ``a``), ``a = sigma t + g_x``: one active-set
    KKT solve per instance. GMRES then only checks (and, where the solve was
    inaccurate, corrects) this point against the recursion itself, so the gradient is
    the recursion's limit whatever the start; but it needs one or two applications of
    the recursion instead of as many as ADMM needs iterations, which on long chains of
    constraints are thousands.
    """
    start = source.copy()
    n = qp.n
    for k in range(source.shape[0]):
        rhs_y = np.zeros(qp.m) if grad_y is None else grad_y[k]
        solved = solve_active_kkt(qp.P, qp.C, ~inactive[k], grad_x[k], rhs_y)
        if solved is None:
            continue  # GMRES starts from the source for this instance
        t, mu = solved
        start[k, :n] = sigma * t + grad_x[k]
        start[k, n:] = r * (qp.C @ t) - mu
    return start


def sparse_reverse_gradients(
    qp: SparseQP,
    result: SparseSolveResult,
    P_pattern: tuple[np.ndarray, np.ndarray],
    C_pattern: tuple[np.ndarray, np.ndarray],
    grad_x: np.ndarray,
    grad_y: np.ndarray | None,
    settings: SolverSettings,
) -> SparseDataGradients:
    """Vector-Jacobian product of a group's solution map.

    Args:
        qp: The group's scaled data.
        result: Its forward solve (the factor is reused).
        P_pattern, C_pattern: ``(rows, cols)`` of the patterns of P and C.
        grad_x: ``(B, n)`` cotangent of x (scaled units).
        grad_y: ``(B, m)`` cotangent of ``[lambda; nu]`` (scaled units), or None.
        settings: ``backward_eps``, ``backward_max_iter``, ``backward_method``.

    Returns:
        Gradients w.r.t. the group's data on the patterns.
    """
    C, n_eq, n = qp.C, qp.n_eq, qp.n
    x, y, r, factor = result.x, result.y, result.rho_rows, result.factor
    sigma = settings.sigma
    inactive = y <= 0
    inactive[:, :n_eq] = False
    keep = (~inactive).astype(np.float64)
    g_v = np.zeros_like(y)
    if grad_y is not None:
        g_v = keep * r * grad_y
    bound_from_dual = -g_v

    def adjoint_step(w: np.ndarray) -> np.ndarray:
        a, c = w[:, :n], w[:, n:]
        t = factor.solve(a + (C.T @ c.T).T)
        rCt = r * (C @ t.T).T
        return np.concatenate([sigma * t, np.where(inactive, rCt, c - rCt)], axis=1)

    source = np.concatenate([grad_x, g_v], axis=1)
    state, iterations, solved = source, 0, False
    if settings.backward_method != "fixed_point":
        state = _kkt_start(qp, inactive, r, sigma, grad_x, grad_y, source)

        def operator(w: torch.Tensor) -> torch.Tensor:
            array = w.numpy()
            return torch.from_numpy(array - adjoint_step(array))

        w, iterations, converged = batched_gmres(
            operator,
            torch.from_numpy(source),
            torch.from_numpy(state),
            settings.backward_eps,
            settings.backward_max_iter,
        )
        state, solved = w.numpy(), bool(converged.all())
    if not solved:
        budget = max(settings.backward_max_iter - iterations, 0)
        state, steps = _fixed_point(lambda w: adjoint_step(w) + source, state, settings, budget)
        iterations += steps
    a, c = state[:, :n], state[:, n:]
    t = factor.solve(a + (C.T @ c.T).T)
    rCt = r * (C @ t.T).T
    Pi, Pj = P_pattern
    Ci, Cj = C_pattern
    grad_P = -0.5 * (t[:, Pi] * x[:, Pj] + x[:, Pi] * t[:, Pj])
    grad_C = -y[:, Ci] * t[:, Cj] + (c - rCt)[:, Ci] * x[:, Cj]
    grad_bound = keep * (2 * rCt - c) + bound_from_dual
    return SparseDataGradients(P=grad_P, q=-t, C=grad_C, bound=grad_bound, iterations=iterations)
