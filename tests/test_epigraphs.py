"""Bound epigraph variables (``cp.abs(u) <= c``, ``cp.max(x) <= c``): the layer solves
without them. References: CVXPY + Clarabel at tight tolerance (solutions and the
bounds' multipliers) and central finite differences of it (gradients)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from reference import finite_difference_gradient, solve_reference
from sparse_families import mpc

from altdiff_modeling import AltDiffLayer

TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iter": 200_000}


def _bounds_problem(rng: np.random.Generator):
    x, u = cp.Variable(4, name="x"), cp.Variable(3, name="u")
    a, b, c = cp.Parameter(4), cp.Parameter(3), cp.Parameter(nonneg=True)
    e = cp.Parameter()
    abs_bound, max_bound = cp.abs(u) <= c, cp.max(x) <= 0.5
    problem = cp.Problem(
        cp.Minimize(cp.sum_squares(x - a) + cp.sum_squares(u - b)),
        [abs_bound, max_bound, x[0] + u[0] == e],
    )
    # e below 0.9 = max x0 + max u0: feasible
    values = [rng.normal(0, 1, 4), rng.normal(0, 1, 3), 0.4, rng.uniform(-0.6, 0.6)]
    return problem, [a, b, c, e], values, [x, u], [abs_bound, max_bound]


def _check_against_clarabel(problem, params, values, outputs, bounds, backend, rng) -> None:
    duals = [constraint.dual_variables[0] for constraint in bounds]
    layer = AltDiffLayer(
        problem, params, outputs + duals, solver_args={**TIGHT, "backend": backend}
    )
    assert layer._presolve.epigraphs is not None
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    got = layer(*tensors)
    point = dict(zip(params, values, strict=True))
    expected = solve_reference(problem, point, outputs)
    expected += [np.reshape(constraint.dual_value, constraint.shape) for constraint in bounds]
    for value, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(value.detach().numpy(), reference, atol=1e-6)
    weights = [rng.standard_normal(o.shape) for o in outputs]
    loss = sum((torch.as_tensor(w) * o).sum() for w, o in zip(weights, got, strict=False))
    gradients = torch.autograd.grad(loss, tensors)
    differences = finite_difference_gradient(problem, point, outputs, weights)
    for param, gradient in zip(params, gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), differences[param], atol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_abs_and_max_bounds_are_solved_without_their_epigraphs(
    rng: np.random.Generator, backend: str
) -> None:
    problem, params, values, outputs, bounds = _bounds_problem(rng)
    layer = AltDiffLayer(problem, params, outputs)
    # One t per |u_i| and one for max(x); each t <= c row and its rows combine into
    # -c <= u_i <= c and x_i <= 0.5.
    epigraphs = layer._presolve.epigraphs
    assert epigraphs.eliminated.size == 4 and epigraphs.free.size == layer._form.n - 4
    assert epigraphs.multipliers.shape == (layer._form.n_rows, layer._form.n_rows - 4)
    _check_against_clarabel(problem, params, values, outputs, bounds, backend, rng)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_an_mpc_with_input_and_state_bounds_matches_clarabel(
    rng: np.random.Generator, backend: str
) -> None:
    family = mpc(4, 3, rng, n_u=2, dynamics_parameters=True)
    bounds = [family.problem.constraints[2], family.problem.constraints[3]]
    _check_against_clarabel(
        family.problem, family.parameters, family.values, family.variables, bounds, backend, rng
    )


def test_an_epigraph_with_a_cost_is_kept() -> None:
    u, b = cp.Variable(3), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(u - b) + cp.norm1(u)))
    layer = AltDiffLayer(problem, [b], [u])
    assert layer._presolve.epigraphs is None


def test_a_variable_bounded_from_one_side_only_drops_its_rows() -> None:
    # s is no output and has no cost: x <= s holds for s large enough, so the row goes,
    # with a zero multiplier.
    x, s, a = cp.Variable(2), cp.Variable(2), cp.Parameter(2)
    bound = x <= s
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [bound, x >= -1])
    layer = AltDiffLayer(problem, [a], [x, bound.dual_variables[0]], solver_args=TIGHT)
    epigraphs = layer._presolve.epigraphs
    assert epigraphs.eliminated.size == 2
    assert epigraphs.multipliers.shape == (layer._form.n_rows, layer._form.n_rows - 2)
    x_out, multiplier = layer(torch.tensor([0.3, -2.0], dtype=torch.float64))
    torch.testing.assert_close(
        x_out, torch.tensor([0.3, -1.0], dtype=torch.float64), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(multiplier, torch.zeros(2, dtype=torch.float64))
