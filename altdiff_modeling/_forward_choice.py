"""Which method a layer's forward solve ends with, from what its earlier calls measured.

ADMM's steps are cheap and their number depends on the data; an interior-point solve
(`_interior_point`) costs a few dozen factorizations whatever the scaling. On badly
scaled LPs and abs-cost portfolios the interior-point solve is often the faster, on
well-conditioned QPs whose factor the batch shares ADMM is, and neither can be told from
the problem alone: the answer depends on the machine too. A layer is called many times
on draws from one distribution, so it measures, per batch shape:

- A call runs ADMM until it has spent what the interior-point solve is expected to cost
  (its time measured on earlier calls, else the cost model's prediction), then hands the
  unfinished instances to the interior-point solve: rent or buy, at most twice the
  cheaper method's time. It records what the call cost by starting with ADMM (ADMM's
  whole solve, or ADMM to the price plus the interior-point solve of the instances it
  left), and the interior-point solve's time per instance it solved.
- Once the interior-point solve has been measured cheaper than ADMM (medians of the last
  `WINDOW` records), calls hand every instance to it at the first check; one such call in
  `EXPLORE_EVERY` runs the rent-or-buy rule instead, so that a change in the data
  (training moves the parameters) is noticed.
- Where ADMM finishes within the price, the interior-point solve is never measured that
  way, and the predicted price may be far off. So a call also hands instances over at
  the first check once the layer's ADMM solves have cost as much as one interior-point
  solve is expected to: as many as that solve is expected to finish in an ADMM call's
  time (all, where it is expected to finish them all), while ADMM solves the others and
  the rent-or-buy rule stays open to them. Where that finds ADMM the cheaper, the next
  exploration waits until ADMM has spent `EXPLORE_EVERY` times the measured price, and
  each later one twice as long as the one before: exploring costs at most an
  `EXPLORE_EVERY`-th of ADMM's time, less and less as the calls go on.
- An attempt on fewer instances than the batch records its time per instance scaled by
  the cost model's ratio for the whole batch: a solve's fixed costs (its tensor
  operations) spread over more instances.

A one-off `solve_qp` has no record: it runs the rent-or-buy rule at the predicted price.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch

__all__ = ["EXPLORE_EVERY", "WINDOW", "ForwardChoice", "ForwardCosts"]

#: Records per method whose median decides (robust to one slow call on a busy machine).
WINDOW = 5
#: Of the calls that would start with the interior-point solve, every this many re-measure
#: ADMM by the rent-or-buy rule; and ADMM's calls spend this many times the measured
#: interior-point price before it is explored again.
EXPLORE_EVERY = 8


class _Record:
    """The measured costs of one batch shape's calls."""

    def __init__(self) -> None:
        # seconds of calls that started with ADMM (their interior-point part included)
        self.admm: deque[float] = deque(maxlen=WINDOW)
        # seconds per instance solved of interior-point attempts (inf: none solved)
        self.interior_point: deque[float] = deque(maxlen=WINDOW)
        self.preferred_calls = 0
        # ADMM's seconds since the last interior-point attempt, and the factor on the
        # price they must reach before the next exploring attempt
        self.admm_spent = 0.0
        self.backoff = 1.0
        #: The last polish attempt of the shape's calls, ``(seconds, instances)``: the
        #: price that `_costs.PolishBudget` calibrates its model by.
        self.polish: tuple[float, int] | None = None


def _median(values: deque[float]) -> float | None:
    return statistics.median(values) if values else None


