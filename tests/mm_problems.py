"""Maros-Meszaros problems in the user's units, and qpbenchmark's success criterion.

A problem file (``scipy.io.loadmat``) holds ``P, q, A, l, u`` with ``l <= A x <= u``,
whose last n rows are the identity (the variable bounds). qpbenchmark converts it to
``min 1/2 x'Px + q'x s.t. A_eq x = b, G x <= h, lb <= x <= ub``: rows with
``u - l < 1e-10`` become equalities (``b = u``), every other row gives ``C x <= u`` and
``-C x <= -l``, of which the rows with an infinite right-hand side are dropped; values
of magnitude 9e19 and more are infinite. ``MMProblem`` holds that form;
:meth:`MMProblem.stacked` adds the finite bounds as rows of G for solvers without box
constraints, and :meth:`MMProblem.split_box` maps their multipliers back.

The residuals are those of qpsolvers' ``Solution`` (which qpbenchmark reports), in the
problem's own units, from a solver's ``x`` and multipliers ``y`` (equalities), ``z``
(inequalities, >= 0) and ``z_box`` (bounds; negative where a lower bound is active)::

    primal = max(||A x - b||_inf, max(G x - h), max(lb - x), max(x - ub), 0)
    dual   = ||P x + q + A'y + G'z + z_box||_inf
    gap    = |x'Px + q'x + b'y + h'z + lb'min(z_box, 0) + ub'max(z_box, 0)|

(over the finite bounds only). A solve succeeds when the solver says so and all three
are within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io as sio
import scipy.sparse as sp

INFINITY = 9e19  # qpbenchmark's threshold: the files write infinity as 1e20


@dataclass
class MMProblem:
    """One problem in qpbenchmark's form (dense arrays; ``A``/``G`` may have no rows)."""

    name: str
    P: np.ndarray
    q: np.ndarray
    A: np.ndarray
    b: np.ndarray
    G: np.ndarray
    h: np.ndarray
    lb: np.ndarray
    ub: np.ndarray

    @property
    def n(self) -> int:
        return self.q.size

    def sizes(self) -> str:
        return f"n={self.n}, n_eq={self.b.size}, n_ineq={self.h.size}, bounds={self.box_rows()}"

    def box_rows(self) -> int:
        return int(np.isfinite(self.ub).sum() + np.isfinite(self.lb).sum())

    def stacked(self) -> tuple[np.ndarray, ...]:
        """``(P, q, A, b, G_s, h_s)`` with the finite bounds as rows: ``G_s = [G; I_u; -I_l]``,
        ``h_s = [h; ub_u; -lb_l]`` (u, l: the variables with a finite upper, lower bound)."""
        eye = np.eye(self.n)
        upper, lower = np.isfinite(self.ub), np.isfinite(self.lb)
        G = np.vstack([self.G, eye[upper], -eye[lower]])
        h = np.concatenate([self.h, self.ub[upper], -self.lb[lower]])
        return self.P, self.q, self.A, self.b, G, h

    def split_box(self, nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multipliers of :meth:`stacked`'s rows -> ``(z, z_box)`` in qpbenchmark's sign
        convention (``z_box`` positive at an upper bound, negative at a lower one)."""
        m = self.h.size
        upper, lower = np.isfinite(self.ub), np.isfinite(self.lb)
        k = int(upper.sum())
        z_box = np.zeros(self.n)
        z_box[upper] += nu[m : m + k]
        z_box[lower] -= nu[m + k :]
        return nu[:m], z_box


def _symmetric(P: sp.spmatrix) -> np.ndarray:
    """P as a full symmetric matrix, whether the file stores both triangles or one."""
    P = sp.csc_matrix(P, dtype=np.float64)
    if sp.triu(P, 1).nnz and not sp.tril(P, -1).nnz:
        P = P + sp.triu(P, 1).T
    elif sp.tril(P, -1).nnz and not sp.triu(P, 1).nnz:
        P = P + sp.tril(P, -1).T
    dense = P.toarray()
    return 0.5 * (dense + dense.T)


def load(path: Path) -> MMProblem:
    """Read a problem file and convert it as qpbenchmark does (see the module doc)."""
    data = sio.loadmat(str(path))
    n = int(np.asarray(data["n"]).ravel()[0])
    q = np.asarray(data["q"], dtype=np.float64).ravel()
    A = sp.csr_matrix(data["A"], dtype=np.float64).toarray()
    l = np.asarray(data["l"], dtype=np.float64).ravel()
    u = np.asarray(data["u"], dtype=np.float64).ravel()
    l = np.where(l <= -INFINITY, -np.inf, l)
    u = np.where(u >= INFINITY, np.inf, u)
    C, l_c, u_c = A[:-n], l[:-n], u[:-n]
    lb, ub = l[-n:], u[-n:]
    if not np.allclose(A[-n:], np.eye(n)):
        raise ValueError(f"{path.name}: the last n rows of A are not the identity")
    equal = u_c - l_c < 1e-10
    G = np.vstack([C[~equal], -C[~equal]])
    h = np.concatenate([u_c[~equal], -l_c[~equal]])
    finite = np.isfinite(h)
    return MMProblem(
        path.stem, _symmetric(data["P"]), q, C[equal], u_c[equal], G[finite], h[finite], lb, ub
    )


def problem_paths(data_dir: Path) -> list[Path]:
    """The problem files, smallest first (by variables plus constraint rows)."""
    paths = sorted(data_dir.glob("*.mat"))

    def size(path: Path) -> int:
        meta = sio.loadmat(str(path), variable_names=["n", "m"])
        return int(np.asarray(meta["n"]).ravel()[0]) + int(np.asarray(meta["m"]).ravel()[0])

    return sorted(paths, key=lambda p: (size(p), p.stem))


def residuals(
    p: MMProblem, x: np.ndarray, y: np.ndarray, z: np.ndarray, z_box: np.ndarray
) -> dict[str, float]:
    """qpsolvers' primal residual, dual residual and duality gap (module doc)."""
    terms = [0.0]
    if p.b.size:
        terms.append(float(np.max(np.abs(p.A @ x - p.b))))
    if p.h.size:
        terms.append(float(np.max(p.G @ x - p.h)))
    terms.append(float(np.max(p.lb - x)))
    terms.append(float(np.max(x - p.ub)))
    stationarity = p.P @ x + p.q + p.A.T @ y + p.G.T @ z + z_box
    lower, upper = np.isfinite(p.lb), np.isfinite(p.ub)
    gap = (
        x @ p.P @ x
        + p.q @ x
        + p.b @ y
        + p.h @ z
        + p.lb[lower] @ np.minimum(z_box[lower], 0.0)
        + p.ub[upper] @ np.maximum(z_box[upper], 0.0)
    )
    return {
        "primal": max(terms),
        "dual": float(np.linalg.norm(stationarity, np.inf)),
        "gap": float(abs(gap)),
    }


def shifted_geometric_mean(times: list[float], shift: float = 10.0) -> float:
    """``prod(t_i + shift)^(1/N) - shift``: qpbenchmark's time metric (shift 10 s)."""
    return float(np.exp(np.mean(np.log(np.asarray(times) + shift))) - shift)
