"""AltDiffLayer and solve_qp against independent references, over the problem families.

For every family in ``tests/families.py`` (float64 unless stated):

(a) the layer's solution agrees with CVXPY + Clarabel (``solve_reference``) to 1e-6;
(b) reverse-mode gradients of a random linear loss agree with central finite
    differences of Clarabel (``finite_difference_gradient``) to 1e-5;
(c) forward-mode and reverse-mode gradients agree to 1e-6;
(d) a batched call (B = 3, some parameters batched, the others shared) equals the
    unbatched calls, values and gradients;
(f) float32 inputs give float32 outputs within 1e-3 of the float64 reference (at
    float32-sized tolerances; within 1e-2 at the library's defaults).

(e) ``torch.autograd.gradcheck`` runs on a few small families, and ``solve_qp`` is
checked on random QPs against ``solve_qp_reference`` and ``kkt_implicit_gradient``.

Relative errors are ``||a - b|| / ||b||`` over all entries. For per-parameter gradient
comparisons, a parameter whose reference gradient vanishes (the cost of an LP at a
non-degenerate vertex) is measured against 1e-3 times the norm of the whole gradient,
so it must come out as zero to that accuracy rather than to 1e-12 absolute.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
import torch
from families import FAMILIES, Family, build_family, param_values, perturb_values, random_qp
from float32_checks import assert_float32_layer
from reference import (
    finite_difference_gradient,
    kkt_implicit_gradient,
    relative_error,
    solve_qp_reference,
    solve_reference,
)

from altdiff_modeling import AltDiffLayer, solve_qp

NAMES = sorted(FAMILIES)

#: Settings under which the layer must reproduce the references to 1e-6 (values) and
#: 1e-5 (gradients).
TIGHT = {
    "eps_abs": 1e-10,
    "eps_rel": 1e-10,
    "max_iter": 100_000,
    "backward_eps": 1e-12,
    "backward_max_iter": 100_000,
}


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode("utf-8"))


@functools.cache
def _case(name: str):
    """Family, layer, loss weights, reference solution and FD gradient (built once)."""
    fam = build_family(name)
    layer = AltDiffLayer(fam.problem, parameters=fam.parameters, variables=fam.variables)
    rng = np.random.default_rng(_seed(name, "weights"))
    weights = [rng.standard_normal(v.shape) for v in fam.variables]
    x_ref = solve_reference(fam.problem, param_values(fam), fam.variables)
    return fam, layer, weights, x_ref


@functools.cache
def _fd_gradient(name: str) -> list[np.ndarray]:
    fam, _, weights, _ = _case(name)
    grads = finite_difference_gradient(fam.problem, param_values(fam), fam.variables, weights)
    return [grads[p] for p in fam.parameters]


def _tensors(values, dtype=torch.float64, requires_grad=False) -> list[torch.Tensor]:
    return [torch.tensor(np.asarray(v), dtype=dtype).requires_grad_(requires_grad) for v in values]


def _loss(outputs, weights) -> torch.Tensor:
    return sum(
        (out * torch.as_tensor(w, dtype=out.dtype)).sum()
        for out, w in zip(outputs, weights, strict=True)
    )


def _layer_gradient(layer, fam: Family, weights, solver_args) -> list[np.ndarray]:
    inputs = _tensors(fam.values, requires_grad=True)
    outputs = layer(*inputs, solver_args=solver_args)
    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    return [g.detach().numpy() for g in grads]


def _assert_gradients_close(actual, expected, rtol: float, params, what: str) -> None:
    """Whole-gradient relative error, then each parameter's (floored, see module doc)."""
    if not params:
        return
    total = relative_error(actual, expected)
    assert total < rtol, f"{what}: relative error of the whole gradient {total:.2e} >= {rtol}"
    scale = np.linalg.norm(np.concatenate([np.ravel(e) for e in expected]))
    for p, a, e in zip(params, actual, expected, strict=True):
        assert np.shape(a) == np.shape(e), f"{what}: gradient of {p.name()} has shape {np.shape(a)}"
        err = np.linalg.norm(np.ravel(a) - np.ravel(e)) / max(np.linalg.norm(e), 1e-3 * scale)
        assert err < rtol, f"{what}: d/d{p.name()} relative error {err:.2e} >= {rtol}"


