"""AltDiffLayer: a CVXPY problem as a differentiable torch module."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from ._backend_choice import BackendChoice
from ._canon import CanonicalForm, dense_qp, reduce_problem
from ._compat import layer_arguments
from ._dtypes import compute_dtype
from ._errors import InputError
from ._fixed_variables import FixedValues, FixedVariables
from ._function import (
    ConstantDataReuse,
    Solution,
    SolveInfo,
    forward_mode_solve,
    solve_forward_mode,
    solve_reverse,
)
from ._log import LOGGER, enable_verbose, log_backward, log_solve
from ._parametric import ParameterSpec, ParametricQP, VariableSpec, parameter_positions
from ._presolve import Presolve
from ._qp import QPData, semidefinite_violations
from ._settings import SolverSettings, parse_solver_args
from ._sparse_data import SparseParametricQP, choose_backend, sparse_pattern, sparse_qp

__all__ = ["AltDiffLayer"]


def _flatten_column_major(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B, *shape) -> (B, size)`` in column-major (CVXPY) order."""
    batch, size = value.shape[0], math.prod(value.shape[1:])  # explicit: B may be 0
    if ndim == 1:
        return value  # (B, size) already: no view for autograd to record
    if ndim == 0:
        return value.reshape(batch, size)
    return value.permute(0, *range(ndim, 0, -1)).reshape(batch, size)


_SIGNS = {
    "nonneg": (lambda v: v >= 0, "nonnegative"),
    "pos": (lambda v: v > 0, "positive"),
    "nonpos": (lambda v: v <= 0, "nonpositive"),
    "neg": (lambda v: v < 0, "negative"),
}


def _concatenated(flats: list[torch.Tensor]) -> torch.Tensor:
    """``(B, K)``: the flattened parameters side by side (a layer of one parameter's
    own tensor, with no node for autograd to record)."""
    return flats[0] if len(flats) == 1 else torch.cat(flats, dim=1)


def _check_declared(spec: ParameterSpec, value: torch.Tensor) -> None:
    """Check a tensor against the sign or definiteness its parameter declares."""
    for attribute in sorted(spec.attributes):
        if attribute in _SIGNS:
            holds, word = _SIGNS[attribute]
            if not bool(holds(value).all()):
                raise InputError(
                    f"{spec.label} is declared {attribute}=True, but its value has "
                    f"entries that are not {word}"
                )
        else:  # PSD or NSD: (n, n) or (B, n, n)
            sign, word = (1.0, "positive") if attribute == "PSD" else (-1.0, "negative")
            bad, smallest = semidefinite_violations(sign * value.reshape(-1, *spec.shape))
            if bad:
                raise InputError(
                    f"{spec.label} is declared {attribute}=True, but its value is not "
                    f"{word} semidefinite (batch indices {bad[:10]}, extreme eigenvalue "
                    f"{sign * smallest:.3g})"
                )


