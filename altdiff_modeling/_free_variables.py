"""Variables that an active set leaves free, and the rows that pin them.

CVXPY's epigraph variables make many faces' KKT systems singular: the ``t`` of
``cp.abs(u) <= 1`` (``u <= t``, ``-u <= t``, ``t <= 1``) is free wherever ``|u| < 1``. A
variable whose column of P and entry of q are zero and that no active row reaches is
free on the face: any value that keeps its rows feasible is optimal, and the point's
other variables do not depend on it. Pinned to an inequality row on it alone (``t <=
1``), with a multiplier that may vanish, it is determined, and the face's KKT system is
regular again. The polish pins such variables on its active-set estimates, and the
active-set memory on the sets it keeps; the backward's `_degeneracy.absorbed` is the
same fact for the gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["FreeVariables"]


class FreeVariables(NamedTuple):
    """The pattern of a dense problem's free variables and their pins.

    Attributes:
        nonzero: ``(m, n)`` float: where any instance's C is nonzero.
        pins: ``(n, m)`` float: each variable's pin row (one-hot), the first inequality
            row on it alone; a zero row where the variable may not be pinned.
        pinnable: ``(1|B, n)`` bool: the hidden variables with a zero column of P and a
            pin row.
    """

    nonzero: torch.Tensor
    pins: torch.Tensor
    pinnable: torch.Tensor

    @classmethod
    def of(
        cls, P: torch.Tensor, C: torch.Tensor, n_eq: int, hidden: torch.Tensor
    ) -> FreeVariables | None:
        """From ``P`` ``(1|B, n, n)`` and ``C`` ``(1|B, m, n)``, for the ``hidden``
        ``(n,)`` variables (that no output reads: pinning one the user reads would pick
        one of many solutions for them); None where no variable can be pinned."""
        zero_column = (P == 0).all(-2) & hidden.to(P.device)  # (1|B, n)
        if not bool(zero_column.any()):
            return None
        on = (C != 0).any(0)  # (m, n)
        own = on & (on.sum(1, keepdim=True) == 1)
        own[:n_eq] = False
        pin_row = own.to(torch.uint8).argmax(0)  # (n,) the first such row
        pinnable = zero_column & own.any(0)
        if not bool(pinnable.any()):
            return None
        pins = torch.zeros(C.shape[-1], C.shape[-2], dtype=C.dtype, device=C.device)
        columns = torch.nonzero(own.any(0)).flatten()
        pins[columns, pin_row[columns]] = 1
        return cls(on.to(C.dtype), pins, pinnable)

    def free(self, active: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``(K, n)`` bool: the variables free on the sets ``active`` ``(K, m)`` of the
        instances whose q is ``q`` ``(1|K, n)`` (``pinnable`` matches them: index it
        with `select` first)."""
        reached = (active.to(self.nonzero.dtype) @ self.nonzero) > 0
        return self.pinnable & (q == 0) & ~reached

    def pinned(self, free: torch.Tensor) -> torch.Tensor:
        """``(K, m)`` bool: the pin rows of the ``free`` ``(K, n)`` variables."""
        return (free.to(self.pins.dtype) @ self.pins) > 0

    def rows_on(self, free: torch.Tensor) -> torch.Tensor:
        """``(K, m)`` bool: every row that reaches one of the ``free`` ``(K, n)`` variables."""
        return (free.to(self.nonzero.dtype) @ self.nonzero.T) > 0

    def select(self, index: torch.Tensor) -> FreeVariables:
        """The same for the instances ``index`` ``(K,)`` of the batch."""
        if self.pinnable.shape[0] == 1:
            return self
        return self._replace(pinnable=self.pinnable[index])
