"""The linear systems of the ADMM iteration, and how each data layout solves them.

Every step of ADMM and of the Alt-Diff recursion solves with
``H = P + sigma I + C' R C`` (R the per-row penalty). The loop (`_admm.admm_solve`)
asks a `LinearSystems` for the `Factor` of H at a penalty and solves with it; what the
factor is follows from the data's structure:

- dense matrices: Cholesky factors of H (`DenseSystems`), one shared by the batch or
  one per instance, the shared ones kept across a layer's calls (`FactorCache`);
- `BatchedSparse` matrices: sparse LDL' factors of the quasi-definite KKT matrix
  ``[[P + sigma I, C'], [C, -R^{-1}]]`` (`SparseKKTSystems`), one shared by the batch or
  one per instance, each on the pattern's symbolic analysis, refactored in place when
  the penalty moves. They live on the CPU.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from .._batched_sparse import BatchedSparse
from .._costs import timed
from .._qp import QPData, select_rows
from .cholesky import CholeskyFactor, WorkLedger
from .pinned import PinnedBlockFinder
from .sparse_kkt import ActiveKKT, KKTFactor

__all__ = [
    "EQUALITY_RHO_SCALE",
    "ActiveSystems",
    "DenseSystems",
    "Factor",
    "LinearSystems",
    "SparseKKTFactor",
    "SparseKKTSystems",
    "kkt_blocks",
    "linear_systems",
    "penalty_rows",
    "penalty_weights",
    "sparse_P",
]

#: Equality rows get this many times the inequality rows' penalty.
EQUALITY_RHO_SCALE = 1e3


def penalty_rows(rho: torch.Tensor, n_eq: int, m: int) -> torch.Tensor:
    """``(1|B,) -> (1|B, m)``: rho on inequality rows, stiffer on equality rows."""
    scale = torch.ones(m, dtype=rho.dtype, device=rho.device)
    scale[:n_eq] = EQUALITY_RHO_SCALE
    return rho[:, None] * scale


def penalty_weights(C: torch.Tensor, n_eq: int) -> torch.Tensor:
    """``W = C' diag(s) C`` ``(1|B, n, n)``, s the fixed row weights of the penalty.

    The per-row penalty is ``rho * s`` (s is 1 on inequality rows, a thousand on
    equality rows), so ``H(rho) = P + sigma*I + rho * W``: a change of rho rescales W
    instead of recomputing ``C'C``, which at n = 3000 costs as much as the Cholesky
    factorization itself. In float32 the equality weight would round P's part of H
    away to ~1e-4 relative, so W is kept in float64 there and H rounded once.
    """
    work = torch.float64 if C.dtype == torch.float32 else C.dtype
    C = C.to(work)
    s = penalty_rows(torch.ones(1, dtype=work, device=C.device), n_eq, C.shape[1])
    return C.transpose(-1, -2) @ (s.unsqueeze(-1) * C)


class Factor(Protocol):
    """A factorization of ``H`` for a batch: one shared (``shared``) or one per instance.

    ``memo`` holds what its users derive from the factor and its data (polishing's and
    the direct backward's matrices); ``ledger`` counts the work done with it.
    """

    shared: bool
    memo: dict[str, object]
    ledger: WorkLedger
    seconds: float  # the time its factorization took (NaN where unknown)
    flops: float  # its factorization's operations (NaN where unknown)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``H^{-1} rhs`` for ``(B, n)`` right-hand sides (``(B, n, K)`` where supported)."""

    def step_inverse(self) -> torch.Tensor | None:
        """``H^{-1}`` for the ADMM step's products, where one product beats the solves."""

    def select(self, index: torch.Tensor) -> Factor:
        """The factors of the instances ``index`` (a shared one as is)."""

    def copy(self) -> Factor:
        """A factor whose instances `put` may replace (a shared one as is)."""

    def put(self, rows: torch.Tensor, other: Factor) -> None:
        """Replace the factors of the instances ``rows`` by ``other``'s."""


class LinearSystems(Protocol):
    """Builds the factors of ``H(rho)`` for one batch's (scaled) data."""

    def factor(self, rho: torch.Tensor) -> Factor:
        """The factor for the inequality rows' penalty ``rho`` ``(1|B,)``."""

    def select(self, index: torch.Tensor) -> LinearSystems:
        """The systems of the instances ``index`` ``(K,)``."""


class DenseSystems:
    """Cholesky factors of ``H(rho) = P + sigma*I + rho * W`` (see `penalty_weights`)."""

    def __init__(self, P: torch.Tensor, W: torch.Tensor, sigma: float) -> None:
        self.dtype = P.dtype
        self.P, self.W, self.sigma = P, W, sigma
        self._base: torch.Tensor | None = None

    @property
    def base(self) -> torch.Tensor:
        """``P + sigma*I`` in W's dtype (formed on the first factorization: a call
        whose factors all come from a `FactorCache` never needs it)."""
        if self._base is None:
            n = self.P.shape[-1]
            eye = torch.eye(n, dtype=self.W.dtype, device=self.P.device)
            self._base = self.P.to(self.W.dtype) + self.sigma * eye
        return self._base

    def select(self, index: torch.Tensor) -> DenseSystems:
        selected = DenseSystems(select_rows(self.P, index), select_rows(self.W, index), self.sigma)
        if self._base is not None:
            selected._base = select_rows(self._base, index)
        return selected

    def factor(self, rho: torch.Tensor) -> CholeskyFactor:
        with timed() as clock:
            H = self.base + rho.to(self.W.dtype)[:, None, None] * self.W
            factor = CholeskyFactor(H.to(self.dtype))
            if factor.L.is_cuda:  # the factorization runs asynchronously: wait for it
                torch.cuda.synchronize(factor.L.device)
        factor.seconds = clock.seconds
        return factor


class SparseKKTFactor:
    """The sparse factors of H for a batch: one `KKTFactor` shared by the batch, or one
    per instance. Solves go through the CPU in float64 (a call on another device moves
    its data once, not per solve: see `_function`)."""

    def __init__(self, kkts: list[KKTFactor], shared: bool, seconds: float = math.nan) -> None:
        self.kkts, self.shared = kkts, shared
        self.memo: dict[str, object] = {}
        self.ledger = WorkLedger()
        self.seconds = seconds  # of the factorizations that built it
        self.flops = math.nan  # a sparse factorization's count depends on its fill

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        if rhs.dim() != 2:
            raise ValueError("sparse factors solve (B, n) right-hand sides only")
        values = rhs.detach().cpu().double().numpy()
        if self.shared:
            out = self.kkts[0].solve(values)
        else:
            out = np.stack([kkt.solve(row[None])[0] for kkt, row in zip(self.kkts, values)])
        return torch.from_numpy(out).to(dtype=rhs.dtype, device=rhs.device)

    def step_inverse(self) -> None:
        return None

    def select(self, index: torch.Tensor) -> SparseKKTFactor:
        if self.shared:
            return self
        return SparseKKTFactor([self.kkts[i] for i in index.tolist()], False)

    def copy(self) -> SparseKKTFactor:
        return self if self.shared else SparseKKTFactor(list(self.kkts), False)

    def put(self, rows: torch.Tensor, other: SparseKKTFactor) -> None:
        for row, kkt in zip(rows.tolist(), other.kkts, strict=True):
            self.kkts[row] = kkt


class SparseKKTSystems:
    """Sparse factors of H for `BatchedSparse` data: the KKT matrix of each distinct
    ``(P, C)`` (one for a batch that shares them, else one per instance) is analysed
    once and refactored where its penalty moves. A refactor reuses the object, so only
    the newest factor of an instance is valid (the loop holds no older one)."""

    def __init__(self, P: BatchedSparse, C: BatchedSparse, sigma: float, n_eq: int) -> None:
        self.P, self.C, self.sigma, self.n_eq = P, C, sigma, n_eq
        self.count = max(P.shape[0], C.shape[0])
        self._kkts: list[KKTFactor | None] = [None] * self.count
        self._rho: list[float | None] = [None] * self.count

    def _matrices(self, i: int) -> tuple[sp.csc_array, sp.csr_array]:
        return kkt_blocks(self.P, self.C, i)

    def factor(self, rho: torch.Tensor) -> SparseKKTFactor:
        values = rho.detach().cpu().double().numpy()
        m = self.C.size[0]
        start = time.perf_counter()
        for i in range(self.count):
            value = float(values[i if values.size > 1 else 0])
            if self._rho[i] == value:
                continue
            rows = np.full(m, value)
            rows[: self.n_eq] *= EQUALITY_RHO_SCALE
            kkt = self._kkts[i]
            if kkt is None:
                self._kkts[i] = KKTFactor(*self._matrices(i), self.sigma, 1.0 / rows)
            else:
                kkt.refactor(1.0 / rows)
            self._rho[i] = value
        seconds = time.perf_counter() - start
        return SparseKKTFactor(list(self._kkts), self.count == 1, seconds)  # type: ignore[arg-type]

    def select(self, index: torch.Tensor) -> SparseKKTSystems:
        if self.count == 1:
            return self
        selected = SparseKKTSystems(
            select_rows(self.P, index), select_rows(self.C, index), self.sigma, self.n_eq
        )
        for j, i in enumerate(index.tolist()):
            selected._kkts[j], selected._rho[j] = self._kkts[i], self._rho[i]
        return selected


def sparse_P(data: QPData) -> BatchedSparse:
    """P of sparse data as a `BatchedSparse` (a dense P beside a sparse C is shared)."""
    P = data.P
    if isinstance(P, BatchedSparse):
        return P
    return BatchedSparse.from_scipy(sp.csr_array(P[0].cpu().numpy()), P.dtype, P.device)


def kkt_blocks(P: BatchedSparse, C: BatchedSparse, i: int) -> tuple[sp.csc_array, sp.csr_array]:
    """Instance ``i``'s P (CSC) and C (CSR) for its `KKTFactor` (shared ones for any i)."""
    return sp.csc_array(P.to_scipy(i)), C.to_scipy(i)


def linear_systems(
    data: QPData, sigma: float, weights: torch.Tensor | None = None
) -> DenseSystems | SparseKKTSystems:
    """The systems that fit the (scaled) data's layout; ``weights``: its
    `penalty_weights`, where the caller keeps them (dense data only)."""
    if isinstance(data.C, BatchedSparse):
        return SparseKKTSystems(sparse_P(data), data.C, sigma, data.n_eq)
    if weights is None:
        weights = penalty_weights(data.C, data.n_eq)
    return DenseSystems(data.P, weights, sigma)


class ActiveSystems:
    """The `ActiveKKT` of each instance of a sparse batch, built on first use and kept
    while its active rows stay the same: a backward's direct solves and its test of the
    systems' singularity (`_degeneracy`) factor each instance's system once.

    Args:
        P: ``(1|B, n, n)`` and C: ``(1|B, m, n)``, the batch's (scaled) matrices.
    """

    def __init__(self, P: BatchedSparse, C: BatchedSparse) -> None:
        self.P, self.C = P, C
        self._matrices: dict[int, tuple[sp.csc_array, sp.csr_array]] = {}
        self._finders: dict[int, PinnedBlockFinder] = {}
        self._systems: dict[int, ActiveKKT] = {}

    def matrices(self, i: int) -> tuple[sp.csc_array, sp.csr_array]:
        """Instance ``i``'s P (CSC) and C (CSR), converted once (shared: one pair)."""
        key = i if max(self.P.shape[0], self.C.shape[0]) > 1 else 0
        if key not in self._matrices:
            self._matrices[key] = kkt_blocks(self.P, self.C, key)
        return self._matrices[key]

    def get(self, i: int, active: np.ndarray) -> ActiveKKT:
        """Instance ``i``'s system on the active rows ``active`` ``(m,)`` bool."""
        kept = self._systems.get(i)
        if kept is not None and np.array_equal(kept.active, active):
            return kept
        P, C = self.matrices(i)
        key = i if self.C.shape[0] > 1 else 0
        if key not in self._finders:
            self._finders[key] = PinnedBlockFinder(C)
        self._systems[i] = ActiveKKT(P, C, active, self._finders[key])
        return self._systems[i]
