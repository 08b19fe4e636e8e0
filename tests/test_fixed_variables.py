"""Variables fixed by an equality row of their own: the layer solves without them.

The references are CVXPY + Clarabel at tight tolerance (solutions, multipliers),
central finite differences of it (gradients), the closed-form ReLU layer, and the data of
the whole problem (the reduced data must be its rows and columns, with the fixed
variables' terms moved into q and the bounds).
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from reference import finite_difference_gradient, solve_reference

from altdiff_modeling import AltDiffLayer
from altdiff_modeling._canon import dense_qp, reduce_problem
from altdiff_modeling._fixed_variables import FixedVariables

TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iter": 200_000}


def _coupled_problem(rng: np.random.Generator):
    """A QP whose fixed variables (x0 == x_init, 2 w == p) reach P, q, an equality and
    inequalities; outputs u, x0 and the multipliers of x0's and w's rows."""
    x0, u, w = cp.Variable(3, name="x0"), cp.Variable(4, name="u"), cp.Variable(name="w")
    x_init, c, h, e = cp.Parameter(3), cp.Parameter(4), cp.Parameter(4), cp.Parameter(2)
    p = cp.Parameter()
    M = rng.standard_normal((7, 7))
    Q = M @ M.T / 7 + 0.1 * np.eye(7)
    E = rng.standard_normal((2, 7))
    stacked = cp.hstack([x0, u])
    fix_x0, fix_w, bounds = x0 == x_init, 2 * w == p, u <= h
    constraints = [
        fix_x0,
        fix_w,
        bounds,
        E @ stacked + w == e,
        cp.sum(u) - w <= 1.0,
        u[0] + x0[1] <= 2.0,
    ]
    objective = cp.quad_form(stacked, Q) + c @ u + 0.5 * w**2 + (x_init @ x0)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    params = [x_init, c, h, p, e]
    x_value, u_inside = rng.standard_normal(3), -rng.uniform(0.1, 0.5, 4)
    p_value = 0.7
    # e such that u = u_inside (strictly inside u <= h and the sum's bound) is feasible.
    e_value = E @ np.concatenate([x_value, u_inside]) + p_value / 2
    values = [x_value, rng.standard_normal(4), rng.uniform(0.1, 0.5, 4), p_value, e_value]
    outputs = [u, x0, w]
    duals = [fix_x0, fix_w, bounds]
    return problem, params, values, outputs, duals


def _relu_problem(D: int):
    z, W_var = cp.Variable(D), cp.Variable((D, D))
    x, W, b = cp.Parameter(D), cp.Parameter((D, D)), cp.Parameter(D)
    copy = W_var == W
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - W_var @ x - b)), [z >= 0, copy])
    return problem, [x, W, b], z, copy


def test_only_rows_of_one_constant_entry_fix_their_variable() -> None:
    x, y, v = cp.Variable(2), cp.Variable(), cp.Variable()
    p = cp.Parameter(value=2.0)
    problem = cp.Problem(
        cp.Minimize(cp.sum_squares(x) + y**2 + v**2),
        [
            x[0] == 1.0,  # fixes x0
            p * y == 1.0,  # a parametric coefficient: kept
            v == p,  # fixes v ...
            3 * v == 3 * p,  # ... twice: kept
            x[1] + y >= 0.5,
        ],
    )
    form = reduce_problem(problem, [p], [x, y, v])
    reduced, fixed = FixedVariables.of(form)
    x_column = form.variables[0].index[0]
    assert fixed.fixed.tolist() == [x_column]
    assert np.abs(fixed.coefficient).tolist() == [1.0]  # CVXPY may write 1 - x0 == 0
    assert reduced.n == form.n - 1 and reduced.n_rows == form.n_rows - 1
    assert reduced.n_eq == form.n_eq - 1


@pytest.mark.parametrize("name", ["coupled", "relu"])
def test_the_reduced_data_is_the_whole_data_without_the_fixed_rows_and_columns(
    rng: np.random.Generator, name: str
) -> None:
    """Constant coefficients' terms are in the reduced affine maps (the coupled
    problem), parametric ones are a call's terms (the ReLU layer's W_tilde @ x)."""
    if name == "coupled":
        problem, params, values, outputs, _ = _coupled_problem(rng)
    else:
        D = 3
        problem, params, z, _ = _relu_problem(D)
        values, outputs = (
            [rng.standard_normal(D), rng.standard_normal((D, D)), rng.standard_normal(D)],
            [z],
        )
    form = reduce_problem(problem, params, outputs)
    reduced_form, fixed = FixedVariables.of(form)
    assert fixed.fixed.size == (4 if name == "coupled" else 9)  # x0 and w; W_tilde
    assert fixed.per_call == (name == "relu")
    whole_qp, reduced_qp = dense_qp(form), dense_qp(reduced_form)
    theta = torch.tensor(np.concatenate([np.ravel(v, order="F") for v in values]))[None]
    whole = whole_qp.data(theta)
    values_ = fixed.values(theta)
    data = reduced_qp.data(theta)
    q_terms, bound_terms = fixed.terms(values_)
    data_q = data.q if q_terms is None else data.q + q_terms
    data_bound = data.bound if bound_terms is None else data.bound + bound_terms

    free, fx, kept, rows = (
        torch.as_tensor(a) for a in (fixed.free, fixed.fixed, fixed.kept, fixed.rows)
    )
    P, C = whole.P[0], whole.C[0]
    x_fixed = whole.bound[0, rows] / torch.as_tensor(fixed.coefficient)
    torch.testing.assert_close(values_.x[0], x_fixed, rtol=0, atol=1e-14)
    torch.testing.assert_close(C[rows][:, fx], torch.diag(torch.as_tensor(fixed.coefficient)))
    torch.testing.assert_close(data.P[0], P[free][:, free], rtol=0, atol=1e-14)
    torch.testing.assert_close(data.C[0], C[kept][:, free], rtol=0, atol=1e-14)
    q = whole.q[0, free] + P[free][:, fx] @ x_fixed
    bound = whole.bound[0, kept] - C[kept][:, fx] @ x_fixed
    torch.testing.assert_close(data_q[0], q, rtol=0, atol=1e-13)
    torch.testing.assert_close(data_bound[0], bound, rtol=0, atol=1e-13)
    assert data.n_eq == whole.n_eq - rows.numel()


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_a_layer_with_fixed_variables_matches_clarabel_and_finite_differences(
    rng: np.random.Generator, backend: str
) -> None:
    problem, params, values, outputs, duals = _coupled_problem(rng)
    dual_variables = [constraint.dual_variables[0] for constraint in duals]
    layer = AltDiffLayer(
        problem, params, outputs + dual_variables, solver_args={**TIGHT, "backend": backend}
    )
    assert layer._fixed is not None
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    got = layer(*tensors)
    reference = solve_reference(problem, dict(zip(params, values, strict=True)), outputs)
    reference += [np.reshape(c.dual_value, c.shape) for c in duals]
    for value, expected in zip(got, reference, strict=True):
        np.testing.assert_allclose(value.detach().numpy(), expected, atol=1e-6)

    weights = [rng.standard_normal(o.shape) for o in outputs]
    loss = sum((torch.as_tensor(w) * o).sum() for w, o in zip(weights, got, strict=False))
    gradients = torch.autograd.grad(loss, tensors)
    expected = finite_difference_gradient(
        problem, dict(zip(params, values, strict=True)), outputs, weights
    )
    for param, gradient in zip(params, gradients, strict=True):
        np.testing.assert_allclose(gradient.numpy(), expected[param], atol=1e-5)


def test_the_multipliers_of_fixing_rows_are_differentiated(rng: np.random.Generator) -> None:
    """Reverse mode (without the fixed variables) against forward mode's Jacobian (the
    whole problem), for an output that is a fixing row's multiplier."""
    problem, params, values, _, duals = _coupled_problem(rng)
    layer = AltDiffLayer(problem, params, [duals[0].dual_variables[0]], solver_args=TIGHT)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    (multiplier,) = layer(*tensors)
    weight = torch.as_tensor(rng.standard_normal(3))
    gradients = torch.autograd.grad((weight * multiplier).sum(), tensors)
    (jacobians,) = layer.jacobian(*tensors)
    for gradient, jacobian in zip(gradients, jacobians, strict=True):
        expected = torch.tensordot(weight, jacobian, dims=1)
        torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_a_relu_layer_solves_without_its_parameter_copies(
    rng: np.random.Generator, backend: str
) -> None:
    """``min ||z - W~ x - b||^2 s.t. z >= 0, W~ == W``: z = max(Wx + b, 0), the
    solve has only z and the objective's auxiliary variables, and W~'s multipliers match
    Clarabel's."""
    D, B = 4, 3
    problem, params, z, copy = _relu_problem(D)
    layer = AltDiffLayer(
        problem, params, [z, copy.dual_variables[0]], solver_args={**TIGHT, "backend": backend}
    )
    assert layer._solved.n == layer._form.n - D * D
    x = torch.tensor(rng.standard_normal((B, D)), requires_grad=True)
    W = torch.tensor(rng.standard_normal((B, D, D)) / math.sqrt(D), requires_grad=True)
    b = torch.tensor(0.1 * rng.standard_normal((B, D)), requires_grad=True)
    z_out, multipliers = layer(x, W, b)
    pre = (W @ x.unsqueeze(-1)).squeeze(-1) + b
    torch.testing.assert_close(z_out, pre.clamp(min=0), rtol=0, atol=1e-9)
    for i in range(B):
        values = {params[0]: x[i].detach().numpy(), params[1]: W[i].detach().numpy()}
        values[params[2]] = b[i].detach().numpy()
        solve_reference(problem, values, [z])
        np.testing.assert_allclose(multipliers[i].detach().numpy(), copy.dual_value, atol=1e-6)

    weight = torch.as_tensor(rng.standard_normal((B, D)))
    gradients = torch.autograd.grad((weight * z_out).sum(), (x, W, b))
    expected = torch.autograd.grad((weight * pre.clamp(min=0)).sum(), (x, W, b))
    for gradient, closed_form in zip(gradients, expected, strict=True):
        torch.testing.assert_close(gradient, closed_form, rtol=0, atol=1e-8)


