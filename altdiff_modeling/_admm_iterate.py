"""The ADMM step of `_admm.admm_solve`, written in place on preallocated buffers.

On the batches of small problems a layer solves, one step is a dozen tensor operations
on a few kilobytes each: their fixed cost, and the allocation of fresh tensors, weigh
as much as the arithmetic. The step therefore keeps its state in buffers it overwrites,
and in the variables ``(x, z, v)`` with ``v = z + y / r`` (r the per-row penalty), in
which one relaxed step (relaxation ``alpha``) reads::

    w  = r (v - 2z)                      (= -(r z - y))
    x~ = H^{-1} (sigma x - q - C'w)
    x  = x + alpha (x~ - x)
    v  = v + alpha (C x~ - z)
    z  = proj(v)                         (equality rows pinned to b, others clipped at h,
                                          cone rows h - P_K(h - v))

and ``y = r (v - z)`` is formed only when someone asks for it (the checks every few
iterations). This is the same iteration as the textbook form (DESIGN section 3). On
small, well-conditioned problems with shared data ``H^{-1}`` is one matrix product
(`Factor.step_inverse`) instead of two triangular solves.

The step also keeps ``Cx`` as ``Cx + alpha (C x~ - Cx)``, from the product ``C x~`` it
forms anyway: the checks then need no product with C for it (at n = 5000 one such
product reads 120 MB, about as long as one of a step's triangular solves).
"""

from __future__ import annotations

import torch

from ._batched_sparse import BatchedSparse
from ._cones import SecondOrderCones
from ._qp import Matrix, matvec, rmatvec, select_rows
from .linsys.systems import Factor

__all__ = ["AdmmIterate"]


