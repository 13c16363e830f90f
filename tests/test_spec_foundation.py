"""Foundation tests of the spec mirror that do not trust the runners.

Expected values come from hand derivations written out here (with Python's
own float arithmetic in the spec's operation order), never from the code under
test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbssm.spec.context import BRANCHED, DOUBLE, DOUBLE_ARRAY, PLAIN, make_context
from nbssm.spec.models import (
    DiagonalS4Spec,
    DiagonalSSM,
    MambaBlockSpec,
    SelectiveMambaBlockSpec,
    ShapeError,
    vec_mat,
)
from nbssm.spec.scan import (
    DiagonalTransition,
    ScalarAffineTransition,
    diagonal_selective_scan,
    run_diagonal_transitions,
    run_scalar_affine,
    scalar_affine_scan,
    scan_array,
    summarize_scalar_affine,
)
from spec_factories import random_inputs, random_s4, random_selective


def one_channel_s4():
    """Section 5's example: A = B = C = 1, D = 0, unit projections."""
    ssm = DiagonalSSM(1, [1.0], [1.0], [1.0], [0.0])
    return DiagonalS4Spec(1, 1, 1, [[1.0]], [[1.0]], ssm)


# --------------------------------------------------------------------------- hand values
@pytest.mark.parametrize("runner", ["run_list", "run_array"])
def test_one_channel_s4_example(runner):
    m = one_channel_s4()
    run = getattr(m, runner)
    h, ys = run(DOUBLE, [0.0], [[1.0], [2.0], [5.0]])
    assert ys == [[1.0], [3.0], [8.0]] and h == [8.0]
    h, ys = run(DOUBLE, [0.0], [[1.0], [2.0], [9.0]])
    assert ys == [[1.0], [3.0], [12.0]] and h == [12.0]


def test_diagonal_scan_by_hand():
    # h0 = (1, -2); t1 = ((2, 0.5), (1, 1)); t2 = ((-1, 3), (0, 2))
    h0 = [1.0, -2.0]
    trs = [DiagonalTransition([2.0, 0.5], [1.0, 1.0]), DiagonalTransition([-1.0, 3.0], [0.0, 2.0])]
    # h1 = (2*1+1, 0.5*-2+1) = (3, 0); h2 = (-1*3+0, 3*0+2) = (-3, 2)
    assert diagonal_selective_scan(DOUBLE, h0, trs) == [[3.0, 0.0], [-3.0, 2.0]]
    assert run_diagonal_transitions(DOUBLE, h0, trs) == [-3.0, 2.0]
    assert diagonal_selective_scan(DOUBLE, h0, []) == []
    assert run_diagonal_transitions(DOUBLE, h0, []) == h0
    # compose: first t1 then t2 = ((-2, 1.5), (-1*1+0, 3*1+2)) = ((-2, 1.5), (-1, 5))
    c = DiagonalTransition.compose(DOUBLE, trs[1], trs[0])
    assert (c.a, c.b) == ([-2.0, 1.5], [-1.0, 5.0])
    assert c.apply(DOUBLE, h0) == [-3.0, 2.0]


