"""The layer families of ``benchmarks/families.py``: problems as users write them.

Every case is a parametric CVXPY problem written the way a user of a layer library
writes it, a batch size, and a generator of parameter values that draws new values for
every call, as a training run does (the network's outputs change at every step). Where
the problem can also be handed to a raw-QP solver (qpth, proxsuite's QPLayer, this
library's ``solve_qp``), the case also has its QP written directly in torch
(``Case.qp``: the blocks ``P, q, A, b, G, h`` as differentiable functions of the
parameter tensors, and ``Case.qp_output``: the user's variable from the QP's ``x``), as
a user of those solvers would write it. The reference checks that both forms have the
same solution and the same gradient (``benchmarks/family_reference.py``).

Families (the issue's list):

* ``a``: dense random QPs, shared P, A, G, batched q, b, h, drawn from a certificate
  so that the condition number of P and the fraction of active inequalities are exact.
* ``b``: LP layers (shortest paths on k x k grids, a knapsack relaxation), as pure LPs
  and with ``gamma/2 ||x||^2``.
* ``c``: constraint matrices that depend on batched parameters: the ReLU/projection
  layer ``min ||z - W~ x - b||^2 s.t. z >= 0, W~ == W`` and MPC with parametric
  dynamics.
* ``d``: Markowitz portfolios with ``cp.abs`` transaction and ``cp.neg`` shorting costs
  and a parametric covariance factor.
* ``e``: tiny problems (n <= 10), one instance per call, 100 calls per training step.
* ``f``: the single large dense problems of ``workloads.py`` (workload 1) and the large
  sparse problems of ``sparse_problems.py``.
* ``g``: second-order cone layers: norm-ball least squares, a robust LP, a norm-2
  regression with monotone coefficients, a portfolio with a risk limit, MPC with a norm
  bound on the input. They have no raw-QP form; their cone program is written in torch
  instead (``Case.conic``, with ``Case.cones``), which the reference solves and
  differentiates.

Nothing here imports ``altdiff_modeling``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch

FAMILY_TITLES = {
    "a": "dense random QPs (shared P, A, G)",
    "b": "LP layers (shortest path, knapsack), pure and regularized",
    "c": "parameters in the constraint matrix (ReLU layer, MPC with parametric dynamics)",
    "d": "Markowitz portfolios with abs and neg costs",
    "e": "tiny problems, one instance per call, 100 calls per step",
    "f": "single large dense and large sparse problems",
    "g": "second-order cone layers",
}

Blocks = dict[str, torch.Tensor]


@dataclass
class LayerProblem:
    """What a layer is built from: the problem, its parameters (in call order) and the
    variable the loss reads."""

    problem: cp.Problem
    parameters: list[cp.Parameter]
    variable: cp.Variable


@dataclass
class Case:
    """One benchmark case: a family at one size and batch size.

    Attributes:
        name: Identifier, e.g. ``"a-cond1e6-act60-B64-n100"``.
        family: ``"a"`` to ``"f"``.
        description: One line for the tables (sizes, what is batched).
        distribution: How each call's parameter values are drawn (for the docs).
        batch: B, or None for one unbatched instance per call.
        build: Builds the CVXPY problem (timed as part of construction).
        sample: One call's parameter values from a generator: one array per parameter,
            shaped ``(B, *shape)`` (or ``shape`` when ``batch`` is None).
        qp: The QP in torch, or None where the case has no raw-QP form: parameter
            tensors (as passed to a layer) -> blocks ``P, q, A, b, G, h`` (each with a
            leading batch dimension or shared; ``A, b`` may have zero rows).
        qp_output: The user's variable from the QP's (or the cone program's) ``x``
            ``(B, n)``: ``(B, *shape)``.
        conic: The cone program in torch, for cases with second-order cones (which
            have no raw-QP form): parameter tensors -> blocks ``P, q, A, b, G, h`` of
            ``min 1/2 x'Px + q'x s.t. Ax = b, h - Gx in K`` with the rows of G and h
            in the order of ``cones``.
        cones: The cone K of ``conic``: ``("l", m)`` (m nonnegative rows) or
            ``("q", d)`` (one second-order cone of dimension d, its head first), in
            row order.
        timed_calls: Calls timed after the one warm-up call.
        calls_per_step: Calls per training step (family e: 100), for the per-step time.
        ref_calls: How many calls get a reference (spread evenly over all calls).
        ref_instances: How many instances of each of those calls get a reference.
        least_squares_reference: Solve the KKT system in the least-squares sense (the
            active rows may be dependent: an LP vertex, a redundant flow row); exact
            for the gradients w.r.t. q and P, the only blocks such cases' parameters
            enter.
        seed: Seeds the constants and the draws.
    """

    name: str
    family: str
    description: str
    distribution: str
    batch: int | None
    build: Callable[[], LayerProblem]
    sample: Callable[[np.random.Generator], list[np.ndarray]]
    qp: Callable[[list[torch.Tensor]], Blocks] | None = None
    qp_output: Callable[[torch.Tensor], torch.Tensor] | None = None
    conic: Callable[[list[torch.Tensor]], Blocks] | None = None
    cones: tuple[tuple[str, int], ...] = ()
    timed_calls: int = 10
    calls_per_step: int = 1
    ref_calls: int = 11
    ref_instances: int = 4
    least_squares_reference: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def calls(self) -> int:
        """All calls: one warm-up, then the timed ones."""
        return 1 + self.timed_calls


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _rows(batch: int | None) -> int:
    return batch or 1


def _squeeze(batch: int | None, values: list[np.ndarray]) -> list[np.ndarray]:
    """Drop the leading batch dimension of one call's draws when unbatched."""
    return values if batch else [v[0] for v in values]


# ----------------------------------------------------------------------------- (a)


def _dense_case(cond: float, active: float, batch: int | None, n: int, seed: int) -> Case:
    """Dense QP ``min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h`` with P, A, G shared.

    ``P = U diag(e) U'`` with eigenvalues ``e`` log-spaced from ``cond^-1/2`` to
    ``cond^1/2`` (condition number ``cond``), ``U`` a random orthogonal matrix; A
    (n/4 x n) and G (n x n) standard normal over sqrt(n). Every instance is drawn from a
    certificate: a solution ``x* ~ N(0, I)``, a random active set of
    ``round(active * n)`` inequality rows with multipliers ``U(0.1, 1)``, equality
    multipliers ``N(0, 1)`` and slacks ``U(0.1, 1)`` on the other rows; then
    ``b = A x*``, ``h = G x* + slack`` and ``q = -(P x* + A'lam + G'nu)``. So the
    active fraction is exact and every instance is strictly complementary with LICQ
    (n/4 + active * n <= n rows are active).
    """
    rng = np.random.default_rng(seed)
    n_eq, n_ineq = n // 4, n
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.logspace(-0.5 * math.log10(cond), 0.5 * math.log10(cond), n)
    P = (U * eig) @ U.T
    P = 0.5 * (P + P.T)
    A = rng.standard_normal((n_eq, n)) / math.sqrt(n)
    G = rng.standard_normal((n_ineq, n)) / math.sqrt(n)
    n_active = round(active * n_ineq)

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        B = _rows(batch)
        x = r.standard_normal((B, n))
        lam = r.standard_normal((B, n_eq))
        nu = np.zeros((B, n_ineq))
        slack = r.uniform(0.1, 1.0, (B, n_ineq))
        for i in range(B):
            rows = r.choice(n_ineq, n_active, replace=False)
            nu[i, rows] = r.uniform(0.1, 1.0, n_active)
            slack[i, rows] = 0.0
        q = -(x @ P + lam @ A + nu @ G)
        return _squeeze(batch, [q, x @ A.T, x @ G.T + slack])

    def build() -> LayerProblem:
        x = cp.Variable(n, name="x")
        q, b, h = cp.Parameter(n, name="q"), cp.Parameter(n_eq, name="b"), cp.Parameter(n_ineq)
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x
        problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
        return LayerProblem(problem, [q, b, h], x)

    tensors = {"P": _t(P), "A": _t(A), "G": _t(G)}

    def qp(params: list[torch.Tensor]) -> Blocks:
        q, b, h = params
        return {**tensors, "q": q, "b": b, "h": h}

    label = f"cond{cond:.0e}".replace("+0", "").replace("+", "")
    b_text = f"B{batch}" if batch else "B1"
    return Case(
        name=f"a-{label}-act{round(100 * active)}-{b_text}-n{n}",
        family="a",
        description=f"n={n}, n_eq={n_eq}, n_ineq={n_ineq}, B={batch or 1}; q, b, h batched",
        distribution=(
            f"cond(P) = {cond:g}, {round(100 * active)}% of the inequalities active; "
            "q, b, h from a random certificate (x* ~ N(0, I), multipliers U(0.1, 1), "
            "slacks U(0.1, 1))"
        ),
        batch=batch,
        build=build,
        sample=sample,
        qp=qp,
        qp_output=lambda x: x,
        seed=seed,
    )


# ----------------------------------------------------------------------------- (b)


def _regularizer(gamma: float, x: cp.Variable) -> cp.Expression | float:
    return gamma / 2 * cp.sum_squares(x) if gamma else 0.0


def _gamma_label(gamma: float) -> str:
    return "lp" if gamma == 0 else f"g{gamma:g}"


def _shortest_path_case(k: int, gamma: float, batch: int, seed: int) -> Case:
    """``min c'x + gamma/2 ||x||^2 s.t. N x = s, 0 <= x <= 1`` on a k x k grid.

    The CVXPY form keeps every conservation row, as a user writes it; the raw QP drops
    the last (redundant) one.
    """
    from lp_layers import grid_shortest_path  # tests/, on the path by _common

    N, s = grid_shortest_path(k)
    n_edges = N.shape[1]

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        return [np.exp(0.5 * r.standard_normal((batch, n_edges)))]

    def build() -> LayerProblem:
        x = cp.Variable(n_edges, name="flow")
        c = cp.Parameter(n_edges, name="cost")
        objective = c @ x + _regularizer(gamma, x)
        problem = cp.Problem(cp.Minimize(objective), [N @ x == s, x >= 0, x <= 1])
        return LayerProblem(problem, [c], x)

    eye = torch.eye(n_edges, dtype=torch.float64)
    fixed = {
        "P": gamma * eye,
        "A": _t(N[:-1]),
        "b": _t(s[:-1]),
        "G": torch.cat([eye, -eye]),
        "h": torch.cat([torch.ones(n_edges), torch.zeros(n_edges)]).double(),
    }
    kind = "pure LP" if gamma == 0 else f"gamma = {gamma:g}"
    return Case(
        name=f"b-path{k}-{_gamma_label(gamma)}-B{batch}",
        family="b",
        description=f"shortest path, {k}x{k} grid ({n_edges} edges), {kind}, B={batch}; costs batched",
        distribution="edge costs c = exp(z / 2), z ~ N(0, I) (log-normal, positive)",
        batch=batch,
        build=build,
        sample=sample,
        qp=lambda params: {**fixed, "q": params[0]},
        qp_output=lambda x: x,
        least_squares_reference=True,
        seed=seed,
    )


def _knapsack_case(n: int, gamma: float, batch: int, seed: int) -> Case:
    """Knapsack relaxation ``max v'x - gamma/2 ||x||^2 s.t. a'x <= C, 0 <= x <= 1``.

    Item weights ``a ~ U(0.5, 1.5)`` are fixed and the capacity is 30% of their sum;
    the values v are the batched parameter.
    """
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 1.5, n)
    capacity = 0.3 * a.sum()

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        return [r.uniform(0.0, 1.0, (batch, n))]

    def build() -> LayerProblem:
        x = cp.Variable(n, name="take")
        v = cp.Parameter(n, name="value")
        objective = v @ x - _regularizer(gamma, x)
        problem = cp.Problem(cp.Maximize(objective), [a @ x <= capacity, x >= 0, x <= 1])
        return LayerProblem(problem, [v], x)

    eye = torch.eye(n, dtype=torch.float64)
    fixed = {
        "P": gamma * eye,
        "A": torch.zeros(0, n, dtype=torch.float64),
        "b": torch.zeros(0, dtype=torch.float64),
        "G": torch.cat([_t(a)[None], eye, -eye]),
        "h": torch.cat([torch.tensor([capacity]), torch.ones(n), torch.zeros(n)]).double(),
    }
    kind = "pure LP" if gamma == 0 else f"gamma = {gamma:g}"
    return Case(
        name=f"b-knapsack{n}-{_gamma_label(gamma)}-B{batch}",
        family="b",
        description=f"knapsack relaxation, {n} items, {kind}, B={batch}; values batched",
        distribution="item values v ~ U(0, 1); weights U(0.5, 1.5) fixed, capacity 30% of their sum",
        batch=batch,
        build=build,
        sample=sample,
        qp=lambda params: {**fixed, "q": -params[0]},
        qp_output=lambda x: x,
        least_squares_reference=True,
        seed=seed,
    )


