"""Batched ADMM for ``min 1/2 x'Px + q'x  s.t.  Cx = z,  z in [l, u]``.

The constraints ``Ax = b`` and ``Gx <= h`` are stacked into ``C = [A; G]`` with bound
``[b; h]``: the first ``n_eq`` rows of z are pinned to b, the others are clipped at h,
except the rows of second-order cones (``QPData.cone_sizes``), where ``h - z`` is
projected onto the cones.
With relaxation ``alpha = 1`` the iteration is the slack-form ADMM of DESIGN section 3
(``z = h - s``, ``y = [lambda; nu]``); ``alpha > 1`` over-relaxes it as OSQP does. Each
row has its own penalty (equality rows a thousand times stiffer), and rho follows the
ratio of the primal and dual residuals, on a grid of values (shared with a layer's
cache of factors), refactoring H only when it moves by more than a factor of five.

The solver runs on Ruiz-scaled data but measures residuals and certificates in the
user's units, so tolerances mean what they say. Every ``check_every`` iterations it
tests, per instance, convergence and the primal and dual infeasibility certificates of
OSQP (Banjac et al., 2019): a converging difference of multipliers ``dy`` with
``C'dy = 0`` and ``b'dy_eq + h'dy_ineq < 0`` proves ``Ax = b, Gx <= h`` empty; a
difference of iterates ``dx`` with ``P dx = 0``, ``q'dx < 0``, ``A dx = 0``,
``G dx <= 0`` proves the objective unbounded below.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import torch

from ._admm_iterate import AdmmIterate
from ._batched_sparse import BatchedSparse
from ._cone_polish import cone_polish, face_estimate
from ._cones import SecondOrderCones
from ._costs import (
    CONE_STEP_OPERATIONS,
    FACE_POLISH_OPERATIONS,
    GENERAL_POLISH_OPERATIONS,
    SHARED_POLISH_OPERATIONS,
    SHARED_SETUP_OPERATIONS,
    STEP_OPERATIONS,
    PolishBudget,
    Rates,
    face_polish_flops,
    general_polish_flops,
    measured_rates,
    shared_polish_flops,
    step_flops,
    timed,
)
from ._forward_choice import ForwardChoice, ForwardCosts
from ._free_variables import FreeVariables
from ._interior_point import (
    INTERIOR_POINT_OPERATIONS,
    TYPICAL_STEPS,
    interior_point_flops,
    interior_point_solve,
)
from ._polish import (
    SHARED_REFINE_STEPS,
    SharedPolisher,
    active_set,
    contradicted_rows,
    polish,
)
from ._qp import Matrix, QPData, matvec, rmatvec, select_rows
from ._scaling import Scaling
from ._settings import SolverSettings
from ._sparse_polish import sparse_polish
from .linsys.cholesky import CholeskyFactor
from .linsys.factor_cache import FactorCache, quantize_rho
from .linsys.systems import Factor, linear_systems, penalty_rows
from .linsys.woodbury import MajoritySystems

if TYPE_CHECKING:
    from ._altdiff import ForwardTangents

__all__ = [
    "DUAL_INFEASIBLE",
    "MAX_ITER",
    "PRIMAL_INFEASIBLE",
    "SOLVED",
    "SOLVED_INACCURATE",
    "STATUS_NAMES",
    "Residuals",
    "SolveResult",
    "WarmStart",
    "admm_solve",
    "solve_rates",
]

STATUS_NAMES = ("solved", "solved_inaccurate", "max_iter", "primal_infeasible", "dual_infeasible")
SOLVED, SOLVED_INACCURATE, MAX_ITER, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE = range(5)

_RHO_MIN, _RHO_MAX = 1e-6, 1e6
_RHO_UPDATE_FACTOR = 5.0
_INACCURATE_FACTOR = 10.0
_TINY = 1e-30
# Every unfinished instance polishes at 100, 200, 400, ... iterations (whatever its
# estimate), as budgets allow.
_ALWAYS_FIRST = 100
_SETTLING_ROWS = 0.015  # fraction of rows an estimate may still change in, to polish
# A failed polish retries on its corrected estimate up to this many times, where the
# polished point contradicts its estimate in few rows (`contradicted_rows`), as the
# polishing budget allows. On the seeded QP suite (eps 1e-5) this took the median
# from 60 ADMM iterations to 40 and each solve's time by about a quarter;
# more rounds, or any number of rows, cost more polishes than they saved. A batch
# sharing its data retries through `SharedPolisher` on the failed instances only.
_CORRECTIONS = 4
# The loop drops the finished instances once no more than this fraction is unfinished.
_COMPACT_FRACTION = 0.75


@dataclass
class SolveResult:
    """What the forward solve leaves for the caller and for the backward pass.

    All iterates are in the solver's (scaled) units.

    Attributes:
        x: ``(B, n)`` primal solution.
        z: ``(B, m)`` projected constraint values ``Cx`` (``[b; h - s]``).
        y: ``(B, m)`` multipliers ``[lambda; nu]``.
        rho: ``(1|B,)`` final penalty of the inequality rows.
        rho_rows: ``(1|B, m)`` per-row penalty of the final iteration.
        factor: Cholesky factor of ``H = P + sigma*I + C' diag(rho_rows) C``.
        status: ``(B,)`` int64 codes into ``STATUS_NAMES``.
        iterations: ``(B,)`` iterations each instance took.
        primal_residual: ``(B,)`` ``||Cx - z||_inf`` in the user's units.
        dual_residual: ``(B,)`` ``||Px + q + C'y||_inf`` in the user's units.
        primal_tolerance, dual_tolerance: ``(B,)`` what those were tested against at
            the returned iterate (``eps_abs + eps_rel * scale``).
        solve_time: Wall-clock seconds of the solve.
        rates: What the solve measured (`_costs.Rates`): the backward's cost model.
        polish_systems: The systems ``(R S - D_i)`` that the last polish of the whole
            batch solved, on each instance's last polished estimate
            (`_polish.SharedPolisher`), or None. The direct backward solves the same
            systems where the final active sets are those estimates.
        polish_factor: The factor of H whose memo holds the shared polish's data that
            the backward may use, where it is not ``factor`` (a layer's factor kept for
            polishing, of another rho), else None.
        polish_rows: ``(1, m)`` the per-row penalty of ``polish_factor``, or None.
    """

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor
    rho_rows: torch.Tensor
    factor: Factor
    status: torch.Tensor
    iterations: torch.Tensor
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor
    primal_tolerance: torch.Tensor
    dual_tolerance: torch.Tensor
    solve_time: float
    rates: Rates | None = None
    polish_systems: MajoritySystems | None = None
    polish_factor: CholeskyFactor | None = None
    polish_rows: torch.Tensor | None = None


@dataclass(frozen=True)
class WarmStart:
    """A starting point in the solver's units: ``x (B, n)``, ``z, y (B, m)``, ``rho``."""

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor


