"""Seeded large sparse problem families, at any size: the benchmark problems of the
sparse backend (``benchmarks/sparse_problems.py``) and their down-scaled copies in
``tests/test_sparse.py``.

Each builder returns a `SparseFamily`: the CVXPY problem, its parameters (all of them,
in order), the output variables, parameter values, and the positions of the
parameters whose gradients are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

__all__ = ["SPARSE_FAMILIES", "SparseFamily", "isotonic", "lasso", "mpc", "portfolio"]


@dataclass
class SparseFamily:
    """A parametric problem with values for its parameters.

    Attributes:
        name: Family name.
        problem: The CVXPY problem.
        parameters: Every parameter of the problem, in the layer's order.
        variables: The layer's outputs.
        values: One array per parameter.
        grad_wrt: Positions (in ``parameters``) of the parameters to differentiate.
        n_variables: Number of entries of the user's variables (for reports).
    """

    name: str
    problem: cp.Problem
    parameters: list[cp.Parameter]
    variables: list[cp.Variable]
    values: list[np.ndarray]
    grad_wrt: list[int]
    n_variables: int


def lasso(n_features: int, rng: np.random.Generator, density: float = 0.15) -> SparseFamily:
    """Lasso as a QP: ``min 1/2 ||r||^2 + lam 1't  s.t.  r = F w - y, -t <= w <= t``.

    F is a fixed sparse design matrix with ``n_features / 100`` rows (at least 8) and
    15% nonzeros, as in the lasso benchmark of the OSQP paper (Stellato et al., 2020);
    the targets y and the weight lam are parameters.
    """
    n_samples = max(n_features // 100, 8)
    nnz_per_row = max(int(density * n_features), 2)
    rows = np.repeat(np.arange(n_samples), nnz_per_row)
    cols = rng.integers(0, n_features, rows.size)
    values = rng.standard_normal(rows.size)
    F = sp.csr_array((values, (rows, cols)), shape=(n_samples, n_features))
    F.sum_duplicates()
    w_true = np.where(rng.random(n_features) < 0.1, rng.standard_normal(n_features), 0.0)
    y_value = F @ w_true + 0.1 * rng.standard_normal(n_samples)
    lam_value = 0.2 * np.abs(F.T @ y_value).max()
    w, t, r = cp.Variable(n_features), cp.Variable(n_features), cp.Variable(n_samples)
    y, lam = cp.Parameter(n_samples), cp.Parameter(nonneg=True)
    problem = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(r) + lam * cp.sum(t)),
        [r == F @ w - y, w <= t, -t <= w],
    )
    return SparseFamily(
        "lasso", problem, [y, lam], [w], [y_value, np.array(lam_value)], [0, 1], n_features
    )


def portfolio(n_assets: int, n_factors: int, rng: np.random.Generator) -> SparseFamily:
    """Long-only factor-model portfolio: ``max mu'w - gamma (f'f + w' diag(d) w)``
    with ``f = F'w``, ``1'w = 1``, ``0 <= w <= w_max``; the expected returns mu are the
    parameter (they enter the constraint matrix: see the comment below)."""
    F = rng.standard_normal((n_assets, n_factors)) / np.sqrt(n_factors)
    d = rng.uniform(0.5, 1.5, n_assets)
    gamma, w_max = 1.0, 5.0 / n_assets * 4
    w, f, ret = cp.Variable(n_assets), cp.Variable(n_factors), cp.Variable()
    mu = cp.Parameter(n_assets)
    # Written for CVXPY's canonicalization: a parameter times a variable in the objective
    # (mu @ w) makes CVXPY 1.9 build a dense (variables x parameters) array, 3 GB at
    # 20,000 assets, and multiply(d, square(w)) is slow; the expected return is an
    # auxiliary variable fixed by a constraint instead, the idiosyncratic risk a
    # sum of squares.
    risk = cp.sum_squares(f) + cp.sum_squares(cp.multiply(np.sqrt(d), w))
    problem = cp.Problem(
        cp.Maximize(ret - gamma * risk),
        [ret == mu @ w, f == F.T @ w, cp.sum(w) == 1, w >= 0, w <= w_max],
    )
    mu_value = rng.standard_normal(n_assets) * 3.0 / n_assets
    return SparseFamily("portfolio", problem, [mu], [w], [mu_value], [0], n_assets)


def mpc(
    horizon: int,
    n_x: int,
    rng: np.random.Generator,
    n_u: int | None = None,
    dynamics_parameters: bool = False,
) -> SparseFamily:
    """Linear MPC: ``min sum_t ||x_t||^2 + ||u_t||^2`` subject to ``x_{t+1} = A x_t +
    B u_t``, ``x_0 = x_init``, ``|u_t| <= u_max``, ``|x_t| <= x_max``.

    The initial state is a parameter; with ``dynamics_parameters`` A and B are too
    (the constraint matrix then changes with the parameters, its pattern fixed).
    """
    n_u = n_u if n_u is not None else max(n_x // 2, 1)
    A_value = np.eye(n_x) + 0.1 * rng.standard_normal((n_x, n_x)) / np.sqrt(n_x)
    B_value = rng.standard_normal((n_x, n_u)) / np.sqrt(n_x)
    x = cp.Variable((n_x, horizon + 1))
    u = cp.Variable((n_u, horizon))
    x_init = cp.Parameter(n_x)
    if dynamics_parameters:
        A, B = cp.Parameter((n_x, n_x)), cp.Parameter((n_x, n_u))
    else:
        A, B = A_value, B_value
    u_max, x_max = 0.5, 3.0
    constraints = [
        x[:, 0] == x_init,
        x[:, 1:] == A @ x[:, :-1] + B @ u,
        cp.abs(u) <= u_max,
        cp.abs(x[:, 1:]) <= x_max,
    ]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), constraints)
    x0_value = rng.uniform(-2.0, 2.0, n_x)
    parameters, values, grad_wrt = [x_init], [x0_value], [0]
    if dynamics_parameters:
        parameters += [A, B]
        values += [A_value, B_value]
        grad_wrt = [0, 1, 2]
    n_variables = n_x * (horizon + 1) + n_u * horizon
    return SparseFamily("mpc", problem, parameters, [u], values, grad_wrt, n_variables)


def isotonic(n: int, rng: np.random.Generator) -> SparseFamily:
    """Projection onto a chain-ordered set: ``min 1/2 ||x - y||^2  s.t.  x_i <= x_{i+1}``
    with the points y the parameter."""
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - y)), [cp.diff(x) >= 0])
    y_value = np.linspace(0.0, 3.0, n) + rng.standard_normal(n)
    return SparseFamily("isotonic", problem, [y], [x], [y_value], [0], n)


SPARSE_FAMILIES = ("lasso", "portfolio", "mpc", "isotonic")