def test_scalar_affine_by_hand():
    trs = [ScalarAffineTransition(2.0, 1.0), ScalarAffineTransition(3.0, -1.0)]
    assert scalar_affine_scan(DOUBLE, 1.0, trs) == [3.0, 8.0]
    assert run_scalar_affine(DOUBLE, 1.0, trs) == 8.0
    s = summarize_scalar_affine(DOUBLE, trs)  # compose(t2, t1) = (6, 3*1 - 1)
    assert (s.a, s.b) == (6.0, 2.0)
    i = summarize_scalar_affine(DOUBLE, [])
    assert (i.a, i.b) == (1.0, 0.0)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_selective_block_by_hand():
    """One channel, one state, conv width 2, two tokens, every operation written out."""
    a, b, k0, k1, cb, w, dtb, r, bp, cp, ds, op = 0.7, -0.4, 0.9, -0.3, 0.1, 0.8, -0.2, 1.3, 0.6, -1.1, 0.25, 1.7
    m = SelectiveMambaBlockSpec(
        1, 1, 1, 1, 2, x_proj=[[a]], z_proj=[[b]], conv_kernel=[[k0], [k1]], conv_bias=[cb],
        dt_proj=[[w]], dt_bias=[dtb], A=[[r]], b_proj=[[bp]], c_proj=[[cp]], d_skip=[ds], out_proj=[[op]],
    )
    xs = [[1.5], [-0.8]]
    H = 0.3
    hist = []
    expected = []
    for x in xs:
        p = 0.0 + x[0] * a
        z = 0.0 + x[0] * b
        hist = [p] + hist
        prev = hist[1] if len(hist) > 1 else 0.0
        c = (cb + p * k0) + prev * k1            # tap 1 reads the previous token (0 at t = 0)
        u = c * _sig(c)
        delta = math.log(1.0 + math.exp((0.0 + u * w) + dtb))
        Bt = 0.0 + u * bp
        Ct = 0.0 + u * cp
        H = math.exp(-(delta * r)) * H + (delta * Bt) * u
        y = ds * u + H * Ct
        o = 0.0 + (y * (z * _sig(z))) * op
        expected.append([o])
    Hf, ys = m.run_list(DOUBLE, [[0.3]], xs)
    assert ys == expected
    assert Hf == [[H]]
    Hf2, ys2 = m.run_array(DOUBLE, [[0.3]], xs)
    assert (Hf2, ys2) == (Hf, ys)


def test_compact_mamba_by_hand():
    m = MambaBlockSpec(1, 1, 1, [[2.0]], [[0.5]], [[3.0]], DiagonalSSM(1, [0.5], [1.0], [2.0], [1.0]))
    # x = 1: s = 2, h' = 0.5*0 + 1*2 = 2, yS = 2*2 + 1*2 = 6, g = sigmoid(0.5), o = 6*g*3
    h, ys = m.run_list(DOUBLE, [0.0], [[1.0]])
    assert h == [2.0]
    assert ys == [[0.0 + (6.0 * _sig(0.5)) * 3.0]]


# --------------------------------------------------------------------------- fold order
def test_vec_mat_is_a_left_fold():
    v = [1e16, 1.0, -1e16]
    W = [[1.0], [1.0], [1.0]]
    # ((0 + 1e16) + 1) + (-1e16) = 0 in doubles; other orders give 1
    assert vec_mat(DOUBLE, v, W, 1) == [0.0]
    assert (1e16 + -1e16) + 1.0 == 1.0  # the other order really differs
    W2 = [[1.0], [1.0], [1.0]]
    assert vec_mat(DOUBLE, [1.0, 1e16, -1e16], W2, 1) == [0.0]


