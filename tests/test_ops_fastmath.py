"""Accuracy and special values of the float32 polynomial math; warmup and lazy import."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from nbssm._kernels.fastmath import exp32, sigmoid32, softplus32, softplus_sigmoid32
from tolerances import tol


@njit(error_model="numpy")
def _apply(kind, x, out):
    for i in range(x.size):
        if kind == 0:
            out[i] = exp32(x[i])
        elif kind == 1:
            out[i] = softplus32(x[i])
        else:
            out[i] = sigmoid32(x[i])


@njit(error_model="numpy")
def _apply_fused(x, sp, sg):
    for i in range(x.size):
        sp[i], sg[i] = softplus_sigmoid32(x[i])


def _run_fused(x):
    x = np.asarray(x, dtype=np.float32)
    sp, sg = np.empty_like(x), np.empty_like(x)
    _apply_fused(x, sp, sg)
    return sp, sg


def _run(kind, x):
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _apply(kind, x, out)
    return out


def _rel(got, want):
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.abs(want)))


def test_exp32_accuracy_over_its_range():
    x = np.linspace(-86.6, 88.7, 400_001).astype(np.float32)
    want = np.array([math.exp(v) for v in x.astype(np.float64)])
    assert _rel(_run(0, x), want) <= tol("exp32")


def test_softplus32_and_sigmoid32_accuracy():
    x = np.linspace(-80, 80, 200_001).astype(np.float32)
    x64 = x.astype(np.float64)
    sp = np.array([math.log1p(math.exp(v)) for v in x64])
    assert _rel(_run(1, x), sp) <= tol("softplus32")
    sig = 1.0 / (1.0 + np.exp(-x64))
    assert _rel(_run(2, x), sig) <= tol("sigmoid32")


def test_softplus_sigmoid32_is_softplus32_bitwise_and_an_accurate_sigmoid():
    # the backward's fused form: one exp32 for softplus(x) and its derivative sigmoid(x)
    x = np.concatenate([np.linspace(-86.6, 30, 300_001), [-1e-30, 0.0, 1e-30, 19.999, 20.0, 20.001]])
    x = x.astype(np.float32)
    sp, sg = _run_fused(x)
    assert np.array_equal(sp, _run(1, x))  # the forward's softplus, bit for bit
    x64 = x.astype(np.float64)
    want = 1.0 / (1.0 + np.exp(-x64))
    assert _rel(sg, want) <= tol("sigmoid32_fused")
    sp, sg = _run_fused([np.nan, np.inf, -np.inf, 25.0, 89.0, -87.0, -200.0])
    assert np.isnan(sp[0]) and np.isnan(sg[0])
    assert sp[1] == np.inf and sg[1] == 1.0 and sp[2] == 0.0 and sg[2] == 0.0
    assert sg[3] == 1.0 and sg[4] == 1.0 and sp[4] == np.float32(89.0)
    assert sg[5] == 0.0 and sg[6] == 0.0  # below exp32's flush to zero (the true value < 2e-38)


def test_exp32_clamp_edges():
    # the range is one clamp of the argument to [-87.5, 89]: n = round(x / ln2) must stay in
    # [-126, 128] (n = -127 would build the bits of -inf, n = 129 those of a NaN or inf)
    f32 = np.float32
    lo = [-1e30, -200.0, -88.4, -88.0, -87.5, np.nextafter(f32(-87.5), f32(0)), -87.0, -86.995]
    e = _run(0, lo)
    assert np.all(e == 0.0) and not np.any(np.signbit(e))  # +0.0, never -0.0 or -inf
    # between -86.99 (n = -125) and -86.64 the result is the small value itself, positive,
    # monotone, within the subnormal spacing of the true value
    x = np.linspace(-86.98, -86.64, 2001).astype(np.float32)
    got = _run(0, x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.all(got > 0) and np.all(np.diff(got) >= 0)
    assert np.max(np.abs(got - want)) <= 2.0 ** -149 * 2 + 2.5e-7 * want.max()
    hi = [np.nextafter(f32(88.72284), f32(np.inf)), 88.75, 88.99, 89.0, 89.5, 1e4, 1e30]
    assert np.all(_run(0, hi) == np.inf)
    top = f32(88.7228)  # the largest argument tested finite
    assert np.isfinite(_run(0, [top])[0])
    # NaN passes the clamp (both comparisons are false) and gives NaN; so do NaN payloads
    nan_bits = np.array([0x7FC00000, 0x7FA00001, 0xFFC00000], dtype=np.uint32).view(np.float32)
    assert np.all(np.isnan(_run(0, nan_bits)))


def test_special_values():
    e = _run(0, [np.nan, np.inf, -np.inf, 88.8, -90.0, 0.0])
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0.0 and e[3] == np.inf and e[4] == 0.0 and e[5] == 1.0
    s = _run(1, [np.nan, np.inf, -np.inf, 25.0, -200.0])
    assert np.isnan(s[0]) and s[1] == np.inf and s[2] == 0.0 and s[3] == np.float32(25.0) and s[4] == 0.0
    g = _run(2, [np.nan, np.inf, -np.inf, 0.0])
    assert np.isnan(g[0]) and g[1] == 1.0 and g[2] == 0.0 and g[3] == 0.5


def test_import_nbssm_compiles_nothing_and_does_not_import_numba():
    code = "import sys, nbssm; assert 'numba' not in sys.modules, 'numba imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_follows_input(dtype):
    import nbssm

    a = np.ones((1, 3, 2), dtype=dtype)
    assert nbssm.linear_scan(a, a).dtype == dtype
    assert nbssm.causal_conv1d(a, np.ones((2, 2), dtype=dtype)).dtype == dtype
