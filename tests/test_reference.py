"""The references check themselves (no ``altdiff_modeling`` here).

* The KKT implicit gradient agrees with central finite differences of Clarabel on random
  non-degenerate QPs and LPs, for all six data blocks.
* Finite differences of a PSD-parameter problem follow the documented symmetric
  convention and agree with the analytic gradient.
* Every problem family is DPP, reduces to a polyhedral QP, is non-degenerate in CVXPY's
  canonical form, and its reference solution is the one the family was built from.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
from families import FAMILIES, build_family, param_values, random_qp
from reference import (
    canonical_margins,
    finite_difference_gradient,
    kkt_implicit_gradient,
    relative_error,
    solve_qp_reference,
    solve_reference,
)

_BLOCKS = ("P", "q", "A", "b", "G", "h")


def test_relative_error() -> None:
    b = np.array([3.0, 4.0])
    assert relative_error(b, b) == 0.0
    assert relative_error(b + np.array([0.0, 0.5]), b) == pytest.approx(0.1)
    assert relative_error([b, b], [b, b]) == 0.0
    assert relative_error(np.array([1e-3]), np.zeros(1)) == pytest.approx(1e9)
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_error(np.zeros(2), np.zeros(3))


# --------------------------------------------------------------------------------------
# KKT implicit gradient vs finite differences of Clarabel
# --------------------------------------------------------------------------------------


def _fd_qp_gradient(data: dict, grad_x: np.ndarray, blocks, step: float = 1e-4) -> dict:
    """Central differences of ``<grad_x, x*(data)>`` per entry, P perturbed symmetrically."""
    args = {k: data[k] for k in _BLOCKS}

    def loss(name: str, delta: np.ndarray) -> float:
        perturbed = dict(args)
        perturbed[name] = args[name] + delta
        x, _, _ = solve_qp_reference(*(perturbed[k] for k in _BLOCKS))
        return float(grad_x @ x)

    out = {}
    for name in blocks:
        value = args[name]
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            if name == "P" and idx[0] > idx[1]:
                continue
            e = np.zeros_like(value)
            e[idx] = 1.0
            if name == "P":
                e[idx[::-1]] = 1.0
            d = (loss(name, step * e) - loss(name, -step * e)) / (2 * step)
            if name == "P" and idx[0] != idx[1]:
                g[idx] = g[idx[::-1]] = d / 2  # gradient of P -> L(sym(P))
            else:
                g[idx] = d
        out[name] = g
    return out


@pytest.mark.parametrize(
    ("n", "n_eq", "n_ineq", "n_active", "lp"),
    [
        pytest.param(4, 1, 6, 2, False, id="qp"),
        pytest.param(4, 0, 6, 3, False, id="qp_ineq_only"),
        pytest.param(4, 2, 0, 0, False, id="qp_eq_only"),
        pytest.param(3, 1, 5, 2, True, id="lp_vertex"),
    ],
)
def test_kkt_gradient_matches_finite_differences(rng, n, n_eq, n_ineq, n_active, lp) -> None:
    data = random_qp(rng, n=n, n_eq=n_eq, n_ineq=n_ineq, n_active=n_active, lp=lp)
    x, lam, nu = solve_qp_reference(*(data[k] for k in _BLOCKS))
    # The reference solve reproduces the certificate the QP was built from.
    assert relative_error(x, data["x"]) < 1e-9
    assert relative_error(lam, data["lam"]) < 1e-8
    assert relative_error(nu, data["nu"]) < 1e-8

    grad_x = rng.standard_normal(n)
    kkt = dict(zip(_BLOCKS, kkt_implicit_gradient(*(data[k] for k in _BLOCKS), x, lam, nu, grad_x)))
    # P = 0 of an LP cannot be perturbed in both directions and stay PSD.
    blocks = [k for k in _BLOCKS if data[k] is not None and not (lp and k == "P")]
    fd = _fd_qp_gradient(data, grad_x, blocks)
    scale = np.linalg.norm(np.concatenate([fd[k].ravel() for k in blocks]))
    assert relative_error([kkt[k] for k in blocks], [fd[k] for k in blocks]) < 1e-6
    for name in blocks:
        assert kkt[name].shape == data[name].shape
        # Blockwise relative error; blocks that vanish (dq of an LP vertex) are compared
        # on the scale of the whole gradient.
        err = np.linalg.norm(kkt[name] - fd[name]) / max(np.linalg.norm(fd[name]), 1e-3 * scale)
        assert err < 1e-6, f"d{name}: relative error {err:.2e}"
    for name in _BLOCKS:
        assert (kkt[name] is None) == (data[name] is None)
    assert np.allclose(kkt["P"], kkt["P"].T)
    if data["G"] is not None:
        inactive = data["nu"] == 0
        assert np.all(kkt["h"][inactive] == 0) and np.all(kkt["G"][inactive] == 0)


def test_kkt_gradient_rejects_degenerate_constraint(rng) -> None:
    data = random_qp(rng, n=4, n_eq=1, n_ineq=5, n_active=1)
    # Make an inactive row weakly active: zero slack and zero dual.
    row = int(np.flatnonzero(data["nu"] == 0)[0])
    data["h"][row] = data["G"][row] @ data["x"]
    x, lam, nu = solve_qp_reference(*(data[k] for k in _BLOCKS))
    with pytest.raises(ValueError, match="not strictly complementary"):
        kkt_implicit_gradient(*(data[k] for k in _BLOCKS), x, lam, nu, np.ones(4))


# --------------------------------------------------------------------------------------
# Finite differences of CVXPY problems: symmetric convention, analytic formulas
# --------------------------------------------------------------------------------------


def test_fd_psd_parameter_matches_analytic_gradient(rng) -> None:
    """``min 1/2 x'Qx + q'x``: x* = -Q^{-1} q, so for L = <w, x*> with u = Q^{-1} w:
    dL/dq = -u and dL/dQ = -sym(u x*') (gradient of Q -> L(sym(Q)))."""
    n = 4
    M = rng.standard_normal((n, n))
    Qv = M @ M.T / n + np.eye(n)
    qv = rng.standard_normal(n)
    w = rng.standard_normal(n)
    Q = cp.Parameter((n, n), PSD=True)
    q = cp.Parameter(n)
    x = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x))
    assert problem.is_dpp("dcp", quad_form_dpp="qp")

    values = {Q: Qv, q: qv}
    (xs,) = solve_reference(problem, values, [x])
    x_star = -np.linalg.solve(Qv, qv)
    assert relative_error(xs, x_star) < 1e-9

    grads = finite_difference_gradient(problem, values, [x], [w])
    u = np.linalg.solve(Qv, w)
    dQ = -0.5 * (np.outer(u, x_star) + np.outer(x_star, u))
    assert np.array_equal(grads[Q], grads[Q].T)
    assert relative_error(grads[Q], dQ) < 1e-6
    assert relative_error(grads[q], -u) < 1e-6
    # Directional check of the convention: for a symmetric direction E,
    # <dL/dQ, E> is the derivative of L along Q + tE.
    E = rng.standard_normal((n, n))
    E = E + E.T
    t = 1e-4
    (xp,) = solve_reference(problem, {Q: Qv + t * E, q: qv}, [x])
    (xm,) = solve_reference(problem, {Q: Qv - t * E, q: qv}, [x])
    directional = w @ (xp - xm) / (2 * t)
    assert abs(np.sum(grads[Q] * E) - directional) < 1e-6 * max(1.0, abs(directional))


