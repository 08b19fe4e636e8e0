"""Exception types raised by altdiff-modeling.

Every error the library raises on purpose derives from `AltDiffError`, so a
training loop can catch the library's failures without catching unrelated bugs.
"""

from __future__ import annotations

__all__ = ["AltDiffError", "InputError", "ProblemError", "SolverError", "SolverWarning"]


class AltDiffError(Exception):
    """Base class of every exception raised by altdiff-modeling on purpose."""


class ProblemError(AltDiffError, ValueError):
    """The CVXPY problem cannot be turned into a layer.

    Raised at layer construction: the problem is not DPP or not DCP, a constraint or
    atom is not polyhedral (second-order, exponential, PSD or power cones), the
    ``parameters`` or ``variables`` lists do not match the problem, a variable is
    integer or boolean, or ``gp=True``. The message names the offending object as the
    user wrote it.
    """


class InputError(AltDiffError, ValueError):
    """A call received inputs that do not fit the layer or the solver.

    Raised before any solving: the wrong number of tensors, a tensor of the wrong shape,
    a complex or half-precision-only dtype, tensors on different devices, inconsistent
    batch sizes, NaN or Inf values, invalid ``solver_args``, or an invalid constructor
    argument (``gp``, ``verbose``, ``canon_backend``). The message names the parameter
    (or argument) and what was expected.
    """


class SolverError(AltDiffError, RuntimeError):
    """The solver failed on at least one instance of a batch.

    The message names the batch indices and their statuses (for example
    ``primal_infeasible`` or ``max_iter``). Also raised when the ADMM matrix
    ``P + sigma I + rho C'C`` cannot be factored (P not positive semidefinite).
    """


class SolverWarning(UserWarning):
    """A warning about a solve or its settings.

    Issued with ``solver_args={"on_failure": "warn"}`` when an instance is not solved;
    when cvxpylayers' ``solver=`` or the keys only its solvers read are ignored; and
    when a float32 solve raises a tolerance below its reach.
    """
