"""Property tests of the spec mirror: List vs Array runners, double vs sympy contexts."""

from __future__ import annotations

import numpy as np
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from nbssm.spec.context import DOUBLE, DOUBLE_ARRAY, SYMPY
from nbssm.spec.models import DiagonalS4Spec, DiagonalSSM, MambaBlockSpec, SelectiveMambaBlockSpec
from spec_factories import random_compact, random_inputs, random_s4, random_selective
from tolerances import TOL

dims = st.integers(min_value=0, max_value=3)
pos_dims = st.integers(min_value=1, max_value=3)
lengths = st.integers(min_value=0, max_value=6)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _rel_err(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(b))))
    return float(np.max(np.abs(a - b))) / scale


@settings(max_examples=40, deadline=None)
@given(seed=seeds, i=dims, e=dims, n=dims, o=dims, w=st.integers(0, 4), length=lengths)
def test_selective_list_and_array_runners_agree_bitwise_with_same_forms(seed, i, e, n, o, w, length):
    rng = np.random.default_rng(seed)
    m = random_selective(rng, i, e, n, o, w)
    xs = random_inputs(rng, length, i)
    H0 = (rng.standard_normal((e, n)) * 0.5).tolist()
    for ctx in (DOUBLE, DOUBLE_ARRAY):
        assert m.run_list(ctx, H0, xs) == m.run_array(ctx, H0, xs)
    # with a non-empty initial history, the truncated runner still agrees
    L0 = (rng.standard_normal((w + 1, e))).tolist()
    assert m.run_list_aux(DOUBLE, H0, L0, xs) == m.run_array_with_history(DOUBLE, H0, L0[:w], xs)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, i=dims, n=dims, o=dims, length=lengths)
def test_s4_and_compact_list_and_array_runners_agree_bitwise(seed, i, n, o, length):
    rng = np.random.default_rng(seed)
    xs = random_inputs(rng, length, i)
    h0 = rng.standard_normal(n).tolist()
    for m in (random_s4(rng, i, n, o), random_compact(rng, i, n, o)):
        for ctx in (DOUBLE, DOUBLE_ARRAY):
            assert m.run_list(ctx, h0, xs) == m.run_array(ctx, h0, xs)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, i=pos_dims, e=pos_dims, n=pos_dims, o=pos_dims, w=st.integers(0, 4), length=lengths)
def test_families_with_their_own_forms_agree_closely(seed, i, e, n, o, w, length):
    """List family (plain forms) vs Array family (branched forms): equal over the reals."""
    rng = np.random.default_rng(seed)
    m = random_selective(rng, i, e, n, o, w)
    xs = random_inputs(rng, length, i, scale=2.0)
    H0 = (rng.standard_normal((e, n)) * 0.5).tolist()
    H_l, ys_l = m.run_list(DOUBLE, H0, xs)
    H_a, ys_a = m.run_array(DOUBLE_ARRAY, H0, xs)
    assert _rel_err(ys_l, ys_a) <= TOL["spec_families"]
    assert _rel_err(H_l, H_a) <= TOL["spec_families"]
    c = random_compact(rng, i, n, o)
    h0 = rng.standard_normal(n).tolist()
    (hl, yl), (ha, ya) = c.run_list(DOUBLE, h0, xs), c.run_array(DOUBLE_ARRAY, h0, xs)
    assert _rel_err(yl, ya) <= TOL["spec_families"] and hl == ha


def _to_sympy(x, digits=50):
    if isinstance(x, list):
        return [_to_sympy(v, digits) for v in x]
    return sympy.Float(x, digits)


def _convert_model(m):
    """The same model with every parameter a 50-digit sympy Float (exactly the double value)."""
    if isinstance(m, SelectiveMambaBlockSpec):
        kw = {f: _to_sympy(getattr(m, f)) for f in SelectiveMambaBlockSpec.FIELDS}
        return SelectiveMambaBlockSpec(m.input_dim, m.inner_dim, m.state_dim, m.output_dim, m.conv_width, **kw)
    ssm = m.ssm
    ssm2 = DiagonalSSM(ssm.dim, *(_to_sympy(getattr(ssm, f)) for f in "ABCD"))
    if isinstance(m, DiagonalS4Spec):
        return DiagonalS4Spec(m.input_dim, m.state_dim, m.output_dim, _to_sympy(m.in_proj), _to_sympy(m.out_proj), ssm2)
    return MambaBlockSpec(m.input_dim, m.state_dim, m.output_dim, _to_sympy(m.in_proj), _to_sympy(m.gate_proj),
                          _to_sympy(m.out_proj), ssm2)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, i=pos_dims, e=pos_dims, n=dims, o=pos_dims, w=st.integers(0, 3), length=st.integers(0, 4))
def test_double_and_sympy_contexts_agree(seed, i, e, n, o, w, length):
    """The same runner code on doubles and on 50-digit sympy numbers."""
    rng = np.random.default_rng(seed)
    models = [random_selective(rng, i, e, n, o, w), random_s4(rng, i, n, o), random_compact(rng, i, n, o)]
    xs = random_inputs(rng, length, i)
    for m in models:
        if isinstance(m, SelectiveMambaBlockSpec):
            h0 = (rng.standard_normal((e, n)) * 0.5).tolist()
        else:
            h0 = rng.standard_normal(n).tolist()
        hd, yd = m.run_list(DOUBLE, h0, xs)
        hs, ys = _convert_model(m).run_list(SYMPY, _to_sympy(h0), _to_sympy(xs))
        ys_f = [[float(v) for v in y] for y in ys]
        assert all(isinstance(v, sympy.Float) or v == 0 for y in ys for v in y)
        assert _rel_err(yd, ys_f) <= TOL["double_vs_sympy50"]
        hs_f = [[float(v) for v in row] for row in hs] if hs and isinstance(hs[0], list) else [float(v) for v in hs]
        assert _rel_err(hd, hs_f) <= TOL["double_vs_sympy50"]


def test_sympy_context_builds_symbolic_expressions():
    x, a, b = sympy.symbols("x a b")
    ssm = DiagonalSSM(1, [a], [b], [sympy.Integer(1)], [sympy.Integer(0)])
    m = DiagonalS4Spec(1, 1, 1, [[sympy.Integer(1)]], [[sympy.Integer(1)]], ssm)
    h, ys = m.run_list(SYMPY, [sympy.Integer(0)], [[x], [x]])
    assert sympy.expand(ys[1][0] - (a * b * x + b * x)) == 0
    assert sympy.expand(SYMPY.sigmoid(x) - 1 / (1 + sympy.exp(-x))) == 0
