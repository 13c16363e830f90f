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

The linear-CDE steps (``LinearCDESpec.step_fn``: euler, taylor, exact; dense,
diagonal and dense nilpotent) are compared the same way with a transcription
of their definition (sympy matrices, explicit power sums, ``Piecewise`` for
the diagonal ``phi1``: both branches and the condition are compared, else a
random rational point must separate them), at bounded dimensions; controls:
Euler without the identity term, Taylor with ``1/j!`` on the input term, the
``phi1`` threshold moved to ``|m| > 1``.
"""

from __future__ import annotations

import math

import sympy

from .. import models as M
from ..context import SYMPY
from ..symbolic import EXPAND, IDENTITY, Budget, Refuted, Unknown, independent
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


# --------------------------------------------------------------------------- linear CDE steps
# nbssm's own model (``LinearCDESpec``, spec/cde.py; paper/notes.md section 1), so kind "beyond".
# The transcription below is written from the definition with sympy matrices and explicit
# power sums (the spec evaluates the Taylor step by Horner's rule and the sums as left folds):
#   M = sum_i domega[i] A_i,  v = B dxi,
#   euler:  Z' = Z + M Z + v
#   taylor: Z' = sum_{j=0..p} M^j (Z / j! + v / (j+1)!)
#   exact:  Z' = exp(M) Z + phi1(M) v; diagonal: elementwise, phi1(m) = (exp(m) - 1)/m if |m| > 0
#           else 1; dense (strictly upper-triangular A_i, so M^n = 0): exp(M) = sum_{j<n} M^j/j!,
#           phi1(M) = sum_{j<n} M^j/(j+1)!.
# Dimensions are bounded (state <= 3, omega and xi channels <= 2, Taylor order <= 2) so that the
# expansion stays small at every preset.

def _cde_sizes(d: Dims) -> tuple[int, int, int, int]:
    """``(state_dim, omega_dim, xi_dim, taylor order)`` of the CDE rows at ``d`` (bounded)."""
    return (max(1, min(d.state_dim, 3)), max(1, min(d.input_dim, 2)), max(1, min(d.output_dim, 2)),
            max(1, min(d.conv_width, 2)))


def _cde_spec(d: Dims, kind: str, step: str, cls=None):
    from ..cde import LinearCDESpec

    n, dw, dx, p = _cde_sizes(d)
    if kind == "diagonal":
        trans = [svec(f"a{i}", n) for i in range(dw)]
    elif kind == "nilpotent":
        trans = [[[sympy.Symbol(f"A{i}_{r}_{c}") if c > r else sympy.Integer(0) for c in range(n)] for r in range(n)]
                 for i in range(dw)]
    else:
        trans = [[[sympy.Symbol(f"A{i}_{r}_{c}") for c in range(n)] for r in range(n)] for i in range(dw)]
    B = [[sympy.Symbol(f"B{r}_{j}") for j in range(dx)] for r in range(n)]
    cls = cls or LinearCDESpec
    return cls(n, dw, dx, trans, B, diagonal=(kind == "diagonal"), step=step, order=p if step == "taylor" else 0)


def cde_step(spec, z, domega, dxi):
    """The transcription of the definition above (plain sympy); returns ``Z'`` as a list."""
    n = spec.state_dim
    Z = sympy.Matrix(n, 1, list(z))
    v = sympy.Matrix(spec.input_matrix) * sympy.Matrix(len(dxi), 1, list(dxi))
    if spec.diagonal:
        m = [sympy.Add(*[domega[i] * spec.transitions[i][r] for i in range(spec.omega_dim)]) for r in range(n)]
        if spec.step == "euler":
            return [Z[r] + m[r] * Z[r] + v[r] for r in range(n)]
        phi = [sympy.Piecewise(((sympy.exp(m[r]) - 1) / m[r], sympy.Gt(sympy.Abs(m[r]), 0)), (1, True))
               for r in range(n)]
        return [sympy.exp(m[r]) * Z[r] + phi[r] * v[r] for r in range(n)]
    M = sympy.zeros(n, n)
    for i in range(spec.omega_dim):
        M += domega[i] * sympy.Matrix(spec.transitions[i])
    if spec.step == "euler":
        out = Z + M * Z + v
    elif spec.step == "taylor":
        p = int(spec.order)
        out = sympy.zeros(n, 1)
        for j in range(p + 1):
            out += (M ** j) * (Z / sympy.factorial(j) + v / sympy.factorial(j + 1))
    else:
        if (M ** n).expand() != sympy.zeros(n, n):
            raise Unknown("the dense exact transcription needs M^n = 0 (strictly upper-triangular A_i)")
        expM = sympy.zeros(n, n)
        phi1 = sympy.zeros(n, n)
        for j in range(n):
            expM += (M ** j) / sympy.factorial(j)
            phi1 += (M ** j) / sympy.factorial(j + 1)
        out = expM * Z + phi1 * v
    return [out[r] for r in range(n)]


