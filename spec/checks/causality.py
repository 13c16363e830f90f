"""Family ``causality``: appending inputs never changes earlier outputs (``proofs_notes/causality.md``).

The eight Lean theorems ``*_append_outputs_prefix`` are registered from
:data:`CAUSALITY_TABLE` (model, runner, context); each is decided by
:func:`~nbssm.spec.checks.common.prefix_causality`. The controls run the same
decider on mutant subclasses of the spec models (a convolution tap reading the
next token, a reversed scan) and on the mutated statement ``take (|xs| + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import models as M
from ..context import DOUBLE, SYMPY, SYMPY_ARRAY
from ..symbolic import Budget, Refuted
from ..verdict import CONTROL, THEOREM
from .base import Dims, register
from .common import (
    prefix_causality,
    sym_compact,
    sym_H0,
    sym_h0,
    sym_L0,
    sym_s4,
    sym_selective,
    xs_ys,
)

FAMILY = "causality"


@dataclass(frozen=True)
class CausalityRow:
    """One prefix-causality statement: ``take keep (run (xs ++ ys)).2 = (run xs).2``.

    ``model(dims)`` builds the symbolic model (possibly a mutant subclass);
    ``run(model, dims, tokens)`` returns the outputs of the runner under test.
    """

    name: str
    statement: str
    model: Callable[[Dims], Any]
    run: Callable[[Any, Dims, list], list]
    mirrors: str
    kind: str = THEOREM


def _s4_list(m, d, tk):
    return m.run_list(SYMPY, sym_h0(d), tk)[1]


def _s4_array(m, d, tk):
    return m.run_array(SYMPY_ARRAY, sym_h0(d), tk)[1]


CAUSALITY_TABLE: list[CausalityRow] = [
    CausalityRow("diagonalS4_runList_append_outputs_prefix",
                 "take |xs| (m.runList h0 (xs ++ ys)).2 = (m.runList h0 xs).2 for DiagonalS4Spec",
                 sym_s4, _s4_list, "models.DiagonalS4Spec.run_list"),
    CausalityRow("compactMamba_runList_append_outputs_prefix",
                 "take |xs| (m.runList h0 (xs ++ ys)).2 = (m.runList h0 xs).2 for MambaBlockSpec",
                 sym_compact, _s4_list, "models.MambaBlockSpec.run_list"),
    CausalityRow("selectiveMamba_runListAux_append_outputs_prefix",
                 "take |xs| (m.runListAux H0 L0 (xs ++ ys)).2 = (m.runListAux H0 L0 xs).2 for any history L0",
                 sym_selective, lambda m, d, tk: m.run_list_aux(SYMPY, sym_H0(d), sym_L0(d), tk)[1],
                 "models.SelectiveMambaBlockSpec.run_list_aux"),
    CausalityRow("selectiveMamba_runList_append_outputs_prefix",
                 "take |xs| (m.runList H0 (xs ++ ys)).2 = (m.runList H0 xs).2 for SelectiveMambaBlockSpec",
                 sym_selective, lambda m, d, tk: m.run_list(SYMPY, sym_H0(d), tk)[1],
                 "models.SelectiveMambaBlockSpec.run_list"),
    CausalityRow("diagonalS4_runArray_append_outputs_prefix",
                 "take |xs| (m.runArray h0 (xs ++ ys)).2 = (m.runArray h0 xs).2 for DiagonalS4Spec",
                 sym_s4, _s4_array, "models.DiagonalS4Spec.run_array"),
    CausalityRow("compactMamba_runArray_append_outputs_prefix",
                 "take |xs| (m.runArray h0 (xs ++ ys)).2 = (m.runArray h0 xs).2 for MambaBlockSpec (branched sigmoid)",
                 sym_compact, _s4_array, "models.MambaBlockSpec.run_array"),
    CausalityRow("selectiveMamba_runArrayWithHistory_append_outputs_prefix",
                 "take |xs| (m.runArrayWithHistory H0 L0 (xs ++ ys)).2 = (m.runArrayWithHistory H0 L0 xs).2",
                 sym_selective, lambda m, d, tk: m.run_array_with_history(SYMPY_ARRAY, sym_H0(d), sym_L0(d), tk)[1],
                 "models.SelectiveMambaBlockSpec.run_array_with_history"),
    CausalityRow("selectiveMamba_runArray_append_outputs_prefix",
                 "take |xs| (m.runArray H0 (xs ++ ys)).2 = (m.runArray H0 xs).2 (branched activations)",
                 sym_selective, lambda m, d, tk: m.run_array(SYMPY_ARRAY, sym_H0(d), tk)[1],
                 "models.SelectiveMambaBlockSpec.run_array"),
]


# --------------------------------------------------------------------------- control mutants
class LookaheadConvSelective(M.SelectiveMambaBlockSpec):
    """Control mutant: the convolution window gains a leading tap that reads the next token's projection."""

    def run_list_aux(self, ctx, H0, L0, xs):
        H, L, ys = H0, list(L0), []
        for t, x in enumerate(xs):
            p = self.project_x(ctx, x)
            z = self.project_z(ctx, x)
            L = [p] + L
            nxt = self.project_x(ctx, xs[t + 1]) if t + 1 < len(xs) else [ctx.zero] * self.inner_dim
            H, o = self.step_with_history(ctx, H, [nxt] + L, z)  # mutation: tap 0 reads token t + 1
            ys.append(o)
        return H, ys


