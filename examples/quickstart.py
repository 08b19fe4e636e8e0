"""Quickstart: a constrained least-squares layer, trained and gradient-checked.

The layer solves, for parameters ``q``, ``b``, ``h``,

    x*(q, b, h) = argmin_x  1/2 ||x||^2 + q'x   s.t.  A x = b,  G x <= h

with fixed matrices A and G. The script

1. makes a batch of feasible problems (b, h) and their solutions for a hidden ``q``;
2. learns ``q``, starting from zero, with Adam through the layer so that the layer's
   solutions move to the targets, printing the loss as it goes down;
3. checks the layer's gradient of a scalar loss against central finite differences of
   the layer's own forward pass at a tight tolerance (all perturbed problems solved as
   one batch), at an instance whose solution is known in closed form and
   non-degenerate (it picks the solution, the active constraints and the multipliers,
   then sets ``q`` from the KKT conditions).

It exits with a non-zero status if the loss did not decrease or the gradient check
fails, so ``make demo`` is a real check. Everything is float64 and runs on the CPU in a
few seconds.

Run it with ``python examples/quickstart.py [--steps 30] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import cvxpy as cp
import numpy as np
import torch

from altdiff_modeling import AltDiffLayer

N, N_EQ, N_INEQ, N_ACTIVE = 8, 2, 12, 3
BATCH = 16  # problems in the training batch
# Tight tolerances for the gradient check: forward solve and backward recursion alike.
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "backward_eps": 1e-10}
FD_STEP = 1e-4  # the solution map is piecewise affine: no truncation error off the kinks
GRAD_TOL = 1e-4


def make_instance(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A feasible instance with a known, strictly complementary solution."""
    A = rng.standard_normal((N_EQ, N))
    G = rng.standard_normal((N_INEQ, N))
    x_target = rng.standard_normal(N)
    b = A @ x_target
    # The first N_ACTIVE inequalities are active with multipliers bounded away from 0;
    # the others are inactive with slacks bounded away from 0.
    slack = np.concatenate([np.zeros(N_ACTIVE), rng.uniform(0.5, 1.5, N_INEQ - N_ACTIVE)])
    h = G @ x_target + slack
    nu = np.concatenate([rng.uniform(0.5, 1.5, N_ACTIVE), np.zeros(N_INEQ - N_ACTIVE)])
    lam = rng.standard_normal(N_EQ)
    # Stationarity of 1/2||x||^2 + q'x + lam'(Ax - b) + nu'(Gx - h) at x_target.
    q = -(x_target + A.T @ lam + G.T @ nu)
    return {"A": A, "G": G, "x_target": x_target, "q": q, "b": b, "h": h}


def build_layer(A: np.ndarray, G: np.ndarray) -> AltDiffLayer:
    """Declare the problem in CVXPY and wrap it as a torch module."""
    x = cp.Variable(N)
    q = cp.Parameter(N)
    b = cp.Parameter(N_EQ)
    h = cp.Parameter(N_INEQ)
    objective = cp.Minimize(0.5 * cp.sum_squares(x) + q @ x)
    problem = cp.Problem(objective, [A @ x == b, G @ x <= h])
    return AltDiffLayer(problem, parameters=[q, b, h], variables=[x])


