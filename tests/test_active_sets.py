"""A layer's memory of active sets: later calls solved on them exactly, against closed forms."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import altdiff_modeling._active_sets as active_sets
from altdiff_modeling import AltDiffLayer


@pytest.fixture(autouse=True)
def _memory_never_short_of_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory keeps to a budget of measured times; the hit counts these tests assert
    must depend on the data alone, not on how busy the machine is (under load one of
    them had 2 of its 5 expected hits)."""
    monkeypatch.setattr(active_sets.ActiveSetMemory, "_affordable", lambda self: True)


def _simplex_projection(y: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``y`` onto the probability simplex (sort-based)."""
    u = np.sort(y)[::-1]
    cumulative = np.cumsum(u) - 1
    k = np.nonzero(u - cumulative / np.arange(1, y.size + 1) > 0)[0][-1]
    return np.maximum(y - cumulative[k] / (k + 1), 0)


def _simplex_vjp(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``J' w`` of the projection at ``y``: ``w - mean(w)`` on the support, 0 off it."""
    support = _simplex_projection(y) > 0
    grad = np.zeros_like(w)
    grad[support] = w[support] - w[support].mean()
    return grad


def _simplex_layer(n: int) -> AltDiffLayer:
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
    return AltDiffLayer(problem, parameters=[y], variables=[x])


def _call(layer: AltDiffLayer, values: np.ndarray, w: np.ndarray, dtype=torch.float64, **kw):
    """The layer's output, the gradient of ``w' x``, and the call's info."""
    y = torch.tensor(values, dtype=dtype, requires_grad=True)
    (x,), info = layer(y, return_info=True, **kw)
    (grad,) = torch.autograd.grad((torch.tensor(w, dtype=dtype) * x).sum(), y)
    return x.detach().numpy(), grad.numpy(), info


def test_recurring_active_sets_are_solved_exactly_from_the_memory(rng):
    n = 5
    layer = _simplex_layer(n)
    center = np.array([1.0, 0.6, 0.1, -1.0, -2.0])  # support {0, 1, 2} nearby
    remembered = 0
    for _ in range(40):
        y, w = center + 0.05 * rng.standard_normal(n), rng.standard_normal(n)
        x, grad, info = _call(layer, y, w)
        assert info.status == ["solved"]
        exact = int(info.iterations[0]) == 0
        remembered += exact
        # A remembered set gives the solution and the gradient to round-off; ADMM's
        # polished calls are near it too.
        atol = 1e-12 if exact else 1e-6
        np.testing.assert_allclose(x, _simplex_projection(y), atol=atol)
        np.testing.assert_allclose(grad, _simplex_vjp(y, w), atol=atol)
        if exact:
            assert info.backward_status == ["converged"] and info.backward_iterations == 0
    assert remembered >= 20
    assert layer._reuse.active_sets.hits == remembered


@pytest.mark.parametrize("lookup", ["numpy", "torch"])
def test_a_new_set_near_a_remembered_one_is_reached_by_active_set_steps(rng, monkeypatch, lookup):
    if lookup == "torch":  # as on other devices than the CPU
        monkeypatch.setattr(active_sets, "_namespace", lambda device: torch)
    n = 5
    layer = _simplex_layer(n)
    memory = layer._reuse.active_sets
    center = np.array([1.0, 0.8, 0.6, -1.0, -2.0])  # support {0, 1, 2}
    for _ in range(40):
        _call(layer, center + 0.01 * rng.standard_normal(n), rng.standard_normal(n))
        if memory.hits:
            break
    assert memory.hits and len(memory._sets) == 1
    # Supports {0, 1} and {0, 1, 2, 3}: sets the memory has not seen, one row away.
    for y in ([1.0, 0.8, -0.5, -1.0, -2.0], [1.0, 0.8, 0.6, 0.5, -2.0]):
        y, w = np.array(y), rng.standard_normal(n)
        x, grad, info = _call(layer, y, w)
        assert int(info.iterations[0]) == 0 and info.status == ["solved"]
        np.testing.assert_allclose(x, _simplex_projection(y), atol=1e-12)
        np.testing.assert_allclose(grad, _simplex_vjp(y, w), atol=1e-12)
    assert len(memory._sets) == 3


def test_a_batch_is_answered_where_each_instance_finds_its_set(rng):
    n, B = 4, 3
    layer = _simplex_layer(n)
    centers = np.array([[2.0, 0.0, -1.0, -1.0], [0.5, 0.4, 0.3, -1.0], [0.3, 0.3, 0.3, 0.3]])
    answered = 0
    for _ in range(30):
        y, w = centers + 0.02 * rng.standard_normal((B, n)), rng.standard_normal((B, n))
        x, grad, info = _call(layer, y, w)
        if int(info.iterations.max()) == 0:
            answered += 1
            for b in range(B):
                np.testing.assert_allclose(x[b], _simplex_projection(y[b]), atol=1e-12)
                np.testing.assert_allclose(grad[b], _simplex_vjp(y[b], w[b]), atol=1e-12)
    assert answered >= 15


def test_a_free_epigraph_variable_is_pinned_and_its_layer_remembered(rng, whole_problem):
    # |u| <= 1 becomes u <= t, -u <= t, t <= 1 with an epigraph t that is free wherever
    # |u| < 1: its active sets' KKT systems are singular until t is pinned to t <= 1.
    a = cp.Parameter(2)
    u = cp.Variable(2)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(u - a)), [cp.abs(u) <= 1])
    layer = AltDiffLayer(problem, parameters=[a], variables=[u])
    remembered = 0
    for _ in range(60):
        values, w = rng.uniform(-2, 2, 2), rng.standard_normal(2)
        x, grad, info = _call(layer, values, w)
        exact = int(info.iterations[0]) == 0
        remembered += exact
        atol = 1e-12 if exact else 1e-6
        np.testing.assert_allclose(x, np.clip(values, -1, 1), atol=atol)
        np.testing.assert_allclose(grad, w * (np.abs(values) < 1), atol=atol)
    assert remembered >= 30
    memory = layer._reuse.active_sets
    assert bool((memory._sides[..., 1] < 0).any())  # a pinned row's multiplier may vanish