class ReversedScanS4(M.DiagonalS4Spec):
    """Control mutant: the S4 scan run in reverse (last token first), outputs put back in token order."""

    def run_list(self, ctx, h0, xs):
        h, ys = M.run_list_steps(lambda hh, x: self.step(ctx, hh, x), h0, list(reversed(xs)))
        return h, list(reversed(ys))


CAUSALITY_CONTROLS: list[CausalityRow] = [
    CausalityRow("control_causality_conv_reads_next_token",
                 "selective block whose convolution has a tap reading the next token: prefix causality must be refuted",
                 lambda d: sym_selective(d, LookaheadConvSelective),
                 lambda m, d, tk: m.run_list(SYMPY, sym_H0(d), tk)[1],
                 "mutant of models.SelectiveMambaBlockSpec.run_list_aux", CONTROL),
    CausalityRow("control_causality_reversed_scan",
                 "diagonal S4 whose scan runs in reverse: prefix causality must be refuted",
                 lambda d: sym_s4(d, ReversedScanS4), _s4_list, "mutant of models.DiagonalS4Spec.run_list", CONTROL),
]


def _row_check(row: CausalityRow):
    def check(d: Dims, budget: Budget) -> str:
        m = row.model(d)
        xs, ys = xs_ys(d, d.input_dim)
        return prefix_causality(lambda tk: row.run(m, d, tk), xs, ys, budget)

    check.__name__ = row.name
    check.__doc__ = row.statement
    return check


for _row in CAUSALITY_TABLE + CAUSALITY_CONTROLS:
    register(_row.name, _row.kind, FAMILY, _row.statement, mirrors=_row.mirrors)(_row_check(_row))


@register("control_causality_take_succ", CONTROL, FAMILY,
          "take (|xs| + 1) (runList h0 (xs ++ ys)).2 = (runList h0 xs).2 for DiagonalS4Spec: must be refuted",
          mirrors="models.DiagonalS4Spec.run_list")
def control_take_succ(d: Dims, budget: Budget) -> str:
    m = sym_s4(d)
    xs, ys = xs_ys(d, d.input_dim)
    try:
        return prefix_causality(lambda tk: _s4_list(m, d, tk), xs, ys, budget, keep=len(xs) + 1)
    except Refuted as e:
        # the spec document's concrete instance, evaluated in IEEE doubles on the real runner
        one = M.DiagonalS4Spec(1, 1, 1, [[1.0]], [[1.0]], M.DiagonalSSM(1, [1.0], [1.0], [1.0], [0.0]))
        a = [o[0] for o in one.run_list(DOUBLE, [0.0], [[1.0], [2.0], [5.0]])[1]]
        b = [o[0] for o in one.run_list(DOUBLE, [0.0], [[1.0], [2.0], [9.0]])[1]]
        raise Refuted(f"{e}; concretely (one channel, A=B=C=1, D=0, h0=0): [1,2,5] -> {a}, [1,2,9] -> {b}: "
                      f"the first |xs|+1 = 3 outputs of xs=[1,2] ++ ys differ")
