"""Batched ADMM for ``min 1/2 x'Px + q'x  s.t.  Cx = z,  z in [l, u]``.

The constraints ``Ax = b`` and ``Gx <= h`` are stacked into ``C = [A; G]`` with bound
``[b; h]``: the first ``n_eq`` rows of z are pinned to b, the others are clipped at h.
With relaxation ``alpha = 1`` the iteration is the slack-form ADMM of DESIGN section 3
(``z = h - s``, ``y = [lambda; nu]``); ``alpha > 1`` over-relaxes it as OSQP does. Each
row has its own penalty (equality rows a thousand times stiffer), and rho follows the
ratio of the primal and dual residuals, refactoring H only when it moves by more than
a factor of five.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ._factor import CholeskyFactor
from ._qp import QPData, matvec, rmatvec
from ._settings import SolverSettings

if TYPE_CHECKING:
    from ._altdiff import ForwardTangents

__all__ = ["MAX_ITER", "SOLVED", "STATUS_NAMES", "SolveResult", "admm_solve", "penalty_rows"]

STATUS_NAMES = ("solved", "solved_inaccurate", "max_iter", "primal_infeasible", "dual_infeasible")
SOLVED, SOLVED_INACCURATE, MAX_ITER, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE = range(5)

_EQUALITY_RHO_SCALE = 1e3
_RHO_MIN, _RHO_MAX = 1e-6, 1e6
_RHO_UPDATE_FACTOR = 5.0


@dataclass
class SolveResult:
    """What the forward solve leaves for the caller and for the backward pass.

    Attributes:
        x: ``(B, n)`` primal solution.
        z: ``(B, m)`` projected constraint values ``Cx`` (``[b; h - s]``).
        y: ``(B, m)`` multipliers ``[lambda; nu]``.
        rho_rows: ``(1|B, m)`` per-row penalty of the final iteration.
        factor: Cholesky factor of ``H = P + sigma*I + C' diag(rho_rows) C``.
        status: ``(B,)`` int64 codes into ``STATUS_NAMES``.
        iterations: ``(B,)`` iterations each instance took.
        primal_residual: ``(B,)`` ``||Cx - z||_inf``.
        dual_residual: ``(B,)`` ``||Px + q + C'y||_inf``.
        solve_time: Wall-clock seconds of the solve.
    """

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    rho_rows: torch.Tensor
    factor: CholeskyFactor
    status: torch.Tensor
    iterations: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    solve_time: float


def penalty_rows(rho: torch.Tensor, n_eq: int, m: int) -> torch.Tensor:
    """``(1|B,) -> (1|B, m)``: rho on inequality rows, stiffer on equality rows."""
    scale = torch.ones(m, dtype=rho.dtype, device=rho.device)
    scale[:n_eq] = _EQUALITY_RHO_SCALE
    return rho[:, None] * scale


def build_H(P: torch.Tensor, C: torch.Tensor, rho_rows: torch.Tensor, sigma: float) -> torch.Tensor:
    """``H = P + sigma*I + C' diag(rho_rows) C`` with a leading dimension of 1 or B."""
    n = P.shape[-1]
    eye = torch.eye(n, dtype=P.dtype, device=P.device)
    return P + sigma * eye + C.transpose(-1, -2) @ (rho_rows.unsqueeze(-1) * C)


def project(v: torch.Tensor, bound: torch.Tensor, n_eq: int) -> torch.Tensor:
    """Project ``(B, m)`` onto ``{z : z[:n_eq] = b, z[n_eq:] <= h}``."""
    bound = bound.expand_as(v)
    return torch.cat([bound[:, :n_eq], torch.minimum(v[:, n_eq:], bound[:, n_eq:])], dim=1)


def _inf_norm(v: torch.Tensor) -> torch.Tensor:
    if v.shape[-1] == 0:
        return v.new_zeros(v.shape[:-1])
    return v.abs().amax(dim=-1)


