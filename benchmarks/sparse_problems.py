"""Large sparse problems: this library's sparse backend against cvxpylayers (diffcp).

Problems (``tests/sparse_families.py``, seeded): a lasso written as a QP with 10,000
features; a long-only factor-model portfolio with 20,000 assets and 50 factors; an MPC
problem with horizon 100 and a 20-state system; the projection of 100,000 points onto a
chain-ordered set (isotonic: x_i <= x_{i+1}); and a 5,000-asset portfolio for the
construction target. Each (problem, method) runs in a fresh child process, which times
construction, one forward and one backward pass (of a fixed random linear loss) and
reports its peak resident memory (``ru_maxrss``, which includes the interpreter and the
imported libraries, given separately as the baseline). A child that runs past the
budget (10 minutes) is killed and reported as "did not finish". Solutions and
gradients of the two methods are compared where both finish.

Writes ``benchmarks/results/sparse.md`` (and ``sparse.json``) and prints the tables.

Usage: python benchmarks/sparse_problems.py [--budget 600] [--only isotonic,mpc]
           [--methods altdiff-sparse,cvxpylayers-diffcp] [--memory-limit-gb 14]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

PROBLEMS = {
    "isotonic-100k": ("isotonic", {"n": 100_000}),
    "portfolio-5k": ("portfolio", {"n_assets": 5_000, "n_factors": 50}),
    "mpc-100x20": ("mpc", {"horizon": 100, "n_x": 20}),
    "lasso-10k": ("lasso", {"n_features": 10_000}),
    "portfolio-20k": ("portfolio", {"n_assets": 20_000, "n_factors": 50}),
}
METHODS = ("altdiff-sparse", "cvxpylayers-diffcp")
REFERENCE = "clarabel"  # CVXPY + Clarabel at its default tolerances: the solution only


def build(problem: str):
    import numpy as np
    import sparse_families

    family, kwargs = PROBLEMS[problem]
    return getattr(sparse_families, family)(rng=np.random.default_rng(0), **kwargs)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(problem: str, method: str, out: Path) -> None:
    """Time one method on one problem; write a JSON record (updated after each phase)."""
    import numpy as np
    import torch

    record: dict = {"problem": problem, "method": method, "phase": "build"}

    def save() -> None:
        out.write_text(json.dumps(record, indent=1))

    fam = build(problem)
    record["n_variables"] = fam.n_variables
    record["baseline_mb"] = _maxrss_mb()
    record["phase"] = "construct"
    save()
    start = time.perf_counter()
    if method == REFERENCE:
        import cvxpy as cp

        for param, value in zip(fam.parameters, fam.values):
            param.value = value
        fam.problem.solve(solver=cp.CLARABEL)
        record["forward_s"] = time.perf_counter() - start
        x_ref = np.asarray(fam.variables[0].value)
        record["phase"] = "finite difference"
        save()
        fd, direction = _directional_fd(fam)
        record["peak_mb"] = _maxrss_mb()
        record["phase"] = "done"
        np.savez(out.with_suffix(".npz"), x=x_ref, fd=np.array(fd), **direction)
        save()
        return
    if method == "altdiff-sparse":
        from altdiff_modeling import AltDiffLayer

        layer = AltDiffLayer(fam.problem, fam.parameters, fam.variables)
        record["backend"] = layer.backend
    else:
        from cvxpylayers.torch import CvxpyLayer

        layer = CvxpyLayer(fam.problem, parameters=fam.parameters, variables=fam.variables)
    record["construct_s"] = time.perf_counter() - start
    record["phase"] = "forward"
    save()
    inputs = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in fam.values]
    start = time.perf_counter()
    outputs = layer(*inputs)
    record["forward_s"] = time.perf_counter() - start
    record["phase"] = "backward"
    save()
    weights = [torch.tensor(_loss_weights(o.shape)) for o in outputs]
    start = time.perf_counter()
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    record["backward_s"] = time.perf_counter() - start
    record["peak_mb"] = _maxrss_mb()
    record["phase"] = "done"
    arrays = {"x": outputs[0].detach().numpy()}
    for i in fam.grad_wrt:
        arrays[f"grad{i}"] = inputs[i].grad.numpy()
    np.savez(out.with_suffix(".npz"), **arrays)
    save()


FD_STEP = 1e-5
TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 500}


def _loss_weights(shape):
    import numpy as np

    return np.random.default_rng(1).standard_normal(shape)


def _directional_fd(fam) -> tuple[float, dict]:
    """Central finite difference, by tight Clarabel solves, of the loss ``sum(w * x)``
    along a random direction of the differentiated parameters (each scaled by the RMS of
    its parameter's value; step ``FD_STEP``)."""
    import cvxpy as cp
    import numpy as np

    rng = np.random.default_rng(2)
    # A direction scaled like each parameter (a portfolio's expected returns are ~1e-4).
    direction = {
        f"v{i}": rng.standard_normal(np.shape(fam.values[i]))
        * np.sqrt(np.mean(np.square(fam.values[i])))
        for i in fam.grad_wrt
    }
    weights = _loss_weights(fam.variables[0].shape)
    losses = []
    for sign in (1.0, -1.0):
        for i, (param, value) in enumerate(zip(fam.parameters, fam.values)):
            step = sign * FD_STEP * direction[f"v{i}"] if f"v{i}" in direction else 0.0
            param.value = np.asarray(value + step)
        fam.problem.solve(solver=cp.CLARABEL, **TIGHT)
        losses.append(float(np.sum(weights * fam.variables[0].value)))
    return (losses[0] - losses[1]) / (2 * FD_STEP), direction


def run_child(problem: str, method: str, runs: Path, budget: float, memory_gb: float) -> dict:
    out = runs / f"{problem}__{method}.json"
    for path in (out, out.with_suffix(".npz")):
        if path.exists():
            path.unlink()
    limit = int(memory_gb * 2**30)

    def cap_memory() -> None:  # keep a runaway child from taking the machine down
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, __file__, "--child", problem, method, str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, preexec_fn=cap_memory
        )
        try:
            rc, timed_out = proc.wait(timeout=budget), False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc, timed_out = proc.wait(), True
    record = json.loads(out.read_text()) if out.exists() else {}
    record.update(problem=problem, method=method, wall_s=time.perf_counter() - start)
    if timed_out:
        record["status"] = f"did not finish in {budget / 60:.0f} min (in {record.get('phase')})"
    elif rc != 0:
        record["status"] = f"failed (exit {rc}, in {record.get('phase')}): {_last_line(log)}"
    else:
        record["status"] = "ok"
    return record


