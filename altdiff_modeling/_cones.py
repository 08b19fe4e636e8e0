"""Second-order cones: the projection onto their product, and its Jacobian.

A second-order cone of size k is ``K = {(t, u) in R x R^(k-1) : ||u||_2 <= t}``; it is
self-dual, and its polar cone is ``-K``. The projection of ``v = (t, u)`` onto K, with
``a = ||u||`` and ``w = u / a``, is (Parikh and Boyd, Proximal Algorithms, 6.3.2)

- ``v`` where ``a <= t`` (inside),
- ``0`` where ``a <= -t`` (in the polar cone),
- ``(t + a) / 2 * (1, w)`` otherwise (the boundary).

Its Jacobian is the identity inside, zero in the polar cone, and on the boundary the
symmetric matrix

    J = 1/2 [[1, w'], [w, (1 + t/a) I - (t/a) w w']],

which takes the place of the box's 0/1 diagonal ``D_k`` in the Alt-Diff recursion
(DESIGN section 7: a cone is one more projection with its Jacobian). Where ``a = |t|``
the projection is not differentiable; there the formula of the side ``a <= t`` or
``a <= -t`` is taken, the limit from that side.

The cones of a problem occupy consecutive rows, in the order of ``sizes``. Every
operation here is batched over the instances and over the cones at once: norms over
the cones' tails are sums by cone index (``index_add``), with no Python loop over cones,
whatever their sizes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["ConeJacobian", "SecondOrderCones", "second_order_cones"]


@functools.lru_cache(maxsize=64)
def second_order_cones(sizes: tuple[int, ...], device: torch.device) -> SecondOrderCones:
    """The cones of ``sizes`` with their index on ``device``, built once per layout."""
    return SecondOrderCones(sizes, device)


class SecondOrderCones:
    """The product of second-order cones of sizes ``sizes``, over ``sum(sizes)`` rows.

    Args:
        sizes: Each cone's size k >= 1 (a cone of size 1 is the half-line t >= 0).
        device: Where the row-to-cone index lives.
    """

    def __init__(self, sizes: Sequence[int], device: torch.device | str = "cpu") -> None:
        sizes = [int(k) for k in sizes]
        if any(k < 1 for k in sizes):
            raise ValueError(f"second-order cone sizes must be at least 1, got {sizes}")
        self.sizes = sizes
        counts = torch.tensor(sizes, dtype=torch.long, device=device)
        #: ``(rows,)`` the cone of each row.
        self.cone_of_row = torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)
        offsets = torch.cumsum(counts, 0) - counts
        #: ``(cones,)`` the row of each cone's t.
        self.heads = offsets
        #: ``(rows,)`` bool: the rows of each cone's t.
        self.is_head = torch.zeros(self.rows, dtype=torch.bool, device=device)
        self.is_head[offsets] = True
        self._tail = ~self.is_head
        # the tail rows and their cones, for the norms of the tails
        self._tail_rows = torch.nonzero(self._tail).flatten()
        self._tail_cone = self.cone_of_row[self._tail_rows]

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def cone_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, cones, ...)``: the sums of ``values`` ``(B, rows, ...)`` over each
        cone's rows."""
        out = values.new_zeros(values.shape[0], self.count, *values.shape[2:])
        return out.index_add_(1, self.cone_of_row, values)

    def reflected_grams(self, M: torch.Tensor) -> torch.Tensor:
        """``(B, cones, n, n)``: each cone's ``M_c' R M_c`` for ``M`` ``(B, rows, n)``
        with ``R = diag(1, -I)``, the Hessian of ``s_c' R s_c / 2`` for ``s = h - M x``.
        One batched product per distinct cone size (not per cone)."""
        B, _, n = M.shape
        out = M.new_empty(B, self.count, n, n)
        sizes = torch.tensor(self.sizes, device=M.device)
        for size in sorted(set(self.sizes)):
            cones = torch.nonzero(sizes == size).flatten()
            rows = self.heads[cones].unsqueeze(-1) + torch.arange(size, device=M.device)
            block = M[:, rows]  # (B, cones of this size, size, n)
            reflected = torch.cat([block[:, :, :1], -block[:, :, 1:]], dim=2)
            out[:, cones] = block.transpose(-1, -2) @ reflected
        return out

    @property
    def count(self) -> int:
        return len(self.sizes)

    def split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cone's ``t`` ``(B, cones)`` and ``||u||`` ``(B, cones)`` of ``v``
        ``(B, rows)``."""
        t = v[:, self.heads]
        tail = v[:, self._tail_rows]
        tail_sq = v.new_zeros(v.shape[0], self.count).index_add_(1, self._tail_cone, tail * tail)
        return t, tail_sq.sqrt()

    def mean_over_cones(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, rows)``: each row's value replaced by the mean over its cone's rows (a
        row scaling that keeps every cone a cone)."""
        counts = torch.tensor(self.sizes, dtype=values.dtype, device=values.device)
        return (self.cone_sums(values) / counts)[:, self.cone_of_row]

    @staticmethod
    def regions(t: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, cones)`` bool each: the cones whose point (``t``, ``||u|| = a``, from
        `split`) lies inside the cone, and those in its polar (not inside); the others'
        lie beyond the boundary."""
        inside = a <= t
        return inside, (a <= -t) & ~inside

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The projection of ``v`` ``(B, rows)`` onto the product of the cones."""
        t, a = self.split(v)
        half = (t + a) / 2
        # The tail is scaled by (t + a) / (2a) clamped to [0, 1]: 1 inside (a <= t), 0 in
        # the polar cone (a <= -t), the boundary's factor between. The head is t inside,
        # 0 in the polar cone and (t + a) / 2 between: max(t, (t + a) / 2), clamped at 0.
        scale = (half / a.clamp_min(torch.finfo(v.dtype).tiny)).clamp(0.0, 1.0)
        out = v * scale[:, self.cone_of_row]
        out[:, self.heads] = torch.maximum(t, half).clamp_min(0.0)
        return out

    def jacobian(self, v: torch.Tensor) -> ConeJacobian:
        """The Jacobian of the projection at ``v`` ``(B, rows)``, to apply to vectors."""
        return ConeJacobian(self, v)

    def distance(self, v: torch.Tensor) -> torch.Tensor:
        """``(B, cones)``: each cone's part of ``v``'s Euclidean distance to the cones."""
        t, a = self.split(v)
        outside = ((a - t) / 2).clamp_min(0)  # distance to the boundary's ray, times 1/sqrt2
        return torch.where(a <= -t, torch.sqrt(t * t + a * a), outside * 2**0.5)


