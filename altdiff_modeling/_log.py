"""The library's logger: with ``verbose``, each call's statuses, iterations and times.

Records go to the logger ``"altdiff_modeling"`` at level INFO. A program that has
configured logging routes them like any other; one that has not sees them on stderr
(`enable_verbose` adds a handler only where no handler would receive them).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence

import torch

__all__ = ["LOGGER", "enable_verbose", "log_backward", "log_solve"]

LOGGER = logging.getLogger("altdiff_modeling")
LOGGER.addHandler(logging.NullHandler())


def enable_verbose() -> None:
    """Make INFO records of the library's logger visible.

    Sets the logger's level to INFO unless the program chose one, and, when no handler
    of the program would receive its records (only `logging.NullHandler`s on the way to
    the root), adds one that writes them to stderr.
    """
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)
    logger: logging.Logger | None = LOGGER
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return
        logger = logger.parent if logger.propagate else None
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    LOGGER.addHandler(handler)


def _summary(values: torch.Tensor | None) -> str:
    if values is None or values.numel() == 0:
        return "-"
    values = values.detach().to("cpu", torch.float64).flatten()
    if values.numel() == 1:
        return f"{values.item():.0f}"
    return f"median {values.median().item():.0f} (min {values.min().item():.0f}, max {values.max().item():.0f})"


def log_solve(caller: str, info: object, batch: int, dtype: torch.dtype, started: float) -> None:
    """Log one call's forward solve: per-status counts, ADMM iterations and times.

    Args:
        caller: What was called (``"AltDiffLayer"``, ``"solve_qp"``).
        info: The call's `SolveInfo`.
        batch: Number of instances B.
        dtype: The dtype the call computed in.
        started: ``time.perf_counter()`` at the start of the call.
    """
    counts = collections.Counter(getattr(info, "status", []))
    statuses = ", ".join(f"{status} {count}" for status, count in sorted(counts.items())) or "-"
    LOGGER.info(
        "%s: batch %d, %s; status: %s; ADMM iterations: %s; solve %.2f ms, call %.2f ms",
        caller,
        batch,
        str(dtype).removeprefix("torch."),
        statuses,
        _summary(getattr(info, "iterations", None)),
        1e3 * getattr(info, "solve_time", 0.0),
        1e3 * (time.perf_counter() - started),
    )


def log_backward(
    caller: str, info: object, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]
) -> None:
    """Log the backward pass of a call once it has run: Alt-Diff iterations and time.

    Hooks on the outputs mark its start (their gradients arrive first) and a hook on an
    input that requires a gradient its end; a call without such tensors logs nothing.

    Args:
        caller: As for `log_solve`.
        info: The call's `SolveInfo` (its ``backward_iterations`` is filled by then).
        outputs: The call's outputs.
        inputs: The tensors the call differentiates, after the solve's own maps.
    """
    needs = [t for t in inputs if t.requires_grad]
    outs = [t for t in outputs if t.requires_grad]
    if not needs or not outs:
        return
    started: list[float] = []

    def start(grad: torch.Tensor) -> None:
        if not started:
            started.append(time.perf_counter())

    def end(grad: torch.Tensor) -> None:
        elapsed = time.perf_counter() - started[0] if started else float("nan")
        started.clear()
        LOGGER.info(
            "%s backward: Alt-Diff iterations %d, %.2f ms",
            caller,
            getattr(info, "backward_iterations", 0),
            1e3 * elapsed,
        )

    for out in outs:
        out.register_hook(start)
    needs[0].register_hook(end)
