"""The face polish of problems with second-order cones (`_cone_polish`), on the
projection onto the unit ball, whose solution and multipliers have a closed form:
``min 1/2 ||x - p||^2 s.t. (1, x) in K`` has ``x = p / max(1, ||p||)`` and, where
``||p|| > 1``, the cone's multiplier ``y = mu (1, -x)`` with ``mu = ||p|| - 1``."""

from __future__ import annotations

import torch

from altdiff_modeling._cone_polish import _Face, cone_polish, face_estimate
from altdiff_modeling._cones import SecondOrderCones

_F64 = torch.float64


def _ball_projection(p: torch.Tensor):
    """The data ``(P, q, C, bound)`` of the projection of each row of ``p`` ``(K, n)``:
    one cone ``h - C x = (1, x)``."""
    n = p.shape[1]
    C = torch.cat([torch.zeros(1, n, dtype=_F64), -torch.eye(n, dtype=_F64)]).unsqueeze(0)
    bound = torch.cat([torch.ones(1, dtype=_F64), torch.zeros(n, dtype=_F64)]).unsqueeze(0)
    return torch.eye(n, dtype=_F64).unsqueeze(0), -p, C, bound, SecondOrderCones([n + 1])


def _exact(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = p.norm(dim=-1, keepdim=True)
    x = p / norm.clamp_min(1)
    mu = (norm - 1).clamp_min(0)
    return x, torch.cat([mu, -mu * x], dim=-1)


def _estimate(boundary: torch.Tensor, n: int) -> torch.Tensor:
    """``(K, n + 1)``: the cone on its boundary (first row only) or inactive."""
    estimate = torch.zeros(boundary.shape[0], n + 1, dtype=torch.bool)
    estimate[:, 0] = boundary
    return estimate


def test_newton_reaches_the_exact_solution_from_a_perturbed_start():
    generator = torch.Generator().manual_seed(0)
    p = 3 * torch.randn(6, 5, generator=generator, dtype=_F64)
    p = p * (2 / p.norm(dim=-1, keepdim=True))  # ||p|| = 2: the ball binds
    P, q, C, bound, cones = _ball_projection(p)
    x_exact, y_exact = _exact(p)
    x0 = x_exact + 1e-2 * torch.randn(x_exact.shape, generator=generator, dtype=_F64)
    y0 = y_exact + 1e-2 * torch.randn(y_exact.shape, generator=generator, dtype=_F64)
    estimate = face_estimate(x0 @ C[0].T, y0, bound, 0, cones)  # z = C x0
    assert bool(estimate[:, 0].all()) and not bool(estimate[:, 1:].any())
    x, z, y, ok = cone_polish(P, q, C, bound, 0, cones, estimate, x0, y0)
    assert bool(ok.all())
    torch.testing.assert_close(x, x_exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, y_exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(z, x @ C[0].T, rtol=0, atol=1e-12)  # on the cone already


def test_a_boundary_estimate_of_an_inactive_cone_is_corrected():
    """Estimated on the boundary where the solution is inside: Newton's mu comes out
    negative, the cone leaves the boundary, and the next round finds the solution."""
    generator = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, generator=generator, dtype=_F64)
    p = p * (0.5 / p.norm(dim=-1, keepdim=True))
    P, q, C, bound, cones = _ball_projection(p)
    x_exact, y_exact = _exact(p)
    x0 = x_exact + 1e-2 * torch.randn(x_exact.shape, generator=generator, dtype=_F64)
    y0 = 1e-2 * torch.randn(y_exact.shape, generator=generator, dtype=_F64)
    wrong = _estimate(torch.ones(4, dtype=torch.bool), 3)
    x, _, y, ok = cone_polish(P, q, C, bound, 0, cones, wrong, x0, y0)
    assert bool(ok.all())
    torch.testing.assert_close(x, x_exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, y_exact, rtol=0, atol=1e-12)


def _ball_and_halfspace(p: torch.Tensor, c: float):
    """The projection of each row of ``p`` ``(K, n)`` onto the unit ball cut by the
    halfspace ``x_0 <= c``: the row ``x_0 <= c`` first, then the cone ``(1, x)``."""
    P, q, C, bound, cones = _ball_projection(p)
    n = p.shape[1]
    row = torch.zeros(1, 1, n, dtype=_F64)
    row[0, 0, 0] = 1.0
    C = torch.cat([row, C], dim=1)
    bound = torch.cat([torch.full((1, 1), c, dtype=_F64), bound], dim=1)
    return P, q, C, bound, cones


def _exact_cut(p: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(K, n)`` and the halfspace's multiplier ``(K,)`` of `_ball_and_halfspace`:
    the ball's projection where it meets the cut; else ``x_0 = c`` and the other
    coordinates projected onto the ball of radius ``sqrt(1 - c^2)``, where stationarity
    in ``x_0`` gives the cut's multiplier ``p_0 - c (1 + mu)``."""
    x, _ = _exact(p)
    radius = (1 - c * c) ** 0.5
    rest_norm = p[:, 1:].norm(dim=-1, keepdim=True)
    mu = (rest_norm / radius - 1).clamp_min(0)
    binds = x[:, 0] > c
    cut = torch.cat([torch.full_like(rest_norm, c), p[:, 1:] / (1 + mu)], dim=-1)
    x = torch.where(binds.unsqueeze(-1), cut, x)
    return x, torch.where(binds, p[:, 0] - c * (1 + mu[:, 0]), 0.0)


def test_a_wrong_estimate_of_a_row_outside_the_cones_is_corrected():
    """The halfspace estimated inactive where it binds (and active where it does not):
    Newton's point violates it (or its multiplier comes out negative), the row's estimate
    flips, and the next round finds the solution."""
    generator = torch.Generator().manual_seed(2)
    p = torch.randn(6, 4, generator=generator, dtype=_F64)
    p = p * (2 / p.norm(dim=-1, keepdim=True))
    p[:3, 0] = p[:3, 0].abs() + 0.5  # the cut binds on the first three, not on the others
    p[3:, 0] = -p[3:, 0].abs() - 0.5
    c = 0.2
    P, q, C, bound, cones = _ball_and_halfspace(p, c)
    x_exact, cut_multiplier = _exact_cut(p, c)
    assert bool((cut_multiplier[:3] > 1e-3).all()) and bool((cut_multiplier[3:] < 1e-9).all())
    x0 = x_exact + 1e-3 * torch.randn(x_exact.shape, generator=generator, dtype=_F64)
    y0 = torch.zeros(6, 1 + 5, dtype=_F64)
    wrong = torch.zeros(6, 6, dtype=torch.bool)
    wrong[:, 1] = True  # the cone on its boundary
    wrong[3:, 0] = True  # the cut: inactive where it binds, active where it does not
    x, _, y, ok = cone_polish(P, q, C, bound, 0, cones, wrong, x0, y0)
    assert bool(ok.all())
    torch.testing.assert_close(x, x_exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, 0], cut_multiplier, rtol=0, atol=1e-12)


def test_the_cones_terms_from_their_grams_equal_the_direct_products():
    """`_Face` forms sum_c mu_c G_c' R G_c and G_c' R s_c from each cone's G_c' R G_c
    where they fit in memory; the direct products give the same terms."""

    generator = torch.Generator().manual_seed(3)
    cones = SecondOrderCones([3, 4, 3])
    n, K = 5, 4
    C = torch.randn(1, 2 + cones.rows, n, generator=generator, dtype=_F64)
    bound = torch.randn(K, 2 + cones.rows, generator=generator, dtype=_F64)
    P, q = torch.eye(n, dtype=_F64).unsqueeze(0), torch.zeros(1, n, dtype=_F64)
    x = torch.randn(K, n, generator=generator, dtype=_F64)
    mu = torch.rand(K, cones.count, generator=generator, dtype=_F64)
    boundary = torch.tensor([[True, False, True]] * K)
    for data in (C, C.expand(K, -1, -1).clone()):  # shared, then per instance
        grams = cones.reflected_grams(data[:, 2:])
        with_grams = _Face(P, q, data, bound, cones, n, K, grams)
        direct = _Face(P, q, data, bound, cones, n, K)
        direct.grams = None
        torch.testing.assert_close(with_grams.curvature(mu), direct.curvature(mu))
        torch.testing.assert_close(
            with_grams.cone_columns(x, boundary), direct.cone_columns(x, boundary)
        )


def test_active_bounds_fix_their_variables_and_get_their_multipliers():
    """The projection onto the ball's nonnegative part, ``x >= 0`` as rows ``-x_i <= 0``:
    ``x = max(p, 0) / max(1, ||max(p, 0)||)``; the bounds of the negative entries of p
    are active with multipliers ``-p_i``. Newton fixes those variables (the bounds leave
    the unknowns) and recovers their multipliers from stationarity."""
    generator = torch.Generator().manual_seed(4)
    p = 2 * torch.randn(5, 6, generator=generator, dtype=_F64)
    p[:, :4] = -p[:, :4].abs()  # four of six bounds active: fixing shrinks the system
    p[:, 4:] = p[:, 4:].abs() + 1
    P, q, C_ball, bound_ball, cones = _ball_projection(p)
    n = p.shape[1]
    C = torch.cat([-torch.eye(n, dtype=_F64).unsqueeze(0), C_ball], dim=1)
    bound = torch.cat([torch.zeros(1, n, dtype=_F64), bound_ball], dim=1)
    positive = p.clamp_min(0)
    norm = positive.norm(dim=-1, keepdim=True)
    x_exact = positive / norm.clamp_min(1)
    mu = (norm - 1).clamp_min(0)
    assert bool((norm > 1).all())
    estimate = torch.zeros(5, n + 1 + n, dtype=torch.bool)
    estimate[:, :n] = p < 0
    estimate[:, n] = True  # the cone on its boundary
    x0 = x_exact + 1e-3 * torch.randn(x_exact.shape, generator=generator, dtype=_F64)
    y0 = torch.zeros(5, 2 * n + 1, dtype=_F64)
    x, _, y, ok = cone_polish(P, q, C, bound, 0, cones, estimate, x0, y0)
    assert bool(ok.all())
    torch.testing.assert_close(x, x_exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, :n], (-p).clamp_min(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, n:], torch.cat([mu, -mu * x_exact], -1), rtol=0, atol=1e-12)
