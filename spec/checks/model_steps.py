"""Family ``model_steps``: each model step against its Lean definition (``proofs_notes/model_steps.md``).

Every other family checks a relation between runners (causality, append,
List = Array): a step that computes the wrong function consistently passes
them all. Here each step is compared, at symbolic parameters, state and
token, with a transcription of section 4 of the spec document written in
this module in plain sympy arithmetic (it calls no spec function): the
S4 step, the compact-Mamba step, and the selective block's List step
(unbounded history) and Array step (history truncated to ``convWidth``).
Decided by identity, else ``expand`` of the difference.

Controls (mutant subclasses of the spec models, each a plausible slip): an
S4 step reading out from the old state, a compact gate with SiLU instead of
sigmoid, a selective step with the B and C projections swapped: refuted.
"""

from __future__ import annotations

import sympy

from .. import models as M
from ..context import SYMPY
from ..symbolic import EXPAND, IDENTITY, Budget, Unknown
from ..verdict import BEYOND, CONTROL
from .base import Dims, register
from .common import sides, stokens, svec, sym_compact, sym_H0, sym_s4, sym_selective

FAMILY = "model_steps"


# --------------------------------------------------------------------------- transcriptions (section 4)
def _vm(v, W, n_out):
    """``(v @ W)_j``, summed with sympy (the order is irrelevant over the reals)."""
    return [sympy.Add(*[v[i] * W[i][j] for i in range(len(v))]) for j in range(n_out)]


def _sigmoid(x):
    return 1 / (1 + sympy.exp(-x))


def _softplus(x):
    return sympy.log(1 + sympy.exp(x))


def s4_step(m, h, x):
    """4.1: ``s = x@inProj``; ``h' = A⊙h + B⊙s``; ``o = (C⊙h' + D⊙s)@outProj``."""
    A, B, C, D = m.ssm.A, m.ssm.B, m.ssm.C, m.ssm.D
    n = m.state_dim
    s = _vm(x, m.in_proj, n)
    h1 = [A[i] * h[i] + B[i] * s[i] for i in range(n)]
    return h1, _vm([C[i] * h1[i] + D[i] * s[i] for i in range(n)], m.out_proj, m.output_dim)


def compact_step(m, h, x, gate=_sigmoid):
    """4.2: the S4 readout gated by ``sigmoid(x@gateProj)``."""
    A, B, C, D = m.ssm.A, m.ssm.B, m.ssm.C, m.ssm.D
    n = m.state_dim
    s = _vm(x, m.in_proj, n)
    h1 = [A[i] * h[i] + B[i] * s[i] for i in range(n)]
    g = [gate(v) for v in _vm(x, m.gate_proj, n)]
    return h1, _vm([(C[i] * h1[i] + D[i] * s[i]) * g[i] for i in range(n)], m.out_proj, m.output_dim)


def selective_step(m, H, L, x, truncate: bool):
    """4.3, per token, in the document's order; returns ``((H', L_t), o)``."""
    e, ns, w = m.inner_dim, m.state_dim, m.conv_width
    p = _vm(x, m.x_proj, e)
    z = _vm(x, m.z_proj, e)
    Lt = [p] + list(L)
    if truncate:
        Lt = Lt[:w]
    c = [m.conv_bias[d] + sympy.Add(*[(Lt[k][d] if k < len(Lt) else 0) * m.conv_kernel[k][d] for k in range(w)])
         for d in range(e)]
    u = [v * _sigmoid(v) for v in c]
    pre = _vm(u, m.dt_proj, e)
    delta = [_softplus(pre[d] + m.dt_bias[d]) for d in range(e)]
    Bt, Ct = _vm(u, m.b_proj, ns), _vm(u, m.c_proj, ns)
    H1 = [[sympy.exp(-(delta[d] * m.A[d][n])) * H[d][n] + (delta[d] * Bt[n]) * u[d] for n in range(ns)]
          for d in range(e)]
    y = [m.d_skip[d] * u[d] + sympy.Add(*[H1[d][n] * Ct[n] for n in range(ns)]) for d in range(e)]
    o = _vm([y[d] * (z[d] * _sigmoid(z[d])) for d in range(e)], m.out_proj, m.output_dim)
    return (H1, Lt), o


# --------------------------------------------------------------------------- checks
def _decide(lhs, rhs, budget: Budget) -> str:
    """Identity (a difference is refuted at a numeric point at once), else ``expand`` of the difference."""
    try:
        return sides(lhs, rhs, IDENTITY, budget)
    except Unknown:
        return sides(lhs, rhs, EXPAND, budget)


def _s4_like(d: Dims, budget: Budget, m, transcription) -> str:
    h, x = svec("h", d.state_dim), svec("x", d.input_dim)
    return _decide(lambda: m.step(SYMPY, h, x), lambda: transcription(m, h, x), budget)


def _selective(d: Dims, budget: Budget, m, array: bool) -> str:
    H = sym_H0(d)
    x = svec("x", d.input_dim)
    n_hist = max(d.conv_width, 1)  # a full history: the truncation matters for the Array step
    L = stokens("L", n_hist, d.inner_dim)
    if array:
        return _decide(lambda: m.step_with_convolution_history(SYMPY, (H, L), x),
                       lambda: selective_step(m, H, L, x, truncate=True), budget)
    return _decide(lambda: m.step_list(SYMPY, (H, L), x), lambda: selective_step(m, H, L, x, truncate=False), budget)


@register("diagonalS4_step_matches_definition", BEYOND, FAMILY,
          "DiagonalS4Spec.step h x = (A⊙h + B⊙s, (C⊙h' + D⊙s)@outProj) with s = x@inProj (section 4.1)", EXPAND,
          mirrors="models.DiagonalS4Spec.step")
