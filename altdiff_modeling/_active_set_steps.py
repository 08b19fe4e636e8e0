"""Primal-dual active-set steps: from a guess of a small QP's active set to its solution's.

For constant ``P`` ``(n, n)`` and ``C`` ``(m, n)`` and the data ``d = [q; bound]``, the
KKT point of an active set ``a`` (the equality rows among it) solves::

    [[P, C'], [diag(a) C, diag(1 - a)]] [x; y] = [-q; a * bound].

Where that point violates an inactive row (its slack below zero) the row joins the set;
where an active inequality's multiplier is below zero the row leaves. This is the
primal-dual active-set strategy, a semismooth Newton method on the complementarity
conditions: from a set near the solution's, as `ActiveSetMemory` has in its kept sets,
a few steps reach it. The set reached is only a candidate: the memory keeps it and then
verifies its point as it does every kept set's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["corrected_sets", "set_systems"]


def set_systems(P: np.ndarray, C: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``(K, n + m, n + m)``: the KKT matrices ``[[P, C'], [diag(a) C, diag(1 - a)]]``
    of the sets ``active`` ``(K, m)`` (bool; the equality rows among them)."""
    (m, n), K = C.shape, active.shape[0]
    a = active.astype(np.float64)
    systems = np.zeros((K, n + m, n + m))
    systems[:, :n, :n] = P
    systems[:, :n, n:] = C.T
    systems[:, n:, :n] = a[:, :, None] * C
    diagonal = np.arange(n, n + m)
    systems[:, diagonal, diagonal] = 1 - a
    return systems


def corrected_sets(
    P: np.ndarray,
    C: np.ndarray,
    row_norms: np.ndarray,
    d: np.ndarray,
    active: np.ndarray,
    pinned: np.ndarray,
    margins: np.ndarray,
    n_eq: int,
    steps: int,
) -> np.ndarray | None:
    """The active sets ``(K, m)`` whose points are strictly complementary, one per
    instance, or None where an instance has none within ``steps`` steps.

    Args:
        P, C: ``(n, n)``, ``(m, n)``; row_norms: ``(m,)`` the largest absolute entry of
            each row of C (a multiplier's test is at the row's scale).
        d: ``(K, n + m)`` the instances' ``[q; bound]``.
        active: ``(K, m)`` the first guesses (the equality rows among them); pinned:
            ``(K, m)`` rows of the guesses that stay active with a multiplier that may
            vanish (a free variable's own bound, `ActiveSetMemory.learn`).
        margins: ``(2, K)`` the primal and dual margins a point must pass by: every
            inactive row's slack above the first, every active inequality's multiplier
            (times its row's norm) above the second (a pinned row's above its negative).
        n_eq: the leading equality rows of C.
        steps: the most KKT solves per instance.
    """
    m, n = C.shape
    q, bound = d[:, :n], d[:, n:]
    active = active.copy()
    active[:, :n_eq] = True
    inequality = np.arange(m) >= n_eq
    for _ in range(steps):
        rhs = np.concatenate([-q, active.astype(np.float64) * bound], axis=1)
        try:
            u = np.linalg.solve(set_systems(P, C, active), rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return None  # a guess with dependent active rows, or a free variable
        y = u[:, n:] * row_norms
        slack = bound - u[:, :n] @ C.T
        floor = np.where(pinned, -margins[1][:, None], margins[1][:, None])
        passes = np.where(active, y > floor, slack > margins[0][:, None]) | ~inequality
        if passes.all():
            return active
        flips = inequality & np.where(active, ~pinned & (y < 0), slack < 0)
        if not (flips | passes.all(1, keepdims=True)).any(1).all():
            return None  # an instance whose failing rows are weakly active, not violated
        active ^= flips
    return None