def _last_line(log: Path) -> str:
    """The last line of a child's output (for a crash: the exception)."""
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output").replace("|", "/")


def compare(problem: str, runs: Path) -> dict:
    """Relative differences: each method's solution against Clarabel's, and the
    gradients of the two methods against each other."""
    import numpy as np

    def load(method: str) -> dict | None:
        path = runs / f"{problem}__{method}.npz"
        if not path.exists():
            return None
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    def rel(a, b) -> float:
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))

    ref, ours, theirs = load(REFERENCE), load(METHODS[0]), load(METHODS[1])
    out = {}
    for name, got in ((METHODS[0], ours), (METHODS[1], theirs)):
        if got is not None and ref is not None:
            out[f"x {name} vs clarabel"] = rel(got["x"], ref["x"].reshape(got["x"].shape))
    if ours is not None and theirs is not None:
        for key in ours:
            if key.startswith("grad"):
                out[f"{key} altdiff vs cvxpylayers"] = rel(ours[key], theirs[key])
    for name, got in ((METHODS[0], ours), (METHODS[1], theirs)):
        if got is None or ref is None or "fd" not in ref:
            continue
        derivative = sum(
            float(np.sum(got[f"grad{key[1:]}"] * ref[key])) for key in ref if key.startswith("v")
        )
        fd = float(ref["fd"])
        out[f"directional derivative {name} vs finite difference"] = abs(derivative - fd) / abs(fd)
    if problem.startswith("isotonic") and ours is not None:
        out["grad0 altdiff vs exact"] = _isotonic_gradient_error(problem, ours["grad0"])
    return out


