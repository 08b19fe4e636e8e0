"""Maros-Meszaros (dense subset): this library's solve_qp beside OSQP, proxqp, Clarabel, piqp.

Every problem of the data folder (default ``../shared/data/maros_meszaros_dense``
relative to the repository root; ``--data``) is solved by every solver at every
tolerance (1e-6 and 1e-3: eps_abs = tol, eps_rel = 0; ``benchmarks/mm_solvers.py``;
this library twice, ``altdiff`` on dense tensors and ``altdiff-sparse`` on
scipy.sparse matrices),
each solve in its own process on one thread, under a time cap (``--cap``, 100 s). The
residuals are recomputed by qpbenchmark's formulas in the problem's own units from
each solver's x and multipliers (``tests/mm_problems.py``); a solve succeeds when
the solver reported success, took at most the cap, and all three residuals are within
the tolerance. A reported success with a residual above it is a false "solved".

For every problem this library solves (each of its two forms), a further process
differentiates a fixed random
linear loss ``<w, x>`` w.r.t. q, b and h (the bounds are rows of h) and compares the
gradient with implicit differentiation of the KKT conditions at a tight reference
solution (Clarabel at 1e-12, else piqp at 1e-10), recording the backward's iterations,
time and warnings.

Writes ``benchmarks/results/maros_meszaros.md`` and ``.json`` (``--quick``:
``maros_meszaros-quick.*``, a handful of small problems with a 10 s cap); ``--publish``
copies them to ``docs/results/``.

Usage: python benchmarks/maros_meszaros.py [--quick] [--data DIR] [--only HS21,QAFIRO]
           [--solvers altdiff,osqp] [--tols 1e-6,1e-3] [--cap 100]
           [--resume] [--report-only] [--publish]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the problems' loader lives with the tests
from _child import child_env, reusable, run_budgeted, thread_env, write_json

os.environ.update(thread_env(1))  # before numpy: the reference solves run here too

import mm_problems
import numpy as np
from mm_solvers import LIBRARY_MATRICES, SOLVERS, library_inputs, library_settings

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "maros_meszaros_dense"
QUICK_PROBLEMS = ("HS21", "HS35", "HS51", "HS76", "GENHS28", "QAFIRO")
#: Seconds a child may spend on imports and loading beyond the solve's cap.
STARTUP_S = 60.0
#: Gradient agreement with the KKT reference that counts as exact (issue 21).
GRADIENT_TOL = 1e-6
#: "Well under a second": the small problems the report names for the test suite.
SMALL_S = 0.25


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_PROBLEMS)}")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of .mat problems")
    parser.add_argument("--only", default="", help="comma-separated problem names")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--tols", default="1e-6,1e-3")
    parser.add_argument("--cap", type=float, default=None, help="s per solve (100; quick 10)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs")
    parser.add_argument("--report-only", action="store_true", help="tables from saved runs")
    parser.add_argument("--publish", action="store_true", help="copy the outputs to docs/results/")
    args = parser.parse_args()
    args.cap = args.cap or (10.0 if args.quick else 100.0)
    args.tols = [float(t) for t in args.tols.split(",")]
    args.solvers = [s for s in args.solvers.split(",") if s]
    unknown = set(args.solvers) - set(SOLVERS)
    if unknown:
        parser.error(f"unknown solvers {sorted(unknown)}; known: {', '.join(SOLVERS)}")
    return args


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def loss_weights(name: str, n: int) -> np.ndarray:
    """The fixed random loss of a problem's backward check (seeded by its name)."""
    return np.random.default_rng(zlib.crc32(name.encode())).standard_normal(n)


# ----------------------------------------------------------------------------- children


