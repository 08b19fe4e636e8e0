"""torch.autograd.Functions joining the ADMM forward pass and the Alt-Diff backward pass.

Both functions equilibrate the data (Ruiz), solve the scaled problem, and return the
solution in the user's units; their backward passes map cotangents into the scaled
problem and gradients back out through the same diagonal scaling, which is exact
because the solution map does not depend on the scaling.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ._active_sets import ActiveSetMemory, FaceSolution
from ._admm import (
    DUAL_INFEASIBLE,
    PRIMAL_INFEASIBLE,
    SOLVED,
    STATUS_NAMES,
    SolveResult,
    WarmStart,
    admm_solve,
)
from ._altdiff import DataGradients, DataTangents, ForwardTangents, reverse_gradients
from ._batched_sparse import BatchedSparse, SparsePattern
from ._degeneracy import weakly_active
from ._errors import SolverError, SolverWarning
from ._forward_choice import ForwardCosts
from ._qp import Matrix, QPData
from ._scaling import (
    Equilibration,
    Scaling,
    equilibrate,
    ruiz_scaling,
    scale_solution,
    unscale_solution,
)
from ._settings import SolverSettings
from .linsys.factor_cache import FactorCache
from .linsys.systems import penalty_weights

__all__ = ["DataMap", "Solution", "SolveInfo", "solve_forward_mode", "solve_reverse"]


@dataclass
class SolveInfo:
    """What happened in a solve, per instance of the batch.

    Attributes:
        status: Status of each instance: ``"solved"``, ``"solved_inaccurate"``
            (``max_iter`` reached within ten times the tolerances), ``"max_iter"``,
            ``"primal_infeasible"`` or ``"dual_infeasible"`` (unbounded).
        iterations: ``(B,)`` ADMM iterations (0 for a call a layer solved on remembered
            active sets: `SolverSettings.remember_active_sets`).
        primal_residual: ``(B,)`` ``||(Ax - b, Gx + s - h)||_inf``.
        dual_residual: ``(B,)`` ``||Px + q + A'lambda + G'nu||_inf``.
        rho: ``(1,)`` (shared) or ``(B,)`` final penalty of the inequality rows.
        solve_time: Seconds spent in the forward solve.
        backward_iterations: Alt-Diff iterations of the backward pass (forward mode:
            of the Jacobian recursion); 0 until one ran.
        backward_status: Per instance, after a reverse-mode backward pass:
            ``"converged"`` (the recursion's fixed point, to ``backward_eps``),
            ``"degenerate"`` (converged, at a solution where, within the tolerances
            asked for, the derivative may not exist or be unique: a weakly active
            constraint on whose side the gradient depends, or dependent active
            constraints whose multipliers reach the gradients asked for; a
            `SolverWarning` says so, and the gradient is the recursion's limit),
            ``"max_iter"`` (not within ``backward_max_iter``) or ``"singular"`` (a fixed
            point amplified beyond working precision: no derivative); see
            ``on_failure``. Empty until one ran.
    """

    status: list[str] = field(default_factory=list)
    iterations: torch.Tensor | None = None
    primal_residual: torch.Tensor | None = None
    dual_residual: torch.Tensor | None = None
    rho: torch.Tensor | None = None
    solve_time: float = 0.0
    backward_iterations: int = 0
    backward_status: list[str] = field(default_factory=list)

    def _fill(self, result: SolveResult) -> None:
        self.status = [STATUS_NAMES[code] for code in result.status.tolist()]
        self.iterations = result.iterations
        self.primal_residual = result.primal_residual
        self.dual_residual = result.dual_residual
        self.rho = result.rho
        self.solve_time = result.solve_time


@dataclass
class Solution:
    """A solve's outcome in the user's units, kept for warm starts."""

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor

    def to(self, device: torch.device) -> Solution:
        return Solution(*(value.to(device) for value in (self.x, self.z, self.y, self.rho)))


def _failures(result: SolveResult, settings: SolverSettings) -> torch.Tensor | None:
    """Apply the failure policy; return the mask of rows to set to NaN, if any."""
    failed = result.status != SOLVED
    if not bool(failed.any()):
        return None
    indices = torch.nonzero(failed).flatten().tolist()
    names = [STATUS_NAMES[result.status[i]] for i in indices]
    detail = ", ".join(f"{i}: {s}" for i, s in zip(indices[:10], names[:10], strict=True))
    more = f" and {len(indices) - 10} more" if len(indices) > 10 else ""
    message = (
        f"the solver failed on {len(indices)} of {failed.numel()} instance(s) "
        f"(batch index: status) {detail}{more}"
    )
    if settings.on_failure == "raise":
        raise SolverError(
            message + "; for max_iter or solved_inaccurate raise solver_args['max_iter'] or "
            "loosen 'eps_abs'/'eps_rel'; solver_args['on_failure'] = 'nan' or 'warn' "
            "returns the other instances instead of raising"
        )
    if settings.on_failure == "nan":
        return failed
    warnings.warn(message, SolverWarning, stacklevel=4)
    no_solution = (result.status == PRIMAL_INFEASIBLE) | (result.status == DUAL_INFEASIBLE)
    return no_solution if bool(no_solution.any()) else None


class ConstantDataReuse:
    """What depends only on a layer's constant P, A and G, kept across its calls.

    The Ruiz equilibration of P and C, the penalty weights ``C'SC`` of the scaled C
    (see `penalty_weights`), the scaled matrices and their stacked C (for the last cost
    scaling) and the factors of H (a `FactorCache`) each cost about as much as a
    factorization at large n (the stacking as much as a product with C); when the
    matrices are the same tensors as in the previous call (a layer's constant blocks
    are), they are reused. Anything else (a batched or parametric matrix, another
    number of Ruiz passes) recomputes them; another sigma, dtype or device starts a
    new factor cache. ``across_calls``: the object outlives the call (a layer's).
    """

    def __init__(self, across_calls: bool = False) -> None:
        self._key: tuple = ()
        self._equilibration: Equilibration | None = None
        self._weights: torch.Tensor | None = None
        self._factors = FactorCache(across_calls)
        self._scaled: tuple[float, tuple[Matrix, Matrix]] | None = None
        self._backward_seconds: dict[str, tuple[float, int]] = {}
        #: The measured costs of the forward methods (`_forward_choice`), whatever the
        #: matrices: a layer's calls learn which method ends them the sooner.
        self.forward_costs = ForwardCosts() if across_calls else None
        #: The active sets of the solved instances (`_active_sets`), a layer's only.
        self.active_sets = ActiveSetMemory() if across_calls else None

    def _matches(self, data: QPData, settings: SolverSettings) -> bool:
        key = self._key
        return (
            bool(key)
            and (key[0] is _storage(data.P) and key[1] is _storage(data.C))
            and key[2] == settings.scaling
        )

    def equilibration(self, data: QPData, settings: SolverSettings) -> Equilibration:
        shared = data.P.shape[0] == data.C.shape[0] == 1
        constant = not (data.P.requires_grad or data.C.requires_grad)
        if not (shared and constant):
            return equilibrate(data.P, data.C, settings.scaling)
        if not self._matches(data, settings):
            self._key = (_storage(data.P), _storage(data.C), settings.scaling)
            self._equilibration = equilibrate(data.P, data.C, settings.scaling)
            self._weights = None
            self._factors.reset()
            self._scaled = None
            self._backward_seconds = {}
        return self._equilibration

    def backward_seconds(
        self, data: QPData, settings: SolverSettings
    ) -> dict[str, tuple[float, int]] | None:
        """The measured times of the backward methods on these constant matrices (see
        `_altdiff.reverse_gradients`), or None where they are not the cached ones."""
        return self._backward_seconds if self._matches(data, settings) else None

    def scale(self, scaling: Scaling, data: QPData, settings: SolverSettings) -> QPData:
        """``scaling.scale(data)``, with the scaled constant matrices kept for the cost
        scaling they were computed with; call after `equilibration`."""
        if not self._matches(data, settings) or scaling.c.numel() != 1:
            return scaling.scale(data)
        cost = float(scaling.c.flatten()[0])
        if self._scaled is None or self._scaled[0] != cost:
            self._scaled = (cost, scaling.scale_matrices(data))
        return scaling.scale(data, self._scaled[1])

    def weights(
        self, data: QPData, scaled: QPData, settings: SolverSettings
    ) -> torch.Tensor | None:
        """``C'SC`` of the scaled dense C (None for sparse data, whose factors need no
        such product); call after `equilibration` for the same data."""
        if data.sparse:
            return None
        if not self._matches(data, settings):
            return penalty_weights(scaled.C, scaled.n_eq)
        if self._weights is None:
            self._weights = penalty_weights(scaled.C, scaled.n_eq)
        return self._weights

    def factors(self, data: QPData, settings: SolverSettings) -> FactorCache | None:
        """The factors of H for this data's constant matrices and these settings (None
        where the matrices are not the cached ones); call after `equilibration`."""
        if not self._matches(data, settings):
            return None
        key = (settings.sigma, data.q.dtype, data.q.device)
        if self._factors.key != key:
            self._factors.reset(key)
        return self._factors


def _solve(
    data: QPData,
    settings: SolverSettings,
    info: SolveInfo,
    tangents: DataTangents | None = None,
    warm: Solution | None = None,
    reuse: ConstantDataReuse | None = None,
    hidden: torch.Tensor | None = None,
) -> tuple[Scaling, QPData, SolveResult, ForwardTangents | None]:
    reuse = reuse if reuse is not None else ConstantDataReuse()
    scaling = ruiz_scaling(data, settings.scaling, reuse.equilibration(data, settings))
    scaled = reuse.scale(scaling, data, settings)
    weights = reuse.weights(data, scaled, settings)
    tracker = None
    if tangents is not None:
        tracker = ForwardTangents(scaled, _scale_tangents(scaling, tangents, data.n_eq), settings)
    warm_start = None
    if warm is not None:
        x, z, y = scale_solution(scaling, warm.x, warm.z, warm.y)
        warm_start = WarmStart(x=x, z=z, y=y, rho=warm.rho)
    factors = reuse.factors(data, settings)
    result = admm_solve(
        scaled,
        settings,
        scaling,
        tracker,
        warm_start,
        weights,
        factors,
        reuse.forward_costs,
        hidden,
    )
    info._fill(result)
    return scaling, scaled, result, tracker


def _scale_tangents(scaling: Scaling, t: DataTangents, n_eq: int) -> DataTangents:
    D, E, c = scaling.D.unsqueeze(-1), scaling.E.unsqueeze(-1), scaling.c.unsqueeze(-1)
    return DataTangents(
        P=c.unsqueeze(-1) * D.unsqueeze(-2) * t.P * D.unsqueeze(-3),
        q=c * D * t.q,
        C=E.unsqueeze(-2) * t.C * D.unsqueeze(-3),
        bound=E * t.bound,
    )


def _unscale_gradients(scaling: Scaling, data: QPData, g: DataGradients) -> DataGradients:
    """Gradients w.r.t. the user's data from those w.r.t. the scaled data (dense
    matrices, or values on the patterns of `BatchedSparse` ones)."""
    D, E, c = scaling.D, scaling.E, scaling.c

    def matrix(grad: torch.Tensor | None, M: Matrix, row: torch.Tensor, col: torch.Tensor):
        if grad is None:
            return None
        if isinstance(M, BatchedSparse):
            return grad * row[:, M.rows] * col[:, M.cols]
        return row.unsqueeze(-1) * grad * col.unsqueeze(-2)

    return DataGradients(
        P=matrix(g.P, data.P, c * D, D),
        q=c * D * g.q,
        C=matrix(g.C, data.C, E, D),
        bound=E * g.bound,
        iterations=g.iterations,
        converged=g.converged,
        singular=g.singular,
        degenerate=g.degenerate,
    )


def _reduce_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-instance gradient over the batch where the input was shared."""
    if like.shape[0] == 1 and grad.shape[0] != 1:
        return grad.sum(0, keepdim=True)
    return grad


