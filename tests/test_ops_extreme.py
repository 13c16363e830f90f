"""Degenerate and extreme inputs of the kernels: huge state sizes, overflowing chunk products,
integer arguments near their limits, softplus far out. Each case gives the sequential or the
reference result (or a clear error); nothing crashes the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nbssm
from nbssm.reference import selective_scan_ref
from nbssm.spec.algorithms import (
    chunked_diagonal_scan,
    ieee_carry_ok,
    sequential_diagonal_scan,
)
from tolerances import max_rel_err, tol

# ----------------------------------------------------------------------------- huge state size
_CHILD = r"""
import json, sys
import numba, numpy as np
import nbssm
from nbssm.reference import random_inputs, selective_scan_ref
threads, nstate, strategy, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
numba.set_num_threads(threads)
kw = random_inputs("selective", (1, 5, 3, nstate), dtype, seed=0)
y, h = nbssm.selective_scan(**kw, return_final_state=True, strategy=strategy, chunk_length=2)
kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
ry, rh = selective_scan_ref(**kw64, return_final_state=True)
err = max(float(np.max(np.abs(y - ry)) / np.max(np.abs(ry))), float(np.max(np.abs(h - rh)) / np.max(np.abs(rh))))
print(json.dumps({"err": err, "shape": list(y.shape) + list(h.shape)}))
"""


@pytest.mark.parametrize("threads, nstate, strategy, dtype", [
    (1, 16384, "sequential", "float64"),
    (2, 16384, "sequential", "float64"),
    (2, 16384, "chunked", "float64"),
    (1, 20000, "chunked", "float32"),
])
def test_large_state_size_runs_and_matches_reference(threads, nstate, strategy, dtype):
    # in a child process: a stack overflow kills the child (a test failure), not pytest
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(threads), str(nstate), strategy, dtype],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["shape"] == [1, 5, 3, 1, 3, nstate]
    row = "float64_vs_oracle" if dtype == "float64" and strategy == "sequential" else (
        "float64_chunked_vs_sequential" if dtype == "float64" else "float32_vs_float64")
    assert res["err"] <= tol(row)


# ----------------------------------------------------------------------------- chunked carry
def _linear_both(a, b, h0, cl):
    seq, hs = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy="sequential")
    ch, hc = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy="chunked", chunk_length=cl)
    return (seq, hs), (ch, hc)


def _same_bits(x, y) -> bool:
    """Bitwise equal except for NaN payloads and signs (which IEEE leaves unspecified)."""
    x = np.asarray(x)
    y = np.asarray(y)
    nan = np.isnan(x)
    return x.shape == y.shape and np.array_equal(nan, np.isnan(y)) and x[~nan].tobytes() == y[~nan].tobytes()


def _assert_chunked_like_sequential(seq, ch, row="float64_chunked_vs_sequential"):
    """The chunked result is the sequential one up to rounding wherever the sequential one is
    finite, and NaN only where the sequential one is NaN. Where the sequential scan overflowed
    to +-inf (an absorbing state: it never becomes finite again), the chunked one is that inf or
    the finite value of the reassociated product (a chunk summary can skip the overflow)."""
    seq = np.asarray(seq)
    ch = np.asarray(ch)
    assert not (np.isnan(ch) & ~np.isnan(seq)).any(), "NaN where the sequential scan has none"
    fin = np.isfinite(seq)
    assert np.isfinite(ch[fin]).all()
    if fin.any():
        assert max_rel_err(ch[fin], seq[fin]) <= tol(row)
    inf = np.isinf(seq)
    assert ((ch[inf] == seq[inf]) | np.isfinite(ch[inf])).all()


@pytest.mark.parametrize("dtype, big, small", [(np.float64, 1e200, 1e-200), (np.float32, 1e30, 1e-30)])
def test_linear_chunked_overflowed_product_times_zero_state_is_not_nan(dtype, big, small):
    # product of the chunk's transitions overflows (big**cl = inf) while the state is exactly 0
    a = np.full((1, 12, 2), big, dtype)
    b = np.zeros((1, 12, 2), dtype)
    (seq, hs), (ch, hc) = _linear_both(a, b, None, 4)
    assert np.all(seq == 0) and ch.tobytes() == seq.tobytes() and hc.tobytes() == hs.tobytes()
    # mirror: the product underflows to 0 while the state is infinite
    a = np.full((1, 12, 2), small, dtype)
    h0 = np.array([[np.inf, -np.inf]], dtype)
    (seq, hs), (ch, hc) = _linear_both(a, b, h0, 4)
    assert np.all(np.isinf(seq)) and ch.tobytes() == seq.tobytes() and hc.tobytes() == hs.tobytes()


def test_linear_auto_strategy_on_few_channels_is_not_nan():
    a = np.full((1, 20000, 1), 1e200)  # auto picks chunked (one channel), default chunk length
    b = np.zeros((1, 20000, 1))
    assert nbssm.ops.default_strategy("linear", 1, 1) == "chunked"
    out = nbssm.linear_scan(a, b)
    assert np.all(out == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("channels", [3, 40])
def test_selective_chunked_overflow_and_underflow_are_not_nan(dtype, channels):
    # exp(delta * A) = exp(+-460) per token: products over a chunk overflow / underflow
    length, n = 12, 2
    big = 460.0 if dtype == np.float64 else 60.0
    u = np.ones((1, length, channels), dtype)
    delta = np.ones((1, length, channels), dtype)
    B = np.zeros((1, length, n), dtype)  # b_t = 0: the state stays what it was
    C = np.ones((1, length, n), dtype)
    for sign, h0v in ((1.0, 0.0), (-1.0, np.inf)):
        A = np.full((channels, n), sign * big, dtype)
        h0 = np.full((1, channels, n), h0v, dtype)
        seq = nbssm.selective_scan(u, delta, A, B, C, initial_state=h0, return_final_state=True,
                                   strategy="sequential")
        ch = nbssm.selective_scan(u, delta, A, B, C, initial_state=h0, return_final_state=True,
                                  strategy="chunked", chunk_length=4)
        assert not np.isnan(seq[0]).any()
        for s, c in zip(seq, ch):
            assert c.tobytes() == s.tobytes()


# non-negative values only: with signs, cancellation makes any reassociation (chunked or not)
# differ by more than rounding; what is tested is the non-finite structure and the accuracy
_A = [0.0, 1e-200, 1e-5, 0.5, 1.0, 2.0, 1e5, 1e200, np.inf, np.nan]
_B = [0.0, 1e-200, 1.0, 3.0, 1e200, np.inf, np.nan]
_H = [0.0, 1.0, 1e300, np.inf, np.nan]


@settings(deadline=None, max_examples=150)
@given(data=st.data(), length=st.integers(1, 24), channels=st.integers(1, 3), cl=st.integers(1, 6))
def test_linear_chunked_equals_sequential_on_extreme_values(data, length, channels, cl):
    a = data.draw(hnp.arrays(np.float64, (1, length, channels), elements=st.sampled_from(_A)))
    b = data.draw(hnp.arrays(np.float64, (1, length, channels), elements=st.sampled_from(_B)))
    h0 = data.draw(hnp.arrays(np.float64, (1, channels), elements=st.sampled_from(_H)))
    (seq, hs), (ch, hc) = _linear_both(a, b, h0, cl)
    _assert_chunked_like_sequential(seq, ch)
    _assert_chunked_like_sequential(hs, hc)
    # the kernel is the generic algorithm with the IEEE carry rule, bit for bit
    want = chunked_diagonal_scan(h0[0].tolist(), a[0].tolist(), b[0].tolist(), cl, carry_ok=ieee_carry_ok)
    assert _same_bits(np.asarray(want).reshape(length, channels), ch[0])
    assert _same_bits(np.asarray(sequential_diagonal_scan(h0[0].tolist(), a[0].tolist(), b[0].tolist())), seq[0])


@settings(deadline=None, max_examples=60)
@given(data=st.data(), length=st.integers(1, 14), cl=st.integers(1, 5))
def test_selective_chunked_equals_sequential_on_extreme_values(data, length, cl):
    channels, n = 3, 2
    pos = st.sampled_from([0.0, 1e-200, 0.5, 1.0, 1e200, np.inf, np.nan])
    u = data.draw(hnp.arrays(np.float64, (1, length, channels), elements=pos))
    delta = data.draw(hnp.arrays(np.float64, (1, length, channels), elements=st.sampled_from([0.0, 0.5, 1.0])))
    A = data.draw(hnp.arrays(np.float64, (channels, n), elements=st.sampled_from([-1000.0, -460.0, -1.0, 0.0,
                                                                                  1.0, 460.0])))
    B = data.draw(hnp.arrays(np.float64, (1, length, n), elements=pos))
    C = data.draw(hnp.arrays(np.float64, (1, length, n), elements=st.sampled_from([0.0, 1.0, 2.0])))
    h0 = data.draw(hnp.arrays(np.float64, (1, channels, n), elements=st.sampled_from(_H)))
    kw = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "initial_state": h0, "return_final_state": True}
    y_s, h_s = nbssm.selective_scan(**kw, strategy="sequential")
    y_c, h_c = nbssm.selective_scan(**kw, strategy="chunked", chunk_length=cl)
    _assert_chunked_like_sequential(h_s, h_c)
    _assert_chunked_like_sequential(y_s, y_c)


# ----------------------------------------------------------------------------- integer arguments
@pytest.mark.parametrize("cl", [2**31, 2**62, 2**63 - 1, 2**64, np.int64(2**63 - 1), np.uint64(2**64 - 1)])
def test_huge_chunk_length_is_one_chunk(cl):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (1, 50, 2))
    b = rng.standard_normal((1, 50, 2))
    want = nbssm.linear_scan(a, b, return_final_state=True, strategy="sequential")
    got = nbssm.linear_scan(a, b, return_final_state=True, strategy="chunked", chunk_length=cl)
    assert all(g.tobytes() == w.tobytes() for g, w in zip(got, want))
    kw = nbssm.reference.random_inputs("selective", (1, 50, 5, 3), np.float64, seed=1)
    want = nbssm.selective_scan(**kw, return_final_state=True, strategy="sequential")
    got = nbssm.selective_scan(**kw, return_final_state=True, strategy="chunked", chunk_length=cl)
    assert all(g.tobytes() == w.tobytes() for g, w in zip(got, want))


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2**63, ValueError), (1.0, TypeError), (True, TypeError),
                                      ("4", TypeError)])
def test_bad_chunk_length_raises(bad, exc):
    a = np.ones((1, 5, 2))
    with pytest.raises(exc, match="chunk_length: expected an integer"):
        nbssm.linear_scan(a, a, strategy="chunked", chunk_length=bad)


# ----------------------------------------------------------------------------- softplus far out
_LOG_DBL_MAX = float(np.log(np.finfo(np.float64).max))


def _softplus_through_the_scan(x, dtype):
    """``y = softplus(x)``: A = 0 (transition 1), B = u = C = 1, zero state, one token per value."""
    x = np.asarray(x, dtype)
    length = x.size
    ones = np.ones((1, length, 1), dtype)
    return nbssm.selective_scan(ones, x.reshape(1, length, 1), np.zeros((1, 1), dtype), ones[..., :1] * 0 + 1,
                                ones[..., :1], delta_softplus=True, strategy="sequential",
                                initial_state=None)[0, :, 0]


def test_float64_softplus_is_finite_and_x_above_log_dbl_max():
    # one token per call (the state accumulates: h_t = h_{t-1} + softplus(x_t)); inf is not
    # tested this way (delta * A = inf * 0 is NaN)
    xs = [700.0, _LOG_DBL_MAX, np.nextafter(_LOG_DBL_MAX, np.inf), 710.0, 1e5, 1e300, 1e308]
    for x in xs:
        y = _softplus_through_the_scan([x], np.float64)[0]
        assert np.isfinite(y), x
        assert abs(y - x) <= 4 * np.spacing(x), x  # softplus(x) = x + log1p(exp(-x)) = x to rounding
        if x > _LOG_DBL_MAX:
            assert y == x
    assert _softplus_through_the_scan([_LOG_DBL_MAX], np.float64)[0] == np.log(1 + np.exp(_LOG_DBL_MAX))
    assert np.isnan(_softplus_through_the_scan([np.nan], np.float64)[0])
    assert _softplus_through_the_scan([-800.0], np.float64)[0] == 0.0


def test_float64_softplus_matches_the_reference_across_the_range():
    x = np.concatenate([np.linspace(-50, 50, 41), np.linspace(700, 720, 21), [1e10, 1e300]])
    got = np.array([_softplus_through_the_scan([v], np.float64)[0] for v in x])
    want = np.logaddexp(0.0, x)
    assert np.all(np.isfinite(got))
    # the plain form log(1 + exp(x)) loses the relative accuracy of tiny results (x << 0): absolute there
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)) <= 1e-15
    ref = selective_scan_ref(np.ones((1, 1, 1)), np.array([[[1e300]]]), np.zeros((1, 1)), np.ones((1, 1, 1)),
                             np.ones((1, 1, 1)), delta_softplus=True)
    assert ref[0, 0, 0] == 1e300
