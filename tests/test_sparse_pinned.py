"""Variables fixed by their own short active rows (`altdiff_modeling.linsys.pinned`):
which blocks are found, and the active-set KKT solve that eliminates them against a
dense solve of the whole system."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from reference import relative_error

from altdiff_modeling.linsys.pinned import PinnedBlockFinder
from altdiff_modeling.linsys.sparse_kkt import ActiveKKT, solve_active_kkt


def _constraints(rng: np.random.Generator) -> tuple[sp.csr_array, np.ndarray, set[int]]:
    """C over 20 variables, which rows are active, and the variables they fix.

    Fixed: a bound on x0; a lasso pair ``x1 - x2``, ``-x1 - x2`` (both active); a
    dense 3 x 3 block on x5..x7; a chain x11 - x12, x12 - x13, x13 - x14 closed by a
    bound on x14 (4 x 4). Not fixed: one row of a pair (x3, x4: a free weight); an
    ill-conditioned pair on x8, x9; an inactive bound on x10; the chain x15..x17 (two
    rows, three variables); x19 at two bounds (two rows, one variable); x18 only in the
    long row, which covers every variable.
    """
    n = 20
    rows: list[np.ndarray] = []
    active: list[bool] = []

    def row(entries: dict[int, float], is_active: bool = True) -> None:
        r = np.zeros(n)
        for j, v in entries.items():
            r[j] = v
        rows.append(r)
        active.append(is_active)

    row({j: rng.standard_normal() for j in range(n)})  # long row: never in a block
    row({0: 2.0})
    row({1: 1.0, 2: -1.0})
    row({1: -1.0, 2: -1.0})
    row({3: 1.0, 4: -1.0})
    row({3: -1.0, 4: -1.0}, is_active=False)
    block = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    for i in range(3):
        row({5 + j: block[i, j] for j in range(3)})
    row({8: 1.0, 9: 1.0})
    row({8: 1.0, 9: 1.0 + 1e-8})
    row({10: 1.0}, is_active=False)
    for j in range(11, 14):
        row({j: 1.0, j + 1: -1.0})
    row({14: 1.0})
    row({15: 1.0, 16: -1.0})
    row({16: 1.0, 17: -1.0})
    row({19: 1.0})
    row({19: -1.0})
    fixed = {0, 1, 2, 5, 6, 7, 11, 12, 13, 14}
    return sp.csr_array(np.array(rows)), np.array(active), fixed


def test_blocks_are_the_square_well_conditioned_components_of_short_active_rows() -> None:
    C, active, fixed = _constraints(np.random.default_rng(0))
    blocks = PinnedBlockFinder(C).find(active)
    assert blocks is not None
    assert set(blocks.fixed_variables.tolist()) == fixed
    dense = C.toarray()
    for variables, rows, inverses in zip(blocks.variables, blocks.rows, blocks.inverses):
        assert active[rows].all()
        for v, r, inverse in zip(variables, rows, inverses):
            # each block's rows touch only its variables, and the inverse is C's block's
            assert not dense[np.ix_(r, np.setdiff1d(np.arange(20), v))].any()
            np.testing.assert_allclose(inverse @ dense[np.ix_(r, v)], np.eye(v.size), atol=1e-12)
    # A search that finds nothing ends the finder's searches (a polish's later rounds).
    finder = PinnedBlockFinder(C)
    assert finder.find(np.zeros_like(active)) is None
    assert finder.find(active) is None


def test_active_set_solve_with_fixed_variables_matches_a_dense_kkt_solve() -> None:
    """Fixed variables coupled to free ones through P and through the long row: the
    solution and the multipliers of every active row (the fixed blocks' included) are
    those of the whole KKT system, and those of the solve without the elimination."""
    rng = np.random.default_rng(1)
    C, active, _ = _constraints(rng)
    # keep C_a of full rank: drop a row of the ill-conditioned pair and one of x19's
    active[10] = active[-1] = False
    n, m = C.shape[1], C.shape[0]
    coupling = sp.random_array((n, n), density=0.2, rng=rng)
    P = sp.csr_array(coupling @ coupling.T + sp.diags_array(rng.uniform(0.5, 1.0, n)))
    rhs_x, rhs_y = rng.standard_normal(n), rng.standard_normal(m)

    u, w = solve_active_kkt(P, C, active, rhs_x, rhs_y)
    a = np.flatnonzero(active)
    C_a = C.toarray()[a]
    K = np.block([[P.toarray(), C_a.T], [C_a, np.zeros((a.size, a.size))]])
    expected = np.linalg.solve(K, np.concatenate([rhs_x, rhs_y[a]]))
    assert relative_error(u, expected[:n]) < 1e-10
    assert relative_error(w[a], expected[n:]) < 1e-10
    assert not w[~active].any()

    u_whole, w_whole = ActiveKKT(P, C, active, eliminate=False).solve(rhs_x, rhs_y)
    assert relative_error(u, u_whole) < 1e-10 and relative_error(w, w_whole) < 1e-10
