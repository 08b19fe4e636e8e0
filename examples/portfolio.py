"""Decision-focused learning of a Markowitz portfolio.

Each day, features ``x`` (``d`` numbers) are observed and a portfolio ``w`` of ``n``
assets is chosen by the Markowitz problem with predicted expected returns ``mu``,

    w*(mu) = argmax_w  mu'w - gamma/2 w' Sigma w   s.t.  1'w = 1,  w >= 0,

with a known covariance ``Sigma``. Returns depend on the features nonlinearly (a
degree-4 polynomial, as in the portfolio benchmark of Elmachtoub & Grigas' "Smart
Predict, then Optimize"), while the predictor is linear, ``mu = W [x; 1]``.

Two ways to fit ``W``:

* **two-stage** (predict, then optimize): least squares of the realized returns on the
  features, then ``w*(mu)``;
* **decision-focused**: start from the two-stage ``W`` and maximize the realized
  utility ``r'w*(mu) - gamma/2 w*'Sigma w*`` of the training days by gradient ascent
  *through* the portfolio layer.

Both are scored on held-out days by their regret: the utility lost, under the true
expected returns, against the portfolio chosen with those true expected returns.
Decision-focused learning gives up accuracy of ``mu`` for better decisions.

Run it with ``python examples/portfolio.py [--fast] [--out DIR] [--seed 0]``.
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
N_ASSETS, N_FEATURES, N_FACTORS = 10, 5, 4
DEGREE, SIGNAL, GAMMA = 4, 0.2, 500.0


class Market:
    """Synthetic returns: ``r = rbar(x) + L f + 0.01 eps`` with a nonlinear ``rbar``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.B = rng.binomial(1, 0.5, (N_ASSETS, N_FEATURES))
        self.L = rng.uniform(-0.01, 0.01, (N_ASSETS, N_FACTORS))
        self.Sigma = self.L @ self.L.T + 0.01**2 * np.eye(N_ASSETS)

    def sample(self, days: int) -> dict[str, torch.Tensor]:
        x = self.rng.standard_normal((days, N_FEATURES))
        linear = SIGNAL / np.sqrt(N_FEATURES) * x @ self.B.T
        rbar = (linear + 0.1 ** (1 / DEGREE)) ** DEGREE
        factors = self.rng.standard_normal((days, N_FACTORS))
        r = rbar + factors @ self.L.T + 0.01 * self.rng.standard_normal((days, N_ASSETS))
        features = np.hstack([x, np.ones((days, 1))])  # with an intercept
        return {
            "features": torch.from_numpy(features),
            "rbar": torch.from_numpy(rbar),
            "r": torch.from_numpy(r),
        }


def portfolio_layer(Sigma: np.ndarray) -> AltDiffLayer:
    """``w*(mu)``: the long-only Markowitz portfolio for predicted returns ``mu``."""
    w = cp.Variable(N_ASSETS, name="w")
    mu = cp.Parameter(N_ASSETS, name="mu")
    objective = cp.Maximize(mu @ w - GAMMA / 2 * cp.quad_form(w, Sigma))
    problem = cp.Problem(objective, [cp.sum(w) == 1, w >= 0])
    return AltDiffLayer(problem, parameters=[mu], variables=[w])


