"""Sparse QP data as affine functions of the user's parameters (the sparse backend).

Each block keeps only the entries CVXPY's affine maps can make nonzero: P on its
(symmetric, both triangles) pattern, ``C = [A; G]`` on its pattern, q and ``[b; h]`` as
dense vectors. Every block is ``values = M @ [theta; 1]`` with a sparse ``M`` built from
the nonzeros of CVXPY's maps (read in coordinate form: CVXPY indexes P by ``i + n j``,
so a compressed-row copy of its map would need ``n^2`` row pointers), so construction
and evaluation cost grows with the number of nonzeros, never with ``n^2`` or
``n * K``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ._batched_sparse import BatchedSparse, SparsePattern
from ._canon import CanonicalForm
from ._parametric import ParameterSpec, VariableSpec, parameter_entries, parameter_positions
from ._qp import QPData

__all__ = [
    "SPARSE_MAX_DENSITY",
    "SPARSE_MIN_SIZE",
    "SparseAffine",
    "SparseParametricQP",
    "choose_backend",
    "compress_entries",
    "data_density",
    "sparse_pattern",
    "sparse_qp",
]

#: ``backend="auto"`` picks the sparse backend when ``n + m`` is at least this ...
SPARSE_MIN_SIZE = 1000
#: ... and at most this fraction of the dense entries of P and C can be nonzero.
SPARSE_MAX_DENSITY = 0.05


@dataclass(frozen=True)
class SparseAffine:
    """``values = matrix @ [theta; 1]`` for one data block.

    Attributes:
        matrix: ``(E, K + 1)`` CSR map; the last column is the constant part.
    """

    matrix: sp.csr_array

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    def parameter_columns(self) -> np.ndarray:
        """Indices of theta on which the block depends."""
        cols = _sorted_distinct(self.matrix.indices[self.matrix.data != 0])
        return cols[cols < self.matrix.shape[1] - 1]

    def evaluate(self, theta: np.ndarray) -> np.ndarray:
        """``(B, K) -> (B, E)`` block values."""
        K = self.matrix.shape[1] - 1
        linear = self.matrix[:, :K] @ theta.T if K else np.zeros((self.size, theta.shape[0]))
        constant = self.matrix[:, [K]].toarray()
        return np.ascontiguousarray((linear + constant).T)

    def vjp(self, grad: np.ndarray) -> np.ndarray:
        """``(B, E) -> (B, K)``: gradient w.r.t. theta of ``sum(grad * values)``."""
        K = self.matrix.shape[1] - 1
        return np.asarray((self.matrix[:, :K].T @ grad.T).T)


@dataclass
class SparseParametricQP:
    """The canonical QP of a layer with sparse blocks, affine in theta.

    Attributes:
        n: Number of variables.  n_eq: equality rows.  n_ineq: inequality rows.
        P_rows, P_cols: ``(E_P,)`` positions of P's pattern (both triangles).
        P: Map to P's values on its pattern.
        q: Map to q ``(n,)``.
        C_rows, C_cols: ``(E_C,)`` positions of ``C = [A; G]``'s pattern.
        C: Map to C's values on its pattern.
        bound: Map to ``[b; h]`` ``(n_eq + n_ineq,)``.
        parameters: The user's parameters, in order.
        variables: The user's outputs, in order.
        cone_sizes: The second-order cones of the last inequality rows (`QPData`).
    """

    n: int
    n_eq: int
    n_ineq: int
    P_rows: np.ndarray
    P_cols: np.ndarray
    P: SparseAffine
    q: SparseAffine
    C_rows: np.ndarray
    C_cols: np.ndarray
    C: SparseAffine
    bound: SparseAffine
    parameters: list[ParameterSpec]
    variables: list[VariableSpec]
    cone_sizes: tuple[int, ...] = ()
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @property
    def m(self) -> int:
        return self.n_eq + self.n_ineq

    @property
    def theta_size(self) -> int:
        return sum(spec.size for spec in self.parameters)

    def maps(self) -> dict[str, SparseAffine]:
        return {"P": self.P, "q": self.q, "C": self.C, "bound": self.bound}

    def parametric_mask(self) -> np.ndarray:
        """``(n + m,)`` bool: the entries of q, then the rows of C or of the bound with an
        entry, that depend on a parameter (the others' gradients reach none)."""
        live = parameter_entries(self.bound.matrix)
        live[self.C_rows[parameter_entries(self.C.matrix)]] = True
        return np.concatenate([parameter_entries(self.q.matrix), live])

    def dependencies(self) -> dict[str, set[int]]:
        """Which user parameters (by position) each block depends on."""
        return {
            name: parameter_positions(self.parameters, block.parameter_columns())
            for name, block in self.maps().items()
        }

    def _torch_maps(self, dtype: torch.dtype, device: torch.device) -> dict[str, object]:
        """Per block: its constant values ``(1, E)`` (a block no parameter reaches: the
        same tensor on every call, which the caches of constant data key on) or its map
        as a torch sparse ``(E, K + 1)`` matrix; and the patterns."""
        key = (dtype, device)
        if key not in self._torch_cache:
            maps: dict[str, object] = {}
            for name, block in self.maps().items():
                if block.parameter_columns().size == 0:
                    constant = block.matrix[:, [-1]].toarray().ravel()
                    maps[name] = torch.as_tensor(constant, dtype=dtype, device=device)[None]
                else:
                    coo = block.matrix.tocoo()
                    indices = np.vstack([coo.row, coo.col]).astype(np.int64)
                    maps[name] = torch.sparse_coo_tensor(
                        torch.as_tensor(indices, device=device),
                        torch.as_tensor(coo.data, dtype=dtype, device=device),
                        coo.shape,
                        check_invariants=False,
                    ).coalesce()

            def pattern(rows: np.ndarray, cols: np.ndarray, size: tuple[int, int]):
                return SparsePattern(
                    torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device), size
                )

            maps["P_pattern"] = pattern(self.P_rows, self.P_cols, (self.n, self.n))
            maps["C_pattern"] = pattern(self.C_rows, self.C_cols, (self.m, self.n))
            self._torch_cache[key] = maps
        return self._torch_cache[key]

    def data(
        self,
        theta: torch.Tensor,
        shared_theta: torch.Tensor | None = None,
        shared_blocks: frozenset[str] = frozenset(),
    ) -> QPData:
        """The QP data at theta, with `BatchedSparse` matrices (differentiable in theta).

        Args:
            theta: ``(1|B, K)``.
            shared_theta: ``(1, K)``, used for the blocks named in ``shared_blocks``
                (those that depend on unbatched parameters only), which then stay shared.
            shared_blocks: Names of blocks (``"P"``, ``"q"``, ``"C"``, ``"bound"``) to
                evaluate at ``shared_theta``.
        """
        maps = self._torch_maps(theta.dtype, theta.device)
        values = {}
        for name in ("P", "q", "C", "bound"):
            block = maps[name]
            if not block.is_sparse:
                values[name] = block
                continue
            source = shared_theta if name in shared_blocks and shared_theta is not None else theta
            augmented = torch.cat([source, source.new_ones(source.shape[0], 1)], dim=1)
            values[name] = torch.sparse.mm(block, augmented.T).T
        P = BatchedSparse(values["P"], maps["P_pattern"])
        C = BatchedSparse(values["C"], maps["C_pattern"])
        batch = theta.shape[0]  # every block has 1 row or theta's (0 for an empty batch)
        return QPData(P, values["q"], C, values["bound"], self.n_eq, batch, self.cone_sizes)


