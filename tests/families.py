"""Seeded problem families for the layer tests.

Each ``make_<name>(rng)`` returns a :class:`Family`: a DPP CVXPY problem that reduces to
a QP or LP (Zero and NonNeg cones only), the parameters and variables a layer is built
with, and one instance of parameter values. Instances are built *from a certificate*:
pick the solution, the active set and strictly positive multipliers first, then set the
data so that the KKT conditions hold. So every instance is strictly complementary
(margins of order 0.1 or more between activity and inactivity), satisfies LICQ and has a
unique solution, which makes finite differences and implicit differentiation reliable.
``tests/test_reference.py`` re-checks this on CVXPY's canonical QP.

Nothing here imports ``altdiff_modeling``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np

__all__ = ["FAMILIES", "Family", "build_family", "param_values", "perturb_values", "random_qp"]


@dataclass
class Family:
    """A parametrized problem and one non-degenerate instance of it.

    Attributes:
        problem: The CVXPY problem.
        parameters: Parameters, in the order the layer takes its tensors.
        variables: Variables the layer returns.
        values: One array per parameter, shaped like it.
        name: Family name (used as pytest id).
        solution: The optimal value of each variable, known from the construction.
        quad_form_dpp: Passed to ``problem.is_dpp`` (``"qp"`` for parametric quad_form).
    """

    problem: cp.Problem
    parameters: list[cp.Parameter]
    variables: list[cp.Variable]
    values: list[np.ndarray]
    name: str
    solution: list[np.ndarray]
    quad_form_dpp: str | None = field(default=None)

    def is_dpp(self) -> bool:
        """Whether the problem is DPP (under the QP rule for parametric quad_form)."""
        return self.problem.is_dpp("dcp", quad_form_dpp=self.quad_form_dpp)


def param_values(family: Family, values: list[np.ndarray] | None = None) -> dict:
    """``{parameter: value}`` for ``values`` (default: the family's instance)."""
    vals = family.values if values is None else values
    return dict(zip(family.parameters, vals, strict=True))


def perturb_values(family: Family, rng: np.random.Generator, scale: float) -> list[np.ndarray]:
    """Relative random perturbation of the family's values, preserving attributes.

    Each entry is multiplied by ``1 + scale * u`` with ``u ~ U(-1, 1)`` (signs and zeros
    are kept, so ``nonneg`` parameters stay nonnegative); symmetric/PSD parameters are
    re-symmetrized. With ``scale`` of a few percent the instances stay feasible and keep
    their active sets (margins are >= 0.1 by construction).
    """
    out = []
    for p, v in zip(family.parameters, family.values, strict=True):
        w = np.asarray(v) * (1.0 + scale * rng.uniform(-1.0, 1.0, size=np.shape(v)))
        attrs = p.attributes
        if attrs.get("PSD") or attrs.get("symmetric"):
            w = 0.5 * (w + w.T)
        out.append(np.asarray(w, dtype=np.float64))
    return out


def _split(rng: np.random.Generator, n: int, sizes: list[int]) -> list[np.ndarray]:
    """Random disjoint index sets of the given sizes (the rest is returned last)."""
    perm = rng.permutation(n)
    out, start = [], 0
    for s in sizes:
        out.append(np.sort(perm[start : start + s]))
        start += s
    out.append(np.sort(perm[start:]))
    return out


def _residual_with(rng: np.random.Generator, C: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A vector ``r`` with ``C' r = v`` (``C`` tall, full column rank), plus noise in null(C')."""
    r = np.linalg.pinv(C.T) @ v
    z = rng.standard_normal(C.shape[0])
    z -= C @ np.linalg.lstsq(C, z, rcond=None)[0]
    return r + 0.5 * z


def _spd(rng: np.random.Generator, n: int, shift: float = 0.5) -> np.ndarray:
    M = rng.standard_normal((n, n))
    return M @ M.T / n + shift * np.eye(n)


# --------------------------------------------------------------------------------------
# Least squares families
# --------------------------------------------------------------------------------------


def make_nnls_param_matrix(rng: np.random.Generator) -> Family:
    """NNLS ``min ||F x - y||^2, x >= 0`` with parametric matrix F and target y.

    ``sum_squares(F @ x - y)`` with a Parameter F is DPP in CVXPY 1.9 (parameter-affine
    argument) and canonicalizes to a QP with an auxiliary variable ``u = F x - y``, so
    F enters the equality matrix, not P.
    """
    m, n = 7, 4
    Fv = rng.standard_normal((m, n))
    zero, pos = _split(rng, n, [2])
    x0 = np.zeros(n)
    x0[pos] = rng.uniform(0.5, 1.5, pos.size)
    nu = np.zeros(n)
    nu[zero] = rng.uniform(0.5, 1.5, zero.size)
    # stationarity: 2 F'(F x0 - y) - nu = 0
    r = _residual_with(rng, Fv, nu / 2.0)
    yv = Fv @ x0 - r
    F, y, x = cp.Parameter((m, n), name="F"), cp.Parameter(m, name="y"), cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - y)), [x >= 0])
    return Family(problem, [F, y], [x], [Fv, yv], "nnls_param_matrix", [x0])


def make_nnls_constraint_matrix(rng: np.random.Generator) -> Family:
    """Least squares, x >= 0, with a parametric equality matrix ``F @ x == g``."""
    m, n, k = 8, 5, 2
    C = rng.standard_normal((m, n))
    Fv = rng.standard_normal((k, n))
    zero, pos = _split(rng, n, [2])
    x0 = np.zeros(n)
    x0[pos] = rng.uniform(0.5, 1.5, pos.size)
    gv = Fv @ x0
    lam = rng.standard_normal(k)
    nu = np.zeros(n)
    nu[zero] = rng.uniform(0.5, 1.5, zero.size)
    # stationarity: 2 C'(C x0 - d) + F' lam - nu = 0
    r = _residual_with(rng, C, (nu - Fv.T @ lam) / 2.0)
    dv = C @ x0 - r
    F, g, d = cp.Parameter((k, n), name="F"), cp.Parameter(k, name="g"), cp.Parameter(m, name="d")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(C @ x - d)), [F @ x == g, x >= 0])
    return Family(problem, [F, g, d], [x], [Fv, gv, dv], "nnls_constraint_matrix", [x0])


def make_nonneg_variable(rng: np.random.Generator) -> Family:
    """Least squares over a ``nonneg=True`` variable with a parametric upper bound."""
    m, n = 8, 6
    C = rng.standard_normal((m, n))
    zero, upper, free = _split(rng, n, [2, 2])
    uv = rng.uniform(1.0, 2.0, n)
    x0 = np.zeros(n)
    x0[upper] = uv[upper]
    x0[free] = uv[free] * rng.uniform(0.2, 0.8, free.size)
    nu_lo = np.zeros(n)
    nu_lo[zero] = rng.uniform(0.5, 1.5, zero.size)
    nu_hi = np.zeros(n)
    nu_hi[upper] = rng.uniform(0.5, 1.5, upper.size)
    # stationarity: 2 C'(C x0 - y) - nu_lo + nu_hi = 0
    r = _residual_with(rng, C, (nu_lo - nu_hi) / 2.0)
    yv = C @ x0 - r
    y, u = cp.Parameter(m, name="y"), cp.Parameter(n, name="u")
    x = cp.Variable(n, nonneg=True, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(C @ x - y)), [x <= u])
    return Family(problem, [y, u], [x], [yv, uv], "nonneg_variable", [x0])


# --------------------------------------------------------------------------------------
# Projections
# --------------------------------------------------------------------------------------


def _simplex_row(rng: np.random.Generator, n: int, k: int, total: float):
    """Target y whose projection onto {x >= 0, sum x = total} has support of size k."""
    support, off = _split(rng, n, [k])
    w = rng.uniform(0.5, 1.5, k)
    x0 = np.zeros(n)
    x0[support] = total * w / w.sum()
    tau = rng.uniform(-0.5, 0.5)
    y = np.empty(n)
    y[support] = x0[support] + tau
    y[off] = tau - rng.uniform(0.2, 1.0, off.size)
    return y, x0


def make_simplex_projection(rng: np.random.Generator) -> Family:
    """Euclidean projection onto the probability simplex (sparsemax)."""
    n = 6
    yv, x0 = _simplex_row(rng, n, 3, 1.0)
    y, x = cp.Parameter(n, name="y"), cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
    return Family(problem, [y], [x], [yv], "simplex_projection", [x0])


def make_matrix_variable(rng: np.random.Generator) -> Family:
    """Matrix variable X (3, 4): projection onto nonnegative matrices with given row sums."""
    rows, cols = 3, 4
    rv = rng.uniform(0.5, 2.0, rows)
    pairs = [_simplex_row(rng, cols, 2 + (i % 2), rv[i]) for i in range(rows)]
    Yv = np.stack([p[0] for p in pairs])
    X0 = np.stack([p[1] for p in pairs])
    Y, r = cp.Parameter((rows, cols), name="Y"), cp.Parameter(rows, name="r")
    X = cp.Variable((rows, cols), name="X")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - Y)), [cp.sum(X, axis=1) == r, X >= 0])
    return Family(problem, [Y, r], [X], [Yv, rv], "matrix_variable", [X0])


# --------------------------------------------------------------------------------------
# Generic QPs
# --------------------------------------------------------------------------------------


def make_box_qp(rng: np.random.Generator) -> Family:
    """``min 1/2 x'P0 x + q'x, lo <= x <= hi`` with constant P0 and parametric q, lo, hi."""
    n = 6
    P0 = _spd(rng, n)
    lov = -rng.uniform(0.5, 1.5, n)
    hiv = rng.uniform(0.5, 1.5, n)
    at_lo, at_hi, free = _split(rng, n, [2, 2])
    x0 = np.empty(n)
    x0[at_lo] = lov[at_lo]
    x0[at_hi] = hiv[at_hi]
    x0[free] = lov[free] + (hiv[free] - lov[free]) * rng.uniform(0.3, 0.7, free.size)
    nu_lo = np.zeros(n)
    nu_lo[at_lo] = rng.uniform(0.5, 1.5, at_lo.size)
    nu_hi = np.zeros(n)
    nu_hi[at_hi] = rng.uniform(0.5, 1.5, at_hi.size)
    # stationarity: P0 x + q - nu_lo + nu_hi = 0
    qv = -P0 @ x0 + nu_lo - nu_hi
    q, lo, hi = cp.Parameter(n, name="q"), cp.Parameter(n, name="lo"), cp.Parameter(n, name="hi")
    x = cp.Variable(n, name="x")
    obj = 0.5 * cp.quad_form(x, P0) + q @ x
    problem = cp.Problem(cp.Minimize(obj), [x >= lo, x <= hi])
    return Family(problem, [q, lo, hi], [x], [qv, lov, hiv], "box_qp", [x0])


def make_eq_ineq_params(rng: np.random.Generator) -> Family:
    """``min 1/2||x||^2 + q'x, A x == b, G x <= h`` with A, b, G, h, q all parameters."""
    n, n_eq, n_ineq, n_act = 5, 2, 6, 2
    Av = rng.standard_normal((n_eq, n))
    Gv = rng.standard_normal((n_ineq, n))
    x0 = rng.standard_normal(n)
    bv = Av @ x0
    act, _ = _split(rng, n_ineq, [n_act])
    hv = Gv @ x0 + rng.uniform(0.3, 1.0, n_ineq)
    hv[act] = Gv[act] @ x0
    lam = rng.standard_normal(n_eq)
    nu = np.zeros(n_ineq)
    nu[act] = rng.uniform(0.5, 1.5, n_act)
    qv = -x0 - Av.T @ lam - Gv.T @ nu
    A, b = cp.Parameter((n_eq, n), name="A"), cp.Parameter(n_eq, name="b")
    G, h = cp.Parameter((n_ineq, n), name="G"), cp.Parameter(n_ineq, name="h")
    q, x = cp.Parameter(n, name="q"), cp.Variable(n, name="x")
    obj = 0.5 * cp.sum_squares(x) + q @ x
    problem = cp.Problem(cp.Minimize(obj), [A @ x == b, G @ x <= h])
    return Family(problem, [A, b, G, h, q], [x], [Av, bv, Gv, hv, qv], "eq_ineq_params", [x0])


def make_psd_quad_form(rng: np.random.Generator) -> Family:
    """``min 1/2 quad_form(x, Q) + q'x, G0 x <= h`` with ``Q = Parameter(PSD=True)``.

    DPP only under the QP rule: ``problem.is_dpp('dcp', quad_form_dpp='qp')``.
    """
    n, n_ineq, n_act = 4, 5, 2
    Qv = _spd(rng, n, shift=1.0)
    G0 = rng.standard_normal((n_ineq, n))
    x0 = rng.standard_normal(n)
    act, _ = _split(rng, n_ineq, [n_act])
    hv = G0 @ x0 + rng.uniform(0.3, 1.0, n_ineq)
    hv[act] = G0[act] @ x0
    nu = np.zeros(n_ineq)
    nu[act] = rng.uniform(0.5, 1.5, n_act)
    qv = -Qv @ x0 - G0.T @ nu
    Q = cp.Parameter((n, n), PSD=True, name="Q")
    q, h = cp.Parameter(n, name="q"), cp.Parameter(n_ineq, name="h")
    x = cp.Variable(n, name="x")
    obj = 0.5 * cp.quad_form(x, Q) + q @ x
    problem = cp.Problem(cp.Minimize(obj), [G0 @ x <= h])
    return Family(problem, [Q, q, h], [x], [Qv, qv, hv], "psd_quad_form", [x0], quad_form_dpp="qp")


# --------------------------------------------------------------------------------------
# Linear programs
# --------------------------------------------------------------------------------------


def make_lp_tiny(rng: np.random.Generator) -> Family:
    """Quadratic-free LP in R^3: ``min c'x, lo <= x <= hi, sum(x) <= s``.

    Parameters: the cost c, the bounds lo and hi, and the scalar budget s. The vertex is
    ``x1 = lo1, x2 = hi2, sum(x) = s`` with x0 strictly inside its bounds.
    """
    lov = -rng.uniform(0.5, 1.5, 3)
    hiv = rng.uniform(0.5, 1.5, 3)
    x0 = np.array(
        [lov[0] + (hiv[0] - lov[0]) * rng.uniform(0.3, 0.7), lov[1], hiv[2]], dtype=np.float64
    )
    sv = np.array(x0.sum())
    nu_lo1, nu_hi2, nu_s = rng.uniform(0.5, 1.5, 3)
    # stationarity: c - nu_lo1 e1 + nu_hi2 e2 + nu_s 1 = 0
    cv = -nu_s * np.ones(3)
    cv[1] += nu_lo1
    cv[2] -= nu_hi2
    c, lo, hi = cp.Parameter(3, name="c"), cp.Parameter(3, name="lo"), cp.Parameter(3, name="hi")
    s = cp.Parameter(name="s")
    x = cp.Variable(3, name="x")
    problem = cp.Problem(cp.Minimize(c @ x), [x >= lo, x <= hi, cp.sum(x) <= s])
    return Family(problem, [c, lo, hi, s], [x], [cv, lov, hiv, sv], "lp_tiny", [x0])


def make_lp_polytope(rng: np.random.Generator) -> Family:
    """LP ``min c'x, G x <= h`` with parametric c, G and h and a unique vertex solution."""
    n, n_extra = 4, 6
    x0 = rng.standard_normal(n)
    Ga = rng.standard_normal((n, n)) + 2.0 * np.eye(n)
    nu = rng.uniform(0.5, 1.5, n)
    cv = -Ga.T @ nu
    # inactive rows: a bounding box and random cuts, all with slack
    Gi = np.vstack([np.eye(n), -np.eye(n), rng.standard_normal((n_extra, n))])
    Gv = np.vstack([Ga, Gi])
    hv = np.concatenate([Ga @ x0, Gi @ x0 + rng.uniform(0.5, 1.5, Gi.shape[0])])
    perm = rng.permutation(Gv.shape[0])
    Gv, hv = Gv[perm], hv[perm]
    c, G = cp.Parameter(n, name="c"), cp.Parameter(Gv.shape, name="G")
    h, x = cp.Parameter(Gv.shape[0], name="h"), cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(c @ x), [G @ x <= h])
    return Family(problem, [c, G, h], [x], [cv, Gv, hv], "lp_polytope", [x0])


