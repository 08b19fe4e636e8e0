"""One method on one case of ``benchmarks/layer_families.py``, timed as a training run.

Started by ``benchmarks/families.py`` in a fresh process per (case, method, threads):
``python benchmarks/family_child.py --case NAME --method M --data D.npz --reference
R.npz --out O.json --threads T --budget S [--quick]``.

The child builds the method (timed: the CVXPY problem and the layer for CVXPY-based
methods, the autograd function for raw-QP ones), then makes every call of the case in
order (one warm-up call, then the timed ones), each with new leaf tensors of that call's
parameter values: forward, then ``torch.autograd.grad`` of ``sum(w * x)`` with that
call's weights w. It records every call's times, the library's statuses, iterations,
backward statuses and warnings, the largest gradient amplification ``||dL/dtheta|| / ||w||`` per instance, and
the errors against the reference on the calls that have one. It writes its JSON after
every call, so that a parent that kills it at the budget keeps what finished.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: F401  (puts tests/ on sys.path)
import numpy as np
from _child import write_json
from layer_families import Case, get_case

#: The library's backward methods (``solver_args['backward_method']``); the plain
#: ``altdiff-layer`` uses the default, "auto".
BACKWARD_VARIANTS = {
    "altdiff-layer-gmres": "gmres",
    "altdiff-layer-direct": "direct",
    "altdiff-layer-fixed_point": "fixed_point",
}
LIBRARY = ("altdiff-layer", "altdiff-solve_qp")
PEERS = ("proxsuite-qplayer", "qpth", "cvxpylayers-diffcp", "cvxpylayers-moreau")
ALL_METHODS = (*LIBRARY, *PEERS, *BACKWARD_VARIANTS)
#: The library never raises on an unsolved instance here: the run records the status
#: and goes on, as the statuses are part of what is measured.
LIBRARY_ARGS = {"on_failure": "warn"}
#: A reference below this fraction of its natural scale vanishes, and errors are then
#: measured relative to that scale (a relative error of almost 0 against almost 0 says
#: nothing): a gradient against the incoming gradient's norm (an LP's solution is
#: locally constant in its costs), a solution against the case's median reference
#: solution norm (a ReLU layer whose outputs are all clipped to 0).
VANISHING = 1e-10


class FamilyMethod:
    """One method's way of building and calling a layer for a case."""

    kind = "peer"

    def __init__(self, name: str, threads: int) -> None:
        self.name, self.threads = name, threads

    def unavailable(self, case: Case) -> str | None:
        return None

    def prepare(self) -> None:
        """Imports (untimed)."""

    def construct(self, case: Case) -> None:
        raise NotImplementedError

    def forward(self, tensors: list):
        """Outputs ``(x, info)``: the user's variable and the library's SolveInfo (or None)."""
        raise NotImplementedError


class LayerMethod(FamilyMethod):
    """``AltDiffLayer`` over the case's CVXPY problem (optionally one backward method)."""

    kind = "library"

    def prepare(self) -> None:
        from peers import AltDiffLayerMethod

        self.inner = AltDiffLayerMethod(self.threads)
        self.inner.prepare()
        self.args = dict(LIBRARY_ARGS)
        if self.name in BACKWARD_VARIANTS:
            self.args["backward_method"] = BACKWARD_VARIANTS[self.name]

    def construct(self, case: Case) -> None:
        lp = case.build()
        self.inner.build(lp.problem, lp.parameters, [lp.variable], solver_args=self.args)

    def forward(self, tensors: list):
        (x,), info = self.inner.layer(*tensors, return_info=True)
        return x, info


class CvxpyLayersFamily(FamilyMethod):
    """cvxpylayers' ``CvxpyLayer`` over the case's CVXPY problem (diffcp or Moreau)."""

    def prepare(self) -> None:
        from peers import METHODS

        self.inner = METHODS[self.name](self.threads)
        self.inner.prepare()

    def unavailable(self, case: Case) -> str | None:
        from peers import METHODS

        return METHODS[self.name](self.threads).unavailable(None)

    def construct(self, case: Case) -> None:
        lp = case.build()
        self.inner.build(lp.problem, lp.parameters, [lp.variable])

    def forward(self, tensors: list):
        (x,) = self.inner.call(tensors)
        return x, None


class RawQPMethod(FamilyMethod):
    """A raw-QP solver on the case's QP written in torch (``Case.qp``): qpth, QPLayer,
    or this library's ``solve_qp``."""

    def __init__(self, name: str, threads: int) -> None:
        super().__init__(name, threads)
        self.kind = "library" if name == "altdiff-solve_qp" else "peer"

    def unavailable(self, case: Case) -> str | None:
        if case.conic is not None:
            return "second-order cones: a QP solver cannot take them (no raw-QP form)"
        if case.qp is None:
            return "no raw-QP form: the large sparse problems are written in CVXPY only"
        return None

    def prepare(self) -> None:
        from peers import METHODS

        self.inner = METHODS[self.name](self.threads)
        self.inner.prepare()

    def construct(self, case: Case) -> None:
        self.case = case
        if self.name != "altdiff-solve_qp":
            self.inner.fn = self.inner.new_function()

    def forward(self, tensors: list):
        d = self.case.qp(tensors)
        info = None
        if self.name == "altdiff-solve_qp":
            blocks = [None if v.shape[-2 if k == "A" else -1] == 0 else v for k, v in d.items()]
            args = dict(zip(d, blocks))
            x, info = self.inner.solve_qp(
                args["P"],
                args["q"],
                args["A"],
                args["b"],
                args["G"],
                args["h"],
                solver_args=LIBRARY_ARGS,
                return_info=True,
            )
        else:
            x = self.inner.solve(d)
        x = x.reshape(-1, x.shape[-1])
        out = self.case.qp_output(x)
        return (out if self.case.batch else out[0]), info


