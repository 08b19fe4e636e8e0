"""The float32 check that the layer tests share: float32 in, float32 out, close to a
float64 reference at float32-sized tolerances and at the library's defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from reference import relative_error

#: Tolerances a float32 user can ask for: an order of magnitude above float32 round-off
#: on residuals of O(1) problems.
FLOAT32_SETTINGS = {"eps_abs": 1e-5, "eps_rel": 1e-5, "max_iter": 20_000}


def _float32(values, requires_grad: bool = False) -> list[torch.Tensor]:
    return [
        torch.tensor(np.asarray(v), dtype=torch.float32).requires_grad_(requires_grad)
        for v in values
    ]


def assert_float32_layer(
    layer: Callable,
    values: Sequence,
    variables: Sequence,
    references: Sequence,
    loss: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    reference_name: str = "the reference",
) -> None:
    """The layer's outputs on float32 ``values`` are float32, of the variables' shapes,
    within 1e-3 of ``references`` at `FLOAT32_SETTINGS` (within 1e-2 at the library's
    coarser defaults), and the gradients of ``loss(outputs)`` are float32 and finite."""
    inputs = _float32(values, requires_grad=True)
    outputs = layer(*inputs, solver_args=FLOAT32_SETTINGS)
    for out, var, ref in zip(outputs, variables, references, strict=True):
        assert out.dtype == torch.float32
        assert tuple(out.shape) == var.shape
        err = relative_error(out, ref)
        assert err < 1e-3, f"{var.name()}: float32 relative error {err:.2e} vs {reference_name}"
    grads = torch.autograd.grad(loss(outputs), inputs)
    assert all(g.dtype == torch.float32 for g in grads)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    defaults = layer(*_float32(values))
    for out, var, ref in zip(defaults, variables, references, strict=True):
        assert out.dtype == torch.float32
        err = relative_error(out, ref)
        assert err < 1e-2, f"{var.name()}: float32 (default settings) rel. error {err:.2e}"
