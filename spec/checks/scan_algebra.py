"""Families ``scan_algebra`` and ``scan_array``: the affine-transition algebra and the generic scan.

Note: ``proofs_notes/scan_algebra.md`` (theorem numbers 1-19 of the spec
document). ``scan_algebra``: ``ScalarAffineTransition`` / ``DiagonalTransition``
composition laws, runs, summaries, scans and the two inequalities over the
reals. ``scan_array``: ``scanArray`` / ``scanArrayFrom`` with an uninterpreted
step function. Controls: ``compose`` with swapped arguments, and the
homogeneous bound with an offset.
"""

from __future__ import annotations

import itertools

import sympy

from .. import scan as S
from ..context import SYMPY
from ..symbolic import EXPAND, IDENTITY, Budget, Refuted, Unknown
from ..verdict import CONTROL, THEOREM
from .base import Dims
from .base import register as _register
from .common import lengths_equal, prefix_causality, sides, stokens, svec, sym, xs_ys

SCAN_ARRAY = "scan_array"
ALG = "scan_algebra"

#: (name prefix, spec code the statement is about), first match wins
MIRRORS = [
    ("scanArrayFrom", "scan.scan_array_from"),
    ("scanArray", "scan.scan_array"),
    ("control_scan_array", "scan.scan_array"),
    ("apply_vecGet", "scan.DiagonalTransition.apply"),
    ("compose_apply_vecGet", "scan.DiagonalTransition.apply/compose"),
    ("DiagonalTransition.", "scan.DiagonalTransition.apply/compose"),
    ("runScalarAffine", "scan.run_scalar_affine"),
    ("summarizeScalarAffine", "scan.summarize_scalar_affine, ScalarAffineTransition.compose/apply"),
    ("scalarAffineScan", "scan.scalar_affine_scan"),
    ("diagonalSelectiveScan", "scan.diagonal_selective_scan"),
    ("runDiagonalTransitions", "scan.run_diagonal_transitions"),
    ("", "scan.ScalarAffineTransition.apply/compose/id"),
]


def register(name: str, kind: str, family: str, statement: str, method: str = IDENTITY):
    """Register a check of this module; the mirrored code comes from :data:`MIRRORS`."""
    mirrors = next(m for prefix, m in MIRRORS if name.startswith(prefix))
    return _register(name, kind, family, statement, method, mirrors=mirrors)

# ---- scanArray with an uninterpreted step function


def uninterpreted_step(d: Dims):
    """``step s x = (F(s, x), G(s, x))`` with uninterpreted sympy functions.

    State: ``state_dim`` components ``F_j(s..., x...)``; output:
    ``output_dim`` components ``G_k(s..., x...)``; tokens have ``input_dim``
    components.
    """
    Fs = [sympy.Function(f"F{j}") for j in range(d.state_dim)]
    Gs = [sympy.Function(f"G{k}") for k in range(d.output_dim)]

    def step(s, x):
        args = list(s) + list(x)
        return [F(*args) for F in Fs], [G(*args) for G in Gs]

    return step


scan_array_from = S.scan_array_from  # Lean ``Spec.scanArrayFrom``, mirrored in spec/scan.py


def foldl(f, init, xs):
    acc = init
    for x in xs:
        acc = f(acc, x)
    return acc


@register("scanArray_append_outputs_take", THEOREM, SCAN_ARRAY,
          "(scanArray step s0 (xs ++ ys)).2.take |xs| = (scanArray step s0 xs).2, step uninterpreted")
def scanArray_append_outputs_take(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: S.scan_array(step, s0, tk)[1], xs, ys, budget)


@register("scanArray_append", THEOREM, SCAN_ARRAY,
          "scanArray step s0 (xs ++ ys) = (second.1, first.2 ++ second.2) with first = scanArray step s0 xs, "
          "second = scanArray step first.1 ys")
