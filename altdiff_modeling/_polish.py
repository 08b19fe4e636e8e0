"""Solution polishing: guess the active set from an ADMM iterate and solve the
equality-constrained QP it defines, as OSQP does (Stellato et al., 2020, section 4.4).

ADMM identifies the active set long before its residuals reach a tight tolerance, most
of all on LPs, where its last digits come slowly. Polishing turns a correct guess into
the exact solution at the cost of one factorization. The reduced KKT system::

    [ P    C_a' ] [x  ]   [-q  ]
    [ C_a  0    ] [y_a] = [ u_a]

is solved through its regularized Schur complement ``P + delta I + C_a'C_a / delta``
(positive definite), with iterative refinement against the unregularized system. The
caller accepts a polished point only if it meets the termination criteria.
"""

from __future__ import annotations

import torch

from ._factor import cholesky_solve
from ._qp import matvec, rmatvec

__all__ = ["active_set", "polish"]

_DELTA = 1e-6
_REFINE_STEPS = 5


def active_set(z: torch.Tensor, y: torch.Tensor, bound: torch.Tensor, n_eq: int) -> torch.Tensor:
    """``(B, m)`` bool: the rows an iterate ``(z, y)`` ``(B, m)`` estimates active.

    A row is active when its multiplier outweighs its slack (OSQP's rule); equality rows
    always are.
    """
    active = (bound - z) < y
    active[:, :n_eq] = True
    return active


def polish(
    P: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    bound: torch.Tensor,
    n_eq: int,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Polish a batch of iterates (scaled units).

    Args:
        P: ``(1|B, n, n)``.  q: ``(1|B, n)``.  C: ``(1|B, m, n)``.  bound: ``(1|B, m)``.
        n_eq: Number of equality rows.
        active: ``(B, m)`` bool, the iterates' `active_set` (equality rows included).

    Returns:
        ``x (B, n)``, ``z (B, m)``, ``y (B, m)`` of the polished points, and a ``(B,)``
        mask of the instances whose reduced system could be factored.
    """
    B, m = active.shape
    n = q.shape[-1]
    bound = bound.expand(B, m)
    weight = active.to(q.dtype) / _DELTA  # (B, m)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    K = P + _DELTA * eye + C.transpose(-1, -2) @ (weight.unsqueeze(-1) * C)
    L, info = torch.linalg.cholesky_ex(K.expand(B, n, n))
    ok = info == 0
    L = torch.where(ok[:, None, None], L, eye)

    def solve_regularized(
        r_x: torch.Tensor, r_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dx = cholesky_solve((r_x + rmatvec(C, weight * r_y)).unsqueeze(-1), L).squeeze(-1)
        dy = torch.where(active, weight * (matvec(C, dx) - r_y), -r_y)
        return dx, dy

    target_x = -q.expand(B, n)
    target_y = torch.where(active, bound, 0.0)
    x = q.new_zeros(B, n)
    y_p = q.new_zeros(B, m)
    for _ in range(_REFINE_STEPS):
        # Residual of the unregularized system [[P, C'M], [MC, -(I - M)]].
        Cx = matvec(C, x)
        r_x = target_x - (matvec(P, x) + rmatvec(C, torch.where(active, y_p, 0.0)))
        r_y = target_y - torch.where(active, Cx, -y_p)
        dx, dy = solve_regularized(r_x, r_y)
        x, y_p = x + dx, y_p + dy
    y_p = torch.where(active, y_p, 0.0)
    Cx = matvec(C, x)
    z_p = torch.cat([bound[:, :n_eq], torch.minimum(Cx[:, n_eq:], bound[:, n_eq:])], dim=1)
    y_p = torch.cat([y_p[:, :n_eq], y_p[:, n_eq:].clamp_min(0)], dim=1)
    return x, z_p, y_p, ok