def test_fd_constrained_psd_parameter_matches_kkt(rng) -> None:
    """A constrained PSD problem: FD through CVXPY agrees with the KKT reference."""
    data = random_qp(rng, n=4, n_eq=0, n_ineq=5, n_active=2)
    n, m = 4, 5
    Q = cp.Parameter((n, n), PSD=True)
    q, h = cp.Parameter(n), cp.Parameter(m)
    x = cp.Variable(n)
    con = data["G"] @ x <= h
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), [con])
    values = {Q: data["P"], q: data["q"], h: data["h"]}
    w = rng.standard_normal(n)
    fd = finite_difference_gradient(problem, values, [x], [w])

    xs, lam, nu = solve_qp_reference(data["P"], data["q"], None, None, data["G"], data["h"])
    dP, dq, _, _, _, dh = kkt_implicit_gradient(
        data["P"], data["q"], None, None, data["G"], data["h"], xs, lam, nu, w
    )
    assert relative_error(fd[Q], dP) < 1e-6
    assert relative_error(fd[q], dq) < 1e-6
    assert relative_error(fd[h], dh) < 1e-6


def test_fd_family_matches_kkt_all_blocks() -> None:
    """``eq_ineq_params`` maps its parameters one-to-one onto (q, A, b, G, h) with P = I:
    FD through CVXPY and the KKT reference must agree entry by entry."""
    fam = build_family("eq_ineq_params")
    values = param_values(fam)
    Av, bv, Gv, hv, qv = fam.values
    n = qv.shape[0]
    w = np.random.default_rng(0).standard_normal(n)
    fd = finite_difference_gradient(fam.problem, values, fam.variables, [w])
    x, lam, nu = solve_qp_reference(np.eye(n), qv, Av, bv, Gv, hv)
    _, dq, dA, db, dG, dh = kkt_implicit_gradient(np.eye(n), qv, Av, bv, Gv, hv, x, lam, nu, w)
    for param, ref in zip(fam.parameters, (dA, db, dG, dh, dq)):
        assert relative_error(fd[param], ref) < 1e-6, param.name()