class AdmmIterate:
    """The in-place iterate ``(x, z, v)`` of a batch, and its step.

    Args:
        q: ``(1|B, n)``.  C: ``(1|B, m, n)``.  bound: ``(1|B, m)`` the scaled data.
        n_eq: Number of equality rows (the first rows of C).
        x: ``(B, n)``.  z, y: ``(B, m)`` the starting point (copied, not kept).
        rho_rows: ``(1|B, m)`` per-row penalty.  factor: Cholesky factor of H for it.
        alpha: Relaxation.  sigma: Proximal weight of H.
        cones: The second-order cones of the last rows, or None.
    """

    def __init__(
        self,
        q: torch.Tensor,
        C: Matrix,
        bound: torch.Tensor,
        n_eq: int,
        x: torch.Tensor,
        z: torch.Tensor,
        y: torch.Tensor,
        rho_rows: torch.Tensor,
        factor: Factor,
        alpha: float,
        sigma: float,
        cones: SecondOrderCones | None = None,
    ) -> None:
        B, n = x.shape
        m = z.shape[1]
        self.n_eq, self.alpha, self.sigma = n_eq, alpha, sigma
        self.cones = cones
        #: The first cone row (m without cones): rows n_eq to it are clipped at h.
        self.cone_start = m - (0 if cones is None else cones.rows)
        self.neg_q = (-q).expand(B, n).contiguous()
        # Products with a `BatchedSparse` C go through its kernels; with a dense one,
        # in place into the step's buffers.
        self.sparse = isinstance(C, BatchedSparse)
        self.shared = C.shape[0] == 1 and not self.sparse
        self.C = C[0] if self.shared else C
        self.b = bound[:, :n_eq].expand(B, n_eq)
        self.h = bound[:, n_eq:].expand(B, m - n_eq)
        self.h_box = self.h[:, : self.cone_start - n_eq]
        self.h_cone = self.h[:, self.cone_start - n_eq :]
        self.x = x.clone()
        self.z = z.clone()
        self.v = torch.empty_like(self.z)
        self.w = torch.empty_like(self.z)
        self.rhs = torch.empty_like(self.x)
        self.z_tilde = torch.empty_like(self.z)
        self.x_tilde = self.x
        self.Cx = self._product(self.x)
        self.set_penalty(rho_rows, factor, y)
        self._equality_rows_pinned = False

    def select(self, index: torch.Tensor) -> None:
        """Keep only the instances ``index`` ``(K,)`` (the unfinished ones)."""
        self.x, self.z, self.v = self.x[index], self.z[index], self.v[index]
        self.Cx = self.Cx[index]
        self.w, self.z_tilde = torch.empty_like(self.z), torch.empty_like(self.z)
        self.rhs = torch.empty_like(self.x)
        self.neg_q, self.b, self.h = self.neg_q[index], self.b[index], self.h[index]
        self.h_box = self.h[:, : self.cone_start - self.n_eq]
        self.h_cone = self.h[:, self.cone_start - self.n_eq :]
        if not self.shared:
            self.C = select_rows(self.C, index)
        self.rows = select_rows(self.rows, index)
        self.factor = self.factor.select(index)
        self.x_tilde = self.x

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, m)`` ``C x`` (zeros without a product for a cold start)."""
        if not bool(x.any()):
            return x.new_zeros(x.shape[0], self.z.shape[1])
        return matvec(self.C.unsqueeze(0) if self.shared else self.C, x)

    def _rhs(self, w: torch.Tensor, out: torch.Tensor) -> None:
        """``out = -q - C'w``."""
        if self.sparse:
            torch.sub(self.neg_q, rmatvec(self.C, w), out=out)
        elif self.shared:
            torch.addmm(self.neg_q, w, self.C, alpha=-1.0, out=out)
        else:
            torch.baddbmm(
                self.neg_q.unsqueeze(1), w.unsqueeze(1), self.C, alpha=-1.0, out=out.unsqueeze(1)
            )

    def _times_C(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out = C x``."""
        if self.sparse:
            out.copy_(matvec(self.C, x))
        elif self.shared:
            torch.mm(x, self.C.T, out=out)
        else:
            torch.bmm(x.unsqueeze(1), self.C.transpose(1, 2), out=out.unsqueeze(1))

    def y(self) -> torch.Tensor:
        """``(B, m)`` the multipliers ``r (v - z)`` (a new tensor)."""
        return self.rows * (self.v - self.z)

    def set_penalty(
        self, rho_rows: torch.Tensor, factor: Factor, y: torch.Tensor | None = None
    ) -> None:
        """Change the penalty (and H's factor) keeping z and the multipliers y."""
        y = self.y() if y is None else y
        self.rows, self.factor = rho_rows, factor
        torch.addcdiv(self.z, y, rho_rows, out=self.v)

    def load(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> None:
        """Overwrite the iterate (after polishing)."""
        self.x.copy_(x)
        self.z.copy_(z)
        self.Cx = self._product(self.x)
        torch.addcdiv(self.z, y, self.rows, out=self.v)

    def step(self) -> None:
        """One relaxed ADMM step; afterwards ``x_tilde`` holds this step's ``x~``."""
        x, z, v, w, rhs = self.x, self.z, self.v, self.w, self.rhs
        torch.add(v, z, alpha=-2.0, out=w)
        w.mul_(self.rows)
        self._rhs(w, rhs)
        rhs.add_(x, alpha=self.sigma)
        inverse = self.factor.step_inverse()
        x_tilde = self.factor.solve(rhs) if inverse is None else rhs @ inverse
        self._times_C(x_tilde, self.z_tilde)
        x.lerp_(x_tilde, self.alpha)
        self.Cx.lerp_(self.z_tilde, self.alpha)
        self.z_tilde.sub_(z)
        v.add_(self.z_tilde, alpha=self.alpha)
        cone_start = self.cone_start
        torch.minimum(v[:, self.n_eq : cone_start], self.h_box, out=z[:, self.n_eq : cone_start])
        if self.cones is not None:
            z[:, cone_start:] = self.h_cone - self.cones.project(self.h_cone - v[:, cone_start:])
        if not self._equality_rows_pinned:
            z[:, : self.n_eq] = self.b
            self._equality_rows_pinned = True
        self.x_tilde = x_tilde
