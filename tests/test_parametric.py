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
    for name, block in qp.blocks.items():
        flat = _expected_block(block, theta)
        got = values[name].detach().expand(3, *block.shape).reshape(3, -1).numpy()
        np.testing.assert_allclose(got, flat, rtol=1e-14, atol=1e-14, err_msg=name)
        weights = rng.standard_normal(flat.shape)
        if values[name].requires_grad and values[name].numel():
            loss = loss + (values[name].reshape(-1, flat.shape[1]) * torch.tensor(weights)).sum()
            expected_grad += (block.matrix[:, :-1].T @ weights[:, block.index].T).T
    loss.backward()
    np.testing.assert_allclose(theta_t.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-12)


def _expected_block(block, theta: np.ndarray) -> np.ndarray:
    """``(B, size)``: a block's entries from its sparse affine map at theta ``(B, K)``."""
    theta_aug = np.hstack([theta, np.ones((theta.shape[0], 1))])
    flat = np.zeros((theta.shape[0], math.prod(block.shape)))
    flat[:, block.index] = (block.matrix @ theta_aug.T).T
    return flat


def test_a_small_problem_s_blocks_are_one_dense_map_of_theta(rng):
    # A problem whose maps have fewer entries than [P, C'] evaluates q and [b; h] as
    # one product each. With c batched and the others shared: the values equal the
    # sparse maps, and the gradients their transposes (the shared parameters' summed
    # over the batch). When b and h are on different sides ([b; h] mixes a shared and
    # a batched parameter), the blocks are evaluated one by one, to the same values.
    x = cp.Variable(4)
    c, e, f = cp.Parameter(4), cp.Parameter(1), cp.Parameter(2)
    problem = cp.Problem(
        cp.Minimize(cp.sum_squares(x) + c @ x),
        [cp.sum(x) == 2 * e, x[:2] <= f, x[2:] >= -1],
    )
    qp = canonicalize(problem, [c, e, f], [x])
    maps = qp._dense_maps(torch.float64, torch.device("cpu"))
    assert maps["q"] is not None and maps["bound"] is not None
    assert maps["P"] is None and maps["C"] is None  # constants
    batch, K = 3, qp.theta_size
    for batched_bound in (False, True):  # f shared, then f batched and e shared
        theta = rng.standard_normal((batch, K))
        shared = rng.standard_normal((1, K))
        shared_blocks = frozenset({"P", "A", "G", "b"} | (set() if batched_bound else {"h"}))
        theta_t = torch.tensor(theta, requires_grad=True)
        shared_t = torch.tensor(shared, requires_grad=True)
        data = qp.data(theta_t, shared_t, shared_blocks)
        loss, grad, grad_shared = 0.0, np.zeros_like(theta), np.zeros_like(shared)
        for name, value in (("q", data.q), ("b", data.b), ("h", data.h)):
            block = qp.blocks[name]
            on_shared = name in shared_blocks
            expected = _expected_block(block, shared if on_shared else theta)
            got = value.detach().reshape(value.shape[0], -1).numpy()
            np.testing.assert_allclose(
                np.broadcast_to(got, (batch, got.shape[1])),
                np.broadcast_to(expected, (batch, expected.shape[1])),
                rtol=1e-14,
                atol=1e-14,
                err_msg=name,
            )
            weights = rng.standard_normal((value.shape[0], got.shape[1]))
            loss = loss + (value.reshape(value.shape[0], -1) * torch.tensor(weights)).sum()
            adjoint = (block.matrix[:, :-1].T @ weights[:, block.index].T).T
            if on_shared:
                grad_shared += adjoint.sum(0, keepdims=True)
            else:
                grad += adjoint
        loss.backward()
        np.testing.assert_allclose(theta_t.grad.numpy(), grad, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(shared_t.grad.numpy(), grad_shared, rtol=1e-12, atol=1e-12)


def test_an_output_whose_entries_are_a_range_is_a_slice():
    from altdiff_modeling._parametric import VariableSpec

    def span(index):
        return VariableSpec("v", (len(index),), np.array(index, dtype=np.int64)).span

    assert span([3, 4, 5]) == slice(3, 6)
    assert span([3, 5, 6]) is None  # a gap
    assert span([4, 3]) is None  # reversed
    assert span([-1, 0]) is None  # a zero entry
    assert span([]) is None
