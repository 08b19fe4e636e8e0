"""Cholesky factors of the ADMM matrix H, shared across a batch or one per instance."""

from __future__ import annotations

import math

import torch

from .._errors import SolverError

__all__ = ["CholeskyFactor", "cholesky_solve"]

# `CholeskyFactor.step_inverse`: kept for shared float64 factors of at most this many
# variables whose 1-norm condition number is at most _STEP_INVERSE_CONDITION (products
# with the inverse then err by about 2e-10 relative, far below any ADMM tolerance).
# At n = 100 a product with 64 columns takes 22 us against 39 us for the two triangular
# solves, and the gap grows as n shrinks; from n ~ 500 on they are on par.
_STEP_INVERSE_MAX_N = 256
_STEP_INVERSE_CONDITION = 1e6


def cholesky_solve(rhs: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``(L L')^{-1} rhs`` for ``L`` ``(..., n, n)`` lower and ``rhs`` ``(..., n, K)``.

    Two triangular solves: on the CPU they run 4-10x faster than
    ``torch.cholesky_solve`` for a few right-hand-side columns (one ADMM step), whose
    LAPACK path does not block the work; with many columns the two are on par.
    """
    half = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.mT, half, upper=True)


class WorkLedger:
    """The time (seconds) of the iterations (ADMM steps and backward products) taken
    with some factors since a setup was last paid from it.

    The factors a layer keeps across calls (`FactorCache`) share one: what their
    iterations cost is the budget from which a setup that makes the later calls
    cheaper is paid for (`_polish.SharedPolisher.credit`).
    """

    __slots__ = ("work",)

    def __init__(self) -> None:
        self.work = 0.0


class CholeskyFactor:
    """Lower Cholesky factor of a symmetric positive definite H.

    A factor of shape ``(1, n, n)`` serves a whole batch: its solves take the batch's
    right-hand sides as the columns of one matrix (one triangular solve with many
    columns instead of many small ones). A factor of shape ``(B, n, n)`` solves each
    instance with its own matrix.

    ``memo`` holds what its users derive from the factor and the data it factors (the
    polisher's and the direct adjoint's shared matrices): a factor a layer keeps across
    calls (`FactorCache`) brings them along. A factor serves one P and C only.
    ``ledger`` counts the cost of the iterations taken with it (`WorkLedger`); the
    factors a layer keeps share one.

    Args:
        H: ``(1, n, n)`` or ``(B, n, n)`` symmetric positive definite matrices.

    Raises:
        SolverError: H is not numerically positive definite.
    """

    def __init__(self, H: torch.Tensor) -> None:
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):
            bad = torch.nonzero(info != 0).flatten().tolist()
            raise SolverError(
                "the ADMM matrix P + sigma*I + rho*C'C is not positive definite for batch "
                f"indices {bad}; is P positive semidefinite?"
            )
        self.L = L
        self.shared = L.shape[0] == 1
        self.memo: dict[str, object] = {}
        self.ledger = WorkLedger()
        self._step_inverse: torch.Tensor | bool | None = False  # False: not computed yet
        # The time its factorization took (set by whoever timed it), and its operations.
        self.seconds = math.nan
        self.flops = L.shape[0] * L.shape[-1] ** 3 / 3

    @classmethod
    def from_lower(cls, L: torch.Tensor) -> CholeskyFactor:
        """The factor whose lower triangle is ``L`` ``(1|B, n, n)`` (no factorization)."""
        factor = cls.__new__(cls)
        factor.L, factor.shared = L, L.shape[0] == 1
        factor.memo = {}
        factor.ledger = WorkLedger()
        factor._step_inverse = False
        factor.seconds, factor.flops = math.nan, L.shape[0] * L.shape[-1] ** 3 / 3
        return factor

    def nbytes(self) -> int:
        """Bytes held: the factor and what its memo's entries report (``nbytes()``)."""
        held = self.L.numel() * self.L.element_size()
        if isinstance(self._step_inverse, torch.Tensor):
            held += self._step_inverse.numel() * self._step_inverse.element_size()
        return held + sum(
            int(getattr(entry, "nbytes", lambda: 0)()) for entry in self.memo.values()
        )

    def select(self, index: torch.Tensor) -> CholeskyFactor:
        """The factors of the instances ``index`` ``(K,)`` (a shared one as is)."""
        return self if self.shared else CholeskyFactor.from_lower(self.L[index])

    def copy(self) -> CholeskyFactor:
        """A factor whose instances `put` may replace (a shared one as is)."""
        return self if self.shared else CholeskyFactor.from_lower(self.L.clone())

    def put(self, rows: torch.Tensor, other: CholeskyFactor) -> None:
        """Replace the factors of the instances ``rows`` ``(K,)`` by ``other``'s K."""
        self.L[rows] = other.L

    def step_inverse(self) -> torch.Tensor | None:
        """``H^{-1}`` ``(n, n)`` for the products of the ADMM step, or None where the
        triangular solves serve it instead: a factor per instance, float32, n above
        256, or a condition number above 1e6 (see ``_STEP_INVERSE_CONDITION``).

        On small problems one matrix product costs about half of the two triangular
        solves, whose fixed costs dominate there. Only the ADMM step uses it: its
        iterates are approximations anyway, while polishing and the backward pass,
        which solve to round-off, keep the backward-stable triangular solves.
        """
        if self._step_inverse is False:
            self._step_inverse = None
            L = self.L
            if self.shared and L.dtype == torch.float64 and L.shape[-1] <= _STEP_INVERSE_MAX_N:
                inverse = torch.cholesky_inverse(L[0])
                # ||H||_1 <= ||L||_1 ||L'||_1: an upper bound of the condition number.
                norm_H = L[0].abs().sum(0).amax() * L[0].abs().sum(1).amax()
                condition = float(norm_H * inverse.abs().sum(0).amax())
                if condition <= _STEP_INVERSE_CONDITION:
                    self._step_inverse = inverse
        return self._step_inverse

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve ``H x = rhs``.

        Args:
            rhs: ``(B, n)`` right-hand sides (``(B, n, K)`` for K columns per instance).

        Returns:
            Solutions with the shape of ``rhs``.
        """
        if rhs.dim() == 2:
            if self.shared:
                return cholesky_solve(rhs.T, self.L[0]).T
            return cholesky_solve(rhs.unsqueeze(-1), self.L).squeeze(-1)
        if self.shared:
            B, n, K = rhs.shape
            columns = rhs.permute(1, 0, 2).reshape(n, B * K)
            return cholesky_solve(columns, self.L[0]).reshape(n, B, K).permute(1, 0, 2)
        return cholesky_solve(rhs, self.L)