# ----------------------------------------------------------------------------- (c)


def _relu_case(D: int, batch: int, seed: int) -> Case:
    """The ReLU/projection layer of cvxpylayers' examples:
    ``min ||z - W~ x - b||^2 s.t. z >= 0, W~ == W`` with x, W, b batched parameters
    (W~ is a variable, so that the product with the parameter x stays DPP)."""

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        x = r.standard_normal((batch, D))
        W = r.standard_normal((batch, D, D)) / math.sqrt(D)
        b = 0.1 * r.standard_normal((batch, D))
        return [x, W, b]

    def build() -> LayerProblem:
        z = cp.Variable(D, name="z")
        W_var = cp.Variable((D, D), name="W_tilde")
        x, W, b = cp.Parameter(D, name="x"), cp.Parameter((D, D), name="W"), cp.Parameter(D)
        objective = cp.sum_squares(z - W_var @ x - b)
        problem = cp.Problem(cp.Minimize(objective), [z >= 0, W_var == W])
        return LayerProblem(problem, [x, W, b], z)

    eye = torch.eye(D, dtype=torch.float64)
    fixed = {
        "P": 2 * eye,
        "A": torch.zeros(0, D, dtype=torch.float64),
        "b": torch.zeros(0, dtype=torch.float64),
        "G": -eye,
        "h": torch.zeros(D, dtype=torch.float64),
    }

    def qp(params: list[torch.Tensor]) -> Blocks:
        x, W, b = params
        return {**fixed, "q": -2 * ((W @ x.unsqueeze(-1)).squeeze(-1) + b)}

    return Case(
        name=f"c-relu{D}-B{batch}",
        family="c",
        description=f"ReLU layer, D={D} (W~ == W: {D * D + D} variables), B={batch}; x, W, b batched",
        distribution="x ~ N(0, I), W ~ N(0, I/D), b ~ N(0, 0.01 I)",
        batch=batch,
        build=build,
        sample=sample,
        qp=qp,
        qp_output=lambda z: z,
        seed=seed,
    )