def _unflatten_column_major(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(B, size) -> (B, *shape)``, inverting `_flatten_column_major`."""
    batch = flat.shape[0]
    if len(shape) == 1:
        return flat  # (B, size) already
    if not shape:
        return flat.reshape(batch)
    reversed_shape = tuple(reversed(shape))
    return flat.reshape(batch, *reversed_shape).permute(0, *range(len(shape), 0, -1))


def _gather(spec: VariableSpec, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An output's entries ``(B, size, ...)`` from x ``(B, n, ...)`` or y ``(B, m, ...)``."""
    source, index = (y if spec.is_dual else x), spec.index
    if spec.span is not None:
        # A copy: an output modified in place must not change the solution that the
        # next call may start from.
        values = source[:, spec.span].clone()
    else:
        if (index < 0).any():  # zero entries: gathered from a column of zeros
            zeros = source.new_zeros(source.shape[0], 1, *source.shape[2:])
            index = np.where(index < 0, source.shape[1], index)
            source = torch.cat([source, zeros], dim=1)
        values = source[:, torch.as_tensor(index, device=source.device)]
    return values if spec.sign == 1.0 else spec.sign * values


def _unflatten_pair(
    block: torch.Tensor, out_shape: tuple[int, ...], in_shape: tuple[int, ...]
) -> torch.Tensor:
    """``(B, out_size, in_size) -> (B, *out_shape, *in_shape)``, both column-major."""
    batch = block.shape[0]
    reshaped = block.reshape(batch, *reversed(out_shape), *reversed(in_shape))
    n_out, n_in = len(out_shape), len(in_shape)
    order = [0, *range(n_out, 0, -1), *range(n_out + n_in, n_out, -1)]
    return reshaped.permute(*order)


class AltDiffLayer(torch.nn.Module):
    """A parameterized convex problem as a differentiable layer.

    The problem is canonicalized once, here; each call maps the parameter tensors to
    QP data, solves the batch with ADMM and, on backward, differentiates it with
    Alt-Diff.

    The constructor takes cvxpylayers' ``CvxpyLayer`` arguments, in its order, so that
    a program written for it runs with only the import changed.

    Args:
        problem: A DPP ``cvxpy.Problem`` that CVXPY reduces to a QP with linear
            equality and inequality constraints.
        parameters: Exactly the problem's parameters, in the order the call takes
            their tensors.
        variables: The outputs, in order: variables of the problem, or
            ``constraint.dual_variables[0]`` for a constraint's multipliers (with
            CVXPY's sign conventions), differentiable like the variables.
        solver: Accepted for cvxpylayers' programs and ignored, with a `SolverWarning`:
            the layer always solves with its own ADMM. A mapping in this place is
            taken as ``solver_args``.
        gp: Must be False: geometric programs are not supported.
        verbose: Log each call's statuses, iterations and times (logger
            ``"altdiff_modeling"``, level INFO; shown on stderr where the program has
            not configured logging).
        canon_backend: CVXPY's canonicalization backend (``"CPP"``, ``"SCIPY"``,
            ...; None: CVXPY's default), as in ``Problem.get_problem_data``.
        solver_args: Default settings for every call (see `SolverSettings`; cvxpylayers'
            keys are accepted too). Its ``backend`` picks dense or sparse data
            (``"auto"``: sparse for large sparse problems); see the user guide's page on
            large sparse problems.

    Raises:
        ProblemError: The problem is not supported (``gp=True`` included) or the lists
            do not match it.
        InputError: ``solver_args``, ``gp``, ``verbose`` or ``canon_backend`` is invalid.

    Example:
        >>> layer = AltDiffLayer(problem, parameters=[q, b, h], variables=[x])
        >>> (x_star,) = layer(q_t, b_t, h_t)
    """

    def __init__(
        self,
        problem: cp.Problem,
        parameters: Sequence[cp.Parameter],
        variables: Sequence[cp.Variable],
        solver: Any = None,
        gp: bool = False,
        verbose: bool = False,
        canon_backend: str | None = None,
        solver_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        started = time.perf_counter()
        solver_args = layer_arguments(solver, gp, verbose, solver_args)
        self._form: CanonicalForm = reduce_problem(problem, parameters, variables, canon_backend)
        # Reverse mode solves the problem without what the presolve takes out (bound
        # epigraphs, fixed variables); forward mode's tangents need the whole one.
        self._presolve = Presolve.of(self._form, self._form.variables)
        self._fixed: FixedVariables | None = self._presolve.fixed
        self._solved: CanonicalForm = self._presolve.solved
        # Which parameters (by position) the fixed variables' terms depend on.
        self._fixed_parameters: set[int] = set()
        if self._fixed is not None:
            columns = self._fixed.parameter_columns()
            self._fixed_parameters = parameter_positions(self._form.parameters, columns)
        # The outputs over the solved problem, None where one reads what it took out.
        self._solved_specs = [self._presolve.solved_spec(s) for s in self._form.variables]
        self._settings: SolverSettings = parse_solver_args(solver_args)
        if verbose:
            self._settings = dataclasses.replace(self._settings, verbose=True)
        self._auto_backend = BackendChoice(
            choose_backend(self._solved), sparse_pattern(self._solved)
        )
        self._whole: ParametricQP | None = None
        self._dense: ParametricQP | None = None
        self._sparse: SparseParametricQP | None = None
        # Build the data of the backend the layer's settings select now, so that
        # construction pays for it; the other is built on first use.
        self._dependencies: dict[str, dict[str, set[int]]] = {}
        self._masks: dict[tuple[str, torch.device], torch.Tensor] = {}
        if self._backend(self._settings) == "sparse":
            self._block_dependencies("sparse")
        else:
            self._block_dependencies("dense")
        self._last_solution: Solution | None = None
        self._last_solves: tuple[str, bool] = ("", False)
        # Equilibration and C'SC of constant P, A, G, computed on the first call.
        self._reuse = ConstantDataReuse(across_calls=True)
        if self._settings.verbose:
            enable_verbose()
            LOGGER.info(
                "AltDiffLayer built in %.2f s: %s", time.perf_counter() - started, self.extra_repr()
            )

    @property
    def backend(self) -> str:
        """The backend the layer's own settings select: ``"dense"`` or ``"sparse"``."""
        return self._backend(self._settings)

    def _backend(self, settings: SolverSettings) -> str:
        return self._auto_backend.structural if settings.backend == "auto" else settings.backend

    @property
    def _qp(self) -> ParametricQP:
        """The dense parametric QP that reverse mode solves, built on first use."""
        if self._dense is None:
            self._dense = dense_qp(self._solved)
        return self._dense

    @property
    def _whole_qp(self) -> ParametricQP:
        """The dense parametric QP with every variable (forward mode), built on first use."""
        if not self._presolve.reduces:
            return self._qp
        if self._whole is None:
            self._whole = dense_qp(self._form)
        return self._whole

    @property
    def _sparse_qp(self) -> SparseParametricQP:
        """The sparse parametric QP that reverse mode solves, built on first use."""
        if self._sparse is None:
            self._sparse = sparse_qp(self._solved)
        return self._sparse

    def _parametric_mask(self, backend: str, device: torch.device) -> torch.Tensor:
        """``(n + m,)`` bool: the solved q's entries and rows that depend on a
        parameter (`ParametricQP.parametric_mask`, and those the fixed variables' terms
        reach)."""
        key = (backend, device)
        if key not in self._masks:
            qp = self._sparse_qp if backend == "sparse" else self._qp
            mask = qp.parametric_mask() | self._presolve.touched()
            self._masks[key] = torch.as_tensor(mask, device=device)
        return self._masks[key]

    def _hidden_variables(self, device: torch.device, solved: bool) -> torch.Tensor:
        """``(n,)`` bool: the canonical variables that no primal output reads (CVXPY's
        auxiliary variables), of the solved problem or (``solved=False``) the whole one."""
        key = ("hidden", device, solved)
        if key not in self._masks:
            hidden = self._presolve.hidden
            if solved:
                hidden = hidden[self._presolve.free]
            self._masks[key] = torch.as_tensor(hidden, device=device)
        return self._masks[key]

    def _block_dependencies(self, backend: str) -> dict[str, set[int]]:
        """Which parameters (by position) each data block of a backend depends on."""
        if backend not in self._dependencies:
            qp = self._sparse_qp if backend == "sparse" else self._qp
            self._dependencies[backend] = qp.dependencies()
        return self._dependencies[backend]

    def extra_repr(self) -> str:
        """Sizes of the canonical QP (and how many of its variables the presolve takes
        out: `Presolve`) and the parameter names, for ``print(layer)``."""
        form = self._form
        n_ineq = form.n_rows - form.n_eq
        names = [p.name for p in form.parameters]
        presolve = self._presolve
        removed = ""
        if presolve.epigraphs is not None:
            removed += f"epigraphs={presolve.epigraphs.eliminated.size}, "
        if presolve.fixed is not None:
            removed += f"fixed={presolve.fixed.fixed.size}, "
        if presolve.residuals is not None:
            removed += f"residuals={presolve.residuals.eliminated.size}, "
        return (
            f"n={form.n}, n_eq={form.n_eq}, n_ineq={n_ineq}, {removed}parameters={names}, "
            f"backend={self.backend!r}"
        )

    def _flatten_inputs(self, values: Sequence[Any]) -> tuple[list[torch.Tensor], list[bool], int]:
        """Check a call's tensors and flatten them: ``(B or 1, size)`` each, batched flags, B.

        The messages contain cvxpylayers' phrases for the same faults ("A tensor must be
        provided for each CVXPY parameter", "Invalid parameter shape", "Invalid
        parameter dimensionality", "Inconsistent batch sizes"), so that a program
        matching them still does.
        """
        specs = self._form.parameters
        if len(values) != len(specs):
            raise InputError(
                f"A tensor must be provided for each CVXPY parameter: the layer takes "
                f"{len(specs)} tensor(s), one per parameter {[s.name for s in specs]}, but "
                f"was called with {len(values)}"
            )
        for spec, value in zip(specs, values, strict=True):
            if not isinstance(value, torch.Tensor):
                raise InputError(
                    f"{spec.label} must be given as a torch.Tensor, got {type(value).__name__}"
                )
        dtype = compute_dtype([(s.label, v.dtype) for s, v in zip(specs, values, strict=True)])
        flats, batched, batch_sizes = [], [], {}
        for position, (spec, value) in enumerate(zip(specs, values, strict=True)):
            where = f"{spec.label} (parameters[{position}])" if spec.named else spec.label
            if value.device != values[0].device:
                raise InputError(
                    f"{spec.label} is on {value.device}, but {specs[0].label} is on "
                    f"{values[0].device}; all parameters must be on one device"
                )
            value = value.to(dtype)  # a new tensor where the dtype differs; autograd follows
            shape, ndim = tuple(value.shape), len(spec.shape)
            batched_shape = (
                "(B" + "".join(f", {d}" for d in spec.shape) + ("," if not ndim else "") + ")"
            )
            if shape == spec.shape:
                flats.append(_flatten_column_major(value.unsqueeze(0), ndim))
                batched.append(False)
            elif len(shape) == ndim + 1 and shape[1:] == spec.shape:
                flats.append(_flatten_column_major(value, ndim))
                batched.append(True)
                batch_sizes[spec.name] = shape[0]
            elif len(shape) in (ndim, ndim + 1):
                raise InputError(
                    f"Invalid parameter shape for {where}: expected {spec.shape}, or "
                    f"{batched_shape} with a batch dimension B, got {shape}"
                )
            else:
                raise InputError(
                    f"Invalid parameter dimensionality for {where}: expected {ndim} or "
                    f"{ndim + 1} dimensions (shape {spec.shape}, or {batched_shape} with a batch "
                    f"dimension B), got {len(shape)} (shape {shape})"
                )
            if value.numel() and not bool(torch.isfinite(value).all()):
                raise InputError(f"{spec.label} contains NaN or Inf values")
            _check_declared(spec, value.detach())
        if len(set(batch_sizes.values())) > 1:
            raise InputError(
                f"Inconsistent batch sizes {batch_sizes}: all batched parameters must share one "
                "batch size B (an unbatched parameter is shared by the whole batch)"
            )
        batch = next(iter(batch_sizes.values()), 1)
        return flats, batched, batch

    def forward(
        self,
        *params: torch.Tensor,
        solver_args: Mapping[str, Any] | None = None,
        warm_start: bool | None = None,
        return_info: bool = False,
    ) -> tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, ...], SolveInfo]:
        """Solve the problem at the given parameter values.

        Args:
            *params: One tensor per parameter, shaped like the parameter or with a
                leading batch dimension B; unbatched ones are shared by the batch.
                Their dtypes may differ: the call computes in the widest float dtype
                among them (torch's type promotion; integers alone: the default float
                dtype), and returns its outputs in it.
            solver_args: Settings for this call, overriding the layer's.
            warm_start: Start from the previous call's solution (when the batch size,
                dtype and device match), as cvxpylayers' ``warm_start=True``; None
                leaves it to ``solver_args['warm_start']``.
            return_info: Also return a `SolveInfo`.

        Returns:
            One tensor per variable, shaped like the variable, with a leading batch
            dimension when any parameter had one; with ``return_info``, the pair
            ``(outputs, info)``.

        Raises:
            InputError: Wrong number, shape, dtype or device of tensors, NaN or Inf
                values, inconsistent batch sizes, or invalid ``solver_args``.
            SolverError: An instance was not solved to the requested accuracy.
        """
        started = time.perf_counter()
        settings = parse_solver_args(solver_args, self._settings)
        if warm_start is not None:
            settings = parse_solver_args({"warm_start": warm_start}, settings)
        flats, batched, batch = self._flatten_inputs(params)
        settings = settings.for_dtype(flats[0].dtype)
        any_batched = any(batched)
        info = SolveInfo()
        needs_grad = torch.is_grad_enabled() and any(f.requires_grad for f in flats)
        holder: list[Solution] = []

        backend, kind = self._backend(settings), None
        if settings.backend == "auto" and settings.mode == "forward":
            backend = "dense"  # "auto" never picks a backend that cannot serve the call
        elif (
            settings.backend == "auto"
            and self._auto_backend.timed
            and self._per_instance_matrices(batched, batch)
        ):
            kind = (batch, flats[0].dtype, flats[0].device.type)
            backend = self._auto_backend.pick(kind)
        forward_mode = settings.mode == "forward" and needs_grad
        solves = (backend, forward_mode and self._presolve.reduces)
        warm = self._warm_start(settings, batch, flats[0] if flats else None, solves)
        if backend == "sparse" and settings.mode == "forward" and needs_grad:
            raise InputError(
                "solver_args['mode'] = 'forward' is not supported by the sparse backend; "
                "use mode 'reverse', or backend 'dense' for a small problem"
            )
        if forward_mode:
            theta = _concatenated([f.expand(batch, -1) for f in flats])
            hidden = self._hidden_variables(theta.device, solved=False)
            x, y = solve_forward_mode(self._whole_qp, theta, settings, info, warm, holder, hidden)
            flat_outputs = [_gather(spec, x, y) for spec in self._form.variables]
        else:
            solving = time.perf_counter()
            data, fixed = self._data(backend, flats, batched, batch)
            mask = self._parametric_mask(backend, data.q.device)
            hidden = self._hidden_variables(data.q.device, solved=True)
            x, y = solve_reverse(data, settings, info, warm, holder, self._reuse, mask, hidden)
            flat_outputs = self._solved_outputs(x, y, fixed)
            if kind is not None:
                self._auto_backend.record(kind, backend, time.perf_counter() - solving)
        self._last_solution = holder[0] if holder else None
        self._last_solves = solves

        outputs = []
        for spec, flat in zip(self._form.variables, flat_outputs, strict=True):
            value = _unflatten_column_major(flat, spec.shape)
            outputs.append(value if any_batched else value.squeeze(0))
        outputs = tuple(outputs)
        if settings.verbose:
            enable_verbose()
            log_solve("AltDiffLayer", info, batch, x.dtype, started)
            log_backward("AltDiffLayer", info, outputs, flats)
        return (outputs, info) if return_info else outputs

    def jacobian(
        self, *params: torch.Tensor, solver_args: Mapping[str, Any] | None = None
    ) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Full Jacobians of every output w.r.t. every parameter, by forward-mode Alt-Diff.

        The paper's recursion runs in lockstep with ADMM, its cost growing with the
        number of parameter entries K; use it for few parameters or when the Jacobian
        itself is wanted (a backward pass needs only reverse mode).

        Args:
            *params: As for `forward`.
            solver_args: Settings for this call (``mode`` is ignored).

        Returns:
            ``jac[i][j]``, the Jacobian of output i w.r.t. parameter j, shaped
            ``output_i.shape + parameter_j.shape``, with a leading batch dimension
            when any parameter had one. A symmetric (PSD) parameter Q is read as
            ``(Q + Q') / 2``, so its Jacobian is split evenly between ``Q_ij`` and ``Q_ji``.

        Raises:
            InputError: As for `forward`.
            SolverError: An instance was not solved and ``on_failure`` is ``"raise"``.
        """
        settings = parse_solver_args(solver_args, self._settings)
        if settings.backend == "sparse":
            raise InputError(
                "jacobian() is not supported by the sparse backend (a Jacobian of a large "
                "problem is dense); pass solver_args={'backend': 'dense'} for a small problem"
            )
        flats, batched, batch = self._flatten_inputs(params)
        settings = settings.for_dtype(flats[0].dtype)
        theta = _concatenated([f.expand(batch, -1) for f in flats])
        hidden = self._hidden_variables(theta.device, solved=False)
        solved = forward_mode_solve(self._whole_qp, theta, settings, SolveInfo(), hidden=hidden)
        jacobians = []
        for spec in self._form.variables:
            rows = _gather(spec, solved.jac_x, solved.jac_y)  # (B, size, K)
            per_param = []
            for param in self._form.parameters:
                block = rows[:, :, param.offset : param.offset + param.size]
                jac = _unflatten_pair(block, spec.shape, param.shape)
                per_param.append(jac if any(batched) else jac.squeeze(0))
            jacobians.append(tuple(per_param))
        return tuple(jacobians)

    def _warm_start(
        self,
        settings: SolverSettings,
        batch: int,
        like: torch.Tensor | None,
        solves: tuple[str, bool],
    ) -> Solution | None:
        """The previous call's solution, when warm starts are on and it fits this call
        (``solves``: the same backend's, whose iterates and penalties it holds, of the
        same problem: the presolved one, or in forward mode the whole one)."""
        last = self._last_solution
        if not settings.warm_start or last is None or like is None:
            return None
        if solves != self._last_solves:
            return None
        if last.x.shape[0] != batch or last.x.dtype != like.dtype or last.x.device != like.device:
            return None
        return last

    def _per_instance_matrices(self, batched: list[bool], batch: int) -> bool:
        """Whether a call's P or C depends on a batched parameter (one per instance)."""
        if batch == 1 or not any(batched):
            return False
        positions = {i for i, is_b in enumerate(batched) if is_b}
        dependencies = self._block_dependencies("dense")
        return any(dependencies[name] & positions for name in ("P", "A", "G"))

    def _data(
        self, backend: str, flats: list[torch.Tensor], batched: list[bool], batch: int
    ) -> tuple[QPData, _FixedCall | None]:
        """The solved problem's data, with blocks that depend only on unbatched
        parameters kept shared, and what the fixed variables need of the call (None
        without any)."""
        qp = self._sparse_qp if backend == "sparse" else self._qp
        if not any(batched):
            theta = _concatenated(flats)
            return self._eliminated(qp.data(theta), theta)
        theta = _concatenated([f.expand(batch, -1) for f in flats])
        shared_theta = torch.cat(
            [
                f.new_zeros(1, f.shape[1]) if is_b else f
                for f, is_b in zip(flats, batched, strict=True)
            ],
            dim=1,
        )
        batched_positions = {i for i, is_b in enumerate(batched) if is_b}
        dependencies = self._block_dependencies(backend)
        shared = frozenset(
            name for name, depends in dependencies.items() if not (depends & batched_positions)
        )
        data = qp.data(theta, shared_theta, shared)
        fixed_shared = not (self._fixed_parameters & batched_positions)
        return self._eliminated(data, shared_theta if fixed_shared else theta)

    def _eliminated(self, data: QPData, theta: torch.Tensor) -> tuple[QPData, _FixedCall | None]:
        """``data`` with a call's fixed-variable terms at ``theta`` added
        (`FixedVariables.per_call`)."""
        if self._fixed is None:
            return data, None
        call = _FixedCall(self._fixed, theta)
        if self._fixed.per_call:
            data = self._presolve.reduce(data, call.values())
        return data, call

    def _solved_outputs(
        self, x: torch.Tensor, y: torch.Tensor, fixed: _FixedCall | None
    ) -> list[torch.Tensor]:
        """The outputs ``(B, size)`` from the solved problem's ``x`` and ``y``: read
        there where they can be, from the whole problem's (`Presolve.recover`, once per
        call) where they read what the presolve took out."""
        whole = None
        outputs = []
        for spec, solved in zip(self._form.variables, self._solved_specs, strict=True):
            if solved is not None:
                outputs.append(_gather(solved, x, y))
                continue
            if whole is None:
                whole = self._presolve.recover(x, y, fixed.values if fixed else None)
            outputs.append(_gather(spec, *whole))
        return outputs


@dataclasses.dataclass
class _FixedCall:
    """A call's fixed-variable data (`FixedVariables.values`), formed once, on first use."""

    fixed: FixedVariables
    theta: torch.Tensor
    _values: FixedValues | None = None

    def values(self) -> FixedValues:
        if self._values is None:
            self._values = self.fixed.values(self.theta)
        return self._values
