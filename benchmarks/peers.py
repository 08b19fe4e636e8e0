"""Adapters for every method of the peer comparison, the Clarabel reference, and the
per-(method, workload) child process that ``benchmarks/run_all.py`` starts.

Methods (``METHODS``), all with one interface:

* ``construct(workload)``: build what the method needs before its first call (timed): the
  CVXPY problem and the layer for CVXPY-based methods, tensors of the fixed matrices for
  the others.
* ``forward(tensors)``: solve; ``tensors`` maps block names (P, q, A, b, G, h) to float64
  CPU tensors, those named in ``workload.grad_wrt`` with ``requires_grad``. Returns x,
  ``(B, n)`` (or ``(n,)`` for a single instance).
* ``backward(loss, inputs)``: ``torch.autograd.grad`` of the fixed random linear loss
  ``sum(w * x)`` with respect to the blocks of ``grad_wrt`` (timed separately).

Methods: ``altdiff-layer`` (AltDiffLayer over the CVXPY problem), ``altdiff-solve_qp``,
``proxsuite-qplayer`` (proxsuite.torch.qplayer.QPFunction), ``qpth``
(qpth.qp.QPFunction), ``cvxpylayers-diffcp`` (CvxpyLayer, default backend) and
``cvxpylayers-moreau`` (CvxpyLayer(solver="MOREAU"), needs ``pip install moreau``), plus
``cholesky`` (one factorization of ``H = P + rho (A'A + G'G)``, a yardstick, no backward).
Every method runs with its own default accuracy settings.

The child (``python benchmarks/peers.py --method M --workload W.npz ...``) writes a JSON
result file after every phase, so that a parent that kills it on timeout still gets the
phases that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: F401  (puts tests/ on sys.path for `reference`)
import numpy as np
from _child import write_json
from workloads import BLOCKS, Workload

# Accuracy bands of the status column: "ok" meets the 1e-5 gradient target.
OK_TOL = 1e-5
INACCURATE_TOL = 1e-2


# ------------------------------------------------------------------------ methods


class Method:
    """Base adapter; subclasses set ``name`` and ``kind`` and override the hooks."""

    name = ""
    kind = "peer"  # "library", "peer" or "yardstick"
    has_backward = True

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def unavailable(self, wl: Workload) -> str | None:
        """A reason why this method cannot run ``wl`` at all, or None."""
        return None

    def prepare(self) -> None:
        """Imports (untimed)."""

    def construct(self, wl: Workload) -> None:
        raise NotImplementedError

    def forward(self, t: dict):
        raise NotImplementedError

    def backward(self, loss, inputs: list):
        import torch

        return torch.autograd.grad(loss, inputs)


def _as_torch(wl: Workload, names) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(wl.data[k])) for k in names}


def build_cvxpy_problem(wl: Workload):
    """The CVXPY problem of ``wl``: a parameter for each block in ``grad_wrt``.

    Returns ``(problem, parameters, x)`` with ``parameters`` in ``grad_wrt`` order.
    Constant P enters as ``quad_form(x, psd_wrap(P))`` (no eigenvalue check); a
    parametric P is declared ``PSD=True``.
    """
    import cvxpy as cp

    x = cp.Variable(wl.n, name="x")
    params = {}
    for name in wl.grad_wrt:
        value = wl.data[name]
        shape = value.shape[1:] if name in wl.batched else value.shape
        extra = {"PSD": True} if name == "P" else {}
        params[name] = cp.Parameter(shape, name=name, **extra)

    def block(name):
        return params[name] if name in params else wl.data[name]

    P = block("P")
    P_expr = P if isinstance(P, cp.Parameter) else cp.psd_wrap(P)
    objective = 0.5 * cp.quad_form(x, P_expr) + block("q") @ x
    constraints = [block("A") @ x == block("b"), block("G") @ x <= block("h")]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    return problem, [params[k] for k in wl.grad_wrt], x


class AltDiffLayerMethod(Method):
    name, kind = "altdiff-layer", "library"

    def prepare(self) -> None:
        from altdiff_modeling import AltDiffLayer

        self.cls = AltDiffLayer

    def construct(self, wl: Workload) -> None:
        problem, params, x = build_cvxpy_problem(wl)
        self.build(problem, params, [x])
        self.order = wl.grad_wrt

    def build(self, problem, parameters: list, variables: list, solver_args=None) -> None:
        """The layer over any CVXPY problem (``solver_args``: the layer's defaults)."""
        self.layer = self.cls(
            problem, parameters=parameters, variables=variables, solver_args=solver_args
        )

    def forward(self, t):
        (x,) = self.layer(*[t[k] for k in self.order])
        return x


class AltDiffSolveQP(Method):
    name, kind = "altdiff-solve_qp", "library"

    def prepare(self) -> None:
        from altdiff_modeling import solve_qp

        self.solve_qp = solve_qp

    def construct(self, wl: Workload) -> None:
        self.fixed = _as_torch(wl, [k for k in BLOCKS if k not in wl.grad_wrt])

    def forward(self, t):
        d = {**self.fixed, **t}
        return self.solve_qp(d["P"], d["q"], d["A"], d["b"], d["G"], d["h"])


class QpthMethod(Method):
    """qpth's batched primal-dual interior point method, default settings."""

    name = "qpth"

    def prepare(self) -> None:
        from qpth.qp import QPFunction

        self.QPFunction = QPFunction

    def construct(self, wl: Workload) -> None:
        self.fixed = _as_torch(wl, [k for k in BLOCKS if k not in wl.grad_wrt])
        self.fn = self.new_function()
        self.single = wl.batch is None

    def new_function(self):
        """The autograd function a qpth user builds once."""
        return self.QPFunction()

    def solve(self, d: dict):
        """x of the QP with the six blocks ``d`` (x is ``(B, n)``: qpth always batches)."""
        return self.fn(d["P"], d["q"], d["G"], d["h"], d["A"], d["b"])

    def forward(self, t):
        x = self.solve({**self.fixed, **t})
        return x.squeeze(0) if self.single else x


class ProxsuiteMethod(Method):
    """proxsuite's QPLayer (``proxsuite.torch.qplayer.QPFunction``), default settings.

    QPLayer picks its own OpenMP thread count, ``os.cpu_count() // 2``, when
    ``omp_parallel=True``; the adapter makes that count equal to the benchmark's by
    giving the module an ``os`` whose ``cpu_count`` is ``2 * threads``, and runs serially
    (its default) with one thread.
    """

    name = "proxsuite-qplayer"

    def prepare(self) -> None:
        import types

        import proxsuite.torch.qplayer as qplayer

        threads = self.threads
        qplayer.os = types.SimpleNamespace(cpu_count=lambda: 2 * threads)
        self.QPFunction = qplayer.QPFunction

    def construct(self, wl: Workload) -> None:
        self.fixed = _as_torch(wl, [k for k in BLOCKS if k not in wl.grad_wrt])
        self.fn = self.new_function()
        self.single = wl.batch is None

    def new_function(self):
        """The autograd function a QPLayer user builds once."""
        return self.QPFunction(omp_parallel=self.threads > 1)

    def solve(self, d: dict):
        """x of the QP with the six blocks ``d`` (one-sided rows: lower bound -1e20)."""
        import torch

        lower = torch.full((d["h"].shape[-1],), -1e20, dtype=d["h"].dtype)
        x, _, _ = self.fn(d["P"], d["q"], d["A"], d["b"], d["G"], lower, d["h"])
        return x

    def forward(self, t):
        x = self.solve({**self.fixed, **t})
        return x.squeeze(0) if self.single else x


class CvxpyLayersMethod(Method):
    """cvxpylayers' CvxpyLayer with its default backend (diffcp)."""

    name = "cvxpylayers-diffcp"
    solver: str | None = None

    def prepare(self) -> None:
        from cvxpylayers.torch import CvxpyLayer

        self.cls = CvxpyLayer

    def call_args(self) -> dict:
        import torch

        # diffcp solves the batch on a thread pool; pin it to the benchmark's count (its
        # solve-only path, taken without gradients, has no backward pool).
        args = {"n_jobs_forward": self.threads}
        if torch.is_grad_enabled():
            args["n_jobs_backward"] = self.threads
        return args

    def construct(self, wl: Workload) -> None:
        problem, params, x = build_cvxpy_problem(wl)
        self.build(problem, params, [x])
        self.order = wl.grad_wrt

    def build(self, problem, parameters: list, variables: list) -> None:
        """The layer over any CVXPY problem, with this backend."""
        kwargs = {"solver": self.solver} if self.solver else {}
        self.layer = self.cls(problem, parameters=parameters, variables=variables, **kwargs)

    def call(self, tensors: list) -> tuple:
        """The layer's outputs at ``tensors`` (one per parameter)."""
        return self.layer(*tensors, solver_args=self.call_args())

    def forward(self, t):
        (x,) = self.call([t[k] for k in self.order])
        return x


class CvxpyLayersMoreau(CvxpyLayersMethod):
    """cvxpylayers' CvxpyLayer with ``solver="MOREAU"`` (Moreau's CPU backend)."""

    name, solver = "cvxpylayers-moreau", "MOREAU"

    def unavailable(self, wl: Workload) -> str | None:
        try:
            import moreau  # noqa: F401
        except ImportError as exc:
            return f"the moreau package is not installed (pip install moreau): {exc}"
        return None

    def call_args(self) -> dict:
        return {}


class CholeskyYardstick(Method):
    """One ``torch.linalg.cholesky`` of ``H = P + rho (A'A + G'G)`` (rho = 1): the cost
    of the factorization every ADMM-type method needs at least once."""

    name, kind, has_backward = "cholesky(H)", "yardstick", False

    def construct(self, wl: Workload) -> None:

        d = _as_torch(wl, BLOCKS)
        A, G = d["A"], d["G"]
        self.H = d["P"] + A.transpose(-1, -2) @ A + G.transpose(-1, -2) @ G

    def forward(self, t):
        import torch

        return torch.linalg.cholesky(self.H)


LIBRARY_METHODS = ("altdiff-layer", "altdiff-solve_qp")
PEER_METHODS = ("proxsuite-qplayer", "qpth", "cvxpylayers-diffcp", "cvxpylayers-moreau")

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        AltDiffLayerMethod,
        AltDiffSolveQP,
        ProxsuiteMethod,
        QpthMethod,
        CvxpyLayersMethod,
        CvxpyLayersMoreau,
        CholeskyYardstick,
    )
}


