"""Variables fixed by an equality row of their own, eliminated before the solve.

CVXPY's canonical forms are full of variables that one equality row fixes: a DPP layer
that multiplies a parameter by a matrix parameter writes the matrix as a variable,
``W_var == W`` (each entry a row ``1 * w_ij = W_ij``), and ``x[0] == x_init`` fixes an
MPC's first state. A row ``a x_j = b_r`` with a single entry, whose coefficient ``a`` is
a constant, fixes ``x_j = b_r / a``, an affine function of the parameters. The layer
solves the problem without those variables and rows; their terms move into the other
rows' data,

    q_i += P_ij x_j,      bound_r -= C_rj x_j,

and each eliminated row's multiplier comes back from its variable's stationarity row,

    y_r = -((P x)_j + q_j + C[kept, j]' y_kept) / a.

Where ``P_ij`` or ``C_rj`` is a constant, its term is affine in the parameters and joins
the reduced problem's affine maps once, at construction. Where it depends on a
parameter (``W_var @ x``: ``C_rj = -x_j``), the term is a product of parameters, formed
per call in torch, so that autograd differentiates it. The solution and multipliers are
those of the whole problem, and so are the outputs, statuses and gradients; what is
gone is the rows and columns that the solver would otherwise factor, per instance where
the eliminated variables' coefficients depend on batched parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ._canon import CanonicalForm, ConeProgram
from ._parametric import VariableSpec, parameter_entries, to_torch_sparse
from ._sparse_data import compress_entries
from ._triplets import Triplets, renumbered

__all__ = ["FixedValues", "FixedVariables"]


@dataclass(frozen=True)
class _Entries:
    """Entries ``(row[e], col[e])`` of a matrix, each one row of the eliminated
    variables' affine maps (`FixedVariables.maps`)."""

    row: np.ndarray
    col: np.ndarray

    @property
    def size(self) -> int:
        return int(self.row.size)


@dataclass
class FixedValues:
    """One call's values of the eliminated variables' data, ``(Bt, .)`` each, Bt the
    batch or 1 (shared by the batch)."""

    x: torch.Tensor  # (Bt, f): the fixed variables
    P_terms: torch.Tensor  # (Bt, E): the parametric entries P[free, fixed]
    P_fixed: torch.Tensor  # (Bt, E): the entries P[fixed, :]
    q: torch.Tensor  # (Bt, f): q[fixed]
    C: torch.Tensor  # (Bt, E): the entries C[kept, fixed]


def _fixing_rows(A: Triplets, n: int, n_eq: int, width: int) -> tuple[np.ndarray, ...]:
    """``(variables, rows, coefficients)``: each variable that exactly one equality row
    with a single, constant coefficient fixes, with that row and coefficient."""
    entries = A.where((A.row < n_eq) & (A.col < n))
    pairs, pair_of = np.unique(entries.row * n + entries.col, return_inverse=True)
    pair_row = pairs // n
    entries_per_row = np.bincount(pair_row, minlength=n_eq)
    parametric = np.zeros(pairs.size, dtype=bool)
    np.logical_or.at(parametric, pair_of, entries.column != width - 1)
    coefficient = np.bincount(pair_of, weights=entries.value, minlength=pairs.size)
    single = (entries_per_row[pair_row] == 1) & ~parametric & (coefficient != 0)
    rows, variables, coefficients = pair_row[single], pairs[single] % n, coefficient[single]
    once = np.bincount(variables, minlength=n)[variables] == 1
    order = np.argsort(variables[once], kind="stable")
    return variables[once][order], rows[once][order], coefficients[once][order]