U_MAX, X_MAX = 0.5, 3.0  # the input and state bounds of tests/sparse_families.mpc


def _mpc_sample(n_x: int, n_u: int, batch: int | None, dynamics: bool):
    """Draws as in ``tests/sparse_families.mpc``: x_init ~ U(-2, 2), and with parametric
    dynamics ``A = I + 0.1 N(0, I/n_x)``, ``B = N(0, I/n_x)`` per instance and x_init ~
    U(-1, 1): from U(-2, 2), 8 of 256 instances of the horizon-10 case were infeasible
    (Clarabel), states leaving the bounds that the drawn dynamics could not steer back."""

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        rows = _rows(batch)
        reach = 1.0 if dynamics else 2.0
        out = [r.uniform(-reach, reach, (rows, n_x))]
        if dynamics:
            A = np.eye(n_x) + 0.1 * r.standard_normal((rows, n_x, n_x)) / math.sqrt(n_x)
            B = r.standard_normal((rows, n_x, n_u)) / math.sqrt(n_x)
            out += [A, B]
        return _squeeze(batch, out)

    return sample


def _mpc_qp(horizon: int, n_x: int, n_u: int, fixed_dynamics=None):
    """MPC's QP in torch: ``z = (x_0, ..., x_T, u_0, ..., u_{T-1})``, the objective
    ``sum ||x_t||^2 + ||u_t||^2``, ``x_0 = x_init``, ``x_{t+1} = A x_t + B u_t``,
    ``|u| <= U_MAX``, ``|x_t| <= X_MAX`` for t >= 1."""
    nX, nU = n_x * (horizon + 1), n_u * horizon
    n = nX + nU
    eye_n = torch.eye(n, dtype=torch.float64)
    base = torch.zeros(nX, n, dtype=torch.float64)
    base[:, :nX] = torch.eye(nX, dtype=torch.float64)
    select_u = eye_n[nX:]
    select_x = eye_n[n_x:nX]
    G = torch.cat([select_u, -select_u, select_x, -select_x])
    h = torch.cat([torch.full((2 * nU,), U_MAX), torch.full((2 * (nX - n_x),), X_MAX)]).double()

    def qp(params: list[torch.Tensor]) -> Blocks:
        x_init = params[0]
        A, B = params[1:] if fixed_dynamics is None else fixed_dynamics
        lead = A.shape[:-2]
        Aeq = base.expand(*lead, nX, n).clone()
        for t in range(horizon):
            rows = slice(n_x * (t + 1), n_x * (t + 2))
            Aeq[..., rows, n_x * t : n_x * (t + 1)] = -A
            Aeq[..., rows, nX + n_u * t : nX + n_u * (t + 1)] = -B
        zeros = torch.zeros(*x_init.shape[:-1], nX - n_x, dtype=torch.float64)
        return {
            "P": 2 * eye_n,
            "q": torch.zeros(n, dtype=torch.float64),
            "A": Aeq,
            "b": torch.cat([x_init, zeros], dim=-1),
            "G": G,
            "h": h,
        }

    def output(z: torch.Tensor) -> torch.Tensor:
        # the CVXPY variable u is (n_u, T): column t is u_t
        return z[..., nX:].reshape(*z.shape[:-1], horizon, n_u).transpose(-1, -2)

    return qp, output


