"""The second-order cones' projection and Jacobian against their defining properties,
a per-cone loop, and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from altdiff_modeling._cones import SecondOrderCones
from altdiff_modeling._projection import ProjectionJacobian

SIZES = [3, 1, 5, 2, 4]


def _points(batch: int, sizes: list[int], seed: int, dtype=torch.float64) -> torch.Tensor:
    """Points with every cone inside, in the polar cone and outside both, by turns."""
    r = np.random.default_rng(seed)
    v = r.standard_normal((batch, sum(sizes)))
    start = 0
    for j, k in enumerate(sizes):
        for b in range(batch):
            tail = np.linalg.norm(v[b, start + 1 : start + k])
            case = (j + b) % 3
            v[b, start] = [tail + 0.5, -tail - 0.5, 0.3 * tail - 0.2][case]
        start += k
    return torch.tensor(v, dtype=dtype)


def _project_one(t: float, u: np.ndarray) -> np.ndarray:
    a = np.linalg.norm(u)
    if a <= t:
        return np.concatenate([[t], u])
    if a <= -t:
        return np.zeros(1 + u.size)
    return (t + a) / 2 * np.concatenate([[1.0], u / a])


def test_projection_matches_a_loop_over_the_cones():
    cones = SecondOrderCones(SIZES)
    v = _points(6, SIZES, 0)
    p = cones.project(v).numpy()
    start = 0
    for k in SIZES:
        for b in range(v.shape[0]):
            block = v[b, start : start + k].numpy()
            np.testing.assert_allclose(p[b, start : start + k], _project_one(block[0], block[1:]))
        start += k


def test_cone_sums_and_reflected_grams_match_a_loop_over_the_cones():
    cones = SecondOrderCones([*SIZES, 3])  # two cones of size 3: one product for both
    r = np.random.default_rng(3)
    M = r.standard_normal((2, cones.rows, 4))
    sums = cones.cone_sums(torch.tensor(M)).numpy()
    grams = cones.reflected_grams(torch.tensor(M)).numpy()
    start = 0
    for j, k in enumerate(cones.sizes):
        block = M[:, start : start + k]
        np.testing.assert_allclose(sums[:, j], block.sum(1), rtol=1e-14)
        R = np.diag([1.0] + [-1.0] * (k - 1))
        for b in range(2):
            np.testing.assert_allclose(grams[b, j], block[b].T @ R @ block[b], atol=1e-14)
        start += k


def test_moreau_decomposition():
    """v = P(v) + (v - P(v)) with P(v) in K, v - P(v) in the polar -K, orthogonal per cone."""
    cones = SecondOrderCones(SIZES)
    v = _points(9, SIZES, 1)
    p = cones.project(v)
    rest = v - p
    t, a = cones.split(p)
    assert bool((a <= t + 1e-12).all())
    t, a = cones.split(-rest)
    assert bool((a <= t + 1e-12).all())
    products = torch.zeros(v.shape[0], cones.count, dtype=v.dtype)
    products.index_add_(1, cones.cone_of_row, p * rest)
    assert products.abs().max() < 1e-12
    assert torch.allclose(cones.distance(v).square().sum(-1), rest.square().sum(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jacobian_matches_central_differences(dtype):
    cones = SecondOrderCones(SIZES)
    v = _points(6, SIZES, 2, torch.float64)
    J = cones.jacobian(v.to(dtype))
    r = np.random.default_rng(3)
    h = 1e-6
    for _ in range(3):
        d = torch.tensor(r.standard_normal(v.shape), dtype=torch.float64)
        fd = (cones.project(v + h * d) - cones.project(v - h * d)) / (2 * h)
        tol = 1e-7 if dtype == torch.float64 else 1e-5
        assert torch.allclose(J.apply(d.to(dtype)).double(), fd, atol=tol), (
            (J.apply(d) - fd).abs().max()
        )


def test_jacobian_is_symmetric_and_its_cases_are_the_projections():
    cones = SecondOrderCones(SIZES)
    v = _points(6, SIZES, 4)
    J = cones.jacobian(v)
    # column i of every instance's matrix: J applied to e_i in each instance
    columns = [
        J.apply(torch.eye(cones.rows, dtype=v.dtype)[i].expand_as(v)) for i in range(cones.rows)
    ]
    matrices = torch.stack(columns, -1)  # (B, rows, rows)
    assert torch.allclose(matrices, matrices.transpose(1, 2), atol=1e-14)
    assert bool(J.inside.any() and J.polar.any() and J.boundary.any())
    # inside: the identity; polar: zero; boundary: J v = P(v) (the projection is
    # positively homogeneous)
    d = torch.randn_like(v)
    out = J.apply(d)
    rows_inside = J.inside[:, cones.cone_of_row]
    rows_polar = J.polar[:, cones.cone_of_row]
    assert torch.equal(out[rows_inside], d[rows_inside])
    assert torch.equal(out[rows_polar], torch.zeros_like(out[rows_polar]))
    assert torch.allclose(J.apply(v), cones.project(v), atol=1e-13)


def test_jacobian_submatrix_is_the_matrix_on_those_rows():
    """`ConeJacobian.submatrix` (from the closed form) equals the rows and columns of
    the matrix that `apply` acts as, on each instance's own subset of rows."""
    cones = SecondOrderCones(SIZES)
    v = _points(6, SIZES, 5)
    J = cones.jacobian(v)
    eye = torch.eye(cones.rows, dtype=v.dtype)
    matrices = torch.stack([J.apply(eye[i].expand_as(v)) for i in range(cones.rows)], -1)
    generator = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(cones.rows, generator=generator)[:9] for _ in range(6)])
    valid = torch.rand(6, 9, generator=generator) < 0.8
    sub = J.submatrix(index, valid)
    rows = index.unsqueeze(-1).expand(6, 9, cones.rows)
    expected = matrices.gather(1, rows).gather(2, index.unsqueeze(1).expand(6, 9, 9))
    expected = expected * (valid.unsqueeze(-1) & valid.unsqueeze(1))
    torch.testing.assert_close(sub, expected, rtol=0, atol=1e-14)


def test_selected_jacobians_are_those_of_the_selected_instances():
    """`ProjectionJacobian.select` (with `ConeJacobian.select`) acts on the instances it
    keeps as the whole batch's Jacobian acts on them: clipped rows and cones."""
    cones = SecondOrderCones(SIZES)
    B, clipped = 6, 4
    v = _points(B, SIZES, 7)
    bound = torch.zeros(1, clipped + cones.rows, dtype=v.dtype)
    point = torch.cat([torch.randn(B, clipped, dtype=v.dtype), -v], dim=1)  # h - v = v
    J = ProjectionJacobian.at_point(point, bound, 1, cones)
    a, b = torch.randn(2, B, clipped + cones.rows, dtype=v.dtype)
    index = torch.tensor([4, 1, 3])
    torch.testing.assert_close(
        J.select(index).mix(a[index], b[index]), J.mix(a, b)[index], rtol=0, atol=0
    )


def test_cone_sizes_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        SecondOrderCones([3, 0])
