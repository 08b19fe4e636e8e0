"""The linear-system implementations against dense solves, and the one solver loop on
dense and sparse data: the same iterates and statuses on the QP suite."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from qp_suite import make_suite

from altdiff_modeling import solve_qp
from altdiff_modeling._batched_sparse import BatchedSparse
from altdiff_modeling._qp import QPData
from altdiff_modeling.linsys.systems import linear_systems, penalty_rows

F64 = torch.float64
SIGMA = 1e-6


def _data(sparse: bool, per_instance: bool, seed: int = 0) -> tuple[QPData, np.ndarray]:
    """A batch of 3 QPs (n = 12, 4 equalities, 10 inequalities) in either layout, with
    one shared (P, C) or one per instance, and their dense matrices ``(3, n, n)``,
    ``(3, m, n)``."""
    rng = np.random.default_rng(seed)
    n, n_eq, m, B = 12, 4, 14, 3
    count = B if per_instance else 1
    Ps, Cs = [], []
    for _ in range(count):
        M = sp.random(n, n, density=0.3, random_state=rng)
        Ps.append((M @ M.T + 0.1 * sp.eye(n)).toarray())
        Cs.append(sp.random(m, n, density=0.3, random_state=rng).toarray() + np.eye(m, n))
    P, C = np.stack(Ps), np.stack(Cs)
    q = torch.from_numpy(rng.standard_normal((B, n)))
    bound = torch.from_numpy(rng.standard_normal((B, m)))
    if sparse:
        pattern_P, pattern_C = sp.coo_array(np.abs(P).sum(0)), sp.coo_array(np.abs(C).sum(0))

        def batched(M: np.ndarray, pattern: sp.coo_array) -> BatchedSparse:
            shared = BatchedSparse.from_scipy(pattern, F64, torch.device("cpu"))
            values = torch.from_numpy(M[:, pattern.row, pattern.col])
            return shared.with_values(values)

        data = QPData(batched(P, pattern_P), q, batched(C, pattern_C), bound, n_eq, B)
    else:
        data = QPData(torch.from_numpy(P), q, torch.from_numpy(C), bound, n_eq, B)
    return data, (P, C)


@pytest.mark.parametrize("per_instance", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_each_implementation_solves_with_H(sparse: bool, per_instance: bool) -> None:
    # H = P + sigma I + C' R C at a per-row penalty R (equality rows stiffer), for rho
    # shared or per instance, and after a change of rho (a refactor) and a selection.
    data, (P, C) = _data(sparse, per_instance)
    B, n, m = 3, P.shape[-1], C.shape[1]
    systems = linear_systems(data, SIGMA)
    rhs = torch.from_numpy(np.random.default_rng(1).standard_normal((B, n)))
    count = B if per_instance else 1
    for rho in (torch.full((count,), 0.1, dtype=F64), torch.linspace(0.5, 2.0, count, dtype=F64)):
        factor = systems.factor(rho)
        rows = penalty_rows(rho, data.n_eq, m).numpy()
        for i in range(B):
            j = i if per_instance else 0
            H = P[j] + SIGMA * np.eye(n) + C[j].T @ (rows[j][:, None] * C[j])
            expected = np.linalg.solve(H, rhs[i].numpy())
            np.testing.assert_allclose(factor.solve(rhs)[i].numpy(), expected, rtol=1e-10)
    index = torch.tensor([2, 0])
    selected = systems.select(index).factor(rho[index] if per_instance else rho)
    np.testing.assert_allclose(
        selected.solve(rhs[index]).numpy(), factor.solve(rhs)[index].numpy(), rtol=1e-10
    )
    copy = factor.copy()
    if per_instance:  # instance 1's factor replaced by instance 0's
        copy.put(torch.tensor([1]), factor.select(torch.tensor([0])))
        np.testing.assert_allclose(
            copy.solve(rhs)[1].numpy(), factor.solve(rhs[[1, 1, 1]])[0].numpy(), rtol=1e-10
        )


def _suite_blocks(inst) -> list[torch.Tensor]:
    blocks = [inst.P, inst.q, inst.A, inst.b, inst.G, inst.h]
    return [torch.from_numpy(np.asarray(block, dtype=np.float64)) for block in blocks]


@pytest.mark.filterwarnings("ignore:the solver failed")
@pytest.mark.parametrize("inst", make_suite(seed=0)[:60:3], ids=lambda i: i.name)
def test_dense_and_sparse_data_give_the_same_iterates_and_statuses(inst) -> None:
    # The same loop on the two layouts, without polishing (whose sparse and dense
    # implementations differ) and the interior-point fallback (priced by measured times). After 40 steps the iterates agree to round-off; run to
    # the end, the statuses agree, and the iteration counts to the rounding that can
    # move a check across its tolerance (the layouts' products round differently).
    args = {
        "polish": False,
        "interior_point": False,
        "on_failure": "warn",
    }  # the iterate where a solve stops
    early, final = {}, {}
    for backend in ("dense", "sparse"):
        blocks = _suite_blocks(inst)
        stop = {**args, "backend": backend, "max_iter": 40, "eps_abs": 1e-14, "eps_rel": 1e-14}
        early[backend] = solve_qp(*blocks, solver_args=stop)
        x, info = solve_qp(
            *blocks, solver_args={**args, "backend": backend, "max_iter": 5000}, return_info=True
        )
        final[backend] = (x, info.status[0], int(info.iterations[0]))
    scale = 1 + float(early["dense"].abs().max())
    assert float((early["dense"] - early["sparse"]).abs().max()) <= 1e-9 * scale
    (x_d, status_d, it_d), (x_s, status_s, it_s) = final["dense"], final["sparse"]
    assert status_d == status_s
    assert abs(it_d - it_s) <= max(20, 0.15 * it_d)
    if status_d == "solved":
        assert float((x_d - x_s).abs().max()) <= 1e-4 * (1 + float(x_d.abs().max()))
