"""Independent references for the tests: CVXPY + Clarabel, finite differences, KKT.

Nothing here imports ``altdiff_modeling``: these functions are the yardstick the
library is measured against, so they are built only from numpy, scipy and CVXPY's
public solve path (plus ``get_problem_data`` for the non-degeneracy check).

Conventions (shared with the library, see ``DESIGN.md``):

* QP form: ``min 1/2 x'Px + q'x  s.t.  A x = b  (dual lam),  G x <= h  (dual nu >= 0)``;
  stationarity ``P x + q + A' lam + G' nu = 0``. CVXPY's ``dual_value`` of
  ``A @ x == b`` and ``G @ x <= h`` follow this sign convention.
* Symmetric matrices (``P``, and parameters declared ``PSD``/``NSD``/``symmetric``) are
  read through their symmetric part ``sym(Q) = (Q + Q') / 2``; gradients are those of
  ``Q -> L(sym(Q))``, hence symmetric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

__all__ = [
    "CLARABEL_TIGHT",
    "CanonicalMargins",
    "canonical_margins",
    "directional_finite_difference",
    "finite_difference_gradient",
    "is_symmetric_parameter",
    "kkt_implicit_gradient",
    "relative_error",
    "solve_qp_reference",
    "solve_reference",
]

#: Clarabel settings (CVXPY passes them through by name) for a reference solve: the
#: interior-point method converges quadratically near the end, so asking for 1e-12 costs
#: only a few extra iterations and gives solutions accurate to about 1e-11 on the
#: well-scaled, non-degenerate instances of the test families.
CLARABEL_TIGHT: dict[str, float | int] = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 500,
}

# Fallback when the tight request ends "almost solved" (CVXPY: optimal_inaccurate),
# which happens when round-off stalls the last digit; still far below the test tolerances.
_CLARABEL_FALLBACK: dict[str, float | int] = {
    "tol_gap_abs": 1e-10,
    "tol_gap_rel": 1e-10,
    "tol_feas": 1e-10,
    "tol_ktratio": 1e-8,
    "max_iter": 500,
}


def relative_error(a, b) -> float:
    """Relative error ``||a - b|| / max(||b||, 1e-12)``, norms over all entries.

    Args:
        a: Array-like (numpy array, torch tensor, or a sequence of them, which are
            flattened and concatenated).
        b: Array-like of the same total shape; the reference.

    Returns:
        The relative error as a float.
    """
    a_flat = _flatten(a)
    b_flat = _flatten(b)
    if a_flat.shape != b_flat.shape:
        raise ValueError(f"shape mismatch: {a_flat.shape} vs {b_flat.shape}")
    return float(np.linalg.norm(a_flat - b_flat) / max(np.linalg.norm(b_flat), 1e-12))


def _flatten(a) -> np.ndarray:
    if isinstance(a, list | tuple):
        parts = [_flatten(x) for x in a]
        return np.concatenate(parts) if parts else np.zeros(0)
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64).ravel()


def is_symmetric_parameter(param: cp.Parameter) -> bool:
    """Whether CVXPY constrains ``param`` to be symmetric (PSD, NSD or symmetric)."""
    attrs = param.attributes
    return bool(attrs.get("PSD") or attrs.get("NSD") or attrs.get("symmetric"))


def _solve_tight(problem: cp.Problem) -> None:
    problem.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    if problem.status == cp.OPTIMAL_INACCURATE:
        problem.solve(solver=cp.CLARABEL, **_CLARABEL_FALLBACK)
    if problem.status != cp.OPTIMAL:
        raise AssertionError(f"reference solve ended with status {problem.status!r}")


def solve_reference(
    problem: cp.Problem,
    param_values: Mapping[cp.Parameter, np.ndarray],
    variables: Sequence[cp.Variable],
) -> list[np.ndarray]:
    """Solve ``problem`` with CVXPY + Clarabel at tight tolerance.

    The parameters' previous values are restored afterwards (also on failure), so the
    call has no lasting effect on ``problem`` except the variables' ``value``.

    Args:
        problem: A CVXPY problem.
        param_values: Value for every parameter of ``problem`` (arrays shaped like the
            parameters).
        variables: The variables whose optimal values are returned.

    Returns:
        One array per variable, shaped like the variable.

    Raises:
        AssertionError: If Clarabel does not report ``optimal``.
    """
    previous = {p: p.value for p in param_values}
    try:
        for p, v in param_values.items():
            p.value = np.asarray(v, dtype=np.float64)
        _solve_tight(problem)
        return [np.array(v.value, dtype=np.float64).reshape(v.shape) for v in variables]
    finally:
        for p, v in previous.items():
            p.value = v


def _loss(problem, param_values, variables, weights) -> float:
    xs = solve_reference(problem, param_values, variables)
    return float(sum(np.sum(np.asarray(w) * x) for w, x in zip(weights, xs, strict=True)))


def finite_difference_gradient(
    problem: cp.Problem,
    param_values: Mapping[cp.Parameter, np.ndarray],
    variables: Sequence[cp.Variable],
    weights: Sequence[np.ndarray],
    step: float = 1e-4,
) -> dict[cp.Parameter, np.ndarray]:
    """Central finite-difference gradient of ``L = sum_k <weights[k], x_k*>``.

    ``x_k*`` are the optimal values of ``variables`` from :func:`solve_reference`.

    Symmetric convention: for a parameter declared ``PSD``, ``NSD`` or ``symmetric`` only
    symmetric values are admissible, so entries ``(i, j)`` and ``(j, i)`` are perturbed
    together. Writing ``d`` for the derivative of ``L`` along ``E_ij + E_ji`` (``i != j``)
    the reported gradient is that of ``Q -> L(sym(Q))`` with ``sym(Q) = (Q + Q')/2``::

        dL/dQ_ij = dL/dQ_ji = d / 2   (i != j),      dL/dQ_ii = derivative along E_ii.

    This is what autograd returns for a library that symmetrizes its input as
    ``(Q + Q') / 2`` before use.

    Choice of step: with the solution accurate to about ``eps ~ 1e-11`` (Clarabel at
    tolerance 1e-12), the round-off error of a central difference is ``~ eps / step`` and
    the truncation error ``~ step^2 * |x'''|``. On a fixed active set the solution is
    affine in the right-hand sides (q, b, h) and rational in the matrices, so truncation
    is small; ``step = 1e-4`` gives about ``1e-7`` noise and ``1e-8`` truncation for
    O(1) data, provided no constraint changes activity within ``+-step`` (the families
    keep complementarity margins far above that).

    Args:
        problem: A CVXPY problem.
        param_values: Value for every parameter of ``problem``.
        variables: Variables entering the loss.
        weights: One array per variable, shaped like it.
        step: Finite-difference step (absolute).

    Returns:
        A dict mapping each parameter to ``dL/dparam``, shaped like the parameter.
    """
    base = {p: np.array(v, dtype=np.float64) for p, v in param_values.items()}
    grads: dict[cp.Parameter, np.ndarray] = {}

    def central(p: cp.Parameter, direction: np.ndarray) -> float:
        plus = dict(base)
        minus = dict(base)
        plus[p] = base[p] + step * direction
        minus[p] = base[p] - step * direction
        return (
            _loss(problem, plus, variables, weights) - _loss(problem, minus, variables, weights)
        ) / (2.0 * step)

    for p, v in base.items():
        g = np.zeros_like(v)
        if is_symmetric_parameter(p):
            n = v.shape[0]
            for i in range(n):
                for j in range(i, n):
                    e = np.zeros_like(v)
                    e[i, j] = 1.0
                    e[j, i] = 1.0
                    d = central(p, e)
                    if i == j:
                        g[i, i] = d
                    else:
                        g[i, j] = g[j, i] = d / 2.0
        else:
            for idx in np.ndindex(v.shape):
                e = np.zeros_like(v)
                e[idx] = 1.0
                g[idx] = central(p, e)
        grads[p] = g
    return grads


def directional_finite_difference(
    problem: cp.Problem,
    param_values: Mapping[cp.Parameter, np.ndarray],
    variables: Sequence[cp.Variable],
    weights: Sequence[np.ndarray],
    direction: Mapping[cp.Parameter, np.ndarray],
    step: float = 1e-5,
) -> float:
    """Central finite difference of ``L = sum_k <weights[k], x_k*>`` along ``direction``.

    Two :func:`solve_reference` solves, at ``param_values +- step * direction``; the
    parameters not in ``direction`` keep their values. Compare with ``sum_p <dL/dp,
    direction[p]>`` of a gradient (the round-off and truncation notes of
    :func:`finite_difference_gradient` apply).
    """
    losses = []
    for sign in (1.0, -1.0):
        shifted = {
            p: np.asarray(v, dtype=np.float64) + sign * step * direction.get(p, 0.0)
            for p, v in param_values.items()
        }
        losses.append(_loss(problem, shifted, variables, weights))
    return (losses[0] - losses[1]) / (2.0 * step)


def solve_qp_reference(
    P: np.ndarray,
    q: np.ndarray,
    A: np.ndarray | None = None,
    b: np.ndarray | None = None,
    G: np.ndarray | None = None,
    h: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve ``min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h`` with Clarabel at tight tolerance.

    Args:
        P: ``(n, n)`` symmetric positive semidefinite (its symmetric part is used).
        q: ``(n,)``.
        A, b: ``(n_eq, n)``, ``(n_eq,)``, or both None.
        G, h: ``(n_ineq, n)``, ``(n_ineq,)``, or both None.

    Returns:
        ``(x, lam, nu)``: primal ``(n,)``, equality duals ``(n_eq,)`` and inequality duals
        ``(n_ineq,)`` (empty arrays where a block is absent), with
        ``P x + q + A' lam + G' nu = 0`` and ``nu >= 0``.
    """
    P = np.asarray(P, dtype=np.float64)
    P = 0.5 * (P + P.T)
    n = q.shape[0]
    x = cp.Variable(n)
    cons = []
    if A is not None:
        cons.append(np.asarray(A, dtype=np.float64) @ x == np.asarray(b, dtype=np.float64))
    if G is not None:
        cons.append(np.asarray(G, dtype=np.float64) @ x <= np.asarray(h, dtype=np.float64))
    obj = 0.5 * cp.quad_form(x, P, assume_PSD=True) + np.asarray(q, dtype=np.float64) @ x
    problem = cp.Problem(cp.Minimize(obj), cons)
    _solve_tight(problem)
    k = 0
    lam = np.zeros(0)
    nu = np.zeros(0)
    if A is not None:
        lam = np.asarray(cons[k].dual_value, dtype=np.float64).reshape(-1)
        k += 1
    if G is not None:
        nu = np.asarray(cons[k].dual_value, dtype=np.float64).reshape(-1)
    return np.asarray(x.value, dtype=np.float64), lam, nu


def _active_set(G, h, x, nu, active_tol):
    """Active rows of ``G x <= h``, checking strict complementarity."""
    slack = h - G @ x
    active = nu > slack
    small = np.minimum(nu, slack)
    large = np.maximum(nu, slack)
    if np.any(small > active_tol):
        bad = np.flatnonzero(small > active_tol)
        raise ValueError(
            f"rows {bad.tolist()} are not strictly complementary: neither slack nor dual "
            f"below {active_tol} (inaccurate solution or degenerate constraint)"
        )
    if np.any(large < active_tol):
        bad = np.flatnonzero(large < active_tol)
        raise ValueError(
            f"rows {bad.tolist()} are not strictly complementary: slack and dual both "
            f"below {active_tol} (degenerate constraint)"
        )
    return active


def kkt_implicit_gradient(
    P: np.ndarray,
    q: np.ndarray,
    A: np.ndarray | None,
    b: np.ndarray | None,
    G: np.ndarray | None,
    h: np.ndarray | None,
    x: np.ndarray,
    lam: np.ndarray,
    nu: np.ndarray,
    grad_x: np.ndarray,
    active_tol: float = 1e-7,
    least_squares: bool = False,
) -> tuple[np.ndarray, ...]:
    """Gradients of ``L = <grad_x, x*>`` by implicit differentiation of the KKT conditions.

    Given a tight solution ``(x, lam, nu)`` of ``min 1/2 x'Px + q'x s.t. Ax = b, Gx <= h``
    that is strictly complementary (every inequality has either slack or dual above
    ``active_tol``, and the other below), let ``a`` index the active rows (``nu_a > 0``)
    and ``z = (x, lam, nu_a)``. Locally, ``z`` is the solution of the linear system::

        K z = r,   K = [[P, A', G_a'], [A, 0, 0], [G_a, 0, 0]],   r = (-q, b, h_a),

    (with ``sym(P)`` in ``K``) and the inactive rows have ``nu = 0`` and play no part.
    ``K`` is nonsingular when LICQ holds for ``(A, G_a)`` and ``P`` is positive definite
    on their null space. Solve the adjoint system (``K`` is symmetric)::

        K (d_x, d_lam, d_nu) = -(grad_x, 0, 0).

    Then ``dL/dr = -(d_x, d_lam, d_nu)`` and ``dL/dK = (d_x, d_lam, d_nu) z'``, which,
    collecting the blocks (and the transposed blocks A', G_a'), gives (OptNet, Amos &
    Kolter 2017, restricted to the active set)::

        dL/dP   = 1/2 (d_x x' + x d_x')           (gradient of P -> L(sym(P)))
        dL/dq   = d_x
        dL/dA   = d_lam x' + lam d_x'
        dL/db   = -d_lam
        dL/dG_a = d_nu x' + nu_a d_x',      dL/dG_i = 0 for inactive rows
        dL/dh_a = -d_nu,                    dL/dh_i = 0 for inactive rows

    Equivalently, OptNet's full system with ``D(nu)`` and ``D(Gx - h)`` reduces to this
    one under strict complementarity, since for inactive rows ``d_nu_i = 0``.

    Args:
        P, q, A, b, G, h: QP data (``A, b`` and ``G, h`` may be None).
        x, lam, nu: Optimal primal and dual solution (``lam``/``nu`` empty where absent).
        grad_x: ``dL/dx``, ``(n,)``.
        active_tol: Threshold separating ~0 from > 0 in slacks and duals.
        least_squares: Solve the adjoint system in the least-squares sense (its
            minimum-norm solution) instead of requiring ``K`` nonsingular. Where the
            active rows ``(A, G_a)`` are linearly dependent (a redundant flow
            conservation row, a degenerate LP vertex) but ``P`` is positive definite on
            their null space, ``d_x`` and hence ``dL/dq`` and ``dL/dP`` are still
            exact; the other blocks' gradients then depend on the multipliers, which
            are not unique.

    Returns:
        ``(dP, dq, dA, db, dG, dh)`` shaped like the data; None for absent blocks.

    Raises:
        ValueError: If a constraint is not strictly complementary.
    """
    P = np.asarray(P, dtype=np.float64)
    P = 0.5 * (P + P.T)
    n = P.shape[0]
    A_ = np.zeros((0, n)) if A is None else np.asarray(A, dtype=np.float64)
    G_ = np.zeros((0, n)) if G is None else np.asarray(G, dtype=np.float64)
    h_ = np.zeros(0) if h is None else np.asarray(h, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    nu = np.asarray(nu, dtype=np.float64).reshape(-1)
    n_eq = A_.shape[0]
    active = _active_set(G_, h_, x, nu, active_tol) if G_.shape[0] else np.zeros(0, dtype=bool)
    Ga = G_[active]
    n_a = Ga.shape[0]
    C = np.vstack([A_, Ga])
    K = np.block([[P, C.T], [C, np.zeros((n_eq + n_a, n_eq + n_a))]])
    rhs = np.concatenate([-np.asarray(grad_x, dtype=np.float64), np.zeros(n_eq + n_a)])
    d = np.linalg.lstsq(K, rhs, rcond=None)[0] if least_squares else np.linalg.solve(K, rhs)
    d_x, d_lam, d_nu = d[:n], d[n : n + n_eq], d[n + n_eq :]

    dP = 0.5 * (np.outer(d_x, x) + np.outer(x, d_x))
    dq = d_x
    dA = db = dG = dh = None
    if A is not None:
        dA = np.outer(d_lam, x) + np.outer(lam, d_x)
        db = -d_lam
    if G is not None:
        dG = np.zeros_like(G_)
        dh = np.zeros_like(h_)
        dG[active] = np.outer(d_nu, x) + np.outer(nu[active], d_x)
        dh[active] = -d_nu
    return dP, dq, dA, db, dG, dh


@dataclass(frozen=True)
class CanonicalMargins:
    """Non-degeneracy measures of a problem's canonical QP (see :func:`canonical_margins`).

    Attributes:
        complementarity: ``min_i max(slack_i, nu_i)`` over the canonical inequalities
            (``inf`` when there are none); > 0 means strictly complementary.
        kkt_sigma_min: Smallest singular value of the active-set KKT matrix divided by
            its largest; > 0 means unique primal and dual solutions.
        n_eq: Canonical equality rows.
        n_ineq: Canonical inequality rows.
    """

    complementarity: float
    kkt_sigma_min: float
    n_eq: int
    n_ineq: int


def canonical_margins(
    problem: cp.Problem, param_values: Mapping[cp.Parameter, np.ndarray]
) -> CanonicalMargins:
    """Check that the QP CVXPY builds from ``problem`` is polyhedral and non-degenerate.

    Uses ``problem.get_problem_data(cp.CLARABEL)``: ``min 1/2 x'Px + q'x s.t. Ax + s = b,
    s in Zero^{n_eq} x NonNeg^{n_ineq}``. Raises if any other cone appears. The canonical
    QP is solved with :func:`solve_qp_reference`; strict complementarity and the
    conditioning of the active-set KKT matrix are reported.
    """
    previous = {p: p.value for p in param_values}
    try:
        for p, v in param_values.items():
            p.value = np.asarray(v, dtype=np.float64)
        data, _, _ = problem.get_problem_data(cp.CLARABEL)
    finally:
        for p, v in previous.items():
            p.value = v
    dims = data["dims"]
    if dims.soc or dims.psd or dims.exp or dims.p3d:
        raise AssertionError(f"canonical problem has non-polyhedral cones: {dims}")
    n_eq, n_ineq = dims.zero, dims.nonneg
    A_all = sp.csr_array(data["A"]).toarray()
    b_all = np.asarray(data["b"], dtype=np.float64)
    q = np.asarray(data["c"], dtype=np.float64)
    n = q.shape[0]
    P = sp.csr_array(data["P"]).toarray() if "P" in data else np.zeros((n, n))
    A, b = A_all[:n_eq], b_all[:n_eq]
    G, h = A_all[n_eq : n_eq + n_ineq], b_all[n_eq : n_eq + n_ineq]
    x, _lam, nu = solve_qp_reference(
        P, q, A if n_eq else None, b if n_eq else None, G if n_ineq else None, h
    )
    if n_ineq:
        slack = h - G @ x
        complementarity = float(np.min(np.maximum(slack, nu)))
        active = nu > slack
    else:
        complementarity = float("inf")
        active = np.zeros(0, dtype=bool)
    C = np.vstack([A, G[active]])
    m = C.shape[0]
    P = 0.5 * (P + P.T)
    K = np.block([[P, C.T], [C, np.zeros((m, m))]])
    s = np.linalg.svd(K, compute_uv=False)
    return CanonicalMargins(complementarity, float(s[-1] / s[0]), n_eq, n_ineq)
