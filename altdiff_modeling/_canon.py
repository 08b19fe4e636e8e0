"""Canonicalization: a CVXPY problem to a ParametricQP. The only module that touches
CVXPY's internals.

CVXPY (>= 1.9) reduces a DPP problem to ``min 1/2 x'Px + q'x + d  s.t.
AF x + bg in Zero x NonNeg x SOC``, each entry an affine function of its own parameter
vector (``ParamConeProg``). This module reads those affine maps, splits the cone rows into
``A = AF[:n_eq]``, ``b = -bg[:n_eq]``, ``G = -AF[n_eq:]``, ``h = bg[n_eq:]`` (the last
rows of G those of the second-order cones, ``h - Gx`` in each), and rewrites
them over the *user's* parameter vector (the user's parameters flattened column-major in
the order given), composing CVXPY's replacement of symmetric, PSD, diagonal and sparse
parameters by reduced ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
from cvxpy.constraints import SOC, Equality, Inequality, NonNeg, NonPos, Zero
from cvxpy.utilities import scopes

from ._describe import Names, offending_atoms
from ._errors import InputError, ProblemError
from ._parametric import AffineBlock, ParameterSpec, ParametricQP, VariableSpec

__all__ = ["CanonicalForm", "ConeProgram", "canonicalize", "dense_qp", "reduce_problem"]

_SYMMETRIC_ATTRIBUTES = ("symmetric", "PSD", "NSD")
_DIM_REDUCING_ATTRIBUTES = (*_SYMMETRIC_ATTRIBUTES, "diag")
# Attributes that DCP relies on for convexity: a call checks the tensors against them.
_CHECKED_ATTRIBUTES = ("nonneg", "nonpos", "pos", "neg", "PSD", "NSD")


_CONE_WORDS = {
    "ExpCone": "an exponential cone (ExpCone)",
    "PSD": "a semidefinite cone (PSD)",
    "SvecPSD": "a semidefinite cone (PSD)",
    "PowCone3D": "a power cone (PowCone3D)",
    "PowConeND": "a power cone (PowConeND)",
}


def _check_lists(
    problem: cp.Problem, parameters: Sequence[Any], variables: Sequence[Any], names: Names
) -> None:
    if not isinstance(problem, cp.Problem):
        raise ProblemError(f"problem must be a cvxpy.Problem, got {type(problem).__name__}")
    for kind, items, cls in (
        ("parameters", parameters, cp.Parameter),
        ("variables", variables, cp.Variable),
    ):
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise ProblemError(
                f"{kind} must be a list of cvxpy {cls.__name__}s, got {type(items).__name__}"
            )
        for position, item in enumerate(items):
            if not isinstance(item, cls):
                raise ProblemError(
                    f"{kind}[{position}] must be a cvxpy {cls.__name__}, got {type(item).__name__}"
                )
        seen: set[int] = set()
        for position, item in enumerate(items):
            if item.id in seen:
                label = names.parameter(item) if kind == "parameters" else names.variable(item)
                raise ProblemError(f"{label} appears twice in {kind} (again at {kind}[{position}])")
            seen.add(item.id)

    in_problem = {param.id: param for param in problem.parameters()}
    given = {param.id for param in parameters}
    extra = [names.leaf(param) for param in parameters if param.id not in in_problem]
    missing = [names.leaf(param) for pid, param in in_problem.items() if pid not in given]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"not in the problem: {extra}")
        if missing:
            parts.append(f"in the problem but not listed: {missing}")
        raise ProblemError(
            "The layer's parameters must exactly match problem.parameters() (every "
            "parameter of the problem, each once, in the order a call takes them); "
            + "; ".join(parts)
        )
    if not problem.parameters():
        raise ProblemError(
            "the problem has no parameters: a layer needs at least one cp.Parameter to "
            "take its inputs (without one its output is a constant)"
        )
    problem_vars = {var.id for var in problem.variables()}
    if not problem_vars:
        raise ProblemError("the problem has no variables")
    duals = _dual_owners(problem)
    absent = [
        names.leaf(var) for var in variables if var.id not in problem_vars and var.id not in duals
    ]
    if absent:
        raise ProblemError(
            f"variables {absent} do not appear in the problem: the layer's variables must be "
            "a subset of problem.variables(), or constraint.dual_variables[0] for a "
            "constraint's multipliers"
        )
    if not variables:
        raise ProblemError("variables must name at least one variable of the problem")
    for var in problem.variables():
        for attribute in ("integer", "boolean"):
            if var.attributes.get(attribute):
                raise ProblemError(
                    f"{names.variable(var)} is {attribute}; only continuous problems can be "
                    "differentiated"
                )
        if var.attributes.get("PSD") or var.attributes.get("NSD"):
            raise ProblemError(
                f"{names.variable(var)} is declared PSD/NSD, which needs a semidefinite cone; "
                "only problems with linear and second-order cone constraints are supported"
            )


def _dual_owners(problem: cp.Problem) -> dict[int, int]:
    """Map the id of each constraint's dual variable to the constraint's position."""
    return {
        dual.id: position
        for position, constraint in enumerate(problem.constraints)
        for dual in constraint.dual_variables
    }


#: The supported cones, in the order of CVXPY's cone rows (also our rows of C).
_SUPPORTED_CONES = (Zero, NonNeg, SOC)


def _cone_rank(constraint: Any) -> int:
    return next(i for i, kind in enumerate(_SUPPORTED_CONES) if isinstance(constraint, kind))


def _dual_spec(
    dual: cp.Variable,
    constraint: Any,
    position: int,
    param_prob: Any,
    constr_id_map: dict,
    names: Names,
) -> VariableSpec:
    """Rows of ``y = [lambda; nu]`` holding a user constraint's multipliers.

    CVXPY orders the cone rows Zero first, then NonNeg, then SOC, each cone's
    constraints in the order of ``param_prob.constraints``; that is also the order of
    our A and G rows. CVXPY's equality multipliers have the opposite sign of lambda in
    ``L = f + lambda'(Ax - b) + nu'(Gx - h)``; inequality and cone ones agree with nu.
    A second-order cone constraint ``SOC(t, X)`` has two: ``dual_variables[0]`` of t
    and ``dual_variables[1]`` of X, from the rows of each cone ``(t_i, X's i-th column)``
    (row with ``axis=1``), as CVXPY splits them.
    """
    final_id = constr_id_map.get(constraint.id, constraint.id)
    offset = 0
    for canonical in sorted(param_prob.constraints, key=_cone_rank):
        if canonical.id == final_id:
            sign = -1.0 if isinstance(canonical, Zero) else 1.0
            index = offset + np.arange(canonical.size)
            if isinstance(canonical, SOC) and isinstance(constraint, SOC):
                index = _soc_dual_rows(constraint, dual, index)
            if index is None or index.size != dual.size:
                break
            return VariableSpec(
                name=f"dual of constraint {position}",
                shape=tuple(dual.shape),
                index=index,
                is_dual=True,
                sign=sign,
            )
        offset += canonical.size
    raise ProblemError(
        f"the multipliers of constraint {position} ({names.describe(constraint)}) are not available: "
        "CVXPY rewrote the constraint"
    )


def _soc_dual_rows(constraint: SOC, dual: cp.Variable, rows: np.ndarray) -> np.ndarray | None:
    """The rows (column-major over ``dual``'s shape) of one of ``SOC(t, X)``'s two dual
    variables, within the constraint's rows ``rows`` (each cone's t, then its X part)."""
    which = next((i for i, d in enumerate(constraint.dual_variables) if d.id == dual.id), None)
    if which is None:
        return None
    per_cone = rows.reshape(-1, rows.size // max(constraint.args[0].size, 1))
    if which == 0:
        return per_cone[:, 0]
    tails = per_cone[:, 1:]  # (cones, k - 1)
    if len(constraint.args[1].shape) == 2 and constraint.axis == 0:
        tails = tails.T  # X's columns are the cones
    return tails.ravel(order="F")


def _check_dcp_dpp(problem: cp.Problem, names: Names) -> None:
    # The constraints are described only for an error: printing their data costs as
    # much as a tenth of a small layer's construction.
    def name(i: int, constraint: Any) -> str:
        return f"constraint {i} ({names.describe(constraint)})"

    if not problem.is_dcp():
        culprits = [] if problem.objective.is_dcp() else ["the objective"]
        culprits += [name(i, c) for i, c in enumerate(problem.constraints) if not c.is_dcp()]
        raise ProblemError(
            "the problem is not DCP (not recognizably convex): " + ", ".join(culprits) + " "
            "violates the DCP rules"
        )
    if problem.is_dpp() or problem.is_dpp("dcp", quad_form_dpp="qp"):
        return
    with scopes.quad_form_dpp_scope():
        objective_ok = problem.objective.is_dcp(dpp=True)
    culprits = [] if objective_ok else ["the objective"]
    culprits += [name(i, c) for i, c in enumerate(problem.constraints) if not c.is_dcp(dpp=True)]
    raise ProblemError(
        "the problem is not DPP (parameters must enter affinely, e.g. not parameter * "
        "parameter nor a parameter inside a nonlinear atom; quad_form(x, Q) with a "
        "parameter Q is allowed in the objective only): " + ", ".join(culprits or ["the problem"])
    )


def _check_canon_backend(canon_backend: Any) -> None:
    """Raise `InputError` unless ``canon_backend`` names one of CVXPY's backends (or None)."""
    if canon_backend is None:
        return
    known = sorted(
        getattr(cp.settings, name)
        for name in dir(cp.settings)
        if name.endswith("_CANON_BACKEND") and name != "DEFAULT_CANON_BACKEND"
    )
    if canon_backend not in known:
        raise InputError(
            f"canon_backend must be None or one of CVXPY's canonicalization backends "
            f"{known}, got {canon_backend!r}"
        )


def _param_cone_prog(problem: cp.Problem, canon_backend: str | None = None) -> tuple[Any, Any]:
    """CVXPY's ``ParamConeProg`` of ``problem`` and the chain that produced it.

    ``Problem.get_problem_data`` also evaluates every tensor at the parameters' current
    values (as large as the tensors themselves: a third of the construction time of a
    dense n = 3000 layer), and caches its result on the user's problem. Applying the
    chain's reductions and the solver's constraint formatting directly does neither.

    ``canon_backend`` is CVXPY's (``get_problem_data``'s): how it builds the affine maps,
    not what they are.

    Raises:
        cvxpy.error.DPPError, cvxpy.error.SolverError: As ``get_problem_data`` would.
    """
    chain = problem._construct_chain(
        solver=cp.CLARABEL, enforce_dpp=True, canon_backend=canon_backend
    )
    reduced: Any = problem
    for reduction in chain.reductions[:-1]:
        reduced, _ = reduction.apply(reduced)
    solver = chain.reductions[-1]
    if not reduced.formatted:
        reduced = solver.format_constraints(reduced, solver.EXP_CONE_ORDER)
    return reduced, chain


def _cone_types(problem: cp.Problem) -> list[str]:
    """The cones, beyond the supported ones, that ``problem`` needs."""
    param_prob, _ = _param_cone_prog(problem)
    return sorted(
        {type(c).__name__ for c in param_prob.constraints if not isinstance(c, _SUPPORTED_CONES)}
    )


def _name_unsupported_cones(problem: cp.Problem, names: Names) -> str:
    """Name the atoms and constraints that need an unsupported cone, as the user wrote them.

    CVXPY's reductions say which part (the objective, each constraint) needs which
    cones; `offending_atoms` finds the atoms within it that leave the QP class.
    """

    def needs(atoms: list[Any], where: str, cones: list[str]) -> str:
        subject = " and ".join(names.describe(atom) for atom in atoms)
        verb = "need" if len(atoms) > 1 else "needs"
        return f"{subject} {where} {verb} {' and '.join(_CONE_WORDS.get(c, c) for c in cones)}"

    culprits = []
    cones = _cone_types(cp.Problem(problem.objective))
    if cones:
        atoms = offending_atoms(problem.objective.expr, _is_second_order)
        culprits.append(needs(atoms, "in the objective", cones))
    for i, constraint in enumerate(problem.constraints):
        cones = _cone_types(cp.Problem(cp.Minimize(0), [constraint]))
        if not cones:
            continue
        text = names.describe(constraint)
        atoms = []
        if isinstance(constraint, Inequality | Equality | Zero | NonNeg | NonPos):
            atoms = [a for side in constraint.args for a in offending_atoms(side, _is_second_order)]
        if atoms and " and ".join(names.describe(a) for a in atoms) != text:
            culprits.append(needs(atoms, f"in constraint {i} ({text})", cones))
        else:
            culprits.append(
                f"constraint {i} ({text}) needs "
                + " and ".join(_CONE_WORDS.get(c, c) for c in cones)
            )
    if not culprits:
        return "the problem needs cones other than linear and second-order ones"
    return "; ".join(culprits) + "."


def _is_second_order(expr: Any) -> bool:
    """Whether CVXPY reduces ``expr`` with linear and second-order cones only (asked
    on an error's path only: it reduces a problem)."""
    if expr.is_affine():
        return True
    bound = expr <= 0 if expr.is_convex() else expr >= 0
    try:
        return not _cone_types(cp.Problem(cp.Minimize(0), [bound]))
    except cp.error.DCPError:
        return False


def _user_theta_map(
    parameters: Sequence[cp.Parameter], param_prob: Any, param_id_map: dict, names: Names
) -> tuple[sp.csr_array, list[ParameterSpec]]:
    """Sparse S with ``[theta_cvxpy; 1] = S @ [theta_user; 1]``, and the user's layout."""
    specs, offset = [], 0
    for param in parameters:
        declared = frozenset(a for a in _CHECKED_ATTRIBUTES if param.attributes.get(a))
        specs.append(
            ParameterSpec(
                name=names.leaf(param),
                shape=tuple(param.shape),
                offset=offset,
                attributes=declared,
                named=Names.named(param),
            )
        )
        offset += param.size
    n_user, n_canon = offset, param_prob.total_param_size
    # Arrays per parameter, concatenated once (the entries can number n^2 each).
    rows, cols, vals = [np.array([n_canon])], [np.array([n_user])], [np.ones(1)]
    for param, spec in zip(parameters, specs, strict=True):
        for final_id in param_id_map.get(param.id, [param.id]):
            if final_id not in param_prob.param_id_to_col:
                continue  # the parameter does not reach the canonical data
            col = param_prob.param_id_to_col[final_id]
            r, c, v = _reduction_entries(param)
            rows.append(col + r)
            cols.append(spec.offset + c)
            vals.append(v)
    S = sp.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_canon + 1, n_user + 1),
    )
    return S, specs


