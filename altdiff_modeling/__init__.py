"""altdiff-modeling: differentiable convex optimization layers solved by ADMM and
differentiated by Alternating Differentiation (Alt-Diff)."""

from ._errors import AltDiffError, InputError, ProblemError, SolverError, SolverWarning
from ._function import SolveInfo
from ._functional import solve_qp
from ._layer import AltDiffLayer
from ._settings import SolverSettings

__all__ = [
    "AltDiffError",
    "AltDiffLayer",
    "InputError",
    "ProblemError",
    "SolveInfo",
    "SolverError",
    "SolverSettings",
    "SolverWarning",
    "solve_qp",
]
