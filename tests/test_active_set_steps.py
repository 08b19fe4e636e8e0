"""Primal-dual active-set steps on small QPs, against closed-form active sets."""

from __future__ import annotations

import numpy as np

from altdiff_modeling._active_set_steps import corrected_sets


def _simplex(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``min 1/2 ||x||^2 - y'x  s.t.  sum(x) = 1, -x <= 0``: P, C (the equality first), n_eq."""
    return np.eye(n), np.vstack([np.ones((1, n)), -np.eye(n)]), 1


def _data(y: np.ndarray) -> np.ndarray:
    """``[q; bound]`` ``(B, n + m)`` of the simplex projections of the rows of ``y``."""
    B, n = y.shape
    return np.concatenate([-y, np.ones((B, 1)), np.zeros((B, n))], axis=1)


def _projection_zeros(y: np.ndarray) -> np.ndarray:
    """``(n,)`` where the projection of ``y`` onto the simplex is zero (sort-based)."""
    u = np.sort(y)[::-1]
    cumulative = np.cumsum(u) - 1
    k = np.nonzero(u - cumulative / np.arange(1, y.size + 1) > 0)[0][-1]
    return y - cumulative[k] / (k + 1) <= 0


def _steps(P, C, n_eq, d, guess, steps, margin=1e-9):
    pinned = np.zeros_like(guess)
    margins = np.full((2, d.shape[0]), margin)
    return corrected_sets(P, C, np.ones(C.shape[0]), d, guess, pinned, margins, n_eq, steps)


def test_steps_from_a_wrong_guess_reach_each_instance_s_active_set(rng):
    n, B = 8, 6
    P, C, n_eq = _simplex(n)
    y = rng.standard_normal((B, n))
    guess = np.zeros((B, n + 1), dtype=bool)  # every bound inactive: all x free
    found = _steps(P, C, n_eq, _data(y), guess, steps=n)
    assert found is not None
    assert found[:, 0].all()  # the equality row
    expected = np.stack([_projection_zeros(row) for row in y])
    np.testing.assert_array_equal(found[:, 1:], expected)


def test_too_few_steps_or_a_weakly_active_solution_give_no_set():
    P, C, n_eq = _simplex(3)
    guess = np.zeros((1, 4), dtype=bool)
    # x_1's bound must join: the first solve finds it violated, the second verifies.
    y = np.array([[1.0, -1.0, 0.2]])
    assert _steps(P, C, n_eq, _data(y), guess, steps=1) is None
    found = _steps(P, C, n_eq, _data(y), guess, steps=2)
    np.testing.assert_array_equal(found, [[True, False, True, False]])
    # At y = (1, 0, 0) the bounds of x_1 and x_2 are active with zero multipliers.
    assert _steps(P, C, n_eq, _data(np.array([[1.0, 0.0, 0.0]])), guess, steps=5) is None


def test_a_guess_with_a_singular_system_gives_no_set():
    # An LP (P = 0) whose guess leaves a variable without an active row.
    P, C = np.zeros((2, 2)), np.vstack([-np.eye(2), np.eye(2)])
    d = np.array([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
    guess = np.array([[True, False, False, False]])
    assert _steps(P, C, 0, d, guess, steps=4) is None
