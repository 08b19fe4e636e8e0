"""Truncated Alt-Diff: gradient error against primal error and against time.

The paper (Sun et al., ICLR 2023, Theorem 4.3) bounds the error of the gradient that a
truncated Alt-Diff returns by the same order as the error of the truncated primal
solution. This study sweeps the forward tolerance ``eps`` (``eps_abs = eps_rel``, and
``backward_eps`` with it) on a family of random, strictly complementary QPs, and for
each instance and tolerance measures

* the primal error ``||x_eps - x*|| / ||x*||`` against the exact solution the instance
  was built from,
* the gradient error ``||g_eps - g*|| / ||g*||`` of a random linear loss, for all of
  P, q, A, b, G, h, against implicit differentiation of the KKT conditions at the
  exact solution (``tests/reference.py``),
* the forward and backward time.

It writes ``benchmarks/results/truncation.md`` (medians and the largest ratio of
gradient error to primal error per tolerance) and ``benchmarks/results/truncation.png``.

Usage: python benchmarks/truncation_study.py [--instances 20] [--n 60] [--publish]

``--publish`` also copies the table and the plot to ``docs/results/``, where the
documentation shows them.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import machine_line, markdown_table, publish, results_dir
from families import random_qp
from reference import kkt_implicit_gradient

from altdiff_modeling import solve_qp

NAMES = ("P", "q", "A", "b", "G", "h")
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)


def _flat(blocks) -> np.ndarray:
    return np.concatenate([np.asarray(b).ravel() for b in blocks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--publish", action="store_true", help="copy the outputs to docs/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    records = []
    for index in range(args.instances):
        n = args.n
        case = random_qp(rng, n=n, n_eq=n // 4, n_ineq=n, n_active=n // 4)
        weights = rng.standard_normal(n)
        exact_grad = _flat(
            kkt_implicit_gradient(
                *(case[k] for k in NAMES), case["x"], case["lam"], case["nu"], weights
            )
        )
        for eps in TOLERANCES:
            tensors = [torch.tensor(case[k], requires_grad=True) for k in NAMES]
            settings = {"eps_abs": eps, "eps_rel": eps, "backward_eps": eps, "max_iter": 100_000}
            start = time.perf_counter()
            x, info = solve_qp(*tensors, solver_args=settings, return_info=True)
            forward = time.perf_counter() - start
            start = time.perf_counter()
            grads = torch.autograd.grad(x @ torch.from_numpy(weights), tensors)
            backward = time.perf_counter() - start
            primal_error = np.linalg.norm(x.detach().numpy() - case["x"]) / np.linalg.norm(
                case["x"]
            )
            grad_error = np.linalg.norm(
                _flat(g.numpy() for g in grads) - exact_grad
            ) / np.linalg.norm(exact_grad)
            records.append(
                {
                    "instance": index,
                    "eps": eps,
                    "primal_error": primal_error,
                    "gradient_error": grad_error,
                    "forward_s": forward,
                    "backward_s": backward,
                    "iterations": int(info.iterations[0]),
                    "backward_iterations": info.backward_iterations,
                }
            )

    rows = []
    for eps in TOLERANCES:
        chosen = [r for r in records if r["eps"] == eps]
        primal = np.array([r["primal_error"] for r in chosen])
        grad = np.array([r["gradient_error"] for r in chosen])
        ratio = grad / np.maximum(primal, 1e-16)
        rows.append(
            [
                f"{eps:.0e}",
                float(np.median([r["iterations"] for r in chosen])),
                float(np.median([r["backward_iterations"] for r in chosen])),
                float(np.median(primal)),
                float(np.median(grad)),
                float(np.median(ratio)),
                float(ratio.max()),
                float(np.median([r["forward_s"] * 1e3 for r in chosen])),
                float(np.median([r["backward_s"] * 1e3 for r in chosen])),
            ]
        )
    header = [
        "eps",
        "ADMM iters",
        "backward iters",
        "primal error",
        "gradient error",
        "median ratio",
        "max ratio",
        "forward ms",
        "backward ms",
    ]
    table = markdown_table(header, rows)
    intro = (
        f"{args.instances} random strictly complementary QPs, n = {args.n}, {args.n // 4} "
        f"equalities, {args.n} inequalities ({args.n // 4} active); medians over instances; "
        "ratio = gradient error / primal error. Times: one thread, "
        f"{machine_line()}.\n\n"
    )
    print(intro + table)
    out = results_dir()
    (out / "truncation.md").write_text(intro + table + "\n")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    primal = np.array([r["primal_error"] for r in records])
    grad = np.array([r["gradient_error"] for r in records])
    total_ms = np.array([(r["forward_s"] + r["backward_s"]) * 1e3 for r in records])
    eps_values = np.array([r["eps"] for r in records])
    scatter = left.scatter(primal, grad, c=np.log10(eps_values), cmap="viridis", s=12)
    bounds = [max(primal.min(), 1e-16), primal.max()]
    left.plot(bounds, bounds, "k--", lw=1, label="gradient error = primal error")
    left.set(xscale="log", yscale="log", xlabel="primal error", ylabel="gradient error")
    left.legend(loc="upper left")
    fig.colorbar(scatter, ax=left, label="log10 eps")
    right.scatter(total_ms, grad, c=np.log10(eps_values), cmap="viridis", s=12)
    right.set(
        xscale="log", yscale="log", xlabel="forward + backward time (ms)", ylabel="gradient error"
    )
    fig.suptitle("Truncated Alt-Diff: accuracy against tolerance and time")
    fig.tight_layout()
    fig.savefig(out / "truncation.png", dpi=100)
    if args.publish:
        publish("truncation.md", "truncation.png")


if __name__ == "__main__":
    main()
