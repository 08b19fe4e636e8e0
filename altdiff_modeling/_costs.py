"""What the solver's optional work costs, in seconds measured as the solve runs.

Polishing, rho changes, the shared polish's setup and the direct backward pay for
themselves only sometimes. Each is given a budget from times measured during the solve,
never a rate or an overhead calibrated to one machine:

- an ADMM step's time is measured (the wall time of the iterations between checks);
- a polish's time is measured once it has run; before that, it is predicted from the
  measured time of the factorization of H, scaled by the ratio of the two operation
  counts (`factor_rate`), a property of the problem's structure;
- failed polishes may spend at most as much time as the rest of the solve has
  (`PolishBudget`): they can at most double a solve's work, while a polish that ends
  its instances is never counted against it (it saved their iterations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CONE_STEP_OPERATIONS",
    "FACE_NEWTON_STEPS",
    "FACE_POLISH_OPERATIONS",
    "GENERAL_POLISH_OPERATIONS",
    "POLISH_SHARE",
    "SHARED_POLISH_OPERATIONS",
    "SHARED_SETUP_OPERATIONS",
    "STEP_OPERATIONS",
    "PolishBudget",
    "Rates",
    "cholesky_flops",
    "face_polish_flops",
    "general_polish_flops",
    "measured_rates",
    "shared_polish_flops",
    "step_flops",
    "timed",
]

#: Failed polishes may spend this fraction of the rest of the solve's time.
POLISH_SHARE = 1.0


def step_flops(n: int, m: int) -> int:
    """Operations of one ADMM (or Alt-Diff) step of one instance: a solve with the
    Cholesky factor of H (``2 n^2``) and a product with C and with C' (``4 n m``)."""
    return 2 * n * n + 4 * n * m


def cholesky_flops(n: int) -> float:
    """Operations of a Cholesky factorization of an ``n x n`` matrix."""
    return n**3 / 3


def general_polish_flops(n: int, m: int) -> float:
    """Operations of `_polish.polish` on one instance: a factorization of the reduced
    system's Schur complement, its formation and a few refinement solves."""
    return n**3 / 3 + 2 * n * n * m + 20 * (n * n + 2 * n * m)


def face_polish_flops(n: int, m: int, rows: int, cones: int, cone_rows: int) -> float:
    """Operations of `_cone_polish.cone_polish` on one instance whose face has ``rows``
    rows with a multiplier of their own (its active rows; ``m`` at most): the cones'
    ``G_c' R G_c`` (at most once per instance), then ``FACE_NEWTON_STEPS`` Newton steps,
    each weighting them into ``P - sum mu_c G_c' R G_c`` and factoring the face's KKT
    matrix of ``n + rows + cones`` rows."""
    size = n + rows + cones
    grams = 2 * n * n * cone_rows
    return grams + FACE_NEWTON_STEPS * (2 * size**3 / 3 + cones * n * n + 4 * n * m)


def shared_polish_flops(n: int, m: int, refine_steps: int) -> tuple[float, float]:
    """Operations of `_polish.SharedPolisher.polish`: its setup (``S = C H^{-1} C'``,
    ``H^{-1} C'`` and a majority pattern's inverse, once per factor) and the part of each
    instance (``refine_steps`` refinement steps of solves and ``m x m`` products)."""
    setup = 2 * (n * n * m + n * m * m + 2 * m**3)
    per_instance = 2 * refine_steps * (2 * step_flops(n, m) + 8 * m * m)
    return setup, per_instance


class timed:
    """A context manager that measures its block's wall time in ``seconds``."""

    def __enter__(self) -> timed:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


# Tensor operations (kernel calls) of the pieces the cost models compare, counted in
# the code: a property of the implementation, not of the machine. On small problems
# their fixed costs, not their arithmetic, set the time.
STEP_OPERATIONS = 12  # an ADMM step (`_admm_iterate.AdmmIterate.step`)
CONE_STEP_OPERATIONS = 20  # what its projection onto the cones adds (`_cones.project`)
# `_cone_polish.cone_polish`: its typical Newton steps (five to eight on the benchmark's
# faces), each about 30 operations, and the estimate's and checks' operations.
FACE_NEWTON_STEPS = 6
FACE_POLISH_OPERATIONS = FACE_NEWTON_STEPS * 30 + 40
GENERAL_POLISH_OPERATIONS = 80  # `_polish.polish`: gathers, one factorization, refinement
SHARED_POLISH_OPERATIONS = 50  # `_polish.SharedPolisher.polish` with its setup done
SHARED_SETUP_OPERATIONS = 10  # the setup: two triangular solves, products, an inverse


