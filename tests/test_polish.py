"""When the forward solver polishes: the cost-based schedule, and the small LPs that ADMM
alone finishes only after thousands of iterations."""

from __future__ import annotations

import itertools
import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from lp_layers import grid_shortest_path
from sparse_families import mpc

from altdiff_modeling import AltDiffLayer, solve_qp

_FIRST_POLISH = 100  # the doubling schedule's first attempt

F64 = torch.float64


def test_the_polishing_budget_follows_the_measured_times():
    # Failed polishes may spend as much time as the rest of the solve, measured as it
    # runs: the caller's model prices an attempt, calibrated by the last measured one,
    # and the attempt risks the share of that one's instances it did not finish.
    from altdiff_modeling._costs import PolishBudget

    budget = PolishBudget(lambda instances: 0.5 * instances)
    budget.iterating = 0.4
    assert not budget.affords(1)  # risks all of 0.5 s against 0.4 s of the solve
    budget.iterating = 1.0
    assert budget.affords(2) and not budget.affords(3)
    budget.spend(0.9, 3, 0)  # measured: 0.9 s for three, none of which finished
    assert budget.polishing == pytest.approx(0.9)
    assert budget.price(3) == pytest.approx(0.9) and budget.price(6) == pytest.approx(1.8)
    assert budget.price(1) == pytest.approx(0.3)  # as the model grows: here in proportion
    assert not budget.affords(1)  # 0.9 + 0.3 > 1.0
    budget.spend(0.6, 3, 2)  # two of three finished: a third of its time is wasted
    assert budget.polishing == pytest.approx(1.1)
    assert budget.risk(3) == pytest.approx(0.2)  # 0.6 s, a third at risk
    budget.iterating = 1.3
    assert budget.affords(3) and not budget.affords(6)
    # An earlier solve's attempt (0.01 s on two instances) prices this solve's; all of
    # the first attempt is at risk, however that one ended.
    known = PolishBudget(lambda instances: math.inf, earlier=(0.01, 2))
    known.iterating = 0.02
    assert known.risk(2) == pytest.approx(0.01)
    assert known.affords(2) and not known.affords(5)


def test_solves_spend_at_most_as_long_polishing_as_iterating(monkeypatch):
    # An LP whose polish attempts mostly fail before the active set settles (an LP layer
    # spent 90% of its time in 40 attempts): the time of failed polishes stays within
    # the rest of the solve's, plus the last attempt and the one at max_iter.
    import altdiff_modeling._admm as admm

    spent = []
    original = admm.PolishBudget.spend

    def spy(self, seconds, instances, finished):
        spent.append(self)
        return original(self, seconds, instances, finished)

    monkeypatch.setattr(admm.PolishBudget, "spend", spy)
    rng = np.random.default_rng(3)
    n, m = 60, 90
    box = np.vstack([np.eye(n), -np.eye(n)])  # bounded: -1 <= x <= 1
    G = torch.from_numpy(np.vstack([rng.standard_normal((m, n)), box]))
    h = torch.from_numpy(np.concatenate([np.abs(rng.standard_normal(m)) + 0.1, np.ones(2 * n)]))
    q = torch.from_numpy(rng.standard_normal((16, n)))
    P = torch.zeros(n, n, dtype=F64)
    _, info = solve_qp(P, q, None, None, G, h, return_info=True, solver_args={"on_failure": "nan"})
    assert info.status.count("solved") >= 14
    assert spent, "no polish ran"
    budget = spent[-1]
    last = budget.price(16)
    assert budget.polishing <= budget.iterating + 2 * last


