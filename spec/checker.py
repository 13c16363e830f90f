"""The symbolic theorem checker: every Lean theorem of the spec as a named, runnable check.

Each check instantiates its statement with sympy symbols for every parameter,
initial state and input at given dimensions and lengths (:class:`Dims`),
builds the two sides separately (from a cleared sympy cache, exactly as the
Lean statement writes them) and decides it:

* structural statements (causality, append, length, runner = fold) by exact
  structural identity (:func:`nbssm.spec.symbolic.dag_equal`), prefix
  causality also as "no future-input symbol occurs in any prefix output";
* algebraic statements (semiring laws) by ``expand`` of the difference;
* the two inequalities over the reals by a symbolic argument under sign
  assumptions.

Verdicts: ``proved``; ``refuted`` with a concrete counterexample (the output
and the future input it depends on, or a point where the sides differ
numerically); ``unknown`` (budget spent, or inconclusive). Unknown is never a
pass.

Besides the Lean theorems (kind ``"theorem"``) the registry holds nbssm's own
statements (kind ``"beyond"``: runner equivalence, length-generic
certificates, algorithm refinement, activation forms) and negative controls
(kind ``"control"``): mutations injected into the real code path, which must
be refuted.

Spec: section 5 (theorems) and section 6 (beyond Lean) of the spec document;
``proofs_notes/README.md`` is the ledger.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import sympy

from . import models as M
from . import scan as S
from .context import DOUBLE, SYMPY, SYMPY_ARRAY
from .symbolic import (
    EXPAND,
    IDENTITY,
    Budget,
    BudgetExceeded,
    NumericEvaluator,
    Occurrence,
    Refuted,
    Unknown,
    compare_structures,
    dag_equal,
    dag_symbols,
    flatten,
    fmt_num,
    independent,
)
from .verdict import BEYOND, CONTROL, PROVED, REFUTED, THEOREM, UNKNOWN, CheckResult

# --------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class Dims:
    """Dimensions and lengths a check is instantiated at.

    ``input_dim, inner_dim, state_dim, output_dim, conv_width`` as in the spec
    (S4 and compact Mamba use input, state and output dims); ``n_xs`` and
    ``n_ys`` are |xs| and |ys| (scan statements use them as numbers of
    transitions).
    """

    input_dim: int = 2
    inner_dim: int = 2
    state_dim: int = 2
    output_dim: int = 2
    conv_width: int = 3
    n_xs: int = 3
    n_ys: int = 2

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"Dims.{k} must be a non-negative integer, got {v!r}")

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Dims] = {
    "minimal": Dims(1, 1, 1, 1, 2, 2, 1),
    "default": Dims(),
    "target4": Dims(4, 4, 4, 4, 4, 8, 4),
    "target8": Dims(8, 8, 8, 8, 4, 3, 2),
}


# --------------------------------------------------------------------------- symbols
def sym(name: str, **assumptions) -> sympy.Symbol:
    return sympy.Symbol(name, **assumptions)


def svec(name: str, n: int) -> list:
    """``[name_0, ..., name_{n-1}]``."""
    return [sym(f"{name}_{i}") for i in range(n)]


def smat(name: str, rows: int, cols: int) -> list:
    """``[[name_0_0, ...], ...]`` of shape (rows, cols)."""
    return [[sym(f"{name}_{i}_{j}") for j in range(cols)] for i in range(rows)]


def stokens(name: str, n: int, dim: int, start: int = 0) -> list:
    """``n`` symbolic tokens ``name{t}_{i}`` of length ``dim``."""
    return [svec(f"{name}{t}", dim) for t in range(start, start + n)]


def sym_ssm(dim: int) -> M.DiagonalSSM:
    return M.DiagonalSSM(dim, svec("A", dim), svec("B", dim), svec("C", dim), svec("D", dim))


def sym_s4(d: Dims, cls=M.DiagonalS4Spec) -> M.DiagonalS4Spec:
    """A ``DiagonalS4Spec`` whose every parameter is a distinct symbol."""
    return cls(d.input_dim, d.state_dim, d.output_dim, smat("inProj", d.input_dim, d.state_dim),
               smat("outProj", d.state_dim, d.output_dim), sym_ssm(d.state_dim))


def sym_compact(d: Dims, cls=M.MambaBlockSpec) -> M.MambaBlockSpec:
    """A ``MambaBlockSpec`` whose every parameter is a distinct symbol."""
    return cls(d.input_dim, d.state_dim, d.output_dim, smat("inProj", d.input_dim, d.state_dim),
               smat("gateProj", d.input_dim, d.state_dim), smat("outProj", d.state_dim, d.output_dim),
               sym_ssm(d.state_dim))


def sym_selective(d: Dims, cls=M.SelectiveMambaBlockSpec) -> M.SelectiveMambaBlockSpec:
    """A ``SelectiveMambaBlockSpec`` whose every parameter (11 fields) is a distinct symbol."""
    i, e, n, o, w = d.input_dim, d.inner_dim, d.state_dim, d.output_dim, d.conv_width
    return cls(i, e, n, o, w, smat("xProj", i, e), smat("zProj", i, e), smat("convKernel", w, e),
               svec("convBias", e), smat("dtProj", e, e), svec("dtBias", e), smat("Arate", e, n),
               smat("bProj", e, n), smat("cProj", e, n), svec("dSkip", e), smat("outProj", e, o))


def xs_ys(d: Dims, dim: int) -> tuple[list, list]:
    """Symbolic inputs ``xs`` (tokens ``x0..``) and future inputs ``ys`` (tokens ``y0..``)."""
    return stokens("x", d.n_xs, dim), stokens("y", d.n_ys, dim)


def all_symbols(structure: Any) -> set:
    return dag_symbols(*[leaf for _, leaf in flatten(structure)])


# --------------------------------------------------------------------------- registry
@dataclass
class CheckSpec:
    """One registered check.

    ``fn(dims, budget) -> str`` returns the evidence when the statement is
    proved and raises :class:`Refuted` / :class:`Unknown` /
    :class:`BudgetExceeded` otherwise.
    """

    name: str
    kind: str
    family: str
    statement: str
    fn: Callable[[Dims, Budget], str]
    method: str = IDENTITY


REGISTRY: list[CheckSpec] = []

#: Python recursion limit while a check runs (see run_check)
RECURSION_LIMIT = 12000


def register(name: str, kind: str, family: str, statement: str, method: str = IDENTITY):
    def deco(fn):
        REGISTRY.append(CheckSpec(name, kind, family, statement, fn, method))
        return fn

    return deco


def registry() -> list[CheckSpec]:
    """All registered checks, in ledger order."""
    return list(REGISTRY)


def run_check(spec: CheckSpec, dims: Dims, budget_s: float | None = 30.0) -> CheckResult:
    """Run one check under a wall-clock budget and return its :class:`CheckResult`.

    Parameters
    ----------
    spec : CheckSpec
        The registered check.
    dims : Dims
        Dimensions and lengths to instantiate the statement at.
    budget_s : float or None
        Wall-clock budget in seconds (None: unlimited). A budget of 0 s (or
        less) gives ``unknown`` without running anything; a check still
        running when it is spent is interrupted and gives ``unknown``.

    Returns
    -------
    CheckResult
        ``proved`` / ``refuted`` (detail: the counterexample) / ``unknown``
        (detail: why). Any exception other than the verdict signals gives
        ``unknown`` with the error as detail (never a pass). A control whose
        mutated statement is proved at these dimensions gives ``unknown``
        (the mutation is not observable there).
    """
    t0 = time.perf_counter()
    if budget_s is not None and budget_s <= 0:
        return CheckResult(spec.name, spec.kind, UNKNOWN, dims.as_dict(), 0.0,
                           f"time budget of {budget_s:g} s: not attempted")
    budget = Budget(budget_s)
    old_limit = sys.getrecursionlimit()
    # sympy's constructors compare and query deep expressions recursively (Basic.compare,
    # assumptions): a run of ~500 tokens nests deeper than Python's default limit of 1000.
    # 12000 keeps a wide margin below the depth at which CPython 3.11 overflows an 8 MiB
    # C stack on sympy's C-recursive paths (measured above 24000); beyond it: unknown.
    sys.setrecursionlimit(max(old_limit, RECURSION_LIMIT))
    try:
        with budget.alarm():
            detail = spec.fn(dims, budget)
        verdict = PROVED
    except Refuted as e:
        verdict, detail = REFUTED, str(e)
    except Unknown as e:
        verdict, detail = UNKNOWN, str(e)
    except BudgetExceeded as e:
        verdict, detail = UNKNOWN, str(e)
    except RecursionError as e:  # pragma: no cover - depends on sizes
        verdict, detail = UNKNOWN, f"recursion limit reached ({e})"
    except Exception as e:  # noqa: BLE001 - an error is an unknown, never a pass
        verdict, detail = UNKNOWN, f"error: {type(e).__name__}: {e}"
    finally:
        sys.setrecursionlimit(old_limit)
        sympy.core.cache.clear_cache()
    if spec.kind == CONTROL and verdict == PROVED:
        # the mutated statement holds here: the mutation is not observable at these dimensions
        verdict, detail = UNKNOWN, f"control not refuted: the mutated statement holds at these dimensions ({detail})"
    return CheckResult(spec.name, spec.kind, verdict, dims.as_dict(), time.perf_counter() - t0, detail)


# --------------------------------------------------------------------------- shared deciders
def _dependence_witness(expr: Any, s: sympy.Symbol, seed: int = 0) -> tuple[str, str, str, str] | None:
    """Numeric evidence that ``expr`` changes when only ``s`` changes (None if not seen)."""
    for sd in (seed, seed + 1, seed + 2):
        ev1 = NumericEvaluator(seed=sd)
        v1 = ev1.evaluate(expr)
        s1 = ev1.symbol_value(s)
        values = dict(ev1.values)
        values[s] = s1 + 1
        ev2 = NumericEvaluator(seed=sd, values=values)
        v2 = ev2.evaluate(expr)
        if not ev1.close(v1, v2):
            return fmt_num(s1, 4), fmt_num(s1 + 1, 4), fmt_num(v1), fmt_num(v2) + f" (seed {sd})"
    return None


def prefix_causality(run: Callable[[list], list], xs: list, ys: list, budget: Budget,
                     keep: int | None = None) -> str:
    """Decide ``take keep (run (xs ++ ys)) = run xs`` (``keep = |xs|`` by default).

    Parameters
    ----------
    run : callable
        ``run(tokens)`` returns the list of outputs, one vector (list of
        sympy expressions) per token.
    xs, ys : list of lists of sympy symbols
        Shapes (|xs|, input_dim) and (|ys|, input_dim); every component a
        distinct symbol.
    budget : Budget
    keep : int, optional
        Number of leading outputs compared (|xs| for the theorem; controls
        use |xs| + 1).

    Returns
    -------
    str
        The evidence, when proved: both (1) no symbol of ``ys`` occurs in
        the first ``keep`` outputs of the long run (a memoised walk over the
        DAG), and (2) those outputs are structurally identical to ``run xs``.
        The two runs are built from a cleared sympy cache each.

    Raises
    ------
    Refuted
        With the output and the future input it depends on (and two numeric
        evaluations differing only in that input), or the length mismatch,
        or a point where the outputs differ.
    Unknown
        Future symbols occur but no numeric dependence is seen, or the
        outputs are not identical yet agree numerically.
    """
    keep = len(xs) if keep is None else keep
    full = independent(lambda: run(xs + ys))
    budget.check()
    prefix = independent(lambda: run(xs))
    budget.check()
    head = full[:keep]
    future = all_symbols(ys)
    occurs = Occurrence(future)
    for t, out in enumerate(head):
        for j, e in enumerate(out):
            budget.check()
            if not occurs.contains(e):
                continue
            hit = sorted(dag_symbols(e) & future, key=lambda s: s.name)
            for s in hit:
                w = _dependence_witness(e, s)
                if w is not None:
                    a, b, va, vb = w
                    raise Refuted(
                        f"output {t} (component {j}) of run(xs ++ ys) depends on the future input {s.name}: "
                        f"with every other symbol fixed, {s.name}={a} gives {va} and {s.name}={b} gives {vb}"
                    )
            if hit:
                raise Unknown(f"output {t}[{j}] contains future symbols {[s.name for s in hit]} "
                              "but no numeric dependence was seen")
    evidence = compare_structures(head, prefix, IDENTITY, budget)
    return (f"no symbol of ys among the free symbols of the first {keep} outputs; take {keep} of "
            f"run(xs ++ ys) identical to run(xs): {evidence}")


def sides(lhs: Callable[[], Any], rhs: Callable[[], Any], method: str, budget: Budget) -> str:
    """Build both sides independently and compare them.

    Parameters
    ----------
    lhs, rhs : callable
        Zero-argument builders of the two sides (nested lists/tuples of
        sympy expressions or Python ints), each run from a cleared sympy
        cache so that no object is shared between the sides but the symbols.
    method : {"identity", "expand"}
    budget : Budget

    Returns
    -------
    str
        The evidence; raises :class:`Refuted` or :class:`Unknown` otherwise
        (see :func:`nbssm.spec.symbolic.compare_structures`).
    """
    left = independent(lhs)
    budget.check()
    right = independent(rhs)
    budget.check()
    return compare_structures(left, right, method, budget)


def lengths_equal(cases: Sequence[tuple[str, int, int]]) -> str:
    """Length statements: every ``(label, actual, expected)`` must agree."""
    for label, got, want in cases:
        if got != want:
            raise Refuted(f"{label}: length {got}, expected {want}")
    return f"{len(cases)} lengths equal ({', '.join(f'{l}={g}' for l, g, _ in cases)})"


def outputs(result: tuple) -> list:
    return result[1]


# =========================================================================== causality (List)
CAUS = "causality"


def _s4_run(ctx, model, h0, runner="run_list"):
    return lambda tokens: getattr(model, runner)(ctx, h0, tokens)[1]


@register("diagonalS4_runList_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runList h0 (xs ++ ys)).2 = (m.runList h0 xs).2 for DiagonalS4Spec")
def diagonalS4_runList_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_s4(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(_s4_run(SYMPY, m, svec("h0", d.state_dim)), xs, ys, budget)


@register("compactMamba_runList_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runList h0 (xs ++ ys)).2 = (m.runList h0 xs).2 for MambaBlockSpec")
def compactMamba_runList_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_compact(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(_s4_run(SYMPY, m, svec("h0", d.state_dim)), xs, ys, budget)


def sym_H0(d: Dims) -> list:
    return smat("H0", d.inner_dim, d.state_dim)


def sym_L0(d: Dims, n: int | None = None) -> list:
    """A symbolic initial convolution history (newest first), ``conv_width`` entries by default."""
    return stokens("L", d.conv_width if n is None else n, d.inner_dim)


@register("selectiveMamba_runListAux_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runListAux H0 L0 (xs ++ ys)).2 = (m.runListAux H0 L0 xs).2 for any history L0")
def selectiveMamba_runListAux_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    H0, L0 = sym_H0(d), sym_L0(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: m.run_list_aux(SYMPY, H0, L0, tk)[1], xs, ys, budget)


@register("selectiveMamba_runList_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runList H0 (xs ++ ys)).2 = (m.runList H0 xs).2 for SelectiveMambaBlockSpec")
def selectiveMamba_runList_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    H0 = sym_H0(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: m.run_list(SYMPY, H0, tk)[1], xs, ys, budget)


# =========================================================================== causality (Array)
@register("diagonalS4_runArray_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runArray h0 (xs ++ ys)).2 = (m.runArray h0 xs).2 for DiagonalS4Spec")
def diagonalS4_runArray_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_s4(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(_s4_run(SYMPY_ARRAY, m, svec("h0", d.state_dim), "run_array"), xs, ys, budget)


@register("compactMamba_runArray_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runArray h0 (xs ++ ys)).2 = (m.runArray h0 xs).2 for MambaBlockSpec (branched sigmoid)")
def compactMamba_runArray_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_compact(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(_s4_run(SYMPY_ARRAY, m, svec("h0", d.state_dim), "run_array"), xs, ys, budget)


@register("selectiveMamba_runArrayWithHistory_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runArrayWithHistory H0 L0 (xs ++ ys)).2 = (m.runArrayWithHistory H0 L0 xs).2")
def selectiveMamba_runArrayWithHistory_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    H0, L0 = sym_H0(d), sym_L0(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: m.run_array_with_history(SYMPY_ARRAY, H0, L0, tk)[1], xs, ys, budget)


@register("selectiveMamba_runArray_append_outputs_prefix", THEOREM, CAUS,
          "take |xs| (m.runArray H0 (xs ++ ys)).2 = (m.runArray H0 xs).2 (branched activations)")
def selectiveMamba_runArray_append_outputs_prefix(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    H0 = sym_H0(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: m.run_array(SYMPY_ARRAY, H0, tk)[1], xs, ys, budget)


# ---- scanArray with an uninterpreted step function
SCAN_ARRAY = "scan_array"


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
ALG = "scan_algebra"
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
                import itertools

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


# =========================================================================== model and core lemmas
LEM = "model_lemmas"

MODEL_BUILDERS = {
    "DiagonalS4Spec": (sym_s4, lambda d: svec("h0", d.state_dim)),
    "MambaBlockSpec": (sym_compact, lambda d: svec("h0", d.state_dim)),
}


def _lengths_cases(d: Dims):
    return range(d.n_xs + d.n_ys + 1)


def _register_s4_like(model_name: str) -> None:
    build, state = MODEL_BUILDERS[model_name]

    def run_list_nil(d: Dims, budget: Budget) -> str:
        m, h0 = build(d), state(d)
        return sides(lambda: m.run_list(SYMPY, h0, []), lambda: (h0, []), IDENTITY, budget)

    def run_list_cons(d: Dims, budget: Budget) -> str:
        m, h0 = build(d), state(d)
        x = svec("x", d.input_dim)
        rest = stokens("r", d.n_xs, d.input_dim)

        def rhs():
            h1, y = m.step(SYMPY, h0, x)
            hN, ys = m.run_list(SYMPY, h1, rest)
            return hN, [y] + ys

        return sides(lambda: m.run_list(SYMPY, h0, [x] + rest), rhs, IDENTITY, budget)

    def run_list_len(d: Dims, budget: Budget) -> str:
        m, h0 = build(d), state(d)
        return lengths_equal([(f"|xs|={n}", len(m.run_list(SYMPY, h0, stokens("x", n, d.input_dim))[1]), n)
                              for n in _lengths_cases(d)])

    def run_array_empty(d: Dims, budget: Budget) -> str:
        m, h0 = build(d), state(d)
        return sides(lambda: m.run_array(SYMPY_ARRAY, h0, []), lambda: (h0, []), IDENTITY, budget)

    def run_array_size(d: Dims, budget: Budget) -> str:
        m, h0 = build(d), state(d)
        return lengths_equal([(f"|xs|={n}", len(m.run_array(SYMPY_ARRAY, h0, stokens("x", n, d.input_dim))[1]), n)
                              for n in _lengths_cases(d)])

    register(f"{model_name}.runList_nil", THEOREM, LEM, "runList h0 [] = (h0, [])")(run_list_nil)
    register(f"{model_name}.runList_cons", THEOREM, LEM,
             "runList h0 (x :: xs) = let (h1, y) = step h0 x; (hN, ys) = runList h1 xs in (hN, y :: ys)")(run_list_cons)
    register(f"{model_name}.runList_outputs_length", THEOREM, LEM, "|(runList h0 xs).2| = |xs|")(run_list_len)
    register(f"{model_name}.runArray_empty", THEOREM, LEM, "runArray h0 #[] = (h0, #[])")(run_array_empty)
    register(f"{model_name}.runArray_outputs_size", THEOREM, LEM, "(runArray h0 xs).2.size = xs.size")(run_array_size)


_register_s4_like("DiagonalS4Spec")
_register_s4_like("MambaBlockSpec")


@register("SelectiveMambaBlockSpec.runListAux_nil", THEOREM, LEM, "runListAux H0 L0 [] = (H0, [])")
def sel_run_list_aux_nil(d: Dims, budget: Budget) -> str:
    m, H0, L0 = sym_selective(d), sym_H0(d), sym_L0(d)
    return sides(lambda: m.run_list_aux(SYMPY, H0, L0, []), lambda: (H0, []), IDENTITY, budget)


@register("SelectiveMambaBlockSpec.runList_nil", THEOREM, LEM, "runList H0 [] = (H0, [])")
def sel_run_list_nil(d: Dims, budget: Budget) -> str:
    m, H0 = sym_selective(d), sym_H0(d)
    return sides(lambda: m.run_list(SYMPY, H0, []), lambda: (H0, []), IDENTITY, budget)


def _sel_lengths(d: Dims, fn) -> str:
    return lengths_equal([(f"|xs|={n}", len(fn(stokens("x", n, d.input_dim))), n) for n in _lengths_cases(d)])


@register("SelectiveMambaBlockSpec.runListAux_outputs_length", THEOREM, LEM, "|(runListAux H0 L0 xs).2| = |xs|")
def sel_run_list_aux_len(d: Dims, budget: Budget) -> str:
    m, H0, L0 = sym_selective(d), sym_H0(d), sym_L0(d)
    return _sel_lengths(d, lambda tk: m.run_list_aux(SYMPY, H0, L0, tk)[1])


@register("SelectiveMambaBlockSpec.runList_outputs_length", THEOREM, LEM, "|(runList H0 xs).2| = |xs|")
def sel_run_list_len(d: Dims, budget: Budget) -> str:
    m, H0 = sym_selective(d), sym_H0(d)
    return _sel_lengths(d, lambda tk: m.run_list(SYMPY, H0, tk)[1])


@register("SelectiveMambaBlockSpec.runArrayWithHistory_empty", THEOREM, LEM, "runArrayWithHistory H0 L0 #[] = (H0, #[])")
def sel_run_array_wh_empty(d: Dims, budget: Budget) -> str:
    m, H0, L0 = sym_selective(d), sym_H0(d), sym_L0(d)
    return sides(lambda: m.run_array_with_history(SYMPY_ARRAY, H0, L0, []), lambda: (H0, []), IDENTITY, budget)


@register("SelectiveMambaBlockSpec.runArrayWithHistory_outputs_size", THEOREM, LEM,
          "(runArrayWithHistory H0 L0 xs).2.size = xs.size")
def sel_run_array_wh_size(d: Dims, budget: Budget) -> str:
    m, H0, L0 = sym_selective(d), sym_H0(d), sym_L0(d)
    return _sel_lengths(d, lambda tk: m.run_array_with_history(SYMPY_ARRAY, H0, L0, tk)[1])


@register("SelectiveMambaBlockSpec.runArray_empty", THEOREM, LEM, "runArray H0 #[] = (H0, #[])")
def sel_run_array_empty(d: Dims, budget: Budget) -> str:
    m, H0 = sym_selective(d), sym_H0(d)
    return sides(lambda: m.run_array(SYMPY_ARRAY, H0, []), lambda: (H0, []), IDENTITY, budget)


@register("SelectiveMambaBlockSpec.runArray_outputs_size", THEOREM, LEM, "(runArray H0 xs).2.size = xs.size")
def sel_run_array_size(d: Dims, budget: Budget) -> str:
    m, H0 = sym_selective(d), sym_H0(d)
    return _sel_lengths(d, lambda tk: m.run_array(SYMPY_ARRAY, H0, tk)[1])


@register("DiagonalSSM.transition_apply_eq_step", THEOREM, LEM, "(transition x).apply h = step h x")
def ssm_transition_apply_eq_step(d: Dims, budget: Budget) -> str:
    ssm = sym_ssm(d.state_dim)
    h, x = svec("h", d.state_dim), svec("x", d.state_dim)
    return sides(lambda: ssm.transition(SYMPY, x).apply(SYMPY, h), lambda: ssm.step(SYMPY, h, x), IDENTITY, budget)


@register("DiagonalSSM.scan_nil", THEOREM, LEM, "scan h0 [] = []")
def ssm_scan_nil(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    return sides(lambda: ssm.scan(SYMPY, h0, []), lambda: [], IDENTITY, budget)


@register("DiagonalSSM.scan_cons", THEOREM, LEM, "scan h0 (x :: xs) = step h0 x :: scan (step h0 x) xs")
def ssm_scan_cons(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    x = svec("x", d.state_dim)
    rest = stokens("r", d.n_xs, d.state_dim)

    def rhs():
        h1 = ssm.step(SYMPY, h0, x)
        return [h1] + ssm.scan(SYMPY, h1, rest)

    return sides(lambda: ssm.scan(SYMPY, h0, [x] + rest), rhs, IDENTITY, budget)


@register("DiagonalSSM.scan_size", THEOREM, LEM, "(scan h0 xs).size = xs.size")
def ssm_scan_size(d: Dims, budget: Budget) -> str:
    ssm, h0 = sym_ssm(d.state_dim), svec("h0", d.state_dim)
    return lengths_equal([(f"|xs|={n}", len(ssm.scan(SYMPY, h0, stokens("x", n, d.state_dim))), n)
                          for n in _lengths_cases(d)])


# =========================================================================== beyond: runner equivalence
RUN = "runner_equivalence"


class _TruncatedTooShort(M.SelectiveMambaBlockSpec):
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
          "never drops a value that is read (same activation forms on both sides)")
def selectiveMamba_runList_eq_runArray(d: Dims, budget: Budget) -> str:
    return _runner_equivalence(d, budget)


@register("selectiveMamba_runListAux_eq_runArrayWithHistory", BEYOND, RUN,
          "runListAux H0 L0 xs = runArrayWithHistory H0 L0 xs for a symbolic history L0 of convWidth + 1 entries")
def selectiveMamba_runListAux_eq_runArrayWithHistory(d: Dims, budget: Budget) -> str:
    return _runner_equivalence(d, budget, with_history=True)


@register("activation_forms_agree_over_reals", BEYOND, RUN,
          "branched sigmoid = plain sigmoid and branched softplus = plain softplus over the reals, per branch")
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


# =========================================================================== beyond: certificates
CERT = "certificate"


def _fold_steps(step_at, s0, xs):
    """The checker's own left fold of a step over a token stream: ``(final state, outputs)``."""
    s = s0
    outs = []
    for t in range(len(xs)):
        s, o = step_at(s, xs, t)
        outs.append(o)
    return s, outs


