"""`solve_qp` with sparse matrices: scipy.sparse and torch sparse inputs give the dense
inputs' solutions and gradients (a torch sparse input's gradient on its pattern)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from altdiff_modeling import InputError, solve_qp

F64 = torch.float64
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10}


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, n_eq, n_ineq, B = 25, 4, 30, 3
    M = sp.random(n, n, density=0.1, random_state=seed)
    P = (M @ M.T + sp.eye(n)).tocsr()
    A = sp.random(n_eq, n, density=0.4, random_state=seed + 1).tocsr()
    G = sp.random(n_ineq, n, density=0.2, random_state=seed + 2).tocsr()
    x0 = rng.standard_normal(n)
    q = torch.tensor(rng.standard_normal((B, n)), requires_grad=True)
    b = torch.tensor(A @ x0)
    h = torch.tensor(G @ x0 + rng.uniform(0.0, 1.0, n_ineq), requires_grad=True)
    return P, q, A, b, G, h


def _dense(M: sp.sparray) -> torch.Tensor:
    return torch.tensor(M.toarray())


@pytest.mark.parametrize("layout", ["scipy", "coo", "csr"])
def test_sparse_matrices_match_dense_ones(layout: str) -> None:
    P, q, A, b, G, h = _problem()
    convert = {
        "scipy": lambda M: M,
        "coo": lambda M: _dense(M).to_sparse(),
        "csr": lambda M: _dense(M).to_sparse_csr(),
    }[layout]
    x, info = solve_qp(
        convert(P), q, convert(A), b, convert(G), h, solver_args=TIGHT, return_info=True
    )
    x_ref = solve_qp(_dense(P), q, _dense(A), b, _dense(G), h, solver_args=TIGHT)
    assert info.status == ["solved"] * 3
    torch.testing.assert_close(x, x_ref, rtol=1e-8, atol=1e-8)
    weights = torch.randn_like(x)
    got = torch.autograd.grad((x * weights).sum(), (q, h))
    expected = torch.autograd.grad((x_ref * weights).sum(), (q, h))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-8)


def test_a_torch_sparse_matrix_gets_its_gradient_on_its_pattern() -> None:
    P, q, A, b, G, h = _problem(1)
    G_sparse = _dense(G).to_sparse().requires_grad_()
    P_sparse = _dense(P).to_sparse().requires_grad_()
    x = solve_qp(P_sparse, q, _dense(A), b, G_sparse, h, solver_args=TIGHT)
    G_dense = _dense(G).requires_grad_()
    P_dense = _dense(P).requires_grad_()
    x_ref = solve_qp(P_dense, q, _dense(A), b, G_dense, h, solver_args=TIGHT)
    weights = torch.randn_like(x)
    g_G, g_P = torch.autograd.grad((x * weights).sum(), (G_sparse, P_sparse))
    e_G, e_P = torch.autograd.grad((x_ref * weights).sum(), (G_dense, P_dense))
    assert g_G.layout == torch.sparse_coo
    on_G, on_P = _dense(G) != 0, _dense(P) != 0
    torch.testing.assert_close(g_G.to_dense(), e_G * on_G, rtol=1e-6, atol=1e-8)
    # P enters symmetrized: the dense gradient is symmetric, the sparse one its entries.
    torch.testing.assert_close(g_P.to_dense(), e_P * on_P, rtol=1e-6, atol=1e-8)


def test_the_backend_setting_overrides_the_layout() -> None:
    P, q, A, b, G, h = _problem(2)
    x_sparse = solve_qp(
        _dense(P), q, _dense(A), b, _dense(G), h, solver_args={**TIGHT, "backend": "sparse"}
    )
    x_dense = solve_qp(P, q, A, b, G, h, solver_args={**TIGHT, "backend": "dense"})
    torch.testing.assert_close(x_sparse, x_dense, rtol=1e-8, atol=1e-8)


def test_bad_sparse_inputs_raise_input_errors() -> None:
    P, q, A, b, G, h = _problem(3)
    with pytest.raises(InputError, match="G has shape"):
        solve_qp(P, q, A, b, G[:, :-1], h)
    batched = torch.stack([_dense(G)] * 3).to_sparse()
    with pytest.raises(InputError, match="2-d sparse matrix"):
        solve_qp(P, q, A, b, batched, h)
    with pytest.raises(InputError, match="mode"):
        solve_qp(P, q, A, b, G, h, solver_args={"mode": "forward"})