def test_a_layer_prices_its_polishes_by_its_earlier_calls(monkeypatch, unlimited_polishing):
    # A batched cost makes each call's scaling, and so its factors, new: the polish's
    # measured time reaches the next call through the layer's record of its batch shape
    # (polishing unlimited: whether a call polishes must not depend on the machine).
    import altdiff_modeling._admm as admm

    budgets = []
    original = admm.PolishBudget.__init__

    def spy(self, predict, earlier=None):
        original(self, predict, earlier)
        budgets.append((self, earlier))

    monkeypatch.setattr(admm.PolishBudget, "__init__", spy)
    rng = np.random.default_rng(0)
    n = 8
    x, b = cp.Variable(n), cp.Parameter(12)
    A = rng.standard_normal((12, n))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [cp.norm(x, 2) <= 0.5])
    layer = AltDiffLayer(problem, parameters=[b], variables=[x])
    for _ in range(3):
        layer(torch.from_numpy(rng.standard_normal((4, 12))))
    assert budgets[0][1] is None  # the first call has no measurement
    for (before, _), (_, earlier) in itertools.pairwise(budgets):
        assert before.measured is not None, "a call did not polish"
        assert earlier == before.measured[:2]
    assert len(budgets) == 3


# A 3-variable LP from the property tests, with its matrix G moved by four multiples of
# one direction (a finite-difference batch). ADMM alone took up to 25,600 iterations on
# these at eps 1e-11, and batching them changed which instance was slow.
_G = np.array(
    [
        [-0.02031432, 0.16041382, -0.49678236],
        [-0.31632849, 0.19082199, -0.10858948],
        [0.3755869, 0.34546546, 0.89650103],
        [-1.68372847, 0.88104371, -0.57410534],
        [-2.01051218, -0.48438767, 1.47129573],
        [0.291684, -0.16438248, 0.12666599],
    ]
)
_H = np.array([0.63523243, -0.10911989, 1.25183079, -1.64186535, -3.06665107, 0.26818152])
_Q = np.array([0.20210737, -0.00752136, -0.07122865])
_TIGHT = {"eps_abs": 1e-11, "eps_rel": 1e-11, "max_iter": 50_000}


def _moved_lps() -> torch.Tensor:
    rng = np.random.default_rng(4294967296)
    rng.standard_normal(3)  # the test's loss weights come first
    direction = rng.standard_normal(_G.shape) * np.abs(_G).max(axis=1, keepdims=True)
    offsets = 1e-3 * np.array([1.0, -1.0, 0.5, -0.5])
    return torch.tensor(_G[None] + offsets[:, None, None] * direction[None], dtype=F64)


@pytest.mark.parametrize("batched", [True, False])
def test_polishing_ends_small_lps_early_alone_or_in_a_batch(batched: bool):
    G = _moved_lps()
    P, q, h = torch.zeros(3, 3, dtype=F64), torch.tensor(_Q), torch.tensor(_H)
    instances = [G] if batched else [G[i] for i in range(4)]
    for G_part in instances:
        x, info = solve_qp(P, q, None, None, G_part, h, solver_args=_TIGHT, return_info=True)
        assert all(status == "solved" for status in info.status)
        # A polish ends them within its budget: each attempt costs as much as dozens of
        # these steps, and failed ones wait for the steps to pay for them.
        assert int(info.iterations.max()) <= 1000, info.iterations
        for G_i, x_i in zip(G_part.reshape(-1, *_G.shape), x.reshape(-1, 3), strict=True):
            np.testing.assert_allclose(x_i.numpy(), _clarabel_lp(G_i.numpy()), atol=1e-8)


def _clarabel_lp(G: np.ndarray) -> np.ndarray:
    x = cp.Variable(3)
    problem = cp.Problem(cp.Minimize(_Q @ x), [G @ x <= _H])
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return x.value


