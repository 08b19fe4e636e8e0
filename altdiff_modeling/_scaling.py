"""Ruiz equilibration of the QP data, and the exact maps between scaled and user units.

With diagonal ``D`` (variables), ``E`` (constraint rows) and a cost scale ``c`` the
solver sees ``P~ = c D P D``, ``q~ = c D q``, ``C~ = E C D``, ``[b~; h~] = E [b; h]``,
whose solution relates to the user's by ``x = D x~``, ``z = z~ / E``, ``y = E y~ / c``.
The scaling is a constant of each solve (computed from the data without gradient):
the solution map does not depend on it, so mapping cotangents and gradients through
these diagonal relations is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._batched_sparse import BatchedSparse, SparsePattern
from ._qp import Matrix, QPData, select_rows

__all__ = ["Equilibration", "Scaling", "equilibrate", "ruiz_scaling"]

_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass(frozen=True)
class Scaling:
    """Diagonal scaling; each factor has a leading dimension of 1 (shared) or B.

    Attributes:
        D: ``(1|B, n)`` variable scaling.
        E: ``(1|B, m)`` constraint-row scaling (rows of ``[A; G]``).
        c: ``(1|B, 1)`` cost scaling.
    """

    D: torch.Tensor
    E: torch.Tensor
    c: torch.Tensor

    def select(self, index: torch.Tensor) -> Scaling:
        """The scaling of the instances ``index`` ``(K,)``."""
        return Scaling(
            D=select_rows(self.D, index), E=select_rows(self.E, index), c=select_rows(self.c, index)
        )

    def scale_matrices(self, data: QPData) -> tuple[Matrix, Matrix]:
        """The scaled ``P`` and ``C`` of `scale`."""
        D, E, c = self.D, self.E, self.c
        if isinstance(data.P, BatchedSparse):
            return data.P.scaled(c * D, D), data.C.scaled(E, D)
        DD = D.unsqueeze(-1) * D.unsqueeze(-2)
        return c.unsqueeze(-1) * DD * data.P, E.unsqueeze(-1) * data.C * D.unsqueeze(-2)

    def scale(self, data: QPData, matrices: tuple[Matrix, Matrix] | None = None) -> QPData:
        """The data the solver sees (``matrices``: its `scale_matrices`, when known)."""
        D, E, c = self.D, self.E, self.c
        P, C = matrices if matrices is not None else self.scale_matrices(data)
        return data.like(P, c * D * data.q, C, E * data.bound)


@dataclass(frozen=True)
class Equilibration:
    """The part of the Ruiz scaling that depends on P and C only.

    Attributes:
        D: ``(1|B, n)``.  E: ``(1|B, m)``.
        P_norm: ``(1|B, 1)`` mean column norm of the equilibrated P (for the cost scaling).
    """

    D: torch.Tensor
    E: torch.Tensor
    P_norm: torch.Tensor


def equilibrate(P: torch.Tensor, C: torch.Tensor, iterations: int = 10) -> Equilibration:
    """Equilibrate the KKT matrix ``[[P, C'], [C, 0]]`` in the infinity norm.

    Each pass divides every row and column by the square root of its largest entry
    (clipped to ``[1e-4, 1e4]``), as OSQP does. Shared matrices get a shared scaling, so
    a batch that shares P and C still factors once. A batch with per-instance P but a
    shared C gets one D and E, so that its scaled C stays shared
    (`_equilibrate_around_shared_constraints`).

    Args:
        P: ``(1|B, n, n)``.  C: ``(1|B, m, n)``.
        iterations: Number of Ruiz passes (0 gives the identity on D and E).
    """
    if isinstance(P, BatchedSparse):
        return _equilibrate_sparse(P, C, iterations)
    batch = max(P.shape[0], C.shape[0])
    if C.shape[0] == batch > 1:
        with torch.no_grad():
            C_on, P_on = (C != 0).any(0), (P != 0).any(0)
            # Per-instance matrices whose entries are mostly zero in every instance (a
            # canonical form's, such as an MPC's parametric dynamics): the passes on
            # their nonzeros, a fraction of the (B, m, n) entries each pass would read.
            if 4 * int(C_on.sum() + P_on.sum()) <= C_on.numel() + P_on.numel():
                return _equilibrate_sparse(_on(P, P_on), _on(C, C_on), iterations)
    with torch.no_grad():
        n, m = P.shape[-1], C.shape[1]
        # The passes only choose the scaling, so they work on single-precision copies of
        # |P| and |C| (half the memory traffic of the batched passes, which dominate
        # with per-instance matrices); D and E accumulate in the data's precision.
        # Scaling by positive factors commutes with abs: take it once, not every pass.
        work = torch.float32 if P.dtype == torch.float64 else P.dtype
        P_s, C_s = P.abs().to(work), C.abs().to(work)
        if C_s.shape[0] == 1 and batch > 1:
            return _equilibrate_around_shared_constraints(P, P_s, C_s, iterations)
        # A shared P in a batch whose C is not gets per-instance scaling.
        if P_s.shape[0] != batch:
            P_s = P_s.expand(batch, n, n).clone()
        if C_s.shape[0] != batch:
            C_s = C_s.expand(batch, m, n).clone()
        D = P.new_ones(batch, n)
        E = P.new_ones(batch, m)
        for _ in range(iterations):
            col_norm = torch.maximum(_amax(P_s, -2), _amax(C_s, -2))  # (batch, n)
            row_norm = _amax(C_s, -1)  # (batch, m)
            d = _inv_sqrt(col_norm)
            e = _inv_sqrt(row_norm)
            D, E = D * d, E * e
            # In place: P_s and C_s are this function's own copies (from abs above).
            P_s.mul_(d.unsqueeze(-1)).mul_(d.unsqueeze(-2))
            C_s.mul_(e.unsqueeze(-1)).mul_(d.unsqueeze(-2))
        P_norm = _amax(P_s, -2).mean(-1, keepdim=True).to(P.dtype)  # (batch, 1)
    return Equilibration(D=D, E=E, P_norm=P_norm)


def _on(M: torch.Tensor, pattern: torch.Tensor) -> BatchedSparse:
    """A dense batch ``(1|B, r, c)`` on ``pattern`` ``(r, c)``, the entries nonzero in
    some instance."""
    rows, cols = torch.nonzero(pattern, as_tuple=True)
    return BatchedSparse(M[:, rows, cols], SparsePattern(rows, cols, tuple(M.shape[1:])))


def _equilibrate_around_shared_constraints(
    P: torch.Tensor, P_s: torch.Tensor, C_s: torch.Tensor, iterations: int
) -> Equilibration:
    """`equilibrate` of per-instance ``P`` ``(B, n, n)`` with a shared ``C`` ``(1, m, n)``:
    the passes run on the batch's envelope ``max_i |P_i|``, so that D and E are shared.

    The scaled C then stays one matrix: every product with it (two per ADMM step) is
    one matrix-matrix product for the batch instead of B matrix-vector products,
    several times faster. P_norm stays per instance, so the cost scaling still adapts
    to each instance's P.
    """
    envelope = P_s.amax(0, keepdim=True)
    shared = equilibrate(envelope, C_s, iterations)
    D = shared.D.to(P.dtype)
    with torch.no_grad():
        d = D.to(P_s.dtype)
        scaled = P_s.mul_(d.unsqueeze(-1)).mul_(d.unsqueeze(-2))  # P_s is a copy
        P_norm = _amax(scaled, -2).mean(-1, keepdim=True).to(P.dtype)  # (B, 1)
    return Equilibration(D=D, E=shared.E.to(P.dtype), P_norm=P_norm)


def _equilibrate_sparse(P: BatchedSparse, C: BatchedSparse, iterations: int) -> Equilibration:
    """`equilibrate` of matrices on sparsity patterns: the same passes, with the
    largest entries of rows and columns taken over the patterns. A per-instance P with
    a shared C is equilibrated on the batch's envelope, as the dense one is."""
    with torch.no_grad():
        work = torch.float32 if P.dtype == torch.float64 else P.dtype
        P_s = P.with_values(P.values.detach().abs().to(work))
        C_s = C.with_values(C.values.detach().abs().to(work))
        batch = max(P_s.shape[0], C_s.shape[0])
        per_instance_P = P_s.shape[0]
        if C_s.shape[0] == 1 and batch > 1:
            P_s = P_s.with_values(P_s.values.amax(0, keepdim=True))
            batch = 1
        D = P.values.new_ones(batch, P.size[0]).detach()
        E = P.values.new_ones(batch, C.size[0]).detach()
        for _ in range(iterations):
            col_norm = torch.maximum(P_s.col_abs_max(), C_s.col_abs_max())
            d = _inv_sqrt(col_norm)
            e = _inv_sqrt(C_s.row_abs_max())
            D, E = D * d, E * e
            P_s, C_s = P_s.scaled(d, d), C_s.scaled(e, d)
        if per_instance_P > 1 and P_s.shape[0] == 1:
            d = D.to(work)
            P_s = P.with_values(P.values.detach().abs().to(work)).scaled(d, d)
        P_norm = P_s.col_abs_max().mean(-1, keepdim=True).to(P.dtype)
    return Equilibration(D=D.to(P.dtype), E=E.to(P.dtype), P_norm=P_norm)


def ruiz_scaling(
    data: QPData, iterations: int = 10, equilibration: Equilibration | None = None
) -> Scaling:
    """Ruiz equilibration of P and C (`equilibrate`), then ``c`` normalizes the cost.

    Args:
        data: The user's QP data.
        iterations: Number of Ruiz passes (0 gives the identity on D and E).
        equilibration: `equilibrate` of ``data.P`` and ``data.C``, when already known.

    Returns:
        The scaling, computed without gradient.
    """
    if equilibration is None:
        equilibration = equilibrate(data.P, data.C, iterations)
    with torch.no_grad():
        D, E, P_norm = equilibration.D, equilibration.E, equilibration.P_norm
        cones = data.cones
        if cones is not None:
            # One factor per cone: a cone scaled row by row would be another set.
            E = E.clone()
            E[:, -cones.rows :] = cones.mean_over_cones(E[:, -cones.rows :])
        batch = P_norm.shape[0]
        # Cost scaling: a shared value when P is shared, so H stays shared.
        q_norm = _amax((D * data.q).abs(), -1).unsqueeze(-1)  # (1|B, 1)
        if batch == 1 and q_norm.shape[0] > 1:
            q_norm = q_norm.median(0, keepdim=True).values
        c = 1.0 / torch.maximum(P_norm, q_norm).clamp(_MIN_SCALE, _MAX_SCALE)
        c = torch.where(torch.maximum(P_norm, q_norm) == 0, torch.ones_like(c), c)
    return Scaling(D=D, E=E, c=c)


def _amax(M: torch.Tensor, dim: int) -> torch.Tensor:
    """Largest entry along ``dim`` of a nonnegative ``M`` (0 along an empty one)."""
    if M.shape[dim] == 0:
        shape = list(M.shape)
        del shape[dim]
        return M.new_zeros(shape)
    return M.amax(dim=dim)


def _inv_sqrt(norm: torch.Tensor) -> torch.Tensor:
    """``1/sqrt(norm)``, leaving empty (all-zero) rows and columns unscaled."""
    safe = torch.where(norm < _MIN_SCALE, torch.ones_like(norm), norm)
    return 1.0 / safe.clamp(max=_MAX_SCALE).sqrt()


def unscale_solution(
    scaling: Scaling, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled ``(x~, z~, y~)`` to the user's ``(x, z, y)``."""
    return scaling.D * x, z / scaling.E, scaling.E * y / scaling.c


def scale_solution(
    scaling: Scaling, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's ``(x, z, y)`` to the solver's units (inverse of `unscale_solution`)."""
    return x / scaling.D, z * scaling.E, y * scaling.c / scaling.E