def _constant_part(
    keys: np.ndarray, maps: sp.csr_array, shape: tuple[int, int]
) -> tuple[sp.csr_array, np.ndarray]:
    """The entries ``keys`` (``row * shape[1] + col``) whose maps are constant, as a
    sparse ``shape`` matrix; and the mask of the parametric ones."""
    parametric = parameter_entries(maps)
    constant = ~parametric
    values = maps[:, [-1]].toarray().ravel()[constant]
    matrix = sp.csr_array(
        (values, (keys[constant] // shape[1], keys[constant] % shape[1])), shape=shape
    )
    return matrix, parametric


@dataclass
class FixedVariables:
    """The variables of a layer's canonical problem that an equality row of their own
    fixes, and how the problem without them maps to and from the whole one.

    Attributes:
        fixed: ``(f,)`` the fixed variables.
        rows: ``(f,)`` the equality rows fixing them.
        coefficient: ``(f,)`` the rows' coefficients.
        free: ``(n - f,)`` the variables kept, in order.
        kept: ``(n_rows - f,)`` the rows kept, in order.
        maps: ``(M, K + 1)`` affine maps of ``[theta; 1]``: the f fixed values, then the
            entries of `P_terms`, `P_fixed`, the f entries of q, and `C`.
        P_terms: The parametric entries of P in rows ``free`` (renumbered) and columns
            ``fixed`` (by position in ``fixed``): the terms formed per call.
        P_fixed: Entries of P in rows ``fixed`` (by position) and any column.
        C: Entries of ``C = [A; G]`` in rows ``kept`` (renumbered) and columns
            ``fixed`` (by position), with the QP's signs.
        C_terms: ``(E,)`` the parametric ones among them (indices into `C`).
    """

    fixed: np.ndarray
    rows: np.ndarray
    coefficient: np.ndarray
    free: np.ndarray
    kept: np.ndarray
    maps: sp.csr_array
    P_terms: _Entries
    P_fixed: _Entries
    C: _Entries
    C_terms: np.ndarray
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def of(form: CanonicalForm) -> tuple[CanonicalForm, FixedVariables] | None:
        """The problem without its fixed variables and their rows, and the
        elimination; None when no variable is fixed (or every one is)."""
        program = form.program
        n, n_rows, n_eq, width = program.n, program.n_rows, program.n_eq, program.q.shape[1]
        A = Triplets.of(program.A, n_rows)
        fixed, rows, coefficient = _fixing_rows(A, n, n_eq, width)
        if fixed.size == 0 or fixed.size == n:
            return None
        f = fixed.size
        free = np.setdiff1d(np.arange(n), fixed)
        kept = np.setdiff1d(np.arange(n_rows), rows)
        n_free, m_kept = free.size, kept.size
        new_col = renumbered(free, n + 1)
        new_col[n] = n_free  # bg's column
        new_row = renumbered(kept, n_rows)
        position = renumbered(fixed, n + 1)  # bg's column n: not a fixed variable

        # x_j = b_r / a, with b = -bg on equality rows.
        bound = A.where((A.col == n) & np.isin(A.row, rows))
        k = renumbered(rows, n_rows)[bound.row]
        x_map = sp.csr_array((-bound.value / coefficient[k], (k, bound.column)), shape=(f, width))

        # [AF, bg] without the fixed rows and columns, plus AF[kept, fixed] x_fixed's
        # constant part in bg: AF x + bg with x_j substituted.
        in_C = A.where((position[A.col] >= 0) & (new_row[A.row] >= 0))
        AF_keys, AF_maps = compress_entries(
            new_row[in_C.row] * f + position[in_C.col], in_C.column, in_C.value, width
        )
        AF_constant, C_parametric = _constant_part(AF_keys, AF_maps, (m_kept, f))
        folded = sp.coo_array(AF_constant @ x_map)
        bound_column = np.full(folded.row.size, n_free)  # the folded terms are bg's
        reduced_A = Triplets.concatenated(
            [
                A.renumbered(new_row, new_col),
                Triplets(folded.row, bound_column, folded.col, folded.data),
            ]
        ).tensor(m_kept, n_free + 1, width)
        sign = np.where(AF_keys // f < n_eq - rows.size, 1.0, -1.0)  # C = [AF_eq; -AF_in]
        C_maps = sp.csr_array(sp.diags_array(sign) @ AF_maps)

        P = Triplets.of(program.P, n)
        reduced_P = P.renumbered(new_col, new_col).tensor(n_free, n_free, width)
        to_q = P.where((new_col[P.row] >= 0) & (position[P.col] >= 0))
        Pq_keys, Pq_maps = compress_entries(
            new_col[to_q.row] * f + position[to_q.col], to_q.column, to_q.value, width
        )
        P_constant, P_parametric = _constant_part(Pq_keys, Pq_maps, (n_free, f))
        from_fixed = P.where(position[P.row] >= 0)
        Pr_keys, Pr_maps = compress_entries(
            position[from_fixed.row] * n + from_fixed.col,
            from_fixed.column,
            from_fixed.value,
            width,
        )

        q = sp.csr_array(program.q)
        reduced_q = sp.vstack([q[free] + P_constant @ x_map, q[[n]]], format="csr")
        reduced = ConeProgram(
            P=reduced_P,
            q=reduced_q,
            A=reduced_A,
            n=int(n_free),
            n_rows=int(m_kept),
            n_eq=int(n_eq - rows.size),
            soc=program.soc,
        )
        P_terms = Pq_keys[P_parametric]
        stacked = sp.vstack([x_map, Pq_maps[P_parametric], Pr_maps, q[fixed], C_maps], format="csr")
        elimination = FixedVariables(
            fixed=fixed,
            rows=rows,
            coefficient=coefficient,
            free=free,
            kept=kept,
            maps=sp.csr_array(stacked @ form.S),
            P_terms=_Entries(P_terms // f, P_terms % f),
            P_fixed=_Entries(Pr_keys // n, Pr_keys % n),
            C=_Entries(AF_keys // f, AF_keys % f),
            C_terms=np.flatnonzero(C_parametric),
        )
        reduced_form = CanonicalForm(
            program=reduced, S=form.S, parameters=form.parameters, variables=[]
        )
        return reduced_form, elimination

    @property
    def per_call(self) -> bool:
        """Whether a call forms terms (products of parameters) in the reduced data."""
        return self.P_terms.size > 0 or self.C_terms.size > 0

    def parameter_columns(self) -> np.ndarray:
        """Indices of theta on which the elimination's data depends."""
        used = np.bincount(self.maps.indices, minlength=self.maps.shape[1])[:-1]
        return np.flatnonzero(used)

    def touched(self) -> np.ndarray:
        """``(n - f + n_rows - f,)`` bool: the reduced q's entries, then the kept rows,
        that a call's terms change (a parameter's gradient may reach them)."""
        q = np.zeros(self.free.size, dtype=bool)
        q[self.P_terms.row] = True
        bound = np.zeros(self.kept.size, dtype=bool)
        bound[self.C.row[self.C_terms]] = True
        return np.concatenate([q, bound])

    def solved_spec(self, spec: VariableSpec) -> VariableSpec | None:
        """``spec`` over the reduced problem's solution and multipliers; None where it
        reads a fixed variable or the multiplier of a fixing row."""
        if spec.is_dual:
            new = renumbered(self.kept, self.kept.size + self.rows.size)
        else:
            new = renumbered(self.free, self.free.size + self.fixed.size)
        return spec.renumbered(new)

    def _torch(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        key = (dtype, device)
        if key not in self._torch_cache:

            def index(values: np.ndarray) -> torch.Tensor:
                return torch.as_tensor(values.astype(np.int64), device=device)

            self._torch_cache[key] = {
                "maps": to_torch_sparse(self.maps, dtype, device),
                "coefficient": torch.as_tensor(self.coefficient, dtype=dtype, device=device),
                "order": index(np.argsort(np.concatenate([self.free, self.fixed]))),
                "row_order": index(np.argsort(np.concatenate([self.kept, self.rows]))),
                "C_terms": index(self.C_terms),
                "C_terms_row": index(self.C.row[self.C_terms]),
                "C_terms_col": index(self.C.col[self.C_terms]),
                **{
                    f"{name}_{part}": index(getattr(getattr(self, name), part))
                    for name in ("P_terms", "P_fixed", "C")
                    for part in ("row", "col")
                },
            }
        return self._torch_cache[key]

    def values(self, theta: torch.Tensor) -> FixedValues:
        """The elimination's data at ``theta`` ``(Bt, K)``."""
        t = self._torch(theta.dtype, theta.device)
        augmented = torch.cat([theta, theta.new_ones(theta.shape[0], 1)], dim=1)
        values = torch.sparse.mm(t["maps"], augmented.T).T  # (Bt, M)
        f = self.fixed.size
        sizes = [f, self.P_terms.size, self.P_fixed.size, f, self.C.size]
        return FixedValues(*values.split(sizes, dim=1))

    @staticmethod
    def _scatter(
        target: torch.Tensor, index: torch.Tensor, terms: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """``target`` ``(1|batch, .)`` plus ``terms`` ``(1|batch, E)`` summed into its
        columns ``index``, ``(batch, .)``."""
        out = target.expand(batch, -1)
        if index.numel() == 0:
            return out
        return out.index_add(1, index, terms.expand(batch, -1))

    def terms(self, values: FixedValues) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A call's terms (`per_call`) of the reduced q ``(Bt, n - f)`` and bounds
        ``(Bt, n_rows - f)``, None where it has none."""
        t = self._torch(values.x.dtype, values.x.device)
        batch = values.x.shape[0]
        q = bound = None
        if self.P_terms.size:
            products = values.P_terms * values.x[:, t["P_terms_col"]]
            zeros = values.x.new_zeros(1, self.free.size)
            q = self._scatter(zeros, t["P_terms_row"], products, batch)
        if self.C_terms.size:
            products = values.C[:, t["C_terms"]] * values.x[:, t["C_terms_col"]]
            zeros = values.x.new_zeros(1, self.kept.size)
            bound = self._scatter(zeros, t["C_terms_row"], -products, batch)
        return q, bound

    def recover(
        self, x: torch.Tensor, y: torch.Tensor, values: FixedValues
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole problem's solution ``(B, n)`` and multipliers ``(B, n_rows)`` from
        the reduced problem's ``x`` ``(B, n - f)`` and ``y`` ``(B, n_rows - f)``."""
        t = self._torch(x.dtype, x.device)
        batch = x.shape[0]
        whole_x = torch.cat([x, values.x.expand(batch, -1)], dim=1)[:, t["order"]]
        residual = values.q.expand(batch, -1)
        if self.P_fixed.size:
            terms = values.P_fixed * whole_x[:, t["P_fixed_col"]]
            residual = self._scatter(residual, t["P_fixed_row"], terms, batch)
        if self.C.size:
            terms = values.C * y[:, t["C_row"]]
            residual = self._scatter(residual, t["C_col"], terms, batch)
        multipliers = -residual / t["coefficient"]
        whole_y = torch.cat([y, multipliers], dim=1)[:, t["row_order"]]
        # An instance the solve failed on (NaN, by the failure policy) is NaN throughout.
        failed = x.isnan().any(dim=1, keepdim=True)
        return whole_x.masked_fill(failed, math.nan), whole_y.masked_fill(failed, math.nan)
