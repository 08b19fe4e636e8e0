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
* cases without one (the large sparse problems): the CVXPY problem solved by
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

    lead = (1,) if case.batch else ()
    params = [
        torch.from_numpy(np.array(v).reshape(*lead, *np.shape(v))).requires_grad_() for v in values
    ]
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

    Keys: ``pairs`` ``(J, 2)``; ``x`` ``(J, *variable shape)``; with a raw QP, ``g<k>``
    (the gradient w.r.t. parameter k, NaN where unavailable) and ``valid`` ``(J,)``;
    without one, ``dir<k>`` and ``fd`` ``(J,)``; ``info``: a JSON string with the
    statuses, the smallest complementarity margin, the cross-checks and the time taken.

    Raises:
        RuntimeError: The raw QP and the CVXPY problem disagree (a bug of the case).
    """
    start = time.perf_counter()
    pairs = reference_pairs(case)
    rng = np.random.default_rng(case.seed + 1)
    xs, grads, valid, dirs, fds = [], [], [], [], []
    info: dict = {"pairs": len(pairs), "statuses": [], "unavailable": []}
    margins, tols, amplification = [], [], []
    for j, (c, i) in enumerate(pairs):
        values, w = instance_values(case, data, c, i)
        if case.qp is None:
            direction = _direction(rng, values)
            x, fd = cvxpy_checks(problem, values, w, direction)
            xs.append(x)
            dirs.append(direction)
            fds.append(fd)
            continue
        ref = qp_reference(case, values, w)
        info["statuses"].append(ref["status"])
        xs.append(ref["x"])
        if "grads" in ref:
            grads.append(ref["grads"])
            valid.append(True)
            margins.append(ref["complementarity"])
            tols.append(ref["active_tol"])
            norm = np.sqrt(sum(float(np.sum(g**2)) for g in ref["grads"]))
            amplification.append(norm / max(float(np.linalg.norm(w)), 1e-300))
        else:
            grads.append([np.full(np.shape(v), np.nan) for v in values])
            valid.append(False)
            info["unavailable"].append([c, i, ref["gradient_unavailable"]])
        if j < 2 and ref["n_qp"] <= CROSSCHECK_MAX_N:
            direction = _direction(rng, values)
            x_cvxpy, fd = cvxpy_checks(problem, values, w, direction)
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
    if case.qp is None:
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
    info["amplification_max"] = max(amplification) if amplification else None
    info["seconds"] = time.perf_counter() - start
    out["info"] = np.array(json.dumps(info))
    log(f"  reference {case.name}: {json.dumps(info)[:400]}")
    return out