# --------------------------------------------------------------------------------------
# Maximize, portfolio, scalar parameters
# --------------------------------------------------------------------------------------


def make_markowitz(rng: np.random.Generator) -> Family:
    """Long-only Markowitz: ``max mu'w - gamma w'Sigma w, sum(w) == 1, w >= 0``.

    Constant Sigma and gamma; parametric expected returns mu.
    """
    n, gamma = 6, 0.5
    Sigma = _spd(rng, n, shift=0.2) * 0.5
    held, _ = _split(rng, n, [3])
    w0 = np.zeros(n)
    w0[held] = rng.uniform(0.5, 1.5, held.size)
    w0 /= w0.sum()
    lam = rng.standard_normal()
    nu = rng.uniform(0.3, 1.0, n)
    nu[held] = 0.0
    # stationarity of min -mu'w + gamma w'Sigma w: -mu + 2 gamma Sigma w + lam 1 - nu = 0
    muv = 2.0 * gamma * Sigma @ w0 + lam - nu
    mu, w = cp.Parameter(n, name="mu"), cp.Variable(n, name="w")
    obj = cp.Maximize(mu @ w - gamma * cp.quad_form(w, Sigma))
    problem = cp.Problem(obj, [cp.sum(w) == 1, w >= 0])
    return Family(problem, [mu], [w], [muv], "markowitz", [w0])