def test_a_free_variable_the_output_reads_is_not_pinned(rng):
    # min (x0 - a)^2 s.t. 0 <= x1 <= 1: x1 is anywhere in [0, 1]. Pinned to a bound, a
    # remembered set would answer one of those solutions with a zero gradient, as if it
    # were unique; unpinned, its set is singular and never kept, and the backward of a
    # loss that reads x1 says that there is no derivative.
    from altdiff_modeling import SolverError

    x, a = cp.Variable(2), cp.Parameter()
    problem = cp.Problem(cp.Minimize(cp.square(x[0] - a)), [x[1] >= 0, x[1] <= 1])
    layer = AltDiffLayer(problem, parameters=[a], variables=[x])
    for _ in range(20):
        value = torch.tensor(rng.standard_normal(), requires_grad=True)
        (out,) = layer(value)
        with pytest.raises(SolverError, match="singular"):
            torch.autograd.grad(out[1], value)
    assert layer._reuse.active_sets.hits == 0 and not layer._reuse.active_sets._sets


def test_a_weakly_active_solution_is_left_to_the_solver():
    layer = _simplex_layer(3)
    w = np.array([1.0, -2.0, 0.5])
    for _ in range(30):  # the set {x_0 > 0} is learnt, and answers once the budget allows
        _call(layer, np.array([1.0, -0.5, -0.5]), w)
        if layer._reuse.active_sets.hits:
            break
    assert layer._reuse.active_sets.hits >= 1
    # At y = (1, 0, 0), x = (1, 0, 0) with zero multipliers on x_1, x_2 >= 0: no strict
    # side, so the remembered set does not answer, whatever its point.
    with pytest.warns(UserWarning, match="degenerate"):
        _, _, info = _call(layer, np.array([1.0, 0.0, 0.0]), w)
    assert int(info.iterations[0]) > 0


