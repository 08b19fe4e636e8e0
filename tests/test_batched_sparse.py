"""`BatchedSparse`: products, scaling and reductions against the dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from altdiff_modeling._batched_sparse import BatchedSparse
from altdiff_modeling._qp import matvec, rmatvec

F64 = torch.float64


def _batch(shared: bool, seed: int = 0) -> tuple[BatchedSparse, torch.Tensor]:
    """A batch of 4 (or one shared) 7 x 5 matrices on one pattern with a duplicate
    entry, and their dense form ``(1|4, 7, 5)``."""
    rng = np.random.default_rng(seed)
    M = sp.random(7, 5, density=0.4, random_state=seed, format="coo")
    rows = np.concatenate([M.row, M.row[:1]])  # a duplicate entry: summed
    cols = np.concatenate([M.col, M.col[:1]])
    values = rng.standard_normal((1 if shared else 4, rows.size))
    matrix = BatchedSparse.from_scipy(M, F64, torch.device("cpu"))
    matrix = BatchedSparse(
        torch.from_numpy(values),
        type(matrix.pattern)(torch.from_numpy(rows), torch.from_numpy(cols), (7, 5)),
    )
    dense = np.zeros((values.shape[0], 7, 5))
    for b in range(values.shape[0]):
        np.add.at(dense[b], (rows, cols), values[b])
    return matrix, torch.from_numpy(dense)


@pytest.mark.parametrize("shared", [True, False])
def test_products_match_the_dense_matrices(shared: bool) -> None:
    matrix, dense = _batch(shared)
    x = torch.randn(4, 5, dtype=F64)
    y = torch.randn(4, 7, dtype=F64)
    torch.testing.assert_close(matvec(matrix, x), matvec(dense, x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(rmatvec(matrix, y), rmatvec(dense, y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(matrix.to_dense(), dense)
    # The autograd path (gathers) gives the same products and their gradients.
    values = matrix.values.clone().requires_grad_()
    product = matvec(matrix.with_values(values), x)
    torch.testing.assert_close(product, matvec(dense, x), rtol=1e-13, atol=1e-13)
    weights = torch.randn_like(product)
    (product * weights).sum().backward()
    expected = matrix.on_pattern(weights, x)
    if shared:
        expected = expected.sum(0, keepdim=True)
    torch.testing.assert_close(values.grad, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shared", [True, False])
def test_scaling_selection_and_reductions(shared: bool) -> None:
    matrix, dense = _batch(shared, seed=1)
    row = torch.rand(1, 7, dtype=F64) + 0.5
    col = torch.rand(4, 5, dtype=F64) + 0.5
    scaled = matrix.scaled(row, col)
    torch.testing.assert_close(scaled.to_dense(), row[..., None] * dense * col[:, None, :])
    index = torch.tensor([2, 0])
    torch.testing.assert_close(
        matrix.select(index).to_dense(), dense[index] if not shared else dense
    )
    nonzero = matrix.with_values(matrix.values.abs())
    # Without duplicates the reductions are those of the dense matrix's absolute values.
    unique = matrix.with_values(matrix.values[:, :-1])
    unique = BatchedSparse(
        unique.values, type(matrix.pattern)(matrix.rows[:-1], matrix.cols[:-1], (7, 5))
    )
    absolute = unique.to_dense().abs()
    torch.testing.assert_close(unique.row_abs_max(), absolute.amax(-1))
    torch.testing.assert_close(unique.col_abs_max(), absolute.amax(-2))
    assert nonzero.nnz == matrix.nnz and matrix.shape == (dense.shape[0], 7, 5)
