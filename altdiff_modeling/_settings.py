"""Solver and differentiation settings, parsed from the user's ``solver_args``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._compat import CVXPYLAYERS_RENAMED, DIFFCP_MODES, translate_solver_args, warn_user
from ._errors import InputError

__all__ = ["SolverSettings", "parse_solver_args"]

DiffMode = Literal["reverse", "forward"]
FailurePolicy = Literal["raise", "nan", "warn"]
_MODES = ("reverse", "forward")
_POLICIES = ("raise", "nan", "warn")
BackwardMethod = Literal["auto", "direct", "gmres", "fixed_point"]
_BACKWARD_METHODS = ("auto", "direct", "gmres", "fixed_point")
Backend = Literal["auto", "dense", "sparse"]
_BACKENDS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class SolverSettings:
    """Every knob of the forward solver and of the Alt-Diff backward pass.

    Attributes:
        eps_abs: Absolute tolerance of the primal and dual residuals; None (the
            default) means 1e-6 in float64 and 1e-4 in float32.
        eps_rel: Relative tolerance of the primal and dual residuals; None as above.
        max_iter: Largest number of ADMM iterations.
        rho: Initial ADMM penalty (adapted during the solve when ``adaptive_rho``).
        sigma: Proximal regularization of the x-update; keeps H positive definite for
            LPs and positive semidefinite P.
        alpha: Over-relaxation factor in (0, 2).
        adaptive_rho: Whether rho follows the ratio of primal to dual residuals.
        check_every: Iterations between two checks of the residuals and certificates.
        polish: Whether unfinished instances try to solve the equality-constrained QP
            of their estimated active set exactly (kept only when it meets the
            tolerances): as often as every check where a factorization is cheap
            against an ADMM step, spaced by their cost ratio elsewhere, and always
            after 100, 200, 400, ... iterations and at ``max_iter``.
        interior_point: Whether instances that ADMM has not finished once its iterations
            have cost as much as an interior-point solve would (predicted from the
            solve's measured rates) are solved by a primal-dual interior-point method
            (float64 data, reverse mode; kept only when it meets the tolerances).
        remember_active_sets: Layers only: a layer whose P, A and G are constants keeps
            the active sets of its solved instances (strictly complementary, on a
            well-conditioned KKT system) and solves a later call on them exactly where
            every instance's solution lies on one of them: one product per kept set
            tests them all, and the point found must meet the tolerances. Its backward
            is then that set's exact fixed point of the Alt-Diff recursion. The memory
            spends at most the time it saved plus a twentieth of the solves' time; it
            is off where ``polish`` is or where ``backward_method`` is not ``"auto"``.
            It is the layer's state: its answers differ from the solver's within the
            tolerances, so results depend on the calls a layer has made.
        scaling: Number of Ruiz equilibration passes (0 disables scaling).
        eps_prim_inf: Tolerance of the primal infeasibility certificate.
        eps_dual_inf: Tolerance of the dual infeasibility (unboundedness) certificate.
        warm_start: Start from the previous call's solution when the batch size
            matches (layers only).
        on_failure: What a call does when an instance is not solved: ``"raise"`` a
            `SolverError` (default), return ``"nan"`` rows for those instances
            (their gradients are zero), or ``"warn"`` and return their last iterate.
            The same for a backward pass whose recursion does not converge on an
            instance (``SolveInfo.backward_status``): raise, NaN gradients for it, or
            warn (a `SolverWarning` naming it) and return the last iterate.
        backward_eps: Tolerance of the Alt-Diff recursion (relative change of the
            adjoint, or of the Jacobian in forward mode).
        backward_max_iter: Largest number of Alt-Diff iterations in the backward pass.
        backward_method: How reverse mode solves its linear fixed point: ``"gmres"``
            (Krylov acceleration of the same recursion), ``"direct"`` (one small
            factorization per instance, checked against the recursion and refined by
            GMRES where needed; fast on batches of small problems), ``"auto"`` (the
            default: ``"direct"`` where a cost model favours it, else ``"gmres"``) or
            ``"fixed_point"`` (the plain transposed recursion). Forward mode uses
            GMRES for all but ``"fixed_point"``; sparse data's ``"auto"`` is
            ``"direct"`` (each instance's sparse active-rows system, verified).
        mode: ``"reverse"`` (vector-Jacobian products, the default) or ``"forward"``
            (the Jacobian recursion run in lockstep with ADMM).
        backend: How the data are stored and factored: ``"dense"`` (batched torch
            tensors, Cholesky of H), ``"sparse"`` (values on sparsity patterns, sparse
            LDL' factors of the KKT matrix on the CPU; large sparse problems) or
            ``"auto"`` (the default: a layer's is sparse when its canonical problem is
            large and sparse; `solve_qp`'s is sparse when a matrix is given sparse).
            Both run the same ADMM loop and the same Alt-Diff backward.
        verbose: Log each call's statuses, iterations and times at level INFO on the
            logger ``"altdiff_modeling"`` (a layer's ``verbose=True`` sets it for every
            call).
    """

    eps_abs: float | None = None
    eps_rel: float | None = None
    max_iter: int = 10_000
    rho: float = 0.1
    sigma: float = 1e-6
    alpha: float = 1.6
    adaptive_rho: bool = True
    check_every: int = 10
    scaling: int = 10
    polish: bool = True
    interior_point: bool = True
    remember_active_sets: bool = True
    eps_prim_inf: float = 1e-5
    eps_dual_inf: float = 1e-5
    warm_start: bool = False
    on_failure: FailurePolicy = "raise"
    backward_eps: float = 1e-8
    backward_max_iter: int = 10_000
    backward_method: BackwardMethod = "auto"
    mode: DiffMode = "reverse"
    backend: Backend = "auto"
    verbose: bool = False

    def __post_init__(self) -> None:
        for name in ("eps_abs", "eps_rel", "backward_eps", "eps_prim_inf", "eps_dual_inf"):
            value = getattr(self, name)
            if value is None and name in ("eps_abs", "eps_rel"):
                continue
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise InputError(
                    f"solver_args[{name!r}] must be a finite number >= 0, got {value!r}"
                )
        if self.eps_abs == 0 and self.eps_rel == 0:
            raise InputError("solver_args 'eps_abs' and 'eps_rel' cannot both be 0")
        for name in ("rho", "sigma"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(
                    f"solver_args[{name!r}] must be a finite number > 0, got {value!r}"
                )
        for name in ("max_iter", "backward_max_iter", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"solver_args[{name!r}] must be an integer >= 1, got {value!r}")
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha < 2):
            raise InputError(f"solver_args['alpha'] must lie in (0, 2), got {self.alpha!r}")
        for name in ("adaptive_rho", "warm_start", "polish", "remember_active_sets", "verbose"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(
                    f"solver_args[{name!r}] must be True or False, got {getattr(self, name)!r}"
                )
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, int) or self.scaling < 0:
            raise InputError(
                f"solver_args['scaling'] must be an integer >= 0, got {self.scaling!r}"
            )
        if self.backward_method not in _BACKWARD_METHODS:
            raise InputError(
                f"solver_args['backward_method'] must be one of {_BACKWARD_METHODS}, "
                f"got {self.backward_method!r}"
            )
        if self.on_failure not in _POLICIES:
            raise InputError(
                f"solver_args['on_failure'] must be one of {_POLICIES}, got {self.on_failure!r}"
            )
        if not isinstance(self.backend, str) or self.backend not in _BACKENDS:
            raise InputError(
                f"solver_args['backend'] must be one of {_BACKENDS}, got {self.backend!r}"
            )
        if self.mode not in _MODES:
            raise InputError(
                f"solver_args['mode'] must be one of {_MODES} (or, ignored, one of diffcp's "
                f"modes {DIFFCP_MODES}), got {self.mode!r}"
            )

    def for_dtype(self, dtype: torch.dtype) -> SolverSettings:
        """These settings for a solve in ``dtype``: tolerances below its reach raised to it.

        In float32 the residuals stall near its resolution (1.2e-7 relative), so a
        tolerance below `_TOLERANCE_FLOOR` would end every instance at ``max_iter``;
        it is raised to the floor, with a `SolverWarning`. Such tolerances come, for
        example, from programs written for cvxpylayers, whose solvers compute in
        float64 whatever the inputs. Zero tolerances stay zero.
        """
        floor = _TOLERANCE_FLOOR.get(dtype)
        if floor is None:
            return self
        low = {
            name: value
            for name in ("eps_abs", "eps_rel")
            if (value := getattr(self, name)) is not None and 0 < value < floor
        }
        if not low:
            return self
        given = ", ".join(f"{name}={value:g}" for name, value in low.items())
        warn_user(
            f"solver_args {given} are below what a {str(dtype).removeprefix('torch.')} solve "
            f"can reach; it uses {floor:g} (pass float64 tensors for tighter tolerances)"
        )
        return dataclasses.replace(self, **dict.fromkeys(low, floor))

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        """``(eps_abs, eps_rel)`` for a solve in ``dtype``, resolving the defaults."""
        default = _DEFAULT_EPS.get(dtype, 1e-6)
        eps_abs = default if self.eps_abs is None else self.eps_abs
        eps_rel = default if self.eps_rel is None else self.eps_rel
        return eps_abs, eps_rel


_DEFAULT_EPS = {torch.float64: 1e-6, torch.float32: 1e-4}
# The smallest tolerance a solve in the dtype is given (float32: polishing reaches 1e-6
# on typical layers, ADMM alone stalls a little below it).
_TOLERANCE_FLOOR = {torch.float32: 1e-6}
SUPPORTED_DTYPES = (torch.float32, torch.float64)

_FIELDS = tuple(field.name for field in dataclasses.fields(SolverSettings))


def parse_solver_args(
    solver_args: Mapping[str, Any] | None, base: SolverSettings | None = None
) -> SolverSettings:
    """Return ``base`` (or the defaults) updated with ``solver_args``.

    cvxpylayers' keys are accepted too (`translate_solver_args`): ``eps`` and
    ``max_iters`` are mapped onto ``eps_abs``, ``eps_rel`` and ``max_iter``; the keys of
    its solvers are ignored with a `SolverWarning`.

    Raises:
        InputError: ``solver_args`` is not a mapping, names an unknown key, or holds an
            invalid value.
    """
    base = base if base is not None else SolverSettings()
    if solver_args is None:
        return base
    if not isinstance(solver_args, Mapping):
        raise InputError(f"solver_args must be a dict, got {type(solver_args).__name__}")
    args = translate_solver_args(solver_args)
    unknown = sorted(set(args) - set(_FIELDS))
    if unknown:
        raise InputError(
            f"unknown solver_args key(s) {unknown}; valid keys are {sorted(_FIELDS)}, and "
            "cvxpylayers' keys (eps, max_iters, and its solvers' keys, which are ignored)"
        )
    try:
        return dataclasses.replace(base, **args)
    except InputError as exc:
        renamed = sorted(set(solver_args) & set(CVXPYLAYERS_RENAMED))
        if not renamed:
            raise
        raise InputError(f"{exc} (set by cvxpylayers' key(s) {renamed})") from None
