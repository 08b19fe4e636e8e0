"""A layer's memory of the active sets its solutions had: later calls solved on them exactly.

A QP with constant ``P`` and ``C`` and a regular, strictly complementary solution is
solved by the KKT equations of its active set ``a`` (the rows with a positive
multiplier; the equality rows)::

    [[P, C'], [diag(a) C, diag(1 - a)]] [x; y] = [-q; a * bound],

so ``[x; y] = T_a d`` for the data ``d = [q; bound]``, with one matrix ``T_a`` per
active set. A layer whose calls change only ``q`` and ``bound`` (a tiny control or
projection layer) meets the same active sets again and again: `ActiveSetMemory` keeps
the ``T_a`` of the sets its solved instances had, and tries them first on a later call.
A set is the instance's where its point is strictly complementary: every inactive
row's slack and every active inequality's multiplier (times the row's norm) above ten
times the tolerances, the margin within which the backward calls a row weakly active
(`_degeneracy`). Those tests are linear in ``d`` too (one matrix ``V_a``), so one
product tests every kept set; the set found must then pass the forward's convergence
test on the point's residuals. Such a point is the solution (a strictly complementary
KKT point of a convex QP on a regular system), exact to round-off, and its gradient
is ``T_a' g``: the fixed point of the Alt-Diff recursion there, which the iterations
would approach.

An instance that no kept set passes takes a few active-set steps from the kept set
nearest it (`corrected_sets`); a set they reach is kept, then tested and verified as
every other. Where a call's instances are still not all found, the call runs the
solver as usual and its solved instances teach the memory their sets. What the memory
costs (its tests, steps and what it learns, measured) stays within what it has saved
(a hit saves the layer's measured solve time for that batch size, less the test) plus
a twentieth of the solves' time: on a layer whose active sets do not recur it costs
at most that.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from ._active_set_steps import corrected_sets, set_systems
from ._degeneracy import WEAK_WITHIN
from ._free_variables import FreeVariables
from ._qp import QPData
from ._settings import SolverSettings

__all__ = ["ActiveSetMemory", "FaceMaps", "FaceSolution"]

Array = np.ndarray | torch.Tensor

# The memory spends at most what it saved plus this fraction of the solves' time.
_SPEND_FRACTION = 1 / 20
_MAX_SETS = 256
_MAX_BYTES = 64 * 2**20  # of the kept matrices
# A problem whose sets' matrices leave room for fewer sets has no memory: its sets
# would cost more to learn (an inverse of n + m rows each) than a small problem's solve.
_MIN_SETS = 16
# A set's KKT system whose 1-norm condition number exceeds this is not kept: its point
# would carry fewer than half of float64's digits (the backward's "singular").
_MAX_CONDITION = 1e8
_TIMES_KEPT = 5  # solve times per batch size, for their median
# Active-set steps from a kept set toward a new instance's (`_extend`), at most.
_STEPS = 5


class _Structure(NamedTuple):
    """What the sets are learnt from that depends on the constant P and C alone, in
    float64 numpy (a set is learnt once, and small LAPACK calls through torch can cost
    milliseconds on the CPU, its threads woken for one small matrix)."""

    P: np.ndarray  # (n, n)
    C: np.ndarray  # (m, n)
    row_norms: np.ndarray  # (m,) the largest absolute entry of each row of C
    free_variables: FreeVariables | None  # of P and C (float64 torch on the CPU)

    @classmethod
    def of(cls, data: QPData, hidden: torch.Tensor | None) -> _Structure:
        P, C = (v.detach()[:1].double().cpu() for v in (data.P, data.C))
        row_norms = np.abs(C[0].numpy()).max(-1, initial=0)
        free = None if hidden is None else FreeVariables.of(P, C, data.n_eq, hidden.cpu())
        return cls(P[0].numpy(), C[0].numpy(), row_norms, free)


@dataclass(frozen=True)
class FaceMaps:
    """What the backward of a call solved on remembered sets needs: each instance's
    ``T_a`` ``(B, n + m, n + m)`` (float64) and n. (Not the outputs themselves: a
    Function's context that holds its outputs makes a cycle autograd never frees.)"""

    maps: torch.Tensor
    n: int

    def gradients(
        self, grad_x: torch.Tensor | None, grad_y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dL/dq (B, n), dL/dbound (B, m))`` from the cotangents of x ``(B, n)`` and
        y ``(B, m)`` (one may be None): ``T_a' g``."""
        B, size = self.maps.shape[:2]
        like = grad_x if grad_x is not None else grad_y
        g = torch.zeros(B, size, dtype=self.maps.dtype, device=like.device)
        if grad_x is not None:
            g[:, : self.n] = grad_x
        if grad_y is not None:
            g[:, self.n :] = grad_y
        grad = (g.unsqueeze(1) @ self.maps).squeeze(1).to(like.dtype)
        return grad[:, : self.n], grad[:, self.n :]


@dataclass(frozen=True)
class FaceSolution:
    """A call's solution from remembered active sets, in the user's units.

    Attributes:
        x: ``(B, n)``; y: ``(B, m)`` multipliers (exact zeros on inactive rows);
            Cx: ``(B, m)``.
        backward: Each instance's ``T_a``, for the gradients.
        primal_residual, dual_residual: ``(B,)``.
    """

    x: torch.Tensor
    y: torch.Tensor
    Cx: torch.Tensor
    backward: FaceMaps
    primal_residual: torch.Tensor
    dual_residual: torch.Tensor


class ActiveSetMemory:
    """The active sets of a layer's solved instances, for its constant ``P`` and ``C``.

    `solve` tries them on a call; `learn` adds a normal solve's sets. Both keep to the
    budget of the module docstring. Where the matrices change, the memory starts over.
    """

    def __init__(self) -> None:
        self._key: tuple = ()
        self.reset()

    def reset(self, key: tuple = ()) -> None:
        self._key = key
        self._sets: dict[bytes, int] = {}  # active mask -> index
        # float64 numpy arrays (`_arrays` gives them on a call's device)
        self._T: np.ndarray | None = None  # (R, n + m, n + m)
        self._V: np.ndarray | None = None  # (R, m_ineq, n + m)
        # (R, m_ineq, 2): (1, 0) where a row's slack is tested (inactive); (0, 1) and
        # (0, -1) where its multiplier must exceed, or may fall a margin below, zero
        self._sides: np.ndarray | None = None
        self._kkt: np.ndarray | None = None  # [[P, C'], [C, 0]]' (symmetric)
        self._signs: np.ndarray | None = None  # (n + m,) [1; -1]: [q; -bound] of d
        # (n + m,) the residual r's sign flips whose maximum with r is the violation:
        # -1 (|r|) on the dual entries and the equality rows, 0 (r's positive part)
        # on the inequality rows
        self._flips: np.ndarray | None = None
        self._on_device: tuple[torch.device, tuple[torch.Tensor, ...]] | None = None
        self._structure: _Structure | None = None  # of P and C, at the first learning
        self._last_used: list[int] = []
        self._calls = 0
        self._spent = self._saved = self._solving = 0.0
        self._solve_times: dict[int, deque[float]] = {}
        self._typical_solve: dict[int, float] = {}  # their medians, per batch size
        #: Calls solved from the memory, and calls that tried it.
        self.hits = self.attempts = 0

    def _applies(self, data: QPData, settings: SolverSettings) -> bool:
        """Whether this call may use the memory (`SolverSettings.remember_active_sets`):
        a polyhedral dense problem whose P and C are a layer's constants, with the
        default backward (an explicit ``backward_method`` asks for that method)."""
        P, C = data.P, data.C
        if not (
            settings.remember_active_sets and settings.polish and settings.backward_method == "auto"
        ):
            return False
        if data.sparse or data.cone_sizes or P.shape[0] != 1 or C.shape[0] != 1:
            return False
        if P.requires_grad or C.requires_grad:
            return False
        n, m = C.shape[2], C.shape[1]
        if _MIN_SETS * _set_bytes(n, m, data.n_eq) > _MAX_BYTES:
            return False
        if not self._key or self._key[0] is not P or self._key[1] is not C:
            self.reset((P, C))
        return True

    def _affordable(self) -> bool:
        return self._spent <= self._saved + _SPEND_FRACTION * self._solving

    def solve(self, data: QPData, settings: SolverSettings) -> FaceSolution | None:
        """Every instance's solution from a remembered set, or None (then nothing of
        this call's is taken from the memory)."""
        if not self._applies(data, settings) or self._T is None or not self._affordable():
            return None
        start = time.perf_counter()
        self._calls += 1
        self.attempts += 1
        found = self._find(data, settings, extend=True)
        spent = time.perf_counter() - start
        self._spent += spent
        if found is None:
            return None
        self.hits += 1
        typical = self._typical_solve.get(data.batch_size)
        if typical is not None:
            self._saved += max(typical - spent, 0.0)
        return found

    def _find(self, data: QPData, settings: SolverSettings, extend: bool) -> FaceSolution | None:
        """The solution of every instance from its set, or None; one code for both
        array libraries (`_namespace`). With ``extend``, the instances that no kept set
        holds for first try the sets `_extend` reaches from their nearest ones."""
        n, B = data.n, data.batch_size
        xp = _namespace(data.q.device)
        T, V, sides, kkt, signs, flips = self._arrays(xp, data.q.device)
        q, bound = (
            v.detach() if v.shape[0] == B else v.detach().expand(B, -1)
            for v in (data.q, data.bound)
        )
        if xp is np:
            q, bound = q.numpy(), bound.numpy()
        d = xp.asarray(xp.concatenate([q, bound], axis=1), dtype=T.dtype)  # (B, n + m)
        tol = _tolerances(xp, d, n, settings.tolerances(data.q.dtype))
        R, m_ineq = V.shape[:2]
        tested = V.reshape(R * m_ineq, d.shape[1]) @ d.T
        threshold = sides.reshape(R * m_ineq, 2) @ (WEAK_WITHIN * tol)
        passes = (tested > threshold).reshape(R, m_ineq, B)
        holds = passes.all(1)  # (R, B)
        missing = ~holds.any(0)
        if bool(missing.any()):
            nearest = passes.sum(1)[:, missing].argmax(0)  # the set passing most tests
            if not (extend and self._extend(d[missing], nearest, tol[:, missing], data.n_eq)):
                return None
            return self._find(data, settings, extend=False)
        chosen = (holds * 1).argmax(0)  # (B,) the first set that holds
        maps = T[chosen]
        u = (maps @ d[:, :, None])[..., 0]  # exact zeros on the inactive rows' y
        # A pinned row's multiplier may come out a rounding below zero: the point's
        # residuals are those of the clipped, dual-feasible one.
        u[:, n + data.n_eq :] = u[:, n + data.n_eq :].clip(0)
        # [Px + C'y + q; Cx - bound]: the point's residuals
        r = u @ kkt + d * signs
        on_rows = r[:, n:]
        residuals = _split_max(xp, xp.maximum(r, r * flips), n)  # (2, B) primal, dual
        if not bool((residuals <= tol).all()):
            return None  # a set's system too ill-conditioned for these data
        for index in chosen.tolist():
            self._last_used[index] = self._calls
        values = (u[:, :n], u[:, n:], on_rows + d[:, n:], residuals[0], residuals[1])
        if xp is np:
            values, maps = (torch.from_numpy(v) for v in values), torch.from_numpy(maps)
        dtype = data.q.dtype
        x, y, Cx, primal, dual = (v if v.dtype == dtype else v.to(dtype) for v in values)
        return FaceSolution(x, y, Cx, FaceMaps(maps, n), primal, dual)

    def _extend(self, d: Array, nearest: Array, tol: Array, n_eq: int) -> bool:
        """Whether a set was found and kept for each instance of ``d`` ``(K, n + m)``
        by active-set steps (`corrected_sets`) from the kept set ``nearest`` ``(K,)``
        (indices); ``tol`` ``(2, K)``. Those sets are then verified as every kept one."""
        d, nearest, tol = (
            v if isinstance(v, np.ndarray) else v.cpu().numpy() for v in (d, nearest, tol)
        )
        structure = self._structure
        K, m = d.shape[0], structure.C.shape[0]
        sides = self._sides[nearest, :, 1]  # (K, m_ineq): 1 active, -1 pinned, 0 inactive
        guess, pinned = np.ones((K, m), dtype=bool), np.zeros((K, m), dtype=bool)
        guess[:, n_eq:], pinned[:, n_eq:] = sides != 0, sides < 0
        found = corrected_sets(
            structure.P,
            structure.C,
            structure.row_norms,
            d,
            guess,
            pinned,
            WEAK_WITHIN * tol,
            n_eq,
            _STEPS,
        )
        if found is None:
            return False
        for active, pins in zip(found, pinned, strict=True):
            key = active.astype(np.int8).tobytes()
            if key not in self._sets:
                self._keep(key, active, pins, n_eq)
        return True

    def observe(self, batch_size: int, seconds: float) -> None:
        """Record a normal solve's time: what a hit at this batch size saves."""
        self._solving += seconds
        times = self._solve_times.setdefault(batch_size, deque(maxlen=_TIMES_KEPT))
        times.append(seconds)
        self._typical_solve[batch_size] = statistics.median(times)

    def learn(
        self,
        data: QPData,
        x: torch.Tensor,
        y: torch.Tensor,
        solved: torch.Tensor,
        settings: SolverSettings,
        parametric: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> None:
        """Keep the active sets of the ``solved`` ``(B,)`` instances whose point ``x``
        ``(B, n)``, ``y`` ``(B, m)`` (user units) is strictly complementary, within
        the budget; ``parametric`` ``(n + m,)``: the entries of q (then the rows) that
        depend on a parameter (None: all); ``hidden`` ``(n,)``: the variables no output
        reads (None: none), the only ones pinned.

        A variable that no objective term, no active row, no parameter and no output
        reaches (the epigraph ``t`` of ``|u| <= t <= 1`` with ``|u| < 1``) is free on
        the solution's face and makes its KKT system singular; its rows' sides change
        no other variable (`_degeneracy.absorbed`). Such a variable is pinned to a
        bound row of its own (`_free_variables`): that row joins the set with a
        multiplier that may vanish (zero where the variable is free), and the
        variable's other rows, weakly active at the solver's point or not, are tested
        as inactive.
        """
        if not self._applies(data, settings) or not self._affordable():
            return
        B, n, n_eq = data.batch_size, data.n, data.n_eq
        if self._structure is None:
            self._structure = _Structure.of(data, hidden)
        structure = self._structure
        C, row_norms = structure.C, structure.row_norms
        q, bound, x, y = (
            v.detach().expand(B, -1).double().cpu().numpy() for v in (data.q, data.bound, x, y)
        )
        solved = solved.cpu().numpy()
        d = np.concatenate([q, bound], axis=1)
        primal_tol, dual_tol = WEAK_WITHIN * _tolerances(
            np, d, n, settings.tolerances(data.q.dtype)
        )
        active = y * row_norms > dual_tol[:, None]
        active[:, :n_eq] = True
        inactive = bound - x @ C.T > primal_tol[:, None]
        pinned = on_free = np.zeros_like(active)
        free_variables = structure.free_variables
        if free_variables is not None and parametric is not None:
            # free where q's entry is a constant zero: then on every instance
            free = free_variables.free(torch.from_numpy(active), torch.from_numpy(q))
            free &= ~parametric[:n].cpu()
            pinned = free_variables.pinned(free).numpy()
            on_free = free_variables.rows_on(free).numpy()  # tested as inactive
        strict = (active | inactive | on_free)[:, n_eq:].all(-1)
        for b in np.flatnonzero(solved & strict):
            if not self._affordable():
                return
            key = (active[b].astype(np.int8) + pinned[b]).tobytes()
            if key in self._sets:
                continue
            start = time.perf_counter()
            self._keep(key, active[b] | pinned[b], pinned[b], n_eq)
            self._spent += time.perf_counter() - start

    def _keep(self, key: bytes, active: np.ndarray, pinned: np.ndarray, n_eq: int) -> None:
        """Add the set ``active`` ``(m,)`` (``pinned``: its rows whose multiplier may
        vanish) if its KKT system is well conditioned (the least recently used set
        makes room where the memory is full)."""
        P, C, row_norms = self._structure.P, self._structure.C, self._structure.row_norms
        (m, n), a = C.shape, active.astype(np.float64)
        K = set_systems(P, C, active[None])[0]
        try:
            inverse = np.linalg.inv(K)
        except np.linalg.LinAlgError:
            return
        condition = np.linalg.norm(K, 1) * np.linalg.norm(inverse, 1)
        if not np.isfinite(condition) or condition > _MAX_CONDITION:
            return
        T = inverse * np.concatenate([-np.ones(n), a])
        T[n:] *= a[:, None]  # y = 0 on the inactive rows, exactly
        slack_map = -C[n_eq:] @ T[:n]
        slack_map[:, n + n_eq :] += np.eye(m - n_eq)
        V = np.where(active[n_eq:, None], row_norms[n_eq:, None] * T[n + n_eq :], slack_map)
        sides = np.stack([~active[n_eq:], active[n_eq:]], axis=-1).astype(np.float64)
        sides[:, 1] -= 2 * pinned[n_eq:]
        if self._kkt is None:
            self._kkt = np.block([[P, C.T], [C, np.zeros((m, m))]])
            self._signs = np.concatenate([np.ones(n), -np.ones(m)])
            self._flips = -(np.arange(n + m) < n + n_eq).astype(np.float64)
        new = (T, V, sides)
        if len(self._sets) >= min(_MAX_SETS, _MAX_BYTES // _set_bytes(n, m, n_eq)):
            index = min(range(len(self._last_used)), key=self._last_used.__getitem__)
            self._sets = {k: i for k, i in self._sets.items() if i != index}
            for kept, value in zip(self._stacks(), new, strict=True):
                kept[index] = value
            self._last_used[index] = self._calls
        else:
            index = len(self._sets)
            stacks = self._stacks()
            if stacks[0] is None:
                stacks = tuple(value[None][:0] for value in new)
            self._T, self._V, self._sides = (
                np.concatenate([kept, value[None]]) for kept, value in zip(stacks, new, strict=True)
            )
            self._last_used.append(self._calls)
        self._sets[key] = index
        self._on_device = None

    def _stacks(self) -> tuple[np.ndarray | None, ...]:
        return self._T, self._V, self._sides

    def _arrays(self, xp: ModuleType, device: torch.device) -> tuple[Array, ...]:
        """The kept arrays: the numpy ones, or copies on ``device`` (made once per
        change)."""
        arrays = (*self._stacks(), self._kkt, self._signs, self._flips)
        if xp is np:
            return arrays
        if self._on_device is None or self._on_device[0] != device:
            self._on_device = (device, tuple(torch.from_numpy(v).to(device) for v in arrays))
        return self._on_device[1]


def _namespace(device: torch.device) -> ModuleType:
    """The array library of the lookup on ``device``: numpy on the CPU, whose operators
    cost a few times less than torch's on such small arrays, else torch."""
    return np if device.type == "cpu" else torch


def _set_bytes(n: int, m: int, n_eq: int) -> int:
    """Bytes of one set's float64 ``T`` ``(n + m, n + m)``, ``V`` ``(m - n_eq, n + m)``
    and sides ``(m - n_eq, 2)``."""
    return 8 * ((n + m) * (n + 2 * m - n_eq) + 2 * (m - n_eq))


def _tolerances(xp: ModuleType, d: Array, n: int, eps: tuple[float, float]) -> Array:
    """``(2, B)`` the primal and dual tolerances at the scale of the data ``d = [q;
    bound]`` ``(B, n + m)``: no larger than the forward's, whose scales also hold the
    point's products."""
    return eps[0] + eps[1] * _split_max(xp, abs(d), n)


def _split_max(xp: ModuleType, v: Array, n: int) -> Array:
    """``(2, B)``: the largest entry of each row of ``v[:, n:]``, then of ``v[:, :n]``
    (0 for an empty part); on numpy by one reduction (a lookup is tens of such small
    operations, each costing more than its arithmetic)."""
    if xp is np and 0 < n < v.shape[1]:
        return np.maximum.reduceat(v, [0, n], axis=1).T[[1, 0]]
    return xp.stack([_row_max(xp, v[:, n:]), _row_max(xp, v[:, :n])])


def _row_max(xp: ModuleType, v: Array) -> Array:
    """The largest entry of each row of ``v`` (0 for an empty row)."""
    return xp.amax(v, -1) if v.shape[-1] else xp.zeros(v.shape[:-1], dtype=v.dtype)
