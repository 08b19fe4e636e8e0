"""The reductions of a layer's canonical problem before its solve, in order: bound
epigraph variables (`Epigraphs`), then variables fixed by a row of their own
(`FixedVariables`, the only one with terms formed per call, so that they are formed in
the solved problem's rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._canon import CanonicalForm
from ._epigraphs import Epigraphs
from ._fixed_variables import FixedValues, FixedVariables
from ._parametric import VariableSpec

__all__ = ["Presolve"]


@dataclass
class Presolve:
    """A layer's problem as it is solved, and the way back to the whole problem.

    Attributes:
        solved: The problem the solver sees.
        epigraphs: The bound epigraph variables eliminated, if any.
        fixed: The fixed variables eliminated (after the epigraphs), if any.
        free: ``(n_solved,)`` the whole problem's variables that the solved one keeps.
    """

    solved: CanonicalForm
    epigraphs: Epigraphs | None
    fixed: FixedVariables | None
    free: np.ndarray

    @staticmethod
    def of(form: CanonicalForm, hidden: np.ndarray) -> Presolve:
        """The reductions of ``form``, whose variables ``hidden`` ``(n,)`` no output
        reads (none apply: ``solved`` is ``form``)."""
        solved, free = form, np.arange(form.n)
        epigraphs = Epigraphs.of(solved, hidden)
        if epigraphs is not None:
            solved, epigraphs = epigraphs
            free = free[epigraphs.free]
        fixed = FixedVariables.of(solved)
        if fixed is not None:
            solved, fixed = fixed
            free = free[fixed.free]
        return Presolve(solved, epigraphs, fixed, free)

    @property
    def reduces(self) -> bool:
        return self.epigraphs is not None or self.fixed is not None

    def solved_spec(self, spec: VariableSpec) -> VariableSpec | None:
        """``spec`` over the solved problem's solution and multipliers; None where it
        reads what a reduction took out (`recover` then gives it)."""
        for step in (self.epigraphs, self.fixed):
            if step is not None and spec is not None:
                spec = step.solved_spec(spec)
        return spec

    def recover(
        self, x: torch.Tensor, y: torch.Tensor, fixed_values: Callable[[], FixedValues]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole problem's solution and multipliers from the solved problem's
        (``fixed_values``: the call's `FixedValues`, formed on demand)."""
        if self.fixed is not None:
            x, y = self.fixed.recover(x, y, fixed_values())
        if self.epigraphs is not None:
            x, y = self.epigraphs.recover(x, y)
        return x, y