def _shared_batch(seed: int, B: int, n: int, n_eq: int, n_ineq: int, lp: bool = False):
    """Shared P, A, G with batched q, b, h; the solutions' active sets differ."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    P = np.zeros((n, n)) if lp else M @ M.T / n + 0.1 * np.eye(n)
    A, G = rng.standard_normal((n_eq, n)), rng.standard_normal((n_ineq, n))
    x0 = rng.standard_normal((B, n))
    q = rng.standard_normal((B, n))
    b = x0 @ A.T
    h = x0 @ G.T + rng.uniform(-0.5, 1.0, (B, n_ineq))
    if lp:  # a box keeps every LP bounded
        G = np.vstack([G, np.eye(n), -np.eye(n)])
        h = np.hstack([h, np.abs(x0) + 1.0, np.abs(x0) + 1.0])
    return P, q, A, b, G, h


def _clarabel(P, q, A, b, G, h) -> np.ndarray:
    x = cp.Variable(q.size)
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b, G @ x <= h])
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return x.value


@pytest.mark.parametrize("lp", [False, True])
def test_polishing_through_the_shared_factor_matches_clarabel(lp: bool, unlimited_polishing):
    # A batch sharing its matrices polishes through the ADMM factor of H
    # (SharedPolisher): it must reach each instance's exact solution.
    from altdiff_modeling import _polish as polish_module

    B = 16
    blocks = _shared_batch(3, B, n=20, n_eq=5, n_ineq=25, lp=lp)
    calls = []
    original = polish_module.SharedPolisher.polish

    def spy(self, *args):
        calls.append(original(self, *args))
        return calls[-1]

    tensors = [torch.from_numpy(block) for block in blocks]
    mp = pytest.MonkeyPatch()
    mp.setattr(polish_module.SharedPolisher, "polish", spy)
    try:
        x, info = solve_qp(
            *tensors, solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9}, return_info=True
        )
    finally:
        mp.undo()
    assert info.status == ["solved"] * B
    # The LPs' majority systems are mostly too ill-conditioned for the shared path (P = 0
    # leaves R S with eigenvalues near 1, and D0 subtracts 1), and their polishes fall
    # back to factoring each instance: for them only the answers are checked. (An early
    # attempt's estimate may also give an ill-conditioned majority system.)
    if not lp:
        assert any(answer is not None for answer in calls)
    P, q, A, b, G, h = blocks
    reference = np.stack([_clarabel(P, q[i], A, b[i], G, h[i]) for i in range(B)])
    np.testing.assert_allclose(x.numpy(), reference, atol=1e-7)
    # Most instances end at a polish, long before ADMM alone would meet 1e-9.
    assert int((info.iterations <= 100).sum()) >= B // 2


def _polish_on(
    estimate: torch.Tensor, blocks, corrections: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_try_polish` of one unscaled instance from the origin on ``estimate`` ``(1, m)``
    with up to ``corrections`` corrected polishes: the point it returns and whether it
    kept the polished one."""
    from altdiff_modeling._admm import Residuals, _try_polish
    from altdiff_modeling._qp import QPData
    from altdiff_modeling._scaling import Scaling
    from altdiff_modeling._settings import SolverSettings

    P, q, A, b, G, h = (torch.from_numpy(block)[None] for block in blocks)
    data = QPData.from_blocks(P, q, A, b, G, h, batch_size=1)
    n, m = q.shape[-1], estimate.shape[-1]
    unit = Scaling(
        D=torch.ones(1, n, dtype=F64), E=torch.ones(1, m, dtype=F64), c=torch.ones(1, 1, dtype=F64)
    )
    residuals = Residuals(data, unit, SolverSettings(eps_abs=1e-9, eps_rel=1e-9))
    x, z, y = (
        torch.zeros(1, n, dtype=F64),
        torch.zeros(1, m, dtype=F64),
        torch.zeros(1, m, dtype=F64),
    )
    residuals.measure(x, z, y)
    x, _, _, kept, _ = _try_polish(
        data, residuals, x, z, y, torch.tensor([True]), estimate, corrections=corrections
    )
    return x[0], kept[0]