def test_warm_starts_alternate_between_forward_and_reverse_mode(
    rng: np.random.Generator,
) -> None:
    """Forward mode solves the whole problem, reverse mode the reduced one: a warm start
    is taken from a call of the same kind only."""
    problem, params, values, outputs, _ = _coupled_problem(rng)
    layer = AltDiffLayer(problem, params, outputs, solver_args={**TIGHT, "warm_start": True})
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    reference = solve_reference(problem, dict(zip(params, values, strict=True)), outputs)
    for mode in ("reverse", "forward", "forward", "reverse", "reverse"):
        got = layer(*tensors, solver_args={"mode": mode})
        for value, expected in zip(got, reference, strict=True):
            np.testing.assert_allclose(value.detach().numpy(), expected, atol=1e-6)


def test_an_instance_the_solve_fails_on_is_nan_in_every_output() -> None:
    x0, x1 = cp.Variable(name="x0"), cp.Variable(name="x1")
    p, q = cp.Parameter(), cp.Parameter()
    problem = cp.Problem(cp.Minimize(x0**2 + x1**2), [x0 == p, x1 >= 1, x1 <= q])
    layer = AltDiffLayer(problem, [p, q], [x0, x1], solver_args={"on_failure": "nan"})
    assert layer._fixed is not None
    x0_out, x1_out = layer(torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0]))
    assert x0_out[0].item() == pytest.approx(0.5) and x1_out[0].item() == pytest.approx(1.0)
    assert x0_out[1].isnan() and x1_out[1].isnan()  # q = 0 < 1: infeasible
