"""Tests of the symbolic checker (nbssm.spec.checks, nbssm.spec.symbolic).

The checker must be able to fail: wrong statements are refuted with a
counterexample, undecided ones are unknown (never proved), a spent budget is
unknown, and the DAG utilities agree with sympy's own (slow) operations.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy.core.cache import clear_cache

from nbssm.spec import algorithms as ALG
from nbssm.spec import checks as C
from nbssm.spec import models as M
from nbssm.spec.context import SYMPY
from nbssm.spec.symbolic import (
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
    dag_size,
    dag_symbols,
)
from nbssm.spec.verdict import CONTROL, PROVED, REFUTED, UNKNOWN

MINIMAL = C.PRESETS["minimal"]
LEAN_NAMES = Path(__file__).resolve().parent / "data" / "lean_names.txt"

# ----------------------------------------------------------------------------- DAG utilities
SYMS = sympy.symbols("u v w")


def build_expr(ops: list[tuple[int, int, int]]) -> sympy.Expr:
    """A random expression DAG: each op combines two earlier nodes (shared, not copied)."""
    nodes = list(SYMS) + [sympy.Integer(2)]
    for kind, i, j in ops:
        a, b = nodes[i % len(nodes)], nodes[j % len(nodes)]
        nodes.append([a + b, a * b, sympy.exp(a) + b, sympy.log(1 + sympy.exp(a)) * b][kind % 4])
    return nodes[-1]


ops_strategy = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=8)


@settings(deadline=None, max_examples=60)
@given(ops_strategy, st.integers(0, 2))
def test_dag_equal_agrees_with_sympy_equality(ops, which):
    clear_cache()
    e1 = build_expr(ops)
    clear_cache()
    e2 = build_expr(ops)
    assert dag_equal(e1, e2) and e1 == e2
    # change one leaf: both sympy and dag_equal must see a difference
    e3 = e2.xreplace({SYMS[which]: SYMS[which] + 7})
    assert dag_equal(e1, e3) == (e1 == e3)


@settings(deadline=None, max_examples=40)
@given(ops_strategy)
def test_dag_symbols_agrees_with_free_symbols(ops):
    e = build_expr(ops)
    assert dag_symbols(e) == e.free_symbols
    for target in SYMS:
        occ = Occurrence([target])
        assert occ.contains(e) == (target in e.free_symbols)
        assert occ.contains(e) == (target in e.free_symbols)  # memoised answer


def test_dag_traversals_are_linear_on_shared_dags():
    # tree size 2**40, DAG size ~80: sympy's recursive == would not finish
    F, G = sympy.Function("F"), sympy.Function("G")

    def deep(n):
        e = SYMS[0]
        for _ in range(n):
            e = F(e, G(e, SYMS[1]))
        return e

    clear_cache()
    e1 = deep(40)
    clear_cache()
    e2 = deep(40)
    assert e1 is not e2
    t0 = time.perf_counter()
    assert dag_equal(e1, e2)
    assert dag_symbols(e1) == {SYMS[0], SYMS[1]}
    assert dag_size(e1) < 400
    clear_cache()
    e3 = F(deep(39), G(deep(39), SYMS[2]))
    assert not dag_equal(e1, e3)
    assert time.perf_counter() - t0 < 5.0


@settings(deadline=None, max_examples=40)
@given(ops_strategy, st.integers(0, 10_000))
def test_numeric_evaluator_agrees_with_sympy_evalf(ops, seed):
    e = build_expr(ops)
    ev = NumericEvaluator(seed=seed)
    got = ev.evaluate(e)
    subs = {s: sympy.Float(str(ev.symbol_value(s)), 60) for s in e.free_symbols}
    want = e.evalf(40, subs=subs)
    if not want.is_real or abs(want) > 1e30:
        return
    assert abs(complex(got) - complex(want)) <= 1e-20 * (1 + abs(complex(want)))


def test_numeric_evaluator_piecewise_and_functions():
    x = sympy.Symbol("x")
    F = sympy.Function("F")
    pw = sympy.Piecewise((x, x > 0), (-x, True))
    for v in (0.5, -0.25):
        ev = NumericEvaluator(values={x: v})
        assert float(ev.evaluate(pw)) == pytest.approx(abs(v))
    # an uninterpreted function is a fixed, deterministic, non-constant function
    ev1, ev2 = NumericEvaluator(values={x: 0.5}), NumericEvaluator(values={x: 0.75})
    assert ev1.evaluate(F(x)) == NumericEvaluator(values={x: 0.5}).evaluate(F(x))
    assert ev1.evaluate(F(x)) != ev2.evaluate(F(x))


# ----------------------------------------------------------------------------- deciders can fail
def test_compare_refutes_wrong_algebraic_statement_with_point():
    a, b, h = sympy.symbols("a b h")
    with pytest.raises(Refuted, match="differ: left .* vs right .* at the point"):
        compare_structures([a * (h + b)], [a * h + b], EXPAND)


def test_identity_does_not_prove_algebraic_equalities():
    # equal over the reals but not structurally identical: identity must say unknown, expand proves it
    a, b = sympy.symbols("a b")
    with pytest.raises(Unknown):
        compare_structures((a + b) ** 2, a**2 + 2 * a * b + b**2, IDENTITY)
    assert "expand" in compare_structures((a + b) ** 2, a**2 + 2 * a * b + b**2, EXPAND)


def test_compare_refutes_length_mismatch():
    x = sympy.Symbol("x")
    with pytest.raises(Refuted, match="lengths differ"):
        compare_structures([x, x], [x], IDENTITY)


def test_prefix_causality_refutes_a_runner_reading_the_last_token():
    xs = C.stokens("x", 2, 1)
    ys = C.stokens("y", 1, 1)

    def run(tokens):  # each output adds the last token of the whole input
        return [[t[0] + tokens[-1][0]] for t in tokens]

    with pytest.raises(Refuted, match="depends on the future input y0_0"):
        C.prefix_causality(run, xs, ys, Budget(10))


def test_prefix_causality_proves_a_causal_runner_and_checks_identity():
    xs = C.stokens("x", 2, 1)
    ys = C.stokens("y", 2, 1)

    def running_sum(tokens):
        out, acc = [], sympy.Integer(0)
        for t in tokens:
            acc = acc + t[0]
            out.append([acc])
        return out

    assert "identical" in C.prefix_causality(running_sum, xs, ys, Budget(10))

    calls = []

    def differs_by_length(tokens):  # causal, but the prefix run is not a prefix of the long run
        calls.append(len(tokens))
        return [[t[0] * len(tokens)] for t in tokens]

    with pytest.raises(Refuted):
        C.prefix_causality(differs_by_length, xs, ys, Budget(10))


def test_wrong_model_statement_refuted_with_counterexample():
    # runList_cons with the step's state and output swapped in order of tokens: false, refuted numerically
    d = MINIMAL
    m = C.sym_s4(d)
    h0 = C.svec("h0", d.state_dim)
    x1, x2 = C.stokens("x", 2, d.input_dim)
    with pytest.raises(Refuted, match="differ"):
        C.sides(lambda: m.run_list(SYMPY, h0, [x1, x2]), lambda: m.run_list(SYMPY, h0, [x2, x1]), IDENTITY, Budget(10))


# ----------------------------------------------------------------------------- registry and verdicts
def _lean_names_in_section_5() -> set[str]:
    """The theorem names of section 5 of the spec document, vendored one per line."""
    lines = LEAN_NAMES.read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def test_every_lean_name_of_section_5_is_a_check():
    names = _lean_names_in_section_5()
    assert len(names) >= 50
    registered = {c.name for c in C.registry()}
    suffixes = {n.split(".")[-1] for n in registered}
    missing = sorted(n for n in names if n not in registered and n.split(".")[-1] not in suffixes)
    assert not missing, f"Lean names without a check: {missing}"
    theorems = {c.name for c in C.registry() if c.kind == "theorem"}
    unknown = sorted(n for n in theorems if n not in names and n.split(".")[-1] not in names)
    assert not unknown, f"theorem checks without a Lean name of section 5: {unknown}"


def test_registry_names_unique_and_kinds_present():
    names = [c.name for c in C.registry()]
    assert len(names) == len(set(names))
    kinds = {c.kind for c in C.registry()}
    assert kinds == {"theorem", "beyond", "control"}
    # every family has a negative control, filed under the family it attacks
    families = {c.family for c in C.registry()}
    families_with_controls = {c.family for c in C.registry() if c.kind == CONTROL}
    assert families_with_controls == families
    assert families == set(C.FAMILIES) and families <= set(C.FAMILY_NOTES)
    for c in C.registry():
        assert c.statement and c.mirrors, c.name


def test_every_family_is_one_module_named_like_its_note():
    notes = Path(__file__).resolve().parent.parent / "proofs_notes"
    for family, note in C.FAMILY_NOTES.items():
        assert (notes / note).exists(), note
    modules = {c.fn.__module__.rsplit(".", 1)[-1] for c in C.registry()}
    assert modules <= {Path(n).stem for n in C.FAMILY_NOTES.values()}


@pytest.mark.parametrize("name", [c.name for c in C.registry() if c.kind == CONTROL])
def test_controls_are_refuted_with_a_counterexample(name):
    spec = next(c for c in C.registry() if c.name == name)
    r = C.run_check(spec, C.PRESETS["default"], 30)
    assert r.verdict == REFUTED, r.detail
    assert r.passed
    assert any(w in r.detail for w in ("depends on the future input", "differ", "reads", "satisfy"))


def test_control_whose_mutation_is_unobservable_is_not_a_pass():
    # with no suffix tokens the reversed scan is still causal: the control must not pass
    spec = next(c for c in C.registry() if c.name == "control_causality_reversed_scan")
    r = C.run_check(spec, C.Dims(1, 1, 1, 1, 1, 1, 0), 30)
    assert r.verdict == UNKNOWN and not r.passed and "control not refuted" in r.detail


def test_control_patch_is_restored():
    real = ALG.chunk_summary
    spec = next(c for c in C.registry() if c.name == "control_algorithm_chunked_carry_off_by_one_chunk")
    C.run_check(spec, MINIMAL, 30)
    assert ALG.chunk_summary is real
    real_conv = M.causal_conv_step
    spec = next(c for c in C.registry() if c.name == "streaming_causal_conv_refines_conv")
    assert C.run_check(spec, MINIMAL, 30).verdict == PROVED
    assert M.causal_conv_step is real_conv


def test_mutated_chunked_scan_is_caught_by_the_refinement_check(monkeypatch):
    # an off-by-one in the reference's fix-up (a different mutation than the control's) must be refuted
    real = ALG.sequential_diagonal_scan

    def skip_first(h0, a, b):
        out = real(h0, a, b)
        return out[:1] + out[:-1] if len(out) > 1 else out

    monkeypatch.setattr(ALG, "sequential_diagonal_scan", skip_first)
    spec = next(c for c in C.registry() if c.name == "chunked_diagonal_scan_refines_diagonalSelectiveScan")
    r = C.run_check(spec, MINIMAL, 30)
    assert r.verdict == REFUTED and "differ" in r.detail


def test_budget_zero_is_unknown_without_running():
    calls = []
    spec = C.CheckSpec("probe", "theorem", "test", "probe", lambda d, b: calls.append(1) or "ok")
    r = C.run_check(spec, MINIMAL, 0)
    assert r.verdict == UNKNOWN and not r.passed and calls == []
    assert C.run_check(spec, MINIMAL, 5).verdict == PROVED


def test_budget_exceeded_interrupts_a_long_check():
    spec = next(c for c in C.registry() if c.name == "selectiveMamba_runList_append_outputs_prefix")
    t0 = time.perf_counter()
    r = C.run_check(spec, C.PRESETS["target4"], 0.2)
    assert r.verdict == UNKNOWN and "budget" in r.detail
    assert time.perf_counter() - t0 < 5


def test_exceptions_are_unknown_not_pass():
    def boom(d, b):
        raise ZeroDivisionError("x")

    r = C.run_check(C.CheckSpec("probe", "theorem", "t", "s", boom), MINIMAL, 5)
    assert r.verdict == UNKNOWN and "ZeroDivisionError" in r.detail
    rc = C.run_check(C.CheckSpec("probe", "control", "t", "s", boom), MINIMAL, 5)
    assert rc.verdict == UNKNOWN and not rc.passed


def test_budget_object():
    b = Budget(0)
    with pytest.raises(BudgetExceeded):
        b.check()
    Budget(None).check()


# ----------------------------------------------------------------------------- targets (slow)
@pytest.mark.slow
@pytest.mark.parametrize("preset,limit", [("target4", 5.0), ("target8", 15.0)])
def test_selective_causality_targets(preset, limit):
    spec = next(c for c in C.registry() if c.name == "selectiveMamba_runList_append_outputs_prefix")
    r = C.run_check(spec, C.PRESETS[preset], 120)
    assert r.verdict == PROVED, r.detail
    # timing is reported by benchmarks/bench_checker.py; here only a generous sanity bound
    assert r.seconds < 10 * limit


@pytest.mark.slow
def test_all_checks_at_minimal_and_a_wider_preset():
    for dims in (MINIMAL, C.Dims(3, 2, 3, 2, 2, 2, 2)):
        for r in C.run_all(dims, 60):
            assert r.passed, (r.name, r.verdict, r.detail)


# ----------------------------------------------------------------------------- the ledger
LEDGER = Path(__file__).resolve().parent.parent / "proofs_notes" / "README.md"


def test_ledger_lists_every_check_and_only_real_tests():
    text = LEDGER.read_text()
    missing = [c.name for c in C.registry() if f"`{c.name}`" not in text]
    assert not missing, f"checks without a ledger row: {missing}"
    tests_dir = Path(__file__).resolve().parent
    refs = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    assert len(refs) > 20
    for file, name in refs:
        path = tests_dir / file
        assert path.exists(), f"ledger cites a missing test file {file}"
        assert f"def {name}(" in path.read_text(), f"ledger cites a missing test {file}::{name}"


# ----------------------------------------------------------------------------- fold order, steps, branches
def _check(name):
    return next(c for c in C.registry() if c.name == name)


def test_fold_order_sees_a_real_right_fold(monkeypatch):
    # a right-folded vec_mat in the spec (same value over the reals) must be refuted on terms
    def right_fold_vec_mat(ctx, v, W, n_out):
        out = []
        for j in range(n_out):
            acc = ctx.zero
            for i in reversed(range(len(v))):
                acc = ctx.add(ctx.mul(v[i], W[i][j]), acc)
            out.append(acc)
        return out

    assert C.run_check(_check("vecMat_is_a_left_fold_seeded_with_zero"), MINIMAL, 30).verdict == PROVED
    monkeypatch.setattr(M, "vec_mat", right_fold_vec_mat)
    r = C.run_check(_check("vecMat_is_a_left_fold_seeded_with_zero"), MINIMAL, 30)
    assert r.verdict == REFUTED and "differ" in r.detail


def test_fold_order_sees_a_skipped_tap(monkeypatch):
    real = M.causal_conv_step

    def skipping(ctx, kernel, bias, history):
        out = []
        for d in range(len(bias)):
            acc = bias[d]
            for k in range(min(len(kernel), len(history))):  # mutation: missing taps skipped
                acc = ctx.add(acc, ctx.mul(history[k][d], kernel[k][d]))
            out.append(acc)
        return out

    monkeypatch.setattr(M, "causal_conv_step", skipping)
    r = C.run_check(_check("causal_conv_seeded_with_bias_missing_taps_times_zero"), MINIMAL, 30)
    assert r.verdict == REFUTED
    monkeypatch.setattr(M, "causal_conv_step", real)
    assert C.run_check(_check("causal_conv_seeded_with_bias_missing_taps_times_zero"), MINIMAL, 30).verdict == PROVED


def test_term_context_keeps_order_and_association():
    from nbssm.spec.checks.fold_order import TERM

    a, b, c = sympy.symbols("a b c")
    assert TERM.add(a, b) != TERM.add(b, a)
    assert TERM.add(TERM.add(a, b), c) != TERM.add(a, TERM.add(b, c))
    assert TERM.mul(a, b) != TERM.mul(b, a)


def test_model_step_rows_see_a_wrong_sign_in_the_spec(monkeypatch):
    # exp(+delta*A) instead of exp(-delta*A) in the spec's recurrence: causality and List = Array
    # still hold; the functional row must refute it
    real = M.selective_recurrence_step

    def wrong_sign(ctx, H, u, delta, A, Bt, Ct, d_skip):
        return real(ctx, H, u, delta, [[ctx.neg(a) for a in row] for row in A], Bt, Ct, d_skip)

    monkeypatch.setattr(M, "selective_recurrence_step", wrong_sign)
    r = C.run_check(_check("selectiveMamba_stepList_matches_definition"), MINIMAL, 30)
    assert r.verdict == REFUTED
    assert C.run_check(_check("selectiveMamba_runList_eq_runArray"), MINIMAL, 30).verdict == PROVED


def test_branch_check_sees_a_moved_threshold_and_swapped_branches():
    from nbssm.spec.checks import activation_branches as AB
    from nbssm.spec.context import BRANCHED, DoubleContext, SympyContext

    evidence = AB.check_branches(SympyContext(BRANCHED, BRANCHED), DoubleContext(BRANCHED, BRANCHED), Budget(30))
    assert evidence.startswith("sigmoid: condition x > 0") and "softplus: condition x > 0" in evidence
    with pytest.raises(Refuted, match="condition"):
        AB.check_branches(AB.ThresholdMovedSympy(BRANCHED, BRANCHED), AB.ThresholdMovedDouble(BRANCHED, BRANCHED),
                          Budget(30))
    with pytest.raises(Refuted, match="branch"):
        AB.check_branches(AB.SoftplusSwappedSympy(BRANCHED, BRANCHED), AB.SoftplusSwappedDouble(BRANCHED, BRANCHED),
                          Budget(30))
    # the doubles part alone: a swapped softplus overflows above 709.78
    assert math.isinf(AB.SoftplusSwappedDouble(BRANCHED, BRANCHED).softplus(800.0))
    assert DoubleContext(BRANCHED, BRANCHED).softplus(800.0) == 800.0


def test_certificate_control_fails_only_the_locality_obligation():
    # the look-ahead mutant's runner is the fold of its step, so (C1) holds and (C2) must refute it
    from nbssm.spec.checks import length_generic_certificate as LC

    r = C.run_check(_check("control_certificate_lookahead_step"), C.PRESETS["default"], 30)
    assert r.verdict == REFUTED and r.detail.startswith("(C2)") and "token" in r.detail
    m = C.sym_s4(MINIMAL, LC.LookaheadStepS4)
    tokens = C.stokens("x", 3, MINIMAL.input_dim)
    h0 = C.svec("h", MINIMAL.state_dim)
    folded = LC._fold_steps(lambda h, xs, t: m.step_at(SYMPY, h, xs, t), h0, tokens)
    assert C.sides(lambda: m.run_list(SYMPY, h0, tokens), lambda: folded, IDENTITY, Budget(30))


def test_spec_runners_check_input_shapes_like_lean_types():
    # a short token, a short initial state or a short history entry is an error, not a smaller state
    from nbssm.spec.context import DOUBLE

    d = C.PRESETS["default"]
    s4 = M.DiagonalS4Spec(2, 2, 1, [[1.0, 0.0], [0.0, 1.0]], [[1.0], [1.0]],
                          M.DiagonalSSM(2, [0.5, 0.5], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]))
    for runner in ("run_list", "run_array"):
        run = getattr(s4, runner)
        assert len(run(DOUBLE, [0.0, 0.0], [[1.0, 2.0]])[1]) == 1
        with pytest.raises(M.ShapeError, match=r"xs\[1\]: expected a token of length 2"):
            run(DOUBLE, [0.0, 0.0], [[1.0, 2.0], [1.0]])
        with pytest.raises(M.ShapeError, match="initial state: expected shape"):
            run(DOUBLE, [0.0], [[1.0, 2.0]])
    sel = C.sym_selective(d)
    H0 = C.sym_H0(d)
    x = C.svec("x", d.input_dim)
    with pytest.raises(M.ShapeError, match="initial state"):
        sel.run_list(SYMPY, H0[:1], [x])
    with pytest.raises(M.ShapeError, match=r"xs\[0\]"):
        sel.run_array(SYMPY, H0, [x[:1]])
    with pytest.raises(M.ShapeError, match=r"history\[0\]"):
        sel.run_list_aux(SYMPY, H0, [C.svec("L", d.inner_dim + 1)], [x])
    assert isinstance(M.ShapeError("x"), ValueError)