class _LookaheadStepS4(M.DiagonalS4Spec):
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


def _model_params(m) -> set:
    syms = set()
    for v in vars(m).values():
        if isinstance(v, (list, tuple)):
            syms |= all_symbols(v)
        elif isinstance(v, M.DiagonalSSM):
            syms |= all_symbols([v.A, v.B, v.C, v.D])
    return syms


def _cert_s4_like(d: Dims, budget: Budget, m) -> str:
    step_at = getattr(m, "step_at", None)
    if step_at is not None:
        sa = lambda h, xs, t: step_at(SYMPY, h, xs, t)  # noqa: E731
    else:
        sa = lambda h, xs, t: m.step(SYMPY, h, xs[t])  # noqa: E731
    return certificate(lambda s0, tk: m.run_list(SYMPY, s0, tk), sa, svec("h", d.state_dim), lambda s: s,
                       d, budget, _model_params(m))


@register("certificate_diagonalS4", BEYOND, CERT,
          "DiagonalS4Spec: runList = fold of step (symbolic h0) and step reads only (old state, current token)")
def certificate_diagonalS4(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_s4(d))


@register("certificate_compactMamba", BEYOND, CERT,
          "MambaBlockSpec: runList = fold of step (symbolic h0) and step reads only (old state, current token)")
