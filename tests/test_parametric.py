"""The QP data as functions of the parameters: the torch evaluation of each block
against its sparse affine map."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import torch

from altdiff_modeling._canon import canonicalize


def test_block_values_and_gradients_match_their_affine_maps(rng):
    # Entries that are one parameter entry times a coefficient plus a constant, the
    # average of a PSD parameter's two entries, and the sum of six parameters (more
    # than the gather path takes, so that block keeps the sparse product): each block
    # equals its affine map, and the gradient is the map's transpose.
    x = cp.Variable(3)
    Q = cp.Parameter((3, 3), PSD=True)
    a, p, h = cp.Parameter(), cp.Parameter(6), cp.Parameter(2)
    problem = cp.Problem(
        cp.Minimize(cp.quad_form(x, Q) + cp.sum(x)),
        [cp.sum(p) * x[0] + (2 * a + 1) * x[1] <= h[0], x[2] - 3 * a * x[1] <= h[1]],
    )
    qp = canonicalize(problem, [Q, a, p, h], [x])
    torch_blocks = qp._torch_blocks(torch.float64, torch.device("cpu"))
    assert any(b.selection is not None for b in torch_blocks.values())
    assert any(b.matrix is not None for b in torch_blocks.values())

    theta = rng.standard_normal((3, qp.theta_size))
    theta_t = torch.tensor(theta, requires_grad=True)
    data = qp.data(theta_t)
    values = {"P": data.P, "q": data.q, "A": data.A, "b": data.b}
    values.update({"G": data.G, "h": data.h})
    loss, expected_grad = 0.0, np.zeros_like(theta)
    theta_aug = np.hstack([theta, np.ones((3, 1))])
    for name, block in qp.blocks.items():
        flat = np.zeros((3, math.prod(block.shape)))
        flat[:, block.index] = (block.matrix @ theta_aug.T).T
        got = values[name].detach().expand(3, *block.shape).reshape(3, -1).numpy()
        np.testing.assert_allclose(got, flat, rtol=1e-14, atol=1e-14, err_msg=name)
        weights = rng.standard_normal(flat.shape)
        if values[name].requires_grad and values[name].numel():
            loss = loss + (values[name].reshape(-1, flat.shape[1]) * torch.tensor(weights)).sum()
            expected_grad += (block.matrix[:, :-1].T @ weights[:, block.index].T).T
    loss.backward()
    np.testing.assert_allclose(theta_t.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-12)
