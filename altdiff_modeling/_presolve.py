"""The reductions of a layer's canonical problem before its solve, in order: bound
epigraph variables (`Epigraphs`), variables fixed by a row of their own
(`FixedVariables`, the only one with terms formed per call), and residual variables of
the objective (`Residuals`, which carries the fixed variables' terms into the solved
problem's q and bounds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._canon import CanonicalForm
from ._epigraphs import Epigraphs
from ._fixed_variables import FixedValues, FixedVariables
from ._parametric import VariableSpec
from ._qp import QPData
from ._residuals import Residuals

__all__ = ["Presolve"]


@dataclass
class Presolve:
    """A layer's problem as it is solved, and the way back to the whole problem.

    Attributes:
        solved: The problem the solver sees.
        epigraphs: The bound epigraph variables eliminated, if any.
        fixed: The fixed variables eliminated (after the epigraphs), if any.
        residuals: The residual variables substituted (last), if any.
        free: ``(n_solved,)`` the whole problem's variables that the solved one keeps.
        hidden: ``(n,)`` the whole problem's variables that no primal output reads
            (CVXPY's auxiliary variables).
    """

    solved: CanonicalForm
    epigraphs: Epigraphs | None
    fixed: FixedVariables | None
    residuals: Residuals | None
    free: np.ndarray
    hidden: np.ndarray

    @staticmethod
    def of(form: CanonicalForm, outputs: list[VariableSpec]) -> Presolve:
        """The reductions of ``form`` for the ``outputs`` (none may apply: ``solved`` is
        then ``form``)."""
        hidden = np.ones(form.n, dtype=bool)
        for spec in outputs:
            if not spec.is_dual:
                hidden[spec.index[spec.index >= 0]] = False
        solved, free = form, np.arange(form.n)
        presolve = Presolve(solved, None, None, None, free, hidden)
        epigraphs = Epigraphs.of(solved, hidden)
        if epigraphs is not None:
            solved, presolve.epigraphs = epigraphs
            free = free[presolve.epigraphs.free]
        fixed = FixedVariables.of(solved)
        if fixed is not None:
            solved, presolve.fixed = fixed
            free = free[presolve.fixed.free]
        # A residual's row goes without its multiplier: only where no output needs the
        # whole problem's multipliers (the fixed variables' recovery reads them) and
        # none reads the row's.
        specs = [presolve.solved_spec(spec) for spec in outputs]
        if all(spec is not None for spec in specs):
            read_rows = np.zeros(solved.n_rows, dtype=bool)
            for spec in specs:
                if spec.is_dual:
                    read_rows[spec.index[spec.index >= 0]] = True
            residuals = Residuals.of(solved, hidden[free], read_rows)
            if residuals is not None:
                solved, presolve.residuals = residuals
                free = free[presolve.residuals.free]
        presolve.solved, presolve.free = solved, free
        return presolve

    @property
    def reduces(self) -> bool:
        return any(step is not None for step in (self.epigraphs, self.fixed, self.residuals))

    def solved_spec(self, spec: VariableSpec) -> VariableSpec | None:
        """``spec`` over the solved problem's solution and multipliers; None where it
        reads what a reduction took out (`recover` then gives it)."""
        for step in (self.epigraphs, self.fixed, self.residuals):
            if step is not None and spec is not None:
                spec = step.solved_spec(spec)
        return spec

    def touched(self) -> np.ndarray:
        """``(n_solved + m_solved,)`` bool: the solved problem's q entries, then rows,
        that a call's fixed-variable terms change (a parameter's gradient may reach
        them); all False without any."""
        if self.fixed is None:
            return np.zeros(self.solved.n + self.solved.n_rows, dtype=bool)
        touched = self.fixed.touched()
        q, bound = touched[: self.fixed.free.size], touched[self.fixed.free.size :]
        if self.residuals is not None:
            moved = abs(self.residuals.q_from_bound) @ bound.astype(float) > 0
            q, bound = q[self.residuals.free] | moved, bound[self.residuals.kept]
        return np.concatenate([q, bound])

    def reduce(self, data: QPData, values: FixedValues) -> QPData:
        """The solved problem's ``data`` with a call's fixed-variable terms added
        (`FixedVariables.per_call`)."""
        q_terms, bound_terms = self.fixed.terms(values)
        if self.residuals is not None:
            q_terms, bound_terms = self.residuals.carried(q_terms, bound_terms)
        batch = max(data.batch_size, values.x.shape[0])
        q, bound = data.q, data.bound
        if q_terms is not None:
            q = q + q_terms
        if bound_terms is not None:
            bound = bound + bound_terms
        return QPData(data.P, q, data.C, bound, data.n_eq, batch, data.cone_sizes)

    def recover(
        self, x: torch.Tensor, y: torch.Tensor, fixed_values: Callable[[], FixedValues]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole problem's solution and multipliers from the solved problem's
        (``fixed_values``: the call's `FixedValues`, formed on demand). Never needed
        with residuals substituted (`of`)."""
        if self.residuals is not None:
            raise AssertionError("outputs read the solved problem when residuals are gone")
        if self.fixed is not None:
            x, y = self.fixed.recover(x, y, fixed_values())
        if self.epigraphs is not None:
            x, y = self.epigraphs.recover(x, y)
        return x, y