def _mpc_case(horizon: int, n_x: int, n_u: int, batch: int, seed: int) -> Case:
    """MPC with parametric dynamics (``tests/sparse_families.mpc``): x_init, A, B batched."""
    from sparse_families import mpc

    def build() -> LayerProblem:
        fam = mpc(horizon, n_x, np.random.default_rng(seed), n_u=n_u, dynamics_parameters=True)
        return LayerProblem(fam.problem, fam.parameters, fam.variables[0])

    qp, output = _mpc_qp(horizon, n_x, n_u)
    return Case(
        name=f"c-mpc-T{horizon}-nx{n_x}-B{batch}",
        family="c",
        description=f"MPC, horizon {horizon}, {n_x} states, {n_u} inputs, B={batch}; x_init, A, B batched",
        distribution="x_init ~ U(-1, 1), A = I + 0.1 N(0, I/n_x), B = N(0, I/n_x)",
        batch=batch,
        build=build,
        sample=_mpc_sample(n_x, n_u, batch, dynamics=True),
        qp=qp,
        qp_output=output,
        seed=seed,
    )


# ----------------------------------------------------------------------------- (d)

GAMMA, KAPPA, BETA = 1.0, 0.01, 0.005  # risk aversion, transaction and shorting costs


def _portfolio_case(N: int, k: int, batch: int, seed: int) -> Case:
    """``max mu'w - gamma ||F'w||^2 - kappa ||w - w0||_1 - beta sum(neg(w))`` s.t.
    ``sum(w) = 1, -0.5 <= w <= 1``, with the holdings w0, the covariance factor F and
    the returns mu batched parameters (the layer of issue 21's training run)."""
    F_base = 0.3 * np.random.default_rng(seed).standard_normal((N, k))

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        w0 = r.dirichlet(np.ones(N), size=batch)
        F = F_base + 0.1 * r.standard_normal((batch, N, k))
        mu = 0.05 * r.standard_normal((batch, N))
        return [w0, F, mu]

    def build() -> LayerProblem:
        w = cp.Variable(N, name="w")
        w0, F, mu = cp.Parameter(N, name="w0"), cp.Parameter((N, k), name="F"), cp.Parameter(N)
        objective = (
            mu @ w
            - GAMMA * cp.sum_squares(F.T @ w)
            - KAPPA * cp.sum(cp.abs(w - w0))
            - BETA * cp.sum(cp.neg(w))
        )
        problem = cp.Problem(cp.Maximize(objective), [cp.sum(w) == 1, w >= -0.5, w <= 1])
        return LayerProblem(problem, [w0, F, mu], w)

    eye = torch.eye(N, dtype=torch.float64)
    zero = torch.zeros(N, N, dtype=torch.float64)
    ones, zeros = torch.ones(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    # rows over (w, t, s): w - t <= w0, -w - t <= -w0, -w - s <= 0, -s <= 0, w <= 1, -w <= 0.5
    G = torch.cat(
        [
            torch.cat([eye, -eye, zero], 1),
            torch.cat([-eye, -eye, zero], 1),
            torch.cat([-eye, zero, -eye], 1),
            torch.cat([zero, zero, -eye], 1),
            torch.cat([eye, zero, zero], 1),
            torch.cat([-eye, zero, zero], 1),
        ]
    )
    A = torch.cat([ones, zeros, zeros])[None]

    def qp(params: list[torch.Tensor]) -> Blocks:
        w0, F, mu = params
        risk = 2 * GAMMA * F @ F.transpose(-1, -2)
        P = torch.zeros(*risk.shape[:-2], 3 * N, 3 * N, dtype=torch.float64)
        P[..., :N, :N] = risk
        lead = mu.shape[:-1]
        q = torch.cat([-mu, (KAPPA * ones).expand(*lead, N), (BETA * ones).expand(*lead, N)], -1)
        z = torch.zeros_like(w0)
        h = torch.cat([w0, -w0, z, z, (ones + z), (0.5 * ones + z)], -1)
        return {"P": P, "q": q, "A": A, "b": torch.ones(1, dtype=torch.float64), "G": G, "h": h}

    return Case(
        name=f"d-portfolio{N}-B{batch}",
        family="d",
        description=f"Markowitz, {N} assets, {k} factors, abs + neg costs, B={batch}; w0, F, mu batched",
        distribution=(
            "w0 ~ Dirichlet(1), F = F0 + N(0, 0.01) with F0 ~ N(0, 0.09) fixed, mu ~ N(0, 0.0025)"
        ),
        batch=batch,
        build=build,
        sample=sample,
        qp=qp,
        qp_output=lambda x: x[..., :N],
        seed=seed,
    )


# ----------------------------------------------------------------------------- (e)


def _tiny_control_case(steps: int, seed: int) -> Case:
    """One-step control of a 4-state, 2-input system (``tests/sparse_families.mpc`` with
    horizon 1: 10 variables), x_init the parameter, one instance per call."""
    from sparse_families import mpc

    n_x, n_u, horizon = 4, 2, 1

    def build() -> LayerProblem:
        fam = mpc(horizon, n_x, np.random.default_rng(seed), n_u=n_u)
        return LayerProblem(fam.problem, fam.parameters, fam.variables[0])

    # the dynamics mpc() draws first from its generator, so the raw QP matches build()
    r = np.random.default_rng(seed)
    A = np.eye(n_x) + 0.1 * r.standard_normal((n_x, n_x)) / np.sqrt(n_x)
    B = r.standard_normal((n_x, n_u)) / np.sqrt(n_x)
    qp, output = _mpc_qp(horizon, n_x, n_u, fixed_dynamics=(_t(A), _t(B)))
    return Case(
        name="e-control4",
        family="e",
        description="one-step control, 4 states, 2 inputs (10 variables), B=1; x_init",
        distribution="x_init ~ U(-2, 2)",
        batch=None,
        build=build,
        sample=_mpc_sample(n_x, n_u, None, dynamics=False),
        qp=qp,
        qp_output=output,
        timed_calls=100 * steps,
        calls_per_step=100,
        ref_calls=50,
        ref_instances=1,
        seed=seed,
    )


def _tiny_simplex_case(n: int, steps: int, seed: int) -> Case:
    """Euclidean projection onto the simplex (sparsemax), n = 8, one instance per call."""

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        return [r.standard_normal(n)]

    def build() -> LayerProblem:
        x, y = cp.Variable(n, name="x"), cp.Parameter(n, name="y")
        problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
        return LayerProblem(problem, [y], x)

    eye = torch.eye(n, dtype=torch.float64)
    fixed = {
        "P": 2 * eye,
        "A": torch.ones(1, n, dtype=torch.float64),
        "b": torch.ones(1, dtype=torch.float64),
        "G": -eye,
        "h": torch.zeros(n, dtype=torch.float64),
    }
    return Case(
        name=f"e-simplex{n}",
        family="e",
        description=f"projection onto the simplex, n={n}, B=1; y",
        distribution="y ~ N(0, I)",
        batch=None,
        build=build,
        sample=sample,
        qp=lambda params: {**fixed, "q": -2 * params[0]},
        qp_output=lambda x: x,
        timed_calls=100 * steps,
        calls_per_step=100,
        ref_calls=50,
        ref_instances=1,
        seed=seed,
    )


# ----------------------------------------------------------------------------- (f)


def _single_dense_case(n: int, n_eq: int, n_ineq: int, seed: int, ref_calls: int) -> Case:
    """Workload 1 of ``workloads.py`` (its P, A, G), with new q, b, h every call."""

    @functools.cache
    def workload():  # built on first use: P alone is 200 MB at n = 5000
        from workloads import single_instance

        return single_instance(n, n_eq, n_ineq, seed)

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        from workloads import feasible_rhs

        b, h = feasible_rhs(r, workload().data["A"], workload().data["G"])
        return [r.standard_normal(n), b, h]

    def build() -> LayerProblem:
        from peers import build_cvxpy_problem

        problem, params, x = build_cvxpy_problem(workload())
        return LayerProblem(problem, params, x)

    def qp(params: list[torch.Tensor]) -> Blocks:
        data = workload().data
        fixed = {k: _t(data[k]) for k in ("P", "A", "G")}
        return {**fixed, "q": params[0], "b": params[1], "h": params[2]}

    return Case(
        name=f"f-w1-{n}",
        family="f",
        description=f"single dense instance, n={n}, n_eq={n_eq}, n_ineq={n_ineq}; q, b, h",
        distribution="workload 1's P, A, G; q ~ N(0, I), b ~ N(0, I), h as workloads.feasible_rhs",
        batch=None,
        build=build,
        sample=sample,
        qp=qp,
        qp_output=lambda x: x,
        ref_calls=ref_calls,
        ref_instances=1,
        seed=seed,
    )


def _sparse_case(kind: str, size: dict, label: str, seed: int) -> Case:
    """A large sparse problem of ``tests/sparse_families.py``; every call redraws its
    parameters around the family's own instance (no raw-QP form: qpth and QPLayer
    would need it dense)."""

    def family():
        import sparse_families

        return getattr(sparse_families, kind)(rng=np.random.default_rng(seed), **size)

    def build() -> LayerProblem:
        fam = family()
        return LayerProblem(fam.problem, fam.parameters, fam.variables[0])

    base = functools.cache(lambda: family().values)
    draws = {
        "isotonic": "y = linspace(0, 3) + N(0, I), as the family draws it",
        "lasso": "y = y0 + N(0, 0.01 var(y0)) around the family's targets y0; lam = lam0 U(0.8, 1.2)",
        "portfolio": "mu ~ N(0, 9/n^2 I), as the family draws it",
        "mpc": "x_init ~ U(-2, 2), as the family draws it",
    }

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        values = base()
        if kind == "isotonic":
            size_ = values[0].size
            return [np.linspace(0.0, 3.0, size_) + r.standard_normal(size_)]
        if kind == "lasso":
            y, lam = values
            return [y + 0.1 * y.std() * r.standard_normal(y.size), lam * r.uniform(0.8, 1.2)]
        if kind == "portfolio":
            size_ = values[0].size
            return [r.standard_normal(size_) * 3.0 / size_]
        return [r.uniform(-2.0, 2.0, values[0].size)]

    return Case(
        name=f"f-{kind}-{label}",
        family="f",
        description=f"large sparse {kind} ({', '.join(f'{k}={v}' for k, v in size.items())}), B=1",
        distribution=draws[kind],
        batch=None,
        build=build,
        sample=sample,
        ref_calls=2,
        ref_instances=1,
        seed=seed,
    )


# ----------------------------------------------------------------------------- (g)


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64)


