"""A layer's choice between ADMM and the interior-point solve, from measured costs."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from reference import kkt_implicit_gradient, solve_qp_reference

from altdiff_modeling import AltDiffLayer, _admm
from altdiff_modeling._forward_choice import EXPLORE_EVERY, ForwardChoice, ForwardCosts, _Record

DT = torch.float64


def _record(admm: list[float], interior_point: list[float]) -> _Record:
    record = _Record()
    record.admm.extend(admm)
    record.interior_point.extend(interior_point)
    return record


def test_without_a_record_the_predicted_price_decides():
    choice = ForwardChoice(None, 8)
    assert not choice.start_with_interior_point
    assert not choice.hand_over_first(8, predicted=1e-9)
    assert choice.price(3, predicted=0.25) == 0.25
    choice.admm_finished(1.0)  # nothing to record into, and no error
    choice.interior_point_ran(1.0, 8, rented=True)


def test_the_method_measured_cheaper_starts_and_every_few_calls_re_measure_admm():
    record = _record(admm=[0.08, 0.1, 0.09], interior_point=[0.001, 0.002, 0.0015])
    starts = [ForwardChoice(record, 8).start_with_interior_point for _ in range(2 * EXPLORE_EVERY)]
    # 8 instances at 1.5 ms each: 12 ms against ADMM's 90 ms
    assert starts.count(False) == 2
    assert not starts[EXPLORE_EVERY - 1] and not starts[-1]
    exploring = ForwardChoice(record, 8)
    while exploring.start_with_interior_point:
        exploring = ForwardChoice(record, 8)
    # an exploring call runs ADMM at the measured price, not the predicted one
    assert not exploring.hand_over_first(8, predicted=0.0)
    assert exploring.price(8, predicted=10.0) == pytest.approx(0.012)

    slower = _record(admm=[0.01, 0.012, 0.011], interior_point=[0.002, 0.002, 0.002])
    assert not ForwardChoice(slower, 8).start_with_interior_point  # 16 ms > 11 ms


def test_admm_not_finishing_within_the_price_makes_the_interior_point_preferred():
    # ADMM ran 50 ms and left all 4 instances: 20 ms for the interior point alone.
    record = _Record()
    choice = ForwardChoice(record, 4)
    choice.interior_point_ran(0.02, solved=4, rented=True, before=0.05)
    assert list(record.admm) == [pytest.approx(0.07)]
    assert record.interior_point[0] == pytest.approx(0.005)
    assert ForwardChoice(record, 4).start_with_interior_point


def test_a_straggler_handed_over_keeps_admm_preferred():
    # ADMM solved 63 of 64 instances in 0.5 s, the interior point the last in 0.08 s:
    # all 64 by the interior point would take 5 s. (Recorded as ADMM "not finishing",
    # this call made an LP layer hand every later batch over, at 3 s a call against
    # 0.6 s.)
    record = _record(admm=[0.53], interior_point=[])
    ForwardChoice(record, 64).interior_point_ran(0.08, solved=1, rented=True, before=0.5)
    assert list(record.admm) == [0.53, pytest.approx(0.58)]
    assert not ForwardChoice(record, 64).start_with_interior_point


def test_an_unmeasured_interior_point_is_explored_once_admm_has_spent_its_price():
    record = _Record()
    for seconds in (0.03, 0.03, 0.03):
        choice = ForwardChoice(record, 8)
        # ADMM's calls so far have cost less than the predicted 0.08 s
        assert not choice.hand_over_first(8, predicted=0.08)
        choice.admm_finished(seconds)
    choice = ForwardChoice(record, 8)
    assert choice.hand_over_first(8, predicted=0.08)
    # it was dearer than ADMM: the next exploration waits for EXPLORE_EVERY prices
    choice.interior_point_ran(0.04, solved=8, rented=False)
    assert record.backoff == EXPLORE_EVERY and record.admm_spent == 0
    assert not ForwardChoice(record, 8).start_with_interior_point
    calls = math.ceil(EXPLORE_EVERY * 0.04 / 0.03 - 1e-9)
    for _ in range(calls):  # just under EXPLORE_EVERY times the measured 0.04 s
        choice = ForwardChoice(record, 8)
        assert not choice.hand_over_first(8, predicted=0.0)
        choice.admm_finished(0.03)
    choice = ForwardChoice(record, 8)
    assert choice.hand_over_first(8, predicted=0.0)
    choice.interior_point_ran(0.04, solved=8, rented=False)
    assert record.backoff == 2 * EXPLORE_EVERY


def test_an_exploring_call_hands_over_what_one_admm_call_pays_for():
    # ADMM's calls take 0.5 s; the interior point is expected to take 4 s for all 64
    record = _record(admm=[0.5], interior_point=[])
    exploring = ForwardChoice(record, 64)
    assert exploring.handed_over(64, price=4.0) == 8
    assert exploring.handed_over(3, price=4.0) == 1  # at least one
    assert exploring.handed_over(64, price=0.4) == 64  # all: no dearer than ADMM's call
    assert ForwardChoice(_Record(), 64).handed_over(64, price=4.0) == 64  # ADMM unmeasured
    preferred = _record(admm=[0.5], interior_point=[0.001])
    choice = ForwardChoice(preferred, 64)
    assert choice.start_with_interior_point and choice.handed_over(64, price=4.0) == 64


def test_an_attempt_on_a_share_records_its_time_per_instance_at_the_whole_batch():
    # 8 of 64 in 0.4 s; by the cost model an instance of the whole batch costs 0.75 of
    # one of 8 (the solve's fixed costs spread over more instances)
    record = _Record()
    ForwardChoice(record, 64).interior_point_ran(0.4, solved=8, rented=False, scale=0.75)
    assert record.interior_point[0] == pytest.approx(0.0375)


def test_an_interior_point_solve_that_solves_nothing_is_never_preferred():
    record = _Record()
    ForwardChoice(record, 2).interior_point_ran(0.001, solved=0, rented=True)
    assert record.interior_point[0] == math.inf
    choice = ForwardChoice(record, 2)
    assert not choice.start_with_interior_point
    assert choice.price(2, predicted=0.5) == 0.5


def test_records_are_kept_per_batch_shape():
    costs = ForwardCosts()
    a = costs.record(8, 10, 5, False, DT, torch.device("cpu"))
    assert costs.record(8, 10, 5, False, DT, torch.device("cpu")) is a
    assert costs.record(4, 10, 5, False, DT, torch.device("cpu")) is not a


def _capped_simplex_layer(n: int) -> AltDiffLayer:
    """The projection of c onto ``{x : sum x = 1, 0 <= x <= 0.6}``, without the active-set
    memory (which would answer later calls from the first call's sets)."""
    x, c = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - c)), [cp.sum(x) == 1, x >= 0, x <= 0.6])
    return AltDiffLayer(problem, [c], [x], solver_args={"remember_active_sets": False})


