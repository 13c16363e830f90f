"""Family ``runner_equivalence``: the List and Array runners agree (``proofs_notes/runner_equivalence.md``).

``runList = runArray`` and ``runListAux = runArrayWithHistory`` for the
selective block (truncating the history to ``convWidth`` never drops a value
that is read), and the branched activation forms equal the plain ones over the
reals, branch by branch. Control: the Array history truncated to
``convWidth - 1`` (a mutant subclass).
"""

from __future__ import annotations

import sympy

from .. import models as M
from ..context import SYMPY, SYMPY_ARRAY
from ..symbolic import (
    IDENTITY,
    Budget,
    NumericEvaluator,
    Refuted,
    Unknown,
    dag_equal,
    fmt_num,
)
from ..verdict import BEYOND, CONTROL
from .base import Dims, register
from .common import sides, sym, sym_H0, sym_L0, sym_selective, xs_ys

RUN = "runner_equivalence"


class TruncatedTooShort(M.SelectiveMambaBlockSpec):
    """Control mutant: the Array runner's history truncated to ``convWidth - 1`` entries."""

    def step_with_convolution_history(self, ctx, state, x):
        H, L = state
        p = self.project_x(ctx, x)
        z = self.project_z(ctx, x)
        history = ([p] + list(L))[: max(self.conv_width - 1, 0)]  # mutation: W - 1 instead of W
        H1, o = self.step_with_history(ctx, H, history, z)
        return (H1, history), o


def _runner_equivalence(d: Dims, budget: Budget, cls=M.SelectiveMambaBlockSpec, with_history: bool = False) -> str:
    m = sym_selective(d, cls)
    H0 = sym_H0(d)
    L0 = sym_L0(d, d.conv_width + 1) if with_history else []
    xs, ys = xs_ys(d, d.input_dim)
    tokens = xs + ys
    return sides(lambda: m.run_list_aux(SYMPY, H0, L0, tokens),
                 lambda: m.run_array_with_history(SYMPY, H0, L0, tokens), IDENTITY, budget)


@register("selectiveMamba_runList_eq_runArray", BEYOND, RUN,
          "runList H0 xs = runArray H0 xs (outputs and final state): truncating the history to convWidth "
          "never drops a value that is read (same activation forms on both sides)", mirrors="models.SelectiveMambaBlockSpec.run_list / run_array")
def selectiveMamba_runList_eq_runArray(d: Dims, budget: Budget) -> str:
    return _runner_equivalence(d, budget)


@register("selectiveMamba_runListAux_eq_runArrayWithHistory", BEYOND, RUN,
          "runListAux H0 L0 xs = runArrayWithHistory H0 L0 xs for a symbolic history L0 of convWidth + 1 entries", mirrors="models.SelectiveMambaBlockSpec.run_list_aux / run_array_with_history")
def selectiveMamba_runListAux_eq_runArrayWithHistory(d: Dims, budget: Budget) -> str:
    return _runner_equivalence(d, budget, with_history=True)


@register("activation_forms_agree_over_reals", BEYOND, RUN,
          "branched sigmoid = plain sigmoid and branched softplus = plain softplus over the reals, per branch", mirrors="context.Context.sigmoid / softplus (plain and branched)")
def activation_forms_agree_over_reals(d: Dims, budget: Budget) -> str:
    """Per branch of the Array family's Piecewise forms (as the sympy context builds them).

    sigmoid: fractions with positive denominators are equal when the cross
    products expand equal. softplus: both sides are real (logs of positive
    numbers), and exp is injective on the reals, so equality of the
    exponentials (expanded) proves equality.
    """
    x = sym("x", real=True)
    plain_sig = SYMPY.sigmoid(x)
    plain_sp = SYMPY.softplus(x)
    evidence = []
    for label, branched, plain in (("sigmoid", SYMPY_ARRAY.sigmoid(x), plain_sig),
                                   ("softplus", SYMPY_ARRAY.softplus(x), plain_sp)):
        if not isinstance(branched, sympy.Piecewise):
            raise Unknown(f"branched {label} is not a Piecewise: {branched}")
        for k, (expr, cond) in enumerate(branched.args):
            budget.check()
            if dag_equal(expr, plain):
                evidence.append(f"{label} branch {k}: identical")
                continue
            if label == "sigmoid":
                n1, d1 = sympy.fraction(sympy.together(expr))
                n2, d2 = sympy.fraction(sympy.together(plain))
                if sympy.expand(n1 * d2 - n2 * d1) == 0:
                    evidence.append(f"{label} branch {k}: cross products equal (denominators 1 + exp(.) > 0)")
                    continue
            else:
                if sympy.expand(sympy.exp(expr) - sympy.exp(plain)) == 0:
                    evidence.append(f"{label} branch {k}: exp of both sides expands equal (exp injective on R)")
                    continue
            w = numeric_branch_witness(expr, plain, x, cond)
            if w:
                raise Refuted(f"{label} branch {k}: {w}")
            raise Unknown(f"{label} branch {k} ({cond}): not decided")
    return "; ".join(evidence)


def numeric_branch_witness(expr, plain, x, cond) -> str | None:
    for v in (3, 0.5, -0.5, -3):
        ev = NumericEvaluator(values={x: v})
        c = ev.evaluate(cond)
        if c is True or c == sympy.true:
            a, b = ev.evaluate(expr), ev.evaluate(plain)
            if not ev.close(a, b):
                return f"at x={v}: {fmt_num(a)} vs {fmt_num(b)}"
    return None



@register("control_runner_equivalence_history_convWidth_minus_1", CONTROL, RUN,
          "runList = runArray with the Array history truncated to convWidth - 1: must be refuted", mirrors="mutant of models.SelectiveMambaBlockSpec.step_with_convolution_history")
def control_history_too_short(d: Dims, budget: Budget) -> str:
    if d.n_xs + d.n_ys < d.conv_width or d.conv_width < 1:
        raise Unknown("the mutation is unobservable: need |xs| + |ys| >= convWidth >= 1")
    return _runner_equivalence(d, budget, cls=TruncatedTooShort)