def _no_equalities(n: int) -> Blocks:
    return {"A": _zeros(0, n), "b": _zeros(0)}


def _soc_rows(head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """The rows ``(head, tail)`` of one cone per instance, with leading dimensions kept:
    ``head`` ``(..., 1 or k, n)`` on top of ``tail``."""
    return torch.cat([head, tail], dim=-2)


def _norm_ball_case(m: int, n: int, batch: int, seed: int) -> Case:
    """Least squares in a ball (a trust-region step): ``min ||A x - b||^2 s.t.
    ||x||_2 <= r``, A fixed (m x n, N(0, 1/m)), b batched. ``b = A x0 + noise`` with
    ``x0 ~ N(0, I)``, and ``r = 0.8 sqrt(n)``, so that the ball binds on most instances
    (``||x0|| ~ sqrt(n)``) but not on all."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) / math.sqrt(m)
    radius = 0.8 * math.sqrt(n)

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        x0 = r.standard_normal((batch, n))
        return [x0 @ A.T + 0.1 * r.standard_normal((batch, m))]

    def build() -> LayerProblem:
        x, b = cp.Variable(n, name="x"), cp.Parameter(m, name="b")
        problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [cp.norm(x, 2) <= radius])
        return LayerProblem(problem, [b], x)

    A_t = _t(A)
    fixed = {
        "P": 2 * A_t.T @ A_t,
        **_no_equalities(n),
        "G": _soc_rows(_zeros(1, n), -torch.eye(n, dtype=torch.float64)),
        "h": torch.cat([torch.tensor([radius], dtype=torch.float64), _zeros(n)]),
    }
    return Case(
        name=f"g-normball-n{n}-B{batch}",
        family="g",
        description=f"least squares in a ball, A {m}x{n} fixed, ||x||_2 <= r, B={batch}; b batched",
        distribution="b = A x0 + N(0, 0.01 I), x0 ~ N(0, I); r = 0.8 sqrt(n)",
        batch=batch,
        build=build,
        sample=sample,
        conic=lambda params: {**fixed, "q": -2 * params[0] @ A_t},
        cones=(("q", n + 1),),
        qp_output=lambda x: x,
        seed=seed,
    )


def _robust_lp_case(n: int, m: int, k: int, batch: int, seed: int) -> Case:
    """A robust LP: ``min c'x s.t. a_i'x + ||P_i x||_2 <= b_i (i < m), -1 <= x <= 1``,
    each row uncertain in the ellipsoid ``{a_i + P_i'u : ||u|| <= 1}`` (``a_i ~ N(0,
    I/n)``, ``P_i`` k x n ~ N(0, 0.09/n) fixed); the costs c and the right-hand sides b
    batched. The box keeps it bounded; the solution is on the cones, the box, or both."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, n)) / math.sqrt(n)
    P = 0.3 * rng.standard_normal((m, k, n)) / math.sqrt(n)

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        return [r.standard_normal((batch, n)), r.uniform(0.5, 1.5, (batch, m))]

    def build() -> LayerProblem:
        x = cp.Variable(n, name="x")
        c, b = cp.Parameter(n, name="c"), cp.Parameter(m, name="b")
        robust = [a[i] @ x + cp.norm(P[i] @ x, 2) <= b[i] for i in range(m)]
        problem = cp.Problem(cp.Minimize(c @ x), [*robust, x >= -1, x <= 1])
        return LayerProblem(problem, [c, b], x)

    eye = torch.eye(n, dtype=torch.float64)
    # rows: the box (2n), then cone i: (b_i - a_i'x, P_i x)
    G = torch.cat([eye, -eye, _soc_rows(_t(a)[:, None], -_t(P)).reshape(m * (k + 1), n)])
    fixed = {"P": _zeros(n, n), **_no_equalities(n), "G": G}

    def conic(params: list[torch.Tensor]) -> Blocks:
        c, b = params
        heads = torch.cat([b.unsqueeze(-1), _zeros(*b.shape, k)], -1).flatten(-2)
        box = torch.ones(*b.shape[:-1], 2 * n, dtype=torch.float64)
        return {**fixed, "q": c, "h": torch.cat([box, heads], -1)}

    return Case(
        name=f"g-robustlp-n{n}-m{m}-B{batch}",
        family="g",
        description=(
            f"robust LP, n={n}, {m} ellipsoidal rows (P_i {k}x{n}), box, B={batch}; c, b batched"
        ),
        distribution="c ~ N(0, I), b ~ U(0.5, 1.5); a_i ~ N(0, I/n), P_i ~ N(0, 0.09/n) fixed",
        batch=batch,
        build=build,
        sample=sample,
        conic=conic,
        cones=(("l", 2 * n), *[("q", k + 1)] * m),
        qp_output=lambda x: x,
        seed=seed,
    )


