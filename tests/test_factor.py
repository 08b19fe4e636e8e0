"""The factor of H: the explicit inverse the ADMM step multiplies by on small,
well-conditioned problems, and where it is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from altdiff_modeling import solve_qp
from altdiff_modeling.linsys import cholesky as factor_module
from altdiff_modeling.linsys.cholesky import CholeskyFactor


def _spd(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    """``(1, n, n)`` symmetric positive definite with the given 2-norm condition."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = np.geomspace(1.0, condition, n)
    return torch.from_numpy((Q * eigenvalues) @ Q.T).unsqueeze(0)


def test_step_inverse_of_a_small_well_conditioned_factor_is_h_inverse():
    H = _spd(40, 1e3)
    factor = CholeskyFactor(H)
    inverse = factor.step_inverse()
    assert inverse is not None and inverse.shape == (40, 40)
    expected = torch.linalg.inv(H[0])
    assert float((inverse - expected).abs().max() / expected.abs().max()) <= 1e-12
    assert factor.step_inverse() is inverse  # computed once
    assert factor.nbytes() == 2 * 40 * 40 * 8


@pytest.mark.parametrize(
    "H",
    [
        pytest.param(_spd(40, 1e7), id="condition above 1e6"),
        pytest.param(_spd(40, 1e3).float(), id="float32"),
        pytest.param(torch.cat([_spd(10, 1e2, 0), _spd(10, 1e2, 1)]), id="one per instance"),
        pytest.param(_spd(257, 1e2), id="n above 256"),
    ],
)
def test_step_inverse_is_refused_where_the_solves_serve_better(H):
    factor = CholeskyFactor(H)
    assert factor.step_inverse() is None
    assert factor.nbytes() == H.numel() * H.element_size()


def test_admm_with_the_step_inverse_converges_to_the_same_solutions(monkeypatch):
    # A batch sharing its matrices, solved without polishing (so that the solutions
    # are the ADMM iterates' own) with and without the explicit inverse.
    rng = np.random.default_rng(1)
    B, n, n_eq = 8, 20, 10
    M = rng.standard_normal((n, n))
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((n, n))
    x0 = rng.standard_normal((B, n))
    data = [M.T @ M, rng.standard_normal((B, n)), A, x0 @ A.T, G, x0 @ G.T + rng.random((B, n))]
    args = [torch.from_numpy(v) for v in data]
    settings = {"polish": False, "eps_abs": 1e-9, "eps_rel": 1e-9}
    used = []
    original = CholeskyFactor.step_inverse

    def spy(self):
        used.append(original(self))
        return used[-1]

    monkeypatch.setattr(CholeskyFactor, "step_inverse", spy)
    x, info = solve_qp(*args, solver_args=settings, return_info=True)
    assert used and all(inverse is not None for inverse in used)
    monkeypatch.setattr(factor_module, "_STEP_INVERSE_MAX_N", 0)
    used.clear()
    x_solves, info_solves = solve_qp(*args, solver_args=settings, return_info=True)
    assert used and all(inverse is None for inverse in used)
    assert info.status == info_solves.status == ["solved"] * B
    assert float((x - x_solves).abs().max()) <= 1e-7 * float(x_solves.abs().max())