def compress_entries(
    keys: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_cols: int
) -> tuple[np.ndarray, sp.csr_array]:
    """Unique entry keys, and the ``(E, n_cols)`` map whose row e holds key e's terms."""
    unique, rows = np.unique(keys, return_inverse=True)
    matrix = sp.csr_array((vals, (rows, cols)), shape=(unique.size, n_cols))
    matrix.sum_duplicates()
    return unique, matrix


def _vector_map(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, size: int, n_cols: int
) -> sp.csr_array:
    matrix = sp.csr_array((vals, (rows, cols)), shape=(size, n_cols))
    matrix.sum_duplicates()
    return matrix


def _coo(tensor: sp.sparray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if tensor is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    coo = sp.coo_array(tensor)
    keep = coo.data != 0
    return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep]


def sparse_qp(form: CanonicalForm) -> SparseParametricQP:
    """Sparse blocks of a reduced problem, over the user's parameters.

    Cost: linear (up to sorting) in the nonzeros of CVXPY's maps and of ``S``.
    """
    pp, S = form.program, form.S
    n, n_rows, n_eq = form.n, form.n_rows, form.n_eq
    k_canon = S.shape[0]

    # P: CVXPY indexes entry (i, j) of the full symmetric matrix by i + n * j.
    p_row, p_col, p_val = _coo(pp.P)
    p_keys, p_map = compress_entries(p_row, p_col, p_val, k_canon)
    p_map = sp.csr_array(p_map @ S)

    q_row, q_col, q_val = _coo(pp.q)
    keep = q_row < n  # the last row is the objective's constant
    q_map = sp.csr_array(_vector_map(q_row[keep], q_col[keep], q_val[keep], n, k_canon) @ S)

    # AF and bg: entry (row, col) is indexed row + n_rows * col, col == n holding bg.
    a_row, a_col, a_val = _coo(pp.A)
    row, col = a_row % n_rows, a_row // n_rows
    is_matrix = col < n
    # Rows of [A; G]: A = AF[:n_eq], G = -AF[n_eq:]; bound [b; h] = [-bg_eq; bg_ineq].
    sign = np.where(row < n_eq, 1.0, -1.0)
    c_keys, c_map = compress_entries(
        row[is_matrix] * n + col[is_matrix],
        a_col[is_matrix],
        sign[is_matrix] * a_val[is_matrix],
        k_canon,
    )
    c_map = sp.csr_array(c_map @ S)
    v = ~is_matrix
    bound_map = _vector_map(row[v], a_col[v], -sign[v] * a_val[v], n_rows, k_canon)
    bound_map = sp.csr_array(bound_map @ S)

    return SparseParametricQP(
        n=n,
        n_eq=n_eq,
        n_ineq=n_rows - n_eq,
        P_rows=p_keys % n,
        P_cols=p_keys // n,
        P=SparseAffine(p_map),
        q=SparseAffine(q_map),
        C_rows=c_keys // n,
        C_cols=c_keys % n,
        C=SparseAffine(c_map),
        bound=SparseAffine(bound_map),
        parameters=form.parameters,
        variables=form.variables,
        cone_sizes=form.cone_sizes,
    )


