"""The truncation trade-off: solution error, gradient error and time against tolerance.

Alt-Diff differentiates the ADMM iteration itself, so the solver can stop early and
the gradient comes with it: the paper's theorem bounds the error of the truncated
gradient by the same order as the error of the truncated solution. This script
measures that on a family of random QPs,

    minimize 1/2 x'Px + q'x   s.t.   A x = b,  G x <= h,

solved as one batch with ``solve_qp``, for a sweep of tolerances
``eps_abs = eps_rel = backward_eps = eps``. For each eps it records, against a solve at
1e-10 (with polishing, which makes it exact up to rounding):

* the primal error ``max |x - x_ref|``, relative to ``max |x_ref|``;
* the gradient error of a random linear loss ``w'x`` with respect to all six
  inputs (P, q, A, b, G, h), relative to the reference gradient's norm;
* the CPU time of the forward and backward passes (process time, not wall-clock time,
  so that other programs on a busy machine do not inflate it; run it on one thread).

It does so with the solver's polishing off (pure ADMM: the error follows the
tolerance) and on (the default: once ADMM has found the active set, polishing jumps to
the exact solution), in reverse mode.

Run it with ``python examples/truncation.py [--fast] [--out DIR] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from altdiff_modeling import solve_qp

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
REFERENCE = {"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_eps": 1e-12, "max_iter": 100_000}
BLOCKS = ("P", "q", "A", "b", "G", "h")
# name: (solver_args, blocks whose gradient is computed and compared)
CONFIGS = {
    "reverse, no polish": ({"mode": "reverse", "polish": False}, BLOCKS),
    "reverse, polish (default)": ({"mode": "reverse", "polish": True}, BLOCKS),
}


def random_qps(
    batch: int, n: int, n_eq: int, n_ineq: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """A batch of feasible, strictly convex QPs ``[P, q, A, b, G, h]`` (float64)."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    M = randn(batch, n, n)
    P = M @ M.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=torch.float64)
    q = randn(batch, n)
    A = randn(batch, n_eq, n)
    G = randn(batch, n_ineq, n)
    x0 = randn(batch, n)  # a feasible point
    b = (A @ x0.unsqueeze(-1)).squeeze(-1)
    slack = torch.rand(batch, n_ineq, generator=gen, dtype=torch.float64)
    h = (G @ x0.unsqueeze(-1)).squeeze(-1) + slack
    return [P, q, A, b, G, h]