def make_maximize_concave(rng: np.random.Generator) -> Family:
    """``max c'x - 1/2 x'P0 x, a'x == beta, x <= u`` with parametric c and u."""
    n = 5
    P0 = _spd(rng, n)
    a = rng.uniform(0.5, 1.5, n)
    at_u, _free = _split(rng, n, [2])
    uv = rng.uniform(0.5, 1.5, n)
    x0 = uv - rng.uniform(0.3, 1.0, n)
    x0[at_u] = uv[at_u]
    beta = float(a @ x0)
    lam = rng.standard_normal()
    nu = np.zeros(n)
    nu[at_u] = rng.uniform(0.5, 1.5, at_u.size)
    # stationarity of min -c'x + 1/2 x'P0 x: -c + P0 x + lam a + nu = 0
    cv = P0 @ x0 + lam * a + nu
    c, u, x = cp.Parameter(n, name="c"), cp.Parameter(n, name="u"), cp.Variable(n, name="x")
    obj = cp.Maximize(c @ x - 0.5 * cp.quad_form(x, P0))
    problem = cp.Problem(obj, [a @ x == beta, x <= u])
    return Family(problem, [c, u], [x], [cv, uv], "maximize_concave", [x0])


def make_scalar_params(rng: np.random.Generator) -> Family:
    """Scalar parameters: ``min ||x - y0||^2 + gamma c0'x, sum(x) == s, x >= 0``.

    ``s`` is a shape-() parameter and ``gamma`` a nonnegative shape-() parameter.
    """
    n = 5
    c0 = rng.standard_normal(n)
    support, off = _split(rng, n, [3])
    x0 = np.zeros(n)
    x0[support] = rng.uniform(0.5, 1.5, support.size)
    sv = np.array(x0.sum())
    gv = np.array(rng.uniform(0.5, 1.5))
    lam = rng.standard_normal()
    nu = np.zeros(n)
    nu[off] = rng.uniform(0.5, 1.5, off.size)
    # stationarity: 2 (x0 - y0) + gamma c0 + lam 1 - nu = 0
    y0 = x0 + (gv * c0 + lam - nu) / 2.0
    s, gamma = cp.Parameter(name="s"), cp.Parameter(nonneg=True, name="gamma")
    x = cp.Variable(n, name="x")
    obj = cp.Minimize(cp.sum_squares(x - y0) + gamma * (c0 @ x))
    problem = cp.Problem(obj, [cp.sum(x) == s, x >= 0])
    return Family(problem, [s, gamma], [x], [sv, gv], "scalar_params", [x0])


