"""Family ``length_generic_certificate`` (``proofs_notes/length_generic_certificate.md``).

Two obligations at the given dimensions give causality at every length: (C1)
the runner equals the checker's own left fold of the model's step, (C2) the
step reads only the old state, the current token and the parameters. Control:
a mutant S4 whose step also reads the next token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import models as M
from ..context import SYMPY, SYMPY_ARRAY
from ..symbolic import IDENTITY, Budget, Refuted
from ..verdict import BEYOND, CONTROL
from .base import Dims, register
from .common import (
    all_symbols,
    model_params,
    sides,
    stokens,
    svec,
    sym_compact,
    sym_H0,
    sym_L0,
    sym_s4,
    sym_selective,
)

CERT = "length_generic_certificate"


def _fold_steps(step_at, s0, xs):
    """The checker's own left fold of a step over a token stream: ``(final state, outputs)``."""
    s = s0
    outs = []
    for t in range(len(xs)):
        s, o = step_at(s, xs, t)
        outs.append(o)
    return s, outs


class LookaheadStepS4(M.DiagonalS4Spec):
    """Control mutant: a step that also reads a look-ahead slot (the next token), added to the current one."""

    def step_at(self, ctx, h, xs, t):
        x = xs[t]
        if t + 1 < len(xs):
            x = [ctx.add(a, b) for a, b in zip(x, xs[t + 1])]  # mutation: reads token t + 1
        return self.step(ctx, h, x)

    def run_list(self, ctx, h0, xs):
        return _fold_steps(lambda h, tk, t: self.step_at(ctx, h, tk, t), h0, xs)


def certificate(run: Callable[[Any, list], tuple], step_at: Callable[[Any, list, int], tuple], s0: Any,
                state_of_run: Callable[[Any], Any], d: Dims, budget: Budget, params: set) -> str:
    """The two obligations of the length-generic certificate at the given dimensions.

    (C1) runner = fold of step: ``run(s0, xs)`` equals the checker's own left
    fold of ``step_at`` over ``xs`` (final state and outputs), by identity,
    for a symbolic initial state, at lengths 0..|xs|+|ys|.
    (C2) locality: for a symbolic state and a symbolic token stream of three
    tokens, the new state and the output of the step at every position t
    contain only symbols of the old state, of token t and of the parameters.
    """
    n_total = d.n_xs + d.n_ys
    evid = []
    for n in sorted({0, 1, n_total}):
        tokens = stokens("x", n, d.input_dim)
        evid.append(sides(lambda: state_and_outputs(run(s0, tokens), state_of_run),
                          lambda: state_and_outputs(_fold_steps(step_at, s0, tokens), state_of_run),
                          IDENTITY, budget))
    stream = stokens("w", 3, d.input_dim)
    allowed_base = params | all_symbols(s0)
    for t in range(len(stream)):
        budget.check()
        new_state, out = step_at(s0, stream, t)
        allowed = allowed_base | set(stream[t])
        for label, part in (("new state", new_state), ("output", out)):
            bad = sorted(all_symbols(part) - allowed, key=lambda s: s.name)
            if bad:
                where = [f"token {k}" for k in range(len(stream)) if set(stream[k]) & set(bad)]
                raise Refuted(f"(C2) the {label} of the step at position {t} reads {bad[0].name} "
                              f"({', '.join(where) or 'not the old state, token or parameters'}), "
                              f"not only the old state and token {t}")
    return (f"(C1) runner = fold of step at lengths {sorted({0, 1, n_total})}: {evid[-1]}; "
            f"(C2) step at positions 0..2 of a symbolic 3-token stream reads only the old state, "
            f"the current token and parameters")


def state_and_outputs(result, state_of_run):
    return state_of_run(result[0]), result[1]


def _cert_s4_like(d: Dims, budget: Budget, m) -> str:
    step_at = getattr(m, "step_at", None)
    if step_at is not None:
        sa = lambda h, xs, t: step_at(SYMPY, h, xs, t)
    else:
        sa = lambda h, xs, t: m.step(SYMPY, h, xs[t])
    return certificate(lambda s0, tk: m.run_list(SYMPY, s0, tk), sa, svec("h", d.state_dim), lambda s: s,
                       d, budget, model_params(m))


@register("certificate_diagonalS4", BEYOND, CERT,
          "DiagonalS4Spec: runList = fold of step (symbolic h0) and step reads only (old state, current token)", mirrors="models.DiagonalS4Spec.step / run_list")
def certificate_diagonalS4(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_s4(d))


@register("certificate_compactMamba", BEYOND, CERT,
          "MambaBlockSpec: runList = fold of step (symbolic h0) and step reads only (old state, current token)", mirrors="models.MambaBlockSpec.step / run_list")
def certificate_compactMamba(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_compact(d))


@register("certificate_selectiveMamba", BEYOND, CERT,
          "SelectiveMambaBlockSpec (List family): runListAux = fold of the step on (H, history) and the step "
          "reads only (old H, old history, current token)", mirrors="models.SelectiveMambaBlockSpec.step_list / run_list_aux")
def certificate_selectiveMamba(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    s0 = (sym_H0(d), sym_L0(d, max(d.conv_width - 1, 0)))
    return certificate(lambda s, tk: m.run_list_aux(SYMPY, s[0], s[1], tk),
                       lambda s, xs, t: m.step_list(SYMPY, s, xs[t]), s0, lambda s: s[0] if isinstance(s, tuple) else s,
                       d, budget, model_params(m))


@register("certificate_selectiveMamba_array", BEYOND, CERT,
          "SelectiveMambaBlockSpec (Array family): runArrayWithHistory = fold of stepWithConvolutionHistory and "
          "the step reads only (old H, old truncated history, current token)", mirrors="models.SelectiveMambaBlockSpec.step_with_convolution_history / run_array_with_history")
def certificate_selectiveMamba_array(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    s0 = (sym_H0(d), sym_L0(d, d.conv_width))
    return certificate(lambda s, tk: m.run_array_with_history(SYMPY_ARRAY, s[0], s[1], tk),
                       lambda s, xs, t: m.step_with_convolution_history(SYMPY_ARRAY, s, xs[t]), s0,
                       lambda s: s[0] if isinstance(s, tuple) else s, d, budget, model_params(m))



@register("control_certificate_lookahead_step", CONTROL, CERT,
          "certificate for a diagonal S4 whose step also reads a look-ahead slot (token t + 1): must be refuted", mirrors="mutant of models.DiagonalS4Spec.step")
def control_certificate_lookahead(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_s4(d, LookaheadStepS4))