# ------------------------------------------------------------------------ reference


def clarabel_qp(
    P, q, A, b, G, h, cones: tuple[tuple[str, int], ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Clarabel on the QP directly, at the tests' tight tolerances.

    Same solver and settings as ``tests/reference.solve_qp_reference`` (which goes
    through CVXPY), without CVXPY's canonicalization of a dense P (25M entries at
    n = 5000). Uses the supernodal ``faer`` factorization for n >= 300.
    ``cones``: the cone of ``h - G x`` block by block, ``("l", m)`` (nonnegative) or
    ``("q", d)`` (a second-order cone, head first); by default all rows nonnegative.
    Returns ``(x, lam, nu, status)`` (``nu``: the multipliers of the rows of G).
    """
    import clarabel
    import scipy.sparse as sp
    from reference import _CLARABEL_FALLBACK, CLARABEL_TIGHT

    n, p, m = q.size, b.size, h.size
    P_upper = sp.triu(sp.csc_matrix(0.5 * (P + P.T)), format="csc")
    C = sp.csc_matrix(np.vstack([A, G]))
    rhs = np.concatenate([b, h])
    kinds = {"l": clarabel.NonnegativeConeT, "q": clarabel.SecondOrderConeT}
    cones = [clarabel.ZeroConeT(p)] + [kinds[k](dim) for k, dim in (cones or (("l", m),))]
    status = ""
    for options in (CLARABEL_TIGHT, _CLARABEL_FALLBACK):
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        for key, value in options.items():
            setattr(settings, key, value)
        settings.direct_solve_method = "faer" if n >= 300 else "qdldl"
        result = clarabel.DefaultSolver(P_upper, q, C, rhs, cones, settings).solve()
        status = str(result.status)
        if status == "Solved":
            break
    z = np.asarray(result.z)
    return np.asarray(result.x), z[:p], z[p:], status


#: Instances of a batch that get a reference (the first ones): Clarabel at tolerance
#: 1e-12 takes seconds per n = 500 instance on a busy 2-core machine.
MAX_REFERENCE_INSTANCES = 64


#: ``active_tol`` values tried in turn by :func:`kkt_reference_gradient`.
ACTIVE_TOLS = (1e-7, 1e-6, 1e-5)


def kkt_reference_gradient(
    d: dict, x: np.ndarray, lam: np.ndarray, nu: np.ndarray, w: np.ndarray, **kwargs
) -> tuple[tuple, float]:
    """KKT implicit gradients of ``<w, x*>`` w.r.t. the six blocks ``d`` at a reference
    solution (``tests/reference.kkt_implicit_gradient``), with the first active-set
    tolerance of ``ACTIVE_TOLS`` at which every row is strictly complementary.

    Returns ``((dP, dq, dA, db, dG, dh), active_tol)``. Raises ValueError when no
    tolerance separates the active rows from the inactive ones (a degenerate instance).
    """
    from reference import kkt_implicit_gradient

    for tol in ACTIVE_TOLS:
        try:
            g = kkt_implicit_gradient(
                d["P"],
                d["q"],
                d["A"],
                d["b"],
                d["G"],
                d["h"],
                x,
                lam,
                nu,
                w,
                active_tol=tol,
                **kwargs,
            )
            return g, tol
        except ValueError:
            continue
    raise ValueError(f"degenerate at active_tol {ACTIVE_TOLS[-1]:g}")


def compute_reference(wl: Workload, log=print) -> dict:
    """Reference x and gradients of ``sum(w * x)`` for the first
    ``MAX_REFERENCE_INSTANCES`` instances of ``wl`` (all of them up to B = 64).

    Solution: :func:`clarabel_qp`. Gradients: implicit differentiation of the KKT
    conditions on the reference's active set (``tests/reference.kkt_implicit_gradient``),
    which checks strict complementarity with ``active_tol = 1e-7`` (relaxed to 1e-6,
    then 1e-5, where an instance is closer to degenerate; the tolerance used is kept).
    """
    from reference import relative_error, solve_qp_reference

    count = min(wl.batch or 1, MAX_REFERENCE_INSTANCES)
    xs, grads = [], {k: [] for k in wl.grad_wrt}
    statuses, tols, margins = [], [], []
    index = {"P": 0, "q": 1, "A": 2, "b": 3, "G": 4, "h": 5}
    start = time.perf_counter()
    crosscheck = None
    for i in range(count):
        d = wl.instance(i) if wl.batch else wl.data
        w = wl.weights[i] if wl.batch else wl.weights
        x, lam, nu, status = clarabel_qp(d["P"], d["q"], d["A"], d["b"], d["G"], d["h"])
        statuses.append(status)
        if i == 0 and wl.n <= 500:
            # The direct call must agree with the tests' CVXPY path.
            x_cvxpy, _, _ = solve_qp_reference(d["P"], d["q"], d["A"], d["b"], d["G"], d["h"])
            crosscheck = relative_error(x, x_cvxpy)
        slack = d["h"] - d["G"] @ x
        margins.append(float(np.min(np.maximum(slack, nu))))
        try:
            g, tol = kkt_reference_gradient(d, x, lam, nu, w)
        except ValueError as exc:
            raise RuntimeError(f"{wl.name}: instance {i} is {exc}") from exc
        tols.append(tol)
        xs.append(x)
        for k in wl.grad_wrt:
            grads[k].append(g[index[k]])
    ref = {"x": np.stack(xs) if wl.batch else xs[0]}
    for k in wl.grad_wrt:
        ref[f"grad_{k}"] = np.stack(grads[k]) if wl.batch else grads[k][0]
    info = {
        "statuses": sorted(set(statuses)),
        "active_tol_max": max(tols),
        "complementarity_min": min(margins),
        "seconds": time.perf_counter() - start,
        "crosscheck_vs_cvxpy": crosscheck,
        "instances": count,
    }
    log(f"  reference {wl.name}: {info}")
    ref["info"] = np.array(json.dumps(info))
    return ref


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def compare(wl: Workload, ref: dict, x: np.ndarray, grads: dict[str, np.ndarray]) -> dict:
    """Worst-instance relative errors of x and of the gradient.

    Per instance, ``gradient`` is ``||g - r|| / ||r||`` over all compared blocks
    concatenated (q, b, h and the per-instance matrices); ``grad_<k>`` is block k's
    share, ``||g_k - r_k|| / ||r||`` (a block whose reference is zero, e.g. dG and dh
    of an instance with no active inequality, would make a block-relative error
    meaningless). The reported numbers are the largest over the instances that have a
    reference (the first ``MAX_REFERENCE_INSTANCES``).

    P gradients are compared through their symmetric part ``(g + g')/2``: the objective
    depends on sym(P) only, and cvxpylayers returns the gradient of a PSD parameter on its
    upper triangle (off-diagonal entries doubled), which symmetrizes to the same matrix.
    """
    count = ref["x"].shape[0] if wl.batch else 1

    def rows(a: np.ndarray) -> list[np.ndarray]:
        return [a] if wl.batch is None else [a[i] for i in range(count)]

    out: dict = {"solution": max(_rel(a, b) for a, b in zip(rows(x), rows(ref["x"])))}
    if not grads:
        out["gradient"] = None
        return out
    mine, theirs = {}, {}
    for k, g in grads.items():
        if k == "P":
            g = 0.5 * (g + np.swapaxes(g, -1, -2))
        mine[k], theirs[k] = rows(g), rows(ref[f"grad_{k}"])
    worst = {k: 0.0 for k in grads}
    total = 0.0
    for i in range(count):
        r_norm = max(np.sqrt(sum(np.sum(theirs[k][i] ** 2) for k in grads)), 1e-12)
        diff2 = 0.0
        for k in grads:
            g, r = mine[k][i], theirs[k][i]
            d = float(np.linalg.norm(g - r)) if np.all(np.isfinite(g)) else float("inf")
            worst[k] = max(worst[k], d / r_norm)
            diff2 += d * d
        total = max(total, float(np.sqrt(diff2)) / r_norm)
    out["gradient"] = total
    out.update({f"grad_{k}": v for k, v in worst.items()})
    return out


def accuracy_status(errors: dict | None) -> str:
    if not errors:
        return "ok"
    worst = max(v for v in errors.values() if v is not None)
    if not np.isfinite(worst) or worst > INACCURATE_TOL:
        return "wrong"
    if worst > OK_TOL:
        return "inaccurate"
    return "ok"


# ------------------------------------------------------------------------ child


def _peak_mb() -> float:
    """This process's peak resident memory (MiB): VmHWM of /proc/self/status.

    Not ``ru_maxrss``: Linux keeps that across ``fork`` + ``exec``, so a child would
    report its parent's high-water mark whenever the parent was larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def time_construction(construct) -> dict:
    """Time ``construct()``: once cold, then warm where affordable (three more times when
    the cold one took under a second, since one of ~15 ms moves by a third with the
    machine's load; once more under 20 s). ``construct_s`` is the median warm time (the
    cold one when none was affordable); every time is kept."""
    t0 = time.perf_counter()
    construct()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(3 if cold < 1.0 else 1 if cold < 20.0 else 0):
        t0 = time.perf_counter()
        construct()
        warm.append(time.perf_counter() - t0)
    return {
        "construct_cold_s": cold,
        "construct_warm_s": warm,
        "construct_s": statistics.median(warm) if warm else cold,
    }


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # proxsuite's QPLayer allocates its gradients in the default dtype: make it float64.
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    wl = Workload.load(Path(args.workload))
    method = METHODS[args.method](args.threads)
    result: dict = {
        "method": method.name,
        "kind": method.kind,
        "workload": wl.name,
        "threads": torch.get_num_threads(),
        "status": "running",
        "phase": "start",
    }
    write_json(out, result)
    reason = method.unavailable(wl)
    if reason:
        result.update(status=f"unavailable: {reason}", phase="done")
        write_json(out, result)
        return
    ref = None
    if args.reference and Path(args.reference).exists():
        with np.load(args.reference) as f:
            ref = {k: f[k] for k in f.files}
    w = torch.from_numpy(np.ascontiguousarray(wl.weights))
    start = time.perf_counter()
    try:
        method.prepare()
        result["baseline_rss_mb"] = _rss_mb()
        result["phase"] = "construct"
        write_json(out, result)
        result.update(time_construction(lambda: method.construct(wl)))
        result["phase"] = "warm-up"
        write_json(out, result)

        def fresh() -> dict:
            return {
                k: torch.from_numpy(np.array(wl.data[k])).requires_grad_(method.has_backward)
                for k in wl.grad_wrt
            }

        def one_call():
            t = fresh()
            t0 = time.perf_counter()
            x = method.forward(t)
            t1 = time.perf_counter()
            grads = None
            if method.has_backward:
                loss = (w * x).sum()
                grads = method.backward(loss, [t[k] for k in wl.grad_wrt])
            t2 = time.perf_counter()
            return x, grads, t1 - t0, t2 - t1

        x, grads, f, b = one_call()
        result.update(first_forward_s=f, first_backward_s=b if method.has_backward else None)
        if method.has_backward and ref is not None:
            result["errors"] = compare(
                wl,
                ref,
                x.detach().numpy(),
                {k: g.detach().numpy() for k, g in zip(wl.grad_wrt, grads)},
            )
        del x, grads
        result["phase"] = "repeats"
        write_json(out, result)
        fwd, bwd = [], []
        last = f + b
        while len(fwd) < args.repeats and (time.perf_counter() - start) + last < 0.8 * args.budget:
            _, _, f, b = one_call()
            fwd.append(f)
            bwd.append(b)
            last = f + b
            result.update(timed_repeats=len(fwd))
            write_json(out, result)
        if not fwd:  # too slow to repeat within the budget: report the warm-up call
            fwd, bwd = [result["first_forward_s"]], [result["first_backward_s"] or 0.0]
            result["timed_from_warmup"] = True
        result["timed_repeats"] = len(fwd) if not result.get("timed_from_warmup") else 0
        # Every timed call, in order: a method that buys a setup after a few calls (the
        # layer's kept factors) shows its transition here, the median its steady state.
        result["forward_calls_s"], result["backward_calls_s"] = fwd, bwd
        result["forward_s"] = statistics.median(fwd)
        result["backward_s"] = statistics.median(bwd) if method.has_backward else None
        result["total_s"] = statistics.median([a + c for a, c in zip(fwd, bwd)])
        result["peak_mb"] = _peak_mb()
        result["peak_delta_mb"] = result["peak_mb"] - result["baseline_rss_mb"]
        result["status"] = accuracy_status(result.get("errors"))
        if method.kind == "yardstick":
            result["status"] = "n/a"
    except Exception as exc:  # record what happened, exactly
        result["status"] = f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"
        result["traceback"] = traceback.format_exc()[-3000:]
        result["peak_mb"] = _peak_mb()
    result["phase"] = "done"
    result["wall_s"] = time.perf_counter() - start
    write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one method on one workload (child).")
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--workload", required=True, help="a Workload .npz")
    parser.add_argument("--reference", default="", help="the reference .npz")
    parser.add_argument("--out", required=True, help="the result JSON")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        print("warning: OMP_NUM_THREADS differs from --threads", file=sys.stderr)
    run_child(args)


if __name__ == "__main__":
    main()