# --------------------------------------------------------------------------------------
# Piecewise-linear atoms
# --------------------------------------------------------------------------------------


def make_lasso_norm1(rng: np.random.Generator) -> Family:
    """Lasso ``min ||C x - y||^2 + alpha ||x||_1`` with parametric y and scalar alpha."""
    m, n = 8, 5
    C = rng.standard_normal((m, n))
    zero, nz = _split(rng, n, [2])
    x0 = np.zeros(n)
    x0[nz] = rng.choice([-1.0, 1.0], nz.size) * rng.uniform(0.5, 1.5, nz.size)
    g = np.sign(x0)
    g[zero] = rng.uniform(-0.6, 0.6, zero.size)
    av = np.array(rng.uniform(0.5, 1.5))
    # stationarity: 2 C'(C x0 - y) + alpha g = 0
    r = _residual_with(rng, C, -av * g / 2.0)
    yv = C @ x0 - r
    y, alpha = cp.Parameter(m, name="y"), cp.Parameter(nonneg=True, name="alpha")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(C @ x - y) + alpha * cp.norm1(x)))
    return Family(problem, [y, alpha], [x], [yv, av], "lasso_norm1", [x0])


def make_pwl_atoms(rng: np.random.Generator) -> Family:
    """``norm_inf``, ``abs`` and ``maximum`` in one objective::

        min 1/2||x - y||^2 + a ||x||_inf + b sum|x - z| + sum max(x, w)

    with parametric y, z, w. Two coordinates attain the infinity norm, two sit at the
    kink of ``abs`` and one at the kink of ``maximum``, each with a subgradient strictly
    inside its subdifferential.
    """
    n, a, b = 7, 0.8, 0.6
    top, kink_abs, kink_max, _rest = _split(rng, n, [2, 2, 1])
    t0 = 1.5
    x0 = rng.uniform(-0.9, 0.9, n)
    x0[top] = t0 * np.array([1.0, -1.0])
    theta = rng.uniform(0.3, 0.7)
    g_inf = np.zeros(n)
    g_inf[top] = np.array([theta, -(1.0 - theta)])  # sign(x_i) * weights summing to 1
    zv = x0 + rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 0.8, n)
    zv[kink_abs] = x0[kink_abs]
    g_abs = np.sign(x0 - zv)
    g_abs[kink_abs] = rng.uniform(-0.6, 0.6, kink_abs.size)
    wv = x0 + rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 0.8, n)
    wv[kink_max] = x0[kink_max]
    g_max = (x0 > wv).astype(np.float64)
    g_max[kink_max] = rng.uniform(0.3, 0.7, kink_max.size)
    # stationarity: x0 - y + a g_inf + b g_abs + g_max = 0
    yv = x0 + a * g_inf + b * g_abs + g_max
    y, z, w = cp.Parameter(n, name="y"), cp.Parameter(n, name="z"), cp.Parameter(n, name="w")
    x = cp.Variable(n, name="x")
    obj = (
        0.5 * cp.sum_squares(x - y)
        + a * cp.norm_inf(x)
        + b * cp.sum(cp.abs(x - z))
        + cp.sum(cp.maximum(x, w))
    )
    problem = cp.Problem(cp.Minimize(obj))
    return Family(problem, [y, z, w], [x], [yv, zv, wv], "pwl_atoms", [x0])


