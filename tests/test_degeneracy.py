"""The backward's "degenerate" status: solutions where the derivative is not unique.

Each case is a small QP whose degeneracy is known by construction: a weakly active
bound, dependent active rows (which matter to the bounds' gradients and not to q's),
and an LP whose solution is not unique. The gradient returned there is the recursion's
limit, checked against the one-sided derivative it stands for; nondegenerate
neighbours of the same problems stay "converged" with no warning.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from altdiff_modeling import AltDiffLayer, SolverError, SolverWarning, solve_qp

EYE = np.eye(2)


def _solve(P, q, G, h, matrices: str, leaves=("q", "h"), weights=(1.0, 1.0)):
    """``x``, the gradients of ``weights' x`` w.r.t. ``leaves``, the backward status
    and the warnings it raised."""
    as_matrix = sp.csr_array if matrices == "sparse" else torch.tensor
    q_t = torch.tensor(q, dtype=torch.float64, requires_grad="q" in leaves)
    h_t = torch.tensor(h, dtype=torch.float64, requires_grad="h" in leaves)
    P_m = as_matrix(np.asarray(P, dtype=np.float64))
    G_m = as_matrix(np.asarray(G, dtype=np.float64))
    x, info = solve_qp(P_m, q_t, G=G_m, h=h_t, return_info=True)
    wanted = [t for t in (q_t, h_t) if t.requires_grad]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = (torch.tensor(weights, dtype=torch.float64) * x).sum()
        grads = torch.autograd.grad(loss, wanted)
    messages = [str(w.message) for w in caught if issubclass(w.category, SolverWarning)]
    return x.detach().numpy(), [g.numpy() for g in grads], info.backward_status, messages


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
def test_weakly_active_bound_is_degenerate_with_the_inactive_pieces_derivative(matrices):
    # Projection of p = (0, 1) onto x <= 0: x1 = 0 with a zero multiplier.
    x, (dq, dh), status, messages = _solve(EYE, [0.0, -1.0], EYE, [0.0, 0.0], matrices)
    assert status == ["degenerate"]
    assert len(messages) == 1 and "degenerate on 1 of 1" in messages[0]
    np.testing.assert_allclose(x, [0.0, 0.0], atol=1e-6)
    # The piece where x1 <= 0 is not held active (p1 decreasing): x1 = p1 = -q1, and
    # x2 = h2 on its active bound.
    np.testing.assert_allclose(dq, [-1.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(dh, [0.0, 1.0], atol=1e-8)


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
def test_strictly_complementary_neighbour_is_converged(matrices):
    _, (dq, dh), status, messages = _solve(EYE, [0.5, -1.0], EYE, [0.0, 0.0], matrices)
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(dq, [-1.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(dh, [0.0, 1.0], atol=1e-8)


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
def test_dependent_active_rows_matter_to_the_bounds_gradient_only(matrices):
    # x1 <= 0 and 2 x1 <= 0 both active at p = (1, 0.3): the multipliers are not unique
    # (nu1 + 2 nu2 = 1), the solution is.
    G, h, q = [[1.0, 0.0], [2.0, 0.0]], [0.0, 0.0], [-1.0, -0.3]
    _, (dq, dh), status, messages = _solve(EYE, q, G, h, matrices)
    assert status == ["degenerate"] and len(messages) == 1
    # q's gradient is unique; the bounds' is not, but its derivative along h = t (1, 2),
    # which keeps both rows binding (x1 = t), is: dh1 + 2 dh2 = 1.
    np.testing.assert_allclose(dq, [0.0, -1.0], atol=1e-8)
    assert dh[0] + 2 * dh[1] == pytest.approx(1.0, abs=1e-3)
    _, (dq_only,), status, messages = _solve(EYE, q, G, h, matrices, leaves=("q",))
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(dq_only, [0.0, -1.0], atol=1e-8)


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
def test_solution_that_is_not_unique_has_no_derivative_where_the_loss_sees_it(matrices):
    # min x1 + x2 s.t. x1 + x2 >= 1, x >= 0: every point of the segment is optimal.
    P, q, G, h = np.zeros((2, 2)), [1.0, 1.0], [[-1, -1], [-1, 0], [0, -1]], [-1, 0, 0]
    # x1 alone moves along the segment: the fixed-point equation has no solution, and the
    # default policy raises. Whether GMRES's Krylov space breaks down at an amplified
    # iterate ("singular") or GMRES stagnates and the plain recursion then grows without
    # converging to its iteration limit ("max_iter") is a matter of round-off.
    with pytest.raises(SolverError, match=r"0: (singular|max_iter)"):
        _solve(P, q, G, h, matrices, leaves=("q",), weights=(1.0, 0.0))
    # x1 + x2 is the same at every solution: its gradient is unique.
    _, (dq,), status, messages = _solve(P, q, G, h, matrices, leaves=("q",))
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(dq, [0.0, 0.0], atol=1e-8)


def _layer_statuses(problem, parameters, variable, values):
    """The backward statuses and SolverWarnings of one layer call on ``values``."""
    layer = AltDiffLayer(problem, parameters=parameters, variables=[variable])
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    (out,), info = layer(*tensors, return_info=True)
    weights = torch.linspace(1.0, 2.0, out.numel(), dtype=torch.float64).reshape(out.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = torch.autograd.grad((weights * out).sum(), tensors)
    messages = [str(w.message) for w in caught if issubclass(w.category, SolverWarning)]
    return info.backward_status, messages, grads


@pytest.mark.parametrize("matrices", ["dense", "sparse"])
def test_a_direction_of_non_unique_solutions_the_loss_does_not_see_is_no_degeneracy(matrices):
    # min (x1 - 1)^2 / 2 s.t. 0 <= x2 <= 1: x2 is anywhere in [0, 1] (an auxiliary
    # variable's role), and the loss reads x1 only.
    P, q, G, h = np.diag([1.0, 0.0]), [-1.0, 0.0], [[0, 1], [0, -1]], [1.0, 0.0]
    _, (dq,), status, messages = _solve(P, q, G, h, matrices, leaves=("q",), weights=(1, 0))
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(dq, [-1.0, 0.0], atol=1e-8)
    with pytest.raises(SolverError, match="0: singular"):  # the loss reads x2
        _solve(P, q, G, h, matrices, leaves=("q",), weights=(0, 1))


def test_layer_epigraph_variable_inside_its_box_raises_nothing(whole_problem):
    # |x| <= 1 becomes an epigraph variable t with -t <= x <= t, t <= 1: inside the box
    # t is anywhere in [|x|, 1]; the loss never sees t.
    x, u = cp.Variable(3), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - u)), [cp.abs(x) <= 1])
    status, messages, (du,) = _layer_statuses(problem, [u], x, [[0.3, -0.2, 0.1]])
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(du.numpy(), np.linspace(1.0, 2.0, 3), atol=1e-6)


def test_layer_dependent_rows_matter_only_where_their_bound_is_a_parameter():
    x = cp.Variable(2)
    p, b = cp.Parameter(2), cp.Parameter()
    objective = cp.Minimize(cp.sum_squares(x - p))
    # x0 <= b and 2 x0 <= 2 b are both active at p0 > b: dependent rows.
    parametric = cp.Problem(objective, [x[0] <= b, 2 * x[0] <= 2 * b])
    status, messages, (dp, db) = _layer_statuses(parametric, [p, b], x, [[1.0, 0.3], 0.0])
    assert status == ["degenerate"] and len(messages) == 1
    np.testing.assert_allclose(dp.numpy(), [0.0, 2.0], atol=1e-6)
    assert float(db) == pytest.approx(1.0, abs=1e-3)  # x0 = b on either split
    constant = cp.Problem(objective, [x[0] <= 0, 2 * x[0] <= 0])
    status, messages, (dp,) = _layer_statuses(constant, [p], x, [[1.0, 0.3]])
    assert status == ["converged"] and messages == []
    np.testing.assert_allclose(dp.numpy(), [0.0, 2.0], atol=1e-6)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_mpc_layer_epigraph_rows_are_absorbed(monkeypatch, backend, whole_problem):
    """MPC with |u| <= u_max and |x| <= x_max: the epigraph variables of interior inputs
    and states are often weakly active (their rows touch with zero multipliers, and the
    fixed point's other-side condition fails there), but no gradient of a parameter
    depends on them: the backward stays "converged"."""
    from sparse_families import mpc

    import altdiff_modeling._function as function

    weak_seen = []
    original = function.weakly_active

    def counting(*args):
        weak = original(*args)
        weak_seen.append(int(weak.sum()))
        return weak

    monkeypatch.setattr(function, "weakly_active", counting)
    family = mpc(5, 3, np.random.default_rng(3), n_u=2, dynamics_parameters=True)
    layer = AltDiffLayer(
        family.problem, family.parameters, [family.variables[0]], solver_args={"backend": backend}
    )
    rng = np.random.default_rng(0)
    statuses = []
    for _ in range(4):
        values = [v + 0.05 * rng.standard_normal((8, *np.shape(v))) for v in family.values]
        values[0] = rng.uniform(-2.0, 2.0, (8, 3))
        tensors = [torch.tensor(v, requires_grad=True) for v in values]
        (u,), info = layer(*tensors, return_info=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SolverWarning)
            torch.autograd.grad((u * torch.tensor(rng.standard_normal(u.shape))).sum(), tensors)
        statuses += info.backward_status
    assert sum(weak_seen) > 0  # the case the test is about occurred
    assert set(statuses) == {"converged"}


@pytest.mark.parametrize("shared", [True, False])
def test_absorbing_rows_follow_their_definition(shared: bool):
    # A row absorbs its change of side where one of its variables is free and no other
    # active row touches it: the (B, m, n) comparison of that definition, against the
    # pattern products the backward computes.
    from types import SimpleNamespace

    from altdiff_modeling._degeneracy import absorbed

    rng = np.random.default_rng(12)
    B, m, n = 6, 15, 10
    found = 0
    for _ in range(10):
        C = rng.standard_normal((1 if shared else B, m, n)) * (
            rng.random((1 if shared else B, m, n)) < 0.2
        )
        P = rng.standard_normal((1, n, n)) * (rng.random((1, n, n)) < 0.1)
        data = SimpleNamespace(C=torch.from_numpy(C), P=torch.from_numpy(P + P.transpose(0, 2, 1)))
        inactive = torch.from_numpy(rng.random((B, m)) < 0.5)
        rows = torch.from_numpy(rng.random((B, m)) < 0.7)
        grad_x = torch.from_numpy(rng.standard_normal((B, n)) * (rng.random((B, n)) < 0.3))
        live = torch.from_numpy(rng.random((B, n)) < 0.2)
        multiplier_rows = torch.from_numpy(rng.random((1, m)) < 0.2)
        on = (C != 0).astype(int)
        active = (~inactive.numpy()).astype(int)
        count = np.einsum("bm,bmn->bn", active, np.broadcast_to(on, (B, m, n)))
        free = ((data.P.numpy() != 0).sum(-2) == 0) & (grad_x.numpy() == 0) & ~live.numpy()
        others = count[:, None, :] - active[:, :, None] * on  # (B, m, n)
        expected = ((on > 0) & (others == 0) & free[:, None, :]).any(-1)
        expected &= rows.numpy() & ~multiplier_rows.numpy()
        result = absorbed(data, rows, inactive, grad_x, live, multiplier_rows)
        np.testing.assert_array_equal(result.numpy(), expected)
        found += int(expected.sum())
    assert found > 0


def test_dependent_rows_no_gradient_sees_skip_the_null_space_test(monkeypatch):
    # Instance 0: a row repeated (dependent active rows), x pinned, no multiplier row:
    # cleared by the Schur complement's screen, without the LDL' null-space test.
    # Instance 1: x_2 free (P = 0, no active row on it) and seen by the loss: tested,
    # and flagged.
    from types import SimpleNamespace

    import altdiff_modeling._degeneracy as degeneracy

    tested = []
    original = degeneracy._dense_null_spaces

    def spy(data, active, index):
        tested.append(index.tolist())
        return original(data, active, index)

    monkeypatch.setattr(degeneracy, "_dense_null_spaces", spy)
    n = 3
    C = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)[None]
    data = SimpleNamespace(P=torch.zeros(1, n, n, dtype=torch.float64), C=C, n=n)
    inactive = torch.tensor([[False, False, False, False], [False, False, True, True]])
    flagged = degeneracy.singular_systems(
        data,
        inactive,
        torch.ones(2, dtype=torch.bool),
        torch.zeros(1, 4, dtype=torch.bool),
        torch.tensor([[0.0, 0, 1], [0, 0, 1]], dtype=torch.float64),
    )
    assert flagged.tolist() == [False, True]
    assert tested == [[1]]
