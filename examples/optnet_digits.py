"""OptNet-style digit classifier: a QP layer whose constraints are learned.

A small network maps an 8x8 image of a handwritten digit (scikit-learn's ``digits`` data,
which ships inside the package: nothing is downloaded) to a score vector ``p``. The
OptNet layer (Amos & Kolter, 2017) then returns

    z*(p) = argmin_z  1/2 ||z||^2 - p'z   s.t.  G z <= h,

the Euclidean projection of ``p`` onto a polytope, and ``z*`` are the logits of a
softmax cross-entropy loss. ``G`` and ``h`` are trained with the network: they are
``nn.Parameter``s passed to the layer as unbatched CVXPY parameters, while ``p`` is
batched. As in OptNet, ``h = G z0 + softplus(s0)`` with a learned point ``z0`` and a
learned slack ``s0``, so the polytope always contains ``z0`` and every QP is feasible.

The script trains this model and the same network without the QP layer (its logits are
``p``), prints their test accuracies, and saves a figure of the learning curves and of
how many learned constraints are active at the test images.

Run it with ``python examples/optnet_digits.py [--fast] [--out DIR] [--seed 0]``.
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
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from altdiff_modeling import AltDiffLayer

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
N_CLASSES = 10
N_INEQ = 20  # learned inequality constraints
HIDDEN = 32
ACTIVE_TOL = 1e-5  # a constraint is active when its slack is below this


def build_qp_layer(n: int, m: int) -> AltDiffLayer:
    """The OptNet QP in CVXPY: scores ``p`` (batched), constraints ``G``, ``h`` (learned).

    Training needs gradients that point the right way, not solutions to the last digit:
    the layer's default tolerance is loosened to 1e-5 (see the truncation tutorial).
    """
    z = cp.Variable(n, name="z")
    p = cp.Parameter(n, name="p")
    G = cp.Parameter((m, n), name="G")
    h = cp.Parameter(m, name="h")
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(z) - p @ z), [G @ z <= h])
    return AltDiffLayer(
        problem,
        parameters=[p, G, h],
        variables=[z],
        solver_args={"eps_abs": 1e-5, "eps_rel": 1e-5},
    )


class Classifier(nn.Module):
    """A two-layer network, optionally followed by the OptNet layer."""

    def __init__(self, n_features: int, use_qp: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES)
        )
        self.use_qp = use_qp
        if use_qp:
            self.qp = build_qp_layer(N_CLASSES, N_INEQ)
            self.G = nn.Parameter(torch.randn(N_INEQ, N_CLASSES) / N_CLASSES**0.5)
            self.z0 = nn.Parameter(torch.zeros(N_CLASSES))
            # softplus(-2) = 0.13: the polytope starts small, so constraints are active.
            self.s0 = nn.Parameter(torch.full((N_INEQ,), -2.0))

    def constraints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, h)`` with ``h = G z0 + softplus(s0)``: the polytope always contains z0."""
        return self.G, self.G @ self.z0 + nn.functional.softplus(self.s0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = self.net(features)  # (B, 10)
        if not self.use_qp:
            return p
        G, h = self.constraints()
        (z,) = self.qp(p, G, h)  # p is batched, G and h are shared by the batch
        return z


def load_data(seed: int, n_train: int | None) -> dict[str, torch.Tensor]:
    digits = load_digits()
    X = digits.data / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    if n_train is not None:
        X_train, y_train = X_train[:n_train], y_train[:n_train]
    return {
        "X_train": torch.from_numpy(X_train),
        "y_train": torch.from_numpy(y_train),
        "X_test": torch.from_numpy(X_test),
        "y_test": torch.from_numpy(y_test),
    }


def accuracy(model: Classifier, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(X).argmax(dim=1) == y).double().mean().item()


def train(
    model: Classifier, data: dict[str, torch.Tensor], epochs: int, batch: int, seed: int
) -> dict[str, list[float]]:
    """Adam on the cross-entropy; returns per-step losses and per-epoch test accuracies."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(seed)
    X, y = data["X_train"], data["y_train"]
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    for _ in range(epochs):
        order = torch.randperm(X.shape[0], generator=gen)
        for start in range(0, X.shape[0], batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(X[index]), y[index])
            loss.backward()
            optimizer.step()
            history["loss"].append(loss.item())
        history["test_accuracy"].append(accuracy(model, data["X_test"], data["y_test"]))
    return history


def active_counts(model: Classifier, X: torch.Tensor) -> np.ndarray:
    """Number of active learned constraints at each input's solution."""
    with torch.no_grad():
        z = model(X)
        G, h = model.constraints()
        slack = h - z @ G.T
    return (slack < ACTIVE_TOL).sum(dim=1).numpy()


def plot(histories: dict, active: np.ndarray, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, history in histories.items():
        losses = np.asarray(history["loss"])
        axes[0].plot(losses, label=name, alpha=0.8)
        epochs = np.arange(1, len(history["test_accuracy"]) + 1)
        axes[1].plot(epochs, history["test_accuracy"], marker="o", label=name)
    axes[0].set(xlabel="Adam step", ylabel="training cross-entropy", yscale="log")
    axes[0].set_title("training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy")
    axes[1].set_title("test accuracy")
    for ax in axes[:2]:
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].hist(active, bins=np.arange(N_INEQ + 2) - 0.5, color="tab:orange")
    axes[2].set(xlabel="active learned constraints", ylabel="test images")
    axes[2].set_xlim(-0.5, active.max() + 1.5)
    axes[2].set_title(f"active constraints (of {N_INEQ}) at z*")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train both models; return the key numbers (accuracies, losses, active counts)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="few samples and one epoch")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs, batch, n_train = (2, 100, 400) if args.fast else (12, 128, None)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    data = load_data(args.seed, n_train)
    n_features = data["X_train"].shape[1]
    print(
        f"digits: {data['X_train'].shape[0]} training and {data['X_test'].shape[0]} test images, "
        f"{n_features} pixels, {N_CLASSES} classes"
    )

    histories, results = {}, {}
    for name, use_qp in (("network only", False), ("network + OptNet QP", True)):
        torch.manual_seed(args.seed)  # the same initial network for both models
        model = Classifier(n_features, use_qp).double()
        t0 = time.perf_counter()
        history = train(model, data, epochs, batch, args.seed)
        histories[name] = history
        key = "qp" if use_qp else "baseline"
        results[f"{key}_accuracy"] = history["test_accuracy"][-1]
        results[f"{key}_first_loss"] = history["loss"][0]
        results[f"{key}_final_loss"] = float(np.mean(history["loss"][-5:]))
        print(
            f"{name:>20}: test accuracy {history['test_accuracy'][-1]:.3f}, "
            f"training loss {history['loss'][0]:.3f} -> {results[f'{key}_final_loss']:.3f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        if use_qp:
            active = active_counts(model, data["X_test"])
            results["mean_active"] = float(active.mean())
            G, h = model.constraints()
            results["z0_feasible"] = float((G @ model.z0 - h).max().item()) <= 0
            print(
                f"{'':>20}  learned constraints active per test image: mean "
                f"{active.mean():.2f}, max {active.max()} (of {N_INEQ})"
            )

    path = args.out / "optnet_digits.png"
    plot(histories, active, path)
    print(f"figure: {os.path.relpath(path)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
