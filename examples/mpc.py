"""Differentiable MPC: learning a linear model from an expert's controls.

A model-predictive controller plans, from the current state ``x0``, the controls of the
next ``T`` steps of a linear system ``x_{t+1} = A x_t + B u_t``:

    minimize    sum_{t=1..T} ||x_t||^2 + R sum_{t=0..T-1} u_t^2
    subject to  x_{t+1} = A x_t + B u_t,   x_0 = x0,   |u_t| <= u_max,

and applies the first control. Written in CVXPY with ``A``, ``B`` and ``x0`` as
parameters, the planner is a layer: its planned controls are differentiable in the
model (``A``, ``B``) as well as in the state, through active control limits included.

The script does imitation learning in the style of Amos et al. (2018): an expert
controls a double integrator (position and velocity) with the true model; a learner
starts from a wrong model and adjusts ``A`` and ``B`` by gradient descent so that its
planned controls match the expert's at random states. It then runs both controllers,
and the learner's initial one, in closed loop on the true system.

Run it with ``python examples/mpc.py [--fast] [--out DIR] [--seed 0]``.
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
DT = 0.2
A_TRUE = torch.tensor([[1.0, DT], [0.0, 1.0]], dtype=torch.float64)
B_TRUE = torch.tensor([[0.5 * DT**2], [DT]], dtype=torch.float64)
R = 0.1  # control weight
U_MAX = 1.0


def mpc_layer(horizon: int) -> AltDiffLayer:
    """The planner: parameters ``A (2, 2)``, ``B (2, 1)``, ``x0 (2,)``; outputs x and u."""
    n_x, n_u = 2, 1
    x = cp.Variable((n_x, horizon + 1), name="x")
    u = cp.Variable((n_u, horizon), name="u")
    A = cp.Parameter((n_x, n_x), name="A")
    B = cp.Parameter((n_x, n_u), name="B")
    x0 = cp.Parameter(n_x, name="x0")
    constraints = [
        x[:, 0] == x0,
        x[:, 1:] == A @ x[:, :-1] + B @ u,  # parameter @ variable: DPP
        cp.abs(u) <= U_MAX,
    ]
    objective = cp.Minimize(cp.sum_squares(x[:, 1:]) + R * cp.sum_squares(u))
    return AltDiffLayer(cp.Problem(objective, constraints), parameters=[A, B, x0], variables=[x, u])


def closed_loop(
    layer: AltDiffLayer, A: torch.Tensor, B: torch.Tensor, x0: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run receding-horizon control on the *true* system, for a batch of models and states.

    Args:
        A: ``(K, 2, 2)`` and B ``(K, 2, 1)``, the controllers' models.
        x0: ``(K, 2)`` initial states.

    Returns:
        States ``(K, steps + 1, 2)`` and applied controls ``(K, steps)``.
    """
    states, controls = [x0], []
    x = x0
    with torch.no_grad():
        for _ in range(steps):
            _, u_plan = layer(A, B, x)  # every controller plans with its own model
            u = u_plan[:, 0, 0]
            x = x @ A_TRUE.T + u[:, None] * B_TRUE[:, 0]
            states.append(x)
            controls.append(u)
    return torch.stack(states, dim=1), torch.stack(controls, dim=1)


def cost(states: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Closed-loop cost ``sum ||x_t||^2 + R u_t^2`` of each trajectory."""
    return states[:, 1:].pow(2).sum((1, 2)) + R * controls.pow(2).sum(1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Learn the model by imitation; return the key numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short horizon, few steps")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    horizon, steps, batch, rollout = (8, 12, 16, 15) if args.fast else (12, 80, 32, 40)

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    layer = mpc_layer(horizon)
    print(f"double integrator, horizon {horizon}, |u| <= {U_MAX}; QP: {layer.extra_repr()}")

    # The learner's initial model: it believes velocity does not move the position and
    # that the control acts half as strongly as it does.
    A_init = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    B_init = torch.tensor([[0.0], [0.1]], dtype=torch.float64)
    A_hat = A_init.clone().requires_grad_()
    B_hat = B_init.clone().requires_grad_()
    optimizer = torch.optim.Adam([A_hat, B_hat], lr=0.02)

    def model_error() -> float:
        return torch.cat([(A_hat - A_TRUE).flatten(), (B_hat - B_TRUE).flatten()]).norm().item()

    losses, errors, saturated = [], [model_error()], []
    for _ in range(steps):
        x0 = 6 * torch.rand(batch, 2, generator=gen, dtype=torch.float64) - 3
        with torch.no_grad():
            _, u_expert = layer(A_TRUE, B_TRUE, x0)
        optimizer.zero_grad()
        _, u_learner = layer(A_hat, B_hat, x0)  # the model is shared by the batch
        loss = (u_learner - u_expert).pow(2).sum((1, 2)).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        errors.append(model_error())
        saturated.append((u_expert.abs() > U_MAX - 1e-6).double().mean().item())
    print(f"imitation: {steps} Adam steps on batches of {batch} random initial states")
    print(f"  loss ||u_learner - u_expert||^2: {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"  model error ||[A B] - [A B]_true||: {errors[0]:.4f} -> {errors[-1]:.4f}")
    print(f"  expert controls at the limit: {100 * np.mean(saturated):.0f}%")
    print("  learned A =", np.round(A_hat.detach().numpy(), 3).tolist())
    print("  learned B =", np.round(B_hat.detach().numpy(), 3).tolist())

    # Closed loop on the true system: expert, initial model and learned model, all as
    # one batch of 3 * n_test problems (each with its own model).
    test = torch.tensor([[2.5, 0.0], [-2.0, 1.5], [1.0, -2.5], [-3.0, -1.0]], dtype=torch.float64)
    models = [(A_TRUE, B_TRUE), (A_init, B_init), (A_hat.detach(), B_hat.detach())]
    k = test.shape[0]
    A_all = torch.cat([a.expand(k, 2, 2) for a, _ in models])
    B_all = torch.cat([b.expand(k, 2, 1) for _, b in models])
    states, controls = closed_loop(layer, A_all, B_all, test.repeat(3, 1), rollout)
    costs = cost(states, controls).reshape(3, k).mean(1)
    names = ["expert (true model)", "initial model", "learned model"]
    print(f"closed loop on the true system, {rollout} steps, mean cost over {k} initial states:")
    for name, value in zip(names, costs):
        print(f"  {name:>20}: {value.item():.3f}")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(losses, label="imitation loss")
    axes[0].plot(errors[1:], label="model error")
    axes[0].set(xlabel="Adam step", yscale="log")
    axes[0].set_title("learning the model")
    axes[0].legend()
    t = np.arange(rollout + 1) * DT
    for i, (name, style) in enumerate(zip(names, ["-", ":", "--"])):
        axes[1].plot(t, states[i * k, :, 0].numpy(), style, label=name)
        axes[2].step(t[:-1], controls[i * k].numpy(), style, where="post", label=name)
    axes[1].set(xlabel="time", ylabel="position")
    axes[1].set_title(f"closed loop from x0 = {test[0].tolist()}")
    axes[2].set(xlabel="time", ylabel="control u")
    axes[2].set_title(f"applied controls (|u| <= {U_MAX})")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = args.out / "mpc.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {os.path.relpath(path)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "initial_model_error": errors[0],
        "final_model_error": errors[-1],
        "expert_cost": costs[0].item(),
        "initial_cost": costs[1].item(),
        "learned_cost": costs[2].item(),
    }


if __name__ == "__main__":
    main()