def _norm_regression_case(m: int, n: int, batch: int, seed: int) -> Case:
    """Regression in the 2-norm (not squared) with monotone coefficients: ``min
    ||A x - b||_2 s.t. x[i] <= x[i+1]``, A fixed (m x n, N(0, 1/n)), b batched. ``b =
    A x0 + noise`` with x0 an increasing staircase (half its steps zero), so that some
    monotonicity constraints are active. The cone program has an epigraph variable t."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) / math.sqrt(n)

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        steps = np.maximum(r.standard_normal((batch, n)), 0.0)
        x0 = np.cumsum(steps, axis=1) / math.sqrt(n)
        return [x0 @ A.T + 0.3 * r.standard_normal((batch, m))]

    def build() -> LayerProblem:
        x, b = cp.Variable(n, name="x"), cp.Parameter(m, name="b")
        objective = cp.norm(A @ x - b, 2)
        problem = cp.Problem(cp.Minimize(objective), [x[:-1] <= x[1:]])
        return LayerProblem(problem, [b], x)

    # variables (x, t); rows: x_i - x_{i+1} <= 0, then the cone (t, A x - b)
    eye = torch.eye(n, dtype=torch.float64)
    diff = eye[:-1] - eye[1:]
    head = torch.cat([_zeros(1, n), -torch.ones(1, 1, dtype=torch.float64)], 1)
    tail = torch.cat([-_t(A), _zeros(m, 1)], 1)
    fixed = {
        "P": _zeros(n + 1, n + 1),
        "q": torch.cat([_zeros(n), torch.ones(1, dtype=torch.float64)]),
        **_no_equalities(n + 1),
        "G": torch.cat([torch.cat([diff, _zeros(n - 1, 1)], 1), head, tail]),
    }

    def conic(params: list[torch.Tensor]) -> Blocks:
        (b,) = params
        return {**fixed, "h": torch.cat([_zeros(*b.shape[:-1], n), -b], -1)}

    return Case(
        name=f"g-normreg-n{n}-B{batch}",
        family="g",
        description=f"||A x - b||_2 with x[i] <= x[i+1], A {m}x{n} fixed, B={batch}; b batched",
        distribution=(
            "b = A x0 + N(0, 0.09 I), x0 = cumsum(max(z, 0)) / sqrt(n), z ~ N(0, I); "
            "A ~ N(0, 1/n) fixed"
        ),
        batch=batch,
        build=build,
        sample=sample,
        conic=conic,
        cones=(("l", n - 1), ("q", m + 1)),
        qp_output=lambda v: v[..., :n],
        seed=seed,
    )


RISK_GAMMA, SIGMA_MAX = 0.1, 0.15  # the risk-limited portfolio's aversion and limit


def _risk_limited_portfolio_case(N: int, k: int, batch: int, seed: int) -> Case:
    """``max mu'w - gamma ||F'w||^2 s.t. ||F'w||_2 <= sigma_max, sum(w) = 1, w >= 0``
    with the factor matrix F and the returns mu batched; a small risk aversion (0.1),
    so that the risk limit (0.15) binds on most instances."""
    F_base = 0.3 * np.random.default_rng(seed).standard_normal((N, k))

    def sample(r: np.random.Generator) -> list[np.ndarray]:
        F = F_base + 0.1 * r.standard_normal((batch, N, k))
        return [F, 0.05 * r.standard_normal((batch, N))]

    def build() -> LayerProblem:
        w = cp.Variable(N, name="w")
        F, mu = cp.Parameter((N, k), name="F"), cp.Parameter(N, name="mu")
        objective = mu @ w - RISK_GAMMA * cp.sum_squares(F.T @ w)
        constraints = [cp.norm(F.T @ w, 2) <= SIGMA_MAX, cp.sum(w) == 1, w >= 0]
        return LayerProblem(cp.Problem(cp.Maximize(objective), constraints), [F, mu], w)

    eye = torch.eye(N, dtype=torch.float64)
    head = torch.cat([_zeros(N), torch.tensor([SIGMA_MAX], dtype=torch.float64), _zeros(k)])

    def conic(params: list[torch.Tensor]) -> Blocks:
        F, mu = params
        Ft = F.transpose(-1, -2)
        cone = _soc_rows(_zeros(*F.shape[:-2], 1, N), -Ft)
        return {
            "P": 2 * RISK_GAMMA * F @ Ft,
            "q": -mu,
            "A": torch.ones(1, N, dtype=torch.float64),
            "b": torch.ones(1, dtype=torch.float64),
            # rows: -w <= 0, then the cone (sigma_max, F'w)
            "G": torch.cat([-eye.expand(*F.shape[:-2], N, N), cone], -2),
            "h": head,
        }

    return Case(
        name=f"g-risklimit{N}-B{batch}",
        family="g",
        description=(
            f"portfolio with ||F'w||_2 <= {SIGMA_MAX:g}, {N} assets, {k} factors, long only, "
            f"B={batch}; F, mu batched"
        ),
        distribution="F = F0 + N(0, 0.01) with F0 ~ N(0, 0.09) fixed, mu ~ N(0, 0.0025)",
        batch=batch,
        build=build,
        sample=sample,
        conic=conic,
        cones=(("l", N), ("q", k + 1)),
        qp_output=lambda x: x,
        seed=seed,
    )


def _mpc_norm_case(horizon: int, n_x: int, n_u: int, batch: int, seed: int) -> Case:
    """MPC with a norm bound on the input: ``min sum ||x_t||^2 + ||u_t||^2 s.t.
    x_{t+1} = A x_t + B u_t, x_0 = x_init, ||u_t||_2 <= 1``; A, B fixed (drawn as in
    ``tests/sparse_families.mpc``), x_init batched."""
    rng = np.random.default_rng(seed)
    A = np.eye(n_x) + 0.1 * rng.standard_normal((n_x, n_x)) / math.sqrt(n_x)
    B = rng.standard_normal((n_x, n_u)) / math.sqrt(n_x)

    def build() -> LayerProblem:
        x = cp.Variable((n_x, horizon + 1), name="x")
        u = cp.Variable((n_u, horizon), name="u")
        x_init = cp.Parameter(n_x, name="x_init")
        constraints = [
            x[:, 0] == x_init,
            x[:, 1:] == A @ x[:, :-1] + B @ u,
            cp.norm(u, 2, axis=0) <= 1,
        ]
        objective = cp.sum_squares(x) + cp.sum_squares(u)
        return LayerProblem(cp.Problem(cp.Minimize(objective), constraints), [x_init], u)

    # variables (x_0, ..., x_T, u_0, ..., u_{T-1}); cone t: (1, u_t)
    nX, nU = n_x * (horizon + 1), n_u * horizon
    n = nX + nU
    Aeq = _zeros(nX, n)
    Aeq[:, :nX] = torch.eye(nX, dtype=torch.float64)
    for t in range(horizon):
        rows = slice(n_x * (t + 1), n_x * (t + 2))
        Aeq[rows, n_x * t : n_x * (t + 1)] = -_t(A)
        Aeq[rows, nX + n_u * t : nX + n_u * (t + 1)] = -_t(B)
    select_u = torch.eye(n, dtype=torch.float64)[nX:].reshape(horizon, n_u, n)
    G = _soc_rows(_zeros(horizon, 1, n), -select_u).reshape(horizon * (n_u + 1), n)
    h = torch.cat([torch.ones(horizon, 1, dtype=torch.float64), _zeros(horizon, n_u)], 1).flatten()
    fixed = {"P": 2 * torch.eye(n, dtype=torch.float64), "q": _zeros(n), "A": Aeq, "G": G, "h": h}

    def conic(params: list[torch.Tensor]) -> Blocks:
        (x_init,) = params
        return {**fixed, "b": torch.cat([x_init, _zeros(*x_init.shape[:-1], nX - n_x)], -1)}

    def output(z: torch.Tensor) -> torch.Tensor:
        # the CVXPY variable u is (n_u, T): column t is u_t
        return z[..., nX:].reshape(*z.shape[:-1], horizon, n_u).transpose(-1, -2)

    return Case(
        name=f"g-mpc-T{horizon}-nx{n_x}-B{batch}",
        family="g",
        description=(
            f"MPC, horizon {horizon}, {n_x} states, {n_u} inputs, ||u_t||_2 <= 1, B={batch}; "
            "x_init batched"
        ),
        distribution="x_init ~ U(-2, 2); A = I + 0.1 N(0, I/n_x), B = N(0, I/n_x) fixed",
        batch=batch,
        build=build,
        sample=_mpc_sample(n_x, n_u, batch, dynamics=False),
        conic=conic,
        cones=(("q", n_u + 1),) * horizon,
        qp_output=output,
        seed=seed,
    )


# ----------------------------------------------------------------------------- cases


def all_cases(quick: bool) -> list[Case]:
    """Every case, cheapest first within each family; ``quick``: validation sizes."""
    cases: list[Case] = []
    dists = [(1e1, 0.1), (1e1, 0.6), (1e6, 0.1), (1e6, 0.6)]
    sizes = [20] if quick else [100, 500]
    batches = [None, 8] if quick else [None, 64, 256]
    seed = 1000
    for n in sizes:
        for batch in batches:
            for cond, active in dists:
                seed += 1
                cases.append(_dense_case(cond, active, batch, n, seed))
    B = 8 if quick else 64
    for k in [4] if quick else [5, 10, 20]:
        for gamma in (0.0, 0.01, 0.1):
            seed += 1
            cases.append(_shortest_path_case(k, gamma, B, seed))
    for gamma in (0.0, 0.01, 0.1):
        seed += 1
        cases.append(_knapsack_case(20 if quick else 100, gamma, B, seed))
    cases.append(_relu_case(5 if quick else 20, B, seed + 1))
    cases.append(_mpc_case(5 if quick else 10, 3 if quick else 4, 2, B, seed + 2))
    for i, (N, k) in enumerate([(12, 3)] if quick else [(12, 3), (50, 5), (200, 10)]):
        cases.append(_portfolio_case(N, k, 8, seed + 3 + i))
    steps = 2 if quick else 10
    cases.append(_tiny_control_case(steps, seed + 10))
    cases.append(_tiny_simplex_case(8, steps, seed + 11))
    singles = (
        [(100, 50, 20)] if quick else [(1000, 500, 200), (3000, 1000, 500), (5000, 2000, 1000)]
    )
    for i, (n, p, m) in enumerate(singles):
        cases.append(_single_dense_case(n, p, m, 100 + i, ref_calls=11 if n <= 1000 else 3))
    sparse = (
        [("isotonic", {"n": 2000}, "2k"), ("lasso", {"n_features": 500}, "500")]
        if quick
        else [
            ("isotonic", {"n": 100_000}, "100k"),
            ("lasso", {"n_features": 10_000}, "10k"),
            ("mpc", {"horizon": 100, "n_x": 20}, "100x20"),
            ("portfolio", {"n_assets": 20_000, "n_factors": 50}, "20k"),
        ]
    )
    for i, (kind, size, label) in enumerate(sparse):
        cases.append(_sparse_case(kind, size, label, seed + 20 + i))
    seed += 30
    B = 8 if quick else 64
    if quick:
        cases.append(_norm_ball_case(20, 10, B, seed + 1))
        cases.append(_robust_lp_case(5, 8, 3, B, seed + 2))
        cases.append(_norm_regression_case(20, 10, B, seed + 3))
        cases.append(_risk_limited_portfolio_case(12, 3, B, seed + 4))
        cases.append(_mpc_norm_case(5, 3, 2, B, seed + 5))
    else:
        cases.append(_norm_ball_case(200, 100, B, seed + 1))
        cases.append(_robust_lp_case(20, 40, 5, B, seed + 2))
        cases.append(_norm_regression_case(200, 100, B, seed + 3))
        cases.append(_risk_limited_portfolio_case(50, 5, B, seed + 4))
        cases.append(_mpc_norm_case(10, 4, 2, B, seed + 5))
    return cases


def get_case(name: str, quick: bool) -> Case:
    for case in all_cases(quick):
        if case.name == name:
            return case
    raise KeyError(f"no case {name!r} (quick={quick})")
