"""The torch.autograd.Function of the sparse backend: theta -> (x, y), by sparse ADMM
forward and sparse reverse-mode Alt-Diff backward.

Instances are solved in groups that share P and C: the whole batch when no batched
parameter reaches P or C (one KKT factorization, vector data per instance), otherwise
one group per instance (one factorization each). Inside, everything is float64 numpy;
outputs and gradients come back in the dtype of theta. Gradients w.r.t. the sparse
data live on its sparsity pattern and reach theta through the transposed affine maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ._admm import STATUS_NAMES
from ._function import Solution, SolveInfo, _failures, _masked
from ._settings import SolverSettings
from ._sparse_admm import SparseSolveResult, sparse_admm_solve
from ._sparse_altdiff import sparse_reverse_gradients
from ._sparse_data import SparseParametricQP
from ._sparse_scaling import SparseQP, SparseScaling, sparse_ruiz

__all__ = ["solve_sparse"]


@dataclass
class _Group:
    """One factorization group: instance indices, scaled data, scaling and solve."""

    index: np.ndarray
    scaled: SparseQP
    scaling: SparseScaling
    result: SparseSolveResult


@dataclass
class _Outcome:
    """Per-instance codes in the shape `_failures` reads."""

    status: torch.Tensor


def _indptr(major: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(major, minlength=size))])


class _Patterns:
    """Compressed-storage index arrays of P (CSC) and C (CSR), built once per layer."""

    def __init__(self, sqp: SparseParametricQP) -> None:
        self.P_indptr = _indptr(sqp.P_cols, sqp.n)
        self.C_indptr = _indptr(sqp.C_rows, sqp.m)
        self.sqp = sqp

    def matrices(self, P_vals: np.ndarray, C_vals: np.ndarray) -> tuple[sp.csc_array, sp.csr_array]:
        sqp = self.sqp
        P = sp.csc_array((P_vals, sqp.P_rows, self.P_indptr), shape=(sqp.n, sqp.n))
        C = sp.csr_array((C_vals, sqp.C_cols, self.C_indptr), shape=(sqp.m, sqp.n))
        return P, C


def _patterns(sqp: SparseParametricQP) -> _Patterns:
    cached = getattr(sqp, "_patterns", None)
    if cached is None:
        cached = _Patterns(sqp)
        sqp._patterns = cached  # type: ignore[attr-defined]
    return cached


def _solve_groups(
    sqp: SparseParametricQP,
    theta: np.ndarray,
    shared_matrices: bool,
    settings: SolverSettings,
    dtype: torch.dtype,
    warm: Solution | None,
) -> list[_Group]:
    """Evaluate the data, then scale and solve each group."""
    B = theta.shape[0]
    if B == 0:
        return []
    patterns = _patterns(sqp)
    q_all = sqp.q.evaluate(theta)
    bound_all = sqp.bound.evaluate(theta)
    matrix_theta = theta[:1] if shared_matrices else theta
    P_all = sqp.P.evaluate(matrix_theta)
    C_all = sqp.C.evaluate(matrix_theta)
    indices = [np.arange(B)] if shared_matrices else [np.array([k]) for k in range(B)]
    groups = []
    for g, index in enumerate(indices):
        P, C = patterns.matrices(P_all[g], C_all[g])
        qp = SparseQP(P=P, C=C, q=q_all[index], bound=bound_all[index], n_eq=sqp.n_eq)
        scaling = sparse_ruiz(qp, settings.scaling)
        scaled = scaling.scale(qp)
        start = None
        if warm is not None:
            wx, wz, wy = (t.detach().numpy().astype(np.float64)[index] for t in warm[:3])
            rhos = warm[3].detach().cpu().flatten()
            rho = float(rhos[g]) if rhos.numel() == len(indices) else float(rhos[0])
            start = (*scaling.rescale(wx, wz, wy), rho)
        result = sparse_admm_solve(scaled, scaling, settings, dtype, start)
        groups.append(_Group(index=index, scaled=scaled, scaling=scaling, result=result))
    return groups


def _gather_results(groups: list[_Group], B: int, n: int, m: int):
    x, z, y = np.zeros((B, n)), np.zeros((B, m)), np.zeros((B, m))
    status = np.zeros(B, dtype=np.int64)
    iterations = np.zeros(B, dtype=np.int64)
    primal, dual = np.zeros(B), np.zeros(B)
    rho = np.zeros(len(groups))
    solve_time = 0.0
    for g, group in enumerate(groups):
        r, i = group.result, group.index
        x[i], z[i], y[i] = group.scaling.unscale(r.x, r.z, r.y)
        status[i], iterations[i] = r.status, r.iterations
        primal[i], dual[i] = r.primal_residual, r.dual_residual
        rho[g] = r.rho
        solve_time += r.solve_time
    return x, z, y, status, iterations, primal, dual, rho, solve_time


class _SparseFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        sqp: SparseParametricQP,
        shared_matrices: bool,
        settings: SolverSettings,
        info: SolveInfo,
        holder: list,
        warm: tuple | None,
        theta: torch.Tensor,
    ):
        dtype, device = theta.dtype, theta.device
        theta_np = theta.detach().cpu().numpy().astype(np.float64)
        B = theta_np.shape[0]
        groups = _solve_groups(sqp, theta_np, shared_matrices, settings, dtype, warm)
        x, z, y, status, iterations, primal, dual, rho, solve_time = _gather_results(
            groups, B, sqp.n, sqp.m
        )

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, device=device).to(dtype)

        info.status = [STATUS_NAMES[code] for code in status.tolist()]
        info.iterations = torch.as_tensor(iterations, device=device)
        info.primal_residual = tensor(primal)
        info.dual_residual = tensor(dual)
        info.rho = tensor(rho)
        info.solve_time = solve_time
        x_t, z_t, y_t = tensor(x), tensor(z), tensor(y)
        holder[:] = [Solution(x=x_t, z=z_t, y=y_t, rho=tensor(rho))]
        failed = _failures(_Outcome(status=torch.as_tensor(status)), settings)
        if failed is not None:
            failed = failed.to(device)
            x_t = torch.where(failed[:, None], torch.nan, x_t)
            y_t = torch.where(failed[:, None], torch.nan, y_t)
        ctx.set_materialize_grads(False)
        ctx.sqp, ctx.settings, ctx.info, ctx.groups = sqp, settings, info, groups
        ctx.failed, ctx.B = failed, B
        return x_t, y_t

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor | None, grad_y: torch.Tensor | None):
        none = (None,) * 6
        if not ctx.needs_input_grad[6] or (grad_x is None and grad_y is None):
            return (*none, None)
        sqp: SparseParametricQP = ctx.sqp
        like = grad_x if grad_x is not None else grad_y
        grad_x, grad_y = _masked(grad_x, ctx.failed), _masked(grad_y, ctx.failed)
        B = ctx.B
        gx = np.zeros((B, sqp.n)) if grad_x is None else grad_x.detach().cpu().double().numpy()
        gy = None if grad_y is None else grad_y.detach().cpu().double().numpy()
        grad_theta = np.zeros((B, sqp.theta_size))
        total_iterations = 0
        for group in ctx.groups:
            s, i = group.scaling, group.index
            scaled_gy = None if gy is None else s.E * gy[i] / s.c
            grads = sparse_reverse_gradients(
                group.scaled,
                group.result,
                (sqp.P_rows, sqp.P_cols),
                (sqp.C_rows, sqp.C_cols),
                s.D * gx[i],
                scaled_gy,
                ctx.settings,
            )
            total_iterations += grads.iterations
            D, E, c = s.D, s.E, s.c
            grad_P = c * D[sqp.P_rows] * grads.P * D[sqp.P_cols]
            grad_C = E[sqp.C_rows] * grads.C * D[sqp.C_cols]
            grad_theta[i] = (
                sqp.P.vjp(grad_P)
                + sqp.q.vjp(c * D * grads.q)
                + sqp.C.vjp(grad_C)
                + sqp.bound.vjp(E * grads.bound)
            )
        ctx.info.backward_iterations = total_iterations
        out = torch.as_tensor(grad_theta, device=like.device).to(like.dtype)
        return (*none, out)


def solve_sparse(
    sqp: SparseParametricQP,
    theta: torch.Tensor,
    shared_matrices: bool,
    settings: SolverSettings,
    info: SolveInfo,
    warm: Solution | None = None,
    holder: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve at theta on the sparse backend, differentiable by reverse-mode Alt-Diff.

    Args:
        sqp: The layer's sparse parametric QP.
        theta: ``(B, K)`` parameter vectors (unbatched parameters expanded).
        shared_matrices: Whether P and C are the same for every instance (no batched
            parameter reaches them): then one factorization serves the batch.
        settings: Solver and backward settings.
        info: Filled with the solve's statuses and counts.
        warm: A previous solution (user units) to start from.
        holder: A list that receives this solve's `Solution`.

    Returns:
        ``x`` ``(B, n)`` and the multipliers ``[lambda; nu]`` ``(B, m)``.

    Raises:
        SolverError: An instance was not solved and ``on_failure`` is ``"raise"``, or
            the KKT matrix cannot be factored.
    """
    holder = holder if holder is not None else []
    start = None
    if warm is not None:
        start = (warm.x, warm.z, warm.y, warm.rho)
    return _SparseFunction.apply(sqp, shared_matrices, settings, info, holder, start, theta)
