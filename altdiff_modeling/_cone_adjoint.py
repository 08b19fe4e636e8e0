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
`_direct_adjoint` do not apply. What does apply: J is block diagonal (a row, or a
cone's rows), so on the rows I where it is the identity (inactive rows, cones whose
point lies inside) the second condition reads ``c_I = R_I C_I t + g_v,I``, and
substituted into the first it leaves the system of the other rows O::

    [ P + C_O' R_O C_O     -C_O' ] [t  ]   [ g_x + C_I' g_v,I]
    [ (2J_O - I) R_O C_O   -J_O  ] [c_O] = [-g_v,O          ]

of ``n + |O|`` rows (``K - C_I' R_I C_I = P + C_O' R_O C_O``), each instance's rows
gathered and padded with equations ``c = 0``; it is factored per instance (LU) and
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
from ._polish import gather_rows
from ._projection import ProjectionJacobian
from ._qp import matvec, rmatvec

__all__ = ["cone_adjoint", "predicted_seconds"]

# Tensor operations of `cone_adjoint` with one solve and its check (counted in the code).
_OPERATIONS = 30


def predicted_seconds(
    n: int, identity_rows: torch.Tensor, rates: Rates | None
) -> tuple[float, float] | None:
    """The predicted times ``(direct, gmres)`` of `cone_adjoint` (forming the reduced
    system of the rows where J is not the identity, one LU of it per instance, two
    solves) and of GMRES on a batch of problems of n variables with J's identity rows
    ``identity_rows`` ``(B, m)``, at the rates the forward solve measured; None where
    those are unknown."""
    if rates is None:
        return None
    batch, m = identity_rows.shape
    k = int((~identity_rows).sum(1).amax()) if batch else 0
    size = n + k
    flops = batch * (2 * n * n * k + 2 * size**3 / 3 + 4 * size * size)
    return rates.seconds(flops, _OPERATIONS), gmres_seconds(n, m, batch, rates)


def cone_adjoint(
    P: torch.Tensor,
    C: torch.Tensor,
    rows: torch.Tensor,
    jacobian: ProjectionJacobian,
    sigma: float,
) -> AdjointSolver:
    """Factor the fixed-point equations of the transposed recursion on the rows where
    J is not the identity (module docstring).

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
    identity = jacobian.identity_rows()  # (B, m): I
    free = _free_variables(P, C, identity)  # (B, n)
    C_O, valid, index = gather_rows(C, ~identity)  # (B, k, n), padded with zero rows
    k = index.shape[1]
    R_O = rows.expand(batch, m).gather(1, index) * valid  # (B, k)
    RC_O = R_O.unsqueeze(-1) * C_O
    # (2J - I) R C on the rows O: J applied to R C costs O(m n) (`mix`), not a product
    # with J_O (a boundary cone's block is dense)
    RC = rows.unsqueeze(-1) * C  # (1|B, m, n)
    JRC = jacobian.mix(RC.expand(batch, m, n), RC.new_zeros(batch, m, n))
    JRC_O = JRC.gather(1, index.unsqueeze(-1).expand(batch, k, n)) * valid.unsqueeze(-1)
    # the system, written block by block in place
    system = C.new_empty(batch, n + k, n + k)
    system[:, :n, :n] = P + C_O.transpose(-1, -2) @ RC_O
    system[:, :n, n:] = -C_O.transpose(-1, -2)
    system[:, n:, :n] = 2 * JRC_O - RC_O
    # -J on the rows O, and on the padding -1: the padding's equations c = 0
    system[:, n:, n:] = jacobian.submatrix(index, valid, work).neg_()
    system[:, n:, n:].diagonal(dim1=1, dim2=2).sub_((~valid).to(work))
    top = system[:, :n]
    top.masked_fill_(free.unsqueeze(-1), 0.0)  # row j of a free variable: t_j = 0
    top.diagonal(dim1=1, dim2=2).add_(free.to(work))
    factor, pivots, info = torch.linalg.lu_factor_ex(system)
    regular = (info == 0).unsqueeze(-1)

    def solve(
        g_x: torch.Tensor, g_v: torch.Tensor, rough: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = g_x.dtype
        g_x, g_v = g_x.to(work), g_v.to(work)
        g_I = torch.where(identity, g_v, 0.0)
        top = torch.where(free, 0.0, g_x + rmatvec(C, g_I))
        rhs = torch.cat([top, -g_v.gather(1, index) * valid], -1).unsqueeze(-1)
        tc = torch.linalg.lu_solve(factor, pivots, rhs).squeeze(-1)
        tc = torch.where(regular & torch.isfinite(tc), tc, 0.0)
        t, c_O = tc[:, :n], tc[:, n:]
        c = matvec(RC, t) + g_I  # c_I = R_I C_I t + g_v,I
        c = c.scatter(1, index, torch.where(valid, c_O, c.gather(1, index)))
        return (sigma * t + g_x).to(dtype), c.to(dtype)

    return solve


def _free_variables(P: torch.Tensor, C: torch.Tensor, identity_rows: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` bool: the variables with no entry in P that appear only in the rows
    ``identity_rows`` ``(B, m)`` (module docstring)."""
    in_P = (P != 0).any(-2)  # (1|B, n)
    nonzero = (C != 0).to(C.dtype)
    elsewhere = rmatvec(nonzero, (~identity_rows).to(C.dtype)) > 0  # (B, n)
    return ~(in_P | elsewhere)
