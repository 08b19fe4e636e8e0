"""``solve_qp``: a differentiable batched QP solve for users who already have matrices."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from ._altdiff import DataTangents
from ._dtypes import compute_dtype
from ._errors import InputError
from ._function import SolveInfo, solve_forward_mode, solve_reverse
from ._log import enable_verbose, log_backward, log_solve
from ._qp import QPData, semidefinite_violations, stack_rows
from ._settings import SolverSettings, parse_solver_args
from ._sparse_inputs import Entries, is_sparse, sparse_problem, to_entries

__all__ = ["solve_qp"]

_NAMES = ("P", "q", "A", "b", "G", "h")


def _check_tensor(name: str, value: Any, ndims: tuple[int, int]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in ndims:
        raise InputError(
            f"{name} must have {ndims[0]} dimensions (or {ndims[1]} with a leading batch "
            f"dimension), got shape {tuple(value.shape)}"
        )
    return value


def _normalize(
    P: torch.Tensor,
    q: torch.Tensor,
    A: torch.Tensor | None,
    b: torch.Tensor | None,
    G: torch.Tensor | None,
    h: torch.Tensor | None,
) -> tuple[list[torch.Tensor | Entries], int, bool, torch.dtype]:
    """Check shapes and return the six blocks with a leading dimension of 1 or B (a
    sparse matrix as `Entries`), the batch size, whether any was batched, and the
    dtype the solve computes in."""
    for matrix, vector, pair in ((A, b, "A and b"), (G, h, "G and h")):
        if (matrix is None) != (vector is None):
            raise InputError(f"{pair} must be given together (or both None)")
    q = _check_tensor("q", q, (1, 2))
    n = q.shape[-1]
    if n == 0:
        raise InputError("q has 0 entries: the QP needs at least one variable")

    def matrix(name: str, value: Any) -> torch.Tensor | Entries:
        if is_sparse(value):
            if isinstance(value, torch.Tensor) and value.device != q.device:
                raise InputError(
                    f"{name} is on {value.device}, but q is on {q.device}; all QP data must "
                    "be on one device"
                )
            return to_entries(name, value, q.device)
        return _check_tensor(name, value, (2, 3))

    given: dict[str, torch.Tensor | Entries] = {"q": q, "P": matrix("P", P)}
    for name, value, ndims in (
        ("A", A, (2, 3)),
        ("b", b, (1, 2)),
        ("G", G, (2, 3)),
        ("h", h, (1, 2)),
    ):
        if value is not None:
            given[name] = matrix(name, value) if name in "AG" else _check_tensor(name, value, ndims)
    for name, block in given.items():
        if block.device != q.device:
            raise InputError(
                f"{name} is on {block.device}, but q is on {q.device}; all QP data must be on "
                "one device"
            )
    dtype = compute_dtype([(name, block.dtype) for name, block in given.items()])
    blocks = {
        name: block if isinstance(block, Entries) else block.to(dtype)
        for name, block in given.items()
    }
    for name, ndims in (("A", 2), ("b", 1), ("G", 2), ("h", 1)):
        if name not in blocks:
            blocks[name] = q.new_zeros((0, n) if ndims == 2 else (0,), dtype=dtype)

    unbatched_ndim = {"P": 2, "q": 1, "A": 2, "b": 1, "G": 2, "h": 1}
    batch_sizes = {
        name: blocks[name].shape[0]
        for name in _NAMES
        if len(blocks[name].shape) > unbatched_ndim[name]
    }
    if len(set(batch_sizes.values())) > 1:
        raise InputError(f"inconsistent batch sizes {batch_sizes}; batched inputs must agree")
    batch = next(iter(batch_sizes.values()), 1)
    shaped = {
        name: block if name in batch_sizes or isinstance(block, Entries) else block.unsqueeze(0)
        for name, block in blocks.items()
    }
    n_eq, n_ineq = shaped["A"].shape[-2], shaped["G"].shape[-2]
    expected = {
        "P": (n, n),
        "q": (n,),
        "A": (n_eq, n),
        "b": (n_eq,),
        "G": (n_ineq, n),
        "h": (n_ineq,),
    }
    for name in _NAMES:
        block = shaped[name]
        shape = block.shape if isinstance(block, Entries) else tuple(block.shape[1:])
        if tuple(shape) != expected[name]:
            raise InputError(
                f"{name} has shape {tuple(blocks[name].shape)}; with n = {n} variables, "
                f"{n_eq} equalities and {n_ineq} inequalities it must be "
                f"{expected[name]} (or with a leading batch dimension)"
            )
    return [shaped[name] for name in _NAMES], batch, bool(batch_sizes), dtype


class _EntryMap:
    """The data map whose parameters are the entries of the blocks that need gradients.

    Used by forward mode: theta concatenates those blocks' entries, the other blocks
    are constants, and the tangent of every entry is a unit direction.
    """

    def __init__(self, blocks: list[torch.Tensor], in_theta: list[bool], batch: int) -> None:
        self.blocks, self.in_theta, self.batch = blocks, in_theta, batch
        self.sizes = [
            block[0].numel() if flag else 0 for block, flag in zip(blocks, in_theta, strict=True)
        ]

    def theta(self) -> torch.Tensor:
        batch = max(
            block.shape[0] for block, flag in zip(self.blocks, self.in_theta, strict=True) if flag
        )
        parts = [
            block.expand(batch, *block.shape[1:]).reshape(batch, -1)
            for block, flag in zip(self.blocks, self.in_theta, strict=True)
            if flag
        ]
        return torch.cat(parts, dim=1)

    def data(self, theta: torch.Tensor) -> QPData:
        pieces = torch.split(theta, self.sizes, dim=1)
        blocks = [
            piece.reshape(theta.shape[0], *block.shape[1:]) if flag else block.detach()
            for piece, block, flag in zip(pieces, self.blocks, self.in_theta, strict=True)
        ]
        return QPData.from_blocks(*blocks, batch_size=self.batch)

    def tangents(self, dtype: torch.dtype, device: torch.device) -> DataTangents:
        K = sum(self.sizes)
        columns = torch.eye(K, dtype=dtype, device=device)
        out, offset = [], 0
        for block, size in zip(self.blocks, self.sizes, strict=True):
            shape = block.shape[1:]
            if size:
                out.append(columns[offset : offset + size].reshape(1, *shape, K))
            else:
                out.append(torch.zeros(1, *shape, K, dtype=dtype, device=device))
            offset += size
        P, q, A, b, G, h = out
        return DataTangents(P=P, q=q, C=stack_rows(A, G), bound=stack_rows(b, h))


def _values(block: torch.Tensor | Entries) -> torch.Tensor:
    return block.values if isinstance(block, Entries) else block


def _dense(block: torch.Tensor | Entries, dtype: torch.dtype) -> torch.Tensor:
    """A block as a dense ``(1|B, ...)`` tensor (a sparse matrix densified)."""
    if not isinstance(block, Entries):
        return block
    r, c = block.shape
    flat = block.values.new_zeros(1, r * c).to(dtype)
    flat = flat.index_add(1, block.rows * c + block.cols, block.values.to(dtype))
    return flat.view(1, r, c)


def solve_qp(
    P: torch.Tensor,
    q: torch.Tensor,
    A: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    G: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    solver_args: Mapping[str, Any] | None = None,
    return_info: bool = False,
    return_duals: bool = False,
) -> torch.Tensor | tuple[Any, ...]:
    """Solve ``min 1/2 x'Px + q'x  s.t.  Ax = b, Gx <= h``, differentiably in all six.

    Any input may carry a leading batch dimension B; the others are shared by the
    batch (as in qpth's ``QPFunction``). ``A, b`` or ``G, h`` may be None. P must be
    positive semidefinite (zero gives an LP): eigenvalues down to ``-1e-5 ||P||_inf``
    count as rounding of a semidefinite matrix, more negative ones are an `InputError`.
    P is symmetrized as ``(P + P')/2``, so its gradient is symmetric.

    P, A and G may also be 2-d sparse matrices, shared by the batch: scipy.sparse
    (constants) or torch sparse COO/CSR tensors (differentiable; their gradients are
    sparse, on their patterns). The problem is then solved on sparse data (sparse LDL'
    factors of the KKT matrix, on the CPU; see the user guide on large sparse
    problems); ``solver_args['backend']`` ``"sparse"`` or ``"dense"`` overrides the
    choice.

    Args:
        P: ``(n, n)`` or ``(B, n, n)``.
        q: ``(n,)`` or ``(B, n)``.
        A: ``(n_eq, n)`` or ``(B, n_eq, n)``, or None.
        b: ``(n_eq,)`` or ``(B, n_eq)``, or None.
        G: ``(n_ineq, n)`` or ``(B, n_ineq, n)``, or None.
        h: ``(n_ineq,)`` or ``(B, n_ineq)``, or None.
        solver_args: Solver settings (see `SolverSettings`), e.g.
            ``{"eps_abs": 1e-8, "max_iter": 20000, "mode": "forward"}``.
        return_info: Also return a `SolveInfo`.
        return_duals: Also return the multipliers ``lam`` ``(n_eq,)`` of ``Ax = b`` and
            ``nu`` ``(n_ineq,)`` of ``Gx <= h`` (``(B, .)`` when batched), of the
            Lagrangian ``1/2 x'Px + q'x + lam'(Ax - b) + nu'(Gx - h)``; they are
            differentiable too.

    Returns:
        x, ``(n,)`` or ``(B, n)`` when any input is batched; with ``return_duals``,
        ``(x, lam, nu)``; with ``return_info``, the info object appended last.

    Raises:
        InputError: Shapes, dtypes or devices do not fit, a value is NaN or Inf, or
            ``solver_args`` is invalid.
        SolverError: An instance was not solved to the requested accuracy.
    """
    started = time.perf_counter()
    settings: SolverSettings = parse_solver_args(solver_args)
    blocks, batch, batched, dtype = _normalize(P, q, A, b, G, h)
    settings = settings.for_dtype(dtype)
    for name, block in zip(_NAMES, blocks, strict=True):
        values = block.values if isinstance(block, Entries) else block
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise InputError(f"the QP data block {name} contains NaN or Inf values")
    given_sparse = any(isinstance(block, Entries) for block in blocks)
    sparse = settings.backend == "sparse" or (given_sparse and settings.backend == "auto")
    info = SolveInfo()
    needs_grad = [_values(block).requires_grad for block in blocks]
    forward_mode = settings.mode == "forward" and torch.is_grad_enabled() and any(needs_grad)
    if sparse:
        if forward_mode:
            raise InputError(
                "solver_args['mode'] = 'forward' needs dense matrices; sparse ones are solved "
                "in reverse mode"
            )
        # P's semidefiniteness is checked by the sparse factorization (its inertia).
        data = sparse_problem(*blocks, dtype=dtype, batch=batch)
        x, y = solve_reverse(data, settings, info)
    else:
        blocks = [_dense(block, dtype) for block in blocks]
        blocks[0] = 0.5 * (blocks[0] + blocks[0].transpose(-1, -2))
        bad, smallest = semidefinite_violations(blocks[0].detach())
        if bad:
            raise InputError(
                f"P is not positive semidefinite (batch indices {bad[:10]}, smallest "
                f"eigenvalue {smallest:.3g}); solve_qp needs a convex QP"
            )
        if forward_mode:
            entry_map = _EntryMap(blocks, needs_grad, batch)
            x, y = solve_forward_mode(entry_map, entry_map.theta(), settings, info)
        else:
            x, y = solve_reverse(QPData.from_blocks(*blocks, batch_size=batch), settings, info)
    n_eq = blocks[2].shape[-2]
    outputs = [x, y[:, :n_eq], y[:, n_eq:]] if return_duals else [x]
    if settings.verbose:
        enable_verbose()
        log_solve("solve_qp", info, batch, x.dtype, started)
        # Hooks go on the solve's own tensors, never on the caller's.
        own = [_values(t) for t in blocks]
        own = [t for t in own if all(t is not u for u in (P, q, A, b, G, h))]
        log_backward("solve_qp", info, outputs, own)
    if not batched:
        outputs = [out.squeeze(0) for out in outputs]
    if return_info:
        outputs.append(info)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
