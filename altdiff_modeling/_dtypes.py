"""The dtype a solve computes in, from the dtypes of its inputs (torch's type promotion)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ._errors import InputError
from ._settings import SUPPORTED_DTYPES

__all__ = ["compute_dtype"]


def compute_dtype(named: Sequence[tuple[str, torch.dtype]]) -> torch.dtype:
    """The dtype a solve on these inputs computes in and returns.

    Floating inputs promote to the widest among them (``torch.promote_types``, which,
    unlike a binary operation, ranks a 0-d tensor like any other); inputs that are all
    integer or bool compute in torch's default float dtype. A float32 solve stays
    float32 only when no input is wider.

    Args:
        named: ``(label, dtype)`` of each input, ``label`` as error messages name it
            (``"parameter 'q'"``, ``"G"``).

    Raises:
        InputError: An input is complex, or the promoted dtype is not float32 or
            float64 (float16 or bfloat16 inputs alone); the message names the inputs.
    """
    complex_ = [label for label, dtype in named if dtype.is_complex]
    if complex_:
        raise InputError(
            f"{', '.join(complex_)}: complex dtypes are not supported (the problem is real)"
        )
    dtypes = [dtype for _, dtype in named]
    if not dtypes:
        return torch.get_default_dtype()
    promoted = functools.reduce(torch.promote_types, dtypes)
    if not promoted.is_floating_point:
        promoted = torch.get_default_dtype()
    if promoted not in SUPPORTED_DTYPES:
        culprits = [f"{label} ({dtype})" for label, dtype in named if dtype == promoted]
        culprits = culprits or [f"torch's default dtype ({promoted}), for integer inputs,"]
        raise InputError(
            f"{', '.join(culprits)}: the solve would compute in {promoted}, but it needs "
            "float32 or float64; convert the input with .float() or .double()"
        )
    return promoted