def inf_norm(v: torch.Tensor) -> torch.Tensor:
    """Infinity norm over the last dimension (0 for an empty one)."""
    if v.shape[-1] == 0:
        return v.new_zeros(v.shape[:-1])
    return v.abs().amax(dim=-1)


class _Reference(NamedTuple):
    """An iterate ``x`` ``(B, n)``, ``y`` ``(B, m)`` and its products in the user's units
    ``Px``, ``Cx``, ``C'y``: what the certificates compare the next check with."""

    x: torch.Tensor
    y: torch.Tensor
    Px: torch.Tensor
    Cx: torch.Tensor
    Cty: torch.Tensor


class Residuals:
    """Residuals, tolerances and certificates of one check, in the user's units.

    `measure` keeps the products ``Px``, ``Cx`` and ``C'y`` of the checked iterate;
    `remember` makes them the reference of the next check. The certificates test the
    differences ``dx``, ``dy`` between two checks, whose products are then differences
    of kept ones: on a diverging iteration they point, like OSQP's one-step
    differences, along the certificate (the tests below are invariant to their scale),
    and they cost no product with the data.
    """

    def __init__(self, data: QPData, scaling: Scaling, settings: SolverSettings) -> None:
        self.data, self.scaling, self.settings = data, scaling, settings
        self.C = data.C
        self.bound = data.bound
        self.eps_abs, self.eps_rel = settings.tolerances(data.q.dtype)
        self.n_eq = data.n_eq
        s = scaling
        self.inv_E, self.inv_D, self.inv_c = 1 / s.E, 1 / s.D, 1 / s.c[:, 0]
        self.q_user = data.q * self.inv_D
        self.previous: _Reference | None = None
        self._norms: _DataNorms | None = None

    def measure(
        self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, Cx: torch.Tensor | None = None
    ) -> None:
        """Residuals of ``x`` ``(B, n)``, ``z``, ``y`` ``(B, m)`` (scaled units); ``Cx``
        ``(B, m)``: the product ``C x``, where the caller has it."""
        data, inv_D, inv_c = self.data, self.inv_D, self.inv_c
        self.x, self.y = x, y
        Px = matvec(data.P, x)
        self.Cx = (matvec(self.C, x) if Cx is None else Cx) * self.inv_E
        self.Px = Px * inv_D
        self.Cty = rmatvec(self.C, y) * inv_D
        z_user = z * self.inv_E
        self.primal = inf_norm(self.Cx - z_user)
        self.dual = inf_norm(self.Px + self.q_user + self.Cty) * inv_c
        self.primal_scale = torch.maximum(inf_norm(self.Cx), inf_norm(z_user))
        dual_scale = torch.maximum(inf_norm(self.Px), inf_norm(self.Cty))
        self.dual_scale = torch.maximum(dual_scale, inf_norm(self.q_user)) * inv_c
        self.primal_tol = self.eps_abs + self.eps_rel * self.primal_scale
        self.dual_tol = self.eps_abs + self.eps_rel * self.dual_scale
        # Duality gap x'Px + q'x + b'lambda + h'nu (zero at a KKT point), user units.
        quadratic = (x * Px).sum(-1) * inv_c
        linear = (data.q * x).sum(-1) * inv_c
        support = (self.bound * y).sum(-1) * inv_c
        self.gap = (quadratic + linear + support).abs()
        gap_scale = torch.maximum(torch.maximum(quadratic.abs(), linear.abs()), support.abs())
        self.gap_tol = self.eps_abs + self.eps_rel * gap_scale

    def select(self, index: torch.Tensor) -> Residuals:
        """The residuals of the instances ``index`` ``(K,)``, with their reference."""
        selected = Residuals(self.data.select(index), self.scaling.select(index), self.settings)
        selected.previous = _Reference(*(value[index] for value in self.previous))
        return selected

    def start(
        self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, Cx: torch.Tensor | None = None
    ) -> None:
        """Remember the starting point as the reference of the first check (``Cx`` as in
        `measure`)."""
        if bool(x.any()) or bool(y.any()):
            self.measure(x, z, y, Cx)
        else:  # a cold start: every product is zero
            self.x, self.y, self.Px, self.Cty = x, y, torch.zeros_like(x), torch.zeros_like(x)
            self.Cx = torch.zeros_like(y)
        self.remember()

    def remember(self) -> None:
        """Make the last measured iterate the reference of the certificates."""
        self.previous = _Reference(self.x.clone(), self.y, self.Px, self.Cx, self.Cty)

    def converged(self, factor: float = 1.0) -> torch.Tensor:
        return (
            (self.primal <= factor * self.primal_tol)
            & (self.dual <= factor * self.dual_tol)
            & (self.gap <= factor * self.gap_tol)
        )

    def dual_resolved(self) -> torch.Tensor:
        """``(B,)`` whether the last measured dual residual can be told at the dual
        tolerance: the rounding of its terms, about eps ``|| |C'| |y| ||`` in the
        user's units, is at most a tenth of it. Multipliers of dependent active rows
        (not unique) can be huge and cancel in ``C'y``, and their residual is then
        rounding only (Maros-Meszaros' QPCBOEI1: terms of 1.1e10 left 1.9e-6 against
        a tolerance of 1e-6)."""
        terms = rmatvec(_absolute(self.C), self.y.abs()) * self.inv_D
        rounding = torch.finfo(terms.dtype).eps * inf_norm(terms) * self.inv_c
        return 10 * rounding <= self.dual_tol

    def rho_ratio(self) -> torch.Tensor:
        """OSQP's estimate of how much rho should grow (squared), from the residuals in
        the user's units. (OSQP's own rule uses those of the scaled problem: 1.6-4.6x
        fewer iterations on the two slowest LPs of the test suite, but perturbed LPs in
        the property tests then run to max_iter; kept the rule that passes both.)"""
        primal = self.primal / self.primal_scale.clamp_min(_TINY)
        dual = self.dual / self.dual_scale.clamp_min(_TINY)
        return (primal / dual.clamp_min(_TINY)).clamp_min(_TINY)

    def data_norms(self) -> _DataNorms:
        """The data's norms in the user's units (computed once, at the first candidate
        certificate: most solves never need them)."""
        if self._norms is None:
            data, inv_D = self.data, self.inv_D
            # |M_user| 1 for M_user = S_row^-1 M_scaled D^-1: |M_scaled| (1 / D), row-scaled.
            P_rows = matvec(_absolute(data.P), inv_D.expand(data.batch_size, -1)) * inv_D
            C_rows = matvec(_absolute(self.C), inv_D.expand(data.batch_size, -1)) * self.inv_E
            C_cols = rmatvec(_absolute(self.C), self.inv_E.expand(data.batch_size, -1)) * inv_D
            self._norms = _DataNorms(inf_norm(P_rows) * self.inv_c, C_rows, C_cols)
        return self._norms

    def primal_infeasible(self) -> torch.Tensor:
        """Certificate test on ``dy`` ``(B, m)``, the change of the multipliers since the
        remembered check: ``C'dy = 0`` and ``bound'dy < 0`` over the multipliers' cone, in
        the user's units. Each holds to ``eps_prim_inf`` times ``||dy||``, and also to
        a tolerance scaled to the data where that is tighter: column by column by the
        column's norm for ``C'dy``, and for ``bound'dy`` by the size of its terms (a sum
        that cancels in rounding proves nothing)."""
        s, n_eq, eps = self.scaling, self.n_eq, self.settings.eps_prim_inf
        dy = self.y - self.previous.y
        # Multipliers of inequality rows lie in the dual cone (nonnegative; a
        # second-order cone is its own dual): keep the cone's part of dy.
        clamped = dy[:, n_eq:].clamp_min(0)
        cones = self.data.cones
        if cones is not None:
            clamped[:, -cones.rows :] = cones.project(dy[:, -cones.rows :])
        dy_cone = torch.cat([dy[:, :n_eq], clamped], dim=1)
        dy_user = s.E * dy_cone
        size = inf_norm(dy_user)
        terms = self.bound.expand_as(dy) * dy_cone
        support = terms.sum(-1)
        scale = torch.maximum(size, terms.abs().sum(-1))
        candidate = (size > _TINY) & (support <= -eps * scale)
        if not bool(candidate.any()):
            return candidate
        # C'dy of the unclamped dy is a difference of kept products; where the clamp
        # changed dy, the product is formed again.
        Ct_dy = self.Cty - self.previous.Cty
        removed = inf_norm(clamped - dy[:, n_eq:])
        if bool((removed > 0).any()):
            Ct_dy = rmatvec(self.C, dy_cone) * self.inv_D
        columns = self.data_norms().C_cols.clamp_max(1)
        return candidate & (Ct_dy.abs() <= eps * columns * size.unsqueeze(-1)).all(-1)

    def dual_infeasible(self) -> torch.Tensor:
        """Certificate test on ``dx`` ``(B, n)``, the change of the iterate since the
        remembered check: ``P dx = 0``, ``A dx = 0``, ``G dx <= 0`` and ``q'dx < 0`` in
        the user's units. Each holds to ``eps_dual_inf`` times ``||dx||``, and also to a
        tolerance scaled to the data where that is tighter (by ``||P||``, by each row's
        norm, and for ``q'dx`` by the size of its terms): on data of small norms an
        absolute tolerance would accept a direction that is no certificate."""
        s, n_eq, eps = self.scaling, self.n_eq, self.settings.eps_dual_inf
        before = self.previous
        dx = self.x - before.x
        size = inf_norm(s.D * dx)
        inv_c = self.inv_c
        terms = self.data.q * dx * inv_c.unsqueeze(-1)
        scale = torch.maximum(size, terms.abs().sum(-1))
        candidate = (size > _TINY) & (terms.sum(-1) <= -eps * scale)
        if not bool(candidate.any()):
            return candidate
        norms = self.data_norms()
        P_dx = inf_norm(self.Px - before.Px) * inv_c
        bound = eps * norms.C_rows.clamp_max(1) * size.unsqueeze(-1)
        C_dx = self.Cx - before.Cx
        eq_ok = (C_dx[:, :n_eq].abs() <= bound[:, :n_eq]).all(-1)
        # G dx in minus the inequalities' cone: nonpositive on the clipped rows, within
        # the second-order cones' negatives on theirs.
        outside = C_dx[:, n_eq:].clamp_min(0)
        cones = self.data.cones
        if cones is not None:
            cone_dx = C_dx[:, -cones.rows :]
            outside[:, -cones.rows :] = (cone_dx + cones.project(-cone_dx)).abs()
        ineq_ok = (outside <= bound[:, n_eq:]).all(-1)
        return candidate & (P_dx <= eps * norms.P.clamp_max(1) * size) & eq_ok & ineq_ok