def child_solve(args: argparse.Namespace) -> None:
    """One solver on one problem: the solve, its residuals and whether it succeeded."""
    out = Path(args.out)
    record: dict = {
        "problem": args.problem,
        "solver": args.solver,
        "tol": args.tol,
        "phase": "load",
    }
    write_json(out, record)
    p = mm_problems.load(Path(args.data) / f"{args.problem}.mat")
    record.update(phase="solve", sizes=p.sizes())
    write_json(out, record)
    if args.solver in LIBRARY_MATRICES:
        import torch

        torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solve = SOLVERS[args.solver](p, args.tol, args.cap)
        record.update(
            found=solve.found,
            status=solve.status,
            outcome=solve.outcome,
            seconds=solve.seconds,
            iterations=solve.iterations,
            warnings=sorted({str(w.message)[:200] for w in caught}),
        )
        if solve.x is not None and np.all(np.isfinite(solve.x)):
            record["residuals"] = mm_problems.residuals(p, solve.x, solve.y, solve.z, solve.z_box)
    except Exception as exc:  # a solver that raises is a failure with its reason
        record.update(
            found=False, status=f"{type(exc).__name__}: {str(exc)[:300]}", outcome="exception"
        )
        record["traceback"] = traceback.format_exc()[-2000:]
    record["phase"] = "done"
    write_json(out, record)


def _kkt(P, q, A, b, G, h, x, lam, nu, w) -> tuple[tuple | None, str | None]:
    """KKT gradients, or why there is no unique one: degenerate (no strict
    complementarity) or a singular KKT system (the least-squares and the direct solve of
    the adjoint system disagree)."""
    from peers import kkt_reference_gradient

    d = {"P": P, "q": q, "A": A, "b": b, "G": G, "h": h}
    try:
        direct, _ = kkt_reference_gradient(d, x, lam, nu, w)
        lstsq, _ = kkt_reference_gradient(d, x, lam, nu, w, least_squares=True)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    a = np.concatenate([direct[1], direct[3], direct[5]])
    c = np.concatenate([lstsq[1], lstsq[3], lstsq[5]])
    if not np.all(np.isfinite(a)) or np.linalg.norm(a - c) > 1e-6 * max(np.linalg.norm(c), 1e-300):
        return None, "singular KKT system: the solution or its multipliers are not unique"
    return direct, None


def child_reference(args: argparse.Namespace) -> None:
    """A tight solution and the KKT gradients of ``<w, x>`` w.r.t. q, b, h."""
    from peers import clarabel_qp

    out = Path(args.out)
    record: dict = {"problem": args.problem, "phase": "reference"}
    write_json(out, record)
    p = mm_problems.load(Path(args.data) / f"{args.problem}.mat")
    P, q, A, b, G, h = p.stacked()
    x, lam, nu, status = clarabel_qp(P, q, A, b, G, h)
    source = f"clarabel ({status})"
    if status != "Solved":
        solve = SOLVERS["piqp"](p, 1e-10, 1e9)
        nu = np.concatenate(
            [
                solve.z,
                np.maximum(solve.z_box, 0)[np.isfinite(p.ub)],
                np.maximum(-solve.z_box, 0)[np.isfinite(p.lb)],
            ]
        )
        x, lam, source = solve.x, solve.y, f"piqp ({solve.status})"
    record["source"] = source
    grads, reason = _kkt(P, q, A, b, G, h, x, lam, nu, loss_weights(p.name, p.n))
    arrays = {"x": x}
    if grads is None:
        record["unavailable"] = reason
    else:
        arrays.update(dq=grads[1], db=grads[3], dh=grads[5])
    np.savez(out.with_suffix(".npz"), **arrays)
    record["phase"] = "done"
    write_json(out, record)