def _capped_simplex_qp(n: int) -> tuple[np.ndarray, ...]:
    """``P, A, b, G, h`` of `_capped_simplex_layer` (its q is ``-2 c``)."""
    G = np.vstack([-np.eye(n), np.eye(n)])
    return 2 * np.eye(n), np.ones((1, n)), np.ones(1), G, np.r_[np.zeros(n), np.full(n, 0.6)]


def _counted_attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of instances of each interior-point attempt, as the solves make them."""
    attempts: list[int] = []
    original = _admm._try_interior_point

    def counted(data, residuals, x, z, y, pending):
        attempts.append(int(pending.sum()))
        return original(data, residuals, x, z, y, pending)

    monkeypatch.setattr(_admm, "_try_interior_point", counted)
    return attempts


def test_a_layer_that_hands_its_instances_over_gives_exact_solutions_and_gradients(monkeypatch):
    """Where the record says the interior-point solve is cheaper, every instance is
    handed to it at the first check; with its steps past the tolerances, its solutions
    and gradients are Clarabel's and KKT differentiation's, not tolerance-close."""
    preferred = _record(admm=[math.inf], interior_point=[0.0])
    monkeypatch.setattr(ForwardCosts, "record", lambda self, *key: preferred)
    attempts = _counted_attempts(monkeypatch)
    n = 6
    layer = _capped_simplex_layer(n)
    P, A, b, G, h = _capped_simplex_qp(n)
    r = np.random.default_rng(0)
    for _ in range(3):
        costs = torch.tensor(r.normal(0.2, 0.5, (4, n)), dtype=DT, requires_grad=True)
        weights = torch.tensor(r.standard_normal((4, n)), dtype=DT)
        (x,), info = layer(costs, return_info=True)
        (grad,) = torch.autograd.grad((x * weights).sum(), costs)
        assert info.status == ["solved"] * 4
        for k in range(4):
            q = -2 * costs[k].detach().numpy()
            x_ref, lam, nu = solve_qp_reference(P, q, A, b, G, h)
            dq = kkt_implicit_gradient(P, q, A, b, G, h, x_ref, lam, nu, weights[k].numpy())[1]
            assert np.abs(x[k].detach().numpy() - x_ref).max() < 1e-8
            assert np.abs(grad[k].numpy() - (-2 * dq)).max() < 1e-7  # q = -2 c
    assert attempts == [4, 4, 4]


def test_an_exploring_call_hands_a_share_over_and_admm_solves_the_rest(monkeypatch):
    """A call that explores the interior-point solve where it is expected to cost four
    ADMM calls hands over a quarter of its instances; ADMM solves the others, and every
    instance's solution is Clarabel's within the tolerances."""
    record = _record(admm=[1.0], interior_point=[])
    record.admm_spent = math.inf  # ADMM has spent any price: this call explores
    monkeypatch.setattr(ForwardCosts, "record", lambda self, *key: record)
    monkeypatch.setattr(ForwardChoice, "price", lambda self, instances, predicted: 4.0)
    attempts = _counted_attempts(monkeypatch)
    n, B = 6, 8
    layer = _capped_simplex_layer(n)
    P, A, b, G, h = _capped_simplex_qp(n)
    costs = torch.tensor(np.random.default_rng(1).normal(0.2, 0.5, (B, n)), dtype=DT)
    (x,), info = layer(costs, return_info=True)
    assert attempts == [B // 4]
    assert info.status == ["solved"] * B
    assert len(record.interior_point) == 1  # the share's time, recorded
    for k in range(B):
        x_ref = solve_qp_reference(P, -2 * costs[k].numpy(), A, b, G, h)[0]
        assert np.abs(x[k].numpy() - x_ref).max() < 1e-6