def scanArray_append(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    xs, ys = xs_ys(d, d.input_dim)

    def rhs():
        first = S.scan_array(step, s0, xs)
        second = S.scan_array(step, first[0], ys)
        return second[0], first[1] + second[1]

    return sides(lambda: S.scan_array(step, s0, xs + ys), rhs, IDENTITY, budget)


@register("scanArray_outputs_size", THEOREM, SCAN_ARRAY, "(scanArray step s0 xs).2.size = xs.size")
def scanArray_outputs_size(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    cases = []
    for n in range(d.n_xs + d.n_ys + 1):
        tk = stokens("x", n, d.input_dim)
        cases.append((f"|xs|={n}", len(S.scan_array(step, s0, tk)[1]), n))
    return lengths_equal(cases)


@register("scanArray_empty", THEOREM, SCAN_ARRAY, "scanArray step s0 #[] = (s0, #[])")
def scanArray_empty(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    return sides(lambda: S.scan_array(step, s0, []), lambda: (s0, []), IDENTITY, budget)


@register("scanArrayFrom_eq", THEOREM, SCAN_ARRAY,
          "scanArrayFrom step s0 acc xs = (r.1, acc ++ r.2) with r = scanArray step s0 xs")
def scanArrayFrom_eq(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    acc = stokens("acc", d.n_ys, d.output_dim)
    xs, _ = xs_ys(d, d.input_dim)

    def rhs():
        r = S.scan_array(step, s0, xs)
        return r[0], acc + r[1]

    return sides(lambda: scan_array_from(step, s0, acc, xs), rhs, IDENTITY, budget)


@register("scanArrayFrom_state_eq_foldl", THEOREM, SCAN_ARRAY,
          "(scanArrayFrom step s0 acc xs).1 = xs.foldl (fun s x => (step s x).1) s0")
def scanArrayFrom_state_eq_foldl(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    acc = stokens("acc", d.n_ys, d.output_dim)
    xs, _ = xs_ys(d, d.input_dim)
    return sides(lambda: scan_array_from(step, s0, acc, xs)[0],
                 lambda: foldl(lambda s, x: step(s, x)[0], s0, xs), IDENTITY, budget)


@register("scanArray_state_eq_foldl", THEOREM, SCAN_ARRAY,
          "(scanArray step s0 xs).1 = xs.foldl (fun s x => (step s x).1) s0")
def scanArray_state_eq_foldl(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    xs, ys = xs_ys(d, d.input_dim)
    tokens = xs + ys
    return sides(lambda: S.scan_array(step, s0, tokens)[0],
                 lambda: foldl(lambda s, x: step(s, x)[0], s0, tokens), IDENTITY, budget)


# =========================================================================== scan algebra
SAT = S.ScalarAffineTransition
DT = S.DiagonalTransition


def s_tr(name: str) -> SAT:
    return SAT(sym(f"{name}_a"), sym(f"{name}_b"))


def s_trs(name: str, n: int) -> list:
    return [s_tr(f"{name}{t}") for t in range(n)]


def d_tr(name: str, dim: int) -> DT:
    return DT(svec(f"{name}_a", dim), svec(f"{name}_b", dim))


def d_trs(name: str, n: int, dim: int) -> list:
    return [d_tr(f"{name}{t}", dim) for t in range(n)]


def pair(t) -> tuple:
    return (t.a, t.b)


@register("compose_apply", THEOREM, ALG, "apply (compose t2 t1) h = apply t2 (apply t1 h)", EXPAND)
def compose_apply(d: Dims, budget: Budget) -> str:
    t1, t2, h = s_tr("t1"), s_tr("t2"), sym("h")
    return sides(lambda: SAT.compose(SYMPY, t2, t1).apply(SYMPY, h),
                 lambda: t2.apply(SYMPY, t1.apply(SYMPY, h)), EXPAND, budget)


@register("compose_id_left", THEOREM, ALG, "compose id t = t")
def compose_id_left(d: Dims, budget: Budget) -> str:
    t = s_tr("t")
    return sides(lambda: pair(SAT.compose(SYMPY, SAT.id(SYMPY), t)), lambda: pair(t), IDENTITY, budget)


@register("compose_id_right", THEOREM, ALG, "compose t id = t")
def compose_id_right(d: Dims, budget: Budget) -> str:
    t = s_tr("t")
    return sides(lambda: pair(SAT.compose(SYMPY, t, SAT.id(SYMPY))), lambda: pair(t), IDENTITY, budget)


@register("compose_assoc", THEOREM, ALG, "compose (compose t3 t2) t1 = compose t3 (compose t2 t1)", EXPAND)
def compose_assoc(d: Dims, budget: Budget) -> str:
    t1, t2, t3 = s_tr("t1"), s_tr("t2"), s_tr("t3")
    return sides(lambda: pair(SAT.compose(SYMPY, SAT.compose(SYMPY, t3, t2), t1)),
                 lambda: pair(SAT.compose(SYMPY, t3, SAT.compose(SYMPY, t2, t1))), EXPAND, budget)


@register("homogeneous_zero_fixed", THEOREM, ALG, "apply (a, 0) 0 = 0")
def homogeneous_zero_fixed(d: Dims, budget: Budget) -> str:
    a = sym("a")
    return sides(lambda: SAT(a, SYMPY.zero).apply(SYMPY, SYMPY.zero), lambda: SYMPY.zero, IDENTITY, budget)


def _apply_vec_get(d: Dims, budget: Budget) -> str:
    tr = d_tr("tr", d.state_dim)
    h = svec("h", d.state_dim)
    return sides(lambda: tr.apply(SYMPY, h),
                 lambda: [tr.a[i] * h[i] + tr.b[i] for i in range(d.state_dim)], IDENTITY, budget)


def _compose_apply_vec_get(d: Dims, budget: Budget) -> str:
    t1, t2 = d_tr("t1", d.state_dim), d_tr("t2", d.state_dim)
    h = svec("h", d.state_dim)
    return sides(lambda: DT.compose(SYMPY, t2, t1).apply(SYMPY, h),
                 lambda: t2.apply(SYMPY, t1.apply(SYMPY, h)), EXPAND, budget)


register("apply_vecGet", THEOREM, ALG,
         "(apply tr h)_i = a_i * h_i + b_i for a DiagonalTransition, every channel i")(_apply_vec_get)
register("compose_apply_vecGet", THEOREM, ALG,
         "(apply (compose t2 t1) h)_i = (apply t2 (apply t1 h))_i, every channel i", EXPAND)(_compose_apply_vec_get)


@register("runScalarAffine_append", THEOREM, ALG, "run h0 (xs ++ ys) = run (run h0 xs) ys")
def runScalarAffine_append(d: Dims, budget: Budget) -> str:
    xs, ys, h0 = s_trs("x", d.n_xs), s_trs("y", d.n_ys), sym("h0")
    return sides(lambda: S.run_scalar_affine(SYMPY, h0, xs + ys),
                 lambda: S.run_scalar_affine(SYMPY, S.run_scalar_affine(SYMPY, h0, xs), ys), IDENTITY, budget)


@register("runScalarAffine_singleton", THEOREM, ALG, "run h0 [t] = apply t h0")
def runScalarAffine_singleton(d: Dims, budget: Budget) -> str:
    t, h0 = s_tr("t"), sym("h0")
    return sides(lambda: S.run_scalar_affine(SYMPY, h0, [t]), lambda: t.apply(SYMPY, h0), IDENTITY, budget)


@register("summarizeScalarAffine_apply_eq_run", THEOREM, ALG, "apply (summarize trs) h0 = run h0 trs", EXPAND)
def summarizeScalarAffine_apply_eq_run(d: Dims, budget: Budget) -> str:
    out = []
    h0 = sym("h0")
    for n in range(d.n_xs + d.n_ys + 1):
        trs = s_trs("t", n)
        out.append(sides(lambda: S.summarize_scalar_affine(SYMPY, trs).apply(SYMPY, h0),
                         lambda: S.run_scalar_affine(SYMPY, h0, trs), EXPAND, budget))
    return f"for |trs| = 0..{d.n_xs + d.n_ys}: " + out[-1]


@register("summarizeScalarAffine_append_apply", THEOREM, ALG,
          "apply (summarize (xs ++ ys)) h0 = apply (compose (summarize ys) (summarize xs)) h0", EXPAND)
def summarizeScalarAffine_append_apply(d: Dims, budget: Budget) -> str:
    xs, ys, h0 = s_trs("x", d.n_xs), s_trs("y", d.n_ys), sym("h0")
    return sides(lambda: S.summarize_scalar_affine(SYMPY, xs + ys).apply(SYMPY, h0),
                 lambda: SAT.compose(SYMPY, S.summarize_scalar_affine(SYMPY, ys),
                                     S.summarize_scalar_affine(SYMPY, xs)).apply(SYMPY, h0), EXPAND, budget)


@register("summarizeScalarAffine_append", THEOREM, ALG,
          "summarize (xs ++ ys) = compose (summarize ys) (summarize xs)", EXPAND)
def summarizeScalarAffine_append(d: Dims, budget: Budget) -> str:
    xs, ys = s_trs("x", d.n_xs), s_trs("y", d.n_ys)
    return sides(lambda: pair(S.summarize_scalar_affine(SYMPY, xs + ys)),
                 lambda: pair(SAT.compose(SYMPY, S.summarize_scalar_affine(SYMPY, ys),
                                          S.summarize_scalar_affine(SYMPY, xs))), EXPAND, budget)


def _scalar_scan_length(d: Dims, budget: Budget) -> str:
    h0 = sym("h0")
    return lengths_equal([(f"|trs|={n}", len(S.scalar_affine_scan(SYMPY, h0, s_trs("t", n))), n)
                          for n in range(d.n_xs + d.n_ys + 1)])


def _diag_scan_length(d: Dims, budget: Budget) -> str:
    h0 = svec("h0", d.state_dim)
    return lengths_equal([(f"|trs|={n}", len(S.diagonal_selective_scan(SYMPY, h0, d_trs("t", n, d.state_dim))), n)
                          for n in range(d.n_xs + d.n_ys + 1)])


register("scalarAffineScan_length", THEOREM, ALG, "|scalarAffineScan h0 trs| = |trs|")(_scalar_scan_length)


@register("scalarAffineScan_append", THEOREM, ALG, "scan h0 (xs ++ ys) = scan h0 xs ++ scan (run h0 xs) ys")
def scalarAffineScan_append(d: Dims, budget: Budget) -> str:
    xs, ys, h0 = s_trs("x", d.n_xs), s_trs("y", d.n_ys), sym("h0")
    return sides(lambda: S.scalar_affine_scan(SYMPY, h0, xs + ys),
                 lambda: S.scalar_affine_scan(SYMPY, h0, xs)
                 + S.scalar_affine_scan(SYMPY, S.run_scalar_affine(SYMPY, h0, xs), ys), IDENTITY, budget)


register("diagonalSelectiveScan_length", THEOREM, ALG, "|diagonalSelectiveScan h0 trs| = |trs|")(_diag_scan_length)


@register("runDiagonalTransitions_append", THEOREM, ALG, "runDiag h0 (xs ++ ys) = runDiag (runDiag h0 xs) ys")
def runDiagonalTransitions_append(d: Dims, budget: Budget) -> str:
    n = d.state_dim
    xs, ys, h0 = d_trs("x", d.n_xs, n), d_trs("y", d.n_ys, n), svec("h0", n)
    return sides(lambda: S.run_diagonal_transitions(SYMPY, h0, xs + ys),
                 lambda: S.run_diagonal_transitions(SYMPY, S.run_diagonal_transitions(SYMPY, h0, xs), ys),
                 IDENTITY, budget)


@register("diagonalSelectiveScan_append", THEOREM, ALG,
          "diagScan h0 (xs ++ ys) = diagScan h0 xs ++ diagScan (runDiag h0 xs) ys")
def diagonalSelectiveScan_append(d: Dims, budget: Budget) -> str:
    n = d.state_dim
    xs, ys, h0 = d_trs("x", d.n_xs, n), d_trs("y", d.n_ys, n), svec("h0", n)
    return sides(lambda: S.diagonal_selective_scan(SYMPY, h0, xs + ys),
                 lambda: S.diagonal_selective_scan(SYMPY, h0, xs)
                 + S.diagonal_selective_scan(SYMPY, S.run_diagonal_transitions(SYMPY, h0, xs), ys),
                 IDENTITY, budget)


def _homogeneous_bound(rho_is_one: bool, budget: Budget, inhomogeneous: bool = False) -> str:
    """|a| <= rho  =>  |apply (a, 0) h| <= rho |h| over the reals, by sign cases.

    Every real is +p or -p with p >= 0. For each sign case of (a, h) =
    (sa p, sh q) with p, q >= 0 the spec's ``apply`` is evaluated, sympy
    removes the absolute values under the nonnegativity assumptions, the
    hypothesis is substituted as rho = p + s (s >= 0; for theorem 19,
    p = 1 - s), and the slack rho|h| - |apply| must expand to an expression
    sympy proves nonnegative. When it does not, a grid of nonnegative values
    is searched for a negative slack (a counterexample); else unknown.
    ``inhomogeneous`` (controls only) uses ``(a, b)`` with a symbolic offset
    b = +-r instead of ``(a, 0)``.
    """
    p, q, s, r = (sym(n, nonnegative=True) for n in ("p", "q", "s", "r"))
    rho = sympy.Integer(1) if rho_is_one else sym("rho", real=True)
    slacks = []
    for sa in (1, -1):
        for sh in (1, -1):
            for sb in ((1, -1) if inhomogeneous else (0,)):
                budget.check()
                a, h, b = sa * p, sh * q, sb * r
                lhs = sympy.Abs(SAT(a, b if inhomogeneous else SYMPY.zero).apply(SYMPY, h))
                slack = rho * sympy.Abs(h) - lhs
                hyp = {p: 1 - s} if rho_is_one else {rho: p + s}
                slack = sympy.expand(slack.subs(hyp))
                if slack.is_nonnegative is True:
                    slacks.append(str(slack))
                    continue
                grid = (0, sympy.Rational(1, 2), 1, 2)
                free = sorted(slack.free_symbols, key=lambda x: x.name)
                for values in itertools.product(grid, repeat=len(free)):
                    env = dict(zip(free, values))
                    val = slack.subs(env)
                    if val.is_negative:
                        full = {x: env.get(x, 0) for x in (p, q, s, r)}
                        av, hv, bv = (e.subs(full) for e in (a, h, b))
                        rv = 1 if rho_is_one else (p + s).subs(full)
                        raise Refuted(f"a={av}, b={bv}, h={hv}, rho={rv} satisfy |a| <= rho but "
                                      f"|apply| = {sympy.Abs(av * hv + bv)} > rho*|h| = {rv * abs(hv)}")
                raise Unknown(f"case a={a}, h={h}: sympy cannot decide the sign of the slack {slack}")
    hyp_txt = "p = 1 - s" if rho_is_one else "rho = p + s"
    return (f"{len(slacks)} sign cases (a, h) = (+-p, +-q), p, q, s >= 0, hypothesis {hyp_txt}: slack "
            f"rho|h| - |apply (a,0) h| expands to {sorted(set(slacks))}, nonnegative")


@register("abs_homogeneous_apply_le", THEOREM, ALG, "|a| <= rho => |apply (a, 0) h| <= rho * |h| over the reals")
def abs_homogeneous_apply_le(d: Dims, budget: Budget) -> str:
    return _homogeneous_bound(False, budget)


@register("abs_homogeneous_apply_le_self", THEOREM, ALG, "|a| <= 1 => |apply (a, 0) h| <= |h| over the reals")
def abs_homogeneous_apply_le_self(d: Dims, budget: Budget) -> str:
    return _homogeneous_bound(True, budget)


# Array-family names of 6, 7, 13, 15
register("DiagonalTransition.apply_getScalar", THEOREM, ALG,
         "Array twin of apply_vecGet: getScalar (apply tr h) i = a_i * h_i + b_i")(_apply_vec_get)
register("DiagonalTransition.compose_apply_getScalar", THEOREM, ALG,
         "Array twin of compose_apply_vecGet", EXPAND)(_compose_apply_vec_get)
register("scalarAffineScan_size", THEOREM, ALG, "Array twin of scalarAffineScan_length")(_scalar_scan_length)
register("diagonalSelectiveScan_size", THEOREM, ALG, "Array twin of diagonalSelectiveScan_length")(_diag_scan_length)



# =========================================================================== controls
@register("control_scan_algebra_compose_swapped", CONTROL, ALG,
          "apply (compose t1 t2) h = apply t2 (apply t1 h) (arguments swapped): must be refuted", EXPAND)
def control_compose_swapped(d: Dims, budget: Budget) -> str:
    t1, t2, h = s_tr("t1"), s_tr("t2"), sym("h")
    return sides(lambda: SAT.compose(SYMPY, t1, t2).apply(SYMPY, h),
                 lambda: t2.apply(SYMPY, t1.apply(SYMPY, h)), EXPAND, budget)


@register("control_scan_algebra_inhomogeneous_bound", CONTROL, ALG,
          "|a| <= rho => |apply (a, b) h| <= rho * |h| with an offset b (not homogeneous): must be refuted")
def control_inhomogeneous_bound(d: Dims, budget: Budget) -> str:
    return _homogeneous_bound(False, budget, inhomogeneous=True)


@register("control_scan_array_state_eq_foldl_reversed", CONTROL, SCAN_ARRAY,
          "(scanArray step s0 xs).1 = xs.reverse.foldl (fun s x => (step s x).1) s0 (fold order reversed), "
          "step uninterpreted: must be refuted")
def control_scan_array_reversed_fold(d: Dims, budget: Budget) -> str:
    step = uninterpreted_step(d)
    s0 = svec("s0", d.state_dim)
    xs, ys = xs_ys(d, d.input_dim)
    tokens = xs + ys
    return sides(lambda: S.scan_array(step, s0, tokens)[0],
                 lambda: foldl(lambda s, x: step(s, x)[0], s0, list(reversed(tokens))), IDENTITY, budget)