# --------------------------------------------------------------------------------------
# (a) values, (b) gradients vs finite differences, (c) forward vs reverse
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_solution_matches_reference(name) -> None:
    fam, layer, _, x_ref = _case(name)
    outputs = layer(*_tensors(fam.values), solver_args=TIGHT)
    assert isinstance(outputs, tuple) and len(outputs) == len(fam.variables)
    for out, var, ref in zip(outputs, fam.variables, x_ref, strict=True):
        assert out.dtype == torch.float64
        assert tuple(out.shape) == var.shape
        err = relative_error(out, ref)
        assert err < 1e-6, f"{var.name()}: relative error {err:.2e} vs Clarabel"


@pytest.mark.parametrize("name", NAMES)
def test_reverse_gradient_matches_finite_differences(name) -> None:
    fam, layer, weights, _ = _case(name)
    grads = _layer_gradient(layer, fam, weights, {**TIGHT, "mode": "reverse"})
    _assert_gradients_close(grads, _fd_gradient(name), 1e-5, fam.parameters, "reverse vs FD")


@pytest.mark.parametrize("name", NAMES)
def test_forward_mode_matches_reverse_mode(name) -> None:
    fam, layer, weights, _ = _case(name)
    reverse = _layer_gradient(layer, fam, weights, {**TIGHT, "mode": "reverse"})
    forward = _layer_gradient(layer, fam, weights, {**TIGHT, "mode": "forward"})
    _assert_gradients_close(forward, reverse, 1e-6, fam.parameters, "forward vs reverse")


# --------------------------------------------------------------------------------------
# (d) batching
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_batched_call_equals_unbatched_calls(name) -> None:
    fam, layer, _, _ = _case(name)
    rng = np.random.default_rng(_seed(name, "batch"))
    B = 3
    instances = [perturb_values(fam, rng, 0.02) for _ in range(B)]
    # Batch every other parameter (all of them if there is only one); share the rest.
    batched = [i % 2 == 0 for i in range(len(fam.parameters))]
    inputs = []
    for i, is_batched in enumerate(batched):
        if is_batched:
            inputs.append(torch.tensor(np.stack([inst[i] for inst in instances])))
        else:
            for inst in instances:
                inst[i] = fam.values[i]
            inputs.append(torch.tensor(np.asarray(fam.values[i])))
    for t in inputs:
        t.requires_grad_(True)
    weights = [rng.standard_normal((B, *v.shape)) for v in fam.variables]

    outputs = layer(*inputs, solver_args=TIGHT)
    grads = torch.autograd.grad(_loss(outputs, weights), inputs)
    for out, var in zip(outputs, fam.variables, strict=True):
        assert tuple(out.shape) == (B, *var.shape)

    shared_sum = [np.zeros(np.shape(v)) for v in fam.values]
    for k, inst in enumerate(instances):
        single_inputs = _tensors(inst, requires_grad=True)
        single = layer(*single_inputs, solver_args=TIGHT)
        single_grads = torch.autograd.grad(_loss(single, [w[k] for w in weights]), single_inputs)
        for out, ref in zip(outputs, single, strict=True):
            err = relative_error(out[k], ref)
            assert err < 1e-7, f"instance {k}: batched vs unbatched value, rel. error {err:.2e}"
        batched_idx = [i for i in range(len(batched)) if batched[i]]
        _assert_gradients_close(
            [grads[i][k].numpy() for i in batched_idx],
            [single_grads[i].numpy() for i in batched_idx],
            1e-6,
            [fam.parameters[i] for i in batched_idx],
            f"instance {k}: batched vs unbatched",
        )
        for i in range(len(batched)):
            if not batched[i]:
                shared_sum[i] += single_grads[i].numpy()
        # Each solution is also the reference solution of its own instance.
        x_ref = solve_reference(fam.problem, param_values(fam, inst), fam.variables)
        assert relative_error([o[k] for o in outputs], x_ref) < 1e-6
    # A shared parameter's gradient is the sum over the batch of the instances' gradients.
    shared_idx = [i for i in range(len(batched)) if not batched[i]]
    for i in shared_idx:
        assert tuple(grads[i].shape) == np.shape(fam.values[i])
    _assert_gradients_close(
        [grads[i].numpy() for i in shared_idx],
        [shared_sum[i] for i in shared_idx],
        1e-6,
        [fam.parameters[i] for i in shared_idx],
        "shared parameters: batched vs sum of unbatched",
    )


# --------------------------------------------------------------------------------------
# (e) gradcheck
# --------------------------------------------------------------------------------------

#: Finite-difference step of gradcheck: far below the complementarity margins (> 0.05)
#: and large enough that the forward solution's error (~1e-12 at these tolerances) adds
#: ~1e-7 noise to the numerical Jacobian.
GRADCHECK_EPS = 1e-5
GRADCHECK_SETTINGS = {**TIGHT, "eps_abs": 1e-12, "eps_rel": 1e-12}


