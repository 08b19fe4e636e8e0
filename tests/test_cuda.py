"""The layer and `solve_qp` on a CUDA device give the CPU's solutions and gradients
(run where CUDA is present; the rest of the suite runs on the CPU)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from altdiff_modeling import AltDiffLayer, solve_qp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _layer_batch(seed: int, B: int, n: int):
    """A layer over shared P, A, G with batched q, b, h of feasible instances."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    A, G = rng.standard_normal((n // 2, n)), rng.standard_normal((n, n))
    x = cp.Variable(n)
    q, b, h = cp.Parameter(n), cp.Parameter(n // 2), cp.Parameter(n)
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(M.T @ M + np.eye(n))) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
    x0 = rng.standard_normal((B, n))
    values = [rng.standard_normal((B, n)), x0 @ A.T, x0 @ G.T + rng.uniform(-0.3, 1, (B, n))]
    layer = AltDiffLayer(problem, parameters=[q, b, h], variables=[x])
    return layer, values, rng.standard_normal((B, n))


def _solve_and_differentiate(layer, values, weights, device: str):
    inputs = [torch.tensor(v, device=device, requires_grad=True) for v in values]
    (x,) = layer(*inputs)
    grads = torch.autograd.grad((x * torch.tensor(weights, device=device)).sum(), inputs)
    return x, grads


@pytest.mark.parametrize("B", [1, 64])
def test_a_layer_on_cuda_matches_the_cpu(B):
    layer, values, weights = _layer_batch(0, B, 40)
    x_cpu, grads_cpu = _solve_and_differentiate(layer, values, weights, "cpu")
    for _ in range(3):  # later calls reuse the factors kept on the device
        x_gpu, grads_gpu = _solve_and_differentiate(layer, values, weights, "cuda")
        assert x_gpu.device.type == "cuda" and all(g.device.type == "cuda" for g in grads_gpu)
        torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=1e-7, atol=1e-8)
        for got, want in zip(grads_gpu, grads_cpu, strict=True):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-8)


