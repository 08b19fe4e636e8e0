"""torch.autograd.Functions joining the ADMM forward pass and the Alt-Diff backward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ._admm import SOLVED, STATUS_NAMES, SolveResult, admm_solve
from ._altdiff import DataTangents, ForwardTangents, reverse_gradients
from ._errors import SolverError
from ._qp import QPData
from ._settings import SolverSettings

__all__ = ["DataMap", "SolveInfo", "solve_forward_mode", "solve_reverse"]


@dataclass
class SolveInfo:
    """What happened in a solve, per instance of the batch.

    Attributes:
        status: Status name of each instance (``"solved"``, ``"max_iter"``, ...).
        iterations: ``(B,)`` ADMM iterations.
        primal_residual: ``(B,)`` ``||Ax - b, Gx + s - h||_inf``.
        dual_residual: ``(B,)`` ``||Px + q + A'lambda + G'nu||_inf``.
        rho: ``(B,)`` or ``(1,)`` final penalty of the inequality rows.
        solve_time: Seconds spent in the forward solve.
        backward_iterations: Alt-Diff iterations of the last backward pass (0 before).
    """

    status: list[str] = field(default_factory=list)
    iterations: torch.Tensor | None = None
    primal_residual: torch.Tensor | None = None
    dual_residual: torch.Tensor | None = None
    rho: torch.Tensor | None = None
    solve_time: float = 0.0
    backward_iterations: int = 0

    def fill(self, result: SolveResult, n_eq: int) -> None:
        self.status = [STATUS_NAMES[code] for code in result.status.tolist()]
        self.iterations = result.iterations
        self.primal_residual = result.primal_residual
        self.dual_residual = result.dual_residual
        self.rho = result.rho_rows[:, n_eq] if result.rho_rows.shape[1] > n_eq else None
        self.solve_time = result.solve_time


def _check_status(result: SolveResult) -> None:
    failed = torch.nonzero(result.status != SOLVED).flatten().tolist()
    if failed:
        statuses = [STATUS_NAMES[result.status[i]] for i in failed]
        detail = ", ".join(f"{i}: {s}" for i, s in zip(failed[:10], statuses[:10], strict=True))
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise SolverError(
            f"the solver failed on {len(failed)} of {result.status.numel()} instance(s) "
            f"(batch index: status) {detail}{more}; raise solver_args['max_iter'] or "
            "loosen 'eps_abs'/'eps_rel' if the problem is feasible and bounded"
        )


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-instance gradient over the batch where the input was shared."""
    if like.shape[0] == 1 and grad.shape[0] != 1:
        return grad.sum(0, keepdim=True)
    return grad


class _ReverseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, settings: SolverSettings, info: SolveInfo, *blocks: torch.Tensor):
        P, q, A, b, G, h = blocks
        batch = max(block.shape[0] for block in blocks)
        data = QPData(P, q, A, b, G, h, batch_size=batch)
        result = admm_solve(data, settings)
        info.fill(result, data.n_eq)
        _check_status(result)
        ctx.settings, ctx.info, ctx.data, ctx.result = settings, info, data, result
        return result.x, result.y

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor, grad_y: torch.Tensor):
        needs = ctx.needs_input_grad[2:]
        if not any(needs):
            return (None,) * 8
        data: QPData = ctx.data
        grads = reverse_gradients(data, ctx.result, grad_x, grad_y, ctx.settings)
        ctx.info.backward_iterations = grads.iterations
        n_eq = data.n_eq
        per_instance = (
            grads.P,
            grads.q,
            grads.C[:, :n_eq],
            grads.bound[:, :n_eq],
            grads.C[:, n_eq:],
            grads.bound[:, n_eq:],
        )
        out = tuple(
            _reduce_to(grad, block) if need else None
            for grad, block, need in zip(per_instance, data.blocks(), needs, strict=True)
        )
        return (None, None, *out)


def solve_reverse(
    data: QPData, settings: SolverSettings, info: SolveInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve with gradients by reverse-mode Alt-Diff.

    Args:
        data: Blocks with leading dimension 1 or B; autograd tracks them.
        settings: Solver and backward settings.
        info: Filled with the solve's statuses and counts.

    Returns:
        ``x`` ``(B, n)`` and the multipliers ``[lambda; nu]`` ``(B, n_eq + n_ineq)``.

    Raises:
        SolverError: An instance did not reach the requested accuracy.
    """
    return _ReverseFunction.apply(settings, info, *data.blocks())


class DataMap(Protocol):
    """An affine map from a parameter vector theta ``(1|B, K)`` to QP data."""

    def data(self, theta: torch.Tensor) -> QPData:
        """The QP data at theta (no autograd needed)."""

    def tangents(self, dtype: torch.dtype, device: torch.device) -> DataTangents:
        """The map's linear part: one data direction per entry of theta."""


class _ForwardModeFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, settings: SolverSettings, info: SolveInfo, data_map: DataMap, theta: torch.Tensor
    ):
        data = data_map.data(theta)
        tracker = None
        if theta.requires_grad:
            tracker = ForwardTangents(data, data_map.tangents(theta.dtype, theta.device), settings)
        result = admm_solve(data, settings, tracker)
        info.fill(result, data.n_eq)
        _check_status(result)
        if tracker is not None:
            ctx.jac_x = tracker.finish(result)
            ctx.jac_y = tracker.dy
            info.backward_iterations = tracker.iterations
        ctx.theta_batch = theta.shape[0]
        return result.x, result.y

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor, grad_y: torch.Tensor):
        grad = torch.einsum("bn,bnk->bk", grad_x, ctx.jac_x)
        grad = grad + torch.einsum("bm,bmk->bk", grad_y, ctx.jac_y)
        if ctx.theta_batch == 1:
            grad = grad.sum(0, keepdim=True)
        return None, None, None, grad


def solve_forward_mode(
    data_map: DataMap, theta: torch.Tensor, settings: SolverSettings, info: SolveInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve, carrying the Jacobian w.r.t. theta by forward-mode Alt-Diff.

    Args:
        data_map: Maps theta to the QP data.
        theta: ``(1|B, K)`` parameter vector; its gradient is ``J' g``.
        settings: Solver and recursion settings.
        info: Filled with the solve's statuses and counts.

    Returns:
        ``x`` ``(B, n)`` and the multipliers ``(B, n_eq + n_ineq)``.
    """
    return _ForwardModeFunction.apply(settings, info, data_map, theta)
