"""Layer families timed as training runs: this library against cvxpylayers, QPLayer, qpth.

For every case of ``benchmarks/layer_families.py`` (families a-g: dense QPs over four
distributions, LP layers, parameters in the constraint matrix, portfolios with abs/neg
costs, tiny problems called 100 times per step, single large and large sparse problems,
second-order cone layers)
this script draws every call's parameter values once (cached), computes the reference
(``benchmarks/family_reference.py``), then runs every method at every thread count in a
fresh child process (``benchmarks/family_child.py``) with a time budget. A method that
fails or runs out of time gets a row that says so; one that cannot take a case (a QP
solver on a second-order cone layer) gets an "unavailable" row.

Methods: ``altdiff-layer`` (AltDiffLayer over the CVXPY problem, library defaults),
``altdiff-solve_qp`` (solve_qp on the raw QP), ``proxsuite-qplayer`` and ``qpth`` (raw
QP), ``cvxpylayers-diffcp`` and ``cvxpylayers-moreau`` (the CVXPY problem), and the
layer with each explicit backward method (``altdiff-layer-gmres``, ``-direct``,
``-fixed_point``; at the first thread count only) for the amplification report.

Writes ``benchmarks/results/families.md`` and ``.json`` and one plot per family,
``families-<family>.png`` (``--quick``: ``families-quick*``); ``--publish`` copies them
to ``docs/results/``.

Usage: python benchmarks/families.py [--quick] [--only a,b-path] [--methods qpth,...]
           [--threads 1,2] [--budget 300] [--resume] [--report-only] [--publish]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _child import child_env, reusable, run_budgeted, thread_env

# The parent's reference solves run on one thread (their time is not measured), and the
# machine is shared with the children it starts.
os.environ.update(thread_env(1))

import numpy as np
from _common import PUBLISHED, environment, publish, results_dir
from family_child import ALL_METHODS, BACKWARD_VARIANTS
from family_reference import compute_reference, draw
from family_report import plot_family, report
from layer_families import FAMILY_TITLES, Case, all_cases


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="validation sizes")
    parser.add_argument(
        "--only", default="", help="comma-separated case-name prefixes (a, b-path, ...)"
    )
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    parser.add_argument(
        "--threads", default="", help="comma-separated thread counts (1,2; quick 1)"
    )
    parser.add_argument("--budget", type=float, default=None, help="s per run (300; quick 90)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs")
    parser.add_argument("--report-only", action="store_true", help="tables from saved runs")
    parser.add_argument("--publish", action="store_true", help="copy the outputs to docs/results/")
    args = parser.parse_args()
    args.threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    args.budget = args.budget or (90.0 if args.quick else 300.0)
    args.methods = [m for m in args.methods.split(",") if m] or list(ALL_METHODS)
    unknown = set(args.methods) - set(ALL_METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(ALL_METHODS)}")
    return args


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def definitions_hash() -> str:
    """Cached draws and references belong to the case definitions that made them."""
    digest = hashlib.sha256()
    for name in ("layer_families.py", "family_reference.py"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:10]


def prepare(case: Case, cache: Path) -> tuple[Path, Path, dict]:
    """The case's draws and reference (computed once, then cached)."""
    data_path, ref_path = cache / f"{case.name}.npz", cache / f"{case.name}.ref.npz"
    problem = None
    if not data_path.exists():
        t = time.perf_counter()
        problem = case.build()
        np.savez(data_path, **draw(case, problem))
        log(f"drew {case.name} ({case.calls} calls) in {time.perf_counter() - t:.1f} s")
    if not ref_path.exists():
        problem = problem or case.build()
        with np.load(data_path) as f:
            data = {k: f[k] for k in f.files}
        np.savez(ref_path, **compute_reference(case, problem, data, log=log))
    with np.load(ref_path) as f:
        info = json.loads(str(f["info"]))
    return data_path, ref_path, info