def utility(w: torch.Tensor, returns: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
    """``r'w - gamma/2 w'Sigma w`` per day, ``(days,)``."""
    return (w * returns).sum(-1) - GAMMA / 2 * ((w @ Sigma) * w).sum(-1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit both predictors; return their test regrets and prediction errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer days and steps")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_train, n_test, steps = (100, 200, 12) if args.fast else (400, 1000, 100)

    start = time.perf_counter()
    market = Market(np.random.default_rng(args.seed))
    train, test = market.sample(n_train), market.sample(n_test)
    Sigma = torch.from_numpy(market.Sigma)
    layer = portfolio_layer(market.Sigma)
    print(f"{N_ASSETS} assets, {N_FEATURES} features, gamma = {GAMMA}; QP: {layer.extra_repr()}")
    print(f"{n_train} training days, {n_test} test days")

    with torch.no_grad():
        (w_oracle,) = layer(test["rbar"])  # decisions with the true expected returns
        best = utility(w_oracle, test["rbar"], Sigma).mean().item()
        equal = torch.full((N_ASSETS,), 1.0 / N_ASSETS, dtype=torch.float64)
        regret_equal = best - utility(equal, test["rbar"], Sigma).mean().item()

    def evaluate(W: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """Test regret (in % of the oracle's utility), prediction MSE, and portfolios."""
        with torch.no_grad():
            mu = test["features"] @ W
            (w,) = layer(mu)
            regret = best - utility(w, test["rbar"], Sigma).mean().item()
            mse = (mu - test["rbar"]).pow(2).mean().item()
        return 100 * regret / best, mse, w

    # Two-stage: least squares of realized returns on the features.
    W_two_stage = torch.linalg.lstsq(train["features"], train["r"]).solution
    regret_2s, mse_2s, w_2s = evaluate(W_two_stage)

    # Decision-focused: maximize the realized utility through the layer.
    W = W_two_stage.clone().requires_grad_()
    optimizer = torch.optim.Adam([W], lr=2e-3)
    curve = {"step": [0], "regret": [regret_2s], "mse": [mse_2s]}
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        (w,) = layer(train["features"] @ W)  # (days, assets)
        loss = -utility(w, train["r"], Sigma).mean()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 20) == 0 or step == steps:
            regret, mse, _ = evaluate(W.detach())
            curve["step"].append(step)
            curve["regret"].append(regret)
            curve["mse"].append(mse)
    regret_dfl, mse_dfl, w_dfl = evaluate(W.detach())

    print(f"test regret (% of the oracle's utility {best:.4f}) and MSE of predicted returns:")
    print(f"  {'equal weights':>18}: regret {100 * regret_equal / best:6.2f}%")
    print(f"  {'two-stage':>18}: regret {regret_2s:6.2f}%   MSE {mse_2s:.2e}")
    print(f"  {'decision-focused':>18}: regret {regret_dfl:6.2f}%   MSE {mse_dfl:.2e}")
    held = (w_oracle > 1e-4).sum(1).double().mean().item()
    print(f"  assets held by the oracle portfolio: {held:.2f} on average")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(curve["step"], curve["regret"], marker=".", color="C2", label="decision-focused")
    axes[0].axhline(regret_2s, color="C1", ls="--", label="two-stage")
    axes[0].set(xlabel="Adam step", ylabel="test regret, % of optimum")
    axes[0].set_title("decisions")
    axes[0].legend()
    axes[1].plot(curve["step"], curve["mse"], marker=".", color="C2", label="decision-focused")
    axes[1].axhline(mse_2s, color="C1", ls="--", label="two-stage")
    axes[1].set(xlabel="Adam step", ylabel="test MSE of mu")
    axes[1].set_title("predictions")
    axes[1].legend()
    day = int(torch.argmax((w_2s - w_oracle).abs().sum(1)))  # a day where they differ
    width = 0.27
    assets = np.arange(N_ASSETS)
    for k, (name, w_) in enumerate(
        (("oracle", w_oracle), ("two-stage", w_2s), ("decision-focused", w_dfl))
    ):
        axes[2].bar(
            assets + (k - 1) * width, w_[day].numpy(), width, label=name, color=f"C{[0, 1, 2][k]}"
        )
    axes[2].set(xlabel="asset", ylabel="weight")
    axes[2].set_title(f"portfolios on test day {day}")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = args.out / "portfolio.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {os.path.relpath(path)}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "regret_equal": 100 * regret_equal / best,
        "regret_two_stage": regret_2s,
        "regret_decision_focused": regret_dfl,
        "mse_two_stage": mse_2s,
        "mse_decision_focused": mse_dfl,
    }


if __name__ == "__main__":
    main()
