"""cvxpylayers 1.2 compatibility: its ``solver_args`` keys and constructor arguments.

cvxpylayers passes ``solver_args`` on to its solver: diffcp (its default), which reads a
few keys and hands the rest to SCS (or to ECOS or Clarabel with ``solve_method``), or
the Moreau, MPAX and CuClarabel backends. A program written for it therefore uses those
solvers' keys. Here each key is mapped onto this library's settings where it means the
same thing, accepted with a `SolverWarning` where only those solvers read it, and left
to `parse_solver_args` (an `InputError` for a key neither library knows) otherwise.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from ._errors import InputError, ProblemError, SolverWarning

__all__ = [
    "CVXPYLAYERS_RENAMED",
    "CVXPYLAYERS_SOLVER_KEYS",
    "DIFFCP_MODES",
    "layer_arguments",
    "translate_solver_args",
    "warn_user",
]

# cvxpylayers key -> the settings it sets here (the same quantity, another name).
CVXPYLAYERS_RENAMED: dict[str, tuple[str, ...]] = {
    "eps": ("eps_abs", "eps_rel"),  # SCS through diffcp: both tolerances at once
    "max_iters": ("max_iter",),  # SCS and ECOS
}

# Keys that only cvxpylayers' solvers read, by the solver that reads them. Keys these
# solvers share with this library under the same meaning (``eps_abs``, ``eps_rel``,
# ``max_iter``, ``alpha``, ``verbose``) are this library's settings instead.
CVXPYLAYERS_SOLVER_KEYS: dict[str, tuple[str, ...]] = {
    "diffcp": ("n_jobs_forward", "n_jobs_backward", "solve_method", "derivative_kwargs"),
    "SCS": (
        "normalize",
        "scale",
        "adaptive_scale",
        "rho_x",
        "eps_infeas",
        "time_limit_secs",
        "acceleration_lookback",
        "acceleration_interval",
        "write_data_filename",
        "log_csv_filename",
        "linear_solver",
    ),
    "ECOS": (
        "feastol",
        "abstol",
        "reltol",
        "feastol_inacc",
        "abstol_inacc",
        "reltol_inacc",
        "nitref",
    ),
    "Clarabel": (
        "time_limit",
        "max_step_fraction",
        "tol_gap_abs",
        "tol_gap_rel",
        "tol_feas",
        "tol_infeas_abs",
        "tol_infeas_rel",
        "tol_ktratio",
        "reduced_tol_gap_abs",
        "reduced_tol_gap_rel",
        "reduced_tol_feas",
        "reduced_tol_infeas_abs",
        "reduced_tol_infeas_rel",
        "reduced_tol_ktratio",
        "equilibrate_enable",
        "equilibrate_max_iter",
        "equilibrate_min_scaling",
        "equilibrate_max_scaling",
        "linesearch_backtrack_step",
        "min_switch_step_length",
        "min_terminate_step_length",
        "max_threads",
        "direct_kkt_solver",
        "direct_solve_method",
        "static_regularization_enable",
        "static_regularization_constant",
        "static_regularization_proportional",
        "dynamic_regularization_enable",
        "dynamic_regularization_eps",
        "dynamic_regularization_delta",
        "iterative_refinement_enable",
        "iterative_refinement_reltol",
        "iterative_refinement_abstol",
        "iterative_refinement_max_iter",
        "iterative_refinement_stop_ratio",
        "presolve_enable",
        "input_sparse_dropzeros",
        "chordal_decomposition_enable",
        "chordal_decomposition_merge_method",
        "chordal_decomposition_compact",
        "chordal_decomposition_complete_dual",
        "pardiso_iparm",
        "pardiso_verbose",
    ),
    "Moreau": ("ipm_settings",),
    "MPAX": ("algorithm", "initial_primal_solution", "initial_dual_solution"),
    "CuClarabel": ("device",),
}

# diffcp's differentiation modes, passed as solver_args["mode"]; this library's own
# ``mode`` values are "reverse" and "forward".
DIFFCP_MODES = ("lsqr", "lsmr", "dense", "lpgd", "lpgd_right", "lpgd_left")

_SOLVER_ONLY = frozenset(key for keys in CVXPYLAYERS_SOLVER_KEYS.values() for key in keys)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def translate_solver_args(solver_args: Mapping[str, Any]) -> dict[str, Any]:
    """Map cvxpylayers' ``solver_args`` keys onto this library's; warn about the others.

    Keys of this library pass unchanged, ``eps`` sets ``eps_abs`` and ``eps_rel``,
    ``max_iters`` sets ``max_iter``; keys that only cvxpylayers' solvers read (and a
    diffcp ``mode``) are dropped with one `SolverWarning` that lists them. Unknown keys
    pass on, for `parse_solver_args` to reject. The argument is not modified.

    Raises:
        InputError: A cvxpylayers key and this library's name for it are both given,
            with different values.
    """
    translated: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in solver_args.items():
        if key in CVXPYLAYERS_RENAMED:
            continue
        if key in _SOLVER_ONLY or (key == "mode" and value in DIFFCP_MODES):
            ignored.append(f"{key}={value!r}" if key == "mode" else key)
        else:
            translated[key] = value
    for key, targets in CVXPYLAYERS_RENAMED.items():
        if key not in solver_args:
            continue
        value = solver_args[key]
        for target in targets:
            if target in translated and translated[target] != value:
                raise InputError(
                    f"solver_args gives both {key!r} = {value!r} (cvxpylayers' name, which sets "
                    f"{' and '.join(map(repr, targets))}) and {target!r} = "
                    f"{translated[target]!r}; give one of them"
                )
            translated[target] = value
    if ignored:
        warn_user(
            f"solver_args {ignored} only mean something to cvxpylayers' solvers (diffcp, SCS, "
            "ECOS, Clarabel, Moreau, MPAX) and are ignored: altdiff-modeling solves with its "
            "own batched ADMM (its settings: eps_abs, eps_rel, max_iter, ...; see SolverSettings)"
        )
    return translated


def warn_user(message: str) -> None:
    """Issue a `SolverWarning` attributed to the first caller outside this package and torch.

    The user's line is reached from a layer's call through ``nn.Module.__call__``, from
    its construction directly: the depth differs, so it is found rather than fixed.
    """
    # stacklevel=2 names the caller of this function; count up from there.
    level, frame = 2, sys._getframe(1)
    torch_nn = os.path.join("torch", "nn", "modules")
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or torch_nn in frame.f_code.co_filename
    ):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, SolverWarning, stacklevel=level)


def layer_arguments(
    solver: Any, gp: Any, verbose: Any, solver_args: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """Check cvxpylayers' constructor arguments; return the layer's ``solver_args``.

    ``CvxpyLayer(problem, parameters, variables, solver, gp, verbose, canon_backend,
    solver_args)`` is the order accepted; a mapping in ``solver``'s place (the fourth
    positional argument) is taken as ``solver_args``, as this library's constructor
    had it there.

    Raises:
        ProblemError: ``gp=True``: geometric programs are not supported.
        InputError: ``gp`` or ``verbose`` is not a bool, or ``solver_args`` is given
            both positionally and by keyword.
    """
    if isinstance(solver, Mapping):
        if solver_args is not None:
            raise InputError(
                "solver_args was given twice: as the fourth positional argument (where "
                "cvxpylayers takes solver) and as solver_args="
            )
        solver, solver_args = None, solver
    for name, value in (("gp", gp), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
    if gp:
        raise ProblemError(
            "geometric programs (gp=True) are not supported: a layer solves QPs, and CVXPY "
            "turns a geometric program into a log-log convex problem whose log-sum-exp "
            "terms need exponential cones; use cvxpylayers' CvxpyLayer(..., gp=True) for it"
        )
    if solver is not None:
        named = repr(solver) if isinstance(solver, str) else f"a {type(solver).__name__}"
        warn_user(
            f"solver={named} is ignored: a layer always solves with its own batched ADMM in "
            "torch, tuned through solver_args (eps_abs, eps_rel, max_iter, ...)"
        )
    return solver_args
