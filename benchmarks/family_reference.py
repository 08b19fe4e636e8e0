"""Draws and references for the cases of ``benchmarks/layer_families.py``.

``draw(case)`` draws every call's parameter values and loss weights once, so that every
method sees the same data. ``compute_reference(case, data)`` solves a spread-out subset
of the (call, instance) pairs:

* cases with a raw-QP form: Clarabel at the tests' tight tolerances on that QP
  (``peers.clarabel_qp``), gradients by implicit differentiation of its KKT conditions
  (``peers.kkt_reference_gradient``), carried to the user's parameters by autograd
  through the case's torch QP builder. Two checks tie the raw QP to the CVXPY problem:
  the CVXPY problem solved by ``tests/reference.solve_reference`` must give the same
  solution, and a central finite difference of the CVXPY problem along a random
  direction must match the reference gradient's directional derivative.
* cases with second-order cones (family g, ``Case.conic``): Clarabel at the same
  tolerances on the cone program, polished by Newton steps on its KKT conditions
  (stationarity, primal feasibility and the Jordan product ``s o z = 0`` of every cone:
  Clarabel's own x is only about 1e-5 accurate on these), gradients by implicit
  differentiation of the same conditions (``conic_reference``), carried back by
  autograd in the same way. The two checks against the CVXPY problem use CVXPY's own
  cone program (``get_problem_data``), solved and polished the same way.
* cases without either (the large sparse problems): the CVXPY problem solved by
  ``tests/reference.solve_reference``, and a central finite difference along a random
  direction, which the methods' directional derivatives are compared with.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from layer_families import Case, LayerProblem

BLOCKS = ("P", "q", "A", "b", "G", "h")
BASE_NDIM = {"P": 2, "q": 1, "A": 2, "b": 1, "G": 2, "h": 1}
#: Where the raw QP's and the CVXPY problem's solutions may differ (both at 1e-12).
CONSISTENCY_TOL = 1e-6
#: Relative step of the directional finite differences (direction scaled like each
#: parameter's values).
FD_STEP = 1e-5
#: Cross-check the raw QP against CVXPY only up to this many QP variables (CVXPY's
#: canonicalization of a dense P takes minutes beyond).
CROSSCHECK_MAX_N = 2000
#: The conic reference has a unique gradient where every cone is strictly complementary
#: (``lambda_min(s + z)`` at least this; the polished solution is accurate to about
#: 1e-13) and
#: its KKT matrix is nonsingular (smallest over largest singular value at least
#: ``CONIC_RCOND_MIN``).
CONIC_MARGIN_MIN = 1e-7
CONIC_RCOND_MIN = 1e-12
#: Newton steps that polish Clarabel's cone-program solutions (``solve_conic``), and the
#: KKT residual below which the polished point replaces Clarabel's.
POLISH_STEPS = 8
POLISH_RESIDUAL = 1e-10


def draw(case: Case, problem: LayerProblem) -> dict[str, np.ndarray]:
    """Every call's parameter values ``p<k>`` ``(calls, [B,] *shape)`` and loss weights
    ``w`` ``(calls, [B,] *variable shape)``, standard normal, from ``case.seed``."""
    rng = np.random.default_rng(case.seed)
    calls = [case.sample(rng) for _ in range(case.calls)]
    data = {f"p{k}": np.stack([c[k] for c in calls]) for k in range(len(calls[0]))}
    lead = (case.batch,) if case.batch else ()
    data["w"] = rng.standard_normal((case.calls, *lead, *problem.variable.shape))
    return data


def reference_pairs(case: Case) -> list[tuple[int, int]]:
    """The (call, instance) pairs that get a reference: ``ref_instances`` instances of
    ``ref_calls`` calls spread evenly over all calls (the warm-up call included)."""
    count = min(case.ref_calls, case.calls)
    calls = sorted({round(c) for c in np.linspace(0, case.calls - 1, count)})
    instances = range(min(case.ref_instances, case.batch or 1))
    return [(c, i) for c in calls for i in instances]


def instance_values(
    case: Case, data: dict, call: int, i: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Parameter values and loss weights of instance ``i`` of ``call``."""
    count = sum(1 for k in data if k.startswith("p"))
    if case.batch:
        return [data[f"p{k}"][call, i] for k in range(count)], data["w"][call, i]
    return [data[f"p{k}"][call] for k in range(count)], data["w"][call]