def _outputs(
    scaling: Scaling, result: SolveResult, settings: SolverSettings, holder: list
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``x``, ``y`` in the user's units after the failure policy, and the NaN-row mask."""
    x, z, y = unscale_solution(scaling, result.x, result.z, result.y)
    # Detached: the layer keeps this for warm starts, and must hold neither the output
    # tensor (which autograd is about to give a grad_fn) nor the graph behind it.
    holder[:] = [Solution(x=x.detach(), z=z.detach(), y=y.detach(), rho=result.rho.detach())]
    failed = _failures(result, settings)
    if failed is not None:
        x = torch.where(failed[:, None], torch.nan, x)
        y = torch.where(failed[:, None], torch.nan, y)
    return x, y, failed


def _masked(grad: torch.Tensor | None, failed: torch.Tensor | None) -> torch.Tensor | None:
    if grad is None or failed is None:
        return grad
    return torch.where(failed[:, None], 0.0, grad)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mask broadcast over the trailing dimensions of ``like`` ``(B, ...)``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _backward_failures(
    grads: DataGradients, degenerate: torch.Tensor, settings: SolverSettings, info: SolveInfo
) -> torch.Tensor | None:
    """Record each instance's backward status, warn about the degenerate ones
    (`_degeneracy`: their gradient is the recursion's limit, one of the derivatives that
    exist there) and apply the failure policy to those whose recursion did not reach a
    reliable fixed point. Returns the mask of gradients to set to NaN, if any."""
    converged, singular = grads.converged, grads.singular
    if converged is None:
        return None
    singular = torch.zeros_like(converged) if singular is None else singular
    degenerate = degenerate & converged
    info.backward_status = [
        ("degenerate" if weak else "converged") if ok else ("singular" if bad else "max_iter")
        for ok, bad, weak in zip(
            converged.tolist(), singular.tolist(), degenerate.tolist(), strict=True
        )
    ]
    if bool(degenerate.any()):
        warnings.warn(
            f"the solution is degenerate on {_listed(degenerate, info)}: a weakly active "
            "constraint (its slack and multiplier both within ten times the tolerances) "
            "on whose side the gradient depends, or dependent active constraints whose "
            "multipliers (not unique) reach the gradients asked for. Within the "
            "tolerances asked for, the derivative may not exist or be unique there; the "
            "gradient returned is the Alt-Diff recursion's limit, the derivative of the "
            "piece on which the constraints with positive multipliers stay active",
            SolverWarning,
            stacklevel=3,
        )
    failed = ~converged
    if not bool(failed.any()):
        return None
    message = (
        f"the backward pass has no reliable derivative on {_listed(failed, info)}: the "
        "Alt-Diff recursion did not converge within backward_max_iter = "
        f"{settings.backward_max_iter} (max_iter), or converged to a point amplified "
        "beyond working precision (singular). At such a degenerate point (a solution or "
        "multipliers that are not unique) the derivative may not exist, and the "
        "recursion's iterate can be arbitrarily large"
    )
    if settings.on_failure == "raise":
        raise SolverError(
            message + "; solver_args['on_failure'] = 'warn' returns it anyway, 'nan' "
            "returns NaN gradients for those instances; a tighter forward tolerance "
            "(eps_abs, eps_rel) often moves the iterate away from the degeneracy"
        )
    warnings.warn(message, SolverWarning, stacklevel=3)
    return failed if settings.on_failure == "nan" else None


def _listed(mask: torch.Tensor, info: SolveInfo) -> str:
    """'k of B instance(s) (batch index: status) i: status, ...' for the instances
    ``mask`` ``(B,)`` (the first ten)."""
    indices = torch.nonzero(mask).flatten().tolist()
    shown = ", ".join(f"{i}: {info.backward_status[i]}" for i in indices[:10])
    shown += " ..." if len(indices) > 10 else ""
    return f"{len(indices)} of {mask.numel()} instance(s) (batch index: status) {shown}"


def _storage(M: Matrix) -> torch.Tensor:
    """The tensor that holds a matrix's entries (a `BatchedSparse` one's values)."""
    return M.values if isinstance(M, BatchedSparse) else M


def _assemble(
    blocks: tuple[torch.Tensor, ...],
    layout: tuple[int, SparsePattern | None, SparsePattern | None, tuple[int, ...]],
) -> QPData:
    """`QPData` from the Function's tensors ``(P, q, C, bound)`` and their layout
    ``(n_eq, P's pattern, C's pattern, cone sizes)`` (patterns None for dense matrices)."""
    P, q, C, bound = blocks
    n_eq, P_pattern, C_pattern, cone_sizes = layout
    if P_pattern is not None:
        P = BatchedSparse(P, P_pattern)
    if C_pattern is not None:
        C = BatchedSparse(C, C_pattern)
    sizes = [block.shape[0] for block in blocks]
    batch = 0 if 0 in sizes else max(sizes)  # a leading 1 broadcasts, also to 0
    return QPData(P, q, C, bound, n_eq, batch, cone_sizes)


class _ReverseFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        settings: SolverSettings,
        info: SolveInfo,
        holder: list,
        warm: Solution | None,
        reuse: ConstantDataReuse | None,
        layout: tuple[
            int,
            SparsePattern | None,
            SparsePattern | None,
            tuple[int, ...],
            torch.Tensor | None,
            torch.Tensor | None,
        ],
        *blocks: torch.Tensor,
    ):
        data = _assemble(blocks, layout[:4])
        memory = None if reuse is None else reuse.active_sets
        ctx.set_materialize_grads(False)
        ctx.settings, ctx.info, ctx.data, ctx.device = settings, info, data, data.q.device
        started = time.perf_counter()
        found = None if memory is None else memory.solve(data, settings)
        ctx.face = None if found is None else found.backward
        if found is not None:
            return _from_memory(found, settings, info, holder, started)
        # Sparse factors live on the CPU: a call on another device moves its data there
        # once, and its results back, rather than every solve of every iteration.
        device = data.q.device
        if data.sparse and device.type != "cpu":
            data = data.to(torch.device("cpu"))
            warm = None if warm is None else warm.to(torch.device("cpu"))
        scaling, scaled, result, _ = _solve(
            data, settings, info, warm=warm, reuse=reuse, hidden=layout[5]
        )
        ctx.data, ctx.scaled, ctx.scaling, ctx.result = data, scaled, scaling, result
        ctx.parametric = layout[4]
        ctx.timings = None if reuse is None else reuse.backward_seconds(data, settings)
        x, y, ctx.failed = _outputs(scaling, result, settings, holder)
        if memory is not None:
            memory.observe(data.batch_size, time.perf_counter() - started)
            memory.learn(data, x, y, result.status == SOLVED, settings, layout[4], layout[5])
        if holder:
            holder[0] = holder[0].to(device)
        return x.to(device), y.to(device)

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor | None, grad_y: torch.Tensor | None):
        needs = ctx.needs_input_grad[6:]
        if not any(needs) or (grad_x is None and grad_y is None):
            return (None,) * 10
        if ctx.face is not None:
            return (None,) * 6 + _face_gradients(ctx, needs, grad_x, grad_y)
        s: Scaling = ctx.scaling
        here = ctx.result.x.device
        grad_x = None if grad_x is None else grad_x.to(here)
        grad_y = None if grad_y is None else grad_y.to(here)
        grad_x, grad_y = _masked(grad_x, ctx.failed), _masked(grad_y, ctx.failed)
        x = ctx.result.x
        scaled_gx = s.D * grad_x if grad_x is not None else torch.zeros_like(x)
        scaled_gy = s.E * grad_y / s.c if grad_y is not None else None
        need_P, need_C = needs[0], needs[2]
        result = ctx.result
        # Weakly active rows are those of polyhedral problems (`reverse_gradients`).
        weak = None if ctx.scaled.cones is not None else weakly_active(ctx.scaled, s, result)
        # The entries of q and the rows whose gradients reach what is asked for.
        live_q = torch.full_like(x[:1], needs[1], dtype=torch.bool)
        rows = torch.full_like(result.y[:1], need_C or needs[3], dtype=torch.bool)
        if ctx.parametric is not None:
            parametric = ctx.parametric.to(rows.device)
            live_q = live_q & parametric[: x.shape[1]]
            rows = rows & parametric[x.shape[1] :]
        if grad_y is not None:
            rows = rows | (grad_y != 0)
        grads = reverse_gradients(
            ctx.scaled,
            result,
            scaled_gx,
            scaled_gy,
            ctx.settings,
            need_P,
            need_C,
            timings=ctx.timings,
            multiplier_rows=rows,
            weak=weak,
            live_q=live_q,
        )
        grads = _unscale_gradients(s, ctx.data, grads)
        ctx.info.backward_iterations = grads.iterations
        data = ctx.data
        per_instance = (grads.P, grads.q, grads.C, grads.bound)
        degenerate = grads.degenerate
        if degenerate is None:
            degenerate = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if ctx.failed is not None:  # unsolved instances have no solution to judge
            degenerate = degenerate & ~ctx.failed
        unsolved = _backward_failures(grads, degenerate, ctx.settings, ctx.info)
        if unsolved is not None:  # on_failure = "nan": those instances' gradients
            per_instance = tuple(
                None if grad is None else grad.masked_fill(_rows(unsolved, grad), torch.nan)
                for grad in per_instance
            )
        out = tuple(
            _reduce_to(grad, _storage(block)).to(ctx.device) if need else None
            for grad, block, need in zip(per_instance, data.blocks(), needs, strict=True)
        )
        return (None,) * 6 + out


