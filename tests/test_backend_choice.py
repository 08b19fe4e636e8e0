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


def _relu_layer(d: int) -> tuple[AltDiffLayer, cp.Problem, list[cp.Parameter], cp.Variable]:
    """``min ||z - W x - b||^2 s.t. z >= 0`` with W, x, b parameters, CVXPY's form of
    the ReLU layer: a variable copy of W times the parameter x puts x into the
    constraint matrix."""
    W, x, b = cp.Parameter((d, d)), cp.Parameter(d), cp.Parameter(d)
    z, Wt = cp.Variable(d), cp.Variable((d, d))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - Wt @ x - b)), [z >= 0, Wt == W])
    return AltDiffLayer(problem, parameters=[W, x, b], variables=[z]), problem, [W, x, b], z


def test_a_layer_with_per_instance_sparse_matrices_times_both_backends(rng):
    d, B = 6, 3
    layer, problem, params, z = _relu_layer(d)
    assert layer.backend == "dense" and layer._auto_backend.timed
    used = []
    for _ in range(6):
        values = [
            rng.standard_normal((B, d, d)),
            rng.standard_normal((B, d)),
            0.1 * rng.standard_normal((B, d)),
        ]
        (out,) = layer(*(torch.tensor(v) for v in values), solver_args={"warm_start": True})
        used.append(layer._last_backend)
        for i in range(B):
            for p, v in zip(params, values, strict=True):
                p.value = v[i]
            problem.solve(cp.CLARABEL)
            np.testing.assert_allclose(out[i].numpy(), z.value, atol=1e-5)
    assert used[:4] == ["dense", "dense", "sparse", "sparse"]
    assert used[4] == used[5] in ("dense", "sparse")


def test_a_layer_whose_matrices_are_shared_does_not_time_them(rng):
    # W and x shared (the constraint matrix holds x: W~ x), b batched: one C for the batch.
    d, B = 6, 3
    layer, *_ = _relu_layer(d)
    for _ in range(5):
        W, x = (torch.tensor(rng.standard_normal(shape)) for shape in ((d, d), (d,)))
        layer(W, x, torch.tensor(rng.standard_normal((B, d))))
        assert layer._last_backend == "dense"
    assert not layer._auto_backend._calls