def certificate_compactMamba(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_compact(d))


@register("certificate_selectiveMamba", BEYOND, CERT,
          "SelectiveMambaBlockSpec (List family): runListAux = fold of the step on (H, history) and the step "
          "reads only (old H, old history, current token)")
def certificate_selectiveMamba(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    s0 = (sym_H0(d), sym_L0(d, max(d.conv_width - 1, 0)))
    return certificate(lambda s, tk: m.run_list_aux(SYMPY, s[0], s[1], tk),
                       lambda s, xs, t: m.step_list(SYMPY, s, xs[t]), s0, lambda s: s[0] if isinstance(s, tuple) else s,
                       d, budget, _model_params(m))


@register("certificate_selectiveMamba_array", BEYOND, CERT,
          "SelectiveMambaBlockSpec (Array family): runArrayWithHistory = fold of stepWithConvolutionHistory and "
          "the step reads only (old H, old truncated history, current token)")
def certificate_selectiveMamba_array(d: Dims, budget: Budget) -> str:
    m = sym_selective(d)
    s0 = (sym_H0(d), sym_L0(d, d.conv_width))
    return certificate(lambda s, tk: m.run_array_with_history(SYMPY_ARRAY, s[0], s[1], tk),
                       lambda s, xs, t: m.step_with_convolution_history(SYMPY_ARRAY, s, xs[t]), s0,
                       lambda s: s[0] if isinstance(s, tuple) else s, d, budget, _model_params(m))


# =========================================================================== beyond: algorithms
ALGO = "algorithm_refinement"


def _algorithms():
    try:
        from . import algorithms
    except ImportError as e:  # pragma: no cover - depends on the kernels helper
        raise Unknown(f"spec.algorithms is missing ({e})")
    return algorithms


def _chunk_cases(d: Dims) -> list[tuple[int, int]]:
    total = max(d.n_xs + d.n_ys, 1)
    lengths = sorted({1, min(2, total), total})
    cases = []
    for T in lengths:
        for lc in sorted({1, 2, 3, T}):
            cases.append((T, lc))
    return cases


def _chunked_refinement(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    n = max(d.state_dim, 1)
    h0 = svec("h0", n)
    n_cases = 0
    for T, lc in _chunk_cases(d):
        a = stokens("a", T, n)
        b = stokens("b", T, n)
        budget.check()
        try:
            sides(lambda: alg.chunked_diagonal_scan(h0, a, b, lc),
                  lambda: S.diagonal_selective_scan(SYMPY, h0, [DT(a[t], b[t]) for t in range(T)]), EXPAND, budget)
        except Refuted as e:
            raise Refuted(f"T={T}, chunk_length={lc}: {e}")
        n_cases += 1
    return (f"chunked_diagonal_scan(h0, a, b, Lc) = diagonalSelectiveScan h0 [(a_t, b_t)] by expand for "
            f"{n_cases} (T, Lc) cases {_chunk_cases(d)}, stateDim {n}")


@register("chunked_diagonal_scan_refines_diagonalSelectiveScan", BEYOND, ALGO,
          "the chunked parallel-in-time scan (local summaries, serial carry, fix-up) equals diagonalSelectiveScan "
          "over the reals for several lengths and chunk lengths", EXPAND)
def chunked_diagonal_scan_refines(d: Dims, budget: Budget) -> str:
    return _chunked_refinement(d, budget)


@contextmanager
def patched(module, name: str, value):
    """Temporarily replace ``module.name`` (a mutation injected into the real code path)."""
    if not hasattr(module, name):
        raise Unknown(f"cannot inject the mutation: {module.__name__}.{name} does not exist")
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield old
    finally:
        setattr(module, name, old)


def _record_spec_conv(m, H0, L0, xs) -> list:
    """Run the spec's ``runListAux`` and record the outputs of its causal convolution, token by token."""
    seen = []
    real = M.causal_conv_step

    def recording(ctx, kernel, bias, history):
        out = real(ctx, kernel, bias, history)
        seen.append(out)
        return out

    with patched(M, "causal_conv_step", recording):
        m.run_list_aux(SYMPY, H0, L0, xs)
    return seen


@register("streaming_causal_conv_refines_conv", BEYOND, ALGO,
          "the streaming convolution with a carried history of convWidth - 1 tokens equals the spec's causal "
          "convolution inside runListAux, for several splits into pieces, with zero or symbolic history")
def streaming_causal_conv_refines_conv(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    m = sym_selective(d)
    H0 = sym_H0(d)
    xs, ys = xs_ys(d, d.input_dim)
    tokens = xs + ys
    T = len(tokens)
    keep = max(d.conv_width - 1, 0)
    splits = {"one piece": [T], "token by token": [1] * T, "|xs| then |ys|": [d.n_xs, d.n_ys]}
    n_cases = 0
    for hist_label, L0 in (("empty history", []), ("symbolic history", sym_L0(d, keep))):
        spec_side = independent(lambda: _record_spec_conv(m, H0, L0, tokens))
        for split_label, sizes in splits.items():
            budget.check()

            def reference():
                proj = [m.project_x(SYMPY, x) for x in tokens]
                pieces, k = [], 0
                for sz in sizes:
                    pieces.append(proj[k:k + sz])
                    k += sz
                hist = L0[:keep] if L0 else [[SYMPY.zero] * d.inner_dim for _ in range(keep)]
                return alg.streaming_causal_conv(m.conv_kernel, m.conv_bias, hist, pieces)[0]

            ref = independent(reference)
            try:
                compare_structures(ref, spec_side, IDENTITY, budget)
            except Refuted as e:
                raise Refuted(f"{hist_label}, split {split_label}: {e}")
            n_cases += 1
    return (f"streaming_causal_conv outputs identical to the spec's causal convolution (recorded inside "
            f"runListAux) for {n_cases} cases (empty / symbolic history x {list(splits)}), {T} tokens")


# =========================================================================== negative controls
CTRL = "controls"


class _LookaheadConvSelective(M.SelectiveMambaBlockSpec):
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


class _ReversedScanS4(M.DiagonalS4Spec):
    """Control mutant: the S4 scan run in reverse (last token first), outputs put back in token order."""

    def run_list(self, ctx, h0, xs):
        h, ys = M.run_list_steps(lambda hh, x: self.step(ctx, hh, x), h0, list(reversed(xs)))
        return h, list(reversed(ys))


@register("control_causality_conv_reads_next_token", CONTROL, CTRL,
          "selective block whose convolution has a tap reading the next token: prefix causality must be refuted")
def control_conv_reads_next_token(d: Dims, budget: Budget) -> str:
    m = sym_selective(d, _LookaheadConvSelective)
    H0 = sym_H0(d)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(lambda tk: m.run_list(SYMPY, H0, tk)[1], xs, ys, budget)


@register("control_causality_reversed_scan", CONTROL, CTRL,
          "diagonal S4 whose scan runs in reverse: prefix causality must be refuted")
def control_reversed_scan(d: Dims, budget: Budget) -> str:
    m = sym_s4(d, _ReversedScanS4)
    xs, ys = xs_ys(d, d.input_dim)
    return prefix_causality(_s4_run(SYMPY, m, svec("h0", d.state_dim)), xs, ys, budget)


@register("control_causality_take_succ", CONTROL, CTRL,
          "take (|xs| + 1) (runList h0 (xs ++ ys)).2 = (runList h0 xs).2 for DiagonalS4Spec: must be refuted")
def control_take_succ(d: Dims, budget: Budget) -> str:
    m = sym_s4(d)
    xs, ys = xs_ys(d, d.input_dim)
    try:
        return prefix_causality(_s4_run(SYMPY, m, svec("h0", d.state_dim)), xs, ys, budget, keep=len(xs) + 1)
    except Refuted as e:
        # the spec document's concrete instance, evaluated in IEEE doubles on the real runner
        one = M.DiagonalS4Spec(1, 1, 1, [[1.0]], [[1.0]], M.DiagonalSSM(1, [1.0], [1.0], [1.0], [0.0]))
        a = [o[0] for o in one.run_list(DOUBLE, [0.0], [[1.0], [2.0], [5.0]])[1]]
        b = [o[0] for o in one.run_list(DOUBLE, [0.0], [[1.0], [2.0], [9.0]])[1]]
        raise Refuted(f"{e}; concretely (one channel, A=B=C=1, D=0, h0=0): [1,2,5] -> {a}, [1,2,9] -> {b}: "
                      f"the first |xs|+1 = 3 outputs of xs=[1,2] ++ ys differ")


@register("control_scan_algebra_compose_swapped", CONTROL, CTRL,
          "apply (compose t1 t2) h = apply t2 (apply t1 h) (arguments swapped): must be refuted", EXPAND)
def control_compose_swapped(d: Dims, budget: Budget) -> str:
    t1, t2, h = s_tr("t1"), s_tr("t2"), sym("h")
    return sides(lambda: SAT.compose(SYMPY, t1, t2).apply(SYMPY, h),
                 lambda: t2.apply(SYMPY, t1.apply(SYMPY, h)), EXPAND, budget)


@register("control_scan_algebra_inhomogeneous_bound", CONTROL, CTRL,
          "|a| <= rho => |apply (a, b) h| <= rho * |h| with an offset b (not homogeneous): must be refuted")
def control_inhomogeneous_bound(d: Dims, budget: Budget) -> str:
    return _homogeneous_bound(False, budget, inhomogeneous=True)


@register("control_runner_equivalence_history_convWidth_minus_1", CONTROL, CTRL,
          "runList = runArray with the Array history truncated to convWidth - 1: must be refuted")
def control_history_too_short(d: Dims, budget: Budget) -> str:
    if d.n_xs + d.n_ys < d.conv_width or d.conv_width < 1:
        raise Unknown("the mutation is unobservable: need |xs| + |ys| >= convWidth >= 1")
    return _runner_equivalence(d, budget, cls=_TruncatedTooShort)


@register("control_certificate_lookahead_step", CONTROL, CTRL,
          "certificate for a diagonal S4 whose step also reads a look-ahead slot (token t + 1): must be refuted")
def control_certificate_lookahead(d: Dims, budget: Budget) -> str:
    return _cert_s4_like(d, budget, sym_s4(d, _LookaheadStepS4))


@register("control_algorithm_chunked_carry_off_by_one_chunk", CONTROL, CTRL,
          "chunked scan whose carry uses the next chunk's summary (off by one chunk): must be refuted", EXPAND)
def control_chunked_off_by_one(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    real = alg.chunk_summary

    def next_chunk_summary(a, b, start, stop):
        T = len(a)
        if stop < T:  # mutation: summarise the following chunk instead of this one
            return real(a, b, stop, min(stop + (stop - start), T))
        return real(a, b, start, stop)

    with patched(alg, "chunk_summary", next_chunk_summary):
        return _chunked_refinement(d, budget)


# =========================================================================== external groups
def external_checks(budget_s: float | None, seed: int = 0) -> list[CheckResult]:
    """Kernel refinement checks (``nbssm.refinement``) and CDE checks (``spec.cde_checks``).

    A missing module, an ImportError or any exception is reported as an
    ``unknown`` result, never as a pass.
    """
    results: list[CheckResult] = []
    t0 = time.perf_counter()
    try:
        from nbssm.refinement import refinement_checks
    except ImportError as e:
        results.append(CheckResult("refinement_checks", BEYOND, UNKNOWN, {}, 0.0,
                                   f"nbssm.refinement unavailable: {e}"))
    else:
        try:
            got = list(refinement_checks(seed=seed))
            if not got:
                got = [CheckResult("refinement_checks", BEYOND, UNKNOWN, {}, time.perf_counter() - t0,
                                   "refinement_checks returned no result")]
            results.extend(got)
        except Exception as e:  # noqa: BLE001
            results.append(CheckResult("refinement_checks", BEYOND, UNKNOWN, {}, time.perf_counter() - t0,
                                       f"error: {type(e).__name__}: {e}"))
    t1 = time.perf_counter()
    try:
        from .cde_checks import cde_checks
    except ImportError as e:
        results.append(CheckResult("cde_checks", BEYOND, UNKNOWN, {}, 0.0, f"spec.cde_checks unavailable: {e}"))
    else:
        try:
            got = list(cde_checks(budget_s if budget_s is not None else 60.0))
            if not got:
                got = [CheckResult("cde_checks", BEYOND, UNKNOWN, {}, time.perf_counter() - t1,
                                   "cde_checks returned no result")]
            results.extend(got)
        except Exception as e:  # noqa: BLE001
            results.append(CheckResult("cde_checks", BEYOND, UNKNOWN, {}, time.perf_counter() - t1,
                                       f"error: {type(e).__name__}: {e}"))
    return results


def select(names: Sequence[str] | None = None, kinds: Sequence[str] | None = None) -> list[CheckSpec]:
    """Registered checks filtered by name substrings and kinds."""
    out = []
    for c in REGISTRY:
        if kinds is not None and c.kind not in kinds:
            continue
        if names and not any(n in c.name for n in names):
            continue
        out.append(c)
    return out


def run_all(dims: Dims | None = None, budget_s: float | None = 30.0, names: Sequence[str] | None = None,
            kinds: Sequence[str] | None = None, progress: Callable[[CheckSpec, int, int], None] | None = None
            ) -> list[CheckResult]:
    """Run the selected registered checks (no external groups) and return their results."""
    dims = dims or PRESETS["default"]
    chosen = select(names, kinds)
    results = []
    for k, c in enumerate(chosen):
        if progress is not None:
            progress(c, k, len(chosen))
        results.append(run_check(c, dims, budget_s))
    return results


__all__ = [
    "Dims", "PRESETS", "CheckSpec", "REGISTRY", "registry", "register", "run_check", "run_all", "select",
    "external_checks", "prefix_causality", "sides", "certificate", "patched",
]