@pytest.mark.parametrize(
    "solver_args", [{"remember_active_sets": False}, {"backward_method": "gmres"}]
)
def test_the_memory_is_off_where_asked_or_another_backward_is_asked_for(rng, solver_args):
    layer = _simplex_layer(4)
    for _ in range(10):
        y, w = np.array([1.0, 0.5, -1.0, -1.0]) + 0.01 * rng.standard_normal(4), np.ones(4)
        x, _, info = _call(layer, y, w, solver_args=solver_args)
        assert int(info.iterations[0]) > 0
        np.testing.assert_allclose(x, _simplex_projection(y), atol=1e-6)
    assert layer._reuse.active_sets.attempts == 0


def test_float32_calls_are_answered_in_float32(rng):
    layer = _simplex_layer(4)
    center = np.array([1.0, 0.5, -1.0, -1.0])
    remembered = 0
    for _ in range(20):
        y, w = center + 0.02 * rng.standard_normal(4), rng.standard_normal(4)
        x, grad, info = _call(layer, y, w, dtype=torch.float32)
        assert x.dtype == np.float32 and grad.dtype == np.float32
        if int(info.iterations[0]) == 0:
            remembered += 1
            np.testing.assert_allclose(x, _simplex_projection(y), atol=1e-6)
            np.testing.assert_allclose(grad, _simplex_vjp(y, w), atol=1e-6)
    assert remembered >= 10


def test_a_layer_without_constraints_is_answered_by_its_one_set(rng):
    # min 1/2 x'Hx - y'x: a canonical problem with no rows at all; x = H^-1 y.
    n = 3
    M = rng.standard_normal((n, n))
    H = M @ M.T + np.eye(n)
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, H, assume_PSD=True) - y @ x))
    layer = AltDiffLayer(problem, parameters=[y], variables=[x])
    inverse = np.linalg.inv(H)
    remembered = 0
    for _ in range(10):
        values, w = rng.standard_normal(n), rng.standard_normal(n)
        out, grad, info = _call(layer, values, w)
        exact = int(info.iterations[0]) == 0
        remembered += exact
        atol = 1e-12 if exact else 1e-6
        np.testing.assert_allclose(out, inverse @ values, atol=atol)
        np.testing.assert_allclose(grad, inverse.T @ w, atol=atol)
    assert remembered >= 5


def test_a_problem_too_large_for_sixteen_sets_has_no_memory(rng):
    # n = 200 variables and 400 bound rows: a set's matrices take 4.8 MB, so that 16 do
    # not fit in the memory's 64 MiB; learning one would be an inverse of 600 rows.
    n = 200
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) - y @ x), [x <= 1, x >= -1])
    layer = AltDiffLayer(problem, parameters=[y], variables=[x])
    for _ in range(3):
        values = np.full(n, 0.5) + 0.01 * rng.standard_normal(n)
        out, _, info = _call(layer, values, np.ones(n))
        assert int(info.iterations[0]) > 0
        np.testing.assert_allclose(out, np.clip(values, -1, 1), atol=1e-5)
    memory = layer._reuse.active_sets
    assert memory.attempts == 0 and not memory._sets


def test_the_lookup_in_torch_gives_what_numpy_gives(rng, monkeypatch):
    # The lookup runs in torch on other devices than the CPU: here, torch on the CPU.
    monkeypatch.setattr(active_sets, "_namespace", lambda device: torch)
    layer = _simplex_layer(4)
    center = np.array([1.0, 0.5, -1.0, -1.0])
    remembered = 0
    for _ in range(20):
        y, w = center + 0.02 * rng.standard_normal(4), rng.standard_normal(4)
        x, grad, info = _call(layer, y, w)
        if int(info.iterations[0]) == 0:
            remembered += 1
            np.testing.assert_allclose(x, _simplex_projection(y), atol=1e-12)
            np.testing.assert_allclose(grad, _simplex_vjp(y, w), atol=1e-12)
    assert remembered >= 10
