"""Property tests of the kernels over shapes, strategies, chunk lengths and dtypes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import nbssm
from naive import naive_causal_conv1d, naive_linear_scan, naive_selective_scan
from nbssm.spec import algorithms
from ops_inputs import conv_inputs, linear_inputs, selective_inputs
from tolerances import max_rel_err, tol

dtypes = st.sampled_from([np.float32, np.float64])
strategies = st.sampled_from(["auto", "sequential", "chunked"])


def _tol(dtype):
    return tol("float64_vs_oracle") if dtype == np.float64 else tol("float32_vs_float64")


@settings(deadline=None, max_examples=25)
@given(batch=st.integers(0, 3), length=st.integers(0, 40), channels=st.integers(0, 35), nstate=st.integers(0, 5),
       dtype=dtypes, strategy=strategies, chunk_length=st.integers(1, 12), seed=st.integers(0, 2**16),
       extras=st.booleans())
def test_selective_scan_matches_naive_oracle(batch, length, channels, nstate, dtype, strategy, chunk_length,
                                             seed, extras):
    kw = selective_inputs(seed, batch, length, channels, nstate, dtype, extras=extras)
    y, h = nbssm.selective_scan(**kw, return_final_state=True, strategy=strategy, chunk_length=chunk_length)
    assert y.dtype == dtype and y.shape == (batch, length, channels) and h.shape == (batch, channels, nstate)
    naive_kw = {k: v for k, v in kw.items() if k != "initial_state"}
    y_ref, h_ref = naive_selective_scan(**naive_kw, h0=kw.get("initial_state"))
    # chunked float64 is exact only up to the re-association of the carry
    bound = max(_tol(dtype), tol("float64_chunked_vs_sequential"))
    assert max_rel_err(y, y_ref) <= bound
    assert max_rel_err(h, h_ref) <= bound


@settings(deadline=None, max_examples=25)
@given(batch=st.integers(0, 3), length=st.integers(0, 60), channels=st.integers(0, 70), dtype=dtypes,
       strategy=strategies, chunk_length=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_linear_scan_matches_naive_and_chunked_reference(batch, length, channels, dtype, strategy, chunk_length,
                                                         seed):
    a, b, h0 = linear_inputs(seed, batch, length, channels, dtype)
    out, hT = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy=strategy, chunk_length=chunk_length)
    ref, ref_final = naive_linear_scan(a, b, h0)
    bound = max(_tol(dtype), tol("float64_chunked_vs_sequential"))
    assert max_rel_err(out, ref) <= bound and max_rel_err(hT, ref_final) <= bound
    if dtype == np.float64 and strategy == "chunked" and batch > 0 and channels > 0:
        got = algorithms.chunked_diagonal_scan(h0[0].tolist(), a[0].tolist(), b[0].tolist(), chunk_length)
        assert np.array_equal(out[0], np.array(got).reshape(length, channels))


@settings(deadline=None, max_examples=20)
@given(batch=st.integers(0, 2), length=st.integers(0, 20), channels=st.integers(0, 70), width=st.integers(0, 5),
       dtype=dtypes, seed=st.integers(0, 2**16), cut=st.integers(0, 20), silu=st.booleans())
def test_causal_conv_matches_naive_and_pieces_equal_whole(batch, length, channels, width, dtype, seed, cut, silu):
    x, w, bias, hist = conv_inputs(seed, batch, length, channels, width, dtype)
    act = "silu" if silu else None
    out, new_hist = nbssm.causal_conv1d(x, w, bias, hist, return_final_state=True, activation=act)
    ref, ref_hist = naive_causal_conv1d(x, w, bias, hist, silu=silu)
    assert max_rel_err(out, ref) <= _tol(dtype)
    assert np.array_equal(new_hist, ref_hist.astype(dtype))
    cut = min(cut, length)
    o1, h1 = nbssm.causal_conv1d(x[:, :cut], w, bias, hist, return_final_state=True, activation=act)
    o2, h2 = nbssm.causal_conv1d(x[:, cut:], w, bias, h1, return_final_state=True, activation=act)
    assert np.concatenate([o1, o2], axis=1).tobytes() == out.tobytes() and h2.tobytes() == new_hist.tobytes()


@settings(deadline=None, max_examples=20)
@given(length=st.integers(1, 50), cut=st.integers(1, 50), channels=st.integers(1, 20), chunk_length=st.integers(1, 9),
       dtype=dtypes, strategy=strategies, seed=st.integers(0, 2**16))
def test_prefix_property(length, cut, channels, chunk_length, dtype, strategy, seed):
    cut = min(cut, length)
    kw = selective_inputs(seed, 1, length, channels, 3, dtype)
    full = nbssm.selective_scan(**kw, strategy=strategy, chunk_length=chunk_length)
    part = {k: (v[:, :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
    y = nbssm.selective_scan(**part, strategy=strategy, chunk_length=chunk_length)
    assert y.tobytes() == np.ascontiguousarray(full[:, :cut]).tobytes()
