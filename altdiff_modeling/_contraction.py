"""How far a linear fixed-point iteration is from its limit, judged from its last changes.

The distance to the limit of a contraction with rate r is about ``change * r / (1 - r)``;
r is estimated from two successive changes. The backward's recursion and the shared
polish's refinement both stop on this estimate.
"""

from __future__ import annotations

import torch

__all__ = ["contraction"]


def contraction(
    change: torch.Tensor, previous: torch.Tensor, steps: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rate, distance)`` ``(B,)``: the rate per step estimated from two changes
    ``previous`` and ``change`` ``(B,)`` made ``steps`` steps apart (at most 1: an
    iteration that stopped contracting), and the distance to the limit it implies
    (about 1e12 times the change where the rate reaches 1)."""
    rate = (change / previous.clamp_min(1e-300)).clamp(max=1.0) ** (1 / steps)
    return rate, change * rate / (1 - rate).clamp_min(1e-12)