class ConeJacobian:
    """The projection's Jacobian at one point: identity, zero or the boundary's matrix
    per cone; symmetric, so it serves forward and reverse products alike."""

    def __init__(self, cones: SecondOrderCones, v: torch.Tensor) -> None:
        self.cones = cones
        t, a = cones.split(v)
        tiny = torch.finfo(v.dtype).tiny
        self.inside, self.polar = cones.regions(t, a)
        self.boundary = ~(self.inside | self.polar)
        safe = a.clamp_min(tiny)
        self._ratio = t / safe  # t / a, used on boundary cones only
        # w = u / a on the tail rows of boundary cones (zero elsewhere)
        rows_boundary = self.boundary[:, cones.cone_of_row] & cones._tail
        self._w = torch.where(rows_boundary, v / safe[:, cones.cone_of_row], torch.zeros_like(v))

    def select(self, index: torch.Tensor) -> ConeJacobian:
        """The Jacobians of the instances ``index`` ``(K,)``."""
        out = object.__new__(ConeJacobian)
        out.cones = self.cones
        out.inside, out.polar, out.boundary = (
            self.inside[index],
            self.polar[index],
            self.boundary[index],
        )
        out._ratio, out._w = self._ratio[index], self._w[index]
        return out

    def submatrix(self, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, k, k)``: J on the cone rows ``rows`` ``(B, k)`` (their rows and
        columns), zero where ``valid`` ``(B, k)`` is False; formed from the closed form,
        a boundary cone's block ``1/2 (a a' - (1 + t/a) w w' + (1 + t/a) I_tail)`` with
        ``a = (1, w)`` (one batched product for the rank-two part), not from a product
        with the identity."""
        cones = self.cones
        rows = torch.where(valid, rows, 0)
        cone = cones.cone_of_row[rows]  # (B, k)
        tail = ~cones.is_head[rows] & valid
        inside = self.inside.gather(1, cone) & valid
        boundary = self.boundary.gather(1, cone) & valid
        w = torch.where(tail, self._w.gather(1, rows), 0.0)  # zero off boundary tails
        grow = 1 + self._ratio.gather(1, cone)
        a = torch.where(boundary & ~tail, 1.0, w)
        left = torch.stack([a, -grow * w], -1)  # (B, k, 2)
        rank_two = 0.5 * (left @ torch.stack([a, w], 1))  # a a' - (1 + t/a) w w'
        # a and w are zero off the boundary cones: only other cones' blocks to clear
        out = rank_two.masked_fill_(cone.unsqueeze(-1) != cone.unsqueeze(1), 0.0)
        diagonal = out.diagonal(dim1=1, dim2=2)
        diagonal += torch.where(tail & boundary, 0.5 * grow, 0.0) + inside.to(w.dtype)
        return out

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        """``J d`` for ``d`` ``(B, rows)``, or ``(B, rows, K)`` for K directions."""
        if d.dim() == 3:
            return self._apply(d, lambda value: value.unsqueeze(-1))
        return self._apply(d, lambda value: value)

    def _apply(self, d: torch.Tensor, expand) -> torch.Tensor:
        cones = self.cones
        rows = cones.cone_of_row
        tail_rows = expand(cones._tail.expand(d.shape[0], -1))
        w = expand(self._w)
        d_head = d[:, cones.heads]
        w_dot_d = d.new_zeros(d.shape[0], cones.count, *d.shape[2:]).index_add_(
            1, rows, torch.where(tail_rows, w * d, torch.zeros_like(d))
        )
        ratio = expand(self._ratio)
        # boundary tail: 1/2 [w d_t + (1 + t/a) d_u - (t/a) w (w'd_u)]
        tail = 0.5 * (w * (d_head - ratio * w_dot_d)[:, rows] + (1 + ratio)[:, rows] * d)
        head = 0.5 * (d_head + w_dot_d)
        boundary = expand(self.boundary)
        out = torch.where(boundary[:, rows], tail, torch.zeros_like(d))
        out[:, cones.heads] = torch.where(boundary, head, torch.zeros_like(head))
        return torch.where(expand(self.inside)[:, rows], d, out)
