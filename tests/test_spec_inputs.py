"""Spec runners' inputs: numbers become the context's Float first, and shapes are checked as Lean's types.

Lean's runners take ``Float`` entries; a Python runner given ints must not do integer
arithmetic (exact where Float rounds, or wrapping for numpy int64). On the double contexts
every numeric input becomes a Python ``float``; on the sympy contexts integers stay exact
``Integer``s (the reals contain them). A token, state or history entry of the wrong length is
an error, never a silently smaller state.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from nbssm.spec.cde import LinearCDESpec
from nbssm.spec.context import DOUBLE, DOUBLE_ARRAY, SYMPY
from nbssm.spec.models import DiagonalS4Spec, DiagonalSSM, MambaBlockSpec, SelectiveMambaBlockSpec, ShapeError
from nbssm.spec.scan import (
    DiagonalTransition,
    ScalarAffineTransition,
    as_scalars,
    diagonal_selective_scan,
    run_diagonal_transitions,
    run_scalar_affine,
    scalar_affine_scan,
    summarize_scalar_affine,
)


def _leaves(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _leaves(v)
    else:
        yield x


def _all_float(x) -> bool:
    return all(type(v) is float for v in _leaves(x))


def _s4(values=float):
    conv = (lambda v: v) if values is int else float
    ssm = DiagonalSSM(2, [conv(v) for v in (1, -2)], [conv(v) for v in (3, 1)], [conv(v) for v in (2, 2)],
                      [conv(v) for v in (1, 0)])
    return DiagonalS4Spec(2, 2, 1, [[conv(1), conv(2)], [conv(-1), conv(3)]], [[conv(2)], [conv(-3)]], ssm)


def _selective(rng):
    i, e, n, o, w = 2, 3, 2, 2, 3
    f = lambda *shape: rng.normal(0, 0.5, shape).tolist()
    return SelectiveMambaBlockSpec(i, e, n, o, w, f(i, e), f(i, e), f(w, e), f(e), f(e, e), f(e),
                                   rng.uniform(0.5, 2, (e, n)).tolist(), f(e, n), f(e, n), f(e), f(e, o))


# ----------------------------------------------------------------------------- as_scalars
def test_as_scalars_converts_numbers_and_keeps_symbols():
    x = sympy.Symbol("x")
    got = as_scalars(DOUBLE, [1, np.int64(2), np.float32(0.5), [3], np.array([4, 5])])
    assert got == [1.0, 2.0, 0.5, [3.0], [4.0, 5.0]] and _all_float(got)
    assert as_scalars(DOUBLE, [x, 1])[0] is x
    s = as_scalars(SYMPY, [1, 2**60 + 1, 0.5, x])
    assert s[0] == sympy.Integer(1) and isinstance(s[0], sympy.Integer)
    assert s[1] == sympy.Integer(2**60 + 1)  # exact
    assert isinstance(s[2], sympy.Float) and float(s[2]) == 0.5
    assert s[3] is x
    assert as_scalars(DOUBLE, 2**53 + 1) == 2.0**53  # float() rounding, as Lean's literal would


@pytest.mark.parametrize("bad", [True, np.bool_(False), 1j, np.complex128(1 + 2j), [1.0, True]])
def test_as_scalars_refuses_booleans_and_complex(bad):
    with pytest.raises(TypeError, match="expected a real number"):
        as_scalars(DOUBLE, bad)


def test_as_scalars_does_not_modify_its_input():
    a = np.array([[1, 2], [3, 4]])
    lst = [[1, 2], (3, 4)]
    as_scalars(DOUBLE, a)
    as_scalars(DOUBLE, lst)
    assert a.dtype.kind == "i" and lst == [[1, 2], (3, 4)] and type(lst[0][0]) is int


# ----------------------------------------------------------------------------- scan runners
def test_scalar_affine_runners_use_floats():
    trs = [ScalarAffineTransition(3, 1), ScalarAffineTransition(np.int64(5), 2)]
    h = run_scalar_affine(DOUBLE, 2, trs)
    assert type(h) is float and h == 5 * (3 * 2 + 1) + 2
    assert _all_float(scalar_affine_scan(DOUBLE, 2, trs))
    s = summarize_scalar_affine(DOUBLE, trs)
    assert type(s.a) is float and type(s.b) is float
    # integer arithmetic would keep 2**53 + 1 exactly; Float rounds it on entry
    assert run_scalar_affine(DOUBLE, 2**53 + 1, [ScalarAffineTransition(1, 0)]) == 2.0**53


def test_diagonal_scan_with_numpy_int64_does_not_wrap():
    big = np.int64(2**40)
    trs = [DiagonalTransition([big], [np.int64(0)]), DiagonalTransition([big], [np.int64(1)])]
    h = run_diagonal_transitions(DOUBLE, [big], trs)
    assert h == [2.0**120 + 1.0] and _all_float(h)  # int64 arithmetic would wrap to garbage
    states = diagonal_selective_scan(DOUBLE, np.array([1, 2]), [DiagonalTransition(np.array([2, 3]), [1, 1])])
    assert states == [[3.0, 7.0]] and _all_float(states)


def test_diagonal_scan_sympy_keeps_integers_exact():
    big = 2**60 + 1
    states = diagonal_selective_scan(SYMPY, [big], [DiagonalTransition([3], [1])])
    assert states == [[sympy.Integer(3 * big + 1)]]


# ----------------------------------------------------------------------------- model runners
@pytest.mark.parametrize("ctx", [DOUBLE, DOUBLE_ARRAY])
def test_model_runners_convert_integer_inputs(ctx):
    m = _s4()
    xs_int, h_int = [[1, 2], [3, -1], [0, 2]], [1, -1]
    xs_np = np.array(xs_int)
    want = m.run_list(ctx, [float(v) for v in h_int], [[float(v) for v in x] for x in xs_int])
    for run in (m.run_list, m.run_array):
        for xs in (xs_int, xs_np):
            got = run(ctx, h_int, xs)
            assert got == want and _all_float(got)
    c = MambaBlockSpec(2, 2, 1, m.in_proj, [[1, 0], [0, 1]], m.out_proj, m.ssm)
    got = c.run_list(ctx, np.array(h_int), xs_np)
    assert _all_float(got) and got == c.run_array(ctx, [1.0, -1.0], [[float(v) for v in x] for x in xs_int])
    assert xs_np.dtype.kind == "i"  # inputs not modified
    assert _all_float(m.ssm.scan(ctx, h_int, xs_int))


def test_integer_parameters_behave_as_their_float_values():
    xs = [[0.5, -1.25], [2.0, 0.75]]
    assert _s4(int).run_list(DOUBLE, [0.0, 0.0], xs) == _s4().run_list(DOUBLE, [0.0, 0.0], xs)
    got = _s4(int).run_list(DOUBLE, [0, 0], [[1, 2], [3, 4]])
    assert _all_float(got) and got == _s4().run_list(DOUBLE, [0.0, 0.0], [[1.0, 2.0], [3.0, 4.0]])


def test_selective_runners_convert_integer_inputs():
    m = _selective(np.random.default_rng(0))
    H0 = [[1, 0], [0, 2], [1, 1]]
    L0 = [[1, 0, -1], [2, 1, 0]]
    xs = np.array([[1, 2], [0, -1], [3, 1]])
    floats = lambda v: [[float(a) for a in r] for r in v]
    want = m.run_list_aux(DOUBLE, floats(H0), floats(L0), floats(xs.tolist()))
    got = m.run_list_aux(DOUBLE, H0, L0, xs)
    assert got == want and _all_float(got)
    got = m.run_array_with_history(DOUBLE_ARRAY, np.array(H0), np.array(L0), xs)
    assert _all_float(got)
    assert got == m.run_array_with_history(DOUBLE_ARRAY, floats(H0), floats(L0), floats(xs.tolist()))


def test_cde_runner_converts_integer_inputs():
    spec = LinearCDESpec(2, 1, 1, [[[0.0, 1.0], [0.0, 0.0]]], [[1.0], [2.0]], step="taylor", order=2)
    got = spec.run_list(DOUBLE, [1, 2], np.array([[1], [2]]), [[1], [0]])
    want = spec.run_list(DOUBLE, [1.0, 2.0], [[1.0], [2.0]], [[1.0], [0.0]])
    assert got == want and _all_float(got)
    exact = LinearCDESpec(2, 1, 1, [[[0, 1], [0, 0]]], [[1], [2]], step="taylor", order=2)
    s = exact.run_list(SYMPY, [1, 2], [[1]], [[1]])[0]
    assert all(isinstance(v, sympy.Rational) for v in s)  # exact on the reals


# ----------------------------------------------------------------------------- shapes, as Lean's types
def test_s4_and_compact_refuse_short_and_long_tokens_and_states():
    m = _s4()
    c = MambaBlockSpec(2, 2, 1, m.in_proj, [[1, 0], [0, 1]], m.out_proj, m.ssm)
    for model in (m, c):
        for run in (model.run_list, model.run_array):
            with pytest.raises(ShapeError, match=r"xs\[1\]: expected a token of length 2"):
                run(DOUBLE, [0.0, 0.0], [[1.0, 2.0], [1.0]])
            with pytest.raises(ShapeError, match=r"xs\[0\]: expected a token of length 2"):
                run(DOUBLE, [0.0, 0.0], [[1.0, 2.0, 3.0]])
            with pytest.raises(ShapeError, match="initial state: expected shape"):
                run(DOUBLE, [0.0], [[1.0, 2.0]])
    with pytest.raises(ShapeError, match="DiagonalSSM.scan"):
        m.ssm.scan(DOUBLE, [0.0, 0.0], [[1.0]])


def test_selective_refuses_short_tokens_states_and_history():
    m = _selective(np.random.default_rng(1))
    H0 = [[0.0] * 2 for _ in range(3)]
    with pytest.raises(ShapeError, match="expected a token of length 2"):
        m.run_list(DOUBLE, H0, [[1.0]])
    with pytest.raises(ShapeError, match="initial state"):
        m.run_array(DOUBLE_ARRAY, [[0.0, 0.0], [0.0], [0.0, 0.0]], [[1.0, 2.0]])
    with pytest.raises(ShapeError, match="initial state"):
        m.run_list(DOUBLE, H0[:2], [[1.0, 2.0]])
    with pytest.raises(ShapeError, match=r"history\[0\]: expected an entry of length 3"):
        m.run_list_aux(DOUBLE, H0, [[1.0, 2.0]], [[1.0, 2.0]])
    with pytest.raises(ShapeError, match=r"history\[1\]"):
        m.run_array_with_history(DOUBLE_ARRAY, H0, [[1.0, 2.0, 3.0], [1.0]], [[1.0, 2.0]])


def test_scan_and_cde_refuse_short_states():
    with pytest.raises(ValueError, match="state 'h' must have shape"):
        diagonal_selective_scan(DOUBLE, [0.0], [DiagonalTransition([1.0, 1.0], [0.0, 0.0])])
    with pytest.raises(ValueError, match="'b' must have shape"):
        DiagonalTransition([1.0, 1.0], [0.0])
    spec = LinearCDESpec(2, 1, 1, [[[0.0, 1.0], [0.0, 0.0]]], [[1.0], [2.0]], step="euler")
    with pytest.raises(ShapeError, match="expected z"):
        spec.run_list(DOUBLE, [1.0], [[1.0]], [[1.0]])
    with pytest.raises(ShapeError, match="expected z"):
        spec.run_list(DOUBLE, [1.0, 2.0], [[1.0, 2.0]], [[1.0]])
    with pytest.raises(ShapeError, match="steps"):
        spec.run_list(DOUBLE, [1.0, 2.0], [[1.0]], [])
