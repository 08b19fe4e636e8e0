"""The sparse backend's polish: when it is tried, its damped active-set rounds, and the
small LPs of the QP suite, whose active-set systems are the most delicate."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from qp_suite import QPInstance, make_suite
from reference import relative_error, solve_reference
from sparse_families import lasso

import altdiff_modeling._sparse_polish as sparse_polish
from altdiff_modeling import AltDiffLayer


def _lasso_solve(solver_args: dict) -> tuple[np.ndarray, object, np.ndarray]:
    """A 300-feature lasso whose ADMM estimates settle by iteration 50 and whose
    polish from there needs the damped rounds' restart: solution, info, reference."""
    fam = lasso(300, np.random.default_rng(1))
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "sparse"}
    )
    inputs = [torch.tensor(v) for v in fam.values]
    (x,), info = layer(*inputs, return_info=True, solver_args={"on_failure": "nan", **solver_args})
    values = dict(zip(fam.parameters, fam.values))
    return x.numpy(), info, solve_reference(fam.problem, values, fam.variables)[0]


def test_a_sparse_problem_polishes_early(unlimited_polishing) -> None:
    # Its polish is tried from the second check on (with an unlimited budget: every
    # check), and ends the solve long before ADMM alone would.
    x, info, reference = _lasso_solve({})
    assert info.status == ["solved"] and int(info.iterations[0]) <= 60
    assert relative_error(x, reference) < 1e-9
    x, info, _ = _lasso_solve({"polish": False})
    assert int(info.iterations[0]) > 100


def test_stalled_damped_rounds_restart_with_stronger_damping(
    monkeypatch, unlimited_polishing
) -> None:
    """On this lasso's iterates, damped rounds with half the worst score stall; going
    back to the best round with a stronger damping finds the solution (at iteration 20).
    Without the restarts no polish succeeds by iteration 50. The interior-point
    fallback, which starts once the solve has spent its measured time, is off
    (`unlimited_polishing`): on a slow machine it ended the second solve too."""
    x, info, reference = _lasso_solve({"max_iter": 50})
    assert info.status == ["solved"]
    assert relative_error(x, reference) < 1e-9
    monkeypatch.setattr(sparse_polish, "_DAMPED_RESTARTS", 0)
    _, info, _ = _lasso_solve({"max_iter": 50})
    assert info.status == ["max_iter"]


def _suite_lp_layer(inst: QPInstance) -> tuple[AltDiffLayer, list[torch.Tensor], cp.Problem]:
    """A sparse-backend layer over one LP of the QP suite (its q, b, h as parameters)."""
    x = cp.Variable(inst.n)
    q, h = cp.Parameter(inst.n), cp.Parameter(inst.h.size)
    parameters, values, constraints = [q, h], [inst.q, inst.h], [inst.G @ x <= h]
    if inst.b.size:
        b = cp.Parameter(inst.b.size)
        parameters.append(b)
        values.append(inst.b)
        constraints.append(inst.A @ x == b)
    problem = cp.Problem(cp.Minimize(q @ x), constraints)
    for parameter, value in zip(parameters, values):
        parameter.value = value
    args = {"backend": "sparse", "eps_abs": 1e-5, "eps_rel": 1e-5, "max_iter": 5000}
    layer = AltDiffLayer(problem, parameters, [x], solver_args=args)
    return layer, [torch.from_numpy(v) for v in values], problem


@pytest.mark.parametrize(
    "inst", [i for i in make_suite(seed=0) if i.kind == "lp" and i.n <= 40], ids=lambda i: i.name
)
def test_small_lps_of_the_suite_solve_on_the_sparse_backend(inst: QPInstance) -> None:
    """With P = 0 the polish's regularized systems hold only delta = 1e-9 on the
    variables' diagonal, where an elimination order that takes a row before its
    variables loses the pivots (qdldl's AMD order on these small systems left 11 of
    these 24 LPs unsolved)."""
    layer, inputs, problem = _suite_lp_layer(inst)
    (x,), info = layer(*inputs, return_info=True)
    assert info.status == ["solved"], inst.name
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    value = float(inst.q @ x.numpy())
    assert abs(value - problem.value) <= 1e-3 * (1 + abs(problem.value)), inst.name