def runs_for(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(method, threads) pairs: the backward-method variants at the first count only."""
    pairs = []
    for threads in args.threads:
        for m in args.methods:
            if m in BACKWARD_VARIANTS and threads != args.threads[0]:
                continue
            pairs.append((m, threads))
    return pairs


def run_case(case: Case, entry: dict, args, cache: Path, runs: Path) -> None:
    entry["meta"] = {
        "family": case.family,
        "description": case.description,
        "distribution": case.distribution,
        "batch": case.batch,
        "timed_calls": case.timed_calls,
        "calls_per_step": case.calls_per_step,
    }
    try:
        data_path, ref_path, info = prepare(case, cache)
    except Exception as exc:  # a case that cannot be prepared is reported, not fatal
        entry["meta"]["error"] = f"reference failed: {type(exc).__name__}: {exc}"[:400]
        log(f"{case.name}: {entry['meta']['error']}")
        return
    entry["meta"]["reference"] = info
    results = entry.setdefault("runs", {})
    for method, threads in runs_for(args):
        key = f"{method}@{threads}"
        out = runs / f"{case.name}__{method}__t{threads}.json"
        previous = reusable(out) if args.resume else None
        if previous is not None:
            results[key] = previous
            continue
        cmd = [
            sys.executable,
            str(HERE / "family_child.py"),
            "--case",
            case.name,
            "--method",
            method,
            "--data",
            str(data_path),
            "--reference",
            str(ref_path),
            "--out",
            str(out),
            "--threads",
            str(threads),
            "--budget",
            str(args.budget),
        ]
        if args.quick:
            cmd.append("--quick")
        result = run_budgeted(cmd, out, args.budget, method, child_env(threads, HERE.parent))
        results[key] = result
        err = result.get("errors") or {}
        log(
            f"{case.name:30s} {key:30s} median {result.get('total_median_s')} "
            f"max {result.get('total_max_s')} grad err {err.get('gradient')} | {result.get('status')}"
        )


def write_outputs(
    records: dict, args, tag: str, command: str, publish_to: Path | None = None
) -> None:
    """The JSON, the plots and the report in ``results/``; with ``publish_to``, the plots
    and a report whose image links are relative to the docs page that includes it."""
    out = results_dir()
    env = environment()
    settings = {
        "quick": args.quick,
        "threads": args.threads,
        "budget": args.budget,
        "command": command,
    }
    (out / f"{tag}.json").write_text(
        json.dumps({"env": env, "settings": settings, "records": records}, indent=1, default=float)
    )
    plots = []
    for family in FAMILY_TITLES:
        if not any(e.get("meta", {}).get("family") == family for e in records.values()):
            continue
        path = out / f"{tag}-{family}.png"
        try:
            plot_family(records, family, path)
        except Exception as exc:  # the tables matter more than the figures
            log(f"plot {family} failed: {type(exc).__name__}: {exc}")
        if path.exists():
            plots.append(path.name)
    (out / f"{tag}.md").write_text(report(records, env, settings, plots))
    if publish_to is not None:
        publish(*plots)
        # the docs page that includes the table lives one folder above docs/results/
        text = report(records, env, settings, [f"results/{p}" for p in plots])
        (publish_to / f"{tag}.md").write_text(text)
        print(f"published {publish_to / (tag + '.md')}")


def main() -> None:
    args = parse_args()
    tag = "families-quick" if args.quick else "families"
    command = "python benchmarks/families.py " + " ".join(sys.argv[1:])
    out = results_dir()
    mode = "quick" if args.quick else "full"
    cache = out / "cache" / f"families-{mode}-{definitions_hash()}"
    runs = out / "runs" / f"families-{mode}"
    cache.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    records: dict = {}
    raw = out / f"{tag}.json"
    if (args.report_only or args.resume) and raw.exists():
        saved = json.loads(raw.read_text())
        records = saved["records"]
        if args.report_only:  # the report describes the run that made the records
            args.threads, args.budget = saved["settings"]["threads"], saved["settings"]["budget"]
            command = saved["settings"]["command"]
    prefixes = [p for p in args.only.split(",") if p]
    start = time.perf_counter()
    if not args.report_only:
        log(
            f"{mode} run: threads {args.threads}, budget {args.budget:.0f} s, {len(args.methods)} methods"
        )
        for case in all_cases(args.quick):
            if prefixes and not any(case.name.startswith(p) for p in prefixes):
                continue
            run_case(case, records.setdefault(case.name, {}), args, cache, runs)
            write_outputs(records, args, tag, command)
    order = [c.name for c in all_cases(args.quick)]
    records = {
        k: records[k]
        for k in sorted(records, key=lambda k: order.index(k) if k in order else len(order))
    }
    write_outputs(records, args, tag, command, PUBLISHED if args.publish else None)
    log(f"wrote {out / (tag + '.md')} and its plots in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
