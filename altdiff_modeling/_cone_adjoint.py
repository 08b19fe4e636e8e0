"""The reverse-mode fixed point of a problem with second-order cones, by one solve.

At the limit of the transposed recursion (`_altdiff`), ``w = (a, c)`` satisfies
``a = sigma t + g_x``, ``t = H^{-1} (a + C'c)`` and
``c = J R C t + (I - J)(c - R C t) + g_v``, with J the z-step's Jacobian at the
solution (`_projection`): 0/1 on the clipped rows and, on a cone's rows, the identity,
zero or the boundary's matrix. Substituting ``a`` cancels sigma (``K = P + C'RC``), and
the second condition reads ``J c = (2J - I) R C t + g_v``::

    [ K            -C' ] [t]   [ g_x]
    [ (2J - I) R C  -J ] [c] = [-g_v]

On the boundary of a cone J is not 0/1, so the active rows' reductions of
`_direct_adjoint` do not apply; this ``n + m`` system is factored per instance (LU) and
serves any source.

A variable that P leaves out and that appears only in rows where J is the identity
(inactive rows, cones with their point inside) is free on the solution set: CVXPY's
epigraph variable of an inactive norm bound, anywhere between the norm and its bound.
The system is singular along ``t = e_j``, ``c = R C e_j``, and that direction changes
no gradient of the data's nonzero entries: ``dL/d[b; h]`` vanishes on J's identity rows,
``c - R C t`` does not change, ``-y t'`` changes only in column j of the rows with a
multiplier, where C is zero, and ``dL/dP`` only in P's row and column j, zero too (a
parameter that is zero at the instance but moves those entries is not told apart). Its
equation ``j`` of the first block reads ``0 = g_x[j] + C'[j] g_v`` there, both zero
(``g_x`` is zero on variables the user does not see, ``g_v`` on J's identity rows), so
it is replaced by ``t_j = 0``: the system keeps its other solutions and loses the free
direction. Where it is singular still, the caller's check rejects the answer and GMRES
takes the instance (`_altdiff.reverse_gradients`).
"""

from __future__ import annotations

import torch

from ._costs import Rates
from ._direct_adjoint import AdjointSolver, gmres_seconds
from ._projection import ProjectionJacobian

__all__ = ["cone_adjoint", "predicted_seconds"]

# Tensor operations of `cone_adjoint` with one solve and its check (counted in the code).
_OPERATIONS = 30


def predicted_seconds(
    n: int, inactive: torch.Tensor, rates: Rates | None
) -> tuple[float, float] | None:
    """The predicted times ``(direct, gmres)`` of `cone_adjoint` (forming K and J, one
    LU of ``n + m`` per instance, two solves) and of GMRES on a batch of problems of n
    variables with rows ``inactive`` ``(B, m)``, at the rates the forward solve
    measured; None where those are unknown."""
    if rates is None:
        return None
    batch, m = inactive.shape
    size = n + m
    flops = batch * (n * n * m + m * m * m + 2 * size**3 / 3 + 4 * size * size)
    return rates.seconds(flops, _OPERATIONS), gmres_seconds(n, m, batch, rates)


def cone_adjoint(
    P: torch.Tensor,
    C: torch.Tensor,
    rows: torch.Tensor,
    jacobian: ProjectionJacobian,
    sigma: float,
) -> AdjointSolver:
    """Factor the fixed-point equations of the transposed recursion (module docstring).

    Args:
        P: ``(1|B, n, n)``.  C: ``(1|B, m, n)`` dense.  rows: ``(1|B, m)`` penalty R.
        jacobian: The z-step's Jacobian at the solution, of a batch of B.
        sigma: The proximal weight of H.

    Returns:
        A solver mapping ``g_x (B, n)``, ``g_v (B, m)`` to the fixed point ``a (B, n)``,
        ``c (B, m)``, in the dtype of ``g_x``. An instance whose system is singular
        gets zeros, which the caller's check rejects.
    """
    work = torch.float64  # small dense factorizations: cheap in float64
    batch, m = jacobian.inactive.shape
    n = P.shape[-1]
    P, C, rows = P.to(work), C.to(work), rows.to(work)
    RC = rows.unsqueeze(-1) * C  # (1|B, m, n)
    K = P + C.transpose(-1, -2) @ RC
    eye = torch.eye(m, dtype=work, device=C.device).expand(batch, m, m)
    J = jacobian.mix(eye, torch.zeros_like(eye))  # (B, m, m); symmetric
    first = torch.cat([K.expand(batch, n, n), -C.transpose(-1, -2).expand(batch, n, m)], -1)
    free = _free_variables(P, C, jacobian.identity_rows())  # (B, n)
    pinned = torch.eye(n, n + m, dtype=work, device=C.device)  # row j: t_j = 0
    first = torch.where(free.unsqueeze(-1), pinned, first)
    system = torch.cat([first, torch.cat([(2 * J - eye) @ RC, -J], -1)], -2)
    factor, pivots, info = torch.linalg.lu_factor_ex(system)
    regular = (info == 0).unsqueeze(-1)

    def solve(
        g_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = g_x.dtype
        rhs = torch.cat([torch.where(free, 0.0, g_x.to(work)), -g_v.to(work)], -1)
        rhs = rhs.unsqueeze(-1)
        tc = torch.linalg.lu_solve(factor, pivots, rhs).squeeze(-1)
        tc = torch.where(regular & torch.isfinite(tc), tc, 0.0)
        t, c = tc[:, :n], tc[:, n:]
        return (sigma * t + g_x.to(work)).to(dtype), c.to(dtype)

    return solve


def _free_variables(P: torch.Tensor, C: torch.Tensor, identity_rows: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` bool: the variables with no entry in P that appear only in the rows
    ``identity_rows`` ``(B, m)`` (module docstring)."""
    in_P = (P != 0).any(-2)  # (1|B, n)
    elsewhere = ((C != 0) & ~identity_rows.unsqueeze(-1)).any(-2)  # (B, n)
    return ~(in_P | elsewhere)
