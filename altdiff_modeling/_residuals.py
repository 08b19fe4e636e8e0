"""Residual variables of the objective, substituted before the solve.

CVXPY writes ``cp.sum_squares(F @ x - y)`` with a residual variable r, one equality row
per entry, ``a r_i + F_i x = b_i`` (``r = F x - y``), and the quadratic term on r
alone, ``1/2 p r_i^2``. Where such an r has no other term in P, none in q, no output
reads it or its row's multiplier, and its row's coefficients are constants (its bound
``b_i`` may depend on parameters), the row gives ``r_i = (b_i - F_i x) / a`` and the
objective's term becomes a quadratic in x,

    P += (p / a^2) F_i' F_i,      q -= (p / a^2) b_i F_i',

with the variable and its row gone. That is done where it adds no more entries to P
than it takes out of the constraint rows: a dense F adds a dense ``F'F``, fewer entries
than F when it has more rows than columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ._canon import CanonicalForm, ConeProgram
from ._parametric import VariableSpec, to_torch_sparse
from ._triplets import Triplets, entries_of, renumbered

__all__ = ["Residuals"]


def _candidates(
    program: ConeProgram, hidden: np.ndarray, read_rows: np.ndarray, A: Triplets, P: Triplets
) -> tuple[np.ndarray, np.ndarray]:
    """``(variables, rows)``: each residual variable and its row."""
    n, n_eq, width = program.n, program.n_eq, program.q.shape[1]
    coupled = np.zeros(n, dtype=bool)
    coupled[P.row[P.row != P.col]] = True
    coupled[P.row[P.column != width - 1]] = True  # a parametric p
    q = sp.coo_array(program.q)
    coupled[q.row[(q.data != 0) & (q.row < n)]] = True
    matrix = A.where(A.col < n)
    pairs = np.unique(matrix.row * n + matrix.col)
    pair_row, pair_col = pairs // n, pairs % n
    rows_per_variable = np.bincount(pair_col, minlength=n)
    parametric_row = np.zeros(program.n_rows, dtype=bool)
    parametric_row[matrix.row[matrix.column != width - 1]] = True
    candidate = hidden & ~coupled & (rows_per_variable == 1)
    mine = candidate[pair_col]
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[pair_col[mine]] = pair_row[mine]
    candidate &= row_of >= 0
    safe = np.zeros(n, dtype=bool)
    safe[candidate] = (row_of[candidate] < n_eq) & ~parametric_row[row_of[candidate]]
    safe[candidate] &= ~read_rows[row_of[candidate]]
    # One residual per row.
    per_row = np.bincount(row_of[safe], minlength=program.n_rows)
    safe[safe] = per_row[row_of[safe]] == 1
    variables = np.flatnonzero(safe)
    return variables, row_of[variables]


@dataclass
class Residuals:
    """The residual variables substituted out of a layer's canonical problem.

    Attributes:
        eliminated: ``(k,)`` the residual variables.
        rows: ``(k,)`` their rows.
        free: ``(n - k,)`` the variables kept, in order.
        kept: ``(n_rows - k,)`` the rows kept, in order.
        q_from_bound: ``(n - k, n_rows)`` sparse: how the solved problem's q changes
            with the bounds of the whole one's rows (the rows substituted).
    """

    eliminated: np.ndarray
    rows: np.ndarray
    free: np.ndarray
    kept: np.ndarray
    q_from_bound: sp.csr_array
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def of(
        form: CanonicalForm, hidden: np.ndarray, read_rows: np.ndarray
    ) -> tuple[CanonicalForm, Residuals] | None:
        """The problem with its residual variables (among ``hidden`` ``(n,)``, whose
        rows are not among ``read_rows`` ``(n_rows,)``) substituted; None without any,
        or where the substitution would add more entries to P than it removes."""
        program = form.program
        n, n_rows, n_eq, width = program.n, program.n_rows, program.n_eq, program.q.shape[1]
        A, P = Triplets.of(program.A, n_rows), Triplets.of(program.P, n)
        variables, rows = _candidates(program, hidden, read_rows, A, P)
        if variables.size == 0:
            return None
        free = np.setdiff1d(np.arange(n), variables)
        kept = np.setdiff1d(np.arange(n_rows), rows)
        new_col = renumbered(free, n + 1)
        new_col[n] = free.size
        new_row = renumbered(kept, n_rows)
        k_of_row = renumbered(rows, n_rows)

        # Row i's coefficient a on its residual, its entries F_i on the other variables.
        in_rows = A.where((k_of_row[A.row] >= 0) & (A.col < n))
        is_residual = np.isin(in_rows.col, variables)
        a = np.zeros(rows.size)
        np.add.at(a, k_of_row[in_rows.row[is_residual]], in_rows.value[is_residual])
        if not bool(np.all(a != 0)):  # a coefficient that cancels: no residual row
            return None
        F = in_rows.where(~is_residual)
        # p: the residual's diagonal entry of P (its only one).
        p = np.zeros(rows.size)
        diagonal = P.where(np.isin(P.row, variables))
        np.add.at(p, renumbered(variables, n)[diagonal.row], diagonal.value)
        weight = p / a**2  # (k,)

        # P += weight_i F_i' F_i: pairs of row i's entries.
        k_F = k_of_row[F.row]
        left, right = entries_of(k_F, rows.size, k_F)  # each entry with every one of its row
        added_row, added_col = new_col[F.col[left]], new_col[F.col[right]]
        added_value = weight[k_F[left]] * F.value[left] * F.value[right]
        kept_P = P.renumbered(new_col, new_col)  # the residuals' own entries go
        existing = np.unique(kept_P.row + free.size * kept_P.col)
        new_entries = np.setdiff1d(np.unique(added_row + free.size * added_col), existing)
        if new_entries.size > in_rows.row.size:
            return None
        added = Triplets(added_row, added_col, np.full(added_value.size, width - 1), added_value)
        reduced_P = Triplets.concatenated([kept_P, added]).tensor(free.size, free.size, width)

        # q -= weight_i b_i F_i', with b = -bg: q += weight_i bg_i F_i'.
        q_from_bound = sp.csr_array(
            (-weight[k_F] * F.value, (new_col[F.col], F.row)), shape=(free.size, n_rows)
        )
        bound = A.where((A.col == n) & (k_of_row[A.row] >= 0))
        bg = sp.csr_array((bound.value, (bound.row, bound.column)), shape=(n_rows, width))
        q = sp.csr_array(program.q)
        reduced_q = sp.vstack(
            [q[free] - q_from_bound @ bg, q[[n]]], format="csr"
        )  # q_from_bound maps b = -bg
        m = kept.size
        reduced_A = A.renumbered(new_row, new_col).tensor(m, free.size + 1, width)
        reduced = ConeProgram(
            P=reduced_P,
            q=reduced_q,
            A=reduced_A,
            n=int(free.size),
            n_rows=int(m),
            n_eq=int(n_eq - rows.size),
            soc=program.soc,
        )
        reduced_form = CanonicalForm(
            program=reduced, S=form.S, parameters=form.parameters, variables=[]
        )
        return reduced_form, Residuals(variables, rows, free, kept, q_from_bound)

    def carried(
        self, q: torch.Tensor | None, bound: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Terms ``(Bt, n)`` of q and ``(Bt, n_rows)`` of the bounds of the problem
        before the substitution as the solved problem's: a substituted row's bound
        term moves into q."""
        if q is not None:
            q = q[:, self._index("free", q.device)]
        if bound is None:
            return q, None
        key = (bound.dtype, bound.device)
        if key not in self._torch_cache:
            self._torch_cache[key] = to_torch_sparse(self.q_from_bound, bound.dtype, bound.device)
        moved = torch.sparse.mm(self._torch_cache[key], bound.T).T
        return (moved if q is None else q + moved), bound[:, self._index("kept", bound.device)]

    def _index(self, name: str, device: torch.device) -> torch.Tensor:
        """``free`` or ``kept`` as a tensor on ``device``, made once (per call it is
        an index of the call's terms)."""
        key = (name, device)
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.as_tensor(getattr(self, name), device=device)
        return self._torch_cache[key]

    def solved_spec(self, spec: VariableSpec) -> VariableSpec | None:
        """``spec`` over the reduced problem's solution and multipliers (no output reads
        a residual or its row: `of` takes only those)."""
        if spec.is_dual:
            new = renumbered(self.kept, self.kept.size + self.rows.size)
        else:
            new = renumbered(self.free, self.free.size + self.eliminated.size)
        return spec.renumbered(new)