@pytest.mark.parametrize("name", ["nnls_param_matrix", "psd_quad_form", "pwl_atoms"])
def test_fd_is_insensitive_to_step(name) -> None:
    """Steps 1e-4 and 1e-3 agree: neither round-off nor truncation nor an active-set
    change spoils the default step on these instances."""
    fam = build_family(name)
    values = param_values(fam)
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(v.shape) for v in fam.variables]
    g1 = finite_difference_gradient(fam.problem, values, fam.variables, weights, step=1e-4)
    g2 = finite_difference_gradient(fam.problem, values, fam.variables, weights, step=1e-3)
    for p in fam.parameters:
        assert relative_error(g1[p], g2[p]) < 1e-6, p.name()


def test_solve_reference_restores_parameter_values() -> None:
    fam = build_family("box_qp")
    q, lo, _ = fam.parameters
    q.value = np.full(q.shape, 7.0)
    solve_reference(fam.problem, param_values(fam), fam.variables)
    assert np.all(q.value == 7.0)
    assert lo.value is None
    q.value = None


# --------------------------------------------------------------------------------------
# The families themselves
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_instance_is_valid(name) -> None:
    fam = build_family(name)
    assert fam.name == name
    assert fam.is_dpp()
    assert fam.problem.is_qp()
    assert len(fam.values) == len(fam.parameters)
    for p, v in zip(fam.parameters, fam.values):
        assert np.shape(v) == p.shape, p.name()
    for v in fam.variables:
        assert v in fam.problem.variables()

    values = param_values(fam)
    xs = solve_reference(fam.problem, values, fam.variables)
    assert relative_error(xs, fam.solution) < 1e-8
    # Non-degenerate in CVXPY's canonical QP: strictly complementary with a wide margin,
    # and a well-conditioned active-set KKT matrix (unique primal and dual solution).
    margins = canonical_margins(fam.problem, values)
    assert margins.complementarity > 0.05
    assert margins.kkt_sigma_min > 1e-4
    assert all(p.value is None for p in fam.parameters)


def test_enough_families() -> None:
    assert len(FAMILIES) >= 12
    kinds = {name: build_family(name) for name in FAMILIES}
    assert any(isinstance(f.problem.objective, cp.Maximize) for f in kinds.values())
    assert any(p.attributes["PSD"] for f in kinds.values() for p in f.parameters)
    assert any(p.shape == () for f in kinds.values() for p in f.parameters)
    assert any(len(v.shape) == 2 for f in kinds.values() for v in f.variables)
    assert any(v.attributes["nonneg"] for f in kinds.values() for v in f.variables)
