"""Family ``activation_branches``: the branched sigmoid and softplus (``proofs_notes/activation_branches.md``).

The Array family's overflow-safe activations are ``if x > 0 then f else g``.
Equality of each branch with the plain form over the reals
(``activation_forms_agree_over_reals``) does not see a moved threshold or two
swapped branches: both still agree over the reals. These checks look at the
branch structure itself:

1. the condition is exactly ``x > 0``;
2. each branch is identical to the Lean definition, transcribed here
   (sigmoid: ``1/(1+exp(-x))`` for ``x > 0``, ``e/(1+e)`` with ``e = exp(x)``
   otherwise; softplus: ``x + log(1+exp(-x))`` for ``x > 0``,
   ``log(1+exp(x))`` otherwise);
3. on IEEE doubles, at the boundary and overflow values (0, -0, the smallest
   subnormals, +-709.78, +-710, +-800, +-1e308, +-inf) the result is finite
   where the real function is and within 4 ulp-scale of a 50-digit reference.

Controls: a sigmoid with the threshold moved to ``x > 1`` and a softplus with
swapped branches (NaN/inf above 709.78), as context subclasses: refuted.
"""

from __future__ import annotations

import math
from typing import Any

import sympy

from ..context import BRANCHED, DoubleContext, SympyContext
from ..symbolic import Budget, Refuted, Unknown, dag_equal
from ..verdict import BEYOND, CONTROL
from .base import Dims, register

FAMILY = "activation_branches"
BOUNDARY = (0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1.0, -1.0, 709.78, -709.78, 710.0, -710.0, 745.2, -745.2,
            800.0, -800.0, 1e308, -1e308, math.inf, -math.inf)


def _lean_branches(name: str, x):
    """``(condition, then-branch, else-branch)`` as the Lean definition writes them."""
    one = sympy.Integer(1)
    if name == "sigmoid":
        e = sympy.exp(x)
        return sympy.Gt(x, 0), one / (one + sympy.exp(-x)), e / (one + e)
    return sympy.Gt(x, 0), x + sympy.log(one + sympy.exp(-x)), sympy.log(one + sympy.exp(x))


def _reference(name: str, v: float) -> float:
    import mpmath

    if math.isinf(v):
        if name == "sigmoid":
            return 1.0 if v > 0 else 0.0
        return math.inf if v > 0 else 0.0
    with mpmath.workdps(50):
        x = mpmath.mpf(v)
        r = 1 / (1 + mpmath.exp(-x)) if name == "sigmoid" else mpmath.log(1 + mpmath.exp(x))
        return float(r)


def _close(got: float, want: float) -> bool:
    if math.isinf(want):
        return got == want
    if not math.isfinite(got):
        return False
    return abs(got - want) <= 4 * 2.220446049250313e-16 * max(abs(want), 2.2250738585072014e-308)


def check_branches(sym_ctx, dbl_ctx, budget: Budget) -> str:
    """The three obligations of the module docstring for ``sym_ctx`` / ``dbl_ctx`` (branched contexts)."""
    x = sympy.Symbol("x", real=True)
    evidence = []
    for name in ("sigmoid", "softplus"):
        budget.check()
        got = getattr(sym_ctx, name)(x)
        if not isinstance(got, sympy.Piecewise) or len(got.args) != 2:
            raise Refuted(f"branched {name} is not a two-branch Piecewise: {got}")
        (then_e, cond), (else_e, cond2) = got.args
        want_cond, want_then, want_else = _lean_branches(name, x)
        if cond != want_cond:
            raise Refuted(f"branched {name}: the condition {cond} differs from the Lean definition's {want_cond}")
        if cond2 is not sympy.true:
            raise Unknown(f"branched {name}: second condition {cond2}, expected True")
        for label, a, b in (("x > 0", then_e, want_then), ("x <= 0", else_e, want_else)):
            if not dag_equal(a, b):
                raise Refuted(f"branched {name}, branch {label}: {a} differs from the Lean definition's {b}")
        bad = []
        for v in BOUNDARY:
            y = getattr(dbl_ctx, name)(v)
            ref = _reference(name, v)
            if not _close(y, ref):
                bad.append(f"{name}({v!r}) = {y!r}, reference {ref!r}")
        if bad:
            raise Refuted(f"branched {name} on doubles differs from the real value: " + "; ".join(bad[:3]))
        evidence.append(f"{name}: condition x > 0, both branches identical to the Lean terms, "
                        f"{len(BOUNDARY)} boundary doubles within 4 eps of a 50-digit reference")
    return "; ".join(evidence)


@register("branched_activations_condition_branches_and_boundaries", BEYOND, FAMILY,
          "branched sigmoid / softplus: condition exactly x > 0, each branch identical to the Lean term, and on "
          "doubles finite and within 4 eps of the real value at 0, subnormals, +-709.78, +-710, +-800, +-inf",
          mirrors="context.Context.sigmoid / softplus (branched)")
def branched_activations(d: Dims, budget: Budget) -> str:
    return check_branches(SympyContext(BRANCHED, BRANCHED), DoubleContext(BRANCHED, BRANCHED), budget)


# --------------------------------------------------------------------------- control mutants
class _ThresholdMoved:
    """Mixin: sigmoid branches on ``x > 1`` instead of ``x > 0``."""

    def sigmoid(self, x: Any) -> Any:
        one = self.one

        def positive():
            return self.div(one, self.add(one, self.exp(self.neg(x))))

        def other():
            e = self.exp(x)
            return self.div(e, self.add(one, e))

        return self.ite(self.gt(x, self.one), positive, other)  # mutation: threshold 1


class _SoftplusSwapped:
    """Mixin: softplus with its two branches swapped."""

    def softplus(self, x: Any) -> Any:
        one = self.one

        def positive():
            return self.add(x, self.log(self.add(one, self.exp(self.neg(x)))))

        def other():
            return self.log(self.add(one, self.exp(x)))

        return self.ite(self.gt(x, self.zero), other, positive)  # mutation: branches swapped


class ThresholdMovedSympy(_ThresholdMoved, SympyContext):
    pass


class ThresholdMovedDouble(_ThresholdMoved, DoubleContext):
    pass


class SoftplusSwappedSympy(_SoftplusSwapped, SympyContext):
    pass


class SoftplusSwappedDouble(_SoftplusSwapped, DoubleContext):
    pass


@register("control_activation_sigmoid_threshold_moved", CONTROL, FAMILY,
          "the branch check for a sigmoid that branches on x > 1: must be refuted",
          mirrors="mutant of context.Context.sigmoid")
def control_threshold_moved(d: Dims, budget: Budget) -> str:
    return check_branches(ThresholdMovedSympy(BRANCHED, BRANCHED), ThresholdMovedDouble(BRANCHED, BRANCHED), budget)


@register("control_activation_softplus_branches_swapped", CONTROL, FAMILY,
          "the branch check for a softplus with its branches swapped: must be refuted",
          mirrors="mutant of context.Context.softplus")
def control_softplus_swapped(d: Dims, budget: Budget) -> str:
    return check_branches(SoftplusSwappedSympy(BRANCHED, BRANCHED), SoftplusSwappedDouble(BRANCHED, BRANCHED), budget)
