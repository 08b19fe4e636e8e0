"""Small Maros-Meszaros problems through `solve_qp`, as the benchmark runs them.

The files in ``tests/data/maros_meszaros`` come from qpbenchmark's conversion of the
Maros-Meszaros test set (Apache-2.0, see the LICENSE there); ``tests/mm_problems.py``
converts them as qpbenchmark does and computes its residuals. Each problem is solved on
dense tensors and on scipy.sparse matrices at qpbenchmark's mid accuracy (eps_abs = 1e-6,
eps_rel = 0); success is its criterion, in the problem's own units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from mm_problems import MMProblem, load, residuals
from reference import kkt_implicit_gradient, solve_qp_reference

from altdiff_modeling import SolverWarning, solve_qp

DATA = Path(__file__).parent / "data" / "maros_meszaros"
TOL = 1e-6
SETTINGS = {"eps_abs": TOL, "eps_rel": 0.0, "max_iter": 100_000}
#: Problems with a unique, strictly complementary solution (the KKT reference exists).
UNIQUE = ("HS21", "HS35", "HS76", "HS118", "QPTEST", "ZECEVIC2", "GENHS28")
#: Badly scaled LPs on which ADMM alone stalls: the interior-point fallback ends them.
STALLING = ("QSCAGR7", "QSHARE1B")
#: Solutions where the derivative is not unique: a weakly active bound (HS35MOD), dependent
#: active rows (CVXQP2_S: 80 active rows of rank 79, none weakly active; QPCBLEND: 87 of
#: rank 81), and weakly active rows whose other side is dependent (PRIMALC8: 503 active
#: rows, regular, and two weakly active ones taken inactive; with them, 505 of rank 503).
DEGENERATE = ("HS35MOD", "CVXQP2_S", "QPCBLEND", "PRIMALC8")
SOLVED = (*UNIQUE, "LOTSCHD", "QAFIRO", *STALLING, *DEGENERATE)


def _inputs(p: MMProblem, matrices: str) -> dict:
    """``solve_qp``'s keyword arguments for the stacked form (bounds as rows of G)."""
    P, q, A, b, G, h = p.stacked()

    def matrix(M: np.ndarray):
        return sp.csr_array(M) if matrices == "sparse" else torch.from_numpy(M.copy())

    blocks = {"P": matrix(P), "q": torch.from_numpy(q.copy())}
    if b.size:
        blocks.update(A=matrix(A), b=torch.from_numpy(b.copy()))
    if h.size:
        blocks.update(G=matrix(G), h=torch.from_numpy(h.copy()))
    return blocks


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
@pytest.mark.parametrize("name", SOLVED)
def test_problem_is_solved_by_qpbenchmarks_criterion(name, matrices):
    p = load(DATA / f"{name}.mat")
    blocks = _inputs(p, matrices)
    x, lam, nu, info = solve_qp(**blocks, solver_args=SETTINGS, return_info=True, return_duals=True)
    assert info.status == ["solved"], (name, info.status)
    y = lam.numpy().reshape(-1) if "b" in blocks else np.zeros(0)
    z, z_box = p.split_box(nu.numpy().reshape(-1) if "h" in blocks else np.zeros(0))
    res = residuals(p, x.numpy().reshape(-1), y, z, z_box)
    assert max(res.values()) <= TOL, (name, res)


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
@pytest.mark.parametrize("name", UNIQUE)
def test_backward_agrees_with_kkt_differentiation(name, matrices):
    p = load(DATA / f"{name}.mat")
    P, q, A, b, G, h = p.stacked()
    blocks = _inputs(p, matrices)
    leaves = {k: blocks[k].clone().requires_grad_() for k in ("q", "b", "h") if k in blocks}
    blocks.update(leaves)
    x, info = solve_qp(**blocks, solver_args=SETTINGS, return_info=True)
    w = np.random.default_rng(len(name)).standard_normal(p.n)
    grads = torch.autograd.grad((torch.from_numpy(w) * x).sum(), list(leaves.values()))
    assert info.backward_status == ["converged"]

    x_ref, lam_ref, nu_ref = solve_qp_reference(
        P, q, A if b.size else None, b if b.size else None, G, h
    )
    reference = kkt_implicit_gradient(
        P,
        q,
        A if b.size else None,
        b if b.size else None,
        G,
        h,
        x_ref,
        lam_ref,
        nu_ref,
        w,
        active_tol=1e-6,
    )
    expected = {"q": reference[1], "b": reference[3], "h": reference[5]}
    # Relative to the incoming gradient where the expected one is zero (HS118's
    # solution is a vertex: dx/dq = 0).
    for key, grad in zip(leaves, grads, strict=True):
        error = np.linalg.norm(grad.numpy() - expected[key])
        scale = max(np.linalg.norm(expected[key]), np.linalg.norm(w))
        assert error <= 1e-6 * scale, (name, key, error)