def make_method(name: str, threads: int) -> FamilyMethod:
    if name == "altdiff-layer" or name in BACKWARD_VARIANTS:
        return LayerMethod(name, threads)
    if name.startswith("cvxpylayers"):
        return CvxpyLayersFamily(name, threads)
    return RawQPMethod(name, threads)


# ----------------------------------------------------------------------------- errors


def _norm(arrays) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays)))


def _finite(arrays) -> bool:
    return all(np.all(np.isfinite(a)) for a in arrays)


def scaled_error(a: list[np.ndarray], r: list[np.ndarray], typical: float) -> float:
    """``||a - r|| / ||r||`` over all the arrays; ``||a - r|| / typical`` where the
    reference vanishes (``||r||`` below ``VANISHING * typical``)."""
    if any(np.shape(x) != np.shape(y) for x, y in zip(a, r)):
        raise ValueError(
            f"shape mismatch: {[np.shape(x) for x in a]} vs {[np.shape(y) for y in r]}"
        )
    if not _finite(a):
        return float("inf")
    diff = _norm([x - y for x, y in zip(a, r)])
    scale = _norm(r)
    return diff / (scale if scale > VANISHING * typical else max(typical, 1e-300))


def gradient_error(g: list[np.ndarray], r: list[np.ndarray], w: np.ndarray) -> float:
    """The gradient's error, relative to ``||w||`` where the reference vanishes."""
    return scaled_error(g, r, float(np.linalg.norm(w)))


class Errors:
    """Worst errors over the reference pairs a method has answered."""

    def __init__(self, case: Case, ref: dict | None) -> None:
        self.case, self.ref = case, ref
        self.by_call: dict[int, list[int]] = {}
        if ref is not None:
            for j, (c, _) in enumerate(ref["pairs"]):
                self.by_call.setdefault(int(c), []).append(j)
        self.solution: list[float] = []
        self.gradient: list[float] = []
        #: The scale a vanishing reference solution is measured against.
        self.typical_x = (
            float(np.median([np.linalg.norm(x) for x in ref["x"]])) if ref is not None else 1.0
        )

    def add(self, call: int, x: np.ndarray, grads: list[np.ndarray], w: np.ndarray) -> None:
        for j in self.by_call.get(call, []):
            i = int(self.ref["pairs"][j][1])
            xi = x[i] if self.case.batch else x
            gi = [g[i] for g in grads] if self.case.batch else grads
            wi = w[i] if self.case.batch else w
            self.solution.append(scaled_error([xi], [self.ref["x"][j]], self.typical_x))
            if "fd" in self.ref:  # directional: <g, dir> against a finite difference
                count = len(gi)
                derivative = sum(
                    float(np.sum(gi[k] * self.ref[f"dir{k}"][j])) for k in range(count)
                )
                fd = float(self.ref["fd"][j])
                self.gradient.append(abs(derivative - fd) / max(abs(fd), 1e-300))
            elif bool(self.ref["valid"][j]):
                r = [self.ref[f"g{k}"][j] for k in range(len(gi))]
                self.gradient.append(gradient_error(gi, r, wi))

    def summary(self) -> dict | None:
        if self.ref is None:
            return None
        return {
            "solution": max(self.solution) if self.solution else None,
            "gradient": max(self.gradient) if self.gradient else None,
            "kind": "directional" if "fd" in self.ref else "relative",
            "pairs": len(self.solution),
            "gradient_pairs": len(self.gradient),
        }


def amplification(case: Case, grads: list[np.ndarray], w: np.ndarray) -> float:
    """The largest ``||dL/dtheta_i|| / ||w_i||`` over the call's instances."""
    if not case.batch:
        return _norm(grads) / max(float(np.linalg.norm(w)), 1e-300)
    per = np.sqrt(sum(np.sum(np.square(g).reshape(g.shape[0], -1), axis=1) for g in grads))
    w_norm = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
    return float(np.max(per / np.maximum(w_norm, 1e-300)))


# ----------------------------------------------------------------------------- child