def make_training_set(
    layer: AltDiffLayer, instance: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """A batch of feasible (b, h) and the solutions the layer gives them for a hidden q."""
    x0 = rng.standard_normal((BATCH, N))  # one feasible point per instance
    b = torch.from_numpy(x0 @ instance["A"].T)
    h = torch.from_numpy(x0 @ instance["G"].T + rng.uniform(0.0, 1.0, (BATCH, N_INEQ)))
    q_hidden = torch.from_numpy(rng.standard_normal(N))
    with torch.no_grad():
        (x_target,) = layer(q_hidden, b, h, solver_args=TIGHT)  # q is broadcast over the batch
    return {"b": b, "h": h, "x_target": x_target}


def train(layer: AltDiffLayer, data: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    """Learn q, starting from zero, so that the layer reproduces the target solutions."""
    q = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
    optimizer = torch.optim.Adam([q], lr=0.1)

    def loss_fn() -> torch.Tensor:
        (x,) = layer(q, data["b"], data["h"])  # x: (BATCH, N)
        return torch.sum((x - data["x_target"]) ** 2, dim=1).mean()

    print(f"training q on a batch of {BATCH} problems for {steps} Adam steps")
    print("  loss = mean over the batch of ||x*(q; b, h) - x_target||^2")
    initial = None
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        if initial is None:
            initial = loss.item()
        if step % 5 == 0:
            print(f"  step {step:3d}  loss {loss.item():.6e}")
    with torch.no_grad():
        final = loss_fn().item()
    print(f"  final     loss {final:.6e}")
    return initial if initial is not None else final, final


def gradient_check(layer: AltDiffLayer, data: dict[str, torch.Tensor], seed: int) -> float:
    """Max relative error of the layer's gradient against central finite differences."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(N, generator=gen, dtype=torch.float64)
    sizes = [N, N_EQ, N_INEQ]

    # Analytic gradient of L = w' x*(q, b, h) through the layer's backward pass.
    q, b, h = (data[k].clone().requires_grad_(True) for k in ("q", "b", "h"))
    (x,) = layer(q, b, h, solver_args=TIGHT)
    forward_err = (x.detach() - data["x_target"]).abs().max().item()
    (w @ x).backward()
    grad = torch.cat([q.grad, b.grad, h.grad])

    # Central differences: all 2 * (n + n_eq + n_ineq) perturbed problems in one batch.
    theta = torch.cat([data["q"], data["b"], data["h"]])
    eye = FD_STEP * torch.eye(theta.numel(), dtype=torch.float64)
    batch = torch.cat([theta + eye, theta - eye])  # (2 * dim, dim)
    q_b, b_b, h_b = torch.split(batch, sizes, dim=1)
    with torch.no_grad():
        (x_b,) = layer(q_b, b_b, h_b, solver_args=TIGHT)
    values = x_b @ w
    half = theta.numel()
    fd = (values[:half] - values[half:]) / (2 * FD_STEP)

    rel_err = ((grad - fd).abs().max() / fd.abs().max().clamp_min(1e-12)).item()
    print(f"gradient check ({half} parameter entries, batch of {2 * half} solves)")
    print(f"  forward solution error vs closed form  {forward_err:.3e}")
    for name, g_part, fd_part in zip(
        ("q", "b", "h"), torch.split(grad, sizes), torch.split(fd, sizes)
    ):
        print(f"  d/d{name}: max |grad - fd| = {(g_part - fd_part).abs().max().item():.3e}")
    print(f"  max relative error |grad - fd|_inf / |fd|_inf = {rel_err:.3e}")
    return rel_err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Adam steps (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    instance = make_instance(rng)
    layer = build_layer(instance["A"], instance["G"])
    print(f"layer: n={N} variables, {N_EQ} equalities, {N_INEQ} inequalities")

    training_set = make_training_set(layer, instance, rng)
    initial, final = train(layer, training_set, args.steps)
    check_point = {k: torch.from_numpy(instance[k]) for k in ("q", "b", "h", "x_target")}
    rel_err = gradient_check(layer, check_point, args.seed)
    print(f"done in {time.perf_counter() - start:.1f} s")

    failures = []
    if not final < initial:
        failures.append(f"loss did not decrease ({initial:.3e} -> {final:.3e})")
    if not rel_err <= GRAD_TOL:
        failures.append(f"gradient check error {rel_err:.3e} exceeds {GRAD_TOL:.0e}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if not failures:
        print(f"OK: loss {initial:.3e} -> {final:.3e}, gradient error {rel_err:.1e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
