"""Bound epigraph variables, eliminated before the solve (Fourier-Motzkin).

CVXPY writes a bound on an absolute value or a maximum, ``cp.abs(u) <= c``, with an
epigraph variable t: the rows ``u - t <= 0``, ``-u - t <= 0`` and ``t <= c``. Such a t
has no cost (a zero column of P, a zero entry of q), no output reads it, and each of
its rows is an inequality with a constant coefficient on it. Where one of its rows
alone bounds t from one side (the pivot j: ``t <= c``), each of its rows i from the
other side combines with the pivot, weighted so that t cancels,

    (G_i / |g_i| + G_j / |g_j|) x <= h_i / |g_i| + h_j / |g_j|

(``u <= c`` and ``-u <= c``): the projection of the feasible set onto the other
variables. The problem without t has the other variables' solutions, and its
multipliers mu give the whole problem's: ``lambda_i = mu_k / |g_i|`` for the row i of
combination k, and ``lambda_j = sum_k mu_k / |g_j|`` for the pivot. A t that no row
bounds from one side can go to infinity there: its rows are dropped, with zero
multipliers. Every weight is a constant, so the reduced problem's rows are affine in
the parameters like the whole problem's, and nothing is formed per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ._canon import CanonicalForm, ConeProgram
from ._parametric import VariableSpec, to_torch_sparse
from ._triplets import Triplets, entries_of, renumbered

__all__ = ["Epigraphs"]


def _candidates(program: ConeProgram, hidden: np.ndarray, A: Triplets, P: Triplets) -> np.ndarray:
    """``(n,)`` bool: the variables with no cost, no output, and constant coefficients
    in inequality rows only (no equality, no second-order cone)."""
    n, width = program.n, program.q.shape[1]
    q = sp.coo_array(program.q)
    costly = np.zeros(n + 1, dtype=bool)
    costly[P.row], costly[P.col] = True, True
    costly[q.row[q.data != 0]] = True
    first_cone_row = program.n_rows - sum(program.soc)
    matrix = A.where(A.col < n)
    excluded = (matrix.row < program.n_eq) | (matrix.row >= first_cone_row)
    excluded |= matrix.column != width - 1
    costly[matrix.col[excluded]] = True
    return hidden & ~costly[:n]


@dataclass
class Epigraphs:
    """The bound epigraph variables of a layer's canonical problem, and how the problem
    without them maps to and from the whole one.

    Attributes:
        eliminated: ``(t,)`` the variables eliminated.
        free: ``(n - t,)`` the variables kept, in order.
        kept_row: ``(n_rows,)`` each row's index in the reduced problem, -1 for the
            rows eliminated or combined.
        multipliers: ``(n_rows, m)`` sparse: the whole problem's multipliers from the
            reduced problem's ``m``.
    """

    eliminated: np.ndarray
    free: np.ndarray
    kept_row: np.ndarray
    multipliers: sp.csr_array
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def of(form: CanonicalForm, hidden: np.ndarray) -> tuple[CanonicalForm, Epigraphs] | None:
        """The problem without its bound epigraph variables (those among ``hidden``
        ``(n,)``, the variables no output reads), and the elimination; None without any."""
        program = form.program
        n, n_rows, n_eq = program.n, program.n_rows, program.n_eq
        A, P = Triplets.of(program.A, n_rows), Triplets.of(program.P, n)
        candidate = _candidates(program, hidden, A, P)
        on = A.where((A.col < n) & candidate[np.minimum(A.col, n - 1)])
        pairs, pair_of = np.unique(on.row * n + on.col, return_inverse=True)
        # g: the coefficient in G = -AF.
        g = -np.bincount(pair_of, weights=on.value, minlength=pairs.size)
        pair_row, pair_col = pairs // n, pairs % n
        # A row with two candidates, or a coefficient that cancels, rules its candidates out.
        shared_row = np.bincount(pair_row, minlength=n_rows)[pair_row] > 1
        ruled_out = np.zeros(n, dtype=bool)
        ruled_out[pair_col[shared_row | (g == 0)]] = True
        upper = np.bincount(pair_col, weights=g > 0, minlength=n)
        lower = np.bincount(pair_col, weights=g < 0, minlength=n)
        one_sided = (upper == 0) | (lower == 0)
        eliminated = candidate & ~ruled_out & (one_sided | (upper == 1) | (lower == 1))
        eliminated = np.flatnonzero(eliminated)
        if eliminated.size == 0 or eliminated.size == n:
            return None

        # Each eliminated variable's pivot (its single row on one side) and the rows
        # that combine with it; the rows of a one-sided one are dropped.
        mine = np.isin(pair_col, eliminated)
        pair_row, pair_col, g = pair_row[mine], pair_col[mine], g[mine]
        pivot_upper = (upper == 1) & (lower > 0)
        pivot_side = np.where(pivot_upper[pair_col], g > 0, g < 0)
        combines = ~one_sided[pair_col]
        pivot_of = np.full(n, -1, dtype=np.int64)
        is_pivot = combines & pivot_side
        pivot_of[pair_col[is_pivot]] = pair_row[is_pivot]
        weight_of = np.zeros(n)
        weight_of[pair_col[is_pivot]] = 1 / np.abs(g[is_pivot])
        others = combines & ~pivot_side
        combo_row, combo_col = pair_row[others], pair_col[others]
        combo_weight, combo_pivot = 1 / np.abs(g[others]), pivot_of[combo_col]
        combo_pivot_weight = weight_of[combo_col]

        removed = np.unique(pair_row)
        kept = np.setdiff1d(np.arange(n_rows), removed)
        first_cone_row = n_rows - sum(program.soc)
        before_cones = kept[kept < first_cone_row]
        cones = kept[kept >= first_cone_row]
        m = kept.size + combo_row.size
        new_row = np.full(n_rows, -1, dtype=np.int64)
        new_row[before_cones] = np.arange(before_cones.size)
        combo_index = before_cones.size + np.arange(combo_row.size)
        new_row[cones] = before_cones.size + combo_row.size + np.arange(cones.size)

        free = np.setdiff1d(np.arange(n), eliminated)
        new_col = renumbered(free, n + 1)
        new_col[n] = free.size  # bg's column
        # Entries of the reduced [AF, bg]: kept rows as they are, and per combination
        # the weighted entries of its row and its pivot, without the eliminated column.
        rest = A.where(new_col[A.col] >= 0)
        parts = [rest.where(new_row[rest.row] >= 0)]
        targets = [new_row[parts[0].row]]
        weights = [np.ones(parts[0].row.size)]
        for rows, scale in ((combo_row, combo_weight), (combo_pivot, combo_pivot_weight)):
            combination, entry = entries_of(rest.row, n_rows, rows)
            parts.append(rest.where(entry))
            targets.append(combo_index[combination])
            weights.append(scale[combination])
        combined = Triplets.concatenated(parts)
        width = program.q.shape[1]
        reduced_A = Triplets(
            np.concatenate(targets),
            new_col[combined.col],
            combined.column,
            combined.value * np.concatenate(weights),
        ).tensor(m, free.size + 1, width)

        q = sp.csr_array(program.q)
        # P has no entry of an eliminated variable (`_candidates`).
        reduced_P = P.renumbered(new_col, new_col).tensor(free.size, free.size, width)
        reduced = ConeProgram(
            P=reduced_P,
            q=sp.csr_array(q[np.append(free, n)]),
            A=reduced_A,
            n=int(free.size),
            n_rows=int(m),
            n_eq=n_eq,
            soc=program.soc,
        )
        multipliers = sp.csr_array(
            (
                np.concatenate([np.ones(kept.size), combo_weight, combo_pivot_weight]),
                (
                    np.concatenate([kept, combo_row, combo_pivot]),
                    np.concatenate([new_row[kept], combo_index, combo_index]),
                ),
            ),
            shape=(n_rows, m),
        )
        reduced_form = CanonicalForm(
            program=reduced, S=form.S, parameters=form.parameters, variables=[]
        )
        kept_row = np.full(n_rows, -1, dtype=np.int64)
        kept_row[kept] = new_row[kept]
        return reduced_form, Epigraphs(eliminated, free, kept_row, multipliers)

    def solved_spec(self, spec: VariableSpec) -> VariableSpec | None:
        """``spec`` over the reduced problem's solution and multipliers; None where it
        reads the multipliers of a row eliminated or combined (a primal output never
        reads an eliminated variable)."""
        if spec.is_dual:
            new = self.kept_row
        else:
            new = renumbered(self.free, self.free.size + self.eliminated.size)
        return spec.renumbered(new)

    def recover(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole problem's multipliers ``(B, n_rows)`` from the reduced problem's
        ``y`` ``(B, m)``, and its solution ``(B, n)`` from ``x`` ``(B, n - t)``, NaN
        at the eliminated variables (which no output reads)."""
        key = (x.dtype, x.device)
        if key not in self._torch_cache:
            order = np.argsort(np.concatenate([self.free, self.eliminated]))
            self._torch_cache[key] = (
                to_torch_sparse(self.multipliers, x.dtype, x.device),
                torch.as_tensor(order, device=x.device),
            )
        multipliers, order = self._torch_cache[key]
        unknown = x.new_full((x.shape[0], self.eliminated.size), float("nan"))
        whole_x = torch.cat([x, unknown], dim=1)[:, order]
        return whole_x, torch.sparse.mm(multipliers, y.T).T