def run(args: argparse.Namespace) -> None:
    import torch
    from peers import _peak_mb, _rss_mb, accuracy_status, time_construction

    torch.set_num_threads(args.threads)
    # proxsuite's QPLayer allocates its gradients in the default dtype: make it float64.
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    case = get_case(args.case, args.quick)
    method = make_method(args.method, args.threads)
    result: dict = {
        "method": method.name,
        "kind": method.kind,
        "case": case.name,
        "family": case.family,
        "threads": torch.get_num_threads(),
        "status": "running",
        "phase": "start",
        "timed_calls_asked": case.timed_calls,
    }
    write_json(out, result)
    reason = method.unavailable(case)
    if reason:
        result.update(status=f"unavailable: {reason}", phase="done")
        write_json(out, result)
        return
    with np.load(args.data) as f:
        data = {k: f[k] for k in f.files}
    ref = None
    if args.reference and Path(args.reference).exists():
        with np.load(args.reference) as f:
            ref = {k: f[k] for k in f.files}
    count = sum(1 for k in data if k.startswith("p"))
    start = time.perf_counter()
    errors = Errors(case, ref)
    statuses: Counter = Counter()
    backward_statuses: Counter = Counter()
    caught_messages: Counter = Counter()
    fwd, bwd, amps, iters, bw_iters, unsolved_calls = [], [], [], [], [], 0
    try:
        method.prepare()
        result["baseline_rss_mb"] = _rss_mb()
        result["phase"] = "construct"
        write_json(out, result)
        result.update(time_construction(lambda: method.construct(case)))
        result["phase"] = "calls"
        write_json(out, result)
        last = 0.0
        for call in range(case.calls):
            if call and (time.perf_counter() - start) + last > 0.8 * args.budget:
                result["stopped"] = f"budget: {call - 1} of {case.timed_calls} timed calls"
                break
            tensors = [
                torch.from_numpy(np.array(data[f"p{k}"][call])).requires_grad_()
                for k in range(count)
            ]
            w = torch.from_numpy(np.array(data["w"][call]))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                x, info = method.forward(tensors)
                t1 = time.perf_counter()
                grads = torch.autograd.grad((w * x).sum(), tensors, allow_unused=True)
                t2 = time.perf_counter()
            grads_np = [
                np.zeros(tuple(p.shape)) if g is None else g.detach().numpy()
                for g, p in zip(grads, tensors)
            ]
            for message in caught:
                caught_messages[f"{message.category.__name__}: {str(message.message)[:160]}"] += 1
            if info is not None:
                statuses.update(info.status)
                unsolved_calls += any(s != "solved" for s in info.status)
                iters.append(int(info.iterations.max()) if info.iterations is not None else None)
                bw_iters.append(int(info.backward_iterations))
                backward_statuses.update(info.backward_status)
            amps.append(amplification(case, grads_np, w.numpy()))
            errors.add(call, x.detach().numpy(), grads_np, w.numpy())
            last = t2 - t0
            if call == 0:
                result["first_call_s"] = last
            else:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            result["calls_done"] = call + 1
            if call % max(1, case.calls // 20) == 0 or call == case.calls - 1:
                result["forward_calls_s"], result["backward_calls_s"] = fwd, bwd
                write_json(out, result)
        totals = [a + b for a, b in zip(fwd, bwd)]
        result["forward_calls_s"], result["backward_calls_s"] = fwd, bwd
        result["timed_calls"] = len(totals)
        if totals:
            result["forward_median_s"] = statistics.median(fwd)
            result["backward_median_s"] = statistics.median(bwd)
            result["total_median_s"] = statistics.median(totals)
            result["total_max_s"] = max(totals)
            steps = len(totals) // case.calls_per_step
            if case.calls_per_step > 1 and steps:
                per = case.calls_per_step
                step_times = [sum(totals[s * per : (s + 1) * per]) for s in range(steps)]
                result["step_median_s"] = statistics.median(step_times)
        result["peak_mb"] = _peak_mb()
        result["peak_delta_mb"] = result["peak_mb"] - result["baseline_rss_mb"]
        result["errors"] = errors.summary()
        result["amplification_max"] = max(amps) if amps else None
        result["amplification_calls"] = amps
        if method.kind == "library":
            result["statuses"] = dict(statuses)
            result["unsolved_calls"] = unsolved_calls
            result["iterations_max"] = max((i for i in iters if i is not None), default=None)
            result["backward_iterations"] = bw_iters
            result["backward_statuses"] = dict(backward_statuses)
        result["warnings"] = dict(caught_messages)
        accuracy = {
            k: v for k, v in (result["errors"] or {}).items() if k in ("solution", "gradient")
        }
        result["status"] = accuracy_status({k: v for k, v in accuracy.items() if v is not None})
        if len(totals) < case.timed_calls:
            result["status"] += f" ({len(totals)} of {case.timed_calls} timed calls in the budget)"
    except Exception as exc:  # record what happened, exactly
        result["status"] = f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"
        result["traceback"] = traceback.format_exc()[-3000:]
        result["peak_mb"] = _peak_mb()
    result["phase"] = "done"
    result["wall_s"] = time.perf_counter() - start
    write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one method on one family case (child).")
    parser.add_argument("--case", required=True)
    parser.add_argument("--method", required=True, choices=ALL_METHODS)
    parser.add_argument("--data", required=True, help="the draws .npz")
    parser.add_argument("--reference", default="", help="the reference .npz")
    parser.add_argument("--out", required=True, help="the result JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds")
    parser.add_argument("--quick", action="store_true", help="the validation sizes")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