class ForwardChoice:
    """One call's part of a `ForwardCosts` record: what it starts with and what it adds.

    Args:
        record: The record of the call's batch shape, or None (a one-off solve).
        batch: The call's number of instances.
    """

    def __init__(self, record: _Record | None, batch: int) -> None:
        self._record = record
        self._batch = batch
        per_instance = None if record is None else _median(record.interior_point)
        admm = None if record is None else _median(record.admm)
        #: The measured seconds per instance of an interior-point solve, if any.
        self.interior_point_seconds = per_instance
        self._admm_seconds = admm
        # measured cheaper (both medians exist only where there is a record)
        preferred = per_instance is not None and admm is not None and per_instance * batch < admm
        if preferred:
            record.preferred_calls += 1
        #: Whether the call hands its instances to the interior-point solve at the first
        #: check (it was measured cheaper, and this is not an exploring call).
        self.start_with_interior_point = preferred and record.preferred_calls % EXPLORE_EVERY != 0
        self._preferred = preferred

    def hand_over_first(self, instances: int, predicted: float) -> bool:
        """Whether the call hands its ``instances`` unfinished instances to the
        interior-point solve at its first check, before any polish (``predicted``: the
        cost model's price of that solve): where it was measured cheaper, or where the
        layer's ADMM solves have cost enough to explore it."""
        record = self._record
        if record is None or self.start_with_interior_point:
            return self.start_with_interior_point
        if self._preferred:  # this call re-measures ADMM
            return False
        return record.admm_spent >= record.backoff * self.price(instances, predicted)

    def handed_over(self, instances: int, price: float) -> int:
        """How many of the ``instances`` unfinished at the first check a hand-over there
        takes, the interior-point solve of them all expected to cost ``price``: all
        where it was measured cheaper; where the call explores it, as many as it is
        expected to solve in an ADMM call's time (at least one), while ADMM solves the
        others. An exploring call then costs at most about two calls (a 64-instance
        shortest-path LP explored at once took 3.7 s against ADMM's 0.45 s)."""
        admm = self._admm_seconds
        if self.start_with_interior_point or admm is None or price <= admm:
            return instances
        return max(1, math.ceil(instances * admm / price))

    def price(self, instances: int, predicted: float) -> float:
        """What an interior-point solve of ``instances`` instances is expected to cost:
        its measured time where there is one, else ``predicted``."""
        if self.interior_point_seconds is None or not math.isfinite(self.interior_point_seconds):
            return predicted
        return self.interior_point_seconds * instances

    def admm_finished(self, seconds: float) -> None:
        """Record a call that ADMM finished alone in ``seconds``."""
        if self._record is not None:
            self._record.admm.append(seconds)
            self._record.admm_spent += seconds

    def interior_point_ran(
        self,
        seconds: float,
        solved: int,
        rented: bool,
        before: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        """Record an interior-point attempt that solved ``solved`` instances in
        ``seconds``; ``rented``: ADMM had run to the price first (it had not finished
        within it), for ``before`` seconds. ``scale``: the cost model's time per
        instance of a solve of the whole batch over that of the attempt's instances,
        where it took a share of them (`handed_over`): a solve's fixed costs spread
        over more instances."""
        record = self._record
        if record is None:
            return
        per_instance = scale * seconds / solved if solved else math.inf
        admm = _median(record.admm)
        explored = not rented and not self.start_with_interior_point
        if explored and admm is not None and not per_instance * self._batch < admm:
            # ADMM stays the cheaper: explore at most an EXPLORE_EVERY-th of its time,
            # then half as often each time
            record.backoff = max(2 * record.backoff, EXPLORE_EVERY)
        record.interior_point.append(per_instance)
        record.admm_spent = 0.0
        if rented:
            # What the call cost by starting with ADMM: its ADMM time and the
            # interior-point solve of the instances ADMM left. Where ADMM left few of a
            # large batch, that stays far below an interior-point solve of them all.
            record.admm.append(before + seconds)


class ForwardCosts:
    """A layer's `ForwardChoice` records, one per batch shape (kept across its calls)."""

    def __init__(self) -> None:
        self._records: dict[tuple, _Record] = {}

    def record(self, batch: int, n: int, m: int, sparse: bool, dtype: torch.dtype,
               device: torch.device) -> _Record:  # fmt: skip
        """The record of the calls on ``batch`` instances of this size, kind and device."""
        return self._records.setdefault((batch, n, m, sparse, dtype, device), _Record())
