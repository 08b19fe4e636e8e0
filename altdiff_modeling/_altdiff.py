"""Alternating differentiation of the ADMM iteration (DESIGN section 4).

Write the iteration with relaxation 1 in the state ``(x, v)``, ``v = Cx + y / r``
(``r`` the per-row penalty, ``z = proj(v)``, ``y = r (v - z)``)::

    x+ = H^{-1} (sigma x - q + C' r (2 proj(v) - v))
    v+ = C x+ + v - proj(v)

At the fixed point, with D the 0/1 diagonal of the rows where ``proj`` is the identity
(inactive inequalities), its linearization is ``J <- M J + N``. Forward mode carries J
for a set of tangent directions (the paper's recursion, run in lockstep with ADMM).
Reverse mode runs the transposed recursion ``w <- M' w + g`` on ``w = (a, c)``::

    t  = H^{-1} (a + C' c)
    a+ = sigma t + g_x
    c+ = (2D - I) r C t + (I - D) c + g_v

one Cholesky solve with the forward factor per step, whatever the number of
parameters, and then reads off the gradients of every data block in closed form::

    dL/dq = -t                     dL/dP = -(t x' + x t') / 2
    dL/dC = -y t' + (c - r C t) x'  dL/d[b; h] = (I - D) (2 r C t - c)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._admm import SolveResult
from ._batched_sparse import BatchedSparse
from ._cone_adjoint import cone_adjoint
from ._cone_adjoint import predicted_seconds as cone_predicted_seconds
from ._contraction import contraction
from ._costs import step_flops
from ._degeneracy import absorbed, dense_test_flops, pieces_differ, singular_systems
from ._direct_adjoint import (
    AdjointSolver,
    adjoint_through_polish,
    direct_adjoint,
    predicted_seconds,
)
from ._krylov import batched_gmres
from ._polish import SharedPolishData
from ._projection import ProjectionJacobian
from ._qp import Matrix, QPData, matvec, rmatvec, select_rows
from ._settings import SolverSettings
from .linsys.cholesky import CholeskyFactor
from .linsys.systems import ActiveSystems, Factor, sparse_P

__all__ = ["DataGradients", "DataTangents", "ForwardTangents", "reverse_gradients"]


@dataclass
class DataGradients:
    """Per-instance gradients of a scalar loss w.r.t. the QP data (leading dim B); P and
    C are None where they were not asked for. ``converged`` ``(B,)`` marks the
    instances whose recursion reached its fixed point (the others' gradients are its
    last iterate); ``singular`` ``(B,)`` those whose fixed point was amplified beyond
    working precision (a system singular to rounding); ``degenerate`` ``(B,)`` those
    at a degenerate solution whose gradient is not unique (`_degeneracy`: a weakly
    active row on whose side it depends, or a singular active rows' system)."""

    P: torch.Tensor | None
    q: torch.Tensor
    C: torch.Tensor | None
    bound: torch.Tensor
    iterations: int
    converged: torch.Tensor | None = None
    singular: torch.Tensor | None = None
    degenerate: torch.Tensor | None = None


def _cheaper_backward(
    measured: dict[str, tuple[float, int]],
    batch: int,
    predicted: tuple[float, float] | None,
) -> str:
    """``"direct"`` or ``"gmres"`` for a batch of ``batch`` instances.

    ``measured``: the ``(seconds, batch)`` of each method's last backward with this
    factor (a layer's factors are kept across calls), scaled to this batch;
    ``predicted``: the cost model's ``(direct, gmres)`` seconds, or None where the
    rates are unknown (the direct method then: it is verified on every call). With
    both measured, the faster; with one, it stays unless it measured slower than the
    model prices the other (the model, right in most cases, was wrong on this
    factor); with none, the model's choice.
    """
    scaled = {k: _scaled(measured, k, batch) for k in measured}
    if "direct" in scaled and "gmres" in scaled:
        return "direct" if scaled["direct"] <= scaled["gmres"] else "gmres"
    if predicted is None:
        return "direct"
    direct, gmres = predicted
    if "direct" in scaled:
        return "gmres" if scaled["direct"] > gmres else "direct"
    if "gmres" in scaled:
        return "direct" if scaled["gmres"] > direct else "gmres"
    return "gmres" if direct >= gmres else "direct"


def _scaled(measured: dict[str, tuple[float, int]], method: str, batch: int) -> float | None:
    """The measured seconds of ``method``'s last backward scaled to ``batch`` instances
    (`_cheaper_backward`), or None where it has none."""
    if method not in measured:
        return None
    seconds, size = measured[method]
    return seconds * batch / max(size, 1)


def _settled(
    change: torch.Tensor,
    previous_change: torch.Tensor | None,
    size: torch.Tensor,
    settings: SolverSettings,
) -> bool:
    """Whether a linear fixed-point iteration is within ``backward_eps`` of its limit
    (`contraction`, from two changes ``check_every`` steps apart). A change at the level
    of round-off also counts as settled: there the estimated rate is meaningless (the
    iterates only flip their last bits).
    """
    eps = torch.finfo(change.dtype).eps
    at_roundoff = change <= 64 * eps * (1 + size)
    if previous_change is None:
        return bool(at_roundoff.all())
    _, error = contraction(change, previous_change, settings.check_every)
    return bool(((error <= settings.backward_eps * (1 + size)) | at_roundoff).all())


State = tuple[torch.Tensor, ...]
# Iterative refinement steps of a direct solve's rejected rows (`_refined_direct`).
_DIRECT_REFINEMENTS = 2


def _iterate(
    step: Callable[[State], State],
    state: State,
    measure: Callable[[State], torch.Tensor],
    settings: SolverSettings,
    max_steps: int,
) -> tuple[State, int]:
    """Run ``state <- step(state)`` until `_settled` (checked every ``check_every``
    steps on ``measure(state)``, ``(B, N)``) or for ``max_steps``; return the state and
    the number of steps."""
    steps, previous_change = 0, None
    for k in range(1, max_steps + 1):
        previous = state
        state = step(state)
        steps = k
        if k % settings.check_every:
            continue
        current = measure(state)
        change = (current - measure(previous)).norm(dim=-1)
        if _settled(change, previous_change, current.norm(dim=-1), settings):
            break
        previous_change = change
    return state, steps


def _transposed_step(
    factor: Factor,
    C: Matrix,
    r: torch.Tensor,
    jacobian: ProjectionJacobian,
    sigma: float,
) -> tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], Callable[..., State]]:
    """The transposed recursion's ``products(a, c)``, ``t = H^{-1} (a + C'c)`` and
    ``R C t`` (a step's, and the gradients', parts), and ``adjoint_step(a, c, parts)``,
    ``M' (a, c)`` without the source term (from its products where known), for the
    factor of H, C ``(1|B, m, n)``, the penalty ``r`` ``(1|B, m)`` and J of a batch."""

    def products(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = factor.solve(a + rmatvec(C, c))
        return t, r * matvec(C, t)

    def adjoint_step(
        a: torch.Tensor, c: torch.Tensor, parts: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> State:
        t, rCt = products(a, c) if parts is None else parts
        return sigma * t, jacobian.mix(rCt, c - rCt)

    return products, adjoint_step


def _refined_direct(
    solver: AdjointSolver,
    step: Callable[..., State],
    products: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    source: torch.Tensor,
    tol: float,
    m: int,
) -> tuple[State, tuple[torch.Tensor, torch.Tensor], torch.Tensor, int]:
    """The direct solver's answer to the transposed recursion's fixed point with source
    ``source`` ``(B, n + m)``, its ``products`` (which ``step`` takes), where `_verified`
    it, and the solves made.

    The rows it rejects take up to ``_DIRECT_REFINEMENTS`` steps of iterative
    refinement, ``w += (I - M')^{-1} (M'w + source - w)`` by the same solver: where P
    is ill-conditioned (condition 1e6), the regularized factors' answer is 1e-4 off,
    and refinement reaches the tolerance in a step or two. A singular system's answer
    does not improve so (its correction stays as large as itself) and stays rejected.
    """
    n = source.shape[1] - m
    guess = solver(source[:, :n], source[:, n:])
    parts = products(*guess)
    image = step(guess, parts)
    accepted = _verified(solver, guess, image, source, tol)
    solves = 1
    for _ in range(_DIRECT_REFINEMENTS):
        if bool(accepted.all()):
            break
        correction = solver(image[0] - guess[0], image[1] - guess[1])
        keep = accepted.unsqueeze(-1)
        guess = tuple(torch.where(keep, g, g + d) for g, d in zip(guess, correction, strict=True))
        parts = products(*guess)
        image = step(guess, parts)
        accepted = _verified(solver, guess, image, source, tol)
        solves += 1
    return guess, parts, accepted, solves


def _verified(
    solver: AdjointSolver,
    guess: State,
    image: State,
    source: torch.Tensor,
    tol: float,
) -> torch.Tensor:
    """``(B,)`` bool: where a direct solver's answer ``guess`` ``w`` is the transposed
    recursion's limit to ``tol``, given its ``image`` ``M'w + source``.

    The residual ``rho = source - (I - M') w`` must be small, and so must the error it
    implies, ``(I - M')^{-1} rho``, which the same solver estimates (one step of
    iterative refinement). The residual alone cannot tell: where the system is singular
    or nearly so (dependent active rows, a solution that is not unique), an answer may
    carry any multiple of a null vector, with a residual at round-off, and gradients a
    billion times the recursion's. There the solver amplifies the residual's round-off
    as much as it did the source's, and the correction is as large as the answer.
    """
    w = torch.cat(guess, dim=1)
    residual = torch.cat(image, dim=1) - w
    n = guess[0].shape[1]
    correction = torch.cat(solver(residual[:, :n], residual[:, n:], rough=True), dim=1)
    small = residual.norm(dim=-1) <= tol * (1 + source.norm(dim=-1))
    return small & (correction.norm(dim=-1) <= tol * (1 + w.norm(dim=-1)))


def reverse_gradients(
    data: QPData,
    result: SolveResult,
    grad_x: torch.Tensor,
    grad_y: torch.Tensor | None,
    settings: SolverSettings,
    need_P: bool = True,
    need_C: bool = True,
    timings: dict[str, tuple[float, int]] | None = None,
    multiplier_rows: torch.Tensor | None = None,
    weak: torch.Tensor | None = None,
    live_q: torch.Tensor | None = None,
) -> DataGradients:
    """Vector-Jacobian product of the solution map by the transposed Alt-Diff recursion.

    Args:
        data: The QP data of the forward solve.
        result: The forward solve (its factor is reused).
        grad_x: ``(B, n)`` cotangent of x.
        grad_y: ``(B, m)`` cotangent of the multipliers ``[lambda; nu]``, or None.
        settings: ``backward_eps``, ``backward_max_iter`` and ``check_every``.
        need_P, need_C: Whether the gradients w.r.t. P and C are wanted: each is a
            ``(B, n, n)`` or ``(B, m, n)`` outer product, skipped (None) for constants.
        timings: Where ``backward_method = "auto"`` keeps the measured times of its
            methods (a layer's, for its constant matrices; else the factor's memo).
        multiplier_rows: ``(1|B, m)`` bool, the rows whose multipliers reach the
            gradients asked for (`_degeneracy.singular_systems`); None: all.
        weak: ``(B, m)`` the forward's weakly active rows (`_degeneracy.weakly_active`),
            which make an instance degenerate where its gradient depends on their side.
        live_q: ``(1|B, n)`` bool, the entries of q whose gradient is asked for
            (`_degeneracy.absorbed`); None: all.

    Returns:
        Gradients w.r.t. P ``(B, n, n)``, q ``(B, n)``, C ``(B, m, n)`` and the bound
        ``(B, m)``.
    """
    started = time.perf_counter()
    C, n_eq = data.C, data.n_eq
    x, y, r, factor = result.x, result.y, result.rho_rows, result.factor
    sigma = settings.sigma
    cones = data.cones
    # J: the projection's Jacobian (D on the clipped rows, the cones' on theirs)
    jacobian = ProjectionJacobian.at_solution(result.z, y, r, data.bound, n_eq, cones)
    inactive = jacobian.inactive

    g_v = torch.zeros_like(y)
    bound_from_dual = torch.zeros_like(y)
    if grad_y is not None:
        # y = r (v - proj(v)): dy = r (I - J) dv - r (I - J) d[b; h] (r is one value
        # per cone, so it commutes with J).
        g_v = jacobian.complement(r * grad_y)
        bound_from_dual = -g_v

    n = grad_x.shape[-1]

    products, adjoint_step = _transposed_step(factor, C, r, jacobian, sigma)

    def step(state: State, parts: tuple[torch.Tensor, torch.Tensor] | None = None) -> State:
        a_step, c_step = adjoint_step(*state, parts)
        return a_step + grad_x, c_step + g_v

    def adjoint_step_of(rows: torch.Tensor) -> Callable[..., State]:
        """`adjoint_step` of the instances ``rows`` ``(K,)`` alone: GMRES and the plain
        recursion iterate on the instances still unsolved only (where the direct solve
        took all but one of 256 instances, GMRES's steps on the whole batch cost 16 s
        for that one)."""
        if rows.shape[0] == grad_x.shape[0]:
            return adjoint_step
        selected = (factor.select(rows), select_rows(C, rows), select_rows(r, rows))
        return _transposed_step(*selected, jacobian.select(rows), sigma)[1]

    def measure(state: State) -> torch.Tensor:
        return torch.cat(state, dim=1)

    source = torch.cat([grad_x, g_v], dim=1)
    state, iterations, solved, start = (grad_x, g_v), 0, False, source
    converged = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    # The instances whose active rows' system `singular_systems` tests: where the direct
    # solve's check rejected its answer, or it was not tried and the test costs no more
    # than the backward's steps did.
    candidates = torch.zeros_like(converged)
    eps, tiny = torch.finfo(source.dtype).eps, torch.finfo(source.dtype).tiny
    # What a fixed point's accuracy may be at worst (GMRES stops rows that stagnate at
    # round-off there).
    floor = max(settings.backward_eps, eps**0.25)
    parts = None  # `products` of the final state, where the check formed them
    tol = max(settings.backward_eps, 64 * torch.finfo(source.dtype).eps)
    method = settings.backward_method
    # The systems the forward's last polish solved are the direct method's, with H for
    # K, where the final active sets are the polished ones: no factorization at all.
    # Where they are not (a row estimated active whose multiplier came out zero, or no
    # polish of the whole batch with the final factor), the kept bases of H's systems
    # give the final sets' systems, a capacitance system per instance.
    # They may be of another factor, with its penalty R' (a layer's factor kept for
    # polishing): `adjoint_through_polish` converts.
    shared = data.P.shape[0] == 1 and C.shape[0] == 1 and r.shape[0] == 1
    polish_factor, polish_rows = factor, r
    if result.polish_factor is not None and result.polish_rows is not None:
        polish_factor, polish_rows = result.polish_factor, result.polish_rows
    polished, shared_data = result.polish_systems, polish_factor.memo.get("polish")
    if cones is not None and data.sparse and method != "fixed_point":
        # The sparse direct solves are of active rows' systems; the cones' Jacobians
        # are not 0/1: GMRES on the recursion.
        method = "gmres"
    if (
        method not in ("auto", "direct")
        or cones is not None
        or not (shared and isinstance(shared_data, SharedPolishData))
    ):
        polished = None
    elif polished is None or not torch.equal(polished.inactive, inactive):
        polished = shared_data.systems(inactive)
    measured = timings if timings is not None else factor.memo.setdefault("backward_seconds", {})
    # Where "auto" chooses GMRES on dense data, GMRES stops once it has cost what the
    # direct solve costs (measured, else predicted), and the direct solve takes the
    # instances it has not solved: a GMRES that needs thousands of steps costs at most
    # about twice the direct solve, once (the next call measures both).
    direct_price = None
    if method == "auto":
        # Sparse data: the active rows' sparse KKT systems, which GMRES on long chains of
        # constraints would need thousands of steps to match.
        if data.sparse or polished is not None:
            method = "direct"
        else:
            if cones is None:
                predicted = predicted_seconds(n, inactive, shared, result.rates)
            else:
                predicted = cone_predicted_seconds(n, jacobian.identity_rows(), result.rates)
            method = _cheaper_backward(
                measured,  # type: ignore[arg-type]
                inactive.shape[0],
                predicted,
            )
            direct_price = _scaled(measured, "direct", inactive.shape[0])  # type: ignore[arg-type]
            if direct_price is None and predicted is not None:
                direct_price = predicted[0]
    # sparse data: each instance's active rows' system, factored once for the direct
    # solve and the singularity tests
    systems = ActiveSystems(sparse_P(data), C) if data.sparse else None
    chosen = method

    def direct_solver() -> AdjointSolver | None:
        if polished is not None:
            return adjoint_through_polish(
                polish_factor,
                C,
                polish_rows,
                polished,
                shared_data.HinvCt,
                sigma,
                tol,
                r if polish_factor is not factor else None,
            )
        if cones is not None:
            return cone_adjoint(data.P, C, r, jacobian, sigma)
        return direct_adjoint(data.P, C, r, inactive, sigma, factor.memo, systems, multiplier_rows)

    if method == "direct":
        solver = direct_solver()
        candidates = torch.ones_like(converged)
        if solver is not None:
            guess, parts, accepted, iterations = _refined_direct(
                solver, step, products, source, tol, g_v.shape[1]
            )
            converged, candidates = accepted, ~accepted
            solved = bool(accepted.all())
            if solved:
                state = guess
            else:
                # GMRES starts the rejected instances afresh: from the factorization's
                # answer it would keep that answer's part in the null space.
                start = torch.where(accepted.unsqueeze(-1), measure(guess), source)
                state, parts = (start[:, :n], start[:, n:]), None
        method = "gmres"
    if method == "gmres" and not solved:
        deadline = None
        if direct_price is not None and chosen == "gmres":
            deadline = time.perf_counter() + direct_price

        def gmres(start: torch.Tensor, deadline: float | None) -> torch.Tensor:
            """GMRES from ``start`` on the instances not converged yet, alone."""
            nonlocal converged, iterations
            rows = torch.nonzero(~converged).flatten()
            step_of = adjoint_step_of(rows)

            def operator(w: torch.Tensor) -> torch.Tensor:
                return w - torch.cat(step_of(w[:, :n], w[:, n:]), dim=1)

            w_rows, matvecs, rows_converged = batched_gmres(
                operator,
                source[rows],
                start[rows],
                settings.backward_eps,
                settings.backward_max_iter - iterations,
                deadline=deadline,
            )
            w = start.clone()
            w[rows] = w_rows
            converged = converged.clone()
            converged[rows] = rows_converged
            iterations += matvecs
            return w

        w = gmres(start, deadline)
        state, solved = (w[:, :n], w[:, n:]), bool(converged.all())
        solver = None if solved or deadline is None else direct_solver()
        if solver is not None:  # the direct solve takes the instances GMRES left
            iterations += 1
            guess = solver(grad_x, g_v)
            accepted = _verified(solver, guess, step(guess), source, tol) & ~converged
            converged = converged | accepted
            # Those it rejects (a singular system) go on by GMRES from its own iterate,
            # to its end, as without the hand-over.
            w = torch.where(accepted.unsqueeze(-1), measure(guess), w)
            if not bool(converged.all()):
                w = gmres(w, None)
            state, solved = (w[:, :n], w[:, n:]), bool(converged.all())
    if not solved:
        # The plain recursion: the chosen method, or where GMRES could not solve the
        # system (a singular one, at a degenerate point), from GMRES's best iterate, on
        # the instances still unsolved.
        budget = settings.backward_max_iter - iterations
        rows = torch.nonzero(~converged).flatten()
        step_of, source_of = adjoint_step_of(rows), (grad_x[rows], g_v[rows])

        def unsolved_step(part: State) -> State:
            return tuple(a + b for a, b in zip(step_of(*part), source_of, strict=True))

        part, steps = _iterate(
            unsolved_step, tuple(v[rows] for v in state), measure, settings, max(budget, 0)
        )
        state = tuple(v.index_put((rows,), p) for v, p in zip(state, part, strict=True))
        iterations += steps
        # Which instances reached the fixed point: its residual, within the tolerance
        # or at round-off.
        parts = products(*state)
        fixed = measure(state)
        residual = (measure(step(state, parts)) - fixed).norm(dim=-1)
        size = 1 + fixed.norm(dim=-1)
        reached = torch.maximum(tol * (1 + source.norm(dim=-1)), 64 * eps * size)
        converged = converged | (residual <= reached)
    # A fixed point amplified beyond working precision (its error, about the
    # amplification times eps, above the floor) is no derivative: the system is
    # singular to rounding (a solution that is not unique, and a cotangent that moves
    # along it), and its huge "solution" is rounding amplified.
    amplification = measure(state).norm(dim=-1) / source.norm(dim=-1).clamp_min(tiny)
    reliable = amplification * eps <= floor
    converged = converged & reliable
    # The backward's time is work done with a kept factor, which pays for the setup
    # that lets later backwards go through the polish's systems instead.
    seconds = time.perf_counter() - started
    factor.ledger.work += seconds
    if polished is None and not data.sparse:
        measured[chosen] = (seconds, inactive.shape[0])
    a, c = state
    t, rCt = products(a, c) if parts is None else parts
    grad_P = grad_C = None
    if need_P:
        if isinstance(data.P, BatchedSparse):  # on P's pattern
            grad_P = -0.5 * (data.P.on_pattern(t, x) + data.P.on_pattern(x, t))
        else:
            grad_P = -0.5 * (t.unsqueeze(-1) * x.unsqueeze(-2) + x.unsqueeze(-1) * t.unsqueeze(-2))
    if need_C:
        if isinstance(C, BatchedSparse):
            grad_C = C.on_pattern(-y, t) + C.on_pattern(c - rCt, x)
        else:
            grad_C = -y.unsqueeze(-1) * t.unsqueeze(-2) + (c - rCt).unsqueeze(-1) * x.unsqueeze(-2)
    grad_bound = jacobian.complement(2 * rCt - c) + bound_from_dual
    if multiplier_rows is None:
        multiplier_rows = torch.ones_like(inactive)
    if chosen != "direct":
        rows = int((~inactive).sum(1).max()) if inactive.shape[0] else 0
        rows = rows if 4 * rows <= 3 * C.shape[1] else C.shape[1]  # as the test gathers
        if dense_test_flops(n, rows) <= iterations * step_flops(n, C.shape[1]):
            candidates = torch.ones_like(converged)
    if data.sparse:
        candidates = torch.ones_like(converged)
    if cones is not None:
        candidates = torch.zeros_like(converged)
    degenerate = singular_systems(data, inactive, candidates, multiplier_rows, grad_x, systems)
    if cones is None and weak is not None and bool(weak.any()):
        size = torch.maximum(measure(state).abs().amax(-1), source.abs().amax(-1))
        changes = pieces_differ(weak, inactive, c, rCt, g_v, size, settings.backward_eps**0.5)
        if bool(changes.any()):
            live = torch.ones_like(grad_x, dtype=torch.bool) if live_q is None else live_q
            changes = changes & ~absorbed(data, changes, inactive, grad_x, live, multiplier_rows)
        degenerate = degenerate | changes.any(-1)
        # Weakly active rows taken inactive whose other side gives the same fixed point:
        # that side's system must be regular too, or its multipliers are not unique.
        flipped = weak & inactive & ~changes
        others = flipped.any(-1) & ~degenerate
        if bool(others.any()):
            on_other_side = singular_systems(
                data, inactive & ~flipped, others, multiplier_rows, grad_x, systems
            )
            degenerate = degenerate | on_other_side
    return DataGradients(
        P=grad_P,
        q=-t,
        C=grad_C,
        bound=grad_bound,
        iterations=iterations,
        converged=converged,
        singular=~reliable,
        degenerate=degenerate,
    )


@dataclass(frozen=True)
class DataTangents:
    """Directions in data space, one per column k of a trailing dimension K.

    Attributes:
        P: ``(1|B, n, n, K)``.  q: ``(1|B, n, K)``.  C: ``(1|B, m, n, K)``.
        bound: ``(1|B, m, K)``.
    """

    P: torch.Tensor
    q: torch.Tensor
    C: torch.Tensor
    bound: torch.Tensor


class ForwardTangents:
    """Forward-mode Alt-Diff: carries ``d(x, z, y) / d(theta)`` alongside ADMM.

    Each ADMM step calls `advance` with the quantities of that step, so that the
    tangents follow exactly the iteration that runs (relaxation and penalty changes
    included); `finish` then continues the recursion at the solver's fixed
    point until the tangents settle.
    """

    def __init__(self, data: QPData, tangents: DataTangents, settings: SolverSettings) -> None:
        self.data, self.tangents, self.settings = data, tangents, settings
        B, n, m, K = data.batch_size, data.n, data.C.shape[1], tangents.q.shape[-1]
        zeros = data.q.new_zeros
        self.dx, self.dz, self.dy = zeros(B, n, K), zeros(B, m, K), zeros(B, m, K)
        self.out_dx, self.out_dz, self.out_dy = self.dx, self.dz, self.dy
        self._C = data.C
        self.iterations = 0

    def _step(
        self,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        z: torch.Tensor,
        y: torch.Tensor,
        x_tilde: torch.Tensor,
        rho_rows: torch.Tensor,
        factor: CholeskyFactor,
        alpha: float,
        jacobian: ProjectionJacobian,
        at_fixed_point: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiate one ADMM step (see ``admm_solve``) in the tangent directions.

        Maps the tangents ``(dx (B, n, K), dz (B, m, K), dy (B, m, K))`` before the step
        to those after it: an affine map, linear in the state plus the data tangents.
        """
        dx, dz, dy = state
        d, C = self.tangents, self._C
        B = x_tilde.shape[0]
        dC = d.C.expand(B, *d.C.shape[1:])
        dC_xt = torch.einsum("bmjk,bj->bmk", dC, x_tilde)
        dP_xt = torch.einsum("bijk,bj->bik", d.P.expand(B, *d.P.shape[1:]), x_tilde)
        r = rho_rows.unsqueeze(-1)
        # d[C'(r z - y) - H x~] with H = P + sigma I + C' r C, split by what varies.
        # At the fixed point z = C x~ holds exactly; using it, rather than
        # the iterate's residual times the stiff equality penalty, matches reverse mode.
        w = -y if at_fixed_point else rho_rows * (z - matvec(C, x_tilde)) - y
        rhs = (
            self.settings.sigma * dx
            - d.q
            + torch.einsum("bmjk,bm->bjk", dC, w)
            + C.transpose(-1, -2) @ (r * dz - dy - r * dC_xt)
            - dP_xt
        )
        dx_tilde = factor.solve(rhs)
        dv = alpha * (dC_xt + C @ dx_tilde) + (1 - alpha) * dz + dy / r
        dz_next = jacobian.mix(dv, d.bound.expand_as(dv))
        return alpha * dx_tilde + (1 - alpha) * dx, dz_next, r * (dv - dz_next)

    def advance(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        x_tilde: torch.Tensor,
        v: torch.Tensor,
        rho_rows: torch.Tensor,
        factor: CholeskyFactor,
    ) -> None:
        """One lockstep step; the arguments are those of the ADMM step being taken."""
        data = self.data
        jacobian = ProjectionJacobian.at_point(v, data.bound, data.n_eq, data.cones)
        state = (self.dx, self.dz, self.dy)
        alpha = self.settings.alpha
        self.dx, self.dz, self.dy = self._step(
            state, z, y, x_tilde, rho_rows, factor, alpha, jacobian
        )
        self.iterations += 1

    def record(self, newly: torch.Tensor) -> None:
        """Keep the tangents of the instances that converged at this step."""
        mask = newly[:, None, None]
        self.out_dx = torch.where(mask, self.dx, self.out_dx)
        self.out_dz = torch.where(mask, self.dz, self.out_dz)
        self.out_dy = torch.where(mask, self.dy, self.out_dy)

    def finish(self, result: SolveResult) -> torch.Tensor:
        """Solve for the tangents at the solver's fixed point; return ``dx`` ``(B, n, K)``.

        The tangents are the fixed point of the linearized step ``s <- M s + N``. GMRES
        on ``(I - M) s = N`` (the default ``backward_method``) reaches it in far fewer
        steps than the plain recursion, whose rate is ADMM's and can be 0.9999; both
        start from the tangents carried alongside the iterations.
        """
        x, z, y, r = result.x, result.z, result.y, result.rho_rows
        data = self.data
        jacobian = ProjectionJacobian.at_solution(z, y, r, data.bound, data.n_eq, data.cones)
        settings = self.settings

        def step(state: State) -> State:
            return self._step(state, z, y, x, r, result.factor, 1.0, jacobian, True)

        state, steps, solved = (self.out_dx, self.out_dz, self.out_dy), 0, False
        if settings.backward_method != "fixed_point":
            state, steps, solved = self._solve_fixed_point(step, r, jacobian)
        if not solved:
            # The plain recursion: the chosen method, or where GMRES could not solve the
            # system (a singular one, at a degenerate point), from GMRES's best iterate.
            budget = max(settings.backward_max_iter - steps, 0)
            state, more = _iterate(step, state, lambda s: s[0].flatten(1), settings, budget)
            steps += more
        self.iterations += steps
        self.dx, self.dz, self.dy = state
        return self.dx

    def _solve_fixed_point(
        self,
        step: Callable[[State], State],
        rho_rows: torch.Tensor,
        jacobian: ProjectionJacobian,
    ) -> tuple[State, int, bool]:
        """GMRES on ``s - (T(s) - T(0)) = T(0)``, one system per instance and direction.

        The unknown is ``s = (dx, dv)`` with ``v = z + y / r``, from which ``dz`` and
        ``dy`` follow; unlike ``dy`` (``r`` times larger on stiff rows) it is scaled
        like ``dx``, so that GMRES's residual is not dominated by round-off in ``dy``.
        """
        B, n, K = self.out_dx.shape
        m = self.out_dz.shape[1]
        r = rho_rows.unsqueeze(-1)
        bound = self.tangents.bound

        def to_state(dx: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, ...]:
            dz = jacobian.mix(dv, bound.expand_as(dv))
            return dx, dz, r * (dv - dz)

        def unpack(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            columns = flat.reshape(B, K, n + m).transpose(1, 2)
            return columns[:, :n], columns[:, n:]

        def apply(flat: torch.Tensor) -> torch.Tensor:
            dx, dz, dy = step(to_state(*unpack(flat)))
            dv = dz + dy / r
            return torch.cat([dx, dv], dim=1).transpose(1, 2).reshape(B * K, n + m)

        start = torch.cat([self.out_dx, self.out_dz + self.out_dy / r], dim=1)
        start = start.transpose(1, 2).reshape(B * K, n + m)
        source = apply(torch.zeros_like(start))

        def operator(flat: torch.Tensor) -> torch.Tensor:
            return flat - (apply(flat) - source)

        settings = self.settings
        solution, steps, converged = batched_gmres(
            operator, source, start, settings.backward_eps, settings.backward_max_iter
        )
        return to_state(*unpack(solution)), steps, bool(converged.all())