def admm_solve(
    data: QPData, settings: SolverSettings, tangents: ForwardTangents | None = None
) -> SolveResult:
    """Solve a batch of QPs with ADMM; see the module docstring for the iteration.

    Args:
        data: The batch's QP data.
        settings: Tolerances, penalty and iteration limits.
        tangents: Forward-mode Alt-Diff state, advanced in lockstep with the iterates.

    Returns:
        The last iterate of every instance with its status and residuals.
    """
    start = time.perf_counter()
    B, n, n_eq = data.batch_size, data.n, data.n_eq
    P, q, C, bound = data.P, data.q, data.C, data.bound
    m = C.shape[1]
    dtype, device = q.dtype, q.device
    alpha, sigma = settings.alpha, settings.sigma
    per_instance = P.shape[0] > 1 or C.shape[0] > 1

    rho = torch.full((B if per_instance else 1,), settings.rho, dtype=dtype, device=device)
    rho_rows = penalty_rows(rho, n_eq, m)
    factor = CholeskyFactor(build_H(P, C, rho_rows, sigma))

    x = torch.zeros(B, n, dtype=dtype, device=device)
    z = torch.zeros(B, m, dtype=dtype, device=device)
    y = torch.zeros(B, m, dtype=dtype, device=device)
    out_x, out_z, out_y = x.clone(), z.clone(), y.clone()
    done = torch.zeros(B, dtype=torch.bool, device=device)
    iterations = torch.full((B,), settings.max_iter, dtype=torch.int64, device=device)
    prim_res = torch.full((B,), math.inf, dtype=dtype, device=device)
    dual_res = torch.full((B,), math.inf, dtype=dtype, device=device)

    for k in range(1, settings.max_iter + 1):
        rhs = sigma * x - q + rmatvec(C, rho_rows * z - y)
        x_tilde = factor.solve(rhs)
        z_tilde = matvec(C, x_tilde)
        x = alpha * x_tilde + (1 - alpha) * x
        v = alpha * z_tilde + (1 - alpha) * z + y / rho_rows
        if tangents is not None:
            tangents.advance(z, y, x_tilde, v, rho_rows, factor)
        z_next = project(v, bound, n_eq)
        y = rho_rows * (v - z_next)
        z = z_next

        if k % settings.check_every and k != settings.max_iter:
            continue
        Cx, Px, Cty = matvec(C, x), matvec(P, x), rmatvec(C, y)
        prim = _inf_norm(Cx - z)
        dual = _inf_norm(Px + q.expand_as(Px) + Cty)
        prim_scale = torch.maximum(_inf_norm(Cx), _inf_norm(z))
        dual_scale = torch.maximum(torch.maximum(_inf_norm(Px), _inf_norm(Cty)), _inf_norm(q))
        converged = (prim <= settings.eps_abs + settings.eps_rel * prim_scale) & (
            dual <= settings.eps_abs + settings.eps_rel * dual_scale
        )
        newly = converged & ~done
        if bool(newly.any()):
            out_x = torch.where(newly[:, None], x, out_x)
            out_z = torch.where(newly[:, None], z, out_z)
            out_y = torch.where(newly[:, None], y, out_y)
            iterations = torch.where(newly, torch.full_like(iterations, k), iterations)
            prim_res = torch.where(newly, prim, prim_res)
            dual_res = torch.where(newly, dual, dual_res)
            done = done | newly
            if tangents is not None:
                tangents.record(newly)
        if bool(done.all()):
            break
        if settings.adaptive_rho:
            ratio = (prim / prim_scale.clamp_min(1e-30)) / (dual / dual_scale.clamp_min(1e-30))
            proposal = rho * ratio.clamp_min(1e-30).sqrt() if per_instance else None
            if not per_instance:
                active = ratio[~done].clamp_min(1e-30)
                proposal = rho * active.log().mean().exp().sqrt()
            proposal = proposal.clamp(_RHO_MIN, _RHO_MAX)
            moved = (proposal > _RHO_UPDATE_FACTOR * rho) | (proposal < rho / _RHO_UPDATE_FACTOR)
            if per_instance:
                moved = moved & ~done
            if bool(moved.any()):
                rho = torch.where(moved, proposal, rho)
                rho_rows = penalty_rows(rho, n_eq, m)
                factor = CholeskyFactor(build_H(P, C, rho_rows, sigma))

    pending = ~done
    status = torch.full((B,), SOLVED, dtype=torch.int64, device=device)
    if bool(pending.any()):
        out_x = torch.where(pending[:, None], x, out_x)
        out_z = torch.where(pending[:, None], z, out_z)
        out_y = torch.where(pending[:, None], y, out_y)
        prim_res = torch.where(pending, prim, prim_res)
        dual_res = torch.where(pending, dual, dual_res)
        status = torch.where(pending, torch.full_like(status, MAX_ITER), status)
        if tangents is not None:
            tangents.record(pending)

    return SolveResult(
        x=out_x,
        z=out_z,
        y=out_y,
        rho_rows=rho_rows,
        factor=factor,
        status=status,
        iterations=iterations,
        primal_residual=prim_res,
        dual_residual=dual_res,
        solve_time=time.perf_counter() - start,
    )