@pytest.mark.parametrize("name", ["simplex_projection", "psd_quad_form", "nnls_param_matrix"])
def test_gradcheck(name) -> None:
    fam, layer, _, _ = _case(name)
    inputs = tuple(_tensors(fam.values, requires_grad=True))

    def fn(*args):
        return layer(*args, solver_args=GRADCHECK_SETTINGS)

    assert torch.autograd.gradcheck(fn, inputs, eps=GRADCHECK_EPS, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------
# (f) float32
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_float32_inputs_give_float32_outputs(name) -> None:
    """float32 in, float32 out, within 1e-3 of the float64 reference at float32-sized
    tolerances; the library's default settings must also succeed in float32 (within 1e-2:
    their default tolerance is coarser)."""
    fam, layer, weights, x_ref = _case(name)
    loss = functools.partial(_loss, weights=weights)
    assert_float32_layer(layer, fam.values, fam.variables, x_ref, loss, "Clarabel")


# --------------------------------------------------------------------------------------
# solve_qp on random QPs in matrix form
# --------------------------------------------------------------------------------------

_BLOCKS = ("P", "q", "A", "b", "G", "h")


@pytest.mark.parametrize(
    ("n", "n_eq", "n_ineq", "n_active", "lp"),
    [
        pytest.param(6, 2, 8, 3, False, id="qp"),
        pytest.param(5, 0, 7, 2, False, id="qp_ineq_only"),
        pytest.param(5, 2, 0, 0, False, id="qp_eq_only"),
        pytest.param(4, 1, 8, 3, True, id="lp_vertex"),
    ],
)
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_solve_qp_matches_kkt_reference(rng, n, n_eq, n_ineq, n_active, lp, mode) -> None:
    data = random_qp(rng, n=n, n_eq=n_eq, n_ineq=n_ineq, n_active=n_active, lp=lp)
    x, lam, nu = solve_qp_reference(*(data[k] for k in _BLOCKS))
    grad_x = rng.standard_normal(n)
    ref = dict(zip(_BLOCKS, kkt_implicit_gradient(*(data[k] for k in _BLOCKS), x, lam, nu, grad_x)))

    inputs = {
        k: None if data[k] is None else torch.tensor(data[k]).requires_grad_(True) for k in _BLOCKS
    }
    x_t = solve_qp(*(inputs[k] for k in _BLOCKS), solver_args={**TIGHT, "mode": mode})
    assert x_t.shape == (n,) and x_t.dtype == torch.float64
    assert relative_error(x_t, x) < 1e-6
    present = [k for k in _BLOCKS if inputs[k] is not None]
    grads = torch.autograd.grad((x_t * torch.tensor(grad_x)).sum(), [inputs[k] for k in present])
    scale = np.linalg.norm(np.concatenate([ref[k].ravel() for k in present]))
    for k, g in zip(present, grads, strict=True):
        err = np.linalg.norm(g.numpy() - ref[k]) / max(np.linalg.norm(ref[k]), 1e-3 * scale)
        assert err < 1e-5, f"d{k} ({mode}): relative error {err:.2e} vs KKT reference"


def test_solve_qp_batched_like_qpth(rng) -> None:
    """Batched P and q with shared A, b, G, h equals one call per instance."""
    B, n = 3, 5
    base = random_qp(rng, n=n, n_eq=1, n_ineq=6, n_active=2)
    Ps, qs = [], []
    for _ in range(B):
        M = rng.standard_normal((n, n))
        Ps.append(base["P"] + 0.05 * M @ M.T)
        qs.append(base["q"] * (1 + 0.02 * rng.uniform(-1, 1, n)))
    shared = [torch.tensor(base[k]) for k in ("A", "b", "G", "h")]
    x_batch = solve_qp(
        torch.tensor(np.stack(Ps)), torch.tensor(np.stack(qs)), *shared, solver_args=TIGHT
    )
    assert x_batch.shape == (B, n)
    for k in range(B):
        x_ref, _, _ = solve_qp_reference(Ps[k], qs[k], *(base[k2] for k2 in ("A", "b", "G", "h")))
        x_single = solve_qp(torch.tensor(Ps[k]), torch.tensor(qs[k]), *shared, solver_args=TIGHT)
        assert relative_error(x_batch[k], x_single) < 1e-7
        assert relative_error(x_batch[k], x_ref) < 1e-6
