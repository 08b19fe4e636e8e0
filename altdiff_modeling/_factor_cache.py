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

from ._factor import CholeskyFactor, WorkLedger

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
    """

    def __init__(self) -> None:
        self._key: tuple = ()
        self._factors: OrderedDict[tuple[float, float], CholeskyFactor] = OrderedDict()
        self._ledger = WorkLedger()

    def reset(self, key: tuple = ()) -> None:
        """Drop every factor; ``key`` identifies what the next ones are factors of."""
        self._key = key
        self._factors.clear()
        self._ledger = WorkLedger()

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
        # budget counts them at every call, and never evicts the factor just returned.
        while len(self._factors) > 1 and (
            len(self._factors) > _MAX_FACTORS
            or sum(factor.nbytes() for factor in self._factors.values()) > _MAX_BYTES
        ):
            self._factors.popitem(last=False)
        return cached
