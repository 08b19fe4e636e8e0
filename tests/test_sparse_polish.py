"""The sparse backend's polish: when it is tried, and its damped active-set rounds."""

from __future__ import annotations

import numpy as np
import torch
from reference import relative_error, solve_reference
from sparse_families import lasso

import altdiff_modeling._sparse_admm as sparse_admm
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


def test_settled_estimates_polish_before_the_hundredth_iteration(monkeypatch) -> None:
    x, info, reference = _lasso_solve({})
    assert info.status == ["solved"] and info.iterations.tolist() == [50]
    assert relative_error(x, reference) < 1e-9
    monkeypatch.setattr(sparse_admm, "_SETTLED_ROWS", -1.0)  # never settled
    x, info, _ = _lasso_solve({})
    assert info.status == ["solved"] and info.iterations.tolist() == [100]
    assert relative_error(x, reference) < 1e-9


def test_stalled_damped_rounds_restart_with_stronger_damping(monkeypatch) -> None:
    """From the iterate at 50 (the last iteration: it polishes), damped rounds with
    half the worst score stall; going back to the best round with a stronger damping
    finds the solution."""
    x, info, reference = _lasso_solve({"max_iter": 50})
    assert info.status == ["solved"]
    assert relative_error(x, reference) < 1e-9
    monkeypatch.setattr(sparse_polish, "_DAMPED_RESTARTS", 0)
    _, info, _ = _lasso_solve({"max_iter": 50})
    assert info.status == ["max_iter"]
