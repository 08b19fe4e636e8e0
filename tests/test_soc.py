"""AltDiffLayer on second-order cone (SOC) problems, against independent references.

Families (each a seeded, non-degenerate instance with a unique solution, most of them
built from a certificate: the solution, which cones are on their boundary and positive
multipliers are chosen first, then the data are set so that the KKT conditions hold):

* ``norm_ball_ls``: ``min ||A x - b||^2  s.t.  ||x||_2 <= r`` with the ball active;
  ``norm_ball_ls_inactive``: the same with the solution strictly inside the ball;
  ``norm_ball_ls_cone``: the active instance written with ``cp.SOC(r, x)`` (its duals);
* ``robust_lp``: ``min c'x  s.t.  a_i'x + ||P_i x||_2 <= b_i`` (two of seven active);
* ``norm2_regression``: ``min ||A x - y||_2  s.t.  x nondecreasing``, A a parameter, with
  tied coefficients (active monotonicity rows);
* ``portfolio``: ``max mu'x  s.t.  1'x = 1, x >= 0, (sigma, L x) in SOC`` (risk limit
  active, some weights zero);
* ``mpc``: linear dynamics, quadratic cost, ``||u_t||_2 <= u_max`` (the first inputs on
  the bound, the later ones strictly inside);
* ``mixed``: ``min ||x||^2 + q'x  s.t.  A x = b, (e'x + d, G x + h) in SOC, x >= -1``
  with parametric matrices A and G (cone and one bound active).

References. CVXPY + Clarabel at tight tolerances (`reference.CLARABEL_TIGHT`) solves
these problems only to a relative 1e-9 to 2.3e-6 (Clarabel stops "almost solved" on
them), which is about enough to compare solutions at 1e-6 but not for finite
differences (their noise would be that error divided by the step). So the gradient reference is the Clarabel solution *refined by
Newton's method* on the KKT equations of the structure Clarabel found (which linear
inequalities and which cones are active): on a fixed structure the solution map is
smooth and these equations determine it, so a few Newton steps reach ~1e-15, and
central differences of the refined map (step 1e-5) are accurate to ~1e-10. Each
family states its cone program in numpy (``Conic``); the refined solution is checked
against Clarabel's solution of the CVXPY problem itself, its duals against CVXPY's
dual values, and, for the norm ball, against the closed form of the trust-region
subproblem (secular equation), whose finite differences serve as that family's
gradient reference.

CVXPY's dual convention for ``cp.SOC(t, X)`` (which ``dual_variables[0]`` and ``[1]``
follow): the multiplier ``(u, v)`` lies in the cone and the Lagrangian is
``f(x) - u t - v'X``; at an active cone with multiplier ``mu`` of the scalar form
``||X|| <= t``, ``u = mu`` and ``v = -mu X / ||X||``.

Gradients are checked along three random parameter directions: the layer's gradient of
a random linear functional of its outputs, dotted with each direction, against the
central difference of the same functional of the reference (relative error of the
three-vector, < 1e-5).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import pytest
import torch
from families import perturb_values
from float32_checks import assert_float32_layer
from reference import CLARABEL_TIGHT, relative_error

from altdiff_modeling import AltDiffLayer

#: Settings under which the layer must reproduce the references to 1e-6 (values) and
#: 1e-5 (gradients), as in ``test_families.py``.
TIGHT = {
    "eps_abs": 1e-10,
    "eps_rel": 1e-10,
    "max_iter": 100_000,
    "backward_eps": 1e-12,
    "backward_max_iter": 100_000,
}


#: Step of the central differences of the refined (or closed-form) reference.
FD_STEP = 1e-5

#: Active constraints must have multipliers, inactive ones slacks, above this.
MARGIN = 0.05

#: How close CVXPY + Clarabel (at `CLARABEL_TIGHT`) comes to the refined solution on these
#: families (relative error; measured up to about 2.3e-6, on norm2_regression and
#: portfolio). A layer's solution is checked to 1e-6 against the refined solution, and
#: against Clarabel's raw one to 1e-6 plus Clarabel's own error on the instance.
CLARABEL_ACCURACY = 1e-5


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode("utf-8"))


# --------------------------------------------------------------------------------------
# The cone program of a family, and its Newton-refined solution
# --------------------------------------------------------------------------------------


@dataclass
class Conic:
    """``min 1/2 z'Pz + q'z  s.t.  A z = b,  G z <= h,  ||M_i z + c_i|| <= e_i'z + d_i``.

    ``socs`` holds the tuples ``(M_i, c_i, e_i, d_i)``.
    """

    P: np.ndarray
    q: np.ndarray
    A: np.ndarray
    b: np.ndarray
    G: np.ndarray
    h: np.ndarray
    socs: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]

    @property
    def N(self) -> int:
        return self.q.shape[0]


@dataclass
class KKT:
    """A solution of a `Conic` with its multipliers (CVXPY's conventions).

    ``lam``: equalities (``P z + q + A'lam + G'nu + sum_i mu_i grad g_i = 0``); ``nu``:
    linear inequalities (zero where inactive); ``mu``: the cones' scalar multipliers
    (zero where inactive); ``margin``: the smallest of the active constraints'
    multipliers, the inactive ones' slacks and the active cones' ``||M_i z + c_i||``.
    """

    z: np.ndarray
    lam: np.ndarray
    nu: np.ndarray
    mu: np.ndarray
    active_lin: np.ndarray
    active_soc: np.ndarray
    margin: float
    residual: float


def _soc_parts(conic: Conic, z: np.ndarray, i: int):
    M, c, e, d = conic.socs[i]
    w = M @ z + c
    a = np.linalg.norm(w)
    u = w / a
    grad = M.T @ u - e
    hess = M.T @ (np.eye(w.size) - np.outer(u, u)) @ M / a
    return w, a, u, grad, hess, e @ z + d


def refine(conic: Conic, z0: np.ndarray, detect_tol: float = 1e-3) -> KKT:
    """Newton's method on the KKT equations of the structure ``z0`` shows.

    A linear inequality is active where its slack at ``z0`` is below ``detect_tol``, a
    cone where ``e'z + d - ||M z + c||`` is; the active ones are held as equalities
    ``g(z) = 0`` with their multipliers unknown, the inactive ones dropped. The square
    system ``(stationarity, A z = b, active rows, active cones)`` is solved by Newton
    from ``z0`` (multipliers from least squares), to a residual of ~1e-15.
    """
    z = np.array(z0, dtype=np.float64)
    slack_lin = conic.h - conic.G @ z
    active_lin = slack_lin < detect_tol
    parts = [_soc_parts(conic, z, i) for i in range(len(conic.socs))]
    active_soc = np.array([t - a < detect_tol for _, a, _, _, _, t in parts], dtype=bool)
    soc_idx = np.flatnonzero(active_soc)
    A, b = conic.A, conic.b
    Ga, ha = conic.G[active_lin], conic.h[active_lin]
    N, p, k, s = conic.N, A.shape[0], Ga.shape[0], soc_idx.size

    def system(z, mult):
        mu = mult[p + k :]
        grads, hess_sum, g_vals = [], np.zeros((N, N)), []
        for j, i in enumerate(soc_idx):
            _, a, _, grad, hess, t = _soc_parts(conic, z, i)
            grads.append(grad)
            hess_sum += mu[j] * hess
            g_vals.append(a - t)
        Gs = np.array(grads).reshape(s, N)
        C = np.vstack([A, Ga, Gs])
        stat = conic.P @ z + conic.q + C.T @ mult
        res = np.concatenate([stat, A @ z - b, Ga @ z - ha, np.array(g_vals)])
        J = np.block([[conic.P + hess_sum, C.T], [C, np.zeros((p + k + s, p + k + s))]])
        return res, J, C

    _, _, C = system(z, np.zeros(p + k + s))
    mult = -np.linalg.lstsq(C.T, conic.P @ z + conic.q, rcond=None)[0]
    for _ in range(30):
        res, J, _ = system(z, mult)
        if np.max(np.abs(res)) < 1e-15:
            break
        step = np.linalg.solve(J, -res)
        z = z + step[:N]
        mult = mult + step[N:]
    res, _, _ = system(z, mult)
    lam = mult[:p]
    nu = np.zeros(conic.G.shape[0])
    nu[active_lin] = mult[p : p + k]
    mu = np.zeros(len(conic.socs))
    mu[soc_idx] = mult[p + k :]
    # Margins of the structure, recomputed at the refined point.
    margins = [np.inf]
    margins += list(nu[active_lin]) + list((conic.h - conic.G @ z)[~active_lin])
    for i in range(len(conic.socs)):
        _, a, _, _, _, t = _soc_parts(conic, z, i)
        margins += [mu[i], a] if active_soc[i] else [t - a]
    return KKT(
        z, lam, nu, mu, active_lin, active_soc, float(min(margins)), float(np.max(np.abs(res)))
    )


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------


@dataclass
class SocFamily:
    """A parametrized SOC problem, one instance, and how to state it as a `Conic`.

    Attributes:
        name: Family name (pytest id).
        problem: The CVXPY problem.
        parameters: Parameters, in the order the layer takes its tensors.
        variables: The layer's outputs (variables).
        values: One array per parameter.
        conic: values -> `Conic`.
        pack: (values, the variables' values) -> the `Conic`'s z (for Clarabel's point).
        unpack: (values, `KKT`) -> the variables' values.
        duals: Dual variables to test as outputs (``constraint.dual_variables[k]``).
        unpack_duals: (values, `KKT`) -> their values, in CVXPY's convention.
        soc_active: Whether each cone of the `Conic` is expected on its boundary.
        closed_form: Optional values -> (variables' values, duals' values), used as the
            gradient reference instead of the refined Clarabel solution.
        certificate: The variables' values the instance was built around, if any.
    """

    name: str
    problem: cp.Problem
    parameters: list[cp.Parameter]
    variables: list[cp.Variable]
    values: list[np.ndarray]
    conic: Callable[[list[np.ndarray]], Conic]
    pack: Callable[[list[np.ndarray], list[np.ndarray]], np.ndarray]
    unpack: Callable[[list[np.ndarray], KKT], list[np.ndarray]]
    soc_active: tuple[bool, ...]
    duals: list[cp.Variable] = field(default_factory=list)
    unpack_duals: Callable[[list[np.ndarray], KKT], list[np.ndarray]] | None = None
    closed_form: Callable[[list[np.ndarray]], tuple[list, list]] | None = None
    certificate: list[np.ndarray] | None = None


def _null_noise(rng: np.random.Generator, C: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """A random vector orthogonal to the columns of ``C`` (tall)."""
    z = rng.standard_normal(C.shape[0])
    return scale * (z - C @ np.linalg.lstsq(C, z, rcond=None)[0])


def _empty(N: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, N)), np.zeros(0)


def trust_region_closed_form(A: np.ndarray, b: np.ndarray, r: float):
    """``argmin ||A x - b||^2 s.t. ||x|| <= r`` (A full column rank) and its multiplier.

    With ``A'A = V diag(s) V'`` and ``beta = V'A'b``, ``x(lam) = V (beta / (s + lam))``;
    the ball is active iff ``||x(0)|| > r``, and then ``lam > 0`` solves the secular
    equation ``||x(lam)|| = r`` (decreasing in lam; bisection to the last bit). The
    multiplier of ``||x|| <= r`` (stationarity ``2 A'(A x - b) + mu x / ||x|| = 0``) is
    ``mu = 2 lam r``.
    """
    s, V = np.linalg.eigh(A.T @ A)
    beta = V.T @ (A.T @ b)
    x_ls = V @ (beta / s)
    if np.linalg.norm(x_ls) <= r:
        return x_ls, 0.0
    lo, hi = 0.0, np.linalg.norm(beta) / r
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.linalg.norm(beta / (s + mid)) > r:
            lo = mid
        else:
            hi = mid
    lam = 0.5 * (lo + hi)
    return V @ (beta / (s + lam)), 2.0 * lam * r


def make_norm_ball_ls(rng: np.random.Generator, active: bool = True, cone: bool = False):
    """``min ||A x - b||^2 s.t. ||x||_2 <= r``; parameters b and r (nonneg)."""
    m, n = 8, 5
    A = rng.standard_normal((m, n))
    rv = 1.2
    direction = rng.standard_normal(n)
    direction /= np.linalg.norm(direction)
    if active:
        x0 = rv * direction
        mu = rng.uniform(1.0, 2.0)
        # stationarity: 2 A'(A x0 - b) + mu x0 / r = 0
        res = np.linalg.pinv(A.T) @ (-mu * x0 / (2 * rv)) + _null_noise(rng, A)
    else:
        x0 = 0.6 * rv * direction
        res = _null_noise(rng, A)
    bv = A @ x0 - res
    b, r = cp.Parameter(m, name="b"), cp.Parameter(nonneg=True, name="r")
    x = cp.Variable(n, name="x")
    constraint = cp.SOC(r, x) if cone else cp.norm(x, 2) <= r
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [constraint])

    def conic(values):
        b_, r_ = values
        return Conic(
            2 * A.T @ A,
            -2 * A.T @ b_,
            *_empty(n),
            *_empty(n),
            [(np.eye(n), np.zeros(n), np.zeros(n), float(r_))],
        )

    def closed_form(values):
        b_, r_ = values
        x_, mu_ = trust_region_closed_form(A, b_, float(r_))
        return [x_], _ball_duals(x_, mu_, cone)

    def unpack_duals(values, kkt):
        return _ball_duals(kkt.z, kkt.mu[0], cone)

    name = "norm_ball_ls" + ("_cone" if cone else "") + ("" if active else "_inactive")
    return SocFamily(
        name,
        problem,
        [b, r],
        [x],
        [bv, np.array(rv)],
        conic,
        pack=lambda values, outs: outs[0],
        unpack=lambda values, kkt: [kkt.z],
        soc_active=(active,),
        duals=list(constraint.dual_variables),
        unpack_duals=unpack_duals,
        closed_form=closed_form,
        certificate=[x0],
    )


def _ball_duals(x: np.ndarray, mu: float, cone: bool) -> list[np.ndarray]:
    """Duals of ``||x|| <= r`` (mu), or of ``cp.SOC(r, x)`` ((mu,), -mu x/||x||)."""
    if not cone:
        return [np.array(mu)]
    return [np.array([mu]), -mu * x / np.linalg.norm(x)]


def make_robust_lp(rng: np.random.Generator) -> SocFamily:
    """Robust LP ``min c'x s.t. a_i'x + ||P_i x||_2 <= b_i``, i < 7; parameters c, b.

    Two constraints active with multipliers in (0.5, 1.5); at the solution ``b_i > 0`` on
    them, so ``x`` is not tangent to their boundaries, whose curvature then makes the
    solution unique.
    """
    n, m = 4, 7
    a = rng.standard_normal((m, n))
    Ps = [0.5 * rng.standard_normal((n, n)) + 0.5 * np.eye(n) for _ in range(m)]
    while True:
        x0 = 0.7 * rng.standard_normal(n)
        g = np.array([a[i] @ x0 + np.linalg.norm(Ps[i] @ x0) for i in range(m)])
        if g[0] > 0.3 and g[1] > 0.3:
            break
    bv = g + rng.uniform(0.3, 1.0, m)
    bv[:2] = g[:2]
    mu = rng.uniform(0.5, 1.5, 2)
    grads = [a[i] + Ps[i].T @ Ps[i] @ x0 / np.linalg.norm(Ps[i] @ x0) for i in range(2)]
    cv = -(mu[0] * grads[0] + mu[1] * grads[1])
    c, b = cp.Parameter(n, name="c"), cp.Parameter(m, name="b")
    x = cp.Variable(n, name="x")
    constraints = [a[i] @ x + cp.norm(Ps[i] @ x, 2) <= b[i] for i in range(m)]
    problem = cp.Problem(cp.Minimize(c @ x), constraints)

    def conic(values):
        c_, b_ = values
        socs = [(Ps[i], np.zeros(n), -a[i], float(b_[i])) for i in range(m)]
        return Conic(np.zeros((n, n)), c_, *_empty(n), *_empty(n), socs)

    return SocFamily(
        "robust_lp",
        problem,
        [c, b],
        [x],
        [cv, bv],
        conic,
        pack=lambda values, outs: outs[0],
        unpack=lambda values, kkt: [kkt.z],
        soc_active=(True, True) + (False,) * (m - 2),
        duals=[con.dual_variables[0] for con in constraints],
        unpack_duals=lambda values, kkt: [np.array(mu_i) for mu_i in kkt.mu],
        certificate=[x0],
    )


def make_norm2_regression(rng: np.random.Generator) -> SocFamily:
    """``min ||A x - y||_2 s.t. x_1 <= x_2 <= ... <= x_n``; parameters A and y.

    The coefficients are tied in two places (active monotonicity rows with multipliers
    of order 0.1); the residual is nonzero, so the objective is smooth at the solution.
    """
    m, n = 10, 6
    Av = rng.standard_normal((m, n))
    steps = rng.uniform(0.3, 1.0, n - 1)
    tied = np.sort(rng.choice(n - 1, size=2, replace=False))
    steps[tied] = 0.0
    x0 = np.concatenate([[rng.uniform(-1.0, 0.0)], steps]).cumsum()
    D = np.diff(np.eye(n), axis=0)  # (n-1, n): D x = diff(x)
    nu = np.zeros(n - 1)
    nu[tied] = rng.uniform(1.0, 2.0, tied.size)
    # stationarity: A'w / ||w|| = D'nu / ||w|| with w = A x0 - y the residual
    w = np.linalg.pinv(Av.T) @ (D.T @ nu) + _null_noise(rng, Av)
    yv = Av @ x0 - w
    A, y = cp.Parameter((m, n), name="A"), cp.Parameter(m, name="y")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Minimize(cp.norm2(A @ x - y)), [cp.diff(x) >= 0])

    def conic(values):  # z = (x, t): min t, -D x <= 0, ||A x - y|| <= t
        A_, y_ = values
        N = n + 1
        e_t = np.zeros(N)
        e_t[-1] = 1.0
        G = np.hstack([-D, np.zeros((n - 1, 1))])
        M = np.hstack([A_, np.zeros((m, 1))])
        return Conic(np.zeros((N, N)), e_t, *_empty(N), G, np.zeros(n - 1), [(M, -y_, e_t, 0.0)])

    def pack(values, outs):
        A_, y_ = values
        return np.concatenate([outs[0], [np.linalg.norm(A_ @ outs[0] - y_)]])

    return SocFamily(
        "norm2_regression",
        problem,
        [A, y],
        [x],
        [Av, yv],
        conic,
        pack,
        unpack=lambda values, kkt: [kkt.z[:n]],
        soc_active=(True,),
        certificate=[x0],
    )


def make_portfolio(rng: np.random.Generator) -> SocFamily:
    """``max mu'x s.t. sum(x) = 1, x >= 0, (sigma, L x) in SOC``; parameters mu, sigma.

    Five of eight weights positive, the risk limit active with multiplier in (1, 2).
    """
    n, k = 8, 5
    L = 0.4 * rng.standard_normal((n, n)) + 0.6 * np.eye(n)
    support = np.sort(rng.choice(n, size=k, replace=False))
    x0 = np.zeros(n)
    x0[support] = rng.uniform(0.5, 1.5, k)
    x0 /= x0.sum()
    sigma_v = float(np.linalg.norm(L @ x0))
    eta = rng.uniform(1.0, 2.0)
    nu = rng.standard_normal()
    zl = rng.uniform(0.3, 1.0, n)
    zl[support] = 0.0
    # stationarity of min -mu'x: -mu + eta L'L x0 / sigma + nu 1 - zl = 0
    mu_v = eta * L.T @ L @ x0 / sigma_v + nu - zl
    mu, sigma = cp.Parameter(n, name="mu"), cp.Parameter(nonneg=True, name="sigma")
    x = cp.Variable(n, name="x")
    risk = cp.SOC(sigma, L @ x)
    problem = cp.Problem(cp.Maximize(mu @ x), [cp.sum(x) == 1, x >= 0, risk])

    def conic(values):
        mu_, sigma_ = values
        soc = (L, np.zeros(n), np.zeros(n), float(sigma_))
        return Conic(
            np.zeros((n, n)), -mu_, np.ones((1, n)), np.ones(1), -np.eye(n), np.zeros(n), [soc]
        )

    def unpack_duals(values, kkt):
        w = L @ kkt.z
        return [np.array([kkt.mu[0]]), -kkt.mu[0] * w / np.linalg.norm(w)]

    return SocFamily(
        "portfolio",
        problem,
        [mu, sigma],
        [x],
        [mu_v, np.array(sigma_v)],
        conic,
        pack=lambda values, outs: outs[0],
        unpack=lambda values, kkt: [kkt.z],
        soc_active=(True,),
        duals=list(risk.dual_variables),
        unpack_duals=unpack_duals,
        certificate=[x0],
    )


#: MPC instance: the first inputs saturate the bound, the later ones do not.
MPC_X_INIT_SCALE = 5.0
MPC_U_MAX = 1.0


def make_mpc(rng: np.random.Generator) -> SocFamily:
    """MPC: ``min sum_t ||x_t||^2 + 0.5 ||u_t||^2`` over a horizon of 5, ``x_{t+1} =
    A x_t + B u_t``, ``x_0 = x_init``, ``||u_t||_2 <= u_max``; parameters x_init, u_max."""
    nx, nu, T = 3, 2, 5
    theta = 0.4
    A_dyn = 1.05 * np.array(
        [[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0, 0, 0.9]]
    )
    B_dyn = rng.standard_normal((nx, nu))
    x_init_v = rng.standard_normal(nx)
    x_init_v *= MPC_X_INIT_SCALE / np.linalg.norm(x_init_v)
    x_init, u_max = cp.Parameter(nx, name="x_init"), cp.Parameter(nonneg=True, name="u_max")
    X, U = cp.Variable((nx, T + 1), name="X"), cp.Variable((nu, T), name="U")
    constraints = [X[:, 0] == x_init, X[:, 1:] == A_dyn @ X[:, :-1] + B_dyn @ U]
    constraints += [cp.norm(U[:, t], 2) <= u_max for t in range(T)]
    objective = cp.sum_squares(X[:, 1:]) + 0.5 * cp.sum_squares(U)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    nX = nx * (T + 1)
    N = nX + nu * T

    def xi(i, t):  # column-major positions in z = (vec X, vec U)
        return i + nx * t

    def ui(j, t):
        return nX + j + nu * t

    def conic(values):
        x_init_, u_max_ = values
        P = np.zeros((N, N))
        for t in range(1, T + 1):
            for i in range(nx):
                P[xi(i, t), xi(i, t)] = 2.0
        for t in range(T):
            for j in range(nu):
                P[ui(j, t), ui(j, t)] = 1.0
        rows, rhs = [], []
        for i in range(nx):
            row = np.zeros(N)
            row[xi(i, 0)] = 1.0
            rows.append(row)
            rhs.append(x_init_[i])
        for t in range(T):
            for i in range(nx):
                row = np.zeros(N)
                row[xi(i, t + 1)] = 1.0
                for k in range(nx):
                    row[xi(k, t)] -= A_dyn[i, k]
                for j in range(nu):
                    row[ui(j, t)] -= B_dyn[i, j]
                rows.append(row)
                rhs.append(0.0)
        socs = []
        for t in range(T):
            M = np.zeros((nu, N))
            for j in range(nu):
                M[j, ui(j, t)] = 1.0
            socs.append((M, np.zeros(nu), np.zeros(N), float(u_max_)))
        return Conic(P, np.zeros(N), np.array(rows), np.array(rhs), *_empty(N), socs)

    def pack(values, outs):
        return np.concatenate([outs[0].ravel(order="F"), outs[1].ravel(order="F")])

    def unpack(values, kkt):
        z = kkt.z
        return [z[:nX].reshape((nx, T + 1), order="F"), z[nX:].reshape((nu, T), order="F")]

    return SocFamily(
        "mpc",
        problem,
        [x_init, u_max],
        [X, U],
        [x_init_v, np.array(MPC_U_MAX)],
        conic,
        pack,
        unpack,
        soc_active=(True, True, False, False, False),
    )


def make_mixed(rng: np.random.Generator) -> SocFamily:
    """``min ||x||^2 + q'x s.t. A x = b, (e'x + d, G x + h) in SOC, x >= -1``.

    Parameters q, A, b, G, h, d (A and G matrices); the cone (multiplier in (1, 2)) and
    one bound (multiplier in (0.5, 1)) active, the other bounds 0.3 or more inside.
    """
    n, p, k = 6, 2, 3
    e = 0.3 * rng.standard_normal(n)
    Av = rng.standard_normal((p, n))
    Gv = rng.standard_normal((k, n))
    hv = rng.standard_normal(k)
    x0 = rng.uniform(-0.7, 1.0, n)
    j = int(rng.integers(n))
    x0[j] = -1.0
    bv = Av @ x0
    w = Gv @ x0 + hv
    dv = float(np.linalg.norm(w) - e @ x0)
    lam = rng.standard_normal(p)
    mu = rng.uniform(1.0, 2.0)
    nu = np.zeros(n)
    nu[j] = rng.uniform(0.5, 1.0)
    # stationarity: 2 x0 + q + A'lam + mu (G'w/||w|| - e) - nu = 0   (-x <= 1 has grad -I)
    qv = -2 * x0 - Av.T @ lam - mu * (Gv.T @ w / np.linalg.norm(w) - e) + nu
    q, A, b = cp.Parameter(n, name="q"), cp.Parameter((p, n), name="A"), cp.Parameter(p, name="b")
    G, h, d = cp.Parameter((k, n), name="G"), cp.Parameter(k, name="h"), cp.Parameter(name="d")
    x = cp.Variable(n, name="x")
    equality = A @ x == b
    cone = cp.SOC(e @ x + d, G @ x + h)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + q @ x), [equality, cone, x >= -1])

    def conic(values):
        q_, A_, b_, G_, h_, d_ = values
        return Conic(2 * np.eye(n), q_, A_, b_, -np.eye(n), np.ones(n), [(G_, h_, e, float(d_))])

    def unpack_duals(values, kkt):
        _, _, _, G_, h_, _ = values
        w_ = G_ @ kkt.z + h_
        return [kkt.lam, np.array([kkt.mu[0]]), -kkt.mu[0] * w_ / np.linalg.norm(w_)]

    return SocFamily(
        "mixed",
        problem,
        [q, A, b, G, h, d],
        [x],
        [qv, Av, bv, Gv, hv, np.array(dv)],
        conic,
        pack=lambda values, outs: outs[0],
        unpack=lambda values, kkt: [kkt.z],
        soc_active=(True,),
        duals=[equality.dual_variables[0], *cone.dual_variables],
        unpack_duals=unpack_duals,
        certificate=[x0],
    )


BUILDERS: dict[str, Callable[[np.random.Generator], SocFamily]] = {
    "norm_ball_ls": make_norm_ball_ls,
    "norm_ball_ls_inactive": functools.partial(make_norm_ball_ls, active=False),
    "norm_ball_ls_cone": functools.partial(make_norm_ball_ls, cone=True),
    "robust_lp": make_robust_lp,
    "norm2_regression": make_norm2_regression,
    "portfolio": make_portfolio,
    "mpc": make_mpc,
    "mixed": make_mixed,
}
#: The families every test runs on (``norm_ball_ls_cone`` only serves the dual tests).
NAMES = [name for name in BUILDERS if name != "norm_ball_ls_cone"]
DUAL_NAMES = ["norm_ball_ls", "norm_ball_ls_cone", "robust_lp", "portfolio", "mixed"]


@functools.cache
def build(name: str) -> SocFamily:
    # Keyed by the name only, so that the instance does not depend on the test.
    return BUILDERS[name](np.random.default_rng(_seed("soc", name)))


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def clarabel_solve(fam: SocFamily, values, outputs) -> list[np.ndarray]:
    """CVXPY + Clarabel at `CLARABEL_TIGHT`; the parameters' values are restored.

    Clarabel ends most of these SOC problems "almost solved" (CVXPY:
    optimal_inaccurate) at such tolerances, with solutions within 1e-9 to 2.3e-6
    (relative) of the refined ones; both statuses are accepted (`refine` checks the
    point, `test_reference_instance_is_nondegenerate` the distance).
    """
    previous = [p.value for p in fam.parameters]
    try:
        for p, v in zip(fam.parameters, values):
            p.value = np.asarray(v, dtype=np.float64)
        fam.problem.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
        if fam.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise AssertionError(f"{fam.name}: Clarabel ended with {fam.problem.status!r}")
        return [np.array(v.value, dtype=np.float64).reshape(v.shape) for v in outputs]
    finally:
        for p, v in zip(fam.parameters, previous):
            p.value = v


@dataclass
class Reference:
    outputs: list[np.ndarray]  # the variables' values
    duals: list[np.ndarray]  # the duals' values (CVXPY convention)
    kkt: KKT


def refined_reference(fam: SocFamily, values) -> Reference:
    """Clarabel's solution of the family's problem, refined by `refine`."""
    outs = clarabel_solve(fam, values, fam.variables)
    kkt = refine(fam.conic(values), fam.pack(values, outs))
    assert kkt.residual < 1e-12, f"{fam.name}: Newton refinement residual {kkt.residual:.1e}"
    assert tuple(kkt.active_soc) == fam.soc_active, f"{fam.name}: cones {kkt.active_soc}"
    duals = fam.unpack_duals(values, kkt) if fam.unpack_duals else []
    return Reference(fam.unpack(values, kkt), duals, kkt)


def gradient_reference(fam: SocFamily, values, with_duals: bool = False) -> list[np.ndarray]:
    """The outputs the gradient reference differentiates: closed form where the family
    has one, else the refined Clarabel solution; with the duals when asked."""
    if fam.closed_form is not None:
        outs, duals = fam.closed_form(values)
    else:
        ref = refined_reference(fam, values)
        outs, duals = ref.outputs, ref.duals
    return [np.asarray(o, dtype=np.float64) for o in (outs + duals if with_duals else outs)]


def fd_directional(fam: SocFamily, weights, directions, with_duals: bool = False) -> np.ndarray:
    """Central differences of ``sum_k <weights[k], output_k>`` of the gradient reference,
    along each direction (a list of arrays, one per parameter)."""
    out = []
    for direction in directions:
        losses = []
        for sign in (1.0, -1.0):
            shifted = [
                np.asarray(v, dtype=np.float64) + sign * FD_STEP * d
                for v, d in zip(fam.values, direction)
            ]
            outs = gradient_reference(fam, shifted, with_duals)
            losses.append(sum(float(np.sum(w * o)) for w, o in zip(weights, outs)))
        out.append((losses[0] - losses[1]) / (2 * FD_STEP))
    return np.array(out)


@functools.cache
def case(name: str):
    """Family, layer, loss weights, directions and references (built once)."""
    fam = build(name)
    layer = AltDiffLayer(fam.problem, parameters=fam.parameters, variables=fam.variables)
    rng = np.random.default_rng(_seed("soc", name, "weights"))
    weights = [rng.standard_normal(v.shape) for v in fam.variables]
    directions = [[rng.standard_normal(np.shape(v)) for v in fam.values] for _ in range(3)]
    ref = refined_reference(fam, fam.values)
    return fam, layer, weights, directions, ref


@functools.cache
def fd_reference(name: str) -> np.ndarray:
    fam, _, weights, directions, _ = case(name)
    return fd_directional(fam, weights, directions)


def _tensors(values, dtype=torch.float64, requires_grad=False) -> list[torch.Tensor]:
    return [torch.tensor(np.asarray(v), dtype=dtype).requires_grad_(requires_grad) for v in values]


def _loss(outputs, weights) -> torch.Tensor:
    return sum(
        (out * torch.as_tensor(np.asarray(w), dtype=out.dtype).reshape(out.shape)).sum()
        for out, w in zip(outputs, weights)
    )


def _directional(grads, directions) -> np.ndarray:
    return np.array(
        [
            sum(float(np.sum(g.detach().numpy() * d)) for g, d in zip(grads, direction))
            for direction in directions
        ]
    )


def _layer_directional(layer, fam, weights, directions, solver_args) -> np.ndarray:
    inputs = _tensors(fam.values, requires_grad=True)
    outputs = layer(*inputs, solver_args=solver_args)
    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    return _directional(grads, directions)


# --------------------------------------------------------------------------------------
# The references themselves (no layer involved)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*NAMES, "norm_ball_ls_cone"])
def test_reference_instance_is_nondegenerate(name) -> None:
    """The refined reference is a KKT point with the expected structure, margins >= 0.05,
    and within 1e-6 of Clarabel's solution of the CVXPY problem."""
    fam = build(name)
    ref = refined_reference(fam, fam.values)
    assert ref.kkt.margin > MARGIN, f"{name}: structure margin {ref.kkt.margin:.3g}"
    if fam.certificate is not None:
        err = relative_error(ref.outputs, fam.certificate)
        assert err < 1e-10, f"{name}: refined vs the certificate, relative error {err:.2e}"
    raw = clarabel_solve(fam, fam.values, fam.variables)
    err = relative_error(raw, ref.outputs)
    assert err < CLARABEL_ACCURACY, f"{name}: Clarabel vs refined, relative error {err:.2e}"


@pytest.mark.parametrize("name", DUAL_NAMES)
def test_reference_duals_follow_cvxpy(name) -> None:
    """The refined reference's duals are CVXPY's dual values (Clarabel), sign included."""
    fam = build(name)
    ref = refined_reference(fam, fam.values)
    raw = clarabel_solve(fam, fam.values, fam.duals)
    err = relative_error(raw, ref.duals)
    assert err < CLARABEL_ACCURACY, f"{name}: Clarabel duals vs refined, rel. error {err:.2e}"


@pytest.mark.parametrize("name", ["norm_ball_ls", "norm_ball_ls_inactive", "norm_ball_ls_cone"])
def test_closed_form_matches_refined_reference(name) -> None:
    fam = build(name)
    ref = refined_reference(fam, fam.values)
    outs, duals = fam.closed_form(fam.values)
    assert relative_error(outs, ref.outputs) < 1e-12
    assert relative_error(duals, ref.duals) < 1e-10
    if name == "norm_ball_ls_inactive":
        assert np.linalg.norm(outs[0]) < float(fam.values[1]) - 0.3
    else:
        assert abs(np.linalg.norm(outs[0]) - float(fam.values[1])) < 1e-14
        assert float(np.ravel(duals[0])[0]) > 0.5


# --------------------------------------------------------------------------------------
# The layer: solutions, gradients, forward mode
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_solution_matches_clarabel(name) -> None:
    fam, layer, _, _, ref = case(name)
    outputs = layer(*_tensors(fam.values), solver_args=TIGHT)
    assert isinstance(outputs, tuple) and len(outputs) == len(fam.variables)
    raw = clarabel_solve(fam, fam.values, fam.variables)
    for out, var, exact, clarabel in zip(outputs, fam.variables, ref.outputs, raw):
        assert out.dtype == torch.float64
        assert tuple(out.shape) == var.shape
        err = relative_error(out, exact)
        assert err < 1e-6, f"{var.name()}: relative error {err:.2e} vs refined Clarabel"
        own = relative_error(clarabel, exact)  # Clarabel's own error on this instance
        err = relative_error(out, clarabel)
        assert err < 1e-6 + own, f"{var.name()}: relative error {err:.2e} vs Clarabel ({own:.1e})"


@pytest.mark.parametrize("name", NAMES)
def test_reverse_gradient_matches_finite_differences(name) -> None:
    fam, layer, weights, directions, _ = case(name)
    ours = _layer_directional(layer, fam, weights, directions, {**TIGHT, "mode": "reverse"})
    expected = fd_reference(name)
    err = relative_error(ours, expected)
    assert err < 1e-5, f"reverse vs FD: {ours} vs {expected}, relative error {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_forward_mode_matches_finite_differences(name) -> None:
    fam, layer, weights, directions, _ = case(name)
    forward = _layer_directional(layer, fam, weights, directions, {**TIGHT, "mode": "forward"})
    expected = fd_reference(name)
    err = relative_error(forward, expected)
    assert err < 1e-5, f"forward vs FD: {forward} vs {expected}, relative error {err:.2e}"
    reverse = _layer_directional(layer, fam, weights, directions, {**TIGHT, "mode": "reverse"})
    err = relative_error(forward, reverse)
    assert err < 1e-6, f"forward vs reverse: relative error {err:.2e}"


def _directional_by_method(name: str, methods: tuple[str, ...]) -> dict:
    """Per backward method: the gradients' directional derivatives of case ``name`` and
    the backward's iterations."""
    fam, layer, weights, directions, _ = case(name)
    found = {}
    for method in methods:
        inputs = _tensors(fam.values, requires_grad=True)
        args = {**TIGHT, "backward_method": method}
        outputs, info = layer(*inputs, solver_args=args, return_info=True)
        grads = torch.autograd.grad(_loss(outputs, weights), inputs)
        found[method] = (_directional(grads, directions), info.backward_iterations)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_direct_backward_matches_gmres(name) -> None:
    found = _directional_by_method(name, ("direct", "gmres"))
    (direct, direct_steps), (gmres, gmres_steps) = found["direct"], found["gmres"]
    assert gmres_steps > 1
    # one factorization, verified: also on the robust LP, whose canonical solution is
    # not unique (an inactive norm bound leaves its epigraph variable free; the solve
    # pins it, `_cone_adjoint`)
    assert direct_steps == 1
    err = relative_error(direct, gmres)
    assert err < 1e-9, f"direct vs GMRES: {direct} vs {gmres}, relative error {err:.2e}"
    err = relative_error(direct, fd_reference(name))
    assert err < 1e-5, f"direct vs FD: relative error {err:.2e}"


def test_gmres_hands_over_to_the_direct_solve_at_its_price(monkeypatch) -> None:
    """Where "auto" runs GMRES, GMRES stops once it has cost the direct solve's price,
    and the direct solve takes the instances it has not solved: priced at zero, GMRES
    stops at its first check and the direct solve's gradient comes back."""
    from altdiff_modeling import _altdiff

    monkeypatch.setattr(_altdiff, "_cheaper_backward", lambda *args: "gmres")
    monkeypatch.setattr(_altdiff, "_scaled", lambda *args: None)  # no measured price
    monkeypatch.setattr(_altdiff, "cone_predicted_seconds", lambda *args: (0.0, 1.0))
    found = _directional_by_method("robust_lp", ("auto", "direct"))
    (auto, auto_steps), (direct, _) = found["auto"], found["direct"]
    assert auto_steps <= 3  # GMRES's first residual, at most one cycle, the direct solve
    err = relative_error(auto, direct)
    assert err < 1e-9, f"GMRES handed over vs direct: relative error {err:.2e}"


def test_the_direct_backward_pins_only_variables_free_on_the_solution_set() -> None:
    """A variable P leaves out that appears only in rows where J is the identity is
    pinned; one in P, or in a row where J is not the identity, is not."""
    from altdiff_modeling._cone_adjoint import _free_variables

    P = torch.zeros(1, 3, 3, dtype=torch.float64)
    P[0, 0, 0] = 1.0
    C = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    identity_rows = torch.tensor([[True, False], [True, True]])
    free = _free_variables(P, C, identity_rows)
    assert free.tolist() == [[False, True, False], [False, True, True]]


@pytest.mark.parametrize("name", ["norm_ball_ls", "mpc"])
def test_jacobian_matches_finite_differences(name) -> None:
    """``layer.jacobian`` (forward-mode Alt-Diff), contracted with the loss weights and
    the directions, against the same finite differences."""
    fam, layer, weights, directions, _ = case(name)
    jac = layer.jacobian(*_tensors(fam.values), solver_args=TIGHT)
    assert len(jac) == len(fam.variables)
    ours = []
    for direction in directions:
        total = 0.0
        for i, (var, w) in enumerate(zip(fam.variables, weights)):
            assert len(jac[i]) == len(fam.parameters)
            for j, (param, d) in enumerate(zip(fam.parameters, direction)):
                block = jac[i][j].detach().numpy()
                assert block.shape == var.shape + param.shape
                total += float(np.sum(w * np.tensordot(block, d, axes=d.ndim)))
        ours.append(total)
    expected = fd_reference(name)
    err = relative_error(np.array(ours), expected)
    assert err < 1e-5, f"jacobian vs FD: relative error {err:.2e}"


# --------------------------------------------------------------------------------------
# Duals as outputs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DUAL_NAMES)
def test_cone_duals_as_outputs(name) -> None:
    """``dual_variables[k]`` of SOC constraints (and of an equality) as layer outputs:
    values against CVXPY + Clarabel's dual values (CVXPY's convention) and the refined
    reference to 1e-6, gradients of a functional of primal and dual outputs against
    finite differences to 1e-5."""
    fam = build(name)
    outputs_spec = [*fam.variables, *fam.duals]
    layer = AltDiffLayer(fam.problem, parameters=fam.parameters, variables=outputs_spec)
    rng = np.random.default_rng(_seed("soc", name, "duals"))
    weights = [rng.standard_normal(v.shape) for v in outputs_spec]
    directions = [[rng.standard_normal(np.shape(v)) for v in fam.values] for _ in range(3)]

    inputs = _tensors(fam.values, requires_grad=True)
    outputs = layer(*inputs, solver_args=TIGHT)
    assert len(outputs) == len(outputs_spec)
    ref = refined_reference(fam, fam.values)
    raw = clarabel_solve(fam, fam.values, fam.duals)
    n_var = len(fam.variables)
    # A dual that vanishes (an inactive cone's) is measured against 1e-3 of all of them.
    dual_scale = np.linalg.norm(np.concatenate([np.ravel(d) for d in ref.duals]))
    for k, (out, var) in enumerate(zip(outputs[n_var:], fam.duals)):
        assert tuple(out.shape) == var.shape, f"dual {k}: shape {tuple(out.shape)}"
        scale = max(np.linalg.norm(ref.duals[k]), 1e-3 * dual_scale)
        err = np.linalg.norm(out.detach().numpy().ravel() - np.ravel(ref.duals[k])) / scale
        assert err < 1e-6, f"dual {k}: relative error {err:.2e} vs refined Clarabel"
        own = np.linalg.norm(np.ravel(raw[k]) - np.ravel(ref.duals[k])) / scale
        err = np.linalg.norm(out.detach().numpy().ravel() - np.ravel(raw[k])) / scale
        assert err < 1e-6 + own, f"dual {k}: relative error {err:.2e} vs Clarabel ({own:.1e})"
    assert relative_error(outputs[:n_var], ref.outputs) < 1e-6

    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    ours = _directional(grads, directions)
    expected = fd_directional(fam, weights, directions, with_duals=True)
    err = relative_error(ours, expected)
    assert err < 1e-5, f"duals: reverse vs FD {ours} vs {expected}, relative error {err:.2e}"


# --------------------------------------------------------------------------------------
# Batching, float32, warm start, sparse backend
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "batched_params"), [("norm_ball_ls", (0,)), ("mixed", (1, 3))])
def test_batched_call(name, batched_params) -> None:
    """B = 3: the batched parameters with a leading batch dimension, the others shared.
    Each instance matches its own reference and the unbatched call; a shared
    parameter's gradient is the sum of the instances' gradients."""
    fam, layer, _, _, _ = case(name)
    rng = np.random.default_rng(_seed("soc", name, "batch"))
    B = 3
    instances = []
    for _ in range(B):
        inst = perturb_values(fam, rng, 0.02)
        instances.append(
            [inst[i] if i in batched_params else fam.values[i] for i in range(len(inst))]
        )
    inputs = [
        torch.tensor(np.stack([inst[i] for inst in instances]))
        if i in batched_params
        else torch.tensor(np.asarray(fam.values[i]))
        for i in range(len(fam.parameters))
    ]
    for t in inputs:
        t.requires_grad_(True)
    weights = [rng.standard_normal((B, *v.shape)) for v in fam.variables]
    outputs = layer(*inputs, solver_args=TIGHT)
    for out, var in zip(outputs, fam.variables):
        assert tuple(out.shape) == (B, *var.shape)
    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    shared_sum = {i: 0.0 for i in range(len(inputs)) if i not in batched_params}
    for k, inst in enumerate(instances):
        ref = refined_reference(fam, inst)
        err = relative_error([o[k] for o in outputs], ref.outputs)
        assert err < 1e-6, f"instance {k}: relative error {err:.2e} vs refined Clarabel"
        single_inputs = _tensors(inst, requires_grad=True)
        single = layer(*single_inputs, solver_args=TIGHT)
        single_grads = torch.autograd.grad(_loss(single, [w[k] for w in weights]), single_inputs)
        err = relative_error([o[k] for o in outputs], single)
        assert err < 1e-7, f"instance {k}: batched vs unbatched, relative error {err:.2e}"
        for i in batched_params:
            err = relative_error(grads[i][k], single_grads[i])
            assert err < 1e-6, f"instance {k}: d/d{fam.parameters[i].name()} rel. error {err:.2e}"
        for i in shared_sum:
            shared_sum[i] = shared_sum[i] + single_grads[i].numpy()
    for i, total in shared_sum.items():
        assert tuple(grads[i].shape) == np.shape(fam.values[i])
        err = relative_error(grads[i], total)
        assert err < 1e-6, f"shared {fam.parameters[i].name()}: relative error {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_float32(name) -> None:
    """float32 in, float32 out, within 1e-3 of the reference at float32-sized
    tolerances (1e-2 at the library's defaults); float32 gradients, finite."""
    fam, layer, weights, _, ref = case(name)
    loss = functools.partial(_loss, weights=weights)
    assert_float32_layer(layer, fam.values, fam.variables, ref.outputs, loss)


def test_float64_default_settings() -> None:
    """float64 at the library's defaults (eps 1e-6): within 1e-4 of the reference."""
    fam, layer, _, _, ref = case("norm_ball_ls")
    (x,) = layer(*_tensors(fam.values))
    assert x.dtype == torch.float64
    assert relative_error(x, ref.outputs[0]) < 1e-4


@pytest.mark.parametrize("name", ["norm_ball_ls", "portfolio"])
def test_warm_start(name) -> None:
    """A warm-started call at slightly different parameters takes fewer iterations than
    a cold solve of the same instance (by a layer without history), and still matches
    its own reference; repeating the call takes no more iterations. (Without polishing,
    which ends cold and warm solves alike at the first checks.)"""
    fam = build(name)
    args = {**TIGHT, "warm_start": True, "polish": False}
    layer = AltDiffLayer(fam.problem, fam.parameters, fam.variables, solver_args=args)
    layer(*_tensors(fam.values))  # the solution the next call starts from
    rng = np.random.default_rng(_seed("soc", name, "warm"))
    nearby = perturb_values(fam, rng, 0.001)
    # Cold solve of the new instance, by a second layer without history.
    fresh = AltDiffLayer(fam.problem, fam.parameters, fam.variables, solver_args=args)
    _, fresh_info = fresh(*_tensors(nearby), return_info=True)
    outputs, warm = layer(*_tensors(nearby), return_info=True)
    ref = refined_reference(fam, nearby)
    assert relative_error(outputs, ref.outputs) < 1e-6
    assert int(warm.iterations.max()) < int(fresh_info.iterations.max()), (
        f"warm {int(warm.iterations.max())} vs cold {int(fresh_info.iterations.max())} iterations"
    )
    # The same parameters again: the warm start begins at the solution.
    outputs_again, again = layer(*_tensors(nearby), return_info=True)
    assert int(again.iterations.max()) <= int(warm.iterations.max())
    assert relative_error(outputs_again, ref.outputs) < 1e-6


@pytest.mark.parametrize("name", ["norm_ball_ls", "norm_ball_ls_inactive", "mpc"])
def test_sparse_backend(name) -> None:
    """``backend="sparse"``: solution to 1e-6 of the reference, reverse-mode gradients to
    1e-5 of the finite differences."""
    fam, _, weights, directions, ref = case(name)
    layer = AltDiffLayer(
        fam.problem, fam.parameters, fam.variables, solver_args={"backend": "sparse"}
    )
    assert layer.backend == "sparse"
    inputs = _tensors(fam.values, requires_grad=True)
    outputs = layer(*inputs, solver_args=TIGHT)
    err = relative_error(outputs, ref.outputs)
    assert err < 1e-6, f"sparse: relative error {err:.2e} vs refined Clarabel"
    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    ours = _directional(grads, directions)
    err = relative_error(ours, fd_reference(name))
    assert err < 1e-5, f"sparse: reverse vs FD, relative error {err:.2e}"