def test_a_shared_polish_of_an_ill_conditioned_p_refines_until_it_is_exact(unlimited_polishing):
    # P's eigenvalues from 1 to 1e-6: each refinement step of the shared polish shrinks
    # the error by about half, and two steps left points 1e-3 off the solution, within
    # the default residual tolerances. Refined until the change settles, they are exact.
    from altdiff_modeling import _polish as polish_module

    rng = np.random.default_rng(5)
    n, B = 20, 4
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    P = Q @ np.diag(np.logspace(0, -6, n)) @ Q.T
    P = (P + P.T) / 2
    _, q, A, b, G, h = _shared_batch(5, B, n=n, n_eq=2, n_ineq=30)
    shared = []
    original = polish_module.SharedPolisher.polish

    def spy(self, *args):
        shared.append(original(self, *args))
        return shared[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(polish_module.SharedPolisher, "polish", spy)
    try:
        blocks = [torch.from_numpy(v) for v in (P, q, A, b, G, h)]
        x, info = solve_qp(*blocks, return_info=True)
    finally:
        mp.undo()
    assert info.status == ["solved"] * B and any(answer is not None for answer in shared)
    reference = np.stack([_clarabel(P, q[i], A, b[i], G, h[i]) for i in range(B)])
    np.testing.assert_allclose(x.numpy(), reference, atol=1e-7)


def test_a_polish_corrects_wrong_rows_of_its_estimate():
    # An estimate with one wrong row (an active row missing, or an inactive one held
    # active) fails as it is; the polished point contradicts its estimate in that row
    # (violated, or with a negative multiplier) and perhaps a few others, and a few
    # corrected polishes land on the solution. Primal-dual active-set steps need not
    # converge in so few rounds: here they do for about half of the 40 rows.
    from altdiff_modeling._admm import _CORRECTIONS

    P, q, A, b, G, h = _shared_batch(7, 1, n=30, n_eq=5, n_ineq=40)
    blocks = (P, q[0], A, b[0], G, h[0])
    reference = _clarabel(*blocks)
    active = np.concatenate([np.ones(5, dtype=bool), h[0] - G @ reference < 1e-7])
    assert active[5:].sum() == 17

    def kept_rows(corrections: int) -> np.ndarray:
        kept = np.zeros(active.shape, dtype=bool)
        for row in range(5, active.size):
            estimate = torch.from_numpy(active.copy())[None]
            estimate[0, row] = not active[row]
            x, kept[row] = _polish_on(estimate, blocks, corrections)
            if kept[row]:
                np.testing.assert_allclose(x.numpy(), reference, atol=1e-7)
        return kept

    corrected = kept_rows(_CORRECTIONS)
    assert corrected[active].sum() >= 6  # of 17 dropped
    assert corrected[~active].sum() >= 8  # of 23 added
    assert not kept_rows(0).any()


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_a_free_epigraph_variable_is_pinned_so_that_its_layer_polishes(
    mode, unlimited_polishing, whole_problem
):
    # |u| <= 1 becomes u <= t, -u <= t, t <= 1: where |u| < 1 no objective term and no
    # active row holds t, so the estimate's reduced KKT system leaves it free and the
    # polished point violates t's rows. Pinned to t <= 1, every instance polishes at
    # its first attempt: exact, not ADMM's tolerance-close point.
    rng = np.random.default_rng(3)
    n, B = 6, 8
    a, u = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(u - a)), [cp.abs(u) <= 1])
    layer = AltDiffLayer(
        problem,
        parameters=[a],
        variables=[u],
        solver_args={"remember_active_sets": False, "mode": mode},
    )
    for _ in range(3):
        values = torch.tensor(rng.uniform(-2, 2, (B, n)), requires_grad=True)
        w = torch.tensor(rng.standard_normal((B, n)))
        (x,), info = layer(values, return_info=True)
        (grad,) = torch.autograd.grad((w * x).sum(), values)
        assert info.status == ["solved"] * B
        exact = np.clip(values.detach().numpy(), -1, 1)
        np.testing.assert_allclose(x.detach().numpy(), exact, atol=1e-12)
        # forward mode's Jacobian is its recursion's, run to backward_eps = 1e-8
        atol = 1e-12 if mode == "reverse" else 1e-8
        np.testing.assert_allclose(grad.numpy(), w.numpy() * (np.abs(exact) < 1), atol=atol)
        assert int(info.iterations.max()) < _FIRST_POLISH  # at the first polish