def child_backward(args: argparse.Namespace) -> None:
    """This library's backward on one problem: gradient, iterations, time, warnings."""
    import torch

    from altdiff_modeling import solve_qp

    torch.set_num_threads(1)
    out = Path(args.out)
    record: dict = {
        "problem": args.problem,
        "solver": args.solver,
        "tol": args.tol,
        "phase": "backward",
    }
    write_json(out, record)
    p = mm_problems.load(Path(args.data) / f"{args.problem}.mat")
    blocks = library_inputs(p, LIBRARY_MATRICES[args.solver])
    inputs = {
        k: blocks[k].clone().requires_grad_() for k in ("q", "b", "h") if blocks[k] is not None
    }
    blocks.update(inputs)
    w = torch.from_numpy(loss_weights(p.name, p.n))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            x, info = solve_qp(**blocks, solver_args=library_settings(args.tol), return_info=True)
            t1 = time.perf_counter()
            grads = torch.autograd.grad((w * x).sum(), list(inputs.values()))
            t2 = time.perf_counter()
        g = {k: v.numpy() for k, v in zip(inputs, grads)}
        flat = np.concatenate(list(g.values()))
        record.update(
            forward_s=t1 - t0,
            backward_s=t2 - t1,
            status=info.status[0],
            backward_iterations=int(info.backward_iterations),
            backward_status=list(info.backward_status),
            warnings=sorted({f"{m.category.__name__}: {str(m.message)[:200]}" for m in caught}),
            amplification=float(np.linalg.norm(flat) / np.linalg.norm(w.numpy())),
        )
        ref_path = Path(args.reference)
        with np.load(ref_path) as f:
            ref = {k: f[k] for k in f.files}
        ref_info = json.loads(ref_path.with_suffix(".json").read_text())
        record["reference"] = ref_info.get("source")
        if "dq" in ref:
            r = np.concatenate([ref[f"d{k}"] for k in inputs])
            record["gradient_error"] = (
                float(np.linalg.norm(flat - r) / max(np.linalg.norm(r), 1e-300))
                if np.all(np.isfinite(flat))
                else float("inf")
            )
        else:
            record["reference_unavailable"] = ref_info.get("unavailable")
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        record["traceback"] = traceback.format_exc()[-2000:]
    record["phase"] = "done"
    write_json(out, record)


# ----------------------------------------------------------------------------- verdicts


def cause(record: dict, tol: float, cap: float) -> str:
    """ "success", or why not: time cap, exception, residual (a false "solved"), max_iter,
    wrong certificate (every problem here has an optimal solution), or the status."""
    status = record.get("status", "")
    if status.startswith("timeout") or record.get("outcome") == "time_limit":
        return "time cap"
    if status.startswith("crashed") or record.get("outcome") == "exception":
        return f"exception: {status[:120]}"
    if record.get("found"):
        if record.get("seconds", 0.0) > cap:
            return "time cap"
        res = record.get("residuals")
        if res is None or max(res.values()) > tol:
            return "residual"
        return "success"
    return {"max_iter": "max_iter", "certificate": "wrong certificate"}.get(
        record.get("outcome", ""), f"status {status}"
    )


def summarize(records: dict, solver: str, tol: float, cap: float, problems: list[str]) -> dict:
    causes, times = {}, []
    for name in problems:
        r = records.get(f"{name}|{solver}|{tol:g}", {})
        c = cause(r, tol, cap)
        causes[c] = causes.get(c, 0) + 1
        times.append(r["seconds"] if c == "success" else cap)
    solved = causes.get("success", 0)
    return {
        "solved": solved,
        "total": len(problems),
        "false_solved": causes.get("residual", 0),
        "shgeom": mm_problems.shifted_geometric_mean(times) if times else None,
        "causes": {k: v for k, v in sorted(causes.items()) if k != "success"},
    }


# ----------------------------------------------------------------------------- report


