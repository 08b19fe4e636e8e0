"""The catalogue of bad inputs: each kind raises the documented exception type with a
message that names the culprit (parameter, variable, constraint, block or setting).

``tests/test_errors.py`` covers 42 kinds; this file adds 45 more, for 87 in all. Kinds
are numbered as in the issue's list, grouped by where they are caught.

Covered by ``test_errors.py`` (E1-E42):

* construction (``ProblemError``): E1 a parameter of the problem missing from
  ``parameters``; E2 a parameter not in the problem; E3 a duplicate parameter; E4
  ``parameters`` not a list; E5 an entry of ``parameters`` that is not a
  ``cp.Parameter``; E6 a variable not in the problem; E7 ``problem`` not a
  ``cp.Problem``; E8 non-DPP parameter times parameter (in a constraint); E9 a
  non-convex (non-DCP) objective; E10 an SOC constraint; E11 an exponential-cone
  constraint; E12 a power constraint ``x ** 1.5``; E13 a non-polyhedral objective
  (``norm2``); E14 a PSD constraint ``X >> 0``; E15 an integer variable; E16 a boolean
  variable; E17 a problem without variables; E18 an unknown ``solver_args`` key at
  construction;
* call (``InputError``): E19 the wrong number of tensors; E20 a wrong shape; E21 a wrong
  rank (extra dimensions); E22 inconsistent batch sizes; E23 an integer dtype and E24 mixed
  dtypes (both now computed by torch's type promotion); E25 a value that is not a tensor; E26 NaN; E27 Inf; E28 a negative tolerance;
  E29 ``max_iter`` 0; E30 a fractional ``max_iter``; E31 ``rho`` 0; E32 an unknown
  ``mode``; E33 ``alpha`` outside (0, 2); E34 both tolerances 0; E35 an unknown
  ``solver_args`` key at call time; E36 ``solver_args`` not a dict; E37-E39 float16,
  bfloat16 and complex dtypes;
* ``solve_qp`` (``InputError``): E40 a block of the wrong shape; E41 ``A`` without
  ``b``; E42 inconsistent batch sizes (and NaN in a block, mixed dtypes: as E26, E24).

Added here (N1-N45):

* construction, not DPP/DCP/polyhedral (``ProblemError``): N1 a parameter inside a
  non-affine atom multiplying a variable (``square(s) * sum(x)``); N2 parameter times
  parameter in the objective; N3 a parameter inside a non-affine atom in a constraint
  (``exp(p) <= x``, which needs an exponential cone); N4 a parametric ``quad_form`` in a
  constraint; N5 a non-convex equality ``square(x) == 1``; N6 ``Maximize`` of a convex
  objective; N7 an exact power cone ``power(x, 3, approx=False)``; N8 a power constraint
  ``x ** 3`` (approximated by CVXPY with SOCs); N9 an exponential cone in the objective
  (``log``); N10 a PSD-declared variable;
* construction, lists and settings: N11 a zero-size variable (empty problem); N12 an
  empty ``variables`` list; N13 a duplicate variable; N14 ``variables`` not a list; N15
  an entry of ``variables`` that is a Parameter; N16 a problem without parameters; N17
  an invalid ``solver_args`` value at construction; N18 ``solver_args`` not a dict at
  construction;
* call: N19 tensors on different devices (``meta`` vs ``cpu``); N20 a bool dtype (computes as float); N21
  too few dimensions (a 0-d tensor for a vector parameter); N22 a matrix parameter given
  transposed; N23 a negative ``backward_eps``; N24 a negative ``eps_rel``; N25 a NaN
  tolerance; N26 a tolerance given as a string; N27 a negative ``sigma``; N28 an infinite
  ``rho``; N29 ``True`` as ``max_iter``; N30 an unknown ``on_failure``; N31 an unknown
  ``backward_method``; N32 a negative ``scaling``; N33 a non-bool ``warm_start``; N34
  ``check_every`` 0; N35 a PSD-declared parameter given an indefinite value; N36 a
  nonneg-declared parameter given a negative value;
* ``solve_qp``: N37 blocks on different devices; N38 a complex dtype (an integer one computes in the default float dtype); N39 a
  wrong rank (4-D ``P``, 0-d ``q``); N40 a non-square ``P``; N41 ``A`` with the wrong
  number of columns; N42 a block that is not a tensor; N43 Inf in a block; N44 an
  indefinite ``P``; N45 an empty problem (``n = 0``).

Failures inside a batch (``SolverError`` naming the batch index and status, or a
``SolverWarning``) are in ``test_reliability.py``.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from altdiff_modeling import AltDiffLayer, InputError, ProblemError, solve_qp

F64 = torch.float64


@pytest.fixture
def simple():
    x = cp.Variable(3, name="x")
    q = cp.Parameter(3, name="q")
    h = cp.Parameter(2, name="h")
    G = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h])
    layer = AltDiffLayer(problem, parameters=[q, h], variables=[x])
    return problem, layer, x, q, h


def _q_h() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(3, dtype=F64), torch.ones(2, dtype=F64)


# -- N1-N10: problems that are not DPP, not DCP or not polyhedral ------------------------


def test_n1_parameter_inside_nonaffine_atom_times_variable():
    x = cp.Variable(2, name="x")
    s = cp.Parameter(name="s")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.square(s) * cp.sum(x)), [x >= 0])
    with pytest.raises(ProblemError, match=r"not DPP.*: the objective"):
        AltDiffLayer(problem, parameters=[s], variables=[x])


def test_n2_parameter_times_parameter_in_objective():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) + (p @ p) * cp.sum(x)), [x >= 0])
    with pytest.raises(ProblemError, match=r"not DPP.*: the objective"):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n3_parameter_inside_nonaffine_atom_in_constraint():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= 0, x >= cp.exp(p)])
    with pytest.raises(
        ProblemError,
        match=r"cone that is not supported.*constraint 1 \(cp\.exp\(p\) <= x\).*ExpCone",
    ):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n4_parametric_quad_form_in_constraint():
    x = cp.Variable(2, name="x")
    Q = cp.Parameter((2, 2), PSD=True, name="Q")
    problem = cp.Problem(cp.Minimize(cp.sum(x)), [x >= -1, cp.quad_form(x, Q) <= 1])
    with pytest.raises(ProblemError, match=r"not DPP.*constraint 1 \(cp\.quad_form\(x, Q\) <= 1\)"):
        AltDiffLayer(problem, parameters=[Q], variables=[x])


def test_n5_nonconvex_equality():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(p @ x), [x <= 1, cp.square(x[0]) == 1])
    with pytest.raises(ProblemError, match=r"not DCP.*constraint 1 .*violates the DCP rules"):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n6_maximize_convex_objective():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Maximize(cp.sum_squares(x) + p @ x), [x <= 1, x >= -1])
    with pytest.raises(ProblemError, match=r"not DCP.*the objective violates"):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n7_exact_power_cone():
    x = cp.Variable(2, name="x")
    t = cp.Variable(name="t")
    p = cp.Parameter(2, name="p")
    constraints = [cp.power(x[0], 3, approx=False) <= t, x >= 0, x <= 1]
    problem = cp.Problem(cp.Minimize(t + p @ x), constraints)
    with pytest.raises(
        ProblemError,
        match=r"cone that is not supported.*cp\.power\(x\[0\], 3\) in constraint 0 .*needs a power cone \(PowCone3D\)",
    ):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n8_cubic_power_constraint_reduces_to_second_order_cones():
    x = cp.Variable(2, name="x")
    t = cp.Variable(name="t")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(t + p @ x), [x >= 0, x <= 1, cp.power(x[0], 3) <= t])
    layer = AltDiffLayer(problem, parameters=[p], variables=[x, t])
    value = np.array([-1.0, 0.5])
    x_star, t_star = layer(torch.tensor(value), solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9})
    p.value = value
    problem.solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(x_star.numpy(), x.value, atol=1e-5)
    np.testing.assert_allclose(float(t_star), t.value, atol=1e-5)


def test_n9_exponential_cone_in_objective():
    x = cp.Variable(2, name="x")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Maximize(cp.sum(cp.log(x)) - p @ x), [x <= 1])
    with pytest.raises(
        ProblemError,
        match=r"cone that is not supported.*cp\.log\(x\) in the objective needs an exponential cone \(ExpCone\)",
    ):
        AltDiffLayer(problem, parameters=[p], variables=[x])


def test_n10_psd_declared_variable():
    X = cp.Variable((2, 2), PSD=True, name="X")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(cp.sum(X) + p @ cp.diag(X)), [cp.trace(X) == 1])
    with pytest.raises(ProblemError, match=r"variable 'X' is declared PSD/NSD"):
        AltDiffLayer(problem, parameters=[p], variables=[X])


# -- N11-N18: lists and settings at construction ----------------------------------------


def test_n11_zero_size_variable():
    z = cp.Variable(0, name="z")
    p = cp.Parameter(2, name="p")
    problem = cp.Problem(cp.Minimize(cp.sum(z) + cp.sum(p)))
    with pytest.raises(ProblemError, match=r"variable 'z'"):
        AltDiffLayer(problem, parameters=[p], variables=[z])


def test_n12_empty_variables_list(simple):
    problem, _, _, q, h = simple
    with pytest.raises(ProblemError, match="variables must name at least one variable"):
        AltDiffLayer(problem, parameters=[q, h], variables=[])


def test_n13_duplicate_variable(simple):
    problem, _, x, q, h = simple
    with pytest.raises(
        ProblemError, match=r"variable 'x' appears twice in variables \(again at variables\[1\]\)"
    ):
        AltDiffLayer(problem, parameters=[q, h], variables=[x, x])


def test_n14_variables_not_a_list(simple):
    problem, _, x, q, h = simple
    with pytest.raises(ProblemError, match="variables must be a list of cvxpy Variables, got"):
        AltDiffLayer(problem, parameters=[q, h], variables=x)


def test_n15_parameter_given_as_variable(simple):
    problem, _, _, q, h = simple
    with pytest.raises(
        ProblemError, match=r"variables\[0\] must be a cvxpy Variable, got Parameter"
    ):
        AltDiffLayer(problem, parameters=[q, h], variables=[q])


def test_n16_problem_without_parameters():
    # A layer with nothing to differentiate cannot be called (its dtype and device would
    # be unknown): reject it when it is built, naming the problem's lack of parameters.
    x = cp.Variable(2, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [x >= 0])
    with pytest.raises(ProblemError, match="no parameters"):
        AltDiffLayer(problem, parameters=[], variables=[x])


def test_n17_invalid_solver_args_value_at_construction(simple):
    problem, _, x, q, h = simple
    with pytest.raises(InputError, match=r"solver_args\['eps_rel'\] must be a finite number >= 0"):
        AltDiffLayer(problem, parameters=[q, h], variables=[x], solver_args={"eps_rel": -1e-3})


def test_n18_solver_args_not_a_dict_at_construction(simple):
    problem, _, x, q, h = simple
    with pytest.raises(InputError, match="solver_args must be a dict, got float"):
        AltDiffLayer(problem, parameters=[q, h], variables=[x], solver_args=1e-3)


# -- N19-N36: call time -----------------------------------------------------------------


def test_n19_tensors_on_different_devices(simple):
    # A meta tensor stands in for a GPU tensor on a machine without one.
    _, layer, *_ = simple
    q, _ = _q_h()
    h = torch.ones(2, dtype=F64, device="meta")
    with pytest.raises(InputError, match=r"parameter 'h' is on meta, but parameter 'q' is on cpu"):
        layer(q, h)


def test_n20_bool_dtype_computes_as_float(simple):
    # bool, like the integer dtypes, computes in float64 next to a float64 input.
    _, layer, *_ = simple
    _, h = _q_h()
    mask = torch.tensor([True, False, True])
    (x_bool,) = layer(mask, h)
    (x_float,) = layer(mask.double(), h)
    assert x_bool.dtype == F64
    torch.testing.assert_close(x_bool, x_float)


def test_n21_too_few_dimensions(simple):
    _, layer, *_ = simple
    _, h = _q_h()
    with pytest.raises(
        InputError,
        match=r"Invalid parameter dimensionality for parameter 'q'.*shape \(3,\).*got 0 \(shape \(\)\)",
    ):
        layer(torch.tensor(0.0, dtype=F64), h)


def test_n22_matrix_parameter_transposed():
    x = cp.Variable(3, name="x")
    F = cp.Parameter((2, 3), name="F")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [F @ x <= 1])
    layer = AltDiffLayer(problem, parameters=[F], variables=[x])
    with pytest.raises(
        InputError,
        match=r"Invalid parameter shape for parameter 'F'.*expected \(2, 3\).*got \(3, 2\)",
    ):
        layer(torch.ones(3, 2, dtype=F64))


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ({"backward_eps": -1e-8}, r"solver_args\['backward_eps'\] must be a finite number >= 0"),
        ({"eps_rel": -1e-8}, r"solver_args\['eps_rel'\] must be a finite number >= 0"),
        ({"eps_abs": float("nan")}, r"solver_args\['eps_abs'\] must be a finite number >= 0"),
        ({"eps_abs": "1e-3"}, r"solver_args\['eps_abs'\] must be a finite number >= 0"),
        ({"sigma": -1.0}, r"solver_args\['sigma'\] must be a finite number > 0"),
        ({"rho": float("inf")}, r"solver_args\['rho'\] must be a finite number > 0"),
        ({"max_iter": True}, r"solver_args\['max_iter'\] must be an integer >= 1"),
        ({"on_failure": "ignore"}, r"solver_args\['on_failure'\] must be one of"),
        ({"backward_method": "lu"}, r"solver_args\['backward_method'\] must be one of"),
        ({"scaling": -1}, r"solver_args\['scaling'\] must be an integer >= 0"),
        ({"warm_start": 1}, r"solver_args\['warm_start'\] must be True or False"),
        ({"check_every": 0}, r"solver_args\['check_every'\] must be an integer >= 1"),
    ],
    ids=[
        "n23-negative-backward-eps",
        "n24-negative-eps-rel",
        "n25-nan-tolerance",
        "n26-string-tolerance",
        "n27-negative-sigma",
        "n28-infinite-rho",
        "n29-bool-max-iter",
        "n30-unknown-on-failure",
        "n31-unknown-backward-method",
        "n32-negative-scaling",
        "n33-non-bool-warm-start",
        "n34-zero-check-every",
    ],
)
def test_n23_n34_invalid_solver_args_values(simple, args, pattern):
    _, layer, *_ = simple
    with pytest.raises(InputError, match=pattern):
        layer(*_q_h(), solver_args=args)


def test_n35_indefinite_value_of_psd_parameter():
    # CVXPY checks a PSD parameter's value when it is assigned (``Q.value = ...``); the
    # layer reads tensors instead, so it must check them itself. Unchecked, an
    # indefinite P either fails in the Cholesky factorization (a SolverError that does
    # not name Q) or, when rho*C'C outweighs the negative curvature, is "solved" to a
    # stationary point that is not a minimizer.
    x = cp.Variable(3, name="x")
    Q = cp.Parameter((3, 3), PSD=True, name="Q")
    q = cp.Parameter(3, name="q")
    objective = cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x)
    problem = cp.Problem(objective, [x <= 1, x >= -1])
    layer = AltDiffLayer(problem, parameters=[Q, q], variables=[x])
    indefinite = torch.diag(torch.tensor([1.0, -0.05, 1.0], dtype=F64))
    with pytest.raises(InputError, match=r"parameter 'Q'.*positive semidefinite"):
        layer(indefinite, torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    # ... also when only one instance of a batch is indefinite.
    batch = torch.stack([torch.eye(3, dtype=F64), indefinite])
    with pytest.raises(InputError, match=r"parameter 'Q'.*positive semidefinite"):
        layer(batch, torch.tensor([1.0, 0.0, 1.0], dtype=F64))


def test_n36_negative_value_of_nonneg_parameter():
    # With s < 0 the objective is concave in x; unchecked, the layer "solves" it with
    # status "solved" and returns x[1] = 0, the maximizer along that coordinate.
    x = cp.Variable(3, name="x")
    s = cp.Parameter(nonneg=True, name="s")
    q = cp.Parameter(3, name="q")
    objective = cp.Minimize(s * cp.sum_squares(x) + q @ x)
    problem = cp.Problem(objective, [x <= 1, x >= -1])
    layer = AltDiffLayer(problem, parameters=[s, q], variables=[x])
    with pytest.raises(InputError, match=r"parameter 's'.*nonneg"):
        layer(torch.tensor(-0.001, dtype=F64), torch.tensor([1.0, 0.0, 1.0], dtype=F64))


# -- N37-N45: solve_qp ------------------------------------------------------------------


def _qp(n: int = 3) -> dict[str, torch.Tensor]:
    return {
        "P": torch.eye(n, dtype=F64),
        "q": torch.zeros(n, dtype=F64),
        "G": torch.eye(n, dtype=F64),
        "h": torch.ones(n, dtype=F64),
    }


def test_n37_solve_qp_blocks_on_different_devices():
    data = _qp()
    data["P"] = data["P"].to("meta")
    with pytest.raises(InputError, match=r"P is on meta, but q is on cpu"):
        solve_qp(**data)


def test_n38_solve_qp_integer_dtype_computes_in_the_default_float_dtype():
    data = {name: value.to(torch.int64) for name, value in _qp().items()}
    x = solve_qp(**data)
    assert x.dtype == torch.get_default_dtype()
    torch.testing.assert_close(x.double(), solve_qp(**_qp()), atol=1e-3, rtol=0)


def test_n38_solve_qp_complex_dtype():
    data = {name: value.to(torch.complex128) for name, value in _qp().items()}
    with pytest.raises(InputError, match=r"q, P, G, h: complex dtypes are not supported"):
        solve_qp(**data)


@pytest.mark.parametrize(
    ("name", "value", "pattern"),
    [
        ("P", torch.zeros(1, 1, 3, 3, dtype=F64), r"P must have 2 dimensions .*\(1, 1, 3, 3\)"),
        ("q", torch.tensor(1.0, dtype=F64), r"q must have 1 dimensions .*got shape \(\)"),
    ],
)
def test_n39_solve_qp_wrong_rank(name, value, pattern):
    data = _qp()
    data[name] = value
    with pytest.raises(InputError, match=pattern):
        solve_qp(**data)


def test_n40_solve_qp_non_square_P():
    data = _qp()
    data["P"] = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(InputError, match=r"P has shape \(3, 2\).*must be \(3, 3\)"):
        solve_qp(**data)


def test_n41_solve_qp_A_with_wrong_number_of_columns():
    data = _qp()
    A, b = torch.ones(1, 4, dtype=F64), torch.ones(1, dtype=F64)
    with pytest.raises(InputError, match=r"A has shape \(1, 4\).*must be \(1, 3\)"):
        solve_qp(**data, A=A, b=b)


def test_n42_solve_qp_block_not_a_tensor():
    data = _qp()
    data["h"] = [1.0, 1.0, 1.0]
    with pytest.raises(InputError, match=r"h must be a torch\.Tensor, got list"):
        solve_qp(**data)


def test_n43_solve_qp_inf_names_block():
    data = _qp()
    data["h"][2] = float("inf")
    with pytest.raises(InputError, match="block h contains NaN or Inf"):
        solve_qp(**data)


@pytest.mark.parametrize(
    ("diagonal", "solver_args"),
    [
        # Slightly indefinite: H = P + sigma I + rho C'C is positive definite, and ADMM
        # reports "solved" at x = (-1, 0, -1), the maximizer along x[1].
        ([1.0, -0.05, 1.0], None),
        # Negative definite with a larger rho: "solved" at x = 0, the global maximizer.
        ([-1.0, -1.0, -1.0], {"rho": 10.0}),
        # Indefinite, default settings: the Cholesky factorization fails.
        ([1.0, -1.0, 1.0], None),
    ],
    ids=["slightly-indefinite", "negative-definite", "indefinite"],
)
def test_n44_solve_qp_indefinite_P(diagonal, solver_args):
    P = torch.diag(torch.tensor(diagonal, dtype=F64))
    q = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    G = torch.cat([torch.eye(3, dtype=F64), -torch.eye(3, dtype=F64)])
    h = torch.ones(6, dtype=F64)
    with pytest.raises(InputError, match="P is not positive semidefinite"):
        solve_qp(P, q, G=G, h=h, solver_args=solver_args)


def test_n44_solve_qp_psd_P_with_roundoff_is_accepted():
    # The check must tolerate round-off: F'F computed in float32 is PSD up to eps.
    F = torch.randn(2, 4)
    P = F.T @ F  # rank 2, eigenvalues ~ +-1e-7 in float32
    (x, info) = solve_qp(P, torch.zeros(4), G=-torch.eye(4), h=torch.ones(4), return_info=True)
    assert info.status == ["solved"]
    assert torch.isfinite(x).all()


def test_n45_solve_qp_empty_problem():
    P, q = torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64)
    with pytest.raises(InputError, match="at least one variable"):
        solve_qp(P, q)


@pytest.mark.parametrize(("smallest", "accepted"), [(-3e-6, True), (-3e-4, False)])
def test_n44_solve_qp_psd_tolerance_is_relative_to_the_size_of_P(smallest, accepted):
    # Eigenvalues down to -1e-5 ||P||_inf are rounding of a PSD matrix (Maros-Meszaros'
    # VALUES has -1.3e-5 against a largest of 10.8); below, P is not convex.
    from altdiff_modeling._qp import PSD_TOLERANCE

    P = torch.diag(torch.tensor([2.0, 1.0, smallest], dtype=F64)) * 5.0
    assert (abs(smallest) < PSD_TOLERANCE * 2.0) is accepted
    q = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    G = torch.cat([torch.eye(3, dtype=F64), -torch.eye(3, dtype=F64)])
    h = torch.ones(6, dtype=F64)
    if accepted:
        x = solve_qp(P, q, G=G, h=h)
        assert bool(torch.isfinite(x).all())
    else:
        with pytest.raises(InputError, match="P is not positive semidefinite"):
            solve_qp(P, q, G=G, h=h)
