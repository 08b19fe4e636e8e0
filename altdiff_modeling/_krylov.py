"""Batched restarted GMRES for the linear systems of the Alt-Diff recursions.

The reverse-mode recursion ``w <- M'w + g`` converges to the solution of
``(I - M') w = g`` at the linear rate of ADMM. GMRES on the same operator reaches the
same limit in far fewer applications of ``M'`` (each one ADMM-step of work), so it is an
acceleration of Alt-Diff, not a different derivative.
"""

from __future__ import annotations

import time
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

    Classical Gram-Schmidt applied twice (two batched products per pass instead of one
    small operation per basis vector). The Givens rotations that reduce the Hessenberg
    matrix to triangular form are accumulated in an orthogonal ``Omega``
    ``(B, steps + 1, steps + 1)``, so a new column is rotated by one product and
    ``beta * |Omega[j + 1, 0]|`` is the residual after step j: the cycle stops as soon
    as every row meets ``threshold``. Every step costs a fixed number of tensor
    operations, whatever its index.
    """
    B, N = r.shape
    basis = r.new_zeros(B, steps + 1, N)
    basis[:, 0] = r / torch.where(beta > 0, beta, torch.ones_like(beta)).unsqueeze(-1)
    hessenberg = r.new_zeros(B, steps + 1, steps)
    omega = torch.eye(steps + 1, dtype=r.dtype, device=r.device).repeat(B, 1, 1)
    done = 0
    # Steps each row uses: a row stops where it meets its threshold. Later directions
    # would only add round-off, or, near the Krylov space's breakdown on a singular
    # system, large multiples of a null vector that leave the residual unchanged.
    used_steps = torch.full((B,), steps, dtype=torch.int64, device=r.device)
    for j in range(steps):
        u = operator(basis[:, j])
        used = basis[:, : j + 1]
        h = torch.bmm(used, u.unsqueeze(-1))
        u = u - torch.bmm(h.transpose(1, 2), used).squeeze(1)
        again = torch.bmm(used, u.unsqueeze(-1))  # second pass: orthogonal to round-off
        u = u - torch.bmm(again.transpose(1, 2), used).squeeze(1)
        norm = u.norm(dim=-1)
        basis[:, j + 1] = u / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1)
        hessenberg[:, : j + 1, j] = (h + again).squeeze(-1)
        hessenberg[:, j + 1, j] = norm
        # Earlier rotations touch rows 0..j only, so row j + 1 of the column stays norm.
        top = torch.bmm(omega[:, j : j + 1, : j + 1], hessenberg[:, : j + 1, j : j + 1])
        top = top.reshape(B)
        radius = torch.sqrt(top**2 + norm**2)
        safe = torch.where(radius > 0, radius, torch.ones_like(radius))
        cos = torch.where(radius > 0, top / safe, torch.ones_like(radius)).unsqueeze(-1)
        sin = torch.where(radius > 0, norm / safe, torch.zeros_like(radius)).unsqueeze(-1)
        row_j, row_next = omega[:, j].clone(), omega[:, j + 1].clone()
        omega[:, j] = cos * row_j + sin * row_next
        omega[:, j + 1] = cos * row_next - sin * row_j
        done = j + 1
        met = beta * omega[:, j + 1, 0].abs() <= threshold
        used_steps = torch.where(met & (used_steps > done), done, used_steps)
        if bool(met.all()):
            break
    R = torch.bmm(omega[:, :done, : done + 1], hessenberg[:, : done + 1, :done]).triu()
    beyond = torch.arange(done, device=r.device) >= used_steps.unsqueeze(-1)  # (B, done)
    R = torch.where(beyond.unsqueeze(-1) | beyond.unsqueeze(-2), 0.0, R)
    diagonal = R.diagonal(dim1=-2, dim2=-1)
    # A zero pivot means the Krylov space is exhausted (or the row stopped): that row is
    # already solved.
    R = R + torch.diag_embed((diagonal == 0).to(R.dtype))
    g = torch.where(beyond, 0.0, beta.unsqueeze(-1) * omega[:, :done, 0]).unsqueeze(-1)
    y = torch.linalg.solve_triangular(R, g, upper=True)
    return torch.bmm(y.transpose(1, 2), basis[:, :done]).squeeze(1), done


def batched_gmres(
    operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    tol: float,
    max_matvecs: int,
    restart: int = 30,
    deadline: float | None = None,
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
        deadline: A `time.perf_counter` time after which no cycle starts (None: none).

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
        if deadline is not None and time.perf_counter() >= deadline:
            break
        step, used = _gmres_cycle(operator, r, beta, threshold, min(restart, max_matvecs - matvecs))
        # Rows already solved keep their iterate, as for one row alone: on a singular
        # system, more cycles from a residual at round-off would add null vectors.
        solved = best_beta <= threshold
        x, matvecs = torch.where(solved.unsqueeze(-1), x, x + step), matvecs + used
    # A stagnated row counts as solved when its residual is down at round-off scale
    # (eps^(1/4) of the right-hand side: 1e-4 in float64, 2e-2 in float32); far above
    # that, the system is singular (a degenerate point) and the caller falls back. A
    # row stopped by the budget or the deadline while still shrinking is not solved.
    at_round_off = stalled & (best_beta <= eps**0.25 * rhs_size)
    converged = (best_beta <= threshold) | at_round_off
    return best_x, matvecs, converged