def test_s4_output_uses_left_fold():
    # out_proj sums C*h' + D*s over three state channels with the cancelling terms
    ssm = DiagonalSSM(3, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    m = DiagonalS4Spec(3, 3, 1, np.eye(3), [[1.0], [1.0], [1.0]], ssm)
    _, ys = m.run_list(DOUBLE, [0.0, 0.0, 0.0], [[1e16, 1.0, -1e16]])
    assert ys == [[0.0]]


def test_selective_conv_fold_and_zero_taps():
    """Missing taps are multiplied and added: a -0.0 bias stays +0.0 after `+ 0*K`."""
    ctx = DOUBLE
    from nbssm.spec.models import causal_conv_step

    out = causal_conv_step(ctx, [[1.0], [2.0], [3.0]], [-0.0], [[0.0]])
    # (-0.0 + 0*1) = +0.0 ; skipping taps would have kept -0.0
    assert math.copysign(1.0, out[0]) == 1.0
    # a non-finite kernel on a missing tap poisons the sum (0 * inf = nan): not skipped
    out = causal_conv_step(ctx, [[1.0], [math.inf]], [0.0], [[1.0]])
    assert math.isnan(out[0])
    # fold order over taps: bias seeds, then taps 0, 1, 2
    out = causal_conv_step(ctx, [[1.0], [1.0], [1.0]], [1e16], [[1.0], [-1e16], [1.0]])
    assert out == [((1e16 + 1.0) + -1e16) + 1.0]


# --------------------------------------------------------------------------- overflow
def test_plain_sigmoid_overflow_is_zero_not_exception():
    assert DOUBLE.sigmoid(-800.0) == 0.0
    assert DOUBLE.exp(800.0) == math.inf
    assert DOUBLE.log(0.0) == -math.inf
    assert math.isnan(DOUBLE.log(-1.0))
    assert DOUBLE.softplus(800.0) == math.inf  # plain form: log(1 + inf)
    assert DOUBLE_ARRAY.softplus(800.0) == 800.0  # branched form
    assert DOUBLE_ARRAY.sigmoid(-800.0) == 0.0
    assert DOUBLE.div(1.0, 0.0) == math.inf and DOUBLE.div(-1.0, 0.0) == -math.inf
    assert math.isnan(DOUBLE.div(0.0, 0.0))


def test_activation_forms_differ_in_last_bit_somewhere():
    xs = np.random.default_rng(0).uniform(-10, 10, 2000).tolist()
    plain = [DOUBLE.sigmoid(x) for x in xs]
    branched = [DOUBLE_ARRAY.sigmoid(x) for x in xs]
    assert plain != branched  # the two families really differ in IEEE
    np.testing.assert_allclose(plain, branched, rtol=1e-15, atol=0)


def test_context_forms_are_independent():
    mixed = make_context("double", sigmoid=PLAIN, softplus=BRANCHED)
    assert mixed.sigmoid(-3.0) == DOUBLE.sigmoid(-3.0)
    assert mixed.softplus(3.0) == DOUBLE_ARRAY.softplus(3.0)
    with pytest.raises(ValueError, match="sigmoid_form"):
        make_context("double", sigmoid="fancy")


# --------------------------------------------------------------------------- edge cases
def test_empty_input_returns_initial_state():
    rng = np.random.default_rng(1)
    m = random_selective(rng, 2, 2, 2, 2, 3)
    H0 = [[1.0, 2.0], [3.0, 4.0]]
    assert m.run_list(DOUBLE, H0, []) == (H0, [])
    assert m.run_array(DOUBLE, H0, []) == (H0, [])
    s4 = random_s4(rng, 2, 2, 2)
    assert s4.run_list(DOUBLE, [1.0, 2.0], []) == ([1.0, 2.0], [])


def test_conv_width_zero_gives_bias():
    rng = np.random.default_rng(2)
    m = random_selective(rng, 2, 3, 2, 2, 0)
    # with no taps c_t = conv_bias, so u is constant: outputs only differ through z and H
    from nbssm.spec.models import causal_conv_step

    assert causal_conv_step(DOUBLE, m.conv_kernel, m.conv_bias, [[5.0, 5.0, 5.0]]) == m.conv_bias
    xs = random_inputs(rng, 3, 2)
    H0 = [[0.0] * 2 for _ in range(3)]
    assert m.run_list(DOUBLE, H0, xs) == m.run_array(DOUBLE, H0, xs)


def test_state_dim_zero_gives_skip_only():
    rng = np.random.default_rng(3)
    m = random_selective(rng, 2, 2, 0, 1, 2)
    xs = random_inputs(rng, 2, 2)
    H, ys = m.run_list(DOUBLE, [[], []], xs)
    assert H == [[], []]
    # y = d_skip * u: recompute u by hand for token 0
    p = [(0.0 + xs[0][0] * m.x_proj[0][d]) + xs[0][1] * m.x_proj[1][d] for d in range(2)]
    z = [(0.0 + xs[0][0] * m.z_proj[0][d]) + xs[0][1] * m.z_proj[1][d] for d in range(2)]
    c = [(m.conv_bias[d] + p[d] * m.conv_kernel[0][d]) + 0.0 * m.conv_kernel[1][d] for d in range(2)]
    u = [c[d] * _sig(c[d]) for d in range(2)]
    y = [m.d_skip[d] * u[d] for d in range(2)]
    o = (0.0 + (y[0] * (z[0] * _sig(z[0]))) * m.out_proj[0][0]) + (y[1] * (z[1] * _sig(z[1]))) * m.out_proj[1][0]
    assert ys[0] == [o]


def test_inner_dim_zero_gives_zero_outputs():
    rng = np.random.default_rng(4)
    m = random_selective(rng, 2, 0, 2, 3, 2)
    H, ys = m.run_list(DOUBLE, [], random_inputs(rng, 4, 2))
    assert H == [] and ys == [[0.0, 0.0, 0.0]] * 4


def test_zero_dims_everywhere():
    m = DiagonalS4Spec(0, 0, 0, [], [], DiagonalSSM(0, [], [], [], []))
    assert m.run_list(DOUBLE, [], [[], []]) == ([], [[], []])


# --------------------------------------------------------------------------- shapes
def test_shape_errors_name_field_expected_and_actual():
    ssm = DiagonalSSM(2, [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ShapeError, match=r"DiagonalS4Spec\.out_proj: expected shape \(2, 3\), got \(3, 2\)"):
        DiagonalS4Spec(1, 2, 3, [[1.0, 1.0]], np.zeros((3, 2)), ssm)
    with pytest.raises(ShapeError, match=r"DiagonalSSM\.C: expected shape \(2,\), got \(3,\)"):
        DiagonalSSM(2, [1.0, 1.0], [1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0])
    rng = np.random.default_rng(0)
    good = random_selective(rng, 2, 3, 2, 2, 2)
    kwargs = {f: getattr(good, f) for f in SelectiveMambaBlockSpec.FIELDS}
    kwargs["conv_kernel"] = np.zeros((3, 3))
    with pytest.raises(ShapeError, match=r"conv_kernel: expected shape \(2, 3\), got \(3, 3\)"):
        SelectiveMambaBlockSpec(2, 3, 2, 2, 2, **kwargs)
    kwargs["conv_kernel"] = [[1.0, 2.0, 3.0], [1.0, 2.0]]
    with pytest.raises(ShapeError, match="ragged"):
        SelectiveMambaBlockSpec(2, 3, 2, 2, 2, **kwargs)


def test_numpy_parameters_are_converted_not_aliased():
    W = np.ones((2, 2))
    ssm = DiagonalSSM(2, np.ones(2), np.ones(2), np.ones(2), np.zeros(2))
    m = DiagonalS4Spec(2, 2, 2, W, W, ssm)
    W[0, 0] = 5.0
    assert m.in_proj == [[1.0, 1.0], [1.0, 1.0]]
    assert isinstance(m.in_proj[0][0], float)


def test_scan_array_generic_left_fold():
    # step: s -> s*10 + x, output the pair; order of application is visible in the digits
    s, outs = scan_array(lambda s, x: (s * 10 + x, (s, x)), 0, [1, 2, 3])
    assert s == 123 and outs == [(0, 1), (1, 2), (12, 3)]
    assert scan_array(lambda s, x: (s, x), 7, []) == (7, [])


def test_no_top_level_spec_module(tmp_path):
    """Installing nbssm adds nbssm.spec, never a top-level `spec` (checked from a clean cwd)."""
    import subprocess
    import sys

    code = (
        "import importlib.util, nbssm.spec; "
        "assert nbssm.spec.__name__ == 'nbssm.spec'; "
        "print(importlib.util.find_spec('spec') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
