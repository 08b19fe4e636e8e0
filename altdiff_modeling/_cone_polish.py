"""Polishing a solution of a problem with second-order cones (dense data).

The polyhedral polish (`_polish`) solves the KKT system of an active-set estimate. With
cones, ADMM's iterate also estimates each cone's face: a cone whose slack dominates its
multiplier is inactive (``y = 0``), one whose multiplier dominates is at its apex
(``s = 0``: its rows are equalities), and one where neither does is on its boundary,
where the slack ``s = h - G x`` and the multiplier are orthogonal boundary points, so
``y = mu R s`` with ``R = diag(1, -I)`` and ``mu >= 0``. On that estimate the KKT
conditions are the equations

    P x + q + C_a' lambda + sum_c mu_c G_c' R s_c = 0     (stationarity)
    C_a x = bound_a                                        (active rows, apex cones)
    s_c' R s_c / 2 = 0                                     (boundary cones: t = ||u||)

smooth in ``(x, lambda, mu)``, whose Newton steps from ADMM's iterate converge
quadratically (the Jacobian is symmetric: a KKT matrix with ``P - sum mu_c G_c' R G_c``
in its corner). Inactive cones keep zero multipliers as equations ``mu_c = 0``; of the
other rows only those whose multiplier is an unknown enter the system, each instance's
padded to the most any instance has (with equations ``lambda = 0``), so every
instance's system has one size and the batch is one batched solve. The caller accepts a
polished point only where it meets the tolerances in the user's units
(`_admm._try_polish`); `cone_polish` rejects it first where a
multiplier left its cone or a boundary slack landed on the cone's negative side.
"""

from __future__ import annotations

import torch

from ._cones import SecondOrderCones
from ._polish import active_set, contradicted_rows, first_of, gather_rows
from ._qp import matvec, rmatvec

__all__ = ["cone_polish", "face_estimate"]

_NEWTON_STEPS = 8
# Rounds of corrections of the face estimate (cones leaving or entering the boundary).
_CORRECTIONS = 2
# Newton stops after a step this small relative to x: convergence is quadratic, so the
# point it reaches is within about its square, round-off. Multipliers may leave their
# cones by _SIGN_TOLERANCE relative to their size (round-off); the tolerances then judge
# the point.
_STEP_TOLERANCE = 1e-8
_SIGN_TOLERANCE = 1e-9
_REGULARIZATION = 1e-10


def face_estimate(
    z: torch.Tensor, y: torch.Tensor, bound: torch.Tensor, n_eq: int, cones: SecondOrderCones
) -> torch.Tensor:
    """``(B, m)`` bool: the active-set estimate of `active_set` on the rows outside the
    cones; on each cone's rows, all False (inactive), all True (at its apex) or only
    its first row (on its boundary), from where ``s - y`` lies (``s = bound - z``):
    inside the cone, in its negative, or neither."""
    active = active_set(z, y, bound, n_eq)
    first = z.shape[1] - cones.rows
    inside, apex = cones.regions(*cones.split((bound.expand_as(z) - z - y)[:, first:]))
    boundary = ~(inside | apex)
    rows = cones.cone_of_row
    active[:, first:] = apex[:, rows] | (boundary[:, rows] & cones.is_head)
    return active