def _reduction_entries(param: cp.Parameter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries (reduced index, user column-major index, weight) of a parameter's reduction.

    CVXPY stores a symmetric matrix parameter by its upper triangle (row-major order of
    ``np.triu_indices``), a diagonal one by its diagonal, a sparse one by its listed
    entries. A symmetric parameter reads ``(Q + Q') / 2``, so its gradient is symmetric.
    """
    shape = param.shape
    if any(param.attributes.get(a) for a in _SYMMETRIC_ATTRIBUTES):
        n = shape[0]
        iu, ju = np.triu_indices(n)
        k = np.arange(iu.size)
        upper = iu + n * ju
        lower = ju + n * iu
        diagonal = iu == ju
        return (
            np.concatenate([k, k[~diagonal]]),
            np.concatenate([upper, lower[~diagonal]]),
            np.concatenate([np.where(diagonal, 1.0, 0.5), np.full((~diagonal).sum(), 0.5)]),
        )
    if param.attributes.get("diag"):
        n = shape[0]
        k = np.arange(n)
        return k, k + n * k, np.ones(n)
    if param.sparse_idx is not None:
        flat = np.ravel_multi_index(param.sparse_idx, shape, order="F")
        return np.arange(flat.size), flat, np.ones(flat.size)
    k = np.arange(param.size)
    return k, k, np.ones(param.size)


def _variable_spec(
    var: cp.Variable, param_prob: Any, var_id_map: dict, names: Names
) -> VariableSpec:
    """Where each entry (column-major) of a user variable lives in x (-1: zero)."""
    final_ids = var_id_map.get(var.id, [var.id])
    final_id = final_ids[0]
    if final_id not in param_prob.var_id_to_col:
        raise ProblemError(f"{names.variable(var)} was eliminated by CVXPY's reductions")
    col = param_prob.var_id_to_col[final_id]
    shape = tuple(var.shape)
    index = np.full(var.size, -1, dtype=np.int64)
    if any(var.attributes.get(a) for a in _SYMMETRIC_ATTRIBUTES):
        n = shape[0]
        iu, ju = np.triu_indices(n)
        index[iu + n * ju] = col + np.arange(iu.size)
        index[ju + n * iu] = col + np.arange(iu.size)
    elif var.attributes.get("diag"):
        n = shape[0]
        index[np.arange(n) * (n + 1)] = col + np.arange(n)
    elif var.sparse_idx is not None:
        flat = np.ravel_multi_index(var.sparse_idx, shape, order="F")
        index[flat] = col + np.arange(flat.size)
    else:
        index[:] = col + np.arange(var.size)
    return VariableSpec(name=names.leaf(var), shape=shape, index=index)


def _blocks(program: ConeProgram, S: sp.csr_array) -> dict[str, AffineBlock]:
    """The six data blocks as affine maps of ``[theta_user; 1]``."""
    N, n_rows, n_eq = program.n, program.n_rows, program.n_eq

    def block(
        tensor: sp.sparray, index: np.ndarray, sign: np.ndarray | float, shape: tuple
    ) -> AffineBlock:
        matrix = sp.csr_array(tensor @ S)
        entries_per_row = np.diff(matrix.indptr)
        if not (np.isscalar(sign) and sign == 1.0):
            # Row signs applied to the entries in place (the product is this function's
            # own): a diagonal product would copy the n^2 rows of P once more.
            row_sign = np.broadcast_to(sign, index.shape).astype(float)
            matrix.data *= np.repeat(row_sign, entries_per_row)
        keep = np.flatnonzero(entries_per_row)
        if keep.size < matrix.shape[0]:
            matrix, index = matrix[keep], index[keep]
        return AffineBlock(shape=shape, index=index, matrix=matrix)

    q_tensor = program.q[:N]
    P_tensor = program.P
    # P is stored column-major; our dense blocks are row-major (symmetric P: no matter).
    P_index = np.arange(N * N).reshape(N, N).T.ravel()
    A_tensor = sp.csr_array(program.A)
    n_ineq = n_rows - n_eq
    # Row r of A_tensor is entry (r % n_rows, r // n_rows) of [AF, bg], column-major: a
    # (N + 1, n_rows) grid of tensor rows, sliced into the four blocks.
    tensor_row = np.arange(n_rows * (N + 1)).reshape(N + 1, n_rows)
    eq_rows, in_rows = np.arange(n_eq), np.arange(n_ineq)
    columns = np.arange(N)[:, None]

    def select(rows: np.ndarray) -> sp.csr_array:
        return A_tensor[rows.ravel()]

    eq_matrix = (eq_rows * N + columns).ravel()
    in_matrix = (in_rows * N + columns).ravel()
    return {
        "P": block(P_tensor, P_index, 1.0, (N, N)),
        "q": block(q_tensor, np.arange(N), 1.0, (N,)),
        "A": block(select(tensor_row[:N, :n_eq]), eq_matrix, 1.0, (n_eq, N)),
        "b": block(select(tensor_row[N, :n_eq]), eq_rows, -1.0, (n_eq,)),
        "G": block(select(tensor_row[:N, n_eq:]), in_matrix, -1.0, (n_ineq, N)),
        "h": block(select(tensor_row[N, n_eq:]), in_rows, 1.0, (n_ineq,)),
    }


@dataclass(frozen=True)
class ConeProgram:
    """The data of ``min 1/2 x'Px + q'x + d  s.t.  AF x + bg in Zero x NonNeg x SOC`` as
    affine maps of CVXPY's parameter vector, in CVXPY's layout (``ParamConeProg``).

    Attributes:
        P: ``(n * n, K_cvxpy + 1)``: row ``i + n * j`` maps to entry (i, j) of the
            symmetric P (both triangles).
        q: ``(n + 1, K_cvxpy + 1)``: q, then the objective's constant d.
        A: ``((n + 1) * n_rows, K_cvxpy + 1)``: row ``r + n_rows * c`` maps to entry
            (r, c) of ``[AF, bg]``.
        n: Number of variables.
        n_rows: Number of constraint rows.
        n_eq: Number of equality rows (the first ones).
        soc: Sizes of the second-order cones of the last rows, in order.
    """

    P: sp.sparray
    q: sp.csr_array
    A: sp.sparray
    n: int
    n_rows: int
    n_eq: int
    soc: tuple[int, ...]

    @staticmethod
    def of(param_prob: Any) -> ConeProgram:
        n = int(param_prob.x.size)
        width = param_prob.q.shape[1]
        # As CVXPY stores them (P by columns, A as triplets): a CSR array of P or A would
        # hold an index pointer per row, n^2 or n * n_rows of them.
        P = param_prob.P if param_prob.P is not None else sp.csc_array((n * n, width))
        return ConeProgram(
            P=P,
            q=sp.csr_array(param_prob.q),
            A=param_prob.A,
            n=n,
            n_rows=int(param_prob.constr_size),
            n_eq=int(sum(c.size for c in param_prob.constraints if isinstance(c, Zero))),
            soc=tuple(int(k) for k in param_prob.cone_dims.soc),
        )


@dataclass(frozen=True)
class CanonicalForm:
    """CVXPY's reduced problem with the user's parameter map and output layout.

    Attributes:
        program: CVXPY's data maps (`ConeProgram`).
        S: ``(K_cvxpy + 1, K + 1)`` sparse map from ``[theta_user; 1]`` to
            ``[theta_cvxpy; 1]``.
        parameters: The user's parameters, in order.
        variables: The user's outputs, in order.
    """

    program: ConeProgram
    S: sp.csr_array
    parameters: list[ParameterSpec]
    variables: list[VariableSpec]

    @property
    def n(self) -> int:
        """Number of canonical variables."""
        return self.program.n

    @property
    def n_eq(self) -> int:
        """Number of equality rows."""
        return self.program.n_eq

    @property
    def n_rows(self) -> int:
        """Number of constraint rows, equalities and inequalities."""
        return self.program.n_rows

    @property
    def cone_sizes(self) -> tuple[int, ...]:
        """The sizes of the second-order cones of the last rows, in order."""
        return self.program.soc


def reduce_problem(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    canon_backend: str | None = None,
) -> CanonicalForm:
    """Check ``problem`` and reduce it with CVXPY, without forming any data block.

    Args:
        problem: The user's problem.
        parameters: Its parameters, in the order a call takes them.
        variables: The outputs.
        canon_backend: CVXPY's canonicalization backend (None: its default).

    Raises:
        ProblemError: The lists do not match the problem, or the problem is not DCP,
            not DPP, not continuous, or needs a cone other than linear and second-order
            ones (the message names the part).
        InputError: ``canon_backend`` is not one of CVXPY's, or is not installed.
    """
    _check_canon_backend(canon_backend)
    names = Names(
        parameters if isinstance(parameters, Sequence) else (),
        variables if isinstance(variables, Sequence) else (),
    )
    _check_lists(problem, parameters, variables, names)
    _check_dcp_dpp(problem, names)
    try:
        param_prob, chain = _param_cone_prog(problem, canon_backend)
    except cp.error.DPPError as exc:  # pragma: no cover - caught by _check_dcp_dpp
        raise ProblemError(f"the problem is not DPP: {exc}") from None
    except cp.error.SolverError as exc:
        raise ProblemError(f"CVXPY could not reduce the problem: {exc}") from None
    except ImportError as exc:  # a backend CVXPY knows but cannot load (RUST)
        raise InputError(f"canon_backend={canon_backend!r} is not available: {exc}") from None
    if any(not isinstance(c, _SUPPORTED_CONES) for c in param_prob.constraints):
        raise ProblemError(
            "the problem needs a cone that is not supported (after CVXPY's reductions, "
            "linear equalities and inequalities and second-order cones are): "
            + _name_unsupported_cones(problem, names)
        )
    if param_prob.lower_bounds is not None or param_prob.upper_bounds is not None:
        raise ProblemError(
            "variable bounds reached the solver data unreduced; please file an issue"
        )
    S, param_specs = _user_theta_map(parameters, param_prob, chain.compose_param_id_map(), names)
    var_id_map = chain.compose_var_id_map()
    duals = _dual_owners(problem)
    constr_id_map = chain.compose_constr_id_map()
    var_specs = [
        _dual_spec(
            var, problem.constraints[duals[var.id]], duals[var.id], param_prob, constr_id_map, names
        )
        if var.id in duals
        else _variable_spec(var, param_prob, var_id_map, names)
        for var in variables
    ]
    return CanonicalForm(
        program=ConeProgram.of(param_prob), S=S, parameters=param_specs, variables=var_specs
    )


def dense_qp(form: CanonicalForm) -> ParametricQP:
    """The `ParametricQP` (dense data blocks) of a reduced problem."""
    return ParametricQP(
        blocks=_blocks(form.program, form.S),
        parameters=form.parameters,
        variables=form.variables,
        cone_sizes=form.cone_sizes,
    )


def canonicalize(
    problem: cp.Problem, parameters: Sequence[cp.Parameter], variables: Sequence[cp.Variable]
) -> ParametricQP:
    """Reduce ``problem`` to a `ParametricQP` over the user's parameters.

    Raises:
        ProblemError: The lists do not match the problem, or the problem is not DCP,
            not DPP, not continuous, or needs a cone other than linear and second-order
            ones (the message names the part).
    """
    return dense_qp(reduce_problem(problem, parameters, variables))
