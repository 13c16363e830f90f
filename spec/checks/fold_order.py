"""Family ``fold_order``: the order of every sum, observed on terms (``proofs_notes/fold_order.md``).

sympy normalises ``(a + b) + c`` and ``a * b``, so no check over sympy reals
can see in which order a runner folds a sum. :class:`TermContext` is a scalar
context whose operations build uninterpreted, non-commutative,
non-associative nodes (``add(a, b)``, ``mul(a, b)``, ``exp(a)`` ... as sympy
undefined functions, which keep their argument order): a spec function run on
it returns a term whose shape *is* its fold. Each check compares that term
with the fold the Lean definition writes, transcribed here independently of
the runner:

* ``vecMat``: a left fold over ``i`` seeded with ``0``;
* the causal convolution: a left fold over the taps seeded with the bias, a
  missing tap multiplied by ``0`` and added (never skipped);
* the selective readout: a left fold over the state seeded with ``D * u``;
* the diagonal SSM: ``A * h + B * x`` and the readout ``C * h' + D * x``.

Controls: a right fold of ``vecMat``, a convolution that skips missing taps,
a readout seeded with ``0`` (``D * u`` added last). Each is refuted: two
terms that differ in shape differ numerically at a point where every
uninterpreted node is a fixed non-symmetric polynomial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from .. import models as M
from ..context import PLAIN, Context
from ..symbolic import IDENTITY, Budget
from ..verdict import BEYOND, CONTROL
from .base import Dims, register
from .common import sides, smat, svec

FAMILY = "fold_order"

_F = {name: sympy.Function(name) for name in ("add", "sub", "mul", "div", "neg", "exp", "log", "gt", "ite")}
ADD, MUL, NEG, EXP = _F["add"], _F["mul"], _F["neg"], _F["exp"]


class TermContext(Context):
    """A context of uninterpreted terms: every operation is a node that keeps its argument order."""

    name = "term"

    def __init__(self) -> None:
        super().__init__(PLAIN, PLAIN)
        self.zero = sympy.Symbol("ZERO")
        self.one = sympy.Symbol("ONE")

    def const(self, x: Any) -> Any:
        return sympy.Symbol(f"CONST_{x}")

    def add(self, a, b):
        return _F["add"](a, b)

    def sub(self, a, b):
        return _F["sub"](a, b)

    def mul(self, a, b):
        return _F["mul"](a, b)

    def div(self, a, b):
        return _F["div"](a, b)

    def neg(self, a):
        return _F["neg"](a)

    def exp(self, a):
        return _F["exp"](a)

    def log(self, a):
        return _F["log"](a)

    def gt(self, a, b):
        return _F["gt"](a, b)

    def ite(self, cond, then: Callable[[], Any], other: Callable[[], Any]):
        return _F["ite"](cond, then(), other())


TERM = TermContext()
Z = TERM.zero


# --------------------------------------------------------------------------- transcriptions
def left_fold(seed, terms):
    acc = seed
    for t in terms:
        acc = ADD(acc, t)
    return acc


def right_fold(seed, terms):
    acc = seed
    for t in reversed(terms):
        acc = ADD(t, acc)
    return acc


def vec_mat_left(v, W, n_out):
    """Lean ``vecMat``: ``(v @ W)_j = foldl (acc + v_i * W_ij) 0`` over increasing ``i``."""
    return [left_fold(Z, [MUL(v[i], W[i][j]) for i in range(len(v))]) for j in range(n_out)]


def vec_mat_right(v, W, n_out):
    return [right_fold(Z, [MUL(v[i], W[i][j]) for i in range(len(v))]) for j in range(n_out)]


def conv_fold(kernel, bias, history, skip_missing=False):
    """The convolution: ``foldl (acc + L[k][d] * K[k][d]) bias[d]`` over the taps, ``L[k] = 0`` when missing."""
    out = []
    for d in range(len(bias)):
        taps = []
        for k in range(len(kernel)):
            if k < len(history):
                taps.append(MUL(history[k][d], kernel[k][d]))
            elif not skip_missing:
                taps.append(MUL(Z, kernel[k][d]))
        out.append(left_fold(bias[d], taps))
    return out


def selective_update(H, u, delta, A, Bt, Ct, d_skip, seed_with_skip=True):
    """``H'[d][n] = exp(-(delta_d * A_dn)) * H_dn + (delta_d * B_n) * u_d``; ``y_d = foldl (acc + H'_dn * C_n) (D_d * u_d)``."""
    H1, y = [], []
    for d in range(len(u)):
        row = [ADD(MUL(EXP(NEG(MUL(delta[d], A[d][n]))), H[d][n]), MUL(MUL(delta[d], Bt[n]), u[d]))
               for n in range(len(Bt))]
        terms = [MUL(row[n], Ct[n]) for n in range(len(Bt))]
        if seed_with_skip:
            acc = left_fold(MUL(d_skip[d], u[d]), terms)
        else:
            acc = ADD(left_fold(Z, terms), MUL(d_skip[d], u[d]))
        H1.append(row)
        y.append(acc)
    return H1, y


def _dims(d: Dims) -> tuple[int, int, int]:
    return max(d.input_dim, 2), max(d.state_dim, 2), max(d.conv_width, 2)


# --------------------------------------------------------------------------- checks
@register("vecMat_is_a_left_fold_seeded_with_zero", BEYOND, FAMILY,
          "vecMat v W = [foldl (acc + v_i * W_ij) 0 over i = 0, 1, ...], on uninterpreted add/mul terms",
          mirrors="models.vec_mat")
def vec_mat_left_fold(d: Dims, budget: Budget) -> str:
    n_in, n_out, _ = _dims(d)
    v, W = svec("v", n_in + 1), smat("W", n_in + 1, n_out)
    return sides(lambda: M.vec_mat(TERM, v, W, n_out), lambda: vec_mat_left(v, W, n_out), IDENTITY, budget)


@register("control_fold_order_vecMat_right_fold", CONTROL, FAMILY,
          "vecMat v W = a right fold (v_0 * W_0j + (v_1 * W_1j + (... + 0))): must be refuted", mirrors="models.vec_mat")
def control_vec_mat_right_fold(d: Dims, budget: Budget) -> str:
    n_in, n_out, _ = _dims(d)
    v, W = svec("v", n_in + 1), smat("W", n_in + 1, n_out)
    return sides(lambda: M.vec_mat(TERM, v, W, n_out), lambda: vec_mat_right(v, W, n_out), IDENTITY, budget)


def _conv_case(d: Dims):
    _, _, w = _dims(d)
    e = max(d.inner_dim, 1)
    K, b = smat("K", w, e), svec("bias", e)
    short = [svec(f"L{k}", e) for k in range(w - 1)]  # one tap missing
    return K, b, short


@register("causal_conv_seeded_with_bias_missing_taps_times_zero", BEYOND, FAMILY,
          "conv K b L = [foldl (acc + L_k_d * K_k_d) b_d over taps k], L_k = 0 for a missing tap (multiplied, "
          "not skipped), on terms, for a full and a short history", mirrors="models.causal_conv_step")
def conv_fold_order(d: Dims, budget: Budget) -> str:
    K, b, short = _conv_case(d)
    full = short + [svec("Llast", len(b))]
    ev = [sides(lambda: M.causal_conv_step(TERM, K, b, hist), lambda: conv_fold(K, b, hist), IDENTITY, budget)
          for hist in (full, short, [])]
    return "full, short and empty history: " + ev[-1]


@register("control_fold_order_conv_skips_missing_taps", CONTROL, FAMILY,
          "conv with a short history = the fold over the present taps only (missing taps skipped): must be refuted",
          mirrors="models.causal_conv_step")
def control_conv_skips(d: Dims, budget: Budget) -> str:
    K, b, short = _conv_case(d)
    return sides(lambda: M.causal_conv_step(TERM, K, b, short), lambda: conv_fold(K, b, short, skip_missing=True),
                 IDENTITY, budget)


def _selective_case(d: Dims):
    e, n = max(d.inner_dim, 1), max(d.state_dim, 2)
    return (smat("H", e, n), svec("u", e), svec("delta", e), smat("A", e, n), svec("B", n), svec("C", n),
            svec("D", e))


@register("selective_readout_seeded_with_D_u", BEYOND, FAMILY,
          "selective update: H'_dn = exp(-(delta_d * A_dn)) * H_dn + (delta_d * B_n) * u_d and "
          "y_d = foldl (acc + H'_dn * C_n) (D_d * u_d) over n, on terms", mirrors="models.selective_recurrence_step")
def selective_fold_order(d: Dims, budget: Budget) -> str:
    args = _selective_case(d)
    return sides(lambda: M.selective_recurrence_step(TERM, *args), lambda: selective_update(*args), IDENTITY, budget)


@register("control_fold_order_readout_seeded_with_zero", CONTROL, FAMILY,
          "selective readout seeded with 0 and D_d * u_d added last: must be refuted",
          mirrors="models.selective_recurrence_step")
def control_readout_seed(d: Dims, budget: Budget) -> str:
    args = _selective_case(d)
    return sides(lambda: M.selective_recurrence_step(TERM, *args),
                 lambda: selective_update(*args, seed_with_skip=False), IDENTITY, budget)


@register("diagonalSSM_step_and_readout_operand_order", BEYOND, FAMILY,
          "DiagonalSSM: step h x = A_i * h_i + B_i * x_i and readout h x = C_i * h_i + D_i * x_i, on terms",
          mirrors="models.DiagonalSSM.step/readout")
def ssm_operand_order(d: Dims, budget: Budget) -> str:
    n = max(d.state_dim, 1)
    A, B, C, D, h, x = (svec(s, n) for s in ("A", "B", "C", "D", "h", "x"))
    ssm = M.DiagonalSSM(n, A, B, C, D)
    return sides(lambda: (ssm.step(TERM, h, x), ssm.readout(TERM, h, x)),
                 lambda: ([ADD(MUL(A[i], h[i]), MUL(B[i], x[i])) for i in range(n)],
                          [ADD(MUL(C[i], h[i]), MUL(D[i], x[i])) for i in range(n)]), IDENTITY, budget)