def solve_and_differentiate(
    data: list[torch.Tensor], w: torch.Tensor, solver_args: dict, blocks: tuple[str, ...]
) -> dict:
    """Solve and backpropagate ``sum_b w_b'x_b``.

    Returns:
        ``x`` ``(B, n)``; ``grad``, the gradient w.r.t. the named inputs, flattened and
        concatenated ``(B, K)``; the forward and backward CPU times; the ADMM iterations
        of the slowest instance (the batch runs until all are done); the steps of the
        backward recursion.
    """
    inputs = [
        block.clone().requires_grad_(name in blocks)
        for name, block in zip(BLOCKS, data, strict=True)
    ]
    start = time.process_time()
    x, info = solve_qp(*inputs, solver_args=solver_args, return_info=True)
    middle = time.process_time()
    (w * x).sum().backward()
    end = time.process_time()
    grad = torch.cat([block.grad.flatten(1) for block in inputs if block.requires_grad], dim=1)
    return {
        "x": x.detach(),
        "grad": grad,
        "forward_s": middle - start,
        "backward_s": end - middle,
        "iterations": int(info.iterations.max()),
        "backward_iterations": info.backward_iterations,
    }


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Median over the batch of ``||value - reference|| / ||reference||`` (per instance)."""
    error = (value - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)
    return error.median().item()


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Sweep the tolerance; return, per configuration, the errors and times per eps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="smaller problems, fewer eps")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.fast:
        batch, n, n_eq, n_ineq, repeats = 8, 10, 2, 15, 1
        tolerances = [1e-2, 1e-4, 1e-6, 1e-8]
    else:
        batch, n, n_eq, n_ineq, repeats = 32, 30, 5, 45, 5
        tolerances = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    data = random_qps(batch, n, n_eq, n_ineq, gen)
    w = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    reference_run = solve_and_differentiate(data, w, REFERENCE, BLOCKS)
    x_ref, grad_ref = reference_run["x"], reference_run["grad"]
    sizes = [block[0].numel() for block in data]
    offsets = dict(zip(BLOCKS, torch.tensor([0, *sizes]).cumsum(0).tolist()))
    print(f"{batch} random QPs with n={n}, {n_eq} equalities, {n_ineq} inequalities")
    print(f"reference: eps 1e-10; {grad_ref.shape[1]} gradient entries per instance")
    print("errors: medians over the batch, relative; CPU times: best of repeats;")
    print("iterations: ADMM (slowest instance) + backward recursion")

    results: dict[str, dict[str, list[float]]] = {}
    for name, (config, blocks) in CONFIGS.items():
        reference = torch.cat(
            [grad_ref[:, offsets[b] : offsets[b] + sizes[BLOCKS.index(b)]] for b in blocks], 1
        )
        rows: dict[str, list[float]] = {
            key: [] for key in ("eps", "primal", "grad", "forward_s", "backward_s", "iterations")
        }
        rows["backward_iterations"] = []
        print(f"\n{name}")
        print(
            f"  {'eps':>7}  {'x error':>9}  {'grad error':>10}  {'fwd [s]':>8}  {'bwd [s]':>8}"
            f"  {'iterations':>12}"
        )
        for eps in tolerances:
            solver_args = {"eps_abs": eps, "eps_rel": eps, "backward_eps": eps, **config}
            runs = [solve_and_differentiate(data, w, solver_args, blocks) for _ in range(repeats)]
            x, grad = runs[0]["x"], runs[0]["grad"]
            primal = ((x - x_ref).abs().amax(1) / x_ref.abs().amax(1)).median().item()
            rows["eps"].append(eps)
            rows["primal"].append(primal)
            rows["grad"].append(relative_error(grad, reference))
            for key in ("forward_s", "backward_s"):
                rows[key].append(min(run[key] for run in runs))
            for key in ("iterations", "backward_iterations"):
                rows[key].append(runs[0][key])
            print(
                f"  {eps:7.0e}  {primal:9.2e}  {rows['grad'][-1]:10.2e}  "
                f"{rows['forward_s'][-1]:8.3f}  {rows['backward_s'][-1]:8.3f}  "
                f"{runs[0]['iterations']:5d} + {runs[0]['backward_iterations']:4d}"
            )
        results[name] = rows

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    eps = np.asarray(tolerances)
    for k, (name, rows) in enumerate(results.items()):
        color = f"C{k}"
        axes[0].loglog(eps, np.maximum(rows["primal"], 1e-16), "o-", color=color, label=name)
        axes[1].loglog(eps, np.maximum(rows["grad"], 1e-16), "o-", color=color, label=name)
        total = np.asarray(rows["forward_s"]) + np.asarray(rows["backward_s"])
        axes[2].loglog(eps, total, "o-", color=color, label=name)
    for ax in axes[:2]:
        ax.loglog(eps, eps, "k:", label="error = eps")
    axes[0].set(xlabel="tolerance eps", ylabel="relative error of x")
    axes[0].set_title("solution error")
    axes[1].set(xlabel="tolerance eps", ylabel="relative error of the gradient")
    axes[1].set_title("gradient error")
    axes[2].set(xlabel="tolerance eps", ylabel="CPU seconds (forward + backward)")
    axes[2].set_title(f"time, batch of {batch} (best of {repeats})")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = args.out / "truncation.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {os.path.relpath(path)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