@dataclass(frozen=True)
class Rates:
    """What a solve measured: the arithmetic rate of its large kernels and the time of
    one small tensor operation, from which the cost models predict seconds."""

    flops_per_second: float
    seconds_per_operation: float

    def seconds(self, flops: float, operations: float) -> float:
        """Predicted time of ``flops`` operations of arithmetic in ``operations``
        tensor operations (NaN where a rate is unknown)."""
        return flops / self.flops_per_second + operations * self.seconds_per_operation


def measured_rates(
    factor_flops: float,
    factor_seconds: float,
    step_flops: float,
    step_seconds: float,
    step_operations: int = STEP_OPERATIONS,
) -> Rates:
    """The rates of a solve: the arithmetic rate of its factorization of H (or, where
    that is unknown, of its steps, which a large problem runs at the speed of memory),
    and a step's time over its operations (an upper bound of one operation's time).

    Args:
        factor_flops, factor_seconds: The factorization's operations and time.
        step_flops, step_seconds: One step of the batch: its arithmetic and time.
        step_operations: A step's tensor operations.
    """

    def rate_of(flops: float, seconds: float) -> float:
        known = math.isfinite(flops * seconds) and flops > 0 and seconds > 0
        return flops / seconds if known else math.nan

    rate, step_rate = rate_of(factor_flops, factor_seconds), rate_of(step_flops, step_seconds)
    if math.isfinite(step_rate) and not rate >= step_rate:
        rate = step_rate
    per_operation = step_seconds / step_operations if step_seconds > 0 else math.nan
    return Rates(rate, per_operation)


class PolishBudget:
    """The time a solve may still spend on polishes that fail: ``POLISH_SHARE`` times
    the rest of the solve's time (its set-up and its iterations), less the failed
    polishes' time so far.

    An attempt on K instances is priced by ``predict(K)`` (the caller's model at the
    rates measured so far), scaled to the last measured attempt where there is one: this
    solve's, else one of an earlier solve the caller kept (``earlier``, as ``(seconds,
    instances)``). What it risks is that price times the share of this solve's last
    attempt's instances that it did not finish, all of it before this solve's first: an
    earlier solve says what a polish costs, not whether this one's iterate is ready for
    it (a polish that ended an earlier solve at its last check may fail at this one's
    first).
    """

    def __init__(
        self,
        predict: Callable[[int], float],
        earlier: tuple[float, int] | None = None,
    ) -> None:
        self.iterating = 0.0
        self.polishing = 0.0
        self._predict = predict
        self._earlier = earlier
        #: This solve's last attempt: ``(seconds, instances, finished)``.
        self.measured: tuple[float, int, int] | None = None

    def price(self, instances: int) -> float:
        """The predicted time of an attempt on ``instances`` instances: the model's,
        calibrated by the last measured attempt where there is one (the model says how
        the time grows with the instances: mostly fixed for a batched polish, in
        proportion for one that factors each instance)."""
        predicted = self._predict(instances)
        last = self._earlier if self.measured is None else self.measured[:2]
        if last is None:
            return predicted if math.isfinite(predicted) else 0.0
        seconds, polished = last
        before = self._predict(polished)
        if math.isfinite(predicted) and math.isfinite(before) and before > 0:
            return seconds * predicted / before
        return seconds * max(1.0, instances / max(polished, 1))

    def risk(self, instances: int) -> float:
        """The time an attempt on ``instances`` instances is expected to waste."""
        failing = 1.0
        if self.measured is not None and self.measured[1]:
            failing = 1.0 - self.measured[2] / self.measured[1]
        return self.price(instances) * failing

    def affords(self, instances: int) -> bool:
        """Whether an attempt on ``instances`` instances fits the budget."""
        return self.polishing + self.risk(instances) <= POLISH_SHARE * self.iterating

    def spend(self, seconds: float, instances: int, finished: int) -> None:
        """Record an attempt's measured time on ``instances`` instances, of which
        ``finished`` ended there: only the others' share counts against the budget (a
        polish that ends an instance saves the iterations it would have taken)."""
        if instances:
            self.polishing += seconds * (instances - finished) / instances
        self.measured = (seconds, instances, finished)
