"""Learning the parameters of a constrained least-squares problem from data.

A piecewise-constant signal in [0, 1] (``n`` samples) is measured with noise, ``y = s +
noise``, and recovered by a box-constrained least-squares fit with a weighted
total-variation penalty,

    x*(y; w) = argmin_x  ||x - y||^2 + sum_i w_i |x_{i+1} - x_i|   s.t.  0 <= x <= 1,

a QP once CVXPY writes the absolute values with epigraph variables. The weights ``w``
(one per pair of neighbours, ``w >= 0``) say where the signal may jump. In this data
the jumps happen only at a few positions (the boundaries of the segments a sensor
measures), unknown to the estimator.

The script learns ``w`` from training pairs ``(y, s)`` by gradient descent on the mean
squared error ``||x*(y; w) - s||^2``, through the layer, and compares on held-out
signals:

* the noisy measurement itself (``x = y``);
* the best *single* weight ``w_i = lambda`` for all i, found by a grid search on the
  same training signals;
* the learned per-position weights, which should become small where jumps happen and
  large elsewhere.

Run it with ``python examples/constrained_least_squares.py [--fast] [--out DIR] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch

from altdiff_modeling import AltDiffLayer

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
NOISE = 0.15
SOLVER = {"eps_abs": 1e-5, "eps_rel": 1e-5}


def denoising_layer(n: int) -> AltDiffLayer:
    """``x*(y; w)``: parameters ``w (n - 1,)`` (nonnegative) and ``y (n,)``; output x."""
    x = cp.Variable(n, name="x")
    y = cp.Parameter(n, name="y")
    w = cp.Parameter(n - 1, name="w", nonneg=True)
    # w * |x_{i+1} - x_i| is DPP: a nonnegative parameter times a convex expression.
    objective = cp.sum_squares(x - y) + cp.sum(cp.multiply(w, cp.abs(cp.diff(x))))
    problem = cp.Problem(cp.Minimize(objective), [x >= 0, x <= 1])
    return AltDiffLayer(problem, parameters=[w, y], variables=[x], solver_args=SOLVER)


def signals(
    n: int, count: int, jumps: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` pairs (noisy y, clean s): a constant level on each segment."""
    edges = np.concatenate([[0], jumps, [n]])
    levels = rng.uniform(0.0, 1.0, (count, edges.size - 1))
    clean = np.repeat(levels, np.diff(edges), axis=1)
    noisy = clean + NOISE * rng.standard_normal(clean.shape)
    return torch.from_numpy(noisy), torch.from_numpy(clean)


def mse(layer: AltDiffLayer, w: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> float:
    with torch.no_grad():
        (x,) = layer(w, y)
    return (x - s).pow(2).mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Learn w; return the test errors and the training losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="shorter signals, fewer steps")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, n_train, n_test, steps = (24, 32, 64, 15) if args.fast else (40, 64, 500, 100)

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    jumps = np.sort(rng.choice(np.arange(4, n - 3, 4), size=3, replace=False))
    y_train, s_train = signals(n, n_train, jumps, rng)
    y_test, s_test = signals(n, n_test, jumps, rng)
    layer = denoising_layer(n)
    print(f"signals of {n} samples, jumps after samples {(jumps - 1).tolist()}, noise {NOISE}")
    print(f"QP: {layer.extra_repr()}; {n_train} training and {n_test} test signals")

    # The best single weight, by grid search on the training signals: all the weights
    # of the grid in one batch (w is batched here, one row per instance).
    grid = torch.logspace(-2, 1, 13, dtype=torch.float64)
    w_grid = grid.repeat_interleave(n_train)[:, None].expand(-1, n - 1)
    with torch.no_grad():
        (x_grid,) = layer(w_grid, y_train.repeat(grid.numel(), 1))
    grid_errors = (x_grid - s_train.repeat(grid.numel(), 1)).pow(2).mean(1)
    grid_errors = grid_errors.reshape(grid.numel(), n_train).mean(1)
    best = int(grid_errors.argmin())
    lam = grid[best].item()
    w_single = torch.full((n - 1,), lam, dtype=torch.float64)

    # Learned weights, w = softplus(raw) >= 0, starting from the same weight everywhere.
    raw = torch.full((n - 1,), np.log(np.expm1(0.5)), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=0.1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        w = torch.nn.functional.softplus(raw)
        (x,) = layer(w, y_train)  # w is shared by the batch, y is batched
        loss = (x - s_train).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    w_learned = torch.nn.functional.softplus(raw.detach())

    errors = {
        "noisy measurement": (y_test - s_test).pow(2).mean().item(),
        "best single weight": mse(layer, w_single, y_test, s_test),
        "learned weights": mse(layer, w_learned, y_test, s_test),
    }
    at_jumps = w_learned[jumps - 1]
    elsewhere = np.delete(w_learned.numpy(), jumps - 1)
    print(f"training MSE {losses[0]:.5f} -> {losses[-1]:.5f} ({steps} Adam steps)")
    print(f"best single weight lambda = {lam:.3g} (grid search on the training signals)")
    print(
        f"learned weights: {at_jumps.mean().item():.3f} on average at the jumps, "
        f"{elsewhere.mean():.3f} elsewhere"
    )
    print("test mean squared error:")
    for name, value in errors.items():
        print(f"  {name:>20}: {value:.5f}")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(losses)
    axes[0].axhline(grid_errors[best].item(), color="C1", ls="--", label="best single weight")
    axes[0].set(xlabel="Adam step", ylabel="training MSE", yscale="log")
    axes[0].set_title("learning w through the layer")
    axes[0].legend()
    axes[1].bar(
        np.arange(1, n) - 0.5, w_learned.numpy(), width=0.8, color="C2", label="learned w_i"
    )
    axes[1].axhline(lam, color="C1", ls="--", label="best single weight")
    for k, jump in enumerate(jumps):
        axes[1].axvline(jump - 0.5, color="k", ls=":", label="jump positions" if k == 0 else None)
    axes[1].set(xlabel="position i (between samples i and i+1)", ylabel="weight", yscale="log")
    axes[1].set_title("penalty weights")
    axes[1].legend(fontsize=7, loc="lower left", framealpha=0.95)
    with torch.no_grad():
        (x_single,) = layer(w_single, y_test[0])
        (x_learned,) = layer(w_learned, y_test[0])
    axes[2].plot(y_test[0].numpy(), ".", color="C7", label="measurement")
    axes[2].step(np.arange(n), s_test[0].numpy(), where="mid", color="k", label="clean signal")
    axes[2].step(np.arange(n), x_single.numpy(), where="mid", color="C1", label="single weight")
    axes[2].step(np.arange(n), x_learned.numpy(), where="mid", color="C2", label="learned weights")
    axes[2].set(xlabel="sample", ylabel="value")
    axes[2].set_title("a test signal")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = args.out / "constrained_least_squares.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {os.path.relpath(path)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "weight_at_jumps": at_jumps.mean().item(),
        "weight_elsewhere": float(elsewhere.mean()),
        **{f"error_{name.replace(' ', '_')}": value for name, value in errors.items()},
    }


if __name__ == "__main__":
    main()
