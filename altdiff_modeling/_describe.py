"""CVXPY expressions and constraints as the user wrote them, for canonicalization's errors.

CVXPY prints its own forms (``PnormApprox(var270 + -param271, 2)``), auto-generated
names and whole arrays. `Names.describe` writes ``cp.norm(x - y, 2)`` instead: the
user's atoms, a leaf's own name (else its place in the layer's lists, else its shape),
an array by its shape, and, past a length, inner subexpressions as ``...`` (never a
cut word). `offending_atoms` finds the atoms that leave the QP class. Only `_canon`
uses this module.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import cvxpy as cp
import numpy as np
from cvxpy.atoms.affine.add_expr import AddExpression
from cvxpy.atoms.affine.binary_operators import DivExpression, MulExpression, multiply
from cvxpy.atoms.affine.index import index, special_index
from cvxpy.atoms.affine.promote import Promote
from cvxpy.atoms.affine.unary_operators import NegExpression
from cvxpy.constraints import Equality, Inequality, NonNeg, NonPos, Zero
from cvxpy.constraints.psd import PSD
from cvxpy.expressions.constants.constant import Constant
from cvxpy.expressions.leaf import Leaf
from cvxpy.utilities import key_utils

__all__ = ["Names", "offending_atoms"]

_LIMIT = 100  # characters of one described expression or constraint
_MAX_ARGS = 4  # arguments of one atom written out; the rest become "..."
# Precedence of what a rendering is, to parenthesize operands: sums, unary minus,
# products, then atoms, leaves and indexing.
_SUM, _NEG, _PRODUCT, _ATOM = 1, 2, 3, 4
# CVXPY classes whose user-facing function has another name (the rest: ``cp.<class>``).
_FUNCTIONS = {
    "GeoMean": "geo_mean",
    "GeoMeanApprox": "geo_mean",
    "QuadForm": "quad_form",
    "SymbolicQuadForm": "quad_form",
    "Hstack": "hstack",
    "Vstack": "vstack",
    "Sum": "sum",
    "MatrixFrac": "matrix_frac",
    "Trace": "trace",
}


def _is_auto_name(leaf: Leaf) -> bool:
    """Whether CVXPY named the leaf itself (``param12``, ``var7``): the user gave none."""
    return leaf.name() in (f"param{leaf.id}", f"var{leaf.id}")


def _number(value: Any) -> str:
    return f"{float(np.real(value)):g}"


class Names:
    """How the user refers to the leaves of a problem, and descriptions built from it.

    Args:
        parameters: The layer's ``parameters`` list (its positions name unnamed ones).
        variables: The layer's ``variables`` list.
    """

    def __init__(self, parameters: Sequence[Any] = (), variables: Sequence[Any] = ()) -> None:
        self._places: dict[int, str] = {}
        for kind, items in (("parameters", parameters), ("variables", variables)):
            for position, item in enumerate(items):
                if isinstance(item, Leaf):
                    self._places.setdefault(item.id, f"{kind}[{position}]")

    @staticmethod
    def named(leaf: Leaf) -> bool:
        """Whether the user gave the leaf a name."""
        return not _is_auto_name(leaf)

    def leaf(self, leaf: Leaf) -> str:
        """A leaf inside an expression: ``h``, ``parameters[1]`` or ``<(3,) variable>``."""
        if isinstance(leaf, Constant):
            value = leaf.value
            value = np.asarray(value.toarray() if hasattr(value, "toarray") else value)
            return _number(value.flat[0]) if value.size == 1 else f"<{tuple(leaf.shape)} array>"
        if not _is_auto_name(leaf):
            return leaf.name()
        if leaf.id in self._places:
            return self._places[leaf.id]
        kind = "parameter" if isinstance(leaf, cp.Parameter) else "variable"
        return f"<{tuple(leaf.shape)} {kind}>"

    def parameter(self, param: cp.Parameter) -> str:
        """A parameter in a sentence: ``parameter 'h'``, ``parameters[1]`` (unnamed)."""
        if not _is_auto_name(param):
            return f"parameter '{param.name()}'"
        return self._places.get(param.id, f"an unnamed {tuple(param.shape)} parameter")

    def variable(self, var: cp.Variable) -> str:
        """A variable in a sentence: ``variable 'x'``, ``variables[0]`` (unnamed)."""
        if not _is_auto_name(var):
            return f"variable '{var.name()}'"
        return self._places.get(var.id, f"an unnamed {tuple(var.shape)} variable")

    def describe(self, item: Any) -> str:
        """An expression or constraint as the user wrote it, within about `_LIMIT` characters.

        Deeper subexpressions are replaced by ``...`` until it fits; the outermost two
        levels are always written.
        """
        text = self._render_any(item, 12)
        depth = 11
        while len(text) > _LIMIT and depth > 1:
            text = self._render_any(item, depth)
            depth -= 1
        return text

    def _render_any(self, item: Any, depth: int) -> str:
        if isinstance(item, cp.constraints.constraint.Constraint):
            return self._constraint(item, depth)
        return self._render(item, depth)[0]

    def _constraint(self, constraint: Any, depth: int) -> str:
        def side(expr: Any) -> str:
            return self._render(expr, depth)[0]

        if isinstance(constraint, Inequality):
            return f"{side(constraint.args[0])} <= {side(constraint.args[1])}"
        if isinstance(constraint, Equality):
            return f"{side(constraint.args[0])} == {side(constraint.args[1])}"
        for cls, text in ((Zero, "== 0"), (NonNeg, ">= 0"), (NonPos, "<= 0"), (PSD, ">> 0")):
            if isinstance(constraint, cls):
                return f"{side(constraint.args[0])} {text}"
        return f"cp.{type(constraint).__name__}({self._arguments(constraint.args, depth)})"

    def _arguments(self, args: Sequence[Any], depth: int) -> str:
        shown = [self._render(arg, depth)[0] for arg in args[:_MAX_ARGS]]
        return ", ".join(shown + (["..."] if len(args) > _MAX_ARGS else []))

    def _operand(self, expr: Any, depth: int, above: int) -> str:
        text, precedence = self._render(expr, depth)
        return f"({text})" if precedence < above else text

    def _render(self, expr: Any, depth: int) -> tuple[str, int]:
        """``(text, precedence)`` of an expression, subexpressions below ``depth`` as ``...``."""
        if isinstance(expr, Leaf):
            return self.leaf(expr), _ATOM
        if depth <= 0:
            return "...", _ATOM
        inner = depth - 1
        args = expr.args
        if isinstance(expr, Promote):
            return self._render(args[0], depth)
        if isinstance(expr, AddExpression):
            # CVXPY writes X >> 0 as X - 0: the zero the user did not write is dropped.
            terms = [a for a in args if not _is_zero(a)] or list(args[:1])
            parts = [self._operand(terms[0], inner, _SUM)]
            for arg in terms[1:]:
                if isinstance(arg, NegExpression):
                    parts.append(f"- {self._operand(arg.args[0], inner, _PRODUCT)}")
                else:
                    parts.append(f"+ {self._operand(arg, inner, _SUM)}")
            return " ".join(parts), _SUM
        if isinstance(expr, NegExpression):
            return f"-{self._operand(args[0], inner, _PRODUCT)}", _NEG
        if isinstance(expr, DivExpression):
            return (
                f"{self._operand(args[0], inner, _PRODUCT)} / {self._operand(args[1], inner, _ATOM)}",
                _PRODUCT,
            )
        if isinstance(expr, multiply) and not any(_is_scalar(a) for a in args):
            return f"cp.multiply({self._arguments(args, inner)})", _ATOM
        if isinstance(expr, MulExpression | multiply):
            op = "*" if isinstance(expr, multiply) else "@"
            left = self._operand(args[0], inner, _PRODUCT)
            right = self._operand(args[1], inner, _ATOM)
            return f"{left} {op} {right}", _PRODUCT
        if isinstance(expr, index):
            key = ", ".join(key_utils.to_str(expr.key))
            return f"{self._operand(args[0], inner, _ATOM)}[{key}]", _ATOM
        if isinstance(expr, special_index):
            key = key_utils.special_key_to_str(expr.key)
            key = key if len(key) <= 20 else "..."
            if isinstance(expr.key, list | np.ndarray):
                key = f"[{key}]"  # x[[0, 2]], not x[0, 2]
            return f"{self._operand(args[0], inner, _ATOM)}[{key}]", _ATOM
        if isinstance(expr, cp.atoms.affine.reshape.reshape):
            while isinstance(args[0], cp.atoms.affine.reshape.reshape):
                args = args[0].args  # CVXPY's reshapes of reshapes (cp.norm(X, "fro"))
            if len(expr.shape) <= 1:
                return f"cp.vec({self._render(args[0], inner)[0]})", _ATOM
            return f"cp.reshape({self._render(args[0], inner)[0]}, {tuple(expr.shape)})", _ATOM
        if isinstance(expr, cp.atoms.affine.transpose.transpose):
            return f"{self._operand(args[0], inner, _ATOM)}.T", _ATOM
        return self._atom(expr, inner), _ATOM

    def _atom(self, expr: Any, inner: int) -> str:
        """``cp.<function>(...)`` for an atom, under the name the user called it by."""
        cls = type(expr).__name__
        arg = self._render(expr.args[0], inner)[0] if expr.args else ""
        if cls in ("Pnorm", "PnormApprox"):
            p = expr.original_p if hasattr(expr, "original_p") else expr.p
            p_text = _number(p) if isinstance(p, numbers.Number) else str(p)
            return f"cp.norm({arg}, 2)" if p_text == "2" else f"cp.pnorm({arg}, {p_text})"
        if cls in ("Power", "PowerApprox"):
            p = expr.p_used
            named = {2.0: "square", 0.5: "sqrt", -1.0: "inv_pos"}.get(p) if p is not None else None
            if named:
                return f"cp.{named}({arg})"
            return f"cp.power({arg}, {_number(p) if p is not None else '...'})"
        if cls == "quad_over_lin":
            denominator = expr.args[1]
            if isinstance(denominator, Constant) and np.all(denominator.value == 1):
                return f"cp.sum_squares({arg})"
        if cls == "huber":
            M = expr.M
            if isinstance(M, Constant) and np.all(M.value == 1):
                return f"cp.huber({arg})"
            return f"cp.huber({arg}, {self._render(M, inner)[0]})"
        if cls in ("Hstack", "Vstack"):
            return f"cp.{_FUNCTIONS[cls]}([{self._arguments(expr.args, inner)}])"
        return f"cp.{_FUNCTIONS.get(cls, cls)}({self._arguments(expr.args, inner)})"


def _is_scalar(expr: Any) -> bool:
    """A scalar as the user wrote it (CVXPY promotes ``2`` in ``2 * x`` to x's shape)."""
    return expr.is_scalar() or isinstance(expr, Promote)


def _is_zero(expr: Any) -> bool:
    return expr.is_constant() and not expr.parameters() and not np.any(expr.value)


def _fresh(expr: Any) -> Any | None:
    """The atom on fresh variables in place of its non-constant arguments (None: cannot)."""
    try:
        return expr.copy([a if a.is_constant() else cp.Variable(a.shape) for a in expr.args])
    except Exception:  # an atom whose arguments cannot be swapped: judge it as it is
        return None


def offending_atoms(expr: Any, allowed: Callable[[Any], bool]) -> list[Any]:
    """The outermost atoms of ``expr`` that keep it from being ``allowed``.

    ``allowed`` is the test of what the supported class admits where ``expr`` stands
    (`_canon` asks whether CVXPY reduces it with linear and second-order cones). An
    affine atom passes the question to its arguments; an allowed atom whose arguments
    are not asks them to be piecewise affine (the arguments any atom of the class
    composes with); any other atom that is not allowed is itself the culprit. Empty
    when ``expr`` is allowed.
    """
    if isinstance(expr, Leaf) or allowed(expr):
        return []
    fresh = _fresh(expr)
    if fresh is None:
        return [expr]
    if fresh.is_affine():
        inner_allowed = allowed
    elif allowed(fresh):
        inner_allowed = _is_pwl
    else:
        return [expr]
    found = [atom for arg in expr.args for atom in offending_atoms(arg, inner_allowed)]
    return found or [expr]


def _is_pwl(expr: Any) -> bool:
    return expr.is_pwl()
