"""Property-based tests (hypothesis): on generated feasible QPs, the solution satisfies
the KKT conditions and the gradients agree with finite differences.

Each QP is built from a KKT certificate (``families.random_qp``): a point ``x*``, an
active set of inequality rows with multipliers in [0.5, 1.5], slacks in [0.3, 1] on the
other rows, and equality multipliers; ``P`` is positive definite (or zero: an LP at a
non-degenerate vertex). Rows of ``G x <= h`` are then rescaled by factors in [0.1, 10]
and the objective by a factor in [0.1, 10], which moves the multipliers but not ``x*``.
Such a QP has the unique, strictly complementary solution ``x*`` satisfying LICQ, so
its solution map is differentiable, and affine near the data (finite differences have
no truncation error for steps below the margins).

Hypothesis draws the sizes, the LP flag, the scalings and the seed of the entries;
``derandomize=True`` makes every run test the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import pytest
import torch
from families import random_qp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import kkt_implicit_gradient, relative_error

from altdiff_modeling import AltDiffLayer, solve_qp

F64 = torch.float64
NAMES = ("P", "q", "A", "b", "G", "h")

TIGHT = {
    "eps_abs": 1e-11,
    "eps_rel": 1e-11,
    "max_iter": 50_000,
    "backward_eps": 1e-12,
    "backward_max_iter": 50_000,
}
#: Central-difference step: far below the margins (>= 0.03 after row scaling), far
#: above the solver's accuracy (~1e-11).
STEP = 1e-4
#: Step of the directional differences in the matrices (extrapolated, see below).
MATRIX_STEP = 1e-3

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    # The autouse seeding fixture of conftest.py runs once per test, not per example;
    # every random number here comes from hypothesis, so that is harmless.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: one intra-op thread is the fastest and steadiest on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Case:
    """A QP with its certificate ``(x, lam, nu)``; ``A, b`` and ``G, h`` may be empty."""

    P: np.ndarray
    q: np.ndarray
    A: np.ndarray
    b: np.ndarray
    G: np.ndarray
    h: np.ndarray
    x: np.ndarray
    lam: np.ndarray
    nu: np.ndarray
    seed: int

    def blocks(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in NAMES}

    def tensors(self, requires_grad: bool = False) -> dict[str, torch.Tensor | None]:
        out: dict[str, torch.Tensor | None] = {}
        for name, value in self.blocks().items():
            out[name] = torch.tensor(value, dtype=F64, requires_grad=requires_grad)
        for matrix, vector in (("A", "b"), ("G", "h")):
            if out[vector].numel() == 0:
                out[matrix] = out[vector] = None
        return out

    @property
    def active(self) -> np.ndarray:
        return self.nu > 0


@st.composite
def qp_cases(draw, allow_lp: bool = True) -> Case:
    n = draw(st.integers(2, 6))
    n_eq = draw(st.integers(0, min(2, n - 1)))
    lp = allow_lp and draw(st.booleans())
    if lp:
        n_active = n - n_eq
        n_ineq = draw(st.integers(n_active, n_active + 3))
    else:
        n_ineq = draw(st.integers(0, 6))
        n_active = draw(st.integers(0, min(n_ineq, n - n_eq)))
    row_exponents = draw(st.lists(st.floats(-1, 1), min_size=n_ineq, max_size=n_ineq))
    objective_scale = 10 ** draw(st.floats(-1, 1))
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    data = random_qp(rng, n=n, n_eq=n_eq, n_ineq=n_ineq, n_active=n_active, lp=lp)
    P, q, x = data["P"], data["q"], data["x"]
    A = data["A"] if n_eq else np.zeros((0, n))
    b = data["b"] if n_eq else np.zeros(0)
    G = data["G"] if n_ineq else np.zeros((0, n))
    h = data["h"] if n_ineq else np.zeros(0)
    lam, nu = data["lam"], data["nu"]
    rows = 10.0 ** np.asarray(row_exponents)
    G, h, nu = rows[:, None] * G, rows * h, nu / rows
    P, q, lam, nu = (
        objective_scale * P,
        objective_scale * q,
        objective_scale * lam,
        objective_scale * nu,
    )
    # Keep the examples whose KKT system is well conditioned (nearly dependent random
    # active rows are legitimate QPs but make finite differences noisy).
    C = np.vstack([A, G[nu > 0]])
    K = np.block([[P, C.T], [C, np.zeros((C.shape[0], C.shape[0]))]])
    assume(np.linalg.cond(K) < 1e5)
    return Case(P=P, q=q, A=A, b=b, G=G, h=h, x=x, lam=lam, nu=nu, seed=seed)


def _kkt_violations(case: Case, x: np.ndarray) -> dict[str, float]:
    """Primal feasibility, and stationarity/sign/complementarity of the least-squares
    multipliers on the constraints active at ``x`` (with their distance to the
    certificate's multipliers)."""
    scale = 1.0 + np.abs(case.blocks()["q"]).max()
    slack = case.h - case.G @ x
    active = slack <= 1e-6 * (1 + np.abs(case.h))
    C = np.vstack([case.A, case.G[active]])
    gradient = case.P @ x + case.q
    multipliers = np.linalg.lstsq(C.T, -gradient, rcond=None)[0] if C.size else np.zeros(0)
    lam, nu_active = multipliers[: case.A.shape[0]], multipliers[case.A.shape[0] :]
    nu = np.zeros_like(case.h)
    nu[active] = nu_active
    stationarity = gradient + case.A.T @ lam + case.G.T @ nu
    return {
        "equality": float(np.abs(case.A @ x - case.b).max(initial=0.0)),
        "inequality": float(np.maximum(-slack, 0).max(initial=0.0)),
        "stationarity": float(np.abs(stationarity).max(initial=0.0) / scale),
        "dual sign": float(np.maximum(-nu, 0).max(initial=0.0)),
        "complementarity": float(np.abs(nu * slack).max(initial=0.0)),
        "active set": float(np.any(active != case.active)),
        "multipliers": relative_error(
            np.concatenate([lam, nu]), np.concatenate([case.lam, case.nu])
        ),
    }


@PROPERTY_SETTINGS
@given(case=qp_cases())
def test_solve_qp_solution_is_kkt_and_gradients_match_finite_differences(case: Case):
    data = case.tensors(requires_grad=True)
    x, info = solve_qp(**data, solver_args=TIGHT, return_info=True)
    assert info.status == ["solved"]
    x_np = x.detach().numpy()

    # the KKT conditions, and the certificate's solution
    violations = _kkt_violations(case, x_np)
    assert violations["equality"] <= 1e-8, violations
    assert violations["inequality"] <= 1e-8, violations
    assert violations["stationarity"] <= 1e-8, violations
    assert violations["dual sign"] == 0.0, violations
    assert violations["complementarity"] <= 1e-8, violations
    assert violations["active set"] == 0.0, violations
    assert violations["multipliers"] <= 1e-6, violations
    assert np.abs(x_np - case.x).max() <= 1e-8 * (1 + np.abs(case.x).max())

    # reverse-mode gradients of a random linear loss
    rng = np.random.default_rng(case.seed + 1)
    weights = torch.tensor(rng.standard_normal(x.shape[0]), dtype=F64)
    (x * weights).sum().backward()
    grads = {name: t.grad for name, t in data.items() if t is not None}

    # (1) central differences, entry by entry, for q, b and h: one batched solve
    vectors = [name for name in ("q", "b", "h") if data[name] is not None]
    sizes = [data[name].numel() for name in vectors]
    total = sum(sizes)
    directions = np.vstack([np.eye(total), -np.eye(total)]) * STEP
    batched = {name: t.detach() if t is not None else None for name, t in data.items()}
    offset = 0
    for name, size in zip(vectors, sizes):
        base = getattr(case, name)
        batched[name] = torch.tensor(base + directions[:, offset : offset + size], dtype=F64)
        offset += size
    x_fd = solve_qp(**batched, solver_args=TIGHT).numpy() @ weights.numpy()
    fd = (x_fd[:total] - x_fd[total:]) / (2 * STEP)
    analytic = np.concatenate([grads[name].numpy() for name in vectors])
    scale = max(np.abs(analytic).max(), 1.0)
    assert np.abs(fd - analytic).max() <= 1e-5 * scale, (fd, analytic)

    # (2) a directional central difference for the matrices P, A, G
    # (P is moved only when positive definite: an LP's P = 0 moved either way is not PSD)
    matrices = [name for name in ("A", "G") if data[name] is not None]
    if np.any(case.P):
        matrices.append("P")
    deltas = {}
    for name in matrices:
        d = rng.standard_normal(getattr(case, name).shape)
        # relative to each row's size: rows of G are scaled over two orders of magnitude
        magnitude = np.abs(getattr(case, name)).max(axis=1, keepdims=True)
        deltas[name] = (d + d.T) * magnitude.max() if name == "P" else d * magnitude
    # x depends nonlinearly on the matrices: Richardson-extrapolated central differences
    # (error O(t^4)) at t = MATRIX_STEP and t / 2, the four solves as one batch
    offsets = MATRIX_STEP * np.array([1.0, -1.0, 0.5, -0.5])
    moved = {name: t.detach() if t is not None else None for name, t in data.items()}
    for name in matrices:
        stacked = getattr(case, name)[None] + offsets[:, None, None] * deltas[name][None]
        moved[name] = torch.tensor(stacked, dtype=F64)
    losses = solve_qp(**moved, solver_args=TIGHT).numpy() @ weights.numpy()
    coarse = (losses[0] - losses[1]) / (2 * MATRIX_STEP)
    fine = (losses[2] - losses[3]) / MATRIX_STEP
    directional_fd = (4 * fine - coarse) / 3
    directional = sum(float((grads[name].numpy() * deltas[name]).sum()) for name in matrices)
    assert abs(directional_fd - directional) <= 1e-5 * max(abs(directional), 1.0)

    # (3) implicit differentiation of the KKT conditions at the certificate
    reference = kkt_implicit_gradient(
        case.P,
        case.q,
        case.A if case.A.size else None,
        case.b if case.b.size else None,
        case.G if case.G.size else None,
        case.h if case.h.size else None,
        case.x,
        case.lam,
        case.nu,
        weights.numpy(),
    )
    for name, expected in zip(NAMES, reference):
        if expected is not None and name in grads:
            assert relative_error(grads[name].numpy(), expected) <= 1e-6 or (
                np.abs(grads[name].numpy() - expected).max() <= 1e-8
            ), name


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(case=qp_cases(allow_lp=False))
def test_forward_and_reverse_mode_agree(case: Case):
    """Both modes solve for the same fixed point (by GMRES); the comparison is made on
    QPs with P positive definite, where the solution map is differentiable at every
    generated point (LP vertices are covered by tests/test_altdiff.py)."""
    gradients = []
    for mode in ("reverse", "forward"):
        data = case.tensors(requires_grad=True)
        # (backward_max_iter bounds the time lost to a recursion that does not stop)
        args = {**TIGHT, "mode": mode, "backward_eps": 1e-10, "backward_max_iter": 5_000}
        x = solve_qp(**data, solver_args=args)
        weights = torch.tensor(np.random.default_rng(case.seed).standard_normal(x.shape[0]))
        (x * weights).sum().backward()
        gradients.append({name: t.grad for name, t in data.items() if t is not None})
    for name, reverse in gradients[0].items():
        forward = gradients[1][name]
        assert torch.allclose(forward, reverse, rtol=1e-6, atol=1e-8), name


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(case=qp_cases())
def test_layer_multipliers_satisfy_kkt_and_gradients_match_finite_differences(case: Case):
    """The same QPs through a CVXPY layer with parameters ``q, b, h``, returning the
    multipliers of its constraints: those must be the certificate's, and the gradient of
    a linear loss of ``(x, lam, nu)`` must match central differences."""
    n, n_eq, n_ineq = case.q.size, case.b.size, case.h.size
    x = cp.Variable(n, name="x")
    q = cp.Parameter(n, name="q")
    objective = 0.5 * cp.quad_form(x, case.P, assume_PSD=True) + q @ x
    parameters, constraints, inputs = [q], [], [case.q]
    if n_eq:
        b = cp.Parameter(n_eq, name="b")
        parameters.append(b)
        constraints.append(case.A @ x == b)
        inputs.append(case.b)
    if n_ineq:
        h = cp.Parameter(n_ineq, name="h")
        parameters.append(h)
        constraints.append(case.G @ x <= h)
        inputs.append(case.h)
    outputs = [x] + [c.dual_variables[0] for c in constraints]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    layer = AltDiffLayer(problem, parameters, outputs, solver_args=TIGHT)

    tensors = [torch.tensor(v, dtype=F64, requires_grad=True) for v in inputs]
    results = layer(*tensors)
    x_t = results[0].detach().numpy()
    lam = results[1].detach().numpy() if n_eq else np.zeros(0)
    nu = results[-1].detach().numpy() if n_ineq else np.zeros(0)

    # KKT with the layer's own multipliers
    slack = case.h - case.G @ x_t
    stationarity = case.P @ x_t + case.q + case.A.T @ lam + case.G.T @ nu
    scale = 1.0 + np.abs(case.q).max()
    assert np.abs(stationarity).max(initial=0.0) <= 1e-7 * scale
    assert np.abs(case.A @ x_t - case.b).max(initial=0.0) <= 1e-8
    assert np.maximum(-slack, 0).max(initial=0.0) <= 1e-8
    assert np.maximum(-nu, 0).max(initial=0.0) <= 1e-8
    assert np.abs(nu * slack).max(initial=0.0) <= 1e-8 * scale
    assert np.abs(x_t - case.x).max() <= 1e-7 * (1 + np.abs(case.x).max())
    certificate = np.concatenate([case.lam, case.nu])
    assert relative_error(np.concatenate([lam, nu]), certificate) <= 1e-6

    # gradient of a linear loss of all outputs against one batched central difference
    rng = np.random.default_rng(case.seed + 2)
    weights = [torch.tensor(rng.standard_normal(r.shape), dtype=F64) for r in results]
    sum((r * w).sum() for r, w in zip(results, weights)).backward()
    analytic = np.concatenate([t.grad.numpy() for t in tensors])
    sizes = [v.size for v in inputs]
    total = sum(sizes)
    directions = np.vstack([np.eye(total), -np.eye(total)]) * STEP
    batched, offset = [], 0
    for value, size in zip(inputs, sizes):
        batched.append(torch.tensor(value + directions[:, offset : offset + size], dtype=F64))
        offset += size
    with torch.no_grad():
        shifted = layer(*batched)
    losses = sum((r * w).sum(-1) for r, w in zip(shifted, weights)).numpy()
    fd = (losses[:total] - losses[total:]) / (2 * STEP)
    assert np.abs(fd - analytic).max() <= 1e-5 * max(np.abs(analytic).max(), 1.0), (fd, analytic)