def _numpy_blocks(blocks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """One instance's blocks as numpy (dropping a batch dimension of one)."""
    out = {}
    for k in BLOCKS:
        v = blocks[k].detach()
        out[k] = (v[0] if v.ndim > BASE_NDIM[k] else v).numpy()
    return out


def _qp_weights(case: Case, n: int, w: np.ndarray) -> np.ndarray:
    """``d<w, qp_output(x)>/dx``: the loss weights on the QP's variables."""
    x = torch.zeros(1, n, dtype=torch.float64, requires_grad=True)
    out = case.qp_output(x)[0]
    (g,) = torch.autograd.grad((torch.from_numpy(w) * out).sum(), x)
    return g[0].numpy()


def qp_reference(case: Case, values: list[np.ndarray], w: np.ndarray) -> dict:
    """Solution and parameter gradients of one instance through its raw QP."""
    from peers import clarabel_qp, kkt_reference_gradient

    params = _instance_params(case, values)
    blocks = case.qp(params)
    d = _numpy_blocks(blocks)
    x, lam, nu, status = clarabel_qp(d["P"], d["q"], d["A"], d["b"], d["G"], d["h"])
    x_user = case.qp_output(torch.from_numpy(x)[None])[0].numpy()
    out = {"x": x_user, "status": status, "n_qp": x.size}
    if case.least_squares_reference and any(blocks[k].requires_grad for k in BLOCKS[2:]):
        raise ValueError(
            f"{case.name}: a least-squares KKT reference needs parameters in P, q only"
        )
    try:
        grads, tol = kkt_reference_gradient(
            d, x, lam, nu, _qp_weights(case, x.size, w), least_squares=case.least_squares_reference
        )
    except (ValueError, np.linalg.LinAlgError) as exc:
        out["gradient_unavailable"] = f"{type(exc).__name__}: {exc}"
        return out
    outputs, cotangents = [], []
    for k, g in zip(BLOCKS, grads):
        if g is not None and blocks[k].requires_grad:
            outputs.append(blocks[k])
            cotangents.append(torch.from_numpy(np.ascontiguousarray(g)).reshape(blocks[k].shape))
    pg = torch.autograd.grad(outputs, params, cotangents, allow_unused=True)
    out["grads"] = [
        (torch.zeros_like(p) if g is None else g).detach().reshape(np.shape(v)).numpy()
        for g, p, v in zip(pg, params, values)
    ]
    out["active_tol"] = tol
    slack = d["h"] - d["G"] @ x
    out["complementarity"] = float(np.min(np.maximum(slack, nu))) if slack.size else float("inf")
    return out


def _instance_params(case: Case, values: list[np.ndarray]) -> list[torch.Tensor]:
    """One instance's parameter tensors as a layer gets them (a batch of one)."""
    lead = (1,) if case.batch else ()
    return [
        torch.from_numpy(np.array(v).reshape(*lead, *np.shape(v))).requires_grad_() for v in values
    ]


def _instance_blocks(blocks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One instance's blocks (dropping a batch dimension of one), still differentiable."""
    return {k: blocks[k][0] if blocks[k].ndim > BASE_NDIM[k] else blocks[k] for k in BLOCKS}


def jordan_product(s: torch.Tensor, z: torch.Tensor, cones) -> torch.Tensor:
    """``s o z`` cone by cone: entrywise on ``("l", m)``, ``(s'z, s0 z1 + z0 s1)`` on a
    second-order cone ``("q", d)``; zero exactly when the pair is complementary."""
    parts, start = [], 0
    for kind, dim in cones:
        a, b = s[start : start + dim], z[start : start + dim]
        if kind == "l":
            parts.append(a * b)
        else:
            parts.append(torch.cat([(a @ b).reshape(1), a[0] * b[1:] + b[0] * a[1:]]))
        start += dim
    return torch.cat(parts)


def lambda_min(u: np.ndarray, cones) -> float:
    """The smallest eigenvalue of ``u`` in K: its smallest entry on ``("l", m)``, ``u0 -
    ||u1||`` on a second-order cone; ``u`` is in K exactly where it is nonnegative, and
    a pair ``s, z`` is strictly complementary exactly where ``lambda_min(s + z) > 0``."""
    values, start = [], 0
    for kind, dim in cones:
        a = u[start : start + dim]
        values.append(float(a.min()) if kind == "l" else float(a[0] - np.linalg.norm(a[1:])))
        start += dim
    return min(values, default=float("inf"))


def kkt_residual(v: torch.Tensor, blocks: dict[str, torch.Tensor], cones) -> torch.Tensor:
    """``F(x, y, z) = (Px + q + A'y + G'z, Ax - b, s o z)`` with ``s = h - Gx``: the KKT
    conditions of ``min 1/2 x'Px + q'x s.t. Ax = b, h - Gx in K`` (``z in K`` the
    multipliers of the cone rows, y those of the equalities), given ``s, z in K``."""
    n, p = blocks["q"].shape[-1], blocks["b"].shape[-1]
    x, y, z = v[:n], v[n : n + p], v[n + p :]
    stationarity = blocks["P"] @ x + blocks["q"] + blocks["A"].T @ y + blocks["G"].T @ z
    slack = blocks["h"] - blocks["G"] @ x
    return torch.cat([stationarity, blocks["A"] @ x - blocks["b"], jordan_product(slack, z, cones)])


def _kkt_jacobian(v: torch.Tensor, blocks: dict[str, torch.Tensor], cones) -> np.ndarray:
    """``dF/d(x, y, z)`` of :func:`kkt_residual` at ``v``, the blocks held fixed."""
    fixed = {k: t.detach() for k, t in blocks.items()}
    jac = torch.autograd.functional.jacobian(
        lambda u: kkt_residual(u, fixed, cones), v, vectorize=True
    )
    return jac.numpy()


def solve_conic(blocks: dict[str, torch.Tensor], cones) -> dict:
    """One cone program's solution: Clarabel at the tests' tight tolerances, then Newton
    steps on ``kkt_residual`` (at most ``POLISH_STEPS``, kept while the residual falls).

    Clarabel's solutions of these programs are accurate to only about 1e-6..1e-4 where
    a cone is active (its status says ``Solved`` or ``AlmostSolved`` alike: the error
    in x is of the order of the square root of its gap), while at a strictly
    complementary, nondegenerate solution Newton's method on the KKT system converges
    quadratically from there. The polished point is kept only if its residual is below
    ``POLISH_RESIDUAL`` and s and z are still in K.
    """
    from peers import clarabel_qp

    single = [k for k, t in blocks.items() if t.dtype != torch.float64]
    if single:  # a constant made by torch.tensor(...) in float32 would be rounded
        raise TypeError(f"cone program blocks {single} are not float64")
    d = {k: t.detach().numpy() for k, t in blocks.items()}
    x, y, z, status = clarabel_qp(d["P"], d["q"], d["A"], d["b"], d["G"], d["h"], cones=cones)
    v = torch.from_numpy(np.concatenate([x, y, z]))
    fixed = {k: t.detach() for k, t in blocks.items()}

    def norm(u: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(kkt_residual(u, fixed, cones)))

    start = best = norm(v)
    for _ in range(POLISH_STEPS):
        step = np.linalg.lstsq(
            _kkt_jacobian(v, fixed, cones), kkt_residual(v, fixed, cones).numpy(), rcond=None
        )[0]
        trial = v - torch.from_numpy(step)
        if norm(trial) >= best:
            break
        v, best = trial, norm(trial)
    n, p = x.size, y.size
    xp, zp = v[:n].numpy(), v[n + p :].numpy()
    inside = min(lambda_min(d["h"] - d["G"] @ xp, cones), lambda_min(zp, cones))
    polished = best <= POLISH_RESIDUAL and inside >= -POLISH_RESIDUAL
    if not polished:
        v = torch.from_numpy(np.concatenate([x, y, z]))
    return {
        "v": v,
        "x": v[:n].numpy(),
        "status": f"{status}{', polished' if polished else ', not polished'}",
        "residual": best if polished else start,
    }


def conic_reference(case: Case, values: list[np.ndarray], w: np.ndarray) -> dict:
    """Solution and parameter gradients of one instance through its cone program.

    The solution: :func:`solve_conic`. The gradient: with the KKT conditions
    ``F(x, y, z; theta) = 0`` of :func:`kkt_residual`, where the solution is strictly
    complementary and nondegenerate, dF/d(x, y, z) is nonsingular and the implicit
    function theorem gives ``dL/dtheta = -u' dF/dtheta`` with ``(dF/d(x, y, z))' u =
    (dL/dx, 0, 0)``; autograd through ``case.conic`` carries it to the user's parameters.
    """
    params = _instance_params(case, values)
    blocks = _instance_blocks(case.conic(params))
    sol = solve_conic(blocks, case.cones)
    x, v = sol["x"], sol["v"]
    x_user = case.qp_output(torch.from_numpy(x)[None])[0].numpy()
    out = {"x": x_user, "status": sol["status"], "n_qp": x.size, "kkt_residual": sol["residual"]}
    J = _kkt_jacobian(v, blocks, case.cones)
    singular = np.linalg.svd(J, compute_uv=False)
    out["kkt_rcond"] = float(singular[-1] / singular[0])
    n, p = x.size, blocks["b"].shape[-1]
    slack = (blocks["h"] - blocks["G"] @ v[:n]).detach().numpy()
    out["complementarity"] = lambda_min(slack + v[n + p :].numpy(), case.cones)
    if out["complementarity"] < CONIC_MARGIN_MIN or out["kkt_rcond"] < CONIC_RCOND_MIN:
        out["gradient_unavailable"] = (
            f"no unique derivative: cone margin {out['complementarity']:.2g}, "
            f"KKT rcond {out['kkt_rcond']:.2g}"
        )
        return out
    rhs = np.concatenate([_qp_weights(case, n, w), np.zeros(J.shape[0] - n)])
    u = torch.from_numpy(np.linalg.solve(J.T, rhs))
    pg = torch.autograd.grad(kkt_residual(v, blocks, case.cones), params, -u, allow_unused=True)
    out["grads"] = [
        (torch.zeros_like(q) if g is None else g).detach().reshape(np.shape(val)).numpy()
        for g, q, val in zip(pg, params, values)
    ]
    return out


def cvxpy_conic_solution(problem: LayerProblem, values: list[np.ndarray]) -> np.ndarray:
    """The user's variable at the solution of CVXPY's own cone program of the problem
    (``get_problem_data(cp.CLARABEL)``: CVXPY's canonicalization, not the case's
    hand-written ``conic``), solved by :func:`solve_conic`.

    ``tests/reference.solve_reference`` would not do: Clarabel through CVXPY ends these
    problems ``optimal_inaccurate``, or ``optimal`` with x about 1e-5 off.
    """
    import cvxpy as cp
    import scipy.sparse as sp

    previous = {q: q.value for q in problem.parameters}
    try:
        for q, val in zip(problem.parameters, values):
            q.value = np.asarray(val, dtype=np.float64)
        data, _, inverse = problem.problem.get_problem_data(cp.CLARABEL)
    finally:
        for q, val in previous.items():
            q.value = val
    dims = data["dims"]
    if dims.exp or dims.psd or dims.p3d or dims.pnd:
        raise ValueError(f"CVXPY's cone program has cones other than SOC: {dims}")
    if data.get("lower_bounds") is not None or data.get("upper_bounds") is not None:
        raise ValueError("CVXPY's cone program has variable bounds (not read here)")
    A_all = sp.csr_array(data["A"]).toarray()
    b_all = np.asarray(data["b"], dtype=np.float64)
    n = A_all.shape[1]
    P = sp.csr_array(data["P"]).toarray() if data.get("P") is not None else np.zeros((n, n))
    if not np.allclose(P, P.T):  # an upper triangle
        P = P + P.T - np.diag(np.diag(P))
    p = dims.zero
    blocks = {
        "P": P,
        "q": np.asarray(data["c"], dtype=np.float64),
        "A": A_all[:p],
        "b": b_all[:p],
        "G": A_all[p:],
        "h": b_all[p:],
    }
    cones = (("l", dims.nonneg),) if dims.nonneg else ()
    cones += tuple(("q", k) for k in dims.soc)
    sol = solve_conic(
        {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in blocks.items()}, cones
    )
    offset = next(i.var_offsets for i in reversed(inverse) if hasattr(i, "var_offsets"))
    start = offset[problem.variable.id]
    size = problem.variable.size
    return sol["x"][start : start + size].reshape(problem.variable.shape, order="F")


def cvxpy_conic_checks(
    problem: LayerProblem,
    values: list[np.ndarray],
    w: np.ndarray,
    direction: list[np.ndarray],
) -> tuple[np.ndarray, float]:
    """:func:`cvxpy_checks` for a cone program: the solution of CVXPY's own cone program
    and the central finite difference of ``<w, x*>`` along ``direction``, each from
    :func:`cvxpy_conic_solution`."""
    x = cvxpy_conic_solution(problem, values)
    losses = []
    for sign in (1.0, -1.0):
        shifted = [v + sign * FD_STEP * dv for v, dv in zip(values, direction)]
        losses.append(float(np.sum(w * cvxpy_conic_solution(problem, shifted))))
    return x, (losses[0] - losses[1]) / (2 * FD_STEP)


def _direction(rng: np.random.Generator, values: list[np.ndarray]) -> list[np.ndarray]:
    """A random direction scaled like each parameter's values (RMS)."""
    return [
        rng.standard_normal(np.shape(v)) * max(float(np.sqrt(np.mean(np.square(v)))), 1e-12)
        for v in values
    ]


def cvxpy_checks(
    problem: LayerProblem,
    values: list[np.ndarray],
    w: np.ndarray,
    direction: list[np.ndarray],
) -> tuple[np.ndarray, float]:
    """The CVXPY problem's tight solution and the central finite difference of
    ``<w, x*>`` along ``direction`` (step ``FD_STEP``)."""
    from reference import directional_finite_difference, solve_reference

    mapping = dict(zip(problem.parameters, values))
    (x,) = solve_reference(problem.problem, mapping, [problem.variable])
    fd = directional_finite_difference(
        problem.problem,
        mapping,
        [problem.variable],
        [w],
        dict(zip(problem.parameters, direction)),
        step=FD_STEP,
    )
    return x, fd


def compute_reference(case: Case, problem: LayerProblem, data: dict, log=print) -> dict:
    """References for ``reference_pairs(case)``, as arrays for ``np.savez``.

    Keys: ``pairs`` ``(J, 2)``; ``x`` ``(J, *variable shape)``; with a raw QP or a cone
    program, ``g<k>`` (the gradient w.r.t. parameter k, NaN where unavailable) and
    ``valid`` ``(J,)``; without either, ``dir<k>`` and ``fd`` ``(J,)``; ``info``: a JSON
    string with the gradient reference's kind, the statuses, the smallest
    complementarity margin, the cross-checks and the time taken.

    Raises:
        RuntimeError: The raw QP and the CVXPY problem disagree (a bug of the case).
    """
    start = time.perf_counter()
    pairs = reference_pairs(case)
    rng = np.random.default_rng(case.seed + 1)
    xs, grads, valid, dirs, fds = [], [], [], [], []
    directional = case.qp is None and case.conic is None
    kind = "conic KKT" if case.conic is not None else "KKT" if case.qp is not None else "FD"
    info: dict = {
        "pairs": len(pairs),
        "gradient_reference": kind,
        "statuses": [],
        "unavailable": [],
    }
    margins, tols, rconds, residuals, amplification = [], [], [], [], []
    for j, (c, i) in enumerate(pairs):
        values, w = instance_values(case, data, c, i)
        if directional:
            direction = _direction(rng, values)
            x, fd = cvxpy_checks(problem, values, w, direction)
            xs.append(x)
            dirs.append(direction)
            fds.append(fd)
            continue
        if case.qp is not None:
            ref = qp_reference(case, values, w)
        else:
            ref = conic_reference(case, values, w)
            rconds.append(ref["kkt_rcond"])
            residuals.append(ref["kkt_residual"])
        info["statuses"].append(ref["status"])
        xs.append(ref["x"])
        if "grads" in ref:
            grads.append(ref["grads"])
            valid.append(True)
            margins.append(ref["complementarity"])
            if "active_tol" in ref:
                tols.append(ref["active_tol"])
            norm = np.sqrt(sum(float(np.sum(g**2)) for g in ref["grads"]))
            amplification.append(norm / max(float(np.linalg.norm(w)), 1e-300))
        else:
            grads.append([np.full(np.shape(v), np.nan) for v in values])
            valid.append(False)
            info["unavailable"].append([c, i, ref["gradient_unavailable"]])
        if j < 2 and ref["n_qp"] <= CROSSCHECK_MAX_N:
            direction = _direction(rng, values)
            checks = cvxpy_checks if case.conic is None else cvxpy_conic_checks
            x_cvxpy, fd = checks(problem, values, w, direction)
            diff = float(np.linalg.norm(x_cvxpy - ref["x"]) / max(np.linalg.norm(ref["x"]), 1e-12))
            info.setdefault("crosscheck_solution", []).append(diff)
            if diff > CONSISTENCY_TOL:
                raise RuntimeError(
                    f"{case.name}: the raw QP's solution is {diff:.2g} from the CVXPY problem's"
                )
            if "grads" in ref:
                derivative = sum(float(np.sum(g * v)) for g, v in zip(ref["grads"], direction))
                info.setdefault("crosscheck_fd", []).append([derivative, fd])
    out: dict = {"pairs": np.array(pairs, dtype=np.int64), "x": np.stack(xs)}
    if directional:
        for k in range(len(dirs[0])):
            out[f"dir{k}"] = np.stack([d[k] for d in dirs])
        out["fd"] = np.array(fds)
    else:
        for k in range(len(grads[0])):
            out[f"g{k}"] = np.stack([g[k] for g in grads])
        out["valid"] = np.array(valid)
    info["statuses"] = sorted(set(info["statuses"]))
    info["complementarity_min"] = min(margins) if margins else None
    info["active_tol_max"] = max(tols) if tols else None
    if rconds:
        info["kkt_rcond_min"] = min(rconds)
        info["kkt_residual_max"] = max(residuals)
    info["amplification_max"] = max(amplification) if amplification else None
    info["seconds"] = time.perf_counter() - start
    out["info"] = np.array(json.dumps(info))
    log(f"  reference {case.name}: {json.dumps(info)[:400]}")
    return out