def _lasso_qp(seed: int, n_features: int = 300, n_samples: int = 30):
    """A lasso ``min 1/2 ||r||^2 + lam 1't  s.t.  F w - r = y,  w - t <= 0,  -w - t <= 0``
    in the sparse polish's form over ``x = [w; t; r]``, and Clarabel's solution."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    p, s = n_features, n_samples
    F = sp.random_array((s, p), density=0.3, rng=rng, data_sampler=rng.standard_normal)
    y = F @ np.where(rng.random(p) < 0.1, rng.standard_normal(p), 0.0)
    y += 0.1 * rng.standard_normal(s)
    lam = 0.2 * np.abs(F.T @ y).max()
    eye, none = sp.eye_array(p), sp.csr_array((p, s))
    C = sp.vstack(
        [
            sp.hstack([F, sp.csr_array((s, p)), -sp.eye_array(s)]),
            sp.hstack([eye, -eye, none]),
            sp.hstack([-eye, -eye, none]),
        ]
    ).tocsr()
    bound = np.concatenate([y, np.zeros(2 * p)])
    P = sp.diags_array(np.concatenate([np.zeros(2 * p), np.ones(s)])).tocsc()
    q = np.concatenate([np.zeros(p), np.full(p, lam), np.zeros(s)])
    x = cp.Variable(q.size)
    rows = [C[:s] @ x == y, C[s:] @ x <= 0]
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), rows).solve(
        cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    active = np.concatenate([np.ones(s, dtype=bool), rows[1].dual_value > 1e-9])
    return (P, q, C, bound, s), x.value, active


@pytest.mark.parametrize("seed", range(6))
def test_sparse_polish_recovers_from_a_lasso_estimate_with_features_held_at_zero(seed, monkeypatch):
    # ADMM's early iterates hold small nonzero weights of a lasso at zero (both rows of
    # the feature active). Full active-set steps from there release too many features
    # at once and make the reduced QP unbounded (a free epigraph variable t_i); the
    # polish then goes back one round and takes damped steps, which reach the solution.
    import altdiff_modeling._sparse_polish as sparse_polish_module

    (P, q, C, bound, n_eq), reference, active = _lasso_qp(seed)
    p = (q.size - n_eq) // 2
    nonzero = np.flatnonzero(np.abs(reference[:p]) > 1e-6)
    estimate = active.copy()
    held = nonzero[: nonzero.size // 2]
    estimate[n_eq + held] = estimate[n_eq + p + held] = True
    z = np.where(estimate, bound, bound - 1.0)  # (bound - z) < y marks the estimate
    y = estimate.astype(float)

    def polished() -> np.ndarray | None:
        point = sparse_polish_module.sparse_polish(P, q, C, bound, n_eq, z, y, np.zeros(q.size))
        return None if point is None else point[0]

    x = polished()
    assert x is not None
    np.testing.assert_allclose(x, reference, atol=1e-6)
    monkeypatch.setattr(sparse_polish_module, "_BLOWUP", np.inf)  # full steps only
    x = polished()
    assert x is None or np.abs(x - reference).max() > 1e-6


@pytest.mark.parametrize(("horizon", "n_x"), [(20, 6), (30, 8)])
def test_sparse_polish_leaves_tied_rows_of_an_mpc_in_place(
    horizon, n_x, monkeypatch, unlimited_polishing, whole_problem
):
    # CVXPY writes |u| <= u_max with an epigraph variable t: u <= t, -u <= t, t <= u_max.
    # Any t between |u| and u_max is optimal, so the reduced QP's solution holds rows
    # with zero slack and a multiplier at round-off level. Dropping them (a multiplier
    # "<= 0") frees t, whose rows are then violated, and the rounds wander: the polish
    # after the first 100 iterations failed and ADMM ran 200 to 400. Ties stay as they
    # are, and that first polish lands on Clarabel's solution.
    import altdiff_modeling._sparse_polish as sparse_polish_module

    family = mpc(horizon, n_x, np.random.default_rng(1))
    for parameter, value in zip(family.parameters, family.values, strict=True):
        parameter.value = value
    family.problem.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    reference = family.variables[0].value

    def solve() -> tuple[np.ndarray, int]:
        layer = AltDiffLayer(
            family.problem,
            family.parameters,
            family.variables,
            # the polish alone: the interior-point fallback would end a wandering solve
            solver_args={"backend": "sparse", "interior_point": False},
        )
        (u,), info = layer(*(torch.tensor(v) for v in family.values), return_info=True)
        return u.numpy(), int(info.iterations[0])

    u, iterations = solve()
    assert iterations <= _FIRST_POLISH
    np.testing.assert_allclose(u, reference, atol=1e-6)
    monkeypatch.setattr(sparse_polish_module, "_TIE", 0.0)
    _, iterations = solve()
    assert iterations > _FIRST_POLISH


@pytest.mark.parametrize("shared", [False, True])
def test_the_reduced_kkt_solve_matches_each_instances_kkt_system(shared: bool):
    # Few active rows (gathered, padded; instance 1 has none) and, in the second batch,
    # an instance with most rows active (the whole C for every instance).
    from altdiff_modeling._polish import solve_reduced_kkt

    rng = np.random.default_rng(9)
    B, m, n = 4, 30, 24
    M = rng.standard_normal((B, n, n))
    P = torch.from_numpy(M @ M.transpose(0, 2, 1) + np.eye(n))
    C = torch.from_numpy(rng.standard_normal((1 if shared else B, m, n)))
    target_x = torch.from_numpy(rng.standard_normal((B, n)))
    target_y = torch.from_numpy(rng.standard_normal((B, m)))
    for dense in (False, True):
        active = torch.from_numpy(rng.random((B, m)) < 0.25)
        active[1] = False
        if dense:  # 23 of 30 rows: more than three quarters
            active[2, :23] = True
            active[2, 23:] = False
        x, y, ok = solve_reduced_kkt(P, C, active, target_x, target_y)
        assert bool(ok.all())
        for i in range(B):
            rows = active[i].numpy()
            C_a = C[0 if shared else i].numpy()[rows]
            k = C_a.shape[0]
            kkt = np.block([[P[i].numpy(), C_a.T], [C_a, np.zeros((k, k))]])
            rhs = np.concatenate([target_x[i].numpy(), target_y[i].numpy()[rows]])
            expected = np.linalg.solve(kkt, rhs)
            np.testing.assert_allclose(x[i].numpy(), expected[:n], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(y[i].numpy()[rows], expected[n:], rtol=1e-9, atol=1e-9)
            assert float(y[i][~active[i]].abs().max()) == 0.0


def test_a_batch_polishes_every_instance_where_its_polish_is_unlimited(
    monkeypatch, unlimited_polishing
):
    # Per-instance matrices at n = 60: a polish of the batch costs a few of its steps,
    # so every unfinished instance tries at the first attempt and failures are corrected.
    from altdiff_modeling import _admm

    attempts = []  # (unfinished, chosen) at each check with an attempt
    original = _admm._PolishPlan.candidates

    def spy(self, k, z, y, bound, n_eq, pending):
        chosen = original(self, k, z, y, bound, n_eq, pending)
        if chosen is not None:
            attempts.append((int(pending.sum()), int(chosen[0].sum())))
        return chosen

    monkeypatch.setattr(_admm._PolishPlan, "candidates", spy)
    rng = np.random.default_rng(10)
    B, n, n_eq, n_ineq = 16, 60, 15, 60
    A, G = rng.standard_normal((B, n_eq, n)), rng.standard_normal((B, n_ineq, n))
    x0 = rng.standard_normal((B, n))
    h = np.einsum("bij,bj->bi", G, x0) + rng.uniform(0.0, 1.0, (B, n_ineq))
    M = rng.standard_normal((n, n))
    tensors = [M @ M.T + np.eye(n), rng.standard_normal((B, n)), A]
    tensors += [np.einsum("bij,bj->bi", A, x0), G, h]
    _, info = solve_qp(*[torch.from_numpy(t) for t in tensors], return_info=True)
    assert info.status == ["solved"] * B
    unfinished, chosen = attempts[0]
    assert unfinished >= B // 2 and chosen == unfinished


def test_a_degenerate_vertex_polishes_from_the_iterate():
    # A shortest path: every edge at a bound and every conservation row active, 21 active
    # rows on 12 variables. x is unique, the multipliers are not: the reduced system's
    # solve from zero returns multipliers of both signs, which fail the dual residual
    # once clamped; from an iterate near a nonnegative dual solution it returns one.
    from altdiff_modeling._polish import polish

    N, supply = grid_shortest_path(3)
    n_eq, n = N.shape
    cost = np.exp(0.5 * np.random.default_rng(3).standard_normal(n))
    x = cp.Variable(n)
    conservation, lower, upper = N @ x == supply, x >= 0, x <= 1
    problem = cp.Problem(cp.Minimize(cost @ x), [conservation, upper, lower])
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    C = np.vstack([N, np.eye(n), -np.eye(n)])
    bound = np.concatenate([supply, np.ones(n), np.zeros(n)])
    y_star = np.concatenate([conservation.dual_value, upper.dual_value, lower.dual_value])
    active = np.concatenate([np.ones(n_eq, bool), C[n_eq:] @ x.value >= bound[n_eq:] - 1e-9])
    assert active.sum() > n and np.linalg.matrix_rank(C[active]) == n  # x is pinned
    rng = np.random.default_rng(4)
    x_iterate = x.value + 1e-3 * rng.standard_normal(n)
    y_iterate = y_star + 1e-3 * rng.standard_normal(y_star.shape)
    y_iterate[n_eq:] = np.maximum(y_iterate[n_eq:], 0) * active[n_eq:]

    def polished(start):
        def t(a):
            return torch.from_numpy(np.asarray(a, dtype=np.float64))[None]

        rows = torch.from_numpy(active)[None]
        xp, _, yp, ok = polish(t(np.zeros((n, n))), t(cost), t(C), t(bound), n_eq, rows, start)
        assert bool(ok.all())
        xp, yp = xp[0].numpy(), yp[0].numpy()
        return np.abs(xp - x.value).max(), np.abs(cost + C.T @ yp).max()

    primal, dual = polished((torch.from_numpy(x_iterate)[None], torch.from_numpy(y_iterate)[None]))
    assert primal <= 1e-9 and dual <= 1e-12
    primal, dual = polished(None)
    assert primal <= 1e-9 and dual >= 1e-3


@pytest.mark.parametrize("shared", [True, False])
def test_the_active_rows_gram_matrix_sums_each_part_its_own_way(shared: bool):
    # Equalities (active everywhere), general inequalities and bounds (one entry each,
    # of either sign and any scale): C_a'C_a as the dense product gives it.
    from altdiff_modeling._polish import active_gram

    rng = np.random.default_rng(5)
    B, n, n_eq, n_general = 5, 9, 3, 6
    bounds = np.vstack([np.diag(rng.uniform(0.5, 2.0, n)), -np.diag(rng.uniform(0.5, 2.0, n))])
    C = np.vstack([rng.standard_normal((n_eq + n_general, n)), bounds])
    C = np.repeat(C[None], 1 if shared else B, axis=0)
    if not shared:
        C = C + 0.1 * rng.standard_normal(C.shape) * (C != 0)
    active = rng.random((B, C.shape[1])) < 0.5
    active[:, :n_eq] = True
    C_t, active_t = torch.from_numpy(C), torch.from_numpy(active)
    expected = np.einsum(
        "bmi,bm,bmj->bij",
        np.broadcast_to(C, (B, *C.shape[1:])),
        active,
        np.broadcast_to(C, (B, *C.shape[1:])),
    )
    np.testing.assert_allclose(active_gram(C_t, active_t).numpy(), expected, rtol=1e-13, atol=1e-13)


def test_the_reduced_system_tells_a_free_x_from_dependent_rows():
    # Dependent active rows (a row repeated) leave x unique; an LP variable no active
    # row holds is free. `singular` sees both, `primal_singular` only the second.
    from altdiff_modeling._polish import ReducedKKT

    rng = np.random.default_rng(6)
    n = 5
    C = torch.from_numpy(np.vstack([np.eye(n), np.eye(n)[:1], rng.standard_normal((2, n))]))[None]
    P = torch.zeros(1, n, n, dtype=F64)
    pinned = torch.tensor([[True] * n + [True, False, False]])  # rows 0 and 5 repeat
    loose = torch.tensor([[True] * (n - 1) + [False, False, False, False]])  # x_4 free
    regular = torch.tensor([[True] * n + [False, False, False]])
    system = ReducedKKT(P, C, torch.cat([pinned, loose, regular]))
    assert system.singular().tolist() == [True, True, False]
    assert system.primal_singular().tolist() == [False, True, False]
