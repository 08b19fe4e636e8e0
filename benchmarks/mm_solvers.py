"""The solvers of ``benchmarks/maros_meszaros.py``, each behind one function.

``SOLVERS[name](problem, tol, time_limit)`` solves one ``MMProblem`` at absolute
tolerance ``tol`` (relative tolerance 0), and returns a ``Solve``: whether the solver
reported success, its own status, a normalized outcome, the iterations, the solve's
wall time and the primal and dual solution in qpbenchmark's form
``(x, y, z, z_box)``. Settings follow qpbenchmark's ``SolverSettings``: eps_abs (and the
duality-gap tolerance where a solver has one, with proxqp's gap check on) = tol,
eps_rel = 0, time limits where a solver has them; ``max_iter`` = 100,000 for this
library and OSQP; OSQP polishes, as qpsolvers' interface does by default. This library
runs twice: ``altdiff`` gets dense tensors, ``altdiff-sparse`` scipy.sparse matrices.

The timed part is the solver's setup and solve from matrices already in its format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp
from mm_problems import MMProblem

MAX_ITER = 100_000  # this library and OSQP

#: Normalized outcomes (besides "solved"): the reason a solver gave for stopping.
MAX_ITER_OUTCOME, TIME_LIMIT, CERTIFICATE, OTHER = "max_iter", "time_limit", "certificate", "other"


@dataclass
class Solve:
    """One solver's answer."""

    found: bool
    status: str
    outcome: str
    seconds: float
    iterations: int | None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    z: np.ndarray | None = None
    z_box: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _one_sided(p: MMProblem) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
    """``l <= C x <= u`` with ``C = [A; G; I]``: the form of OSQP and proxqp (as
    qpsolvers combines linear and box inequalities)."""
    C = np.vstack([p.A, p.G, np.eye(p.n)])
    lower = np.concatenate([p.b, np.full(p.h.size, -np.inf), p.lb])
    upper = np.concatenate([p.b, p.h, p.ub])
    return C, lower, upper


def _split_one_sided(p: MMProblem, y: np.ndarray) -> tuple[np.ndarray, ...]:
    n_eq, m = p.b.size, p.h.size
    return y[:n_eq], y[n_eq : n_eq + m], y[n_eq + m :]


#: This library's solvers: ``solve_qp`` on dense torch tensors, or on scipy.sparse matrices.
LIBRARY_MATRICES = {"altdiff": "dense", "altdiff-sparse": "sparse"}


def library_settings(tol: float) -> dict:
    """This library's ``solver_args`` at tolerance ``tol`` (an unsolved instance warns
    instead of raising: its status is part of what is measured)."""
    return {"eps_abs": tol, "eps_rel": 0.0, "max_iter": MAX_ITER, "on_failure": "warn"}


def library_inputs(p: MMProblem, matrices: str) -> dict:
    """``solve_qp``'s inputs ``P, q, A, b, G, h`` for the stacked form (bounds as rows of
    G), float64: P, A, G dense tensors (``matrices="dense"``) or scipy.sparse CSR matrices
    (``"sparse"``), q, b, h tensors; A, b (G, h) None where the problem has no such rows."""
    import torch

    P, q, A, b, G, h = p.stacked()

    def matrix(M: np.ndarray):
        if matrices == "sparse":
            return sp.csr_matrix(M)
        return torch.from_numpy(np.ascontiguousarray(M))

    def vector(v: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))

    blocks = {"P": matrix(P), "q": vector(q), "A": None, "b": None, "G": None, "h": None}
    if b.size:
        blocks.update(A=matrix(A), b=vector(b))
    if h.size:
        blocks.update(G=matrix(G), h=vector(h))
    return blocks


def solve_altdiff(p: MMProblem, tol: float, time_limit: float, matrices: str = "dense") -> Solve:
    """``solve_qp`` on :func:`library_inputs` (``matrices``: "dense" or "sparse")."""
    from altdiff_modeling import solve_qp

    blocks = library_inputs(p, matrices)
    start = time.perf_counter()
    x, lam, nu, info = solve_qp(
        **blocks, solver_args=library_settings(tol), return_info=True, return_duals=True
    )
    seconds = time.perf_counter() - start
    status = info.status[0]
    outcome = {
        "solved": "solved",
        "max_iter": MAX_ITER_OUTCOME,
        "solved_inaccurate": MAX_ITER_OUTCOME,
        "primal_infeasible": CERTIFICATE,
        "dual_infeasible": CERTIFICATE,
    }.get(status, OTHER)
    nu_np = nu.detach().numpy().reshape(-1) if blocks["h"] is not None else np.zeros(0)
    z, z_box = p.split_box(nu_np)
    return Solve(
        found=status == "solved",
        status=status,
        outcome=outcome,
        seconds=seconds,
        iterations=int(info.iterations.max()),
        x=x.detach().numpy().reshape(-1),
        y=lam.detach().numpy().reshape(-1) if blocks["b"] is not None else np.zeros(0),
        z=z,
        z_box=z_box,
    )


