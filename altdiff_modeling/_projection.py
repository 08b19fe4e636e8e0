"""The Jacobian of ADMM's z-step, ``z = proj(v)``, over all the constraint rows.

The z-step pins equality rows to b, clips the other inequality rows at h
(``z = min(v, h)``) and, on the rows of second-order cones, takes
``z = h - P_K(h - v)`` (so that the slack ``h - z`` lies in the cones). Its Jacobian with
respect to v is zero on the equality rows, the 0/1 diagonal D on the clipped rows (one
where the row is inactive) and the projection's Jacobian ``J_K(h - v)`` on the cones'
rows: symmetric, so one object serves the forward and the transposed recursions. With
respect to the bound it is ``I - J`` (on the equality rows, the identity).

The recursions need it only through ``mix(a, b) = J a + (I - J) b``: a selection
between ``a`` and ``b`` on the clipped rows, and ``b + J_K (a - b)`` on the cones.
"""

from __future__ import annotations

import torch

from ._cones import ConeJacobian, SecondOrderCones

__all__ = ["ProjectionJacobian"]


class ProjectionJacobian:
    """``J``, the z-step's Jacobian at one point.

    Args:
        inactive: ``(B, m)`` bool, the clipped rows where the projection is the
            identity (False on equality and cone rows).
        cones: The cones of the last ``cones.rows`` rows, or None.
        cone_point: ``(B, cones.rows)`` the point ``h - v`` of their projection.
    """

    def __init__(
        self,
        inactive: torch.Tensor,
        cones: SecondOrderCones | None = None,
        cone_point: torch.Tensor | None = None,
    ) -> None:
        self.inactive = inactive
        self.cones = cones
        self._cone: ConeJacobian | None = None
        if cones is not None and cone_point is not None:
            self._cone = cones.jacobian(cone_point)

    @classmethod
    def at_solution(
        cls,
        z: torch.Tensor,
        y: torch.Tensor,
        rho_rows: torch.Tensor,
        bound: torch.Tensor,
        n_eq: int,
        cones: SecondOrderCones | None,
    ) -> ProjectionJacobian:
        """The Jacobian at a solution ``z``, ``y`` ``(B, m)`` of penalty ``rho_rows``.

        A clipped row is inactive where its multiplier is zero; the last projection
        sets ``y`` to exactly zero there, so no threshold is needed (a weakly active
        row, zero multiplier and zero slack, is taken as inactive). On the cones' rows
        the projection's point is ``h - v = (h - z) - y / r``, the slack less the
        scaled multipliers.
        """
        point = None
        if cones is not None:
            first = y.shape[1] - cones.rows
            rows = rho_rows.expand_as(y)[:, first:]
            point = bound.expand_as(y)[:, first:] - z[:, first:] - y[:, first:] / rows
        return cls(_clipped(y <= 0, n_eq, cones), cones, point)

    @classmethod
    def at_point(
        cls,
        v: torch.Tensor,
        bound: torch.Tensor,
        n_eq: int,
        cones: SecondOrderCones | None,
    ) -> ProjectionJacobian:
        """The Jacobian at ``v`` ``(B, m)``, for the bound ``(1|B, m)``."""
        bound = bound.expand_as(v)
        point = None
        if cones is not None:
            first = v.shape[1] - cones.rows
            point = bound[:, first:] - v[:, first:]
        return cls(_clipped(v < bound, n_eq, cones), cones, point)

    def select(self, index: torch.Tensor) -> ProjectionJacobian:
        """The Jacobians of the instances ``index`` ``(K,)``."""
        out = ProjectionJacobian(self.inactive[index], self.cones)
        out._cone = None if self._cone is None else self._cone.select(index)
        return out

    def mix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``J a + (I - J) b`` for ``a``, ``b`` ``(B, m)`` or ``(B, m, K)``."""
        inactive = self.inactive if a.dim() == 2 else self.inactive.unsqueeze(-1)
        out = torch.where(inactive, a, b)
        if self._cone is not None:
            first = a.shape[1] - self.cones.rows
            b_cone = b[:, first:]
            out[:, first:] = b_cone + self._cone.apply(a[:, first:] - b_cone)
        return out

    def identity_rows(self) -> torch.Tensor:
        """``(B, m)`` bool: the rows where J is the identity, the inactive clipped rows
        and the rows of the cones whose point lies inside."""
        rows = self.inactive.clone()
        if self._cone is not None:
            first = rows.shape[1] - self.cones.rows
            rows[:, first:] = self._cone.inside[:, self.cones.cone_of_row]
        return rows

    def submatrix(
        self, index: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """``(B, k, k)`` of ``dtype``: J on the rows ``index`` ``(B, k)`` (distinct in
        each instance; their rows and columns), zero where ``valid`` ``(B, k)`` is
        False."""
        diagonal = self.inactive.gather(1, index) & valid
        out = torch.diag_embed(diagonal.to(dtype))
        if self._cone is not None:
            first = self.inactive.shape[1] - self.cones.rows
            in_cones = (index >= first) & valid
            out = out + self._cone.submatrix(index - first, in_cones).to(dtype)
        return out

    def complement(self, d: torch.Tensor) -> torch.Tensor:
        """``(I - J) d``."""
        return self.mix(torch.zeros_like(d), d)


def _clipped(inactive: torch.Tensor, n_eq: int, cones: SecondOrderCones | None) -> torch.Tensor:
    """``inactive`` ``(B, m)`` (a fresh mask) kept on the clipped rows only: False on the
    equality rows and on the cones' rows."""
    inactive[:, :n_eq] = False
    if cones is not None:
        inactive[:, inactive.shape[1] - cones.rows :] = False
    return inactive