FAMILIES: dict[str, Callable[[np.random.Generator], Family]] = {
    "nnls_param_matrix": make_nnls_param_matrix,
    "nnls_constraint_matrix": make_nnls_constraint_matrix,
    "nonneg_variable": make_nonneg_variable,
    "simplex_projection": make_simplex_projection,
    "matrix_variable": make_matrix_variable,
    "box_qp": make_box_qp,
    "eq_ineq_params": make_eq_ineq_params,
    "psd_quad_form": make_psd_quad_form,
    "lp_tiny": make_lp_tiny,
    "lp_polytope": make_lp_polytope,
    "markowitz": make_markowitz,
    "maximize_concave": make_maximize_concave,
    "scalar_params": make_scalar_params,
    "lasso_norm1": make_lasso_norm1,
    "pwl_atoms": make_pwl_atoms,
}


# --------------------------------------------------------------------------------------
# Random QPs in matrix form (for solve_qp and the KKT reference)
# --------------------------------------------------------------------------------------


def random_qp(
    rng: np.random.Generator,
    n: int = 5,
    n_eq: int = 2,
    n_ineq: int = 6,
    n_active: int = 2,
    lp: bool = False,
) -> dict[str, np.ndarray | None]:
    """A random, strictly complementary QP ``min 1/2 x'Px + q'x, Ax = b, Gx <= h``.

    Built from a certificate ``(x, lam, nu)``: ``n_active`` rows of ``G`` are active with
    duals in [0.5, 1.5], the others have slack in [0.3, 1.0]. With ``lp=True``, ``P = 0``
    and ``n_eq + n_active`` must equal ``n`` (a non-degenerate vertex).

    Returns:
        Dict with ``P, q, A, b, G, h`` (``A, b`` None when ``n_eq == 0``, ``G, h`` None
        when ``n_ineq == 0``) and the certificate ``x, lam, nu``.
    """
    if lp and n_eq + n_active != n:
        raise ValueError("an LP vertex needs n_eq + n_active == n")
    P = np.zeros((n, n)) if lp else _spd(rng, n)
    A = rng.standard_normal((n_eq, n))
    G = rng.standard_normal((n_ineq, n))
    x = rng.standard_normal(n)
    b = A @ x
    act, _ = _split(rng, n_ineq, [n_active])
    h = G @ x + rng.uniform(0.3, 1.0, n_ineq)
    h[act] = G[act] @ x
    lam = rng.standard_normal(n_eq)
    nu = np.zeros(n_ineq)
    nu[act] = rng.uniform(0.5, 1.5, n_active)
    q = -P @ x - A.T @ lam - G.T @ nu
    return {
        "P": P,
        "q": q,
        "A": A if n_eq else None,
        "b": b if n_eq else None,
        "G": G if n_ineq else None,
        "h": h if n_ineq else None,
        "x": x,
        "lam": lam,
        "nu": nu,
    }


def build_family(name: str) -> Family:
    """The family ``name`` built with its own fixed seed (the same instance every run)."""
    seed = sum((i + 1) * ord(ch) for i, ch in enumerate(name))
    return FAMILIES[name](np.random.default_rng(seed))
