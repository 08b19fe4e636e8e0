"""Solution polishing on sparse data (see `altdiff_modeling._polish`).

Guess the active set from an ADMM iterate and solve the equality-constrained QP it
defines (`altdiff_modeling.linsys.sparse_kkt.solve_active_kkt`: the variables their own short
active rows fix solved exactly, then one sparse LDL' of the regularized quasi-definite
KKT matrix of the others, with iterative refinement). Unlike the dense path, a wrong
guess is corrected by rounds of the primal-dual active-set method (drop rows with
negative multipliers, add violated rows, solve again): on problems with long chains of
constraints, such as isotonic projections, ADMM identifies the last active rows slowly.
Where a full round makes the reduced QP singular (its solution blows up), the rounds go
back one and continue damped, dropping only the most wrong rows: a lasso's early
iterates hold some small weights at zero, and a full round then releases many features
at once; damped rounds that stall go back to their best round and drop fewer rows. Rows
whose multiplier or violation is at round-off level (ties) stay as they are. The caller
keeps the polished point only if it meets the tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ._polish import active_set
from .linsys.pinned import PinnedBlockFinder
from .linsys.sparse_kkt import _norm, solve_active_kkt

__all__ = ["sparse_polish"]

_ACTIVE_SET_ROUNDS = 30
_STALLED_ROUNDS = 3
# A damped round drops only the rows whose multiplier is below this fraction of the
# most negative one; it adds every violated row (a row more cannot leave a variable
# free, and damping the additions too took 15 solves on lasso-10k instead of 13).
_DAMPING = 0.5
# Damped rounds that stall go back to the best round with a stronger damping (the
# fraction halves its distance to 1), at most this many times.
_DAMPED_RESTARTS = 2
# An active-set solution this much larger than the iterate (relative to 1 + its max-norm)
# comes from a singular reduced QP (a variable no active row pins): the step was wrong.
_BLOWUP = 1e6
# Scores within this fraction of (1 + the largest multiplier) are ties: an epigraph
# variable t of |u| <= u_max has optimal values between |u| and u_max, so rows u <= t
# hold with zero slack and zero multiplier. Dropping them frees t and the rounds wander.
_TIE = 1e-10


class _Round(NamedTuple):
    """One active-set round: its active rows, solution and proposed changes."""

    active: np.ndarray
    solved: tuple[np.ndarray, np.ndarray]
    score: np.ndarray
    drop: np.ndarray
    add: np.ndarray

    @property
    def changes(self) -> int:
        return int(self.drop.sum() + self.add.sum())


def _scores(
    C: sp.csr_array, bound: np.ndarray, n_eq: int, solved: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """``w + (C u - bound)`` on the inequality rows (``+inf`` on the equalities): the
    primal-dual active-set method makes exactly the rows with a positive score active,
    which drops active rows with a negative multiplier and adds violated rows."""
    u, w = solved
    score = w + (C @ u - bound)
    score[:n_eq] = np.inf
    return score


def _point(
    C: sp.csr_array, bound: np.ndarray, n_eq: int, solved: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ADMM-form point ``(x, z, y)`` of an active-set solution."""
    x, y = solved
    z = np.minimum(C @ x, bound)
    z[:n_eq] = bound[:n_eq]
    y = y.copy()
    y[n_eq:] = np.maximum(y[n_eq:], 0)
    return x, z, y


def sparse_polish(
    P: sp.sparray,
    q: np.ndarray,
    C: sp.csr_array,
    bound: np.ndarray,
    n_eq: int,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray | None = None,
    good: Callable[[np.ndarray, np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Polish one iterate (scaled units).

    Args:
        P: ``(n, n)``.  q: ``(n,)``.  C: ``(m, n)``.  bound: ``(m,)``.
        n_eq: Number of equality rows (always active).
        z, y: ``(m,)`` the ADMM iterate whose active set is used.
        x: ``(n,)`` the ADMM iterate's x, where the refinement of each active-set solve
            starts: where the solution is not unique (an epigraph variable that no
            active row pins, as CVXPY's ``abs`` introduces), it then stays next to the
            iterate instead of moving to the minimum-norm point, which can violate the
            rows left out.
        good: Whether a point meets the solver's tolerances; the rounds stop at the
            first one that does (degenerate rows, with multipliers of either sign at
            round-off level, would otherwise keep the active set changing).

    Returns:
        ``x (n,)``, ``z (m,)``, ``y (m,)`` of the polished point, or None when the
        reduced system could not be factored.
    """
    active = active_set(z, y, bound, n_eq)
    scale = 1.0 + (_norm(x) if x is not None else 0.0)
    previous: _Round | None = None  # the round before
    best: _Round | None = None  # the round proposing the fewest changes
    fraction: float | None = None  # damping: None for full steps
    stalled = restarts = 0
    finder = PinnedBlockFinder(C)
    for _ in range(_ACTIVE_SET_ROUNDS):
        solved = solve_active_kkt(P, C, active, -q, bound, x, finder)
        if solved is None:
            break
        if good is not None:
            point = _point(C, bound, n_eq, solved)
            if good(*point):
                return point
        # Primal-dual active-set update: keep rows whose multiplier is positive, add
        # rows the solution violates; a fixed point is the QP's solution. The method
        # can cycle (it is monotone only for M-matrix-like problems), so it stops when
        # the number of rows it would change has not improved for a few rounds.
        score = _scores(C, bound, n_eq, solved)
        tie = _TIE * (1.0 + _norm(solved[1]))
        current = _Round(active, solved, score, active & (score < -tie), ~active & (score > tie))
        blown = _norm(solved[0]) > _BLOWUP * scale
        if blown and fraction is None and previous is not None:
            # The step made the reduced QP singular: full steps drop too many rows where
            # rows are coupled (a lasso's two rows on one feature: releasing one feature
            # flips the multipliers of many others). Go back one round and continue
            # with damped steps, which drop only the most wrong rows.
            fraction, current = _DAMPING, previous
        elif not blown and (best is None or current.changes < best.changes):
            best, stalled = current, 0
        else:
            stalled += 1
        if current.changes == 0:
            break
        if stalled >= _STALLED_ROUNDS:
            if fraction is None or best is None or restarts == _DAMPED_RESTARTS:
                break
            # Damped steps that stall still dropped too much at once (the reduced QP
            # nearly singular: its solution large but finite). Go back to the best
            # round and drop fewer rows.
            restarts, stalled = restarts + 1, 0
            fraction, current = 0.5 * (1.0 + fraction), best
        previous = current
        drop = current.drop
        if fraction is not None:
            drop = drop & (current.score < fraction * current.score[drop].min(initial=0.0))
        active = (current.active & ~drop) | current.add
    if best is None:
        return None
    return _point(C, bound, n_eq, best.solved)