def _from_memory(
    found: FaceSolution, settings: SolverSettings, info: SolveInfo, holder: list, started: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A call solved from the layer's active-set memory: its outputs and its info."""
    x, y = found.x, found.y
    B = x.shape[0]
    info.status = [STATUS_NAMES[SOLVED]] * B
    info.iterations = torch.zeros(B, dtype=torch.int64, device=x.device)
    info.primal_residual, info.dual_residual = found.primal_residual, found.dual_residual
    info.rho = torch.full((1,), settings.rho, dtype=x.dtype, device=x.device)
    info.solve_time = time.perf_counter() - started
    holder[:] = [Solution(x=x.detach(), z=found.Cx.detach(), y=y.detach(), rho=info.rho)]
    return x, y


def _face_gradients(
    ctx: Any, needs: tuple[bool, ...], grad_x: torch.Tensor | None, grad_y: torch.Tensor | None
) -> tuple[torch.Tensor | None, ...]:
    """The gradients ``(P, q, C, bound)`` of a call solved from the active-set memory
    (P and C are constants there): the fixed point ``T_a' g`` of each instance's set."""
    grad_q, grad_bound = ctx.face.gradients(grad_x, grad_y)  # a `FaceMaps`
    B = grad_q.shape[0]
    ctx.info.backward_iterations = 0
    ctx.info.backward_status = ["converged"] * B
    data = ctx.data
    return (
        None,
        _reduce_to(grad_q, data.q) if needs[1] else None,
        None,
        _reduce_to(grad_bound, data.bound) if needs[3] else None,
    )


def solve_reverse(
    data: QPData,
    settings: SolverSettings,
    info: SolveInfo,
    warm: Solution | None = None,
    holder: list | None = None,
    reuse: ConstantDataReuse | None = None,
    parametric: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve with gradients by reverse-mode Alt-Diff.

    Args:
        data: Blocks with leading dimension 1 or B, dense or `BatchedSparse`; autograd
            tracks them (a `BatchedSparse` matrix through its values).
        settings: Solver and backward settings.
        info: Filled with the solve's statuses and counts.
        warm: A previous solution to start from.
        holder: A list that receives this solve's `Solution`.
        reuse: A layer's cache of what depends only on its constant matrices.
        parametric: ``(n + n_eq + n_ineq,)`` bool, a layer's entries of q, then rows of C
            or of the bound, that depend on a parameter (the others' gradients reach no
            parameter), or None (all of them).
        hidden: ``(n,)`` bool, a layer's variables that no output reads (CVXPY's
            auxiliary variables), which the solver may pin where they are free
            (`_free_variables`); None: every variable is read.

    Returns:
        ``x`` ``(B, n)`` and the multipliers ``[lambda; nu]`` ``(B, n_eq + n_ineq)``.

    Raises:
        SolverError: An instance was not solved and ``on_failure`` is ``"raise"``.
    """
    holder = holder if holder is not None else []
    if data.batch_size == 0:  # nothing to solve: empty outputs, in the graph all the same
        return data.q.expand(0, -1) * 0.0, data.bound.expand(0, -1) * 0.0
    P, C = data.P, data.C
    layout = (
        data.n_eq,
        P.pattern if isinstance(P, BatchedSparse) else None,
        C.pattern if isinstance(C, BatchedSparse) else None,
        data.cone_sizes,
        parametric,
        hidden,
    )
    blocks = (_storage(P), data.q, _storage(C), data.bound)
    return _ReverseFunction.apply(settings, info, holder, warm, reuse, layout, *blocks)


class DataMap(Protocol):
    """An affine map from a parameter vector theta ``(1|B, K)`` to QP data."""

    def data(self, theta: torch.Tensor) -> QPData:
        """The QP data at theta (no autograd needed)."""

    def tangents(self, dtype: torch.dtype, device: torch.device) -> DataTangents:
        """The map's linear part: one data direction per entry of theta."""


@dataclass
class ForwardModeResult:
    """A solve with its Jacobians w.r.t. theta, in the user's units.

    Attributes:
        x: ``(B, n)``; y: ``(B, m)`` multipliers ``[lambda; nu]`` (NaN rows for
            instances the failure policy blanked).
        jac_x: ``(B, n, K)``; jac_y: ``(B, m, K)``.
        failed: ``(B,)`` mask of NaN rows, or None.
    """

    x: torch.Tensor
    y: torch.Tensor
    jac_x: torch.Tensor
    jac_y: torch.Tensor
    failed: torch.Tensor | None


def forward_mode_solve(
    data_map: DataMap,
    theta: torch.Tensor,
    settings: SolverSettings,
    info: SolveInfo,
    warm: Solution | None = None,
    holder: list | None = None,
    hidden: torch.Tensor | None = None,
) -> ForwardModeResult:
    """Solve at theta and carry ``d(x, y)/d(theta)`` by forward-mode Alt-Diff.

    The paper's recursion runs in lockstep with ADMM, then continues at the fixed point
    until it settles (``backward_eps``, ``backward_max_iter``).

    Args:
        data_map: Maps theta ``(1|B, K)`` to the QP data.
        theta: ``(1|B, K)``; not differentiated here.
        settings: Solver and recursion settings.
        info: Filled with the solve's statuses and counts.
        warm: A previous solution to start from.
        holder: A list that receives this solve's `Solution`.
        hidden: ``(n,)`` bool, the variables no output reads (`solve_reverse`).

    Raises:
        SolverError: An instance was not solved and ``on_failure`` is ``"raise"``.
    """
    theta = theta.detach()
    data = data_map.data(theta)
    tangents = data_map.tangents(theta.dtype, theta.device)
    scaling, _, result, tracker = _solve(data, settings, info, tangents, warm, hidden=hidden)
    x, y, failed = _outputs(scaling, result, settings, holder if holder is not None else [])
    jac_x = scaling.D.unsqueeze(-1) * tracker.finish(result)
    jac_y = (scaling.E / scaling.c).unsqueeze(-1) * tracker.dy
    info.backward_iterations = tracker.iterations
    return ForwardModeResult(x=x, y=y, jac_x=jac_x, jac_y=jac_y, failed=failed)


class _ForwardModeFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        settings: SolverSettings,
        info: SolveInfo,
        holder: list,
        warm: Solution | None,
        data_map: DataMap,
        theta: torch.Tensor,
        hidden: torch.Tensor | None,
    ):
        solved = forward_mode_solve(data_map, theta, settings, info, warm, holder, hidden)
        ctx.set_materialize_grads(False)
        ctx.jac_x, ctx.jac_y, ctx.failed = solved.jac_x, solved.jac_y, solved.failed
        ctx.theta_batch = theta.shape[0]
        return solved.x, solved.y

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor | None, grad_y: torch.Tensor | None):
        grad_x, grad_y = _masked(grad_x, ctx.failed), _masked(grad_y, ctx.failed)
        grad = 0
        if grad_x is not None:
            grad = grad + torch.einsum("bn,bnk->bk", grad_x, ctx.jac_x)
        if grad_y is not None:
            grad = grad + torch.einsum("bm,bmk->bk", grad_y, ctx.jac_y)
        if ctx.theta_batch == 1 and isinstance(grad, torch.Tensor):
            grad = grad.sum(0, keepdim=True)
        grad = grad if isinstance(grad, torch.Tensor) else None
        return None, None, None, None, None, grad, None


def solve_forward_mode(
    data_map: DataMap,
    theta: torch.Tensor,
    settings: SolverSettings,
    info: SolveInfo,
    warm: Solution | None = None,
    holder: list | None = None,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve, carrying the Jacobian w.r.t. theta by forward-mode Alt-Diff.

    Args:
        data_map: Maps theta to the QP data.
        theta: ``(1|B, K)`` parameter vector; its gradient is ``J' g``.
        settings: Solver and recursion settings.
        info: Filled with the solve's statuses and counts.
        warm: A previous solution to start from.
        holder: A list that receives this solve's `Solution`.
        hidden: ``(n,)`` bool, the variables no output reads (`solve_reverse`).

    Returns:
        ``x`` ``(B, n)`` and the multipliers ``(B, n_eq + n_ineq)``.
    """
    holder = holder if holder is not None else []
    return _ForwardModeFunction.apply(settings, info, holder, warm, data_map, theta, hidden)