def s4_step_row(d: Dims, budget: Budget) -> str:
    return _s4_like(d, budget, sym_s4(d), s4_step)


@register("compactMamba_step_matches_definition", BEYOND, FAMILY,
          "MambaBlockSpec.step: the S4 readout gated by sigmoid(x@gateProj), then @outProj (section 4.2)", EXPAND,
          mirrors="models.MambaBlockSpec.step")
def compact_step_row(d: Dims, budget: Budget) -> str:
    return _s4_like(d, budget, sym_compact(d), compact_step)


@register("selectiveMamba_stepList_matches_definition", BEYOND, FAMILY,
          "SelectiveMambaBlockSpec List step on (H, L): projections, history p :: L, convolution, SiLU, softplus "
          "delta, B, C, recurrence, D skip, SiLU gate, outProj (section 4.3)", EXPAND,
          mirrors="models.SelectiveMambaBlockSpec.step_list / step_with_history")
def selective_list_row(d: Dims, budget: Budget) -> str:
    return _selective(d, budget, sym_selective(d), array=False)


@register("selectiveMamba_stepWithConvolutionHistory_matches_definition", BEYOND, FAMILY,
          "SelectiveMambaBlockSpec Array step: as the List step with L_t = take convWidth (p_t :: L) (section 4.3)",
          EXPAND, mirrors="models.SelectiveMambaBlockSpec.step_with_convolution_history")
def selective_array_row(d: Dims, budget: Budget) -> str:
    return _selective(d, budget, sym_selective(d), array=True)


# --------------------------------------------------------------------------- control mutants
class ReadoutFromOldStateS4(M.DiagonalS4Spec):
    """Control mutant: the output read from the old state ``h`` instead of the updated ``h'``."""

    def step(self, ctx, h, x):
        s = M.vec_mat(ctx, x, self.in_proj, self.state_dim)
        h1 = self.ssm.step(ctx, h, s)
        return h1, M.vec_mat(ctx, self.ssm.readout(ctx, h, s), self.out_proj, self.output_dim)  # mutation


class SiluGateCompact(M.MambaBlockSpec):
    """Control mutant: the compact gate is SiLU of the projection instead of sigmoid."""

    def step(self, ctx, h, x):
        s = M.vec_mat(ctx, x, self.in_proj, self.state_dim)
        h1 = self.ssm.step(ctx, h, s)
        y = self.ssm.readout(ctx, h1, s)
        g = [ctx.silu(v) for v in M.vec_mat(ctx, x, self.gate_proj, self.state_dim)]  # mutation: silu
        return h1, M.vec_mat(ctx, M.hadamard(ctx, y, g), self.out_proj, self.output_dim)


class SwappedBCSelective(M.SelectiveMambaBlockSpec):
    """Control mutant: ``B_t`` computed with ``cProj`` and ``C_t`` with ``bProj``."""

    def step_with_history(self, ctx, H, history, z):
        c = M.causal_conv_step(ctx, self.conv_kernel, self.conv_bias, history)
        u = [ctx.silu(v) for v in c]
        dt_pre = M.vec_mat(ctx, u, self.dt_proj, self.inner_dim)
        delta = [ctx.softplus(ctx.add(dt_pre[d], self.dt_bias[d])) for d in range(self.inner_dim)]
        Bt = M.vec_mat(ctx, u, self.c_proj, self.state_dim)  # mutation: swapped projections
        Ct = M.vec_mat(ctx, u, self.b_proj, self.state_dim)
        H1, y = M.selective_recurrence_step(ctx, H, u, delta, self.A, Bt, Ct, self.d_skip)
        gated = [ctx.mul(y[d], ctx.silu(z[d])) for d in range(self.inner_dim)]
        return H1, M.vec_mat(ctx, gated, self.out_proj, self.output_dim)


@register("control_model_steps_s4_readout_from_old_state", CONTROL, FAMILY,
          "the S4 step row for a step that reads out from the old state: must be refuted", EXPAND,
          mirrors="mutant of models.DiagonalS4Spec.step")
def control_s4_old_state(d: Dims, budget: Budget) -> str:
    return _s4_like(d, budget, sym_s4(d, ReadoutFromOldStateS4), s4_step)


@register("control_model_steps_compact_silu_gate", CONTROL, FAMILY,
          "the compact step row for a gate computed with SiLU instead of sigmoid: must be refuted", EXPAND,
          mirrors="mutant of models.MambaBlockSpec.step")
def control_compact_silu(d: Dims, budget: Budget) -> str:
    return _s4_like(d, budget, sym_compact(d, SiluGateCompact), compact_step)


@register("control_model_steps_selective_B_C_swapped", CONTROL, FAMILY,
          "the selective List step row for a step with the B and C projections swapped: must be refuted", EXPAND,
          mirrors="mutant of models.SelectiveMambaBlockSpec.step_with_history")
def control_selective_swapped(d: Dims, budget: Budget) -> str:
    return _selective(d, budget, sym_selective(d, SwappedBCSelective), array=False)


@register("control_model_steps_array_history_convWidth_minus_1", CONTROL, FAMILY,
          "the selective Array step row for a step that truncates the history to convWidth - 1: must be refuted",
          EXPAND, mirrors="mutant of models.SelectiveMambaBlockSpec.step_with_convolution_history")
def control_array_truncation(d: Dims, budget: Budget) -> str:
    from .runner_equivalence import TruncatedTooShort

    if d.conv_width < 1:
        raise Unknown("the mutation is unobservable: need convWidth >= 1")
    return _selective(d, budget, sym_selective(d, TruncatedTooShort), array=True)