def cone_polish(
    P: torch.Tensor,
    q: torch.Tensor,
    C: torch.Tensor,
    bound: torch.Tensor,
    n_eq: int,
    cones: SecondOrderCones,
    estimate: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Newton's method on the KKT equations of the face estimate (module docstring).

    Args:
        P: ``(1|K, n, n)``.  q: ``(1|K, n)``.  C: ``(1|K, m, n)``.  bound: ``(1|K, m)``.
        n_eq: Equality rows.  cones: The cones of the last rows.
        estimate: ``(K, m)`` a `face_estimate`.
        x: ``(K, n)``.  y: ``(K, m)`` the iterate to start from.

    Returns:
        ``x`` ``(K, n)``, ``z`` ``(K, m)`` (the projection of ``Cx``), ``y`` ``(K, m)``
        and the ``(K,)`` mask of the instances whose system was solved with
        multipliers in their cones.
    """
    K = estimate.shape[0]
    face = _Face(P, q, C, bound, cones, x.shape[1], K)
    first = face.first
    boundary = _boundary_cones(estimate[:, first:], cones)  # (K, c)
    # rows whose multiplier is an unknown of its own: active rows outside the cones,
    # all rows of apex cones
    free = estimate.clone()
    free[:, first:] = estimate[:, first:] & ~boundary[:, cones.cone_of_row]
    # y = mu R s on a boundary cone: mu from its first row
    s = face.slack(x)
    mu0 = torch.where(
        boundary, y[:, first:][:, cones.heads] / s[:, cones.heads].clamp_min(1e-300), 0
    )
    out_x, out_y = x.clone(), torch.zeros_like(y)
    ok = torch.zeros(K, dtype=torch.bool, device=x.device)
    live = torch.arange(K, device=x.device)  # the instances still polishing
    for correction in range(_CORRECTIONS + 1):
        at = face if live.shape[0] == K else face.select(live)
        live_free, live_boundary = free[live], boundary[live]
        x_new, lam, mu, solved = at.newton(
            x[live], torch.where(live_free, y[live], 0), mu0[live], live_free, live_boundary
        )
        y_new, checks = at.multipliers(x_new, lam, mu, live_free, live_boundary, n_eq)
        # Where the point contradicts its estimate (a primal-dual active-set step):
        # rows outside the cones as the polyhedral polish has them; a boundary cone
        # whose mu came out negative is inactive, an inactive cone that the point
        # violates is on its boundary. A point that violates an inactive row or cone
        # beyond round-off is no solution, whatever its multipliers.
        Cx, bound_rows = matvec(at.C[:, :first], x_new), at.bound[:, :first]
        rows, correctable = contradicted_rows(
            live_free[:, :first], y_new[:, :first], Cx, bound_rows, n_eq
        )
        t, norm = cones.split(at.slack(x_new))
        inactive = ~live_boundary & ~(live_free[:, first:][:, cones.heads])
        change = (live_boundary & (mu < 0)) | (inactive & (norm > t))
        violated = ~live_free[:, :first] & (Cx - bound_rows > _round_off(bound_rows))
        violated[:, :n_eq] = False
        outside = inactive & (norm - t > _round_off(t))
        good = solved & checks.all(0) & ~violated.any(-1) & ~outside.any(-1)
        out_x[live[good]], out_y[live[good]] = x_new[good], y_new[good]
        ok[live[good]] = True
        if correction == _CORRECTIONS:
            break
        again = solved & ~good & (correctable | change.any(-1))
        if not bool(again.any()):
            break
        rows = rows & correctable.unsqueeze(-1)
        live, rows, change = live[again], rows[again], change[again]
        free[live, :first] ^= rows
        boundary[live] ^= change
        mu0[live] = torch.where(change, 0.0, mu0[live])  # Newton's first step finds it
    return out_x, face.project(out_x, n_eq), out_y, ok


class _Face:
    """The KKT equations of a face estimate for a batch ``(K, ...)`` of dense data.

    The data keep their leading dimension (1 where the batch shares them): products
    with shared matrices are single matrix products, never copies per instance."""

    def __init__(
        self,
        P: torch.Tensor,
        q: torch.Tensor,
        C: torch.Tensor,
        bound: torch.Tensor,
        cones: SecondOrderCones,
        n: int,
        instances: int,
        grams: torch.Tensor | None = None,
    ) -> None:
        K, m = instances, C.shape[1]
        self.cones, self.n, self.m, self.first = cones, n, m, m - cones.rows
        self.P, self.q, self.C, self.bound = P, q, C, bound
        self.C_cone, self.h_cone = C[:, self.first :], bound[:, self.first :]
        self.sign = torch.where(cones.is_head, 1.0, -1.0).to(q.dtype)  # R
        # the rows outside the cones on one variable: that variable and its coefficient
        outside = C[:, : self.first]
        self.single = (outside != 0).sum(-1) == 1  # (1|K, first)
        self.single_column = outside.abs().argmax(-1)
        self.single_coefficient = outside.gather(-1, self.single_column.unsqueeze(-1)).squeeze(-1)
        self.single_coefficient = torch.where(self.single, self.single_coefficient, 1.0)
        self.any_single = bool(self.single.any())
        if grams is None and C.shape[0] * cones.count * n * n <= K * (n + cones.count) ** 2:
            # Each cone's G_c' R G_c, once: the Hessian's term sum_c mu_c G_c' R G_c is
            # then a weighted sum (cones * n^2 per step, not cone rows * 2 n^2), where
            # they take no more memory than the Newton systems (shared data: once).
            grams = cones.reflected_grams(self.C_cone)
        self.grams = grams  # (1|K, cones, n, n) or None
        if grams is not None:  # G_c' R h_c: with the grams, G_c' R s_c = it - grams x
            self.reflected_h = cones.cone_sums(self.C_cone * (self.sign * self.h_cone)[..., None])

    def select(self, index: torch.Tensor) -> _Face:
        """The equations of the instances ``index`` ``(k,)`` only."""

        def pick(block: torch.Tensor | None) -> torch.Tensor | None:
            return block if block is None or block.shape[0] == 1 else block[index]

        P, q, C, bound = pick(self.P), pick(self.q), pick(self.C), pick(self.bound)
        return _Face(P, q, C, bound, self.cones, self.n, index.shape[0], pick(self.grams))

    def slack(self, x: torch.Tensor) -> torch.Tensor:
        """``(K, cone rows)`` the cones' slacks ``h - G x``."""
        return self.h_cone - matvec(self.C_cone, x)

    def cone_columns(self, x: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """``(K, n, cones)``: ``G_c' R s_c`` of each boundary cone (zero elsewhere), the
        gradient of its equation ``s_c' R s_c / 2 = 0`` up to sign."""
        if self.grams is not None:
            grams = self.grams
            if grams.shape[0] == 1:
                curved = (x @ grams[0].flatten(0, 1).T).view(x.shape[0], -1, self.n)
            else:
                curved = (grams @ x[:, None, :, None]).squeeze(-1)
            columns = self.reflected_h - curved  # (K, cones, n)
        else:
            Rs = self.sign * self.slack(x)
            columns = self.cones.cone_sums(self.C_cone * Rs.unsqueeze(-1))
        return torch.where(boundary.unsqueeze(-1), columns, 0).transpose(1, 2)

    def curvature(self, mu: torch.Tensor) -> torch.Tensor:
        """``(K, n, n)``: ``sum_c mu_c G_c' R G_c`` for ``mu`` ``(K, cones)`` (zero off
        the boundary cones)."""
        if self.grams is not None:
            return (mu.unsqueeze(1) @ self.grams.flatten(2)).view(mu.shape[0], self.n, self.n)
        rows = mu[:, self.cones.cone_of_row] * self.sign
        return self.C_cone.transpose(1, 2) @ (rows.unsqueeze(-1) * self.C_cone)

    def newton(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        mu: torch.Tensor,
        free: torch.Tensor,
        boundary: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Newton's method on the face's equations from ``(x, lam, mu)``; returns the
        last iterate and the ``(K,)`` mask of the instances whose systems were solved.

        An active row on one variable (a bound, ``x_j >= 0``) fixes that variable: it
        leaves the unknowns with its row, and its multiplier comes from the variable's
        stationarity afterwards (a long-only portfolio's face then has few unknowns).
        """
        K, n, c = x.shape[0], self.n, self.cones.count
        fixing = self._fixed_variables(free)
        any_fixed = fixing is not None
        if fixing is None:
            eliminated = torch.zeros_like(free)
        else:
            eliminated, fixed, values = fixing
            x = torch.where(fixed, values, x)
        # Only the rows whose multiplier is an unknown enter the system (the others'
        # equations lambda_i = 0 would make it n + m + c rows): each instance's, padded
        # to the most any instance has with rows whose equation is lambda = 0; and only
        # the variables not fixed, padded with equations dx = 0.
        C_rows, bound, valid, index = self._rows(free & ~eliminated)
        k = C_rows.shape[1]
        lam = lam.gather(1, index) * valid
        # each instance's unknowns (K, u), padded
        variables, kept = first_of(~fixed) if any_fixed else (None, None)
        u = n if variables is None else variables.shape[1]

        def unknowns(M: torch.Tensor, dim: int) -> torch.Tensor:
            """``M`` ``(K, ..., n, ...)`` on the unknowns along ``dim``, zero on the
            padding."""
            if not any_fixed:  # all of them, in order
                return M
            shape = [1] * M.dim()
            shape[0], shape[dim] = K, u
            index = variables.view(shape).expand(*M.shape[:dim], u, *M.shape[dim + 1 :])
            return M.gather(dim, index) * kept.view(shape).to(M.dtype)

        C = unknowns(C_rows, 2)  # (K, k, u)
        on_boundary = boundary[:, self.cones.cone_of_row]
        # Newton's matrix [[H, C', g], [C, I_pad, 0], [g', 0, I_off]]: the blocks that
        # do not move are written once; each step writes H and the cones' columns g.
        J = x.new_zeros(K, u + k + c, u + k + c)
        J[:, u : u + k, :u] = C
        J[:, :u, u : u + k] = C.transpose(1, 2)
        diagonal = J.diagonal(dim1=1, dim2=2)
        diagonal[:, u : u + k] = (~valid).to(x.dtype)
        diagonal[:, u + k :] = (~boundary).to(x.dtype)
        # A quasi-definite regularization, as the polyhedral polish's: variables that
        # no cost and no active row determine (epigraph variables of a norm bound)
        # would make the system singular; Newton's residuals correct its bias.
        scale = torch.maximum(_abs_max(self.P), _abs_max(self.C)).clamp_min(1.0)
        regularization = (scale * _REGULARIZATION).unsqueeze(-1)  # (1|K, 1)
        diagonal[:, u:] -= regularization
        padding = 0.0 if kept is None else (~kept).to(x.dtype)  # padded unknowns: dx = 0
        solved = torch.ones(K, dtype=torch.bool, device=x.device)
        for _ in range(_NEWTON_STEPS):
            s = self.slack(x)
            Rs = torch.where(on_boundary, self.sign * s, 0)
            g = self.cone_columns(x, boundary)  # (K, n, c)
            H = self.P - self.curvature(torch.where(boundary, mu, 0))
            J[:, :u, :u] = unknowns(unknowns(H.expand(K, n, n), 1), 2)
            diagonal[:, :u] += regularization + padding
            g_kept = unknowns(g, 1)
            J[:, :u, u + k :] = g_kept
            J[:, u + k :, :u] = g_kept.transpose(1, 2)
            stationarity = matvec(self.P, x) + self.q + rmatvec(C_rows, lam) + matvec(g, mu)
            rows = torch.where(valid, matvec(C_rows, x) - bound, lam)
            cone_norms = torch.where(boundary, -0.5 * self.cones.cone_sums(s * Rs), mu)
            residual = torch.cat([unknowns(stationarity, 1), rows, cone_norms], dim=1)
            step, info = torch.linalg.solve_ex(J, -residual)
            solved = solved & (info == 0)
            step = torch.where(solved.unsqueeze(-1), step, 0)
            x = x.scatter_add(1, variables, step[:, :u] * kept) if any_fixed else x + step[:, :u]
            lam, mu = lam + step[:, u : u + k], mu + step[:, u + k :]
            size = torch.cat([x, lam, mu], dim=1).abs().amax(-1)
            settled = step.abs().amax(-1) <= _STEP_TOLERANCE * (1 + size)
            if bool((settled | ~solved).all()):
                break
        full = torch.zeros(K, self.m, dtype=x.dtype, device=x.device)
        full.scatter_(1, index, lam * valid)  # the padding's rows get zeros
        if not any_fixed:
            return x, full, mu, solved & torch.isfinite(x).all(-1)
        # a fixing row's multiplier: its variable's stationarity without it
        g = self.cone_columns(x, boundary)
        rest = matvec(self.P, x) + self.q + rmatvec(self.C, full) + matvec(g, mu)
        first = self.first
        column = self.single_column.expand(K, first)
        fixing = -rest.gather(1, column) / self.single_coefficient.expand(K, first)
        full[:, :first] = torch.where(eliminated[:, :first], fixing, full[:, :first])
        return x, full, mu, solved & torch.isfinite(x).all(-1)

    def _fixed_variables(
        self, free: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The rows of ``free`` ``(K, m)`` that fix a variable (active, outside the
        cones, one nonzero; one row per variable, the last), the ``(K, n)`` mask of the
        variables they fix and the values they fix them at; None where they do not
        shrink Newton's matrix by a quarter in every instance (its LU by 2.4x: on fewer
        variables, the gathers that fixing takes cost more than it saves)."""
        K, first = free.shape[0], self.first
        if not self.any_single:
            return None
        fixing = free[:, :first] & self.single.expand(K, first)
        column = self.single_column.expand(K, first)
        rows = torch.arange(first, device=free.device).expand(K, first)
        owner = torch.full((K, self.n), -1, dtype=torch.long, device=free.device)
        owner = owner.scatter_reduce(1, column, torch.where(fixing, rows, -1), "amax")
        eliminated = torch.zeros_like(free)
        eliminated[:, :first] = fixing & (owner.gather(1, column) == rows)
        fixed = owner >= 0
        size = self.n + int(free[:, :first].sum(-1).amax()) + self.cones.count
        # each fixed variable takes a row and an unknown off the n + rows + cones
        if 8 * int(fixed.sum(-1).amin()) < size:
            return None
        value = self.bound[:, :first] / self.single_coefficient  # (1|K, first)
        values = torch.zeros(K, self.n, dtype=value.dtype, device=free.device)
        values = values.scatter_reduce(
            1, column, torch.where(eliminated[:, :first], value, 0.0), "sum"
        )
        return eliminated, fixed, values

    def _rows(
        self, free: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows ``free`` ``(K, m)`` of C and of the bound, each instance's first and
        padded with zero rows (`gather_rows`; all m rows where they are many):
        ``(K, k, n)``, ``(K, k)``, their validity and their distinct row indices
        ``(K, k)``."""
        rows, valid, index = gather_rows(self.C, free)
        bound = self.bound.expand(free.shape[0], self.m).gather(1, index)
        return rows, bound * valid, valid, index

    def multipliers(
        self,
        x: torch.Tensor,
        lam: torch.Tensor,
        mu: torch.Tensor,
        free: torch.Tensor,
        boundary: torch.Tensor,
        n_eq: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` ``(K, m)`` of a Newton point, and ``(3, K)`` whether its inequality
        multipliers are nonnegative, its cones' multipliers in the cones, and its
        boundary slacks on the cones' positive side."""
        cones, first = self.cones, self.first
        s = self.slack(x)
        y = torch.where(free, lam, 0)
        on_boundary = boundary[:, cones.cone_of_row]
        y[:, first:] = torch.where(
            on_boundary, mu[:, cones.cone_of_row] * self.sign * s, y[:, first:]
        )
        tiny = (_SIGN_TOLERANCE * (1 + y.abs().amax(-1))).unsqueeze(-1)
        nonneg = (y[:, n_eq:first] >= -tiny).all(-1)
        y_cone = y[:, first:]
        in_cones = ((cones.project(y_cone) - y_cone).abs() <= tiny).all(-1)
        positive_side = (torch.where(boundary, s[:, cones.heads], 0) >= 0).all(-1)
        return y, torch.stack([nonneg, in_cones & (mu >= -tiny).all(-1), positive_side])

    def project(self, x: torch.Tensor, n_eq: int) -> torch.Tensor:
        """``z`` ``(K, m)``: the projection of ``C x`` onto the constraints' set."""
        Cx, bound, first = matvec(self.C, x), self.bound, self.first
        z = torch.minimum(Cx, bound)
        z[:, :n_eq] = bound[:, :n_eq]
        z[:, first:] = self.h_cone - self.cones.project(self.h_cone - Cx[:, first:])
        return z


def _round_off(values: torch.Tensor) -> torch.Tensor:
    """How far a point may violate a row or cone whose bound or head is ``values``
    by round-off: ``_SIGN_TOLERANCE`` relative to their size."""
    return _SIGN_TOLERANCE * (1 + values.abs())


def _abs_max(M: torch.Tensor) -> torch.Tensor:
    """``(K,)`` the largest entry of each ``|M|`` ``(K, r, c)``."""
    return M.abs().flatten(1).amax(-1)


def _boundary_cones(cone_estimate: torch.Tensor, cones: SecondOrderCones) -> torch.Tensor:
    """``(K, cones)``: the cones a `face_estimate` puts on their boundary (first row
    only active; a cone of size 1 is a half-line, never on a boundary)."""
    rows = cones.cone_of_row
    counts = cone_estimate.new_zeros(cone_estimate.shape[0], cones.count, dtype=torch.long)
    counts.index_add_(1, rows, cone_estimate.long())
    sizes = torch.tensor(cones.sizes, device=cone_estimate.device)
    return cone_estimate[:, cones.heads] & (counts == 1) & (sizes > 1)
