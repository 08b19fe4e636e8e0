"""Factors of ``H(rho)`` kept across the calls of a layer whose P, A and G are constant.

With constant matrices, H depends on rho and on the cost scaling c alone (besides sigma
and the equilibration, which a layer keeps; c too unless the norm of q sets it). ADMM
starts every call at the same rho and moves it in factors of five or more, on a fixed
grid (`quantize_rho`), so successive calls mostly meet the same few values: the factors
of those are computed once per layer instead of once per call. At n = 3000 a
factorization costs as much as several hundred ADMM steps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from .cholesky import CholeskyFactor, WorkLedger

__all__ = ["FactorCache", "quantize_rho"]

# rho takes values 10^(j / _RHO_GRID): steps of 1.33x, well inside the factor of five
# by which an update must move it.
_RHO_GRID = 8
# Most factors kept, and most bytes with their memos (the least recently used go first).
_MAX_FACTORS = 6
_MAX_BYTES = 1 << 30


def quantize_rho(rho: torch.Tensor) -> torch.Tensor:
    """The grid value nearest to each (positive) rho."""
    return torch.pow(10.0, torch.round(torch.log10(rho) * _RHO_GRID) / _RHO_GRID).to(rho.dtype)


class FactorCache:
    """Least recently used factors of a shared H, keyed by rho and the cost scaling.

    Valid for one P, C, scaling, sigma, dtype and device: the owner (a layer's
    `ConstantDataReuse`) clears it when any of those changes (`reset`).

    One factor may be kept for polishing (`keep_for_polishing`): the one whose memo
    holds the shared polish's setup, which any later call with the same cost scaling
    polishes with, whatever rho it iterates at. It is never evicted.

    Args:
        across_calls: The cache outlives the call (a layer's): a setup computed with
            its factors serves later calls, which makes it worth buying
            (`_polish.SharedPolisher.credit`). A one-off solve's cache serves that solve
            only.
    """

    def __init__(self, across_calls: bool = False) -> None:
        self.across_calls = across_calls
        self._key: tuple = ()
        self._factors: OrderedDict[tuple[float, float], CholeskyFactor] = OrderedDict()
        self._ledger = WorkLedger()
        self._polishing: tuple[tuple[float, float], torch.Tensor, CholeskyFactor] | None = None

    def reset(self, key: tuple = ()) -> None:
        """Drop every factor; ``key`` identifies what the next ones are factors of."""
        self._key = key
        self._factors.clear()
        self._ledger = WorkLedger()
        self._polishing = None

    def keep_for_polishing(
        self, rho: torch.Tensor, cost_scale: torch.Tensor, factor: CholeskyFactor
    ) -> None:
        """Keep ``factor``, the cached one of ``rho`` ``(1,)`` and ``cost_scale``, for
        the polishes of later calls (its memo holds their setup)."""
        value = (float(rho[0]), float(cost_scale.flatten()[0]))
        if self._factors.get(value) is factor:
            self._polishing = (value, rho.clone(), factor)

    def polishing(self, cost_scale: torch.Tensor) -> tuple[torch.Tensor, CholeskyFactor] | None:
        """The factor kept for polishing and its rho ``(1,)``, where it has this cost
        scaling (H depends on it), else None."""
        kept = self._polishing
        if kept is None or kept[0][1] != float(cost_scale.flatten()[0]):
            return None
        return kept[1], kept[2]

    @property
    def key(self) -> tuple:
        return self._key

    def __len__(self) -> int:
        return len(self._factors)

    def factor(
        self, rho: torch.Tensor, cost_scale: torch.Tensor, compute: Callable[[], CholeskyFactor]
    ) -> CholeskyFactor:
        """The factor for the shared ``rho`` ``(1,)`` and cost scaling ``(1, 1)``, from the
        cache or ``compute()``."""
        value = (float(rho[0]), float(cost_scale.flatten()[0]))
        cached = self._factors.get(value)
        if cached is not None:
            self._factors.move_to_end(value)
        else:
            cached = compute()
            if cached.nbytes() > _MAX_BYTES:
                return cached
            cached.ledger = self._ledger  # the layer's work, whichever rho it ran at
            self._factors[value] = cached
        # The factors' memos grow after they are cached (`CholeskyFactor.memo`): the
        # budget counts them at every call, and never evicts the factor just returned,
        # nor the one kept for polishing (its setup costs several factorizations).
        spared = {value, self._polishing[0] if self._polishing is not None else value}
        while (
            len(self._factors) > _MAX_FACTORS
            or sum(factor.nbytes() for factor in self._factors.values()) > _MAX_BYTES
        ):
            oldest = next((key for key in self._factors if key not in spared), None)
            if oldest is None:
                break
            del self._factors[oldest]
        return cached