def report(records: dict, backward: dict, problems: list[str], args, env: dict) -> str:
    from _common import markdown_table

    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        f"# Maros-Meszaros, dense subset{' (quick: a handful of small problems)' if args.quick else ''}",
        "",
        f"`{args.command}` on {env['cpu']} ({env['machine']}), load average at writing "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average') or [])}, {env['date']}; "
        f"altdiff-modeling at {env['altdiff_commit']}; Python {env['python']}, torch "
        f"{env['torch']}, {versions}.",
        "",
        f"{len(problems)} problems, one thread, each solve in its own process, time cap "
        f"{args.cap:g} s; eps_abs = tol, eps_rel = 0; max_iter 100,000 for this library "
        "(solve_qp in float64: altdiff on dense tensors, altdiff-sparse on scipy.sparse "
        "matrices) and OSQP. Success: the solver reports "
        "success within the cap and qpbenchmark's primal residual, dual residual and duality "
        "gap, recomputed in the problem's units, are all within tol. False solved: reported "
        "success, a residual above tol. Time: shifted geometric mean (shift 10 s), failures "
        "counted at the cap. See benchmarks/README.md.",
        "",
    ]
    summary_rows = []
    for tol in args.tols:
        for s in args.solvers:
            m = summarize(records, s, tol, args.cap, problems)
            summary_rows.append(
                [
                    f"{tol:g}",
                    s,
                    f"{m['solved']}/{m['total']} ({100 * m['solved'] / max(m['total'], 1):.1f}%)",
                    m["false_solved"],
                    f"{m['shgeom']:.3g}" if m["shgeom"] is not None else "-",
                    ", ".join(f"{k}: {v}" for k, v in m["causes"].items()) or "-",
                ]
            )
    lines += [
        "## Summary",
        "",
        markdown_table(
            [
                "tol",
                "solver",
                "solved",
                "false solved",
                "shifted geom. mean s",
                "failures by cause",
            ],
            summary_rows,
        ),
        "",
    ]
    lines += targets(records, backward, problems, args)
    for tol in args.tols:
        rows = []
        for name in problems:
            row = [name, records.get(f"{name}|{args.solvers[0]}|{tol:g}", {}).get("sizes", "")]
            for s in args.solvers:
                r = records.get(f"{name}|{s}|{tol:g}", {})
                c = cause(r, tol, args.cap)
                res = r.get("residuals") or {}
                worst = f" (res {max(res.values()):.1g})" if res else ""
                if c == "success":
                    row.append(f"{r['seconds']:.3g} s, {r.get('iterations')} it")
                else:
                    row.append((c + worst).replace("|", "/")[:90])
            rows.append(row)
        lines += [
            f"## Every problem at tol {tol:g}",
            "",
            markdown_table(["problem", "sizes", *args.solvers], rows),
            "",
        ]
    lines += backward_table(backward, problems)
    lines += small_problems(records, problems, args)
    return "\n".join(lines)


def backward_ok(b: dict) -> bool:
    """A backward that agrees with KKT differentiation to ``GRADIENT_TOL``, or says it
    does not: a warning and a backward status other than "converged"."""
    err = b.get("gradient_error")
    if err is not None and err <= GRADIENT_TOL:
        return True
    flagged = any(status != "converged" for status in b.get("backward_status") or [])
    return bool(b.get("warnings")) and flagged


