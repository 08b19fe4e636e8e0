"""Ruiz equilibration of the QP data, and the exact maps between scaled and user units.

With diagonal ``D`` (variables), ``E`` (constraint rows) and a cost scale ``c`` the
solver sees ``P~ = c D P D``, ``q~ = c D q``, ``C~ = E C D``, ``[b~; h~] = E [b; h]``,
whose solution relates to the user's by ``x = D x~``, ``z = z~ / E``, ``y = E y~ / c``.
The scaling is a constant of each solve (computed from the data without gradient):
the solution map does not depend on it, so mapping cotangents and gradients through
these diagonal relations is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._qp import QPData

__all__ = ["Scaling", "ruiz_scaling"]

_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass(frozen=True)
class Scaling:
    """Diagonal scaling; each factor has a leading dimension of 1 (shared) or B.

    Attributes:
        D: ``(1|B, n)`` variable scaling.
        E: ``(1|B, m)`` constraint-row scaling (rows of ``[A; G]``).
        c: ``(1|B, 1)`` cost scaling.
    """

    D: torch.Tensor
    E: torch.Tensor
    c: torch.Tensor

    def scale(self, data: QPData) -> QPData:
        """The data the solver sees."""
        D, E, c = self.D, self.E, self.c
        n_eq = data.n_eq
        DD = D.unsqueeze(-1) * D.unsqueeze(-2)
        return QPData(
            P=c.unsqueeze(-1) * DD * data.P,
            q=c * D * data.q,
            A=E[:, :n_eq, None] * data.A * D.unsqueeze(-2),
            b=E[:, :n_eq] * data.b,
            G=E[:, n_eq:, None] * data.G * D.unsqueeze(-2),
            h=E[:, n_eq:] * data.h,
            batch_size=data.batch_size,
        )


def ruiz_scaling(data: QPData, iterations: int = 10) -> Scaling:
    """Equilibrate the KKT matrix ``[[P, C'], [C, 0]]`` in the infinity norm.

    Each pass divides every row and column by the square root of its largest entry
    (clipped to ``[1e-4, 1e4]``), as OSQP does; then ``c`` normalizes the cost. Shared
    matrices get a shared scaling, so a batch that shares P and C still factors once.

    Args:
        data: The user's QP data.
        iterations: Number of Ruiz passes (0 gives the identity on D and E).

    Returns:
        The scaling, computed without gradient.
    """
    with torch.no_grad():
        P, C, q = data.P, data.C, data.q
        batch = max(P.shape[0], C.shape[0])
        n, m = P.shape[-1], C.shape[1]
        D = P.new_ones(batch, n)
        E = P.new_ones(batch, m)
        P_s, C_s = P, C
        for _ in range(iterations):
            col_norm = torch.maximum(_amax(P_s, -2), _amax(C_s, -2))  # (batch, n)
            row_norm = _amax(C_s, -1)  # (batch, m)
            d = _inv_sqrt(col_norm)
            e = _inv_sqrt(row_norm)
            D, E = D * d, E * e
            P_s = d.unsqueeze(-1) * P_s * d.unsqueeze(-2)
            C_s = e.unsqueeze(-1) * C_s * d.unsqueeze(-2)
        # Cost scaling: a shared value when P is shared, so H stays shared.
        P_norm = _amax(P_s, -2).mean(-1, keepdim=True)  # (batch, 1)
        q_norm = _amax(D * q, -1).unsqueeze(-1)  # (1|B, 1)
        if batch == 1 and q_norm.shape[0] > 1:
            q_norm = q_norm.median(0, keepdim=True).values
        c = 1.0 / torch.maximum(P_norm, q_norm).clamp(_MIN_SCALE, _MAX_SCALE)
        c = torch.where(torch.maximum(P_norm, q_norm) == 0, torch.ones_like(c), c)
    return Scaling(D=D, E=E, c=c)


def _amax(M: torch.Tensor, dim: int) -> torch.Tensor:
    if M.shape[dim] == 0:
        shape = list(M.shape)
        del shape[dim]
        return M.new_zeros(shape)
    return M.abs().amax(dim=dim)


def _inv_sqrt(norm: torch.Tensor) -> torch.Tensor:
    """``1/sqrt(norm)``, leaving empty (all-zero) rows and columns unscaled."""
    safe = torch.where(norm < _MIN_SCALE, torch.ones_like(norm), norm)
    return 1.0 / safe.clamp(max=_MAX_SCALE).sqrt()


def unscale_solution(
    scaling: Scaling, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled ``(x~, z~, y~)`` to the user's ``(x, z, y)``."""
    return scaling.D * x, z / scaling.E, scaling.E * y / scaling.c


def scale_solution(
    scaling: Scaling, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's ``(x, z, y)`` to the solver's units (inverse of `unscale_solution`)."""
    return x / scaling.D, z * scaling.E, y * scaling.c / scaling.E