def _branches(e) -> list:
    f = sympy.piecewise_fold(e)
    if isinstance(f, sympy.Piecewise):
        return [(b, c) for b, c in f.args]
    return [(f, sympy.true)]


def _same_condition(c1, c2) -> bool:
    if c1 == c2:
        return True
    if isinstance(c1, sympy.core.relational.Relational) and type(c1) is type(c2):
        return sympy.expand(c1.lhs - c2.lhs) == 0 and sympy.expand(c1.rhs - c2.rhs) == 0
    return False


def _numeric_difference(lhs, rhs, seeds=(0, 1, 2, 3, 4)) -> str | None:
    """A random rational point (every symbol in [-1, 1]) where ``lhs`` and ``rhs`` differ, or None."""
    import random

    syms = sorted(sympy.sympify(lhs).free_symbols | sympy.sympify(rhs).free_symbols, key=lambda s: s.name)
    for seed in seeds:
        rnd = random.Random(seed)
        point = {s: sympy.Rational(rnd.randint(-1000, 1000), 1000) for s in syms}
        a, b = sympy.N(lhs.subs(point), 30), sympy.N(rhs.subs(point), 30)
        if abs(a - b) > sympy.Float(1e-20) * (1 + abs(b)):
            shown = ", ".join(f"{s}={point[s]}" for s in syms[:6])
            return f"at {shown}{', ...' if len(syms) > 6 else ''}: {sympy.N(a, 12)} vs {sympy.N(b, 12)}"
    return None


def _decide_piecewise(lhs: list, rhs: list, budget: Budget) -> str:
    """Entrywise: same branches (conditions equal, values equal by expand), else a numeric point."""
    for r, (le, re_) in enumerate(zip(lhs, rhs)):
        budget.check()
        bl, br = _branches(le), _branches(re_)
        if len(bl) == len(br) and all(_same_condition(c1, c2) and sympy.expand(b1 - b2) == 0
                                      for (b1, c1), (b2, c2) in zip(bl, br)):
            continue
        witness = _numeric_difference(le, re_)
        if witness:
            raise Refuted(f"Z'[{r}] differs from the definition {witness}")
        raise Unknown(f"Z'[{r}]: branches not decided, equal at 5 random points")
    if len(lhs) != len(rhs):
        raise Refuted(f"Z' has {len(lhs)} entries, the definition {len(rhs)}")
    return f"{len(lhs)} entries: same branches and conditions, each branch equal by expand"


def _cde_row(d: Dims, budget: Budget, cases: list) -> str:
    """``cases``: ``(label, spec)``; the spec's ``step_fn`` against :func:`cde_step` at symbolic Z, dω, dξ."""
    evidence = []
    for label, spec in cases:
        n, dw, dx = spec.state_dim, spec.omega_dim, spec.xi_dim
        z, domega, dxi = svec("z", n), svec("dw", dw), svec("dx", dx)
        if spec.diagonal and spec.step == "exact":
            got = independent(lambda spec=spec: spec.step_fn(SYMPY, z, domega, dxi))
            want = independent(lambda spec=spec: cde_step(spec, z, domega, dxi))
            evidence.append(f"{label}: {_decide_piecewise(got, want, budget)}")
        else:
            evidence.append(f"{label}: " + _decide(lambda spec=spec: spec.step_fn(SYMPY, z, domega, dxi),
                                                   lambda spec=spec: cde_step(spec, z, domega, dxi), budget))
    n, dw, dx, p = _cde_sizes(d)
    return f"state {n}, omega {dw}, xi {dx}, Taylor order {p}; " + "; ".join(evidence)


@register("linearCDE_euler_step_matches_definition", BEYOND, FAMILY,
          "LinearCDESpec euler step, dense and diagonal: Z' = Z + M Z + B dξ with M = Σ_i dω_i A_i "
          "(paper notes section 1; bounded dims)", EXPAND, mirrors="cde.LinearCDESpec.step_fn (euler)")
def cde_euler_row(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("dense", _cde_spec(d, "dense", "euler")),
                                ("diagonal", _cde_spec(d, "diagonal", "euler"))])


@register("linearCDE_taylor_step_matches_definition", BEYOND, FAMILY,
          "LinearCDESpec taylor step (Horner) equals Σ_{j<=p} M^j (Z/j! + B dξ/(j+1)!) (bounded dims)", EXPAND,
          mirrors="cde.LinearCDESpec.step_fn (taylor)")