def targets(records: dict, backward: dict, problems: list[str], args) -> list[str]:
    """The targets at 1e-6 for each of this library's solvers, with verdicts computed
    from the run."""
    from _common import markdown_table

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    rows = []
    tol = 1e-6
    for solver in [s for s in args.solvers if s in LIBRARY_MATRICES] if tol in args.tols else []:
        mine = summarize(records, solver, tol, args.cap, problems)
        share = mine["solved"] / max(mine["total"], 1)
        rows.append(
            [solver, "solved at 1e-6 >= 85%", f"{100 * share:.1f}%", verdict(share >= 0.85)]
        )
        if "proxqp" in args.solvers:
            prox = summarize(records, "proxqp", tol, args.cap, problems)
            rows.append(
                [
                    solver,
                    "solved at 1e-6 >= proxqp's in the same run",
                    f"{mine['solved']} vs {prox['solved']}",
                    verdict(mine["solved"] >= prox["solved"]),
                ]
            )
        rows.append(
            [
                solver,
                "0 false solved at 1e-6",
                str(mine["false_solved"]),
                verdict(mine["false_solved"] == 0),
            ]
        )
        if "osqp" in args.solvers:
            osqp = summarize(records, "osqp", tol, args.cap, problems)
            rows.append(
                [
                    solver,
                    "shifted geometric mean time <= OSQP's (1e-6)",
                    f"{mine['shgeom']:.3g} s vs {osqp['shgeom']:.3g} s",
                    verdict(mine["shgeom"] <= osqp["shgeom"]),
                ]
            )
        checked = [b for k, b in backward.items() if k.endswith(f"|{solver}|{tol:g}")]
        bad = [b["problem"] for b in checked if not backward_ok(b)]
        rows.append(
            [
                solver,
                "every backward on a solved problem agrees with KKT to 1e-6, "
                "or carries a warning and a backward status saying it does not",
                f"{len(checked) - len(bad)} of {len(checked)}"
                + (f"; not: {', '.join(bad)}" if bad else ""),
                verdict(bool(checked) and not bad),
            ]
        )
    return [
        "## Targets",
        "",
        markdown_table(["solver", "target", "measured", "verdict"], rows),
        "",
    ]


def backward_table(backward: dict, problems: list[str]) -> list[str]:
    from _common import markdown_table

    rows = []
    order = {name: i for i, name in enumerate(problems)}  # smallest first
    for key in sorted(backward, key=lambda k: (order.get(k.split("|")[0], len(order)), k)):
        b = backward[key]
        err = b.get("gradient_error")
        rows.append(
            [
                b["problem"],
                b.get("solver", "altdiff"),
                f"{b['tol']:g}",
                f"{err:.2g}"
                if err is not None
                else (b.get("reference_unavailable") or b.get("error") or b.get("status", "-"))[
                    :80
                ].replace("|", "/"),
                ", ".join(b.get("backward_status") or []) or "-",
                b.get("backward_iterations", "-"),
                f"{b['forward_s']:.3g}" if b.get("forward_s") is not None else "-",
                f"{b['backward_s']:.3g}" if b.get("backward_s") is not None else "-",
                f"{b['amplification']:.3g}" if b.get("amplification") is not None else "-",
                "; ".join(b.get("warnings") or [])[:160].replace("|", "/") or "none",
            ]
        )
    return [
        "## This library's backward on the problems it solves",
        "",
        "Gradient of <w, x> (w fixed, standard normal) w.r.t. q, b and h, against implicit "
        "differentiation of the KKT conditions at the reference solution (relative error); "
        "where the reference has no unique derivative, the reason.",
        "",
        markdown_table(
            [
                "problem",
                "solver",
                "tol",
                "gradient error vs KKT",
                "backward status",
                "backward iterations",
                "forward s",
                "backward s",
                "||grad|| / ||w||",
                "warnings",
            ],
            rows,
        ),
        "",
    ]


def small_problems(records: dict, problems: list[str], args, count: int = 5) -> list[str]:
    """The smallest problems that each of this library's solvers in the run solves at
    1e-6 in under ``SMALL_S`` (candidates for the test suite)."""
    library = [s for s in args.solvers if s in LIBRARY_MATRICES]
    picks = []
    for name in problems:  # smallest first
        runs = [records.get(f"{name}|{s}|1e-06", {}) for s in library]
        if library and all(
            cause(r, 1e-6, args.cap) == "success" and r["seconds"] < SMALL_S for r in runs
        ):
            slowest = max(r["seconds"] for r in runs)
            picks.append(f"{name} ({slowest * 1e3:.0f} ms)")
        if len(picks) == count:
            break
    return [
        f"## Small problems this library solves at 1e-6 in under {SMALL_S:g} s",
        "",
        f"By {' and '.join(library) or 'no library solver'} (the slower time in brackets): "
        + (", ".join(picks) or "none"),
        "",
    ]