def data_density(form: CanonicalForm) -> tuple[int, int, int]:
    """``(n, m, nnz)``: sizes and the number of possibly nonzero entries of P and C.

    Counts the distinct entries of CVXPY's maps without building any block.
    """
    pp = form.program
    n, n_rows = form.n, form.n_rows
    p_row, _, _ = _coo(pp.P)
    a_row, _, _ = _coo(pp.A)
    a_matrix = a_row[a_row // n_rows < n]
    nnz = _distinct(p_row, n * n) + _distinct(a_matrix, n * n_rows)
    return n, n_rows, nnz


def _distinct(indices: np.ndarray, space: int) -> int:
    """Number of distinct values in ``indices``, all in ``[0, space)``: a mask (linear
    time) where the space is small enough, a sort otherwise (large sparse problems)."""
    if space <= 50_000_000:
        mask = np.zeros(space, dtype=bool)
        mask[indices] = True
        return int(np.count_nonzero(mask))
    return int(_sorted_distinct(indices).size)


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by a sort: numpy 2's default hash-based unique takes about a
    second on a million int64 keys spread over billions of values, a sort 20 ms."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def sparse_pattern(form: CanonicalForm) -> bool:
    """Whether the possibly nonzero entries of P and ``C = [A; G]`` are at most
    ``SPARSE_MAX_DENSITY`` of their ``n (n + m)`` entries."""
    n, m, nnz = data_density(form)
    return nnz <= SPARSE_MAX_DENSITY * n * (n + m)


def choose_backend(form: CanonicalForm) -> str:
    """``"sparse"`` for large sparse problems, ``"dense"`` otherwise (``backend="auto"``).

    Sparse when ``n + m >= SPARSE_MIN_SIZE`` and the pattern is sparse (`sparse_pattern`).
    """
    if form.n + form.n_rows >= SPARSE_MIN_SIZE and sparse_pattern(form):
        return "sparse"
    return "dense"
