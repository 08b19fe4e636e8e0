"""A primal-dual interior-point solve: where ADMM stalls, an exact solution by Newton steps.

ADMM converges linearly at a rate set by the problem's conditioning; on badly scaled
LPs (much of Maros-Meszaros) it runs for tens of thousands of iterations. An
interior-point method needs a few dozen Newton steps whatever the scaling, each a
factorization of the KKT matrix with a per-row diagonal:

    [[P + delta I, C'], [C, -diag(d)]] [dx; dy] = [r_x; r_y],

d = delta on the equality rows and ``s / lambda`` on the inequality rows (slack over
multiplier). This is Mehrotra's predictor-corrector method on
``min 1/2 x'Px + q'x s.t. A x = b, G x + s = h, s >= 0`` (the stacked data
``C = [A; G]``, ``bound = [b; h]``), with the regularization ``delta`` removed by
iterative refinement against the unregularized system. It runs on the solver's scaled
data; its solution, loaded into the ADMM iterate, is checked by the same residuals as
every other (the Alt-Diff backward needs only the fixed point, which an exact solution
is). Dense data factor the KKT matrix reduced to ``n + n_eq`` rows by LU; sparse data
the whole quasi-definite matrix by the sparse LDL' of `linsys.sparse_kkt`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ._batched_sparse import BatchedSparse
from ._errors import SolverError
from ._qp import QPData, matvec, rmatvec
from .linsys.sparse_kkt import KKTFactor
from .linsys.systems import kkt_blocks, sparse_P

__all__ = [
    "INTERIOR_POINT_OPERATIONS",
    "MAX_STEPS",
    "TYPICAL_STEPS",
    "InteriorPointResult",
    "interior_point_flops",
    "interior_point_solve",
]

#: Newton steps after which an instance that has not converged is given up.
MAX_STEPS = 80
#: Newton steps a solve takes on the problems it solves (a few dozen, nearly
#: independent of size and scaling): what the price of an attempt assumes.
TYPICAL_STEPS = 30
#: The regularization of the KKT matrix (the data are scaled to unit norms).
_DELTA = 1e-9
_REFINE_STEPS = 2
#: Newton steps an instance takes after the first that meets the tolerances.
_EXTRA_NEWTON_STEPS = 2
#: Tensor operations of one Newton step (two solves with refinement, the residuals).
INTERIOR_POINT_OPERATIONS = 120
_STEP_FRACTION = 0.99


def interior_point_flops(n: int, n_eq: int, m: int) -> float:
    """Operations of one Newton step of one dense instance: forming ``G' D G`` and
    the LU factorization of the reduced ``(n + n_eq)`` system."""
    return 2 * n * n * (m - n_eq) + 2 / 3 * (n + n_eq) ** 3


class InteriorPointResult(NamedTuple):
    """``x (K, n)``, ``z, y (K, m)`` in ADMM's form (``z`` the constraint values on
    their box, ``y`` the multipliers, zero on inactive rows) and ``(K,)`` whether each
    instance met the tolerance."""

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    converged: torch.Tensor


class _DenseKKT:
    """The KKT systems of dense data, reduced over the inequality rows and factored by
    LU (the reduced matrix is symmetric indefinite)."""

    def __init__(self, data: QPData) -> None:
        self.n, self.n_eq = data.n, data.n_eq
        K, n = data.batch_size, data.n
        self.P = data.P.expand(K, n, n)
        self.A = data.C[:, : self.n_eq].expand(K, self.n_eq, n)
        self.G = data.C[:, self.n_eq :].expand(K, -1, n)

    def factor(self, d: torch.Tensor) -> torch.Tensor:
        """Factor at the diagonal ``d`` ``(K, m)``; ``(K,)`` whether each factored."""
        n, n_eq = self.n, self.n_eq
        self.d = d
        eye = torch.eye(n, dtype=d.dtype, device=d.device)
        G_scaled = self.G / d[:, n_eq:, None]
        H = self.P + _DELTA * eye + self.G.transpose(1, 2) @ G_scaled
        if n_eq:
            bottom = torch.cat([self.A, -torch.diag_embed(d[:, :n_eq])], 2)
            top = torch.cat([H, self.A.transpose(1, 2)], 2)
            H = torch.cat([top, bottom], 1)
        self.lu = torch.linalg.lu_factor_ex(H)
        return self.lu.info == 0

    def solve(self, r_x: torch.Tensor, r_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_eq, d = self.n_eq, self.d
        r_in = r_y[:, n_eq:] / d[:, n_eq:]
        top = r_x + rmatvec(self.G, r_in)
        rhs = torch.cat([top, r_y[:, :n_eq]], 1).unsqueeze(-1)
        sol = torch.linalg.lu_solve(self.lu.LU, self.lu.pivots, rhs).squeeze(-1)
        dx = sol[:, : self.n]
        dy_in = matvec(self.G, dx) / d[:, n_eq:] - r_in
        return dx, torch.cat([sol[:, self.n :], dy_in], 1)


class _SparseKKT:
    """The KKT systems of sparse data: one sparse LDL' per instance, refactored on the
    pattern's symbolic analysis at every step (on the CPU, in float64)."""

    def __init__(self, data: QPData) -> None:
        assert isinstance(data.C, BatchedSparse)
        self.P, self.C = sparse_P(data), data.C
        self.count = data.batch_size
        self.factors: list[KKTFactor | None] = [None] * self.count

    def _matrices(self, i: int) -> tuple[sp.csc_array, sp.csr_array]:
        return kkt_blocks(self.P, self.C, i)

    def factor(self, d: torch.Tensor) -> torch.Tensor:
        """Factor at the diagonal ``d`` ``(K, m)``; ``(K,)`` whether each factored (a
        matrix that rounding made lose its quasi-definiteness does not)."""
        values = d.detach().cpu().double().numpy()
        ok = np.ones(self.count, dtype=bool)
        for i in range(self.count):
            factor = self.factors[i]
            try:
                if factor is None:
                    self.factors[i] = KKTFactor(*self._matrices(i), _DELTA, values[i])
                else:
                    factor.refactor(values[i])
            except SolverError:
                # The dense complement of long rows is the first to lose definiteness
                # to rounding as s / lambda spreads; one LDL' of the whole matrix holds.
                self.factors[i] = None
                if factor is None or factor.engine != "qdldl":
                    with contextlib.suppress(SolverError):
                        self.factors[i] = KKTFactor(
                            *self._matrices(i), _DELTA, values[i], engine="qdldl"
                        )
                ok[i] = self.factors[i] is not None
        return torch.from_numpy(ok).to(d.device)

    def solve(self, r_x: torch.Tensor, r_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rx, ry = r_x.cpu().double().numpy(), r_y.cpu().double().numpy()
        dx, dy = np.full_like(rx, np.nan), np.full_like(ry, np.nan)
        for i, factor in enumerate(self.factors):
            if factor is None:  # one that failed to factor gives NaN: it stops
                continue
            with contextlib.suppress(SolverError):  # a solve that overflowed, too
                dx[i : i + 1], dy[i : i + 1] = factor.solve_kkt(rx[i : i + 1], ry[i : i + 1])
        # K [dx; dy] = [r_x; r_y] with the lower block -diag(d): dy is the multipliers'.
        return (
            torch.from_numpy(dx).to(r_x),
            torch.from_numpy(dy).to(r_x),
        )


def _max_step(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """``(K,)``: the largest step in [0, 1] keeping ``v + step * dv >= 0``."""
    ratio = torch.where(dv < 0, -v / dv, torch.full_like(v, torch.inf))
    if ratio.shape[-1] == 0:
        return torch.ones(v.shape[0], dtype=v.dtype, device=v.device)
    return ratio.amin(-1).clamp(max=1.0)


def interior_point_solve(
    data: QPData,
    accept: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> InteriorPointResult:
    """Solve the (scaled) float64 QPs of ``data`` (K instances).

    ``accept(x, z, y) -> (K,)`` is the caller's convergence test (in the user's
    units); an instance takes `_EXTRA_NEWTON_STEPS` more steps after the first point it
    accepts and returns the last accepted one. Those that it never accepts in
    `MAX_STEPS` steps, or whose Newton system turns singular (infeasible,
    unbounded, or numerically out of reach), come back with ``converged = False``.
    """
    if data.q.dtype != torch.float64:
        raise ValueError("the interior-point solve needs float64 data")
    dtype = torch.float64
    P, q, C, bound, n_eq = data.P, data.q, data.C, data.bound, data.n_eq
    K, n, m = data.batch_size, data.n, bound.shape[-1]  # q, bound may be shared
    bound = bound.expand(K, m)
    kkt = _SparseKKT(data) if isinstance(C, BatchedSparse) else _DenseKKT(data)
    # Mehrotra's start (as CVXOPT's): the least-squares point of the KKT system with a
    # unit diagonal on the inequality rows, s = h - G x and lambda = G x - h, each moved
    # into the interior. Not ADMM's iterate: where ADMM stalls it can be a start from
    # which the iterates diverge (the LP QSHARE1B, at ADMM's 130th iteration; from its
    # least-squares point they converge). An instance whose matrix does not factor here
    # gets a non-finite start and is given up at the first step.
    diagonal = torch.ones(K, m, dtype=dtype, device=q.device)
    diagonal[:, :n_eq] = _DELTA
    kkt.factor(diagonal)
    x, y = kkt.solve(-q.expand(K, n), bound)
    nu, h = y[:, :n_eq], bound[:, n_eq:]
    s = h - matvec(C, x)[:, n_eq:]
    lam = -s
    if m > n_eq:
        s = s + (-1.5 * s.amin(-1, keepdim=True)).clamp_min(0)
        lam = lam + (-1.5 * lam.amin(-1, keepdim=True)).clamp_min(0)
    s, lam = s + 1e-2, lam + 1e-2
    product = (s * lam).sum(-1, keepdim=True)
    s = s + 0.5 * product / lam.sum(-1, keepdim=True).clamp_min(1e-300)
    lam = lam + 0.5 * product / s.sum(-1, keepdim=True).clamp_min(1e-300)
    m_in = max(m - n_eq, 1)
    converged = torch.zeros(K, dtype=torch.bool, device=q.device)
    alive = torch.ones_like(converged)

    def residual(x, nu, s, lam):
        y = torch.cat([nu, lam], 1)
        r_d = matvec(P, x) + q + rmatvec(C, y)
        Cx = matvec(C, x)
        r_p = Cx - bound
        r_p = torch.cat([r_p[:, :n_eq], r_p[:, n_eq:] + s], 1)
        return r_d, r_p

    def newton(r_d, r_p, r_c):
        """The Newton direction of the residuals with the complementarity target
        ``r_c``, refined against the unregularized system."""
        r_x, r_y = -r_d, torch.cat([-r_p[:, :n_eq], -r_p[:, n_eq:] + r_c / lam], 1)
        dx, dy = kkt.solve(r_x, r_y)
        d_true = torch.cat([torch.zeros_like(nu), s / lam], 1)
        for _ in range(_REFINE_STEPS):
            # the residual of [[P, C'], [C, -diag(d_true)]] [dx; dy] = [r_x; r_y]
            e_x = r_x - matvec(P, dx) - rmatvec(C, dy)
            e_y = r_y - matvec(C, dx) + d_true * dy
            ex, ey = kkt.solve(e_x, e_y)
            dx, dy = dx + ex, dy + ey
        return dx, dy[:, :n_eq], dy[:, n_eq:]

    def admm_form(x, nu, lam):
        """The point as ADMM's ``(x, z, y)`` at a fixed point: a row is active where its
        multiplier outweighs its slack (then z is on its bound), and an inactive row's
        multiplier is exactly zero (the Alt-Diff backward reads D from it)."""
        Cx = matvec(C, x)
        active = lam > bound[:, n_eq:] - Cx[:, n_eq:]
        z_in = torch.where(active, bound[:, n_eq:], torch.minimum(Cx[:, n_eq:], bound[:, n_eq:]))
        y_in = torch.where(active, lam, torch.zeros_like(lam))
        return x, torch.cat([bound[:, :n_eq], z_in], 1), torch.cat([nu, y_in], 1)

    # The latest point each instance's test accepted, and how many steps it has taken
    # since its first: a few more steps, at the method's fast final rate, take it far
    # below the tolerances (the polish that follows cannot, where the solution is not
    # unique in variables the output does not see).
    best_x, best_nu, best_lam = x, nu, lam
    refined = torch.zeros(K, dtype=torch.int64, device=q.device)
    finished = torch.zeros_like(converged)  # given up, or converged and refined
    for step_count in range(MAX_STEPS + _EXTRA_NEWTON_STEPS + 1):
        accepted = alive & ~finished & accept(*admm_form(x, nu, lam))
        best_x, best_nu, best_lam = (
            torch.where(accepted[:, None], new, kept)
            for new, kept in zip((x, nu, lam), (best_x, best_nu, best_lam))
        )
        refined = refined + (converged & accepted)
        lost = converged & ~accepted  # a step lost the tolerances: the point before
        converged = converged | accepted
        finished = (
            finished
            | ~alive
            | lost
            | (converged & (refined >= _EXTRA_NEWTON_STEPS))
            | (~converged & (step_count >= MAX_STEPS))
        )
        if bool(finished.all()):
            break
        r_d, r_p = residual(x, nu, s, lam)
        mu = (s * lam).sum(-1) / m_in
        # Not clamped: s / lambda spans many orders of magnitude near the solution, and
        # the refinement converges only on a matrix close to the unregularized one.
        tiny = torch.finfo(dtype).tiny  # no 0 / 0 where both vanish in rounding
        d = torch.cat([torch.full_like(nu, _DELTA), s.clamp_min(tiny) / lam.clamp_min(tiny)], 1)
        alive = alive & kkt.factor(d)
        # Predictor (affine scaling), then the corrector with Mehrotra's centering.
        dx, dnu, dlam = newton(r_d, r_p, s * lam)
        ds = -r_p[:, n_eq:] - matvec(C, dx)[:, n_eq:]
        step = torch.minimum(_max_step(s, ds), _max_step(lam, dlam))[:, None]
        mu_aff = ((s + step * ds) * (lam + step * dlam)).sum(-1) / m_in
        sigma = (mu_aff / mu.clamp_min(1e-300)).clamp(0, 1) ** 3
        target = s * lam + ds * dlam - (sigma * mu)[:, None]
        dx, dnu, dlam = newton(r_d, r_p, target)
        ds = -r_p[:, n_eq:] - matvec(C, dx)[:, n_eq:]
        step = _STEP_FRACTION * torch.minimum(_max_step(s, ds), _max_step(lam, dlam))
        # Instances whose direction is not finite (a singular system) stop where they are.
        finite = torch.isfinite(torch.cat([dx, dnu, dlam, ds, step[:, None]], 1)).all(-1)
        alive = alive & finite
        step = torch.where(finished | ~alive, torch.zeros_like(step), step)[:, None]
        x, nu = x + step * torch.nan_to_num(dx), nu + step * torch.nan_to_num(dnu)
        s, lam = s + step * torch.nan_to_num(ds), lam + step * torch.nan_to_num(dlam)

    return InteriorPointResult(*admm_form(best_x, best_nu, best_lam), converged)
