"""A seeded suite of generated QPs: feasible (well and badly scaled), LPs, primal
infeasible and dual infeasible (unbounded) instances.

Badly scaled instances are well-posed problems seen through random diagonal changes of
units: ``x = S x'``, constraint rows multiplied by ``R``, the objective by ``w``, drawn
log-uniformly so that each block's entries spread over ``10^[-s, s]``: ``s = 3`` spans
six orders of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "QPInstance",
    "dual_infeasible",
    "feasible_lp",
    "feasible_qp",
    "make_suite",
    "primal_infeasible",
]


@dataclass
class QPInstance:
    """One QP ``min 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h`` and what it is."""

    name: str
    kind: str  # "qp", "lp", "primal_infeasible" or "dual_infeasible"
    P: np.ndarray
    q: np.ndarray
    A: np.ndarray
    b: np.ndarray
    G: np.ndarray
    h: np.ndarray
    scale_exponent: float

    @property
    def n(self) -> int:
        return self.q.size


def _log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    return int(np.rint(np.exp(rng.uniform(np.log(low), np.log(high)))))


def _rescale(rng: np.random.Generator, inst: QPInstance, s: float) -> QPInstance:
    """Change units: ``x = S x'``, rows times R, objective times w (all log-uniform).

    The factors are drawn so that the entries of each block, P = w S P S and
    C = R C S, spread over ``10^[-s, s]`` on top of their natural spread: S over
    ``10^[-s/4, s/4]``, w over ``10^[-s/2, s/2]``, R over ``10^[-3s/4, 3s/4]``.
    """
    if s == 0:
        return inst
    n = inst.n
    S = 10 ** rng.uniform(-s / 4, s / 4, n)
    RA = 10 ** rng.uniform(-3 * s / 4, 3 * s / 4, inst.b.size)
    RG = 10 ** rng.uniform(-3 * s / 4, 3 * s / 4, inst.h.size)
    w = 10 ** rng.uniform(-s / 2, s / 2)
    return QPInstance(
        name=inst.name,
        kind=inst.kind,
        P=w * S[:, None] * inst.P * S[None, :],
        q=w * S * inst.q,
        A=RA[:, None] * inst.A * S[None, :],
        b=RA * inst.b,
        G=RG[:, None] * inst.G * S[None, :],
        h=RG * inst.h,
        scale_exponent=s,
    )


def _constraints(rng: np.random.Generator, n: int, x0: np.ndarray, box: bool):
    n_eq = int(rng.integers(0, max(1, n // 3) + 1))
    n_ineq = int(rng.integers(max(1, n // 2), 2 * n + 1))
    A = rng.standard_normal((n_eq, n))
    b = A @ x0
    G = rng.standard_normal((n_ineq, n))
    # About a third of the inequalities active at x0, the others with slack.
    slack = rng.uniform(0.1, 1.0, n_ineq) * (rng.random(n_ineq) > 0.3)
    h = G @ x0 + slack
    if box:
        G = np.vstack([G, np.eye(n), -np.eye(n)])
        h = np.concatenate([h, np.full(n, 10.0), np.full(n, 10.0)])
    return A, b, G, h


def feasible_qp(rng: np.random.Generator, n: int, s: float, name: str) -> QPInstance:
    """A feasible, bounded QP; P is positive definite or (with box bounds) singular."""
    x0 = rng.standard_normal(n)
    definite = rng.random() < 0.5
    rank = n if definite else max(1, int(rng.integers(n // 4, n)))
    M = rng.standard_normal((n, rank))
    P = M @ M.T / rank + (0.01 * np.eye(n) if definite else 0)
    q = rng.standard_normal(n)
    A, b, G, h = _constraints(rng, n, x0, box=not definite)
    return _rescale(rng, QPInstance(name, "qp", P, q, A, b, G, h, 0.0), s)


def feasible_lp(rng: np.random.Generator, n: int, s: float, name: str) -> QPInstance:
    """A feasible LP, bounded by a box."""
    x0 = rng.uniform(-0.5, 0.5, n)
    A, b, G, h = _constraints(rng, n, x0, box=False)
    G = np.vstack([G, np.eye(n), -np.eye(n)])
    h = np.concatenate([h, np.ones(n), np.ones(n)])
    q = rng.standard_normal(n)
    return _rescale(rng, QPInstance(name, "lp", np.zeros((n, n)), q, A, b, G, h, 0.0), s)


def primal_infeasible(rng: np.random.Generator, n: int, s: float, name: str) -> QPInstance:
    """A QP or LP whose constraints contradict each other."""
    base = feasible_qp(rng, n, 0.0, name) if rng.random() < 0.5 else feasible_lp(rng, n, 0.0, name)
    a = rng.standard_normal(n)
    if rng.random() < 0.5 or base.b.size == 0:
        # a'x <= -1 and a'x >= 1.
        G = np.vstack([base.G, a, -a])
        h = np.concatenate([base.h, [-1.0, -1.0]])
        A, b = base.A, base.b
    else:
        # Two copies of an equality row with different right-hand sides.
        A = np.vstack([base.A, base.A[:1]])
        b = np.concatenate([base.b, base.b[:1] + 1.0])
        G, h = base.G, base.h
    inst = QPInstance(name, "primal_infeasible", base.P, base.q, A, b, G, h, 0.0)
    return _rescale(rng, inst, s)


def dual_infeasible(rng: np.random.Generator, n: int, s: float, name: str) -> QPInstance:
    """A feasible problem unbounded below along a direction d."""
    d = rng.standard_normal(n)
    d /= np.linalg.norm(d)
    x0 = rng.standard_normal(n)
    project = np.eye(n) - np.outer(d, d)
    if rng.random() < 0.5:
        M = project @ rng.standard_normal((n, n))
        P = M @ M.T / n  # P d = 0
    else:
        P = np.zeros((n, n))
    q = rng.standard_normal(n)
    q -= (q @ d + 1.0) * d  # q'd = -1
    n_eq = int(rng.integers(0, max(1, n // 3) + 1))
    A = rng.standard_normal((n_eq, n)) @ project  # A d = 0
    b = A @ x0
    G = rng.standard_normal((int(rng.integers(max(1, n // 2), 2 * n + 1)), n))
    G[G @ d > 0] *= -1  # G d <= 0
    h = G @ x0 + rng.uniform(0.1, 1.0, G.shape[0])
    return _rescale(rng, QPInstance(name, "dual_infeasible", P, q, A, b, G, h, 0.0), s)


def make_suite(
    seed: int = 0,
    n_qp: int = 200,
    n_lp: int = 50,
    n_primal_infeasible: int = 50,
    n_dual_infeasible: int = 50,
    n_max: int = 500,
) -> list[QPInstance]:
    """The suite: sizes log-uniform in ``[5, n_max]``; half of each kind badly scaled
    (``s`` uniform in ``[1, 3]``), the other half in natural units."""
    rng = np.random.default_rng(seed)
    suite = []
    for kind, count, make, n_cap in (
        ("qp", n_qp, feasible_qp, n_max),
        ("lp", n_lp, feasible_lp, n_max),
        ("pinf", n_primal_infeasible, primal_infeasible, n_max),
        ("dinf", n_dual_infeasible, dual_infeasible, n_max),
    ):
        for i in range(count):
            n = _log_uniform_int(rng, 5, n_cap)
            s = float(rng.uniform(1, 3)) if i % 2 else 0.0
            suite.append(make(rng, n, s, f"{kind}-{i:03d}-n{n}-s{s:.1f}"))
    return suite