class _DataNorms(NamedTuple):
    """The data's norms in the user's units, which tighten the certificates' tolerances:
    ``||P||_inf`` ``(B,)``, the 1-norms of the rows ``(B, m)`` and of the columns
    ``(B, n)`` of ``C``."""

    P: torch.Tensor
    C_rows: torch.Tensor
    C_cols: torch.Tensor


def _absolute(M: Matrix) -> Matrix:
    """``|M|`` entrywise."""
    if isinstance(M, BatchedSparse):
        return M.with_values(M.values.abs())
    return M.abs()


def solve_rates(
    factor: Factor, n: int, m: int, batch: int, step_seconds: float, cones: bool = False
) -> Rates:
    """The rates a solve measured: its factorization's and its steps' (one step of
    ``batch`` instances in ``step_seconds``, with a projection onto second-order cones
    where ``cones``); see `_costs.measured_rates`."""
    operations = STEP_OPERATIONS + (CONE_STEP_OPERATIONS if cones else 0)
    flops = batch * step_flops(n, m)
    return measured_rates(factor.flops, factor.seconds, flops, step_seconds, operations)


class _PolishPlan:
    """Which unfinished instances polish at a check.

    A polish costs a factorization per instance (with shared data, maybe less: see
    `_polish_instances`); it runs where the `PolishBudget` affords it: polishing spends
    at most as much time as the iterations have, measured as the solve runs. On small
    problems that is every check from the second (ADMM finds the active set long before
    its residuals are small, and a polish ends the solve there); on large ones the
    attempts space themselves by their measured cost. The unfinished instances polish
    unless their active-set estimate is the one of their last failed attempt (it would
    fail again); where the budget does not afford them all, only those whose estimate
    has nearly settled since the previous check (a moving estimate is most likely
    wrong). At 100, 200, 400, ... iterations a failed estimate may polish again, and at
    ``max_iter`` every unfinished instance polishes, whatever the budget.
    """

    def __init__(
        self, settings: SolverSettings, budget: PolishBudget, cones: SecondOrderCones | None
    ) -> None:
        check, max_iter = settings.check_every, settings.max_iter
        self.enabled = settings.polish
        self.cones = cones
        self.max_iter, self.budget = max_iter, budget
        first = max(check, _ALWAYS_FIRST // check * check)
        self.always_at = {first * 2**j for j in range(64) if first * 2**j < max_iter}
        self.previous: torch.Tensor | None = None
        self.failed: torch.Tensor | None = None

    def candidates(
        self,
        k: int,
        z: torch.Tensor,
        y: torch.Tensor,
        bound: torch.Tensor,
        n_eq: int,
        pending: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(B,)`` mask of instances to polish at iteration k (None: none), and
        the ``(B, m)`` active-set estimate."""
        if not self.enabled:
            return None
        if self.cones is None:
            estimate = active_set(z, y, bound, n_eq)
        else:
            estimate = face_estimate(z, y, bound, n_eq, self.cones)
        previous, self.previous = self.previous, estimate
        if k == self.max_iter:
            chosen = pending
        elif previous is None:
            return None  # the first estimate: nothing to say whether it has settled
        else:
            chosen = pending
            # (A face's polish starts Newton's method from the iterate, so a later
            # iterate on the same estimate may succeed; but where it fails, it mostly
            # fails again until the estimate moves: the retries at ``always_at`` remain.)
            if k not in self.always_at and self.failed is not None:
                chosen = chosen & ~(estimate == self.failed).all(-1)
            if not self.budget.affords(int(chosen.sum())):
                # Not all: those whose estimate has nearly settled. A polish mostly
                # succeeds once an instance's estimate moves in no more than ~1% of the
                # rows between checks, and mostly fails before.
                changed = (estimate != previous).sum(-1)
                chosen = chosen & (changed <= max(2, _SETTLING_ROWS * estimate.shape[1]))
                if not self.budget.affords(int(chosen.sum())):
                    return None
        if not bool(chosen.any()):
            return None
        return chosen, estimate

    def most_active_rows(self) -> int | None:
        """The most rows the latest estimate makes active in an instance (None before
        the first): what sets the size of the largest system a polish solves."""
        if self.previous is None or not self.previous.numel():
            return None
        return int(self.previous.sum(-1).amax())

    def select(self, index: torch.Tensor) -> None:
        """Keep the estimates of the instances ``index`` ``(K,)`` only."""
        if self.previous is not None:
            self.previous = self.previous[index]
        if self.failed is not None:
            self.failed = self.failed[index]

    def record_failures(self, tried: torch.Tensor, estimate: torch.Tensor) -> None:
        """Remember the estimate of the instances whose attempt ``tried`` failed."""
        if self.failed is None:
            self.failed = torch.zeros_like(estimate)
        self.failed = torch.where(tried.unsqueeze(-1), estimate, self.failed)


def _try_polish(
    data: QPData,
    residuals: Residuals,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    pending: torch.Tensor,
    active: torch.Tensor,
    shared: tuple[SharedPolisher, CholeskyFactor, torch.Tensor, float, Rates] | None = None,
    budget: PolishBudget | None = None,
    corrections: int = _CORRECTIONS,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, MajoritySystems | None]:
    """Polish the pending instances on their active-set estimate ``active`` ``(B, m)``;
    keep each polished point only if it converged.

    A polished point that misses the tolerance names the rows its estimate got wrong:
    the inactive rows it violates and the active rows whose multiplier came out
    negative. Where those are few, the instance polishes again on the corrected
    estimate (a primal-dual active-set step), up to ``corrections`` times: one wrong row
    would otherwise cost the ADMM iterations until its iterate sorts it out. Sparse
    data's polish makes its own active-set rounds instead. The attempt's time, its
    corrections included, is charged to ``budget``.

    ``shared`` is the polisher of a batch with shared float64 data, with the current
    factor of H, per-row penalty and sigma; the general `polish` serves the others
    and the batches whose majority system it cannot solve. Of the ``hidden`` ``(n,)``
    variables (no output reads them), those an estimate leaves free are pinned
    (`_free_variables`): on dense data each estimate polishes with their pin rows.

    On return ``residuals`` describes the returned iterates. Also returns the ``(B,)``
    mask of the polished points kept, and where the shared polisher polished every
    instance, the systems it solved on each instance's last estimate (None otherwise).
    """
    n_eq = data.n_eq
    accept = torch.zeros_like(pending)
    x_new, z_new, y_new = x.clone(), z.clone(), y.clone()
    tried, estimate = pending, active
    systems = None
    if budget is None:  # unlimited
        budget = PolishBudget(lambda _: 0.0)
        budget.iterating = math.inf
    # sparse data's polish makes its own rounds; a cone's face has no row to correct
    dense = not data.sparse and data.cones is None
    corrections = corrections if dense else 0
    spent = 0.0
    pinned = torch.zeros_like(estimate)
    with timed() as clock:
        pinning = dense and hidden is not None
        free_variables = FreeVariables.of(data.P, data.C, n_eq, hidden) if pinning else None
    spent += clock.seconds
    for correction in range(corrections + 1):
        index = torch.nonzero(tried).flatten()
        with timed() as clock:
            if data.sparse:
                xp, zp, yp, ok = _polish_sparse(data, residuals, x, z, y, index)
                solved = None
            elif data.cones is not None:
                xp, zp, yp, ok = _polish_faces(data, x, y, index, estimate[index])
                solved = None
            else:
                if free_variables is not None:
                    pinned[index] = _pins(free_variables, data.q, estimate, index)
                estimates = (estimate | pinned)[index]
                polished = _polish_instances(data, x, y, index, estimates, shared)
                xp, zp, yp, ok, solved = polished
            ok_any = bool(ok.any())  # waits for a device's work: it is timed
        x_new[index], z_new[index], y_new[index] = xp, zp, yp
        if correction == 0:
            systems = solved if index.shape[0] == pending.shape[0] else None
        elif systems is not None and solved is not None:
            systems = systems.merged(index, solved)
        else:
            systems = None
        Cx = matvec(data.C, x_new)
        residuals.measure(x_new, z_new, y_new, Cx)
        spent += clock.seconds
        accept[index] = ok
        accept = accept & residuals.converged()
        if correction == corrections:
            break
        # The rows the polished points contradict: violated inactive inequality rows,
        # active inequality rows with a zero (clamped negative) multiplier.
        contradicted, correctable = contradicted_rows(
            estimate | pinned, y_new, Cx, data.bound, n_eq, pinned
        )
        solvable = torch.zeros_like(pending)
        solvable[index] = ok
        tried = tried & solvable & ~accept & correctable
        if not ok_any or not bool(tried.any()):
            break
        estimate = estimate ^ contradicted
    # One attempt, its corrections included, against the budget.
    budget.spend(spent, int(pending.sum()), int(accept.sum()))
    if not bool((pending & ~accept).any()):
        # Every polished point was kept: the last measure describes them already.
        return x_new, z_new, y_new, accept, systems
    x = torch.where(accept[:, None], x_new, x)
    z = torch.where(accept[:, None], z_new, z)
    y = torch.where(accept[:, None], y_new, y)
    residuals.measure(x, z, y)
    return x, z, y, accept, systems


def _pins(
    free_variables: FreeVariables, q: torch.Tensor, estimate: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``(K, m)``: the rows that pin the variables the estimates ``estimate[index]``
    leave free (`_free_variables`), for the instances ``index`` ``(K,)``."""
    free_variables = free_variables.select(index)
    q = select_rows(q, index)
    return free_variables.pinned(free_variables.free(estimate[index], q))


def _try_interior_point(
    data: QPData,
    residuals: Residuals,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    pending: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve the pending instances by the interior-point method; keep each solution
    that meets the tolerance in the user's units. Returns ``x, z, y`` and the ``(B,)``
    mask of the solutions kept; on return ``residuals`` describes the returned iterates."""
    index = torch.nonzero(pending).flatten()
    subset = residuals.select(index)

    def accept(xs: torch.Tensor, zs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        subset.measure(xs, zs, ys)
        return subset.converged() & subset.dual_resolved()

    solved = interior_point_solve(data.select(index), accept)
    kept = torch.zeros_like(pending)
    kept[index] = solved.converged
    rows = index[solved.converged]
    x, z, y = x.clone(), z.clone(), y.clone()
    x[rows] = solved.x[solved.converged]
    z[rows] = solved.z[solved.converged]
    y[rows] = solved.y[solved.converged]
    residuals.measure(x, z, y)
    return x, z, y, kept


def _polish_instances(
    data: QPData,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    active: torch.Tensor,
    shared: tuple[SharedPolisher, CholeskyFactor, torch.Tensor, float, Rates] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, MajoritySystems | None]:
    """Polish the instances ``index`` ``(K,)`` of the iterate ``(x, y)`` on their
    estimates ``active`` ``(K, m)`` by the cheaper method available (the general
    `polish` starts from the iterate); returns their ``x``, ``z``, ``y`` in x's dtype,
    the ``(K,)`` mask of those whose reduced system could be solved, and the shared
    polisher's systems (None where the general `polish` served them)."""

    # In float64 whatever the data's dtype: the reduced system is regularized by 1e-6,
    # which float32 cannot resolve (its refinement would stall far from the solution).
    work = torch.float64

    def pick(block: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return select_rows(block, rows).to(work)

    def general(chosen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The general `polish` of the instances ``index[chosen]``, from the iterate."""
        rows = index[chosen]
        blocks = (pick(block, rows) for block in (data.P, data.q, data.C, data.bound))
        start = (x[rows].to(work), y[rows].to(work))
        return polish(*blocks, data.n_eq, active[chosen], start)

    polished, systems = None, None
    K, n, m = index.shape[0], data.n, active.shape[1]
    if shared is not None and (
        shared[0].kept
        or SharedPolisher.prepared(shared[1])
        or _shared_is_cheaper(shared[1], shared[4], K, n, m)
    ):
        factor, rows, sigma = shared[1:4]
        result = shared[0].polish(
            factor, rows, sigma, pick(data.q, index), pick(data.bound, index), active, x[index]
        )
        if result is not None:
            *polished, systems = result
    if polished is None:
        xp, zp, yp, ok = general(torch.arange(K, device=index.device))
    else:
        # The general polish takes the instances whose own system is singular (an
        # estimate with dependent active rows, as at a degenerate vertex of an LP):
        # its regularized reduced system still finds their solution.
        xp, zp, yp, ok = polished
        singular = torch.nonzero(~ok).flatten()
        if singular.numel():
            xp, zp, yp, ok = (t.clone() for t in (xp, zp, yp, ok))
            xp[singular], zp[singular], yp[singular], ok[singular] = general(singular)
    return xp.to(x.dtype), zp.to(x.dtype), yp.to(x.dtype), ok, systems


def _polish_faces(
    data: QPData, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, estimate: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_cone_polish.cone_polish` of the instances ``index`` ``(K,)`` of a problem with
    cones on their face estimates ``(K, m)``, in float64 (as `_polish_instances`)."""
    work = torch.float64

    def pick(block: torch.Tensor) -> torch.Tensor:
        return select_rows(block, index).to(work)

    polished = cone_polish(
        pick(data.P), pick(data.q), pick(data.C), pick(data.bound), data.n_eq,
        data.cones, estimate, x[index].to(work), y[index].to(work),
    )  # fmt: skip
    xp, zp, yp, ok = polished
    return xp.to(x.dtype), zp.to(x.dtype), yp.to(x.dtype), ok


def _shared_seconds(factor: Factor, rates: Rates, K: int, n: int, m: int) -> float:
    """The predicted time of `SharedPolisher` on K instances: the part of its setup the
    factor's iterations have not paid for yet (`SharedPolisher.credit`, seconds) and its
    own steps, at the solve's measured ``rates``."""
    setup, per_instance = shared_polish_flops(n, m, SHARED_REFINE_STEPS)
    unpaid = max(rates.seconds(setup, SHARED_SETUP_OPERATIONS) - SharedPolisher.credit(factor), 0.0)
    return unpaid + rates.seconds(K * per_instance, SHARED_POLISH_OPERATIONS)


def _shared_is_cheaper(factor: Factor, rates: Rates, K: int, n: int, m: int) -> bool:
    """Whether `SharedPolisher` should polish K instances in less time than the general
    polish, one factorization per instance."""
    general = rates.seconds(K * general_polish_flops(n, m), GENERAL_POLISH_OPERATIONS)
    return bool(_shared_seconds(factor, rates, K, n, m) < general)


def _polish_sparse(
    data: QPData,
    residuals: Residuals,
    x: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Polish the instances ``index`` ``(K,)`` of sparse data, one at a time by the
    active-set rounds of `_sparse_polish.sparse_polish`, each stopping at the first point
    that meets the tolerances; returns their ``x``, ``z``, ``y`` and the ``(K,)`` mask of
    those polished."""
    K = index.shape[0]
    xp, zp, yp = x[index].clone(), z[index].clone(), y[index].clone()
    ok = torch.zeros(K, dtype=torch.bool, device=x.device)

    def numpy(block: torch.Tensor, k: int):
        return block[k if block.shape[0] > 1 else 0].detach().cpu().double().numpy()

    for j, k in enumerate(index.tolist()):
        check = residuals.select(index[j : j + 1])

        def good(x_k, z_k, y_k, check=check) -> bool:
            check.measure(*(torch.from_numpy(v).to(x)[None] for v in (x_k, z_k, y_k)))
            return bool(check.converged()[0])

        P = data.P.to_scipy(k)
        C = data.C.to_scipy(k)
        polished = sparse_polish(
            P, numpy(data.q, k), C, numpy(data.bound, k), data.n_eq,
            numpy(z, k), numpy(y, k), numpy(x, k), good,
        )  # fmt: skip
        if polished is not None:
            xp[j], zp[j], yp[j] = (torch.from_numpy(v).to(x) for v in polished)
            ok[j] = True
    return xp, zp, yp, ok


def _polish_source(
    factor: CholeskyFactor,
    systems: MajoritySystems | None,
    polished_with: tuple[CholeskyFactor, torch.Tensor] | None,
    polishing: tuple[CholeskyFactor, torch.Tensor] | None,
) -> dict[str, object]:
    """`SolveResult`'s ``polish_factor`` and ``polish_rows``: the factor of the systems
    of the last polish, or where the final factor has no polish data, the layer's
    factor kept for polishing (the backward builds the final active sets' systems on
    its bases); nothing where that is the final factor itself."""
    source = polished_with if systems is not None else None
    if source is None and polishing is not None and not SharedPolisher.prepared(factor):
        source = polishing
    if source is None or source[0] is factor:
        return {}
    return {"polish_factor": source[0], "polish_rows": source[1]}


def admm_solve(
    data: QPData,
    settings: SolverSettings,
    scaling: Scaling,
    tangents: ForwardTangents | None = None,
    warm_start: WarmStart | None = None,
    weights: torch.Tensor | None = None,
    factors: FactorCache | None = None,
    costs: ForwardCosts | None = None,
    hidden: torch.Tensor | None = None,
) -> SolveResult:
    """Solve a batch of (scaled) QPs with ADMM; see the module docstring.

    Args:
        data: The batch's QP data, already scaled by ``scaling``.
        settings: Tolerances, penalty and iteration limits.
        scaling: The scaling of ``data``, to measure residuals in the user's units.
        tangents: Forward-mode Alt-Diff state, advanced in lockstep with the iterates.
        warm_start: Starting iterates and penalty (scaled units); zeros otherwise.
        weights: `penalty_weights` of the scaled C, when the caller has it already.
        factors: Factors of H for a batch whose P and C are constants (the caller
            keys the cache by them): a layer's, kept across calls
            (``factors.across_calls``), or a one-off solve's.
        costs: A layer's measured costs of its forward methods, kept across calls: when
            to hand unfinished instances to the interior-point solve
            (`_forward_choice`). None: at the predicted price.
        hidden: ``(n,)`` bool, a layer's variables that no output reads: the polish
            pins those its estimates leave free (`_free_variables`). None: none.

    Returns:
        The iterate at which each instance stopped, with its status and residuals.
    """
    start = time.perf_counter()
    B, n, n_eq = data.batch_size, data.n, data.n_eq
    P, q, C, bound = data.P, data.q, data.C, data.bound
    m = C.shape[1]
    dtype, device = q.dtype, q.device
    alpha, sigma = settings.alpha, settings.sigma
    per_instance = P.shape[0] > 1 or C.shape[0] > 1
    residuals = Residuals(data, scaling, settings)

    rho = torch.full((B if per_instance else 1,), settings.rho, dtype=dtype, device=device)
    x = torch.zeros(B, n, dtype=dtype, device=device)
    z = torch.zeros(B, m, dtype=dtype, device=device)
    y = torch.zeros(B, m, dtype=dtype, device=device)
    if warm_start is not None:
        x, z, y = warm_start.x, warm_start.z, warm_start.y
        rho = warm_start.rho.expand(rho.shape).clone()
    rho_rows = penalty_rows(rho, n_eq, m)
    systems = linear_systems(data, sigma, weights)

    cached = factors is not None and not per_instance and scaling.c.numel() == 1 and not data.sparse
    # Factors a layer keeps across calls: what is computed from them serves later calls.
    factor_kept = cached and factors is not None and factors.across_calls

    def factor_for(rho: torch.Tensor) -> Factor:
        if not cached:
            return systems.factor(rho)
        return factors.factor(rho, scaling.c, lambda: systems.factor(rho))

    factor = factor_for(rho)

    cones = data.cones
    it = AdmmIterate(q, C, bound, n_eq, x, z, y, rho_rows, factor, alpha, sigma, cones)
    polisher = None
    if cones is not None:
        # The interior-point solve is of polyhedral problems; the polish of a problem
        # with cones solves its faces' KKT equations (`_cone_polish`, dense data).
        settings = replace(
            settings, polish=settings.polish and not data.sparse, interior_point=False
        )
    shareable = not (per_instance or data.sparse or cones is not None)
    if shareable and rho.shape[0] == 1 and dtype == torch.float64:
        polisher = SharedPolisher(C, n_eq, factor_kept)

    # A layer's factor kept for polishing serves every call's polishes, at any rho: the
    # polish solves the same reduced KKT system with any H = P + sigma I + C'R'C.
    def kept_for_polishing() -> tuple[CholeskyFactor, torch.Tensor] | None:
        """The layer's factor kept for polishing and its per-row penalty, if any."""
        if polisher is None or factors is None or not factor_kept:
            return None
        kept = factors.polishing(scaling.c)
        return None if kept is None else (kept[1], penalty_rows(kept[0], n_eq, m))

    polishing = kept_for_polishing()

    def polish_with() -> tuple[CholeskyFactor, torch.Tensor]:
        """The factor (and its per-row penalty) to polish with."""
        if polishing is None or SharedPolisher.prepared(it.factor):
            return it.factor, it.rows
        return polishing

    def rates_so_far(factor: Factor, batch: int) -> Rates:
        """The rates of ``factor`` and of this solve's steps so far on ``batch``."""
        step_seconds = budget.iterating / max(steps, 1)
        return solve_rates(factor, n, m, batch, step_seconds, cones is not None)

    # What a polish costs: the operations of the polish that serves the instances (the
    # face polish with cones) at the solve's measured rates; `PolishBudget` calibrates
    # it by the last attempt measured, this call's or an earlier call's of the layer.
    def predict(instances: int) -> float:
        if data.sparse:  # an active-set round factors a KKT matrix of the factor's size
            per_factor = it.factor.seconds / (1 if it.factor.shared else B)
            return 2 * instances * per_factor
        rates = rates_so_far(it.factor, B)
        if cones is not None:
            rows = plan.most_active_rows()
            flops = face_polish_flops(n, m, m if rows is None else rows, cones.count, cones.rows)
            return rates.seconds(instances * flops, FACE_POLISH_OPERATIONS)
        general = rates.seconds(instances * general_polish_flops(n, m), GENERAL_POLISH_OPERATIONS)
        if polisher is None:
            return general
        factor = polish_with()[0]
        if SharedPolisher.prepared(factor) or polisher.kept:
            return _shared_seconds(factor, rates, instances, n, m)
        return min(general, _shared_seconds(factor, rates, instances, n, m))

    # The interior-point solve takes the unfinished instances once ADMM has spent its
    # price: the time a layer's earlier calls measured (`_forward_choice`), else its
    # typical number of Newton steps, each a factorization of a KKT matrix of H's size
    # (sparse: measured; dense: the reduced system's operations at the measured rate).
    fallback_open = settings.interior_point and tangents is None and dtype == torch.float64
    # A warm start is ADMM's: its calls neither learn from nor follow the layer's record.
    learning = costs is not None and fallback_open and warm_start is None
    interior_point_tried = False
    shape_costs = None if costs is None else costs.record(B, n, m, data.sparse, dtype, device)
    choice = ForwardChoice(shape_costs if learning else None, B)

    def fallback_price(instances: int) -> float:
        """The cost model's price of an interior-point solve of ``instances`` instances
        (at the rates of the factor of the ``it.x.shape[0]`` instances iterating)."""
        iterating = it.x.shape[0]
        if data.sparse:
            per_factor = it.factor.seconds / (1 if it.factor.shared else iterating)
            return TYPICAL_STEPS * 2 * instances * per_factor
        rates = rates_so_far(it.factor, iterating)
        flops = instances * interior_point_flops(n, n_eq, m)
        return TYPICAL_STEPS * rates.seconds(flops, INTERIOR_POINT_OPERATIONS)

    def share_scale(instances: int) -> float:
        """The model's time per instance of a solve of the call's B instances over that
        of ``instances`` of them: a measured attempt on fewer than B spreads its fixed
        costs over fewer (`ForwardChoice.interior_point_ran`)."""
        return (fallback_price(B) / B) / (fallback_price(instances) / instances)

    budget = PolishBudget(predict, None if shape_costs is None else shape_costs.polish)
    plan = _PolishPlan(settings, budget, cones)
    # The solve's own time so far (scaling, the first factorization) is in the budget:
    # polishing may cost as much as the rest of the solve.
    checked = start  # the time of the last check; the time since is charged

    # Per instance of the whole batch: the outcome. The loop itself runs on the
    # unfinished instances `batch` only (it drops the finished ones when they are many:
    # a batch of shared data costs in proportion to its size), and on their slices of
    # the data, the iterate, the residuals and, per instance, rho and the factor.
    out_x, out_z, out_y = it.x.clone(), it.z.clone(), y.clone()
    status = torch.full((B,), MAX_ITER, dtype=torch.int64, device=device)
    iterations = torch.full((B,), settings.max_iter, dtype=torch.int64, device=device)
    out_primal = torch.full((B,), math.inf, dtype=dtype, device=device)
    out_dual = torch.full((B,), math.inf, dtype=dtype, device=device)
    out_primal_tol, out_dual_tol = torch.zeros_like(out_primal), torch.zeros_like(out_dual)
    if per_instance:  # each instance's final rho and factor, for the backward pass
        out_rho, out_factor = rho.clone(), factor.copy()
    batch = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)  # of `batch`
    # of `batch`: handed to the interior-point solve (once per solve: it would fail again)
    handed = torch.zeros_like(done)

    def record(mask: torch.Tensor, code: torch.Tensor, k: int) -> None:
        """Store the outcome of the instances ``mask`` of `batch`."""
        nonlocal done
        if not bool(mask.any()):
            return
        where = torch.nonzero(mask).flatten()
        rows = batch[where]
        out_x[rows], out_z[rows], out_y[rows] = x[where], z[where], y[where]
        status[rows] = code[where]
        iterations[rows] = k
        out_primal[rows] = residuals.primal[where]
        out_dual[rows] = residuals.dual[where]
        out_primal_tol[rows] = residuals.primal_tol[where]
        out_dual_tol[rows] = residuals.dual_tol[where]
        if per_instance:
            out_rho[rows] = rho[where]
            out_factor.put(rows, it.factor.select(where))
        done = done | mask
        if tangents is not None:
            tangents.record(mask)

    polish_systems, polished_with = None, None
    residuals.start(it.x, it.z, y, it.Cx)
    steps = 0
    for k in range(1, settings.max_iter + 1):
        last = k == settings.max_iter
        steps = k
        if tangents is not None:
            z_step, y_step = it.z.clone(), it.y()
        it.step()
        if tangents is not None:
            tangents.advance(z_step, y_step, it.x_tilde, it.v, it.rows, it.factor)
        if not last and k % settings.check_every:
            continue
        x, z, y = it.x, it.z, it.y()
        residuals.measure(x, z, y, it.Cx)
        converged = residuals.converged() & ~done
        now = time.perf_counter()  # after the checks' reads: a device's steps are done
        budget.iterating += now - checked
        it.factor.ledger.work += now - checked  # the iterations' rent (SharedPolisher)
        checked = now
        waiting = ~done & ~converged  # before any polish of this check
        handing_over = (
            fallback_open
            and k == settings.check_every
            and choice.hand_over_first(int(waiting.sum()), fallback_price(int(waiting.sum())))
        )
        chosen = None
        if not handing_over:  # handed over: no polish first
            chosen = plan.candidates(k, z, y, residuals.bound, n_eq, waiting)
        if chosen is not None:
            tried, estimate = chosen
            with_factor = None
            if polisher is not None:
                polished_with = polish_with()
                rates = rates_so_far(polished_with[0], batch.shape[0])
                with_factor = (polisher, *polished_with, sigma, rates)
            x, z, y, kept, polish_systems = _try_polish(
                data, residuals, x, z, y, tried, estimate, with_factor, budget, hidden=hidden
            )
            if shape_costs is not None and budget.measured is not None:
                shape_costs.polish = budget.measured[:2]
            if factor_kept and polishing is None and SharedPolisher.prepared(it.factor):
                # This call bought the setup: the layer's later calls polish with it.
                factors.keep_for_polishing(rho, scaling.c, it.factor)
                polishing = kept_for_polishing()
            if batch.shape[0] != B:  # they describe the unfinished instances only
                polish_systems = None
            plan.record_failures(tried & ~kept, estimate)
            converged = residuals.converged() & ~done
            if bool(kept.any()):
                it.load(x, z, y)
                x, z = it.x, it.z
            checked = time.perf_counter()  # the polish's time is not the iterations'
        pending = ~done & ~converged
        untried = pending & ~handed
        spent = budget.iterating + budget.polishing
        hand_over, instances = False, 0
        if fallback_open and bool(untried.any()):
            instances = int(untried.sum())
            price = choice.price(instances, fallback_price(instances))
            hand_over = handing_over or spent >= price
        if hand_over:
            if handing_over:
                instances = choice.handed_over(instances, price)
                untried = untried & (untried.cumsum(0) <= instances)
            handed = handed | untried
            fallback_open = bool((pending & ~handed).any())
            interior_point_tried = True
            attempt = time.perf_counter()
            x, z, y, kept = _try_interior_point(data, residuals, x, z, y, untried)
            seconds = time.perf_counter() - attempt
            scale = share_scale(instances) if instances < B else 1.0
            choice.interior_point_ran(seconds, int(kept.sum()), not handing_over, spent, scale)
            converged = residuals.converged() & ~done
            pending = ~done & ~converged
            if bool(kept.any()):
                it.load(x, z, y)
                x, z = it.x, it.z
            checked = time.perf_counter()
        if bool(pending.any()):
            primal_infeasible = residuals.primal_infeasible() & pending
            dual_infeasible = residuals.dual_infeasible() & pending & ~primal_infeasible
        else:  # every instance finished (a polish mostly): no certificate to test
            primal_infeasible = dual_infeasible = torch.zeros_like(pending)
        code = torch.where(
            converged,
            SOLVED,
            torch.where(primal_infeasible, PRIMAL_INFEASIBLE, DUAL_INFEASIBLE),
        )
        newly = converged | primal_infeasible | dual_infeasible
        if last:
            close = residuals.converged(_INACCURATE_FACTOR)
            unfinished = ~done & ~newly
            code = torch.where(unfinished, torch.where(close, SOLVED_INACCURATE, MAX_ITER), code)
            newly = newly | unfinished
        record(newly, code, k)
        residuals.remember()
        unfinished = int((~done).sum())
        if unfinished == 0:
            break
        if settings.adaptive_rho:
            ratio = residuals.rho_ratio()
            if per_instance:
                proposal = rho * ratio.sqrt()
            else:  # one rho for the batch: the geometric mean over the unfinished
                proposal = rho * ratio[~done].log().mean().exp().sqrt()
            # On a grid, so that calls with the same matrices meet the same values
            # (`FactorCache`).
            proposal = quantize_rho(proposal.clamp(_RHO_MIN, _RHO_MAX))
            moved = (proposal > _RHO_UPDATE_FACTOR * rho) | (proposal < rho / _RHO_UPDATE_FACTOR)
            if per_instance:
                moved = moved & ~done
            if bool(moved.any()):
                rho = torch.where(moved, proposal, rho)
                rho_rows = penalty_rows(rho, n_eq, m)
                it.set_penalty(rho_rows, factor_for(rho), y)
                polish_systems = None  # of the previous factor
        if tangents is None and unfinished <= _COMPACT_FRACTION * done.shape[0]:
            keep = torch.nonzero(~done).flatten()
            batch, done, handed, data = batch[keep], done[keep], handed[keep], data.select(keep)
            it.select(keep)
            residuals = residuals.select(keep)
            plan.select(keep)
            if per_instance:
                rho, systems = rho[keep], systems.select(keep)

    solve_time = time.perf_counter() - start
    if fallback_open and not interior_point_tried and not bool((status == MAX_ITER).any()):
        choice.admm_finished(solve_time)  # ADMM ended the call alone
    if per_instance:
        rho, factor = out_rho, out_factor
    else:
        factor = it.factor
    return SolveResult(
        x=out_x,
        z=out_z,
        y=out_y,
        rho=rho,
        rho_rows=penalty_rows(rho, n_eq, m),
        factor=factor,
        status=status,
        iterations=iterations,
        primal_residual=out_primal,
        dual_residual=out_dual,
        primal_tolerance=out_primal_tol,
        dual_tolerance=out_dual_tol,
        solve_time=solve_time,
        rates=rates_so_far(factor, B),
        polish_systems=polish_systems,
        **_polish_source(factor, polish_systems, polished_with, polishing),
    )