# ----------------------------------------------------------------------------- driver


def run_job(kind: str, problem: str, out: Path, budget: float, args, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--problem",
        problem,
        "--data",
        args.data,
        "--out",
        str(out),
        "--cap",
        str(args.cap),
        *extra,
    ]
    return run_budgeted(cmd, out, budget, kind, child_env(1, ROOT))


def main() -> None:
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", choices=("solve", "reference", "backward"))
        parser.add_argument("--problem")
        parser.add_argument("--solver", default="")
        parser.add_argument("--tol", type=float, default=1e-6)
        parser.add_argument("--data")
        parser.add_argument("--out")
        parser.add_argument("--cap", type=float)
        parser.add_argument("--reference", default="")
        args = parser.parse_args()
        {"solve": child_solve, "reference": child_reference, "backward": child_backward}[
            args.child
        ](args)
        return
    from _common import environment, publish, results_dir

    args = parse_args()
    args.command = "python benchmarks/maros_meszaros.py " + " ".join(sys.argv[1:])
    tag = "maros_meszaros-quick" if args.quick else "maros_meszaros"
    out = results_dir()
    runs = out / "runs" / tag
    runs.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"no problem folder {data} (pass --data)")
    names = [p.stem for p in mm_problems.problem_paths(data)]
    only = [s for s in args.only.split(",") if s] or (list(QUICK_PROBLEMS) if args.quick else names)
    problems = [n for n in names if n in only]
    saved = out / f"{tag}.json"
    records, backward = {}, {}
    if (args.resume or args.report_only) and saved.exists():
        previous = json.loads(saved.read_text())
        records, backward = previous["records"], previous["backward"]
    start = time.perf_counter()

    def write() -> None:
        env = environment()
        saved.write_text(
            json.dumps(
                {"env": env, "settings": vars(args), "records": records, "backward": backward},
                indent=1,
                default=str,
            )
        )
        (out / f"{tag}.md").write_text(report(records, backward, problems, args, env))

    fresh_references: set[str] = set()  # computed in this run (or reused under --resume)

    def reference(name: str) -> Path:
        ref = runs / f"{name}__reference.json"
        if name not in fresh_references and not (args.resume and reusable(ref)):
            run_job("reference", name, ref, 10 * args.cap + STARTUP_S, args, [])
        fresh_references.add(name)
        return ref.with_suffix(".npz")

    for name in [] if args.report_only else problems:
        for tol in args.tols:
            for solver in args.solvers:
                key = f"{name}|{solver}|{tol:g}"
                path = runs / f"{name}__{solver}__{tol:g}.json"
                previous = reusable(path) if args.resume else None
                extra = ["--solver", solver, "--tol", str(tol)]
                r = previous or run_job("solve", name, path, args.cap + STARTUP_S, args, extra)
                records[key] = r
                log(
                    f"{name:10s} {solver:14s} tol {tol:g}: {cause(r, tol, args.cap)} "
                    f"({r.get('status')}, {r.get('seconds')})"
                )
                if solver not in LIBRARY_MATRICES or cause(r, tol, args.cap) != "success":
                    continue
                path = runs / f"{name}__{solver}__backward__{tol:g}.json"
                previous = reusable(path) if args.resume else None
                extra += ["--reference", str(reference(name))]
                b = previous or run_job(
                    "backward", name, path, 2 * args.cap + STARTUP_S, args, extra
                )
                backward[key] = b
                log(
                    f"{name:10s} {solver:14s} backward tol {tol:g}: error "
                    f"{b.get('gradient_error')}, {b.get('backward_status')}, "
                    f"{b.get('backward_iterations')} it, warnings {b.get('warnings')}"
                )
        write()
    write()
    log(f"wrote {out / (tag + '.md')} in {time.perf_counter() - start:.0f} s")
    if args.publish:
        publish(f"{tag}.md")


if __name__ == "__main__":
    main()
