"""The Ruiz scaling of batches: which factors a batch shares, and that a shared scaling
of instances with different P still gives each instance its exact solution and
gradient."""

from __future__ import annotations

import numpy as np
import torch
from reference import kkt_implicit_gradient, relative_error, solve_qp_reference

from altdiff_modeling import solve_qp
from altdiff_modeling._scaling import equilibrate


def _batch_with_shared_constraints(
    rng: np.random.Generator, B: int, n: int, n_eq: int, n_ineq: int
):
    """Per-instance P over four orders of magnitude, shared A and G, feasible b and h."""
    P = np.stack(
        [10.0 ** rng.uniform(-2, 2) * (M @ M.T + np.eye(n)) for M in rng.standard_normal((B, n, n))]
    )
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((n_ineq, n))
    x0 = rng.standard_normal((B, n))
    q = rng.standard_normal((B, n))
    return P, q, A, x0 @ A.T, G, x0 @ G.T + rng.uniform(0.0, 1.0, (B, n_ineq))


def test_per_instance_P_with_a_shared_C_gets_one_row_and_column_scaling():
    rng = np.random.default_rng(0)
    P, _, A, _, G, _ = _batch_with_shared_constraints(rng, 5, 8, 2, 10)
    C = torch.from_numpy(np.vstack([A, G]))[None]
    scaling = equilibrate(torch.from_numpy(P), C)
    assert scaling.D.shape == (1, 8) and scaling.E.shape == (1, 12)
    assert scaling.P_norm.shape == (5, 1)  # the cost scaling stays per instance
    # Per-instance C keeps per-instance factors.
    per_instance = equilibrate(torch.from_numpy(P), C.expand(5, -1, -1) * 1.0)
    assert per_instance.D.shape == (5, 8) and per_instance.E.shape == (5, 12)


def test_a_shared_scaling_solves_each_instance_exactly():
    rng = np.random.default_rng(5)
    B, n, n_eq, n_ineq = 6, 12, 3, 15
    P, q, A, b, G, h = _batch_with_shared_constraints(rng, B, n, n_eq, n_ineq)
    P_t = torch.tensor(P, requires_grad=True)
    q_t = torch.tensor(q, requires_grad=True)
    x, info = solve_qp(
        P_t,
        q_t,
        torch.from_numpy(A),
        torch.from_numpy(b),
        torch.from_numpy(G),
        torch.from_numpy(h),
        solver_args={"eps_abs": 1e-10, "eps_rel": 1e-10},
        return_info=True,
    )
    assert info.status == ["solved"] * B
    weights = rng.standard_normal((B, n))
    grad_P, grad_q = torch.autograd.grad((x * torch.from_numpy(weights)).sum(), [P_t, q_t])
    active = 0
    for i in range(B):
        x_ref, lam, nu = solve_qp_reference(P[i], q[i], A, b[i], G, h[i])
        active += int((nu > 1e-7).sum())
        assert relative_error(x[i].detach().numpy(), x_ref) <= 1e-8
        dP, dq, *_ = kkt_implicit_gradient(P[i], q[i], A, b[i], G, h[i], x_ref, lam, nu, weights[i])
        assert relative_error(grad_q[i].numpy(), dq) <= 1e-6
        assert relative_error(grad_P[i].numpy(), dP) <= 1e-6
    assert active >= B  # the gradients pass through active inequalities


def _ruiz_passes(P: np.ndarray, C: np.ndarray, passes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's Ruiz factors D, E by the definition: every pass divides each row
    and column of ``[[P, C'], [C, 0]]`` by the square root of its largest entry."""
    Ds, Es = [], []
    for P_i, C_i in zip(np.broadcast_to(P, (C.shape[0], *P.shape[1:])), C, strict=True):
        P_s, C_s = np.abs(P_i), np.abs(C_i)
        D, E = np.ones(P_s.shape[0]), np.ones(C_s.shape[0])
        for _ in range(passes):
            columns = np.maximum(P_s.max(0), C_s.max(0))
            d = 1 / np.sqrt(np.where(columns < 1e-4, 1.0, np.minimum(columns, 1e4)))
            rows = C_s.max(1)
            e = 1 / np.sqrt(np.where(rows < 1e-4, 1.0, np.minimum(rows, 1e4)))
            D, E = D * d, E * e
            P_s, C_s = d[:, None] * P_s * d, e[:, None] * C_s * d
        Ds.append(D)
        Es.append(E)
    return np.stack(Ds), np.stack(Es)


def test_per_instance_matrices_of_few_entries_are_equilibrated_on_their_nonzeros():
    # An MPC-like C: a fixed sparse pattern (4% of the entries) with per-instance values
    # over four orders of magnitude, and a shared P. The passes over the nonzeros give
    # the factors of the definition.
    rng = np.random.default_rng(3)
    B, m, n = 6, 40, 30
    pattern = rng.random((m, n)) < 0.04
    C = np.where(pattern, rng.standard_normal((B, m, n)) * 10.0 ** rng.uniform(-2, 2, (B, m, n)), 0)
    P = np.diag(rng.uniform(0.1, 10.0, n))[None]
    scaling = equilibrate(torch.from_numpy(P), torch.from_numpy(C))
    D, E = _ruiz_passes(P, C)
    # The passes run in single precision.
    np.testing.assert_allclose(scaling.D.numpy(), D, rtol=1e-5)
    np.testing.assert_allclose(scaling.E.numpy(), E, rtol=1e-5)