def _isotonic_gradient_error(problem: str, grad) -> float:
    """The exact gradient of an isotonic projection: the loss weights averaged over
    each block of equal values of the (PAVA) solution."""
    import numpy as np
    from sklearn.isotonic import isotonic_regression

    fam = build(problem)
    x = isotonic_regression(fam.values[0])
    weights = np.random.default_rng(1).standard_normal(x.shape)
    breaks = np.flatnonzero(np.abs(np.diff(x)) > 1e-9) + 1
    exact = np.empty_like(weights)
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, x.size]):
        exact[lo:hi] = weights[lo:hi].mean()
    return float(np.linalg.norm(grad - exact) / np.linalg.norm(exact))


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def report(records: list[dict], comparisons: dict, args: argparse.Namespace) -> str:
    import torch
    from _common import markdown_table

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        "# Large sparse problems",
        "",
        f"`python benchmarks/sparse_problems.py` at commit {commit}; {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}, float64, load average at writing "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. One call each (construction, "
        "forward, backward of a random linear loss) in a fresh process; budget "
        f"{args.budget / 60:.0f} min and {args.memory_limit_gb:g} GB of address space "
        "per process. Peak = ru_maxrss of the process (baseline = after imports and "
        "building the CVXPY problem).",
        "",
    ]
    header = [
        "problem",
        "variables",
        "method",
        "construct s",
        "forward s",
        "backward s",
        "fwd + bwd s",
        "total s",
        "peak MB",
        "baseline MB",
        "status",
    ]
    rows = []
    for r in records:
        fb = None
        if r.get("forward_s") is not None and r.get("backward_s") is not None:
            fb = r["forward_s"] + r["backward_s"]
        total = fb + r["construct_s"] if fb is not None else None
        rows.append(
            [
                r["problem"],
                r.get("n_variables", "-"),
                r["method"],
                fmt(r.get("construct_s")),
                fmt(r.get("forward_s")),
                fmt(r.get("backward_s")),
                fmt(fb),
                fmt(total),
                fmt(r.get("peak_mb"), 4),
                fmt(r.get("baseline_mb"), 4),
                r.get("status", "-").replace("|", "/"),
            ]
        )
    lines += [markdown_table(header, rows), ""]
    lines += [
        "## Agreement (relative 2-norm differences)",
        "",
        "Solutions against CVXPY + Clarabel (default tolerances); gradients of the two "
        "layers against each other (cvxpylayers runs SCS at its default, looser, "
        "tolerance); each layer's derivative of the loss along a random direction of the "
        "parameters (scaled like each parameter) against a central finite difference "
        f"(step {FD_STEP:g}) of two "
        "Clarabel solves at tolerance 1e-10; and for the isotonic projection the whole "
        "gradient against its exact value.",
        "",
    ]
    agree_rows = [[p, k, f"{v:.2g}"] for p, c in comparisons.items() for k, v in c.items()]
    lines += [
        markdown_table(["problem", "quantity", "relative difference"], agree_rows or [["-"] * 3])
    ]
    lines += ["", "## Targets", ""]
    by = {(r["problem"], r["method"]): r for r in records}
    target_rows = []
    iso = by.get(("isotonic-100k", "altdiff-sparse"), {})
    if iso.get("status") == "ok":
        fb = iso["forward_s"] + iso["backward_s"]
        target_rows.append(
            [
                "100,000-point problem: forward + backward < 10 s",
                fmt(fb),
                "met" if fb < 10 else "not met",
            ]
        )
        peak = iso["peak_mb"] / 1024
        target_rows.append(
            [
                "100,000-point problem: peak memory < 4 GB",
                f"{peak:.2f} GB",
                "met" if peak < 4 else "not met",
            ]
        )
    small = by.get(("portfolio-5k", "altdiff-sparse"), {})
    if small.get("construct_s") is not None:
        c = small["construct_s"]
        target_rows.append(
            [
                "construction of a 5,000-variable sparse layer < 5 s",
                fmt(c),
                "met" if c < 5 else "not met",
            ]
        )
    for problem in PROBLEMS:
        ours, theirs = by.get((problem, METHODS[0]), {}), by.get((problem, METHODS[1]), {})
        if ours.get("status") != "ok":
            continue
        ours_total = ours["construct_s"] + ours["forward_s"] + ours["backward_s"]
        if theirs.get("status") == "ok":
            their_total = theirs["construct_s"] + theirs["forward_s"] + theirs["backward_s"]
            ratio = their_total / ours_total
            verdict = "met" if ratio >= 10 else "not met"
            target_rows.append(
                [f"{problem}: >= 10x faster than cvxpylayers end to end", f"{ratio:.1f}x", verdict]
            )
        elif theirs:
            target_rows.append(
                [
                    f"{problem}: >= 10x faster than cvxpylayers end to end",
                    f"cvxpylayers: {theirs.get('status')}",
                    "not comparable",
                ]
            )
    lines += [markdown_table(["target", "measured", "verdict"], target_rows), ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per child")
    parser.add_argument("--only", default="", help="comma-separated problem names")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--memory-limit-gb", type=float, default=14.0)
    parser.add_argument("--report-only", action="store_true", help="tables from saved runs")
    args = parser.parse_args()
    results = HERE / "results"
    runs = results / "runs" / "sparse"
    runs.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((results / "sparse.json").read_text())
        records = saved["records"]
        for record in records:
            log = runs / f"{record['problem']}__{record['method']}.log"
            if record.get("status", "").startswith("failed") and log.exists():
                head = record["status"].split(":")[0]
                record["status"] = f"{head}: {_last_line(log)}"
        problems = dict.fromkeys(r["problem"] for r in records)
        comparisons = {p: compare(p, runs) for p in problems}
        text = report(records, comparisons, args)
        (results / "sparse.md").write_text(text)
        print(text)
        return
    problems = [p for p in args.only.split(",") if p] or list(PROBLEMS)
    methods = [m for m in args.methods.split(",") if m] + [REFERENCE]
    records, comparisons = [], {}
    for problem in problems:
        for method in methods:
            if problem == "portfolio-5k" and method == METHODS[1]:
                continue  # the construction target concerns this library only
            record = run_child(problem, method, runs, args.budget, args.memory_limit_gb)
            records.append(record)
            print(
                time.strftime("%H:%M:%S"),
                problem,
                method,
                record.get("status"),
                {
                    k: round(record[k], 3)
                    for k in ("construct_s", "forward_s", "backward_s", "peak_mb")
                    if k in record
                },
                flush=True,
            )
        comparisons[problem] = compare(problem, runs)
        text = report(records, comparisons, args)
        (results / "sparse.md").write_text(text)
        (results / "sparse.json").write_text(
            json.dumps({"records": records, "comparisons": comparisons}, indent=1)
        )
    print(text)


if __name__ == "__main__":
    main()
