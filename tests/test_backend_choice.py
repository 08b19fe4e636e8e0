"""backend="auto" between dense and sparse: by structure, and by measured times where the
structure cannot tell."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import torch

from altdiff_modeling import AltDiffLayer
from altdiff_modeling._backend_choice import BackendChoice

KIND = (8, torch.float64, "cpu")


def _run(choice: BackendChoice, seconds: dict[str, float], calls: int) -> list[str]:
    picked = []
    for _ in range(calls):
        backend = choice.pick(KIND)
        choice.record(KIND, backend, seconds[backend])
        picked.append(backend)
    return picked


def test_each_backend_is_tried_twice_then_the_faster_one_is_kept():
    for faster, slower in (("sparse", "dense"), ("dense", "sparse")):
        choice = BackendChoice("dense", sparse_pattern=True)
        picked = _run(choice, {faster: 0.1, slower: 1.0}, 7)
        assert picked == ["dense", "dense", "sparse", "sparse"] + [faster] * 3


def test_the_first_call_of_each_backend_is_not_timed():
    # The sparse backend's first call pays its one-time setup: its second call decides.
    choice = BackendChoice("dense", sparse_pattern=True)
    for backend, seconds in (("dense", 1.0), ("dense", 1.0), ("sparse", 9.0), ("sparse", 0.1)):
        assert choice.pick(KIND) == backend
        choice.record(KIND, backend, seconds)
    assert choice.pick(KIND) == "sparse"
    assert choice.pick((64, torch.float64, "cpu")) == "dense"  # another kind starts over


def test_structure_decides_where_it_can():
    assert _run(BackendChoice("dense", sparse_pattern=False), {"dense": 1.0}, 3) == ["dense"] * 3
    large = BackendChoice("sparse", sparse_pattern=True)
    assert _run(large, {"sparse": 1.0}, 3) == ["sparse"] * 3


def _dynamics_layer(T: int) -> tuple[AltDiffLayer, cp.Problem, list[cp.Parameter], cp.Variable]:
    """An MPC layer with parametric dynamics ``x[t+1] == A x[t] + B u[t]``: the
    parameters A and B multiply variables, so a batch of them is a batch of sparse
    constraint matrices."""
    nx, nu = 4, 2
    A, B, x_init = cp.Parameter((nx, nx)), cp.Parameter((nx, nu)), cp.Parameter(nx)
    x, u = cp.Variable((T + 1, nx)), cp.Variable((T, nu))
    constraints = [x[0] == x_init, cp.abs(u) <= 1]
    constraints += [x[t + 1] == A @ x[t] + B @ u[t] for t in range(T)]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), constraints)
    layer = AltDiffLayer(problem, parameters=[A, B, x_init], variables=[u])
    return layer, problem, [A, B, x_init], u


def test_a_layer_with_per_instance_sparse_matrices_times_both_backends(rng):
    T, B = 20, 3
    layer, problem, params, u = _dynamics_layer(T)
    assert layer.backend == "dense" and layer._auto_backend.timed
    used = []
    for _ in range(6):
        values = [
            np.eye(4) + 0.1 * rng.standard_normal((B, 4, 4)),
            rng.standard_normal((B, 4, 2)),
            rng.uniform(-1, 1, (B, 4)),
        ]
        (out,) = layer(*(torch.tensor(v) for v in values), solver_args={"warm_start": True})
        used.append(layer._last_solves[0])
        for i in range(B):
            for p, v in zip(params, values, strict=True):
                p.value = v[i]
            problem.solve(cp.CLARABEL)
            np.testing.assert_allclose(out[i].numpy(), u.value, atol=1e-5)
    assert used[:4] == ["dense", "dense", "sparse", "sparse"]
    assert used[4] == used[5] in ("dense", "sparse")


def _relu_layer(d: int) -> tuple[AltDiffLayer, cp.Problem, list[cp.Parameter], cp.Variable]:
    """``min ||z - W x - b||^2 s.t. z >= 0`` with W, x, b parameters, CVXPY's form of
    the ReLU layer: a variable copy of W times the parameter x, which the layer
    eliminates (`FixedVariables`), so that no matrix depends on a parameter."""
    W, x, b = cp.Parameter((d, d)), cp.Parameter(d), cp.Parameter(d)
    z, Wt = cp.Variable(d), cp.Variable((d, d))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - Wt @ x - b)), [z >= 0, Wt == W])
    return AltDiffLayer(problem, parameters=[W, x, b], variables=[z]), problem, [W, x, b], z


def test_a_layer_whose_matrices_are_shared_does_not_time_them(rng):
    d, B = 6, 3
    layer, *_ = _relu_layer(d)
    for _ in range(5):
        W, x = (torch.tensor(rng.standard_normal((B, *shape))) for shape in ((d, d), (d,)))
        layer(W, x, torch.tensor(rng.standard_normal((B, d))))
        assert layer._last_solves[0] == "dense"
    assert not layer._auto_backend._calls
