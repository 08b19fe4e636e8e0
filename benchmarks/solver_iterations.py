"""Iteration counts of the forward solver on the seeded QP suite, side by side with the
reference implementation's settings and with OSQP at the same tolerances.

Solvers compared, each on every instance of ``tests/qp_suite.make_suite``:

* ``altdiff``: this library's default solver (adaptive rho, over-relaxation, Ruiz
  scaling, polishing, residual termination).
* ``altdiff-fixed-rho`` (with ``--fixed-rho-residual``): the same code with rho = 1
  fixed, no scaling, no relaxation, no polishing; residual termination (so its answers
  meet the same tolerance). Slow: most badly scaled instances run to ``max_iter``.
* ``reference``: the reference implementation's algorithm and stopping rule: the same
  slack-form ADMM with rho = 1, stopped when the objective's relative change falls
  below the tolerance (its answer may be far from the tolerance; the table says how
  often it meets it).
* ``osqp``: the osqp package, default settings, polishing off, same eps_abs/eps_rel.

Usage: python benchmarks/solver_iterations.py [--eps 1e-5] [--quick] [--publish]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import osqp
import scipy.linalg
import scipy.sparse as sp
import torch
from _common import machine_line, markdown_table, publish, results_dir
from qp_suite import QPInstance, make_suite

from altdiff_modeling import solve_qp

MAX_ITER = 20_000


def run_altdiff(inst: QPInstance, eps: float, extra: dict) -> tuple[str, int]:
    tensors = [torch.from_numpy(a) for a in (inst.P, inst.q, inst.A, inst.b, inst.G, inst.h)]
    args = {"eps_abs": eps, "eps_rel": eps, "max_iter": MAX_ITER, "on_failure": "nan", **extra}
    _, info = solve_qp(*tensors, solver_args=args, return_info=True)
    return info.status[0], int(info.iterations[0])


def run_osqp(inst: QPInstance, eps: float) -> tuple[str, int]:
    C = sp.csc_matrix(np.vstack([inst.A, inst.G]))
    lower = np.concatenate([inst.b, np.full(inst.h.size, -np.inf)])
    upper = np.concatenate([inst.b, inst.h])
    solver = osqp.OSQP()
    solver.setup(
        P=sp.csc_matrix(np.triu(inst.P)),
        q=inst.q,
        A=C,
        l=lower,
        u=upper,
        eps_abs=eps,
        eps_rel=eps,
        max_iter=MAX_ITER,
        polishing=False,
        verbose=False,
    )
    result = solver.solve()
    status = {
        "solved": "solved",
        "solved inaccurate": "solved_inaccurate",
        "primal infeasible": "primal_infeasible",
        "dual infeasible": "dual_infeasible",
        "maximum iterations reached": "max_iter",
    }.get(result.info.status, result.info.status)
    return status, int(result.info.iter)


def run_reference(inst: QPInstance, eps: float) -> tuple[str, int]:
    """rho = 1 slack-form ADMM stopped on the relative change of the objective."""
    P, q, A, b, G, h = inst.P, inst.q, inst.A, inst.b, inst.G, inst.h
    n, rho = q.size, 1.0
    H = P + rho * (A.T @ A + G.T @ G) + 1e-6 * np.eye(n)  # sigma keeps LPs factorable
    factor = scipy.linalg.cho_factor(H)
    lam, nu, s = np.zeros(b.size), np.zeros(h.size), np.zeros(h.size)
    x = np.zeros(n)
    previous = np.inf
    for k in range(1, MAX_ITER + 1):
        rhs = -(q + A.T @ lam + G.T @ nu - rho * A.T @ b + rho * G.T @ (s - h)) + 1e-6 * x
        x = scipy.linalg.cho_solve(factor, rhs)
        s = np.maximum(0, -nu / rho - (G @ x - h))
        lam = lam + rho * (A @ x - b)
        nu = nu + rho * (G @ x + s - h)
        objective = 0.5 * x @ P @ x + q @ x
        if k > 1 and abs(objective - previous) <= eps * max(abs(previous), 1e-12):
            break
        previous = objective
    primal = max(np.abs(A @ x - b).max(initial=0), np.maximum(G @ x - h, 0).max(initial=0))
    scale = max(
        np.abs(A @ x).max(initial=0),
        np.abs(G @ x).max(initial=0),
        np.abs(h).max(initial=0),
        np.abs(b).max(initial=0),
    )
    dual = np.abs(P @ x + q + A.T @ lam + G.T @ nu).max()
    dual_scale = max(np.abs(P @ x).max(), np.abs(q).max(), np.abs(A.T @ lam + G.T @ nu).max())
    meets = primal <= eps + eps * scale and dual <= eps + eps * dual_scale
    return ("solved" if meets else "inaccurate"), k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, default=1e-5)
    parser.add_argument("--quick", action="store_true", help="a tenth of the suite")
    parser.add_argument("--fixed-rho-residual", action="store_true", help="add altdiff-fixed-rho")
    parser.add_argument("--publish", action="store_true", help="copy the table to docs/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = (20, 5, 5, 5) if args.quick else (200, 50, 50, 50)
    suite = make_suite(
        seed=0,
        n_qp=counts[0],
        n_lp=counts[1],
        n_primal_infeasible=counts[2],
        n_dual_infeasible=counts[3],
    )
    fixed = {"rho": 1.0, "adaptive_rho": False, "scaling": 0, "alpha": 1.0, "polish": False}
    records = []
    start = time.perf_counter()
    for inst in suite:
        record = {"name": inst.name, "kind": inst.kind, "n": inst.n, "scale": inst.scale_exponent}
        record["altdiff"] = run_altdiff(inst, args.eps, {})
        if args.fixed_rho_residual:
            record["altdiff-fixed-rho"] = run_altdiff(inst, args.eps, fixed)
        record["osqp"] = run_osqp(inst, args.eps)
        if inst.kind in ("qp", "lp"):
            record["reference"] = run_reference(inst, args.eps)
        records.append(record)
        print(inst.name, {k: v for k, v in record.items() if isinstance(v, tuple)}, flush=True)
    elapsed = time.perf_counter() - start

    solvers = ["altdiff", "altdiff-fixed-rho", "reference", "osqp"]
    groups = {
        "all feasible (QP + LP)": lambda r: r["kind"] in ("qp", "lp"),
        "feasible, natural units": lambda r: r["kind"] in ("qp", "lp") and r["scale"] == 0,
        "feasible, badly scaled": lambda r: r["kind"] in ("qp", "lp") and r["scale"] > 0,
        "LP": lambda r: r["kind"] == "lp",
        "primal infeasible": lambda r: r["kind"] == "primal_infeasible",
        "dual infeasible": lambda r: r["kind"] == "dual_infeasible",
    }
    expected = {
        "qp": "solved",
        "lp": "solved",
        "primal_infeasible": "primal_infeasible",
        "dual_infeasible": "dual_infeasible",
    }
    rows = []
    for label, keep in groups.items():
        chosen = [r for r in records if keep(r)]
        for solver in solvers:
            results = [r[solver] for r in chosen if solver in r]
            if not results:
                continue
            its = np.array([it for _, it in results])
            right = sum(
                status == expected[r["kind"]]
                for r, (status, _) in zip(chosen, results, strict=True)
            )
            rows.append(
                [
                    label,
                    solver,
                    len(results),
                    float(np.median(its)),
                    float(np.percentile(its, 95)),
                    f"{right}/{len(results)}",
                ]
            )
    table = markdown_table(
        ["instances", "solver", "count", "median iters", "p95 iters", "right status"], rows
    )
    intro = (
        f"eps_abs = eps_rel = {args.eps}, max_iter = {MAX_ITER}, {len(suite)} instances "
        f"(`tests/qp_suite.py`, seed 0), {elapsed:.0f} s; {machine_line()}; "
        f"osqp {osqp.__version__}.\n\n"
    )
    print("\n" + intro + table)
    out = results_dir()
    (out / "solver_iterations.md").write_text(intro + table + "\n")
    (out / "solver_iterations.json").write_text(json.dumps(records, indent=1))
    if args.publish:
        publish("solver_iterations.md")


if __name__ == "__main__":
    main()