@pytest.mark.parametrize("name", STALLING)
def test_interior_point_fallback_ends_a_stalling_lp(name):
    p = load(DATA / f"{name}.mat")
    settings = {**SETTINGS, "max_iter": 3000, "on_failure": "warn"}
    _, alone = solve_qp(
        **_inputs(p, "dense"), solver_args={**settings, "interior_point": False}, return_info=True
    )
    assert alone.status == ["max_iter"]
    _, info = solve_qp(**_inputs(p, "dense"), solver_args=settings, return_info=True)
    assert info.status == ["solved"]


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
@pytest.mark.parametrize("name", DEGENERATE)
def test_degenerate_solution_backward_says_so(name, matrices):
    """Gradients of the bounds at a degenerate solution: the backward converges, warns
    that the derivative is not unique there, and says so per instance. (Dense data's
    active rows are tested for dependence where the direct solve runs: "auto" may pick
    GMRES from the times it measures.)"""
    p = load(DATA / f"{name}.mat")
    blocks = _inputs(p, matrices)
    leaves = {k: blocks[k].clone().requires_grad_() for k in ("q", "b", "h") if k in blocks}
    blocks.update(leaves)
    settings = {**SETTINGS, "backward_method": "direct"}
    x, info = solve_qp(**blocks, solver_args=settings, return_info=True)
    w = torch.from_numpy(np.random.default_rng(len(name)).standard_normal(p.n))
    with pytest.warns(SolverWarning, match="degenerate"):
        grads = torch.autograd.grad((w * x).sum(), list(leaves.values()))
    assert info.backward_status == ["degenerate"]
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_degenerate_lp_backward_says_it_has_no_derivative():
    """QAFIRO's solution is not unique: the backward warns and says why per instance."""
    p = load(DATA / "QAFIRO.mat")
    blocks = _inputs(p, "dense")
    q = blocks["q"].clone().requires_grad_()
    blocks["q"] = q
    x, info = solve_qp(**blocks, solver_args={**SETTINGS, "on_failure": "warn"}, return_info=True)
    with pytest.warns(SolverWarning, match="no reliable derivative"):
        torch.autograd.grad(x.sum(), q)
    assert info.backward_status[0] in ("singular", "max_iter")


def test_finite_problem_is_solved_not_certified_unbounded():
    """STADAT1 (n = 2001) has a finite optimum, -28526864.04 (Clarabel), which loose
    certificate tests once mistook for unboundedness."""
    p = load(DATA / "STADAT1.mat")
    x, info = solve_qp(**_inputs(p, "sparse"), return_info=True)
    assert info.status == ["solved"]
    x = x.numpy().reshape(-1)
    objective = 0.5 * x @ p.P @ x + p.q @ x
    assert abs(objective / -28526864.04 - 1) < 1e-6


@pytest.mark.parametrize("curvature", [1e-7, 1e-9])
def test_small_curvature_is_no_unboundedness_certificate(curvature):
    """``min curvature/2 x^2 - x s.t. x >= -1``: ADMM creeps towards x = 1/curvature
    along a direction with ``P dx`` below any absolute tolerance. Only a tolerance
    scaled to ``||P||`` tells it from a certificate."""
    kind = {"dtype": torch.float64}
    x, info = solve_qp(
        torch.tensor([[curvature]], **kind),
        torch.tensor([-1.0], **kind),
        G=torch.tensor([[-1.0]], **kind),
        h=torch.tensor([1.0], **kind),
        solver_args={"max_iter": 100_000, "on_failure": "warn"},
        return_info=True,
    )
    assert info.status == ["solved"]
    assert abs(float(x) * curvature - 1) < 1e-5
