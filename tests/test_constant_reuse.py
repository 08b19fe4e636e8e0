"""A layer computes what depends only on its constant matrices (the Ruiz equilibration
of P and C, and the penalty weights C'SC) once, and reuses it on later calls."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import altdiff_modeling._function as function_module
from altdiff_modeling import AltDiffLayer


def _problem(rng: np.random.Generator, n: int = 8):
    M = rng.standard_normal((n, n))
    A, G = rng.standard_normal((3, n)), rng.standard_normal((n, n))
    x = cp.Variable(n)
    q, b, h = cp.Parameter(n), cp.Parameter(3), cp.Parameter(n)
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(M.T @ M + np.eye(n))) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
    x0 = rng.standard_normal(n)
    values = [rng.standard_normal(n), A @ x0, G @ x0 + 0.5]
    return problem, [q, b, h], x, values


@pytest.fixture
def equilibrate_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = function_module.equilibrate

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(function_module, "equilibrate", counting)
    return calls


def test_constant_matrices_are_equilibrated_once(equilibrate_calls):
    problem, params, x, values = _problem(np.random.default_rng(0))
    layer = AltDiffLayer(problem, parameters=params, variables=[x])
    rng = np.random.default_rng(1)
    for _ in range(3):
        q = torch.tensor(rng.standard_normal(8), requires_grad=True)
        (out,) = layer(q, *(torch.tensor(v) for v in values[1:]))
        out.sum().backward()
    assert equilibrate_calls[0] == 1


def test_reused_results_equal_a_fresh_layers():
    problem, params, x, values = _problem(np.random.default_rng(2))
    warm = AltDiffLayer(problem, parameters=params, variables=[x])
    tensors = [torch.tensor(v) for v in values]
    warm(*[t * 1.5 for t in tensors])  # fills the cache with other data
    q = tensors[0].clone().requires_grad_()
    (reused,) = warm(q, *tensors[1:])
    (grad_reused,) = torch.autograd.grad(reused.sum(), q)
    fresh = AltDiffLayer(problem, parameters=params, variables=[x])
    q = tensors[0].clone().requires_grad_()
    (first,) = fresh(q, *tensors[1:])
    (grad_first,) = torch.autograd.grad(first.sum(), q)
    assert torch.equal(reused, first)
    assert torch.equal(grad_reused, grad_first)


def test_parametric_and_batched_matrices_are_not_cached(equilibrate_calls):
    rng = np.random.default_rng(3)
    n = 5
    x = cp.Variable(n)
    G = cp.Parameter((4, n))
    h = cp.Parameter(4)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [G @ x <= h])
    layer = AltDiffLayer(problem, parameters=[G, h], variables=[x])
    G1, G2 = torch.tensor(rng.standard_normal((4, n))), torch.tensor(rng.standard_normal((4, n)))
    h_t = torch.ones(4, dtype=torch.float64)
    layer(G1, h_t)
    (b,) = layer(G2, h_t)
    assert equilibrate_calls[0] == 2
    fresh = AltDiffLayer(problem, parameters=[G, h], variables=[x])
    assert torch.equal(b, fresh(G2, h_t)[0])