def solve_osqp(p: MMProblem, tol: float, time_limit: float) -> Solve:
    import osqp

    C, lower, upper = _one_sided(p)
    P = sp.triu(sp.csc_matrix(p.P), format="csc")
    start = time.perf_counter()
    solver = osqp.OSQP()
    solver.setup(
        P,
        p.q,
        sp.csc_matrix(C),
        lower,
        upper,
        verbose=False,
        eps_abs=tol,
        eps_rel=0.0,
        max_iter=MAX_ITER,
        polishing=True,
        time_limit=time_limit,
    )
    result = solver.solve()
    seconds = time.perf_counter() - start
    status = str(result.info.status)
    outcome = "solved" if status == "solved" else OTHER
    if "maximum iterations" in status:
        outcome = MAX_ITER_OUTCOME
    elif "time limit" in status:
        outcome = TIME_LIMIT
    elif "infeasible" in status:
        outcome = CERTIFICATE
    y, z, z_box = _split_one_sided(p, np.asarray(result.y))
    return Solve(
        status == "solved",
        status,
        outcome,
        seconds,
        int(result.info.iter),
        np.asarray(result.x),
        y,
        z,
        z_box,
    )


def solve_proxqp(p: MMProblem, tol: float, time_limit: float) -> Solve:
    from proxsuite import proxqp

    C, lower, upper = _one_sided(p)
    n_eq = p.b.size
    start = time.perf_counter()
    result = proxqp.dense.solve(
        p.P,
        p.q,
        p.A if n_eq else None,
        p.b if n_eq else None,
        C[n_eq:],
        lower[n_eq:],
        upper[n_eq:],
        eps_abs=tol,
        eps_rel=0.0,
        eps_duality_gap_abs=tol,
        eps_duality_gap_rel=0.0,
        # without it proxqp ignores the gap tolerances, and the criterion includes the gap
        check_duality_gap=True,
        verbose=False,
    )
    seconds = time.perf_counter() - start
    status = str(result.info.status).split(".")[-1]
    outcome = "solved" if status == "PROXQP_SOLVED" else OTHER
    if "MAX_ITER" in status:
        outcome = MAX_ITER_OUTCOME
    elif "INFEASIBLE" in status:
        outcome = CERTIFICATE
    z_all = np.asarray(result.z)
    return Solve(
        status == "PROXQP_SOLVED",
        status,
        outcome,
        seconds,
        int(result.info.iter),
        np.asarray(result.x),
        np.asarray(result.y) if n_eq else np.zeros(0),
        z_all[: p.h.size],
        z_all[p.h.size :],
    )


def solve_clarabel(p: MMProblem, tol: float, time_limit: float) -> Solve:
    import clarabel

    P, q, A, b, G, h = p.stacked()
    C = sp.csc_matrix(np.vstack([A, G]))
    cones = [clarabel.ZeroConeT(b.size), clarabel.NonnegativeConeT(h.size)]
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_feas = tol
    settings.tol_gap_abs = tol
    settings.tol_gap_rel = 0.0
    settings.time_limit = time_limit
    start = time.perf_counter()
    solver = clarabel.DefaultSolver(
        sp.triu(sp.csc_matrix(P), format="csc"), q, C, np.concatenate([b, h]), cones, settings
    )
    result = solver.solve()
    seconds = time.perf_counter() - start
    status = str(result.status)
    outcome = "solved" if status == "Solved" else OTHER
    if status == "MaxIterations":
        outcome = MAX_ITER_OUTCOME
    elif status == "MaxTime":
        outcome = TIME_LIMIT
    elif "Infeasible" in status:
        outcome = CERTIFICATE
    zz = np.asarray(result.z)
    z, z_box = p.split_box(zz[b.size :])
    return Solve(
        status == "Solved",
        status,
        outcome,
        seconds,
        int(result.iterations),
        np.asarray(result.x),
        zz[: b.size],
        z,
        z_box,
    )


def solve_piqp(p: MMProblem, tol: float, time_limit: float) -> Solve:
    import piqp

    start = time.perf_counter()
    solver = piqp.DenseSolver()
    settings = solver.settings
    settings.verbose = False
    settings.eps_abs = tol
    settings.eps_rel = 0.0
    settings.eps_duality_gap_abs = tol
    settings.eps_duality_gap_rel = 0.0
    n_eq, m = p.b.size, p.h.size
    solver.setup(
        np.asfortranarray(p.P),
        p.q,
        np.asfortranarray(p.A) if n_eq else None,
        p.b if n_eq else None,
        np.asfortranarray(p.G) if m else None,
        None,
        p.h if m else None,
        p.lb,
        p.ub,
    )
    status = str(solver.solve()).split(".")[-1]
    seconds = time.perf_counter() - start
    r = solver.result
    outcome = "solved" if status == "PIQP_SOLVED" else OTHER
    if "MAX_ITER" in status:
        outcome = MAX_ITER_OUTCOME
    elif "INFEASIBLE" in status:
        outcome = CERTIFICATE
    return Solve(
        status == "PIQP_SOLVED",
        status,
        outcome,
        seconds,
        int(r.info.iter),
        np.asarray(r.x),
        np.asarray(r.y) if n_eq else np.zeros(0),
        np.asarray(r.z_u) if m else np.zeros(0),
        np.asarray(r.z_bu) - np.asarray(r.z_bl),
    )


SOLVERS: dict[str, Callable[..., Solve]] = {
    **{name: partial(solve_altdiff, matrices=m) for name, m in LIBRARY_MATRICES.items()},
    "osqp": solve_osqp,
    "proxqp": solve_proxqp,
    "clarabel": solve_clarabel,
    "piqp": solve_piqp,
}
