"""ParametricQP: QP data as affine functions of the user's parameter vector, in torch.

The parameter vector theta concatenates the user's parameters, each flattened
column-major (CVXPY's order). Each data block stores only its entries that are not
identically zero, as ``values = M @ [theta; 1]`` with a sparse ``M``, and scatters them
into a dense block. Blocks that depend on no parameter are computed once per dtype and
device; blocks that depend only on unbatched parameters stay shared by the batch, so
that a batch whose matrices are common factors H once. A small problem's blocks are
each one dense product of theta instead (`ParametricQP._dense_maps`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from ._altdiff import DataTangents
from ._qp import QPData, stack_rows

__all__ = [
    "BLOCK_NAMES",
    "AffineBlock",
    "ParameterSpec",
    "ParametricQP",
    "VariableSpec",
    "parameter_positions",
]

BLOCK_NAMES = ("P", "q", "A", "b", "G", "h")
# The blocks of `QPData` and the blocks stacked in each.
_STACKS = {"P": ("P",), "q": ("q",), "C": ("A", "G"), "bound": ("b", "h")}


@dataclass(frozen=True)
class ParameterSpec:
    """A user parameter: its name, shape, and offset in theta.

    ``name`` is the name the user gave it, or ``parameters[i]`` (its place in the
    layer's list) where CVXPY made one up (``named`` is then False).
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    attributes: frozenset[str] = frozenset()  # declared sign / PSD / NSD attributes
    named: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        """The parameter in a message: ``parameter 'h'``, or ``parameters[1]``."""
        return f"parameter '{self.name}'" if self.named else self.name


@dataclass(frozen=True)
class VariableSpec:
    """An output of the layer: a primal variable, or the multipliers of a constraint.

    Entry k (column-major) of the output is ``sign * source[index[k]]`` (zero where the
    index is -1), with ``source`` the primal solution x or, for a dual variable, the
    stacked multipliers ``y = [lambda; nu]``.
    """

    name: str
    shape: tuple[int, ...]
    index: np.ndarray
    is_dual: bool = False
    sign: float = 1.0

    def renumbered(self, new: np.ndarray) -> VariableSpec | None:
        """The output over a reduced problem whose index of each of this one's source
        entries is ``new`` (-1 for an entry the reduced problem does not have); None
        where the output reads such an entry."""
        reads = self.index >= 0
        if (new[self.index[reads]] < 0).any():
            return None
        index = np.where(reads, new[np.maximum(self.index, 0)], -1)
        return dataclasses.replace(self, index=index)

    @functools.cached_property
    def span(self) -> slice | None:
        """The output's entries as a slice of ``source`` where ``index`` is a range (a
        variable's entries usually are), whose gradient is one copy where a gather's
        is a scatter into zeros; None otherwise."""
        index = self.index
        if (
            index.size == 0
            or index[0] < 0
            or not np.array_equal(index, np.arange(index[0], index[0] + index.size))
        ):
            return None
        return slice(int(index[0]), int(index[0]) + index.size)


def parameter_entries(matrix: sp.csr_array) -> np.ndarray:
    """``(E,)`` bool: the entries of an affine map ``(E, K + 1)`` (from ``[theta; 1]``)
    that depend on theta."""
    linear = sp.csr_array(matrix[:, :-1])
    linear.eliminate_zeros()
    return np.diff(linear.indptr) > 0


def parameter_positions(parameters: list[ParameterSpec], columns: np.ndarray) -> set[int]:
    """The positions of the parameters that own the entries ``columns`` of theta."""
    owner = np.zeros(sum(spec.size for spec in parameters), dtype=np.int64)
    for position, spec in enumerate(parameters):
        owner[spec.offset : spec.offset + spec.size] = position
    return set(owner[columns].tolist())


@dataclass(frozen=True)
class AffineBlock:
    """One data block: its nonzero entries ``block.flat[index] = matrix @ [theta; 1]``.

    Attributes:
        shape: The block's dense shape, e.g. ``(n_ineq, n)`` for G.
        index: ``(E,)`` row-major flat positions of the entries that can be nonzero.
        matrix: ``(E, K + 1)`` sparse map from ``[theta; 1]`` to those entries.
    """

    shape: tuple[int, ...]
    index: np.ndarray
    matrix: sp.csr_array

    def parameter_columns(self) -> np.ndarray:
        """Indices of theta on which the block depends."""
        # A count per column: linear in the entries (np.unique hashes or sorts them all).
        used = np.bincount(self.matrix.indices, minlength=self.matrix.shape[1])[:-1]
        return np.flatnonzero(used)


@dataclass
class _TorchBlock:
    """A block on a device: its constant value ``(1, *shape)`` when it depends on no
    parameter (the affine map is then not kept: for P at n = 5000 it would hold three
    copies of n^2 entries), otherwise the entries' ``index`` and either the ``(E, K +
    1)`` sparse ``matrix`` or, when every entry combines a few parameter entries (the
    common case), that ``selection``."""

    shape: tuple[int, ...]
    index: torch.Tensor | None
    matrix: torch.Tensor | None
    constant: torch.Tensor | None
    selection: _Selection | None = None


# Most parameter entries an entry may combine for the gather path (a symmetric
# parameter's entry averages two); beyond, the sparse product is cheaper.
_MAX_TERMS = 4


@dataclass(frozen=True)
class _Selection:
    """Entry ``e`` of a block is ``sum_j theta_aug[column[j, e]] * coefficient[j, e]``
    (``(k, E)`` each, k at most `_MAX_TERMS`; the constant is column K of ``theta_aug``):
    gathers and products, whose gradient is scatter-adds, instead of a sparse product
    and its transpose. The entries are in the block's row-major order, so a block whose
    every entry is listed needs no scatter either (``complete``)."""

    column: torch.Tensor
    coefficient: torch.Tensor
    complete: bool

    @staticmethod
    def of(
        matrix: sp.csr_array,
        index: np.ndarray,
        size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> tuple[_Selection, np.ndarray] | None:
        """The selection of the ``(E, K + 1)`` affine map of the entries ``index`` of a
        block of ``size`` entries, and the entries' order in it; None when an entry
        combines more than `_MAX_TERMS` parameter entries."""
        matrix = sp.csr_array(matrix, copy=True)  # the block's own map stays as it is
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        per_row = np.diff(matrix.indptr)
        terms = int(per_row.max(initial=0))
        if per_row.size == 0 or terms > _MAX_TERMS:
            return None
        order = np.argsort(index, kind="stable")
        matrix, per_row = matrix[order], per_row[order]
        rows = np.repeat(np.arange(per_row.size), per_row)
        slot = np.arange(rows.size) - np.repeat(matrix.indptr[:-1], per_row)
        column = np.full((terms, per_row.size), matrix.shape[1] - 1, dtype=np.int64)
        coefficient = np.zeros((terms, per_row.size))
        column[slot, rows], coefficient[slot, rows] = matrix.indices, matrix.data
        selection = _Selection(
            torch.as_tensor(column, device=device),
            torch.as_tensor(coefficient, dtype=dtype, device=device),
            complete=bool(np.array_equal(index[order], np.arange(size))),
        )
        return selection, order

    def combine(self, gathered: torch.Tensor) -> torch.Tensor:
        """``theta_aug[:, column.ravel()]`` ``(Bt, k * E)`` to the entries' values
        ``(Bt, E)``."""
        E = self.coefficient.shape[1]
        values = gathered[:, :E] * self.coefficient[0]
        for j in range(1, self.coefficient.shape[0]):
            values = values + gathered[:, j * E : (j + 1) * E] * self.coefficient[j]
        return values


class _DenseMap(NamedTuple):
    """A `QPData` block as ``addmm(constant, theta, linear).reshape(-1, *shape)``."""

    constant: torch.Tensor  # (size,)
    linear: torch.Tensor  # (K, size)
    shape: tuple[int, ...]


@dataclass
class ParametricQP:
    """The canonical QP of a layer, affine in the user's parameters.

    Attributes:
        blocks: ``{"P", "q", "A", "b", "G", "h"} -> AffineBlock``.
        parameters: The user's parameters, in order.
        variables: The user's variables, in order.
        cone_sizes: The second-order cones of the last rows of G (`QPData`).
    """

    blocks: dict[str, AffineBlock]
    parameters: list[ParameterSpec]
    variables: list[VariableSpec]
    cone_sizes: tuple[int, ...] = ()
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.blocks["q"].shape[0]

    @property
    def n_eq(self) -> int:
        return self.blocks["b"].shape[0]

    @property
    def n_ineq(self) -> int:
        return self.blocks["h"].shape[0]

    @property
    def theta_size(self) -> int:
        return sum(spec.size for spec in self.parameters)

    def parametric_mask(self) -> np.ndarray:
        """``(n + n_eq + n_ineq,)`` bool: the entries of q, then the rows of ``[A; G]``
        or of ``[b; h]`` with an entry, that depend on a parameter (the others'
        gradients reach none)."""
        q = self.blocks["q"]
        live_q = np.zeros(self.n, dtype=bool)
        live_q[q.index[parameter_entries(q.matrix)]] = True
        rows = [live_q]
        for matrix_name, bound_name in (("A", "b"), ("G", "h")):
            count = self.blocks[bound_name].shape[0]
            live = np.zeros(count, dtype=bool)
            for name in (matrix_name, bound_name):
                block = self.blocks[name]
                row = block.index[parameter_entries(block.matrix)]
                live[row // (block.shape[1] if len(block.shape) == 2 else 1)] = True
            rows.append(live)
        return np.concatenate(rows)

    def dependencies(self) -> dict[str, set[int]]:
        """Which user parameters (by position) each block depends on."""
        return {
            name: parameter_positions(self.parameters, b.parameter_columns())
            for name, b in self.blocks.items()
        }

    def _torch_blocks(self, dtype: torch.dtype, device: torch.device) -> dict[str, _TorchBlock]:
        key = (dtype, device)
        if key not in self._torch_cache:
            converted = {}
            for name, block in self.blocks.items():
                if block.parameter_columns().size == 0:
                    dense = np.zeros(math.prod(block.shape))
                    dense[block.index] = block.matrix[:, [-1]].toarray().ravel()
                    constant = torch.as_tensor(dense, dtype=dtype, device=device)
                    converted[name] = _TorchBlock(
                        block.shape, None, None, constant.reshape(1, *block.shape)
                    )
                    continue
                size = math.prod(block.shape)
                found = _Selection.of(block.matrix, block.index, size, dtype, device)
                if found is not None:
                    selection, order = found
                    index = torch.as_tensor(block.index[order], device=device)
                    converted[name] = _TorchBlock(block.shape, index, None, None, selection)
                    continue
                index = torch.as_tensor(block.index, device=device)
                matrix = to_torch_sparse(block.matrix, dtype, device)
                converted[name] = _TorchBlock(block.shape, index, matrix, None)
            self._torch_cache[key] = converted
        return self._torch_cache[key]

    @staticmethod
    def _place(block: _TorchBlock, values: torch.Tensor) -> torch.Tensor:
        """The entries' values ``(Bt, E)`` as the block ``(Bt, *shape)``."""
        if block.selection is not None and block.selection.complete:
            return values.reshape(-1, *block.shape)
        flat = values.new_zeros(values.shape[0], math.prod(block.shape))
        return flat.index_copy(1, block.index, values).reshape(-1, *block.shape)

    def _gathered(
        self, blocks: dict[str, _TorchBlock], names: tuple[str, ...], source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The selection blocks ``names`` at ``source`` ``(Bt, K + 1)`` by one gather, so
        that the backward pass scatters into one zero gradient of ``source`` rather than
        one per block (each as large as the batch's parameters)."""
        key = ("columns", source.device, names)
        if key not in self._torch_cache:
            columns = [blocks[name].selection.column.reshape(-1) for name in names]
            self._torch_cache[key] = torch.cat(columns)
        gathered = source.index_select(1, self._torch_cache[key])
        sizes = [blocks[name].selection.column.numel() for name in names]
        return {
            name: self._place(blocks[name], blocks[name].selection.combine(part))
            for name, part in zip(names, gathered.split(sizes, dim=1), strict=True)
        }

    def data(
        self,
        theta: torch.Tensor,
        shared_theta: torch.Tensor | None = None,
        shared_blocks: frozenset[str] = frozenset(),
    ) -> QPData:
        """The QP data at theta.

        Args:
            theta: ``(1|B, K)``.
            shared_theta: ``(1, K)``, used for the blocks named in ``shared_blocks``
                (those that depend on unbatched parameters only), which then stay shared.
            shared_blocks: Names of blocks to evaluate at ``shared_theta``.
        """
        blocks = self._torch_blocks(theta.dtype, theta.device)
        maps = self._dense_maps(theta.dtype, theta.device)
        if shared_theta is None:
            shared_blocks = frozenset()
        values: dict[str, torch.Tensor] = {}
        separate = []
        for name, members in _STACKS.items():
            # A constant member's entries are in the map's constant part, whatever its side.
            sides = {b in shared_blocks for b in members if blocks[b].constant is None}
            dense = maps[name]
            if dense is not None and len(sides) == 1:
                source = shared_theta if sides.pop() else theta
                value = torch.addmm(dense.constant, source, dense.linear)
                values[name] = value if len(dense.shape) == 1 else value.reshape(-1, *dense.shape)
            else:
                separate.extend(members)
        values.update(self._block_values(blocks, separate, theta, shared_theta, shared_blocks))
        P, q, C, bound = (
            values[name] if name in values else self._stacked(blocks, values, *members)
            for name, members in _STACKS.items()
        )
        batch = theta.shape[0]  # every block has 1 row or theta's (0 for an empty batch)
        return QPData(P, q, C, bound, self.n_eq, batch, self.cone_sizes)

    def _block_values(
        self,
        blocks: dict[str, _TorchBlock],
        names: list[str],
        theta: torch.Tensor,
        shared_theta: torch.Tensor | None,
        shared_blocks: frozenset[str],
    ) -> dict[str, torch.Tensor]:
        """The blocks ``names`` one by one: constants, gathers (`_Selection`) and sparse
        products of ``[theta; 1]``, or of ``[shared_theta; 1]`` for the ``shared_blocks``."""
        values = {
            name: blocks[name].constant for name in names if blocks[name].constant is not None
        }
        names = [name for name in names if name not in values]
        if not names:
            return values
        theta_aug = torch.cat([theta, theta.new_ones(theta.shape[0], 1)], dim=1)
        shared_aug = None
        if shared_theta is not None:
            shared_aug = torch.cat([shared_theta, theta.new_ones(1, 1)], dim=1)
        gathers: dict[int, tuple[torch.Tensor, list[str]]] = {}
        for name in names:
            block = blocks[name]
            source = shared_aug if name in shared_blocks else theta_aug
            if block.selection is not None:
                gathers.setdefault(id(source), (source, []))[1].append(name)
            else:
                product = torch.sparse.mm(block.matrix, source.t()).t()  # (Bt, E)
                values[name] = self._place(block, product)
        for source, gathered in gathers.values():
            values.update(self._gathered(blocks, tuple(gathered), source))
        return values

    def _stacked_shape(self, name: str) -> tuple[int, ...]:
        """The shape of a `QPData` block (``P``, ``q``, ``C`` or ``bound``)."""
        n, m = self.n, self.n_eq + self.n_ineq
        return {"P": (n, n), "q": (n,), "C": (m, n), "bound": (m,)}[name]

    def _dense_maps(self, dtype: torch.dtype, device: torch.device) -> dict[str, _DenseMap | None]:
        """Per `QPData` block, its affine map as one dense ``(size,)`` constant and
        ``(K, size)`` linear part, so that the block is one ``addmm`` of theta (one
        autograd node, whose adjoint is one product), where the map has no more entries
        than the ``n x (n + m)`` matrix ``[P, C']`` that every solver iteration
        multiplies: a small problem, for which the gathers' and scatters' operations
        cost more than their arithmetic. None for a constant block or a larger map."""
        key = ("dense", dtype, device)
        if key in self._torch_cache:
            return self._torch_cache[key]
        K, n, m = self.theta_size, self.n, self.n_eq + self.n_ineq
        maps: dict[str, _DenseMap | None] = {}
        for name, members in _STACKS.items():
            shape = self._stacked_shape(name)
            size = math.prod(shape)
            parametric = any(self.blocks[b].parameter_columns().size for b in members)
            if not parametric or K * size > n * (n + m):
                maps[name] = None
                continue
            dense = np.zeros((size, K + 1))
            offset = 0
            for member in members:
                block = self.blocks[member]
                dense[offset + block.index] = block.matrix.toarray()
                offset += math.prod(block.shape)
            maps[name] = _DenseMap(
                torch.as_tensor(dense[:, K].copy(), dtype=dtype, device=device),
                torch.as_tensor(dense[:, :K].T.copy(), dtype=dtype, device=device),
                shape,
            )
        self._torch_cache[key] = maps
        return maps

    def _stacked(
        self,
        blocks: dict[str, _TorchBlock],
        values: dict[str, torch.Tensor],
        top: str,
        bottom: str,
    ) -> torch.Tensor:
        """``[top; bottom]`` stacked; for two constant blocks, the same tensor on every
        call (a layer's caches of what depends on its constant matrices key on it)."""
        if blocks[top].constant is None or blocks[bottom].constant is None:
            return stack_rows(values[top], values[bottom])
        key = ("stacked", top, bottom, values[top].dtype, values[top].device)
        if key not in self._torch_cache:
            self._torch_cache[key] = stack_rows(values[top], values[bottom])
        return self._torch_cache[key]

    def tangents(self, dtype: torch.dtype, device: torch.device) -> DataTangents:
        """Dense data directions ``(1, *block_shape, K)``, one per entry of theta."""
        K = self.theta_size
        dense = {}
        for name, block in self.blocks.items():
            out = np.zeros((math.prod(block.shape), K))
            linear = block.matrix[:, :K].toarray()
            out[block.index] = linear
            dense[name] = torch.as_tensor(out, dtype=dtype, device=device).reshape(
                1, *block.shape, K
            )
        return DataTangents(
            P=dense["P"],
            q=dense["q"],
            C=stack_rows(dense["A"], dense["G"]),
            bound=stack_rows(dense["b"], dense["h"]),
        )


def to_torch_sparse(matrix: sp.sparray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch COO tensor."""
    coo = matrix.tocoo()
    indices = torch.as_tensor(np.vstack([coo.row, coo.col]).astype(np.int64), device=device)
    values = torch.as_tensor(coo.data, dtype=dtype, device=device)
    return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()
