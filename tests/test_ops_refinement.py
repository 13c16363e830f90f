"""Kernels against the spec's double runners, the generic references and plain-loop oracles.

float64 kernels follow the spec's operation order and call the same C library exp/log as the
spec's double context, so they are compared bit for bit; float32 is compared with the float64
result under the tolerance table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nbssm
from naive import naive_causal_conv1d, naive_linear_scan, naive_selective_scan
from nbssm.verify.spec_adapters import (
    causal_conv1d_spec,
    causal_conv1d_streaming_reference,
    linear_scan_chunked_reference,
    linear_scan_spec,
    selective_scan_chunked_reference,
    selective_scan_spec,
)
from ops_inputs import conv_inputs, linear_inputs, selective_inputs
from tolerances import max_rel_err, tol

# ----------------------------------------------------------------------------- selective scan
# state sizes 64 / 65 / 130: one, two and three slabs of the kernel's stack scratch
SELECTIVE_SHAPES = [(2, 13, 20, 4), (1, 5, 3, 2), (1, 1, 16, 1), (2, 9, 33, 3), (1, 4, 17, 0), (1, 6, 3, 64),
                    (1, 6, 35, 65), (1, 5, 3, 130)]


@pytest.mark.parametrize("shape", SELECTIVE_SHAPES)
@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
def test_selective_float64_bitwise_vs_spec(shape, strategy):
    kw = selective_inputs(1, *shape)
    y, h = nbssm.selective_scan(**kw, return_final_state=True, strategy="sequential")
    y_ref, h_ref = selective_scan_spec(**kw)
    assert np.array_equal(y, y_ref)
    assert np.array_equal(h, h_ref)
    if strategy == "chunked":  # chunk_length >= length is exactly the sequential algorithm
        y2, h2 = nbssm.selective_scan(**kw, return_final_state=True, strategy="chunked",
                                      chunk_length=max(shape[1], 1))
        assert np.array_equal(y2, y_ref) and np.array_equal(h2, h_ref)


def test_selective_without_optional_arguments_vs_spec():
    kw = selective_inputs(2, 2, 7, 18, 3, extras=False)
    y, h = nbssm.selective_scan(**kw, return_final_state=True)
    y_ref, h_ref = selective_scan_spec(**kw)
    assert np.array_equal(y, y_ref) and np.array_equal(h, h_ref)


@pytest.mark.parametrize("chunk_length", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("nstate", [3, 70])
def test_selective_chunked_float64_bitwise_vs_generic_reference(chunk_length, nstate):
    kw = selective_inputs(3, 2, 11, 17, nstate)
    y = nbssm.selective_scan(**kw, strategy="chunked", chunk_length=chunk_length)
    assert np.array_equal(y, selective_scan_chunked_reference(**kw, chunk_length=chunk_length)[0])
    y_seq = nbssm.selective_scan(**kw, strategy="sequential")
    assert max_rel_err(y, y_seq) <= tol("float64_chunked_vs_sequential")


def test_selective_vs_naive_oracle():
    kw = selective_inputs(4, 2, 30, 24, 5)
    kw_naive = {k: v for k, v in kw.items() if k != "initial_state"}
    y, h = nbssm.selective_scan(**kw, return_final_state=True)
    y_ref, h_ref = naive_selective_scan(**kw_naive, h0=kw["initial_state"])
    assert max_rel_err(y, y_ref) <= tol("float64_vs_oracle")
    assert max_rel_err(h, h_ref) <= tol("float64_vs_oracle")


@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
def test_selective_float32_vs_float64(strategy):
    kw64 = selective_inputs(5, 2, 200, 40, 16)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw64.items()}
    y64, h64 = nbssm.selective_scan(**kw64, return_final_state=True, strategy=strategy, chunk_length=64)
    y32, h32 = nbssm.selective_scan(**kw32, return_final_state=True, strategy=strategy, chunk_length=64)
    assert y32.dtype == np.float32 and h32.dtype == np.float32
    assert max_rel_err(y32, y64) <= tol("float32_vs_float64")
    assert max_rel_err(h32, h64) <= tol("float32_vs_float64")


def test_selective_runtime_A_is_exact_negation_of_spec_A():
    # exp(delta * (-A_spec)) == exp(-(delta * A_spec)) bit for bit: negation is exact in IEEE
    rng = np.random.default_rng(6)
    d, a = rng.random(1000), rng.random(1000) * 5
    assert all(math.exp(x * (-y)) == math.exp(-(x * y)) for x, y in zip(d, a))


# ----------------------------------------------------------------------------- linear scan
@pytest.mark.parametrize("shape", [(2, 17, 5), (1, 1, 1), (3, 8, 70), (1, 40, 1)])
def test_linear_float64_bitwise_vs_spec(shape):
    a, b, h0 = linear_inputs(7, *shape)
    out, hT = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy="sequential")
    ref, ref_hT = linear_scan_spec(a, b, h0)
    assert np.array_equal(out, ref)
    assert np.array_equal(hT, ref_hT)
    naive, _ = naive_linear_scan(a, b, h0)
    assert np.array_equal(out, naive)  # no transcendental functions: the oracle is bitwise too


@pytest.mark.parametrize("chunk_length", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("channels", [1, 3])  # one channel runs 4 chunks in lockstep
def test_linear_chunked_float64_bitwise_vs_generic_reference(chunk_length, channels):
    a, b, h0 = linear_inputs(8, 2, 29 if chunk_length < 7 else 80, channels)
    out, hT = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy="chunked", chunk_length=chunk_length)
    ref, ref_hT = linear_scan_chunked_reference(a, b, h0, chunk_length=chunk_length)
    assert np.array_equal(out, ref)
    assert np.array_equal(hT, ref_hT)


def test_linear_float32_vs_float64():
    a, b, h0 = linear_inputs(9, 2, 500, 37)
    ref = nbssm.linear_scan(a, b, h0)
    for strategy in ("sequential", "chunked"):
        got = nbssm.linear_scan(a.astype(np.float32), b.astype(np.float32), h0.astype(np.float32),
                                strategy=strategy, chunk_length=33)
        assert got.dtype == np.float32
        assert max_rel_err(got, ref) <= tol("float32_linear_vs_float64")


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("width", [0, 1, 2, 4])
def test_conv_float64_bitwise_vs_spec_and_reference(width):
    x, w, bias, hist = conv_inputs(10, 2, 9, 70, width)
    out, new_hist = nbssm.causal_conv1d(x, w, bias=bias, initial_state=hist, return_final_state=True)
    ref_out, ref_hist = causal_conv1d_spec(x, w, bias=bias, initial_state=hist)
    assert np.array_equal(out, ref_out)
    assert np.array_equal(new_hist, ref_hist)
    s_out, s_hist = causal_conv1d_streaming_reference(x, w, bias=bias, initial_state=hist, splits=(4,))
    assert np.array_equal(out, s_out)
    assert np.array_equal(new_hist, s_hist)
    naive_out, naive_hist = naive_causal_conv1d(x, w, bias, hist)
    assert max_rel_err(out, naive_out) <= tol("float64_vs_oracle")
    assert np.array_equal(new_hist, naive_hist)


def test_conv_weight_orientation_is_reverse_of_spec_kernel():
    # a single tap at the oldest position of the checkpoint weight reads x[t - (w-1)]
    x = np.arange(1.0, 7.0).reshape(1, 6, 1)
    w = np.array([[1.0, 0.0, 0.0]])
    out = nbssm.causal_conv1d(x, w)
    assert out[0, :, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    w = np.array([[0.0, 0.0, 1.0]])  # newest tap: the identity
    assert nbssm.causal_conv1d(x, w)[0, :, 0].tolist() == x[0, :, 0].tolist()
    w3 = np.zeros((1, 1, 3))
    w3[0, 0, 0] = 1.0  # checkpoint layout (channels, 1, width) is accepted
    assert nbssm.causal_conv1d(x, w3)[0, :, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def test_conv_silu_and_float32():
    x, w, bias, hist = conv_inputs(11, 1, 12, 20, 4)
    out = nbssm.causal_conv1d(x, w, bias, hist, activation="silu")
    ref, _ = naive_causal_conv1d(x, w, bias, hist, silu=True)
    assert max_rel_err(out, ref) <= tol("float64_vs_oracle")
    out32 = nbssm.causal_conv1d(x.astype(np.float32), w.astype(np.float32), bias.astype(np.float32),
                                hist.astype(np.float32), activation="silu")
    assert out32.dtype == np.float32 and max_rel_err(out32, ref) <= tol("float32_vs_float64")


def test_refinement_checks_all_proved():
    from nbssm.verify.refinement import refinement_checks

    results = refinement_checks(seed=0)
    assert len(results) >= 5
    for r in results:
        assert r.kind == "beyond"
        assert r.verdict == "proved", (r.name, r.detail)


def test_refinement_tolerance_matches_the_table():
    from nbssm.verify.refinement import FLOAT32_TOLERANCE

    assert FLOAT32_TOLERANCE == tol("float32_vs_float64")


def test_refinement_checks_refute_a_broken_kernel(monkeypatch):
    # negative control: a kernel off by one ulp in one output must be refuted, with a location
    from nbssm import ops
    from nbssm.verify.refinement import refinement_checks

    real = ops.selective_scan

    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        y.flat[-1] = np.nextafter(y.flat[-1], np.inf)
        return out

    monkeypatch.setattr(ops, "selective_scan", broken)
    results = {r.name: r for r in refinement_checks(seed=1)}
    r = results["selective_scan_sequential_refines_selective_recurrence_step"]
    assert r.verdict == "refuted" and "index" in r.detail
    assert results["causal_conv1d_refines_causal_conv_step_and_streaming_reference"].verdict == "proved"