def cde_taylor_row(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("dense", _cde_spec(d, "dense", "taylor"))])


@register("linearCDE_exact_step_matches_definition", BEYOND, FAMILY,
          "LinearCDESpec exact step: exp(M) Z + φ1(M) B dξ; diagonal with φ1(m) = (e^m - 1)/m if |m| > 0 else 1 "
          "(both branches and the condition), dense nilpotent with the series cut at M^n = 0 (bounded dims)",
          EXPAND, mirrors="cde.LinearCDESpec.step_fn (exact)")
def cde_exact_row(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("diagonal", _cde_spec(d, "diagonal", "exact")),
                                ("dense nilpotent", _cde_spec(d, "nilpotent", "exact"))])


def _cde_mutants():
    from ..cde import LinearCDESpec, mat_vec

    class EulerWithoutIdentity(LinearCDESpec):
        """Control mutant: the Euler step forgets the identity term, ``Z' = M Z + v``."""

        def step_fn(self, ctx, z, domega, dxi):
            n = self.state_dim
            M = self.transition_matrix(ctx, domega)
            v = self.input_vector(ctx, dxi)
            Mz = [ctx.mul(M[r], z[r]) for r in range(n)] if self.diagonal else mat_vec(ctx, M, z, n)
            return [ctx.add(Mz[r], v[r]) for r in range(n)]  # mutation: z[r] + dropped

    class TaylorInputOverJFactorial(LinearCDESpec):
        """Control mutant: the Taylor step weights the input term by ``1/j!`` instead of ``1/(j+1)!``."""

        def step_fn(self, ctx, z, domega, dxi):
            n, p = self.state_dim, int(self.order)
            M = self.transition_matrix(ctx, domega)
            v = self.input_vector(ctx, dxi)
            inv = [ctx.div(ctx.one, ctx.const(math.factorial(j))) for j in range(p + 2)]
            R = [ctx.add(ctx.mul(z[r], inv[p]), ctx.mul(v[r], inv[p])) for r in range(n)]  # mutation
            for j in range(p - 1, -1, -1):
                MR = mat_vec(ctx, M, R, n)
                R = [ctx.add(ctx.add(MR[r], ctx.mul(z[r], inv[j])), ctx.mul(v[r], inv[j])) for r in range(n)]
            return R

    class ExactThresholdMoved(LinearCDESpec):
        """Control mutant: the diagonal exact step takes ``φ1 = 1`` for ``|m| <= 1`` (threshold moved)."""

        def step_fn(self, ctx, z, domega, dxi):
            n = self.state_dim
            M = self.transition_matrix(ctx, domega)
            v = self.input_vector(ctx, dxi)
            out = []
            for r in range(n):
                m = M[r]
                e = ctx.exp(m)
                phi = ctx.ite(ctx.gt(ctx.abs(m), ctx.one),  # mutation: threshold 1 instead of 0
                              lambda e=e, m=m: ctx.div(ctx.sub(e, ctx.one), m), lambda: ctx.one)
                out.append(ctx.add(ctx.mul(e, z[r]), ctx.mul(phi, v[r])))
            return out

    return EulerWithoutIdentity, TaylorInputOverJFactorial, ExactThresholdMoved


@register("control_model_steps_cde_euler_without_identity", CONTROL, FAMILY,
          "the CDE euler row for a step Z' = M Z + B dξ (the identity term dropped): must be refuted", EXPAND,
          mirrors="mutant of cde.LinearCDESpec.step_fn")
def control_cde_euler(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("dense", _cde_spec(d, "dense", "euler", _cde_mutants()[0]))])


@register("control_model_steps_cde_taylor_input_over_j_factorial", CONTROL, FAMILY,
          "the CDE taylor row for a step weighting B dξ by 1/j! instead of 1/(j+1)!: must be refuted", EXPAND,
          mirrors="mutant of cde.LinearCDESpec.step_fn")
def control_cde_taylor(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("dense", _cde_spec(d, "dense", "taylor", _cde_mutants()[1]))])


@register("control_model_steps_cde_exact_threshold_moved", CONTROL, FAMILY,
          "the CDE exact row for a diagonal step whose φ1 branch condition is |m| > 1: must be refuted", EXPAND,
          mirrors="mutant of cde.LinearCDESpec.step_fn")
def control_cde_exact(d: Dims, budget: Budget) -> str:
    return _cde_row(d, budget, [("diagonal", _cde_spec(d, "diagonal", "exact", _cde_mutants()[2]))])
