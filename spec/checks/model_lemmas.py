"""Family ``model_lemmas``: the runners' nil/empty, cons and length lemmas (``proofs_notes/model_lemmas.md``).

The runner lemmas are registered from two tables: :data:`RUNNERS` (model,
Lean runner name, context, how to call it, its initial-state arguments) and
:data:`LEMMAS` (which lemma shapes each runner has). Every lemma shape has one
decider. The ``DiagonalSSM`` lemmas are written out below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import models as M
from ..context import SYMPY, SYMPY_ARRAY
from ..symbolic import IDENTITY, Budget
from ..verdict import CONTROL, THEOREM
from .base import Dims, register
from .common import (
    lengths_equal,
    sides,
    stokens,
    svec,
    sym_compact,
    sym_H0,
    sym_h0,
    sym_L0,
    sym_s4,
    sym_selective,
    sym_ssm,
)

FAMILY = "model_lemmas"


@dataclass(frozen=True)
class Runner:
    """A model's runner: ``call(model, dims, tokens) -> (final state, outputs)``.

    ``init(dims)`` is the symbolic initial state the call uses (``h0`` or
    ``H0``); ``args`` is how the Lean statement writes the runner's leading
    arguments.
    """

    model: str
    lean: str
    build: Callable[[Dims], Any]
    call: Callable[[Any, Dims, list], tuple]
    init: Callable[[Dims], Any]
    args: str
    mirrors: str


RUNNERS: dict[tuple[str, str], Runner] = {}
for _r in [
    Runner("DiagonalS4Spec", "runList", sym_s4, lambda m, d, tk: m.run_list(SYMPY, sym_h0(d), tk), sym_h0, "h0",
           "models.DiagonalS4Spec.step/run_list/run_array"),
    Runner("DiagonalS4Spec", "runArray", sym_s4, lambda m, d, tk: m.run_array(SYMPY_ARRAY, sym_h0(d), tk), sym_h0, "h0",
           "models.DiagonalS4Spec.step/run_list/run_array"),
    Runner("MambaBlockSpec", "runList", sym_compact, lambda m, d, tk: m.run_list(SYMPY, sym_h0(d), tk), sym_h0, "h0",
           "models.MambaBlockSpec.step/run_list/run_array"),
    Runner("MambaBlockSpec", "runArray", sym_compact, lambda m, d, tk: m.run_array(SYMPY_ARRAY, sym_h0(d), tk), sym_h0,
           "h0", "models.MambaBlockSpec.step/run_list/run_array"),
    Runner("SelectiveMambaBlockSpec", "runListAux", sym_selective,
           lambda m, d, tk: m.run_list_aux(SYMPY, sym_H0(d), sym_L0(d), tk), sym_H0, "H0 L0",
           "models.SelectiveMambaBlockSpec runners"),
    Runner("SelectiveMambaBlockSpec", "runList", sym_selective, lambda m, d, tk: m.run_list(SYMPY, sym_H0(d), tk),
           sym_H0, "H0", "models.SelectiveMambaBlockSpec runners"),
    Runner("SelectiveMambaBlockSpec", "runArrayWithHistory", sym_selective,
           lambda m, d, tk: m.run_array_with_history(SYMPY_ARRAY, sym_H0(d), sym_L0(d), tk), sym_H0, "H0 L0",
           "models.SelectiveMambaBlockSpec runners"),
    Runner("SelectiveMambaBlockSpec", "runArray", sym_selective,
           lambda m, d, tk: m.run_array(SYMPY_ARRAY, sym_H0(d), tk), sym_H0, "H0",
           "models.SelectiveMambaBlockSpec runners"),
]:
    RUNNERS[(_r.model, _r.lean)] = _r

#: (model, runner, lemma shape); the Lean name is ``model.runner_<suffix>``
LEMMAS: list[tuple[str, str, str]] = [
    ("DiagonalS4Spec", "runList", "nil"), ("DiagonalS4Spec", "runList", "cons"),
    ("DiagonalS4Spec", "runList", "outputs_length"), ("DiagonalS4Spec", "runArray", "empty"),
    ("DiagonalS4Spec", "runArray", "outputs_size"),
    ("MambaBlockSpec", "runList", "nil"), ("MambaBlockSpec", "runList", "cons"),
    ("MambaBlockSpec", "runList", "outputs_length"), ("MambaBlockSpec", "runArray", "empty"),
    ("MambaBlockSpec", "runArray", "outputs_size"),
    ("SelectiveMambaBlockSpec", "runListAux", "nil"), ("SelectiveMambaBlockSpec", "runList", "nil"),
    ("SelectiveMambaBlockSpec", "runListAux", "outputs_length"), ("SelectiveMambaBlockSpec", "runList", "outputs_length"),
    ("SelectiveMambaBlockSpec", "runArrayWithHistory", "empty"),
    ("SelectiveMambaBlockSpec", "runArrayWithHistory", "outputs_size"),
    ("SelectiveMambaBlockSpec", "runArray", "empty"), ("SelectiveMambaBlockSpec", "runArray", "outputs_size"),
]

STATEMENTS = {
    "nil": "{run} {args} [] = ({s0}, [])",
    "empty": "{run} {args} #[] = ({s0}, #[])",
    "cons": "{run} {args} (x :: xs) = let (h1, y) = step {s0} x; (hN, ys) = {run} h1 xs in (hN, y :: ys)",
    "outputs_length": "|({run} {args} xs).2| = |xs|",
    "outputs_size": "({run} {args} xs).2.size = xs.size",
}


def _lengths_cases(d: Dims):
    return range(d.n_xs + d.n_ys + 1)


def _lemma_check(r: Runner, shape: str):
    def empty(d: Dims, budget: Budget) -> str:
        m = r.build(d)
        return sides(lambda: r.call(m, d, []), lambda: (r.init(d), []), IDENTITY, budget)

    def length(d: Dims, budget: Budget) -> str:
        m = r.build(d)
        return lengths_equal([(f"|xs|={n}", len(r.call(m, d, stokens("x", n, d.input_dim))[1]), n)
                              for n in _lengths_cases(d)])

    def cons(d: Dims, budget: Budget) -> str:
        m, h0 = r.build(d), r.init(d)
        x = svec("x", d.input_dim)
        rest = stokens("r", d.n_xs, d.input_dim)

        def rhs():
            h1, y = m.step(SYMPY, h0, x)
            hN, ys = m.run_list(SYMPY, h1, rest)
            return hN, [y] + ys

        return sides(lambda: r.call(m, d, [x] + rest), rhs, IDENTITY, budget)

    return {"nil": empty, "empty": empty, "cons": cons, "outputs_length": length, "outputs_size": length}[shape]


for _model, _run, _shape in LEMMAS:
    _r = RUNNERS[(_model, _run)]
    _s0 = _r.args.split()[0]
    register(f"{_model}.{_run}_{_shape}", THEOREM, FAMILY,
             STATEMENTS[_shape].format(run=_run, args=_r.args, s0=_s0), mirrors=_r.mirrors)(_lemma_check(_r, _shape))


# --------------------------------------------------------------------------- DiagonalSSM
SSM = "models.DiagonalSSM.step/transition/scan"


@register("DiagonalSSM.transition_apply_eq_step", THEOREM, FAMILY, "(transition x).apply h = step h x", mirrors=SSM)
def ssm_transition_apply_eq_step(d: Dims, budget: Budget) -> str:
    ssm = sym_ssm(d.state_dim)
    h, x = svec("h", d.state_dim), svec("x", d.state_dim)
    return sides(lambda: ssm.transition(SYMPY, x).apply(SYMPY, h), lambda: ssm.step(SYMPY, h, x), IDENTITY, budget)


@register("DiagonalSSM.scan_nil", THEOREM, FAMILY, "scan h0 [] = []", mirrors=SSM)
def ssm_scan_nil(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    return sides(lambda: ssm.scan(SYMPY, h0, []), list, IDENTITY, budget)


@register("DiagonalSSM.scan_cons", THEOREM, FAMILY, "scan h0 (x :: xs) = step h0 x :: scan (step h0 x) xs", mirrors=SSM)
def ssm_scan_cons(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    x = svec("x", d.state_dim)
    rest = stokens("r", d.n_xs, d.state_dim)

    def rhs():
        h1 = ssm.step(SYMPY, h0, x)
        return [h1] + ssm.scan(SYMPY, h1, rest)

    return sides(lambda: ssm.scan(SYMPY, h0, [x] + rest), rhs, IDENTITY, budget)


@register("DiagonalSSM.scan_size", THEOREM, FAMILY, "(scan h0 xs).size = xs.size", mirrors=SSM)
def ssm_scan_size(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    return lengths_equal([(f"|xs|={n}", len(ssm.scan(SYMPY, h0, stokens("x", n, d.state_dim))), n)
                          for n in _lengths_cases(d)])


# --------------------------------------------------------------------------- control
class RotatedOutputsS4(M.DiagonalS4Spec):
    """Control mutant: ``runList`` returns the right outputs in rotated order (first output moved last)."""

    def run_list(self, ctx, h0, xs):
        h, ys = super().run_list(ctx, h0, xs)
        return h, ys[1:] + ys[:1]


@register("control_model_lemmas_runList_cons_rotated_outputs", CONTROL, FAMILY,
          "runList_cons for a DiagonalS4Spec whose runList rotates its outputs (lengths still agree): must be refuted",
          mirrors="mutant of models.DiagonalS4Spec.run_list")
def control_run_list_cons_rotated(d: Dims, budget: Budget) -> str:
    r = RUNNERS[("DiagonalS4Spec", "runList")]
    mutant = Runner(r.model, r.lean, lambda dd: sym_s4(dd, RotatedOutputsS4), r.call, r.init, r.args, r.mirrors)
    return _lemma_check(mutant, "cons")(d, budget)