def test_a_layer_with_fixed_variables_on_cuda_matches_the_cpu():
    # The ReLU layer: W_tilde == W eliminated, its terms W_tilde @ x formed per call,
    # and the multipliers of W_tilde == W recovered (`FixedVariables`).
    rng = np.random.default_rng(2)
    D, B = 6, 8
    z, W_tilde = cp.Variable(D), cp.Variable((D, D))
    x, W, b = cp.Parameter(D), cp.Parameter((D, D)), cp.Parameter(D)
    copy = W_tilde == W
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - W_tilde @ x - b)), [z >= 0, copy])
    layer = AltDiffLayer(problem, parameters=[x, W, b], variables=[z, copy.dual_variables[0]])
    values = [
        rng.standard_normal((B, D)),
        rng.standard_normal((B, D, D)),
        rng.standard_normal((B, D)),
    ]
    weights = [rng.standard_normal((B, D)), rng.standard_normal((B, D, D))]
    results = {}
    for device in ("cpu", "cuda"):
        inputs = [torch.tensor(v, device=device, requires_grad=True) for v in values]
        outputs = layer(*inputs)
        loss = sum((o * torch.tensor(w, device=device)).sum() for o, w in zip(outputs, weights))
        results[device] = [o.detach().cpu() for o in outputs]
        results[device] += [g.cpu() for g in torch.autograd.grad(loss, inputs)]
    for got, want in zip(results["cuda"], results["cpu"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_solve_qp_with_per_instance_matrices_on_cuda_matches_the_cpu():
    rng = np.random.default_rng(1)
    B, n = 8, 20
    M = rng.standard_normal((B, n, n))
    P = M @ M.transpose(0, 2, 1) + np.eye(n)
    A, G = rng.standard_normal((B, 5, n)), rng.standard_normal((B, n, n))
    x0 = rng.standard_normal((B, n, 1))
    data = [P, rng.standard_normal((B, n)), A, (A @ x0)[..., 0], G, (G @ x0)[..., 0] + 0.5]
    results = {}
    for device in ("cpu", "cuda"):
        tensors = [torch.tensor(v, device=device, requires_grad=True) for v in data]
        x = solve_qp(*tensors)
        grads = torch.autograd.grad(x.square().sum(), tensors)
        results[device] = (x, grads)
    (x_cpu, g_cpu), (x_gpu, g_gpu) = results["cpu"], results["cuda"]
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=1e-7, atol=1e-8)
    for got, want in zip(g_gpu, g_cpu, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-8)


def test_float32_on_cuda_solves_to_its_default_tolerance():
    layer, values, _ = _layer_batch(2, 16, 30)
    x64, _ = _solve_and_differentiate(layer, values, np.zeros((16, 30)), "cpu")
    inputs = [torch.tensor(v, device="cuda", dtype=torch.float32) for v in values]
    (x32,) = layer(*inputs)
    assert x32.dtype == torch.float32 and x32.device.type == "cuda"
    x64 = x64.detach()
    error = (x32.double().cpu() - x64).norm(dim=1) / x64.norm(dim=1)
    assert float(error.max()) <= 1e-3


def test_sparse_data_on_cuda_matches_the_cpu():
    # Sparse factors live on the CPU: CUDA inputs are moved there once per call, and
    # the outputs and gradients come back on the device.
    layer, values, weights = _layer_batch(3, 8, 30)
    sparse = {"backend": "sparse"}
    cpu = _solve_and_differentiate(layer, values, weights, "cpu")
    inputs = [torch.tensor(v, device="cuda", requires_grad=True) for v in values]
    (x,) = layer(*inputs, solver_args=sparse)
    grads = torch.autograd.grad((x * torch.tensor(weights, device="cuda")).sum(), inputs)
    assert x.device.type == "cuda" and all(g.device.type == "cuda" for g in grads)
    torch.testing.assert_close(x.cpu(), cpu[0], rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, cpu[1], strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_a_second_order_cone_layer_on_cuda_matches_the_cpu(mode):
    rng = np.random.default_rng(2)
    B, n, m = 16, 12, 20
    A = rng.standard_normal((m, n))
    x = cp.Variable(n)
    b, r = cp.Parameter(m), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [cp.norm(x, 2) <= r])
    layer = AltDiffLayer(problem, parameters=[b, r], variables=[x], solver_args={"mode": mode})
    values = [3 * rng.standard_normal((B, m)), rng.uniform(0.2, 1.0, B)]
    weights = rng.standard_normal((B, n))
    x_cpu, grads_cpu = _solve_and_differentiate(layer, values, weights, "cpu")
    x_gpu, grads_gpu = _solve_and_differentiate(layer, values, weights, "cuda")
    assert x_gpu.device.type == "cuda"
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=1e-7, atol=1e-8)
    for got, want in zip(grads_gpu, grads_cpu, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-8)


def test_a_layer_on_cuda_answers_recurring_active_sets_from_its_memory():
    # The simplex projection of points near one center: the memory's lookup runs in
    # torch on the device, and its answers are the exact projection.
    rng = np.random.default_rng(2)
    n = 4
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.sum(x) == 1, x >= 0])
    layer = AltDiffLayer(problem, parameters=[y], variables=[x])
    center = np.array([1.0, 0.5, -1.0, -1.0])
    remembered = 0
    for _ in range(20):
        values = center + 0.02 * rng.standard_normal(n)
        y_t = torch.tensor(values, device="cuda", requires_grad=True)
        (out,), info = layer(y_t, return_info=True)
        (grad,) = torch.autograd.grad(out[0], y_t)
        assert out.device.type == "cuda" and grad.device.type == "cuda"
        # support {0, 1}: x = y - tau on it, tau = (y0 + y1 - 1) / 2
        tau = (values[0] + values[1] - 1) / 2
        expected = np.maximum(values - tau, 0)
        tol = 1e-12 if int(info.iterations[0]) == 0 else 1e-6
        remembered += int(info.iterations[0]) == 0
        np.testing.assert_allclose(out.detach().cpu().numpy(), expected, atol=tol)
        np.testing.assert_allclose(grad.cpu().numpy(), [0.5, -0.5, 0, 0], atol=tol)
    assert remembered >= 10
