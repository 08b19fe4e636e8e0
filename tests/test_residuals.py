"""Residual variables of the objective (``cp.sum_squares(F @ x - y)``): the layer
substitutes them into P and q. References: CVXPY + Clarabel at tight tolerance, central
finite differences of it, and the closed-form ReLU layer."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from reference import finite_difference_gradient, solve_reference

from altdiff_modeling import AltDiffLayer

TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iter": 200_000}


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_a_least_squares_layer_is_solved_without_its_residuals(
    rng: np.random.Generator, backend: str
) -> None:
    m, n = 12, 5
    F = rng.standard_normal((m, n))
    x, y, lower = cp.Variable(n), cp.Parameter(m), cp.Parameter(n)
    bound = x >= lower
    problem = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - y)), [bound, cp.sum(x) <= 1])
    layer = AltDiffLayer(
        problem, [y, lower], [x, bound.dual_variables[0]], solver_args={**TIGHT, "backend": backend}
    )
    residuals = layer._presolve.residuals
    assert residuals is not None and residuals.eliminated.size == m
    assert layer._solved.n == n and layer._solved.n_eq == 0
    values = [rng.standard_normal(m), rng.uniform(-1, 0, n)]
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    x_out, multiplier = layer(*tensors)
    point = dict(zip([y, lower], values, strict=True))
    (expected,) = solve_reference(problem, point, [x])
    np.testing.assert_allclose(x_out.detach().numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(multiplier.detach().numpy(), bound.dual_value, atol=1e-6)
    weights = [rng.standard_normal(n)]
    gradients = torch.autograd.grad((torch.as_tensor(weights[0]) * x_out).sum(), tensors)
    differences = finite_difference_gradient(problem, point, [x], weights)
    for param, gradient in zip([y, lower], gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), differences[param], atol=1e-5)


def test_residuals_that_would_fill_p_in_are_kept(rng: np.random.Generator) -> None:
    # 3 rows of 10 dense columns: F'F would add 90 entries to P where the rows have 33.
    F = rng.standard_normal((3, 10))
    x, y = cp.Variable(10), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - y) + cp.sum_squares(x)))
    layer = AltDiffLayer(problem, [y], [x], solver_args=TIGHT)
    assert layer._presolve.residuals is None and layer._solved.n_eq == 3
    values = rng.standard_normal(3)
    (x_out,) = layer(torch.tensor(values))
    (expected,) = solve_reference(problem, {y: values}, [x])
    np.testing.assert_allclose(x_out.numpy(), expected, atol=1e-7)


def test_a_relu_layer_carries_its_per_call_terms_through_the_substitution(
    rng: np.random.Generator,
) -> None:
    """``min ||z - W~ x - b||^2 s.t. z >= 0, W~ == W``: W~ goes (`FixedVariables`, whose
    W~ x terms are per call), then the residuals r = z - W~ x - b, whose rows carry
    those terms into q."""
    D, B = 5, 4
    z, W_var = cp.Variable(D), cp.Variable((D, D))
    x, W, b = cp.Parameter(D), cp.Parameter((D, D)), cp.Parameter(D)
    copy = W_var == W
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - W_var @ x - b)), [z >= 0, copy])
    layer = AltDiffLayer(problem, [x, W, b], [z], solver_args=TIGHT)
    assert layer._presolve.residuals is not None and layer._presolve.fixed.per_call
    assert layer._solved.n == D and layer._solved.n_eq == 0
    xs = torch.tensor(rng.standard_normal((B, D)), requires_grad=True)
    Ws = torch.tensor(rng.standard_normal((B, D, D)) / math.sqrt(D), requires_grad=True)
    bs = torch.tensor(0.1 * rng.standard_normal((B, D)), requires_grad=True)
    (z_out,) = layer(xs, Ws, bs)
    pre = (Ws @ xs.unsqueeze(-1)).squeeze(-1) + bs
    torch.testing.assert_close(z_out, pre.clamp(min=0), rtol=0, atol=1e-9)
    weight = torch.as_tensor(rng.standard_normal((B, D)))
    gradients = torch.autograd.grad((weight * z_out).sum(), (xs, Ws, bs))
    expected = torch.autograd.grad((weight * pre.clamp(min=0)).sum(), (xs, Ws, bs))
    for gradient, closed_form in zip(gradients, expected, strict=True):
        torch.testing.assert_close(gradient, closed_form, rtol=0, atol=1e-8)
    # Reading W~'s multipliers needs the residual rows' own: they stay.
    with_duals = AltDiffLayer(problem, [x, W, b], [z, copy.dual_variables[0]])
    assert with_duals._presolve.residuals is None
