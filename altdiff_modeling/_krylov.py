"""Batched restarted GMRES for the linear systems of the Alt-Diff recursions.

The reverse-mode recursion ``w <- M'w + g`` converges to the solution of
``(I - M') w = g`` at the linear rate of ADMM. GMRES on the same operator reaches the
same limit in far fewer applications of ``M'`` (each one ADMM-step of work), so it is an
acceleration of Alt-Diff, not a different derivative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["batched_gmres"]

_STAGNATION = 0.9  # a restart cycle must shrink the residual by this factor to go on


def _gmres_cycle(
    operator: Callable[[torch.Tensor], torch.Tensor],
    r: torch.Tensor,
    beta: torch.Tensor,
    threshold: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, int]:
    """One GMRES cycle of at most ``steps`` operator applications from residual ``r``
    ``(B, N)`` of norm ``beta``; returns the correction to the iterate and the number
    of applications made.

    Modified Gram-Schmidt, with the Hessenberg columns reduced to a triangular R by
    Givens rotations (cos, sin) and g the rotated residual vector: ``|g[j + 1]|`` is the
    residual after step j, so the cycle stops as soon as every row meets ``threshold``.
    """
    B = r.shape[0]
    basis = [r / torch.where(beta > 0, beta, torch.ones_like(beta)).unsqueeze(-1)]
    R = r.new_zeros(B, steps, steps)
    cos = r.new_zeros(B, steps)
    sin = r.new_zeros(B, steps)
    g = r.new_zeros(B, steps + 1)
    g[:, 0] = beta
    done = 0
    for j in range(steps):
        u = operator(basis[j])
        column = []
        for i in range(j + 1):  # modified Gram-Schmidt
            h = _dot(basis[i], u)
            column.append(h)
            u = u - h.unsqueeze(-1) * basis[i]
        norm = u.norm(dim=-1)
        basis.append(u / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1))
        for i in range(j):  # apply the earlier rotations to the new column
            top = cos[:, i] * column[i] + sin[:, i] * column[i + 1]
            column[i + 1] = -sin[:, i] * column[i] + cos[:, i] * column[i + 1]
            column[i] = top
        radius = torch.sqrt(column[j] ** 2 + norm**2)
        safe = torch.where(radius > 0, radius, torch.ones_like(radius))
        cos[:, j] = torch.where(radius > 0, column[j] / safe, torch.ones_like(radius))
        sin[:, j] = torch.where(radius > 0, norm / safe, torch.zeros_like(radius))
        column[j] = radius
        R[:, : j + 1, j] = torch.stack(column, dim=-1)
        g[:, j + 1] = -sin[:, j] * g[:, j]
        g[:, j] = cos[:, j] * g[:, j]
        done = j + 1
        if bool((g[:, j + 1].abs() <= threshold).all()):
            break
    R_used = R[:, :done, :done]
    diagonal = R_used.diagonal(dim1=-2, dim2=-1)
    # A zero pivot means the Krylov space is exhausted: that row is already solved.
    R_used = R_used + torch.diag_embed((diagonal == 0).to(R.dtype))
    y = torch.linalg.solve_triangular(R_used, g[:, :done].unsqueeze(-1), upper=True)
    V = torch.stack(basis[:done], dim=1)  # (B, done, N)
    return (y.squeeze(-1).unsqueeze(-1) * V).sum(1), done


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(-1)


def batched_gmres(
    operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    tol: float,
    max_matvecs: int,
    restart: int = 30,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Solve ``operator(x) = rhs`` for each row of a batch.

    Args:
        operator: Linear map ``(B, N) -> (B, N)``, applied to all rows at once.
        rhs: ``(B, N)`` right-hand sides.
        x0: ``(B, N)`` starting point.
        tol: Stop when every row's residual is at most ``tol * (1 + ||rhs||)``, or has
            stopped shrinking over a restart cycle (stagnation).
        max_matvecs: Largest number of operator applications.
        restart: Krylov dimension before a restart.

    Returns:
        For each row the iterate with the smallest residual seen ``(B, N)``, the number
        of operator applications, and ``(B,)`` whether that residual is within ``tol``
        or, where ``tol`` is out of reach, near the level of round-off.
    """
    x = x0
    matvecs = 0
    eps = torch.finfo(rhs.dtype).eps
    # Below a few hundred ulps the residual is round-off: a tighter tol cannot be met.
    tol = max(tol, 64 * eps)
    rhs_size = 1 + rhs.norm(dim=-1)
    threshold = tol * rhs_size
    best_x, best_beta = x, None
    stalled = torch.zeros(rhs.shape[0], dtype=torch.bool, device=rhs.device)
    while True:
        r = rhs - operator(x)
        matvecs += 1
        beta = r.norm(dim=-1)
        if best_beta is None:
            best_beta = beta
        else:
            # A row whose true residual a whole cycle did not shrink has stagnated (at
            # round-off, or on a singular system): keep its best iterate and stop it.
            stalled = stalled | (beta > _STAGNATION * best_beta)
            improved = beta < best_beta
            best_x = torch.where(improved.unsqueeze(-1), x, best_x)
            best_beta = torch.where(improved, beta, best_beta)
        if bool(((best_beta <= threshold) | stalled).all()) or matvecs >= max_matvecs:
            break
        step, used = _gmres_cycle(operator, r, beta, threshold, min(restart, max_matvecs - matvecs))
        x, matvecs = x + step, matvecs + used
    # A stagnated row counts as solved when its residual is down at round-off scale
    # (eps^(1/4) of the right-hand side: 1e-4 in float64, 2e-2 in float32); far above
    # that, the system is singular (a degenerate point) and the caller falls back.
    converged = (best_beta <= threshold) | (best_beta <= eps**0.25 * rhs_size)
    return best_x, matvecs, converged
