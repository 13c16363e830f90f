"""Bad input, layouts, dtypes, edge sizes and the NaN policy of the kernels."""

from __future__ import annotations

import numpy as np
import pytest

import nbssm
from naive import naive_selective_scan
from ops_inputs import conv_inputs, linear_inputs, selective_inputs
from tolerances import max_rel_err, tol

SEQ = ("u", "delta", "z", "B", "C")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "name, bad, pattern",
    [
        ("delta", np.zeros((2, 7, 5)), r"delta: expected shape \(2, 7, 6\)"),
        ("A", np.zeros((5, 3)), r"A: expected shape \(6, state\)"),
        ("A", np.zeros(6), r"A: expected shape \(6, state\)"),
        ("B", np.zeros((2, 7, 4)), r"B: expected shape \(2, 7, 3\)"),
        ("C", np.zeros((2, 6, 3)), r"C: expected shape \(2, 7, 3\)"),
        ("D", np.zeros(5), r"D: expected shape \(6,\)"),
        ("z", np.zeros((1, 7, 6)), r"z: expected shape \(2, 7, 6\)"),
        ("delta_bias", np.zeros((6, 1)), r"delta_bias: expected shape \(6,\)"),
        ("initial_state", np.zeros((2, 6, 4)), r"initial_state: expected shape \(2, 6, 3\)"),
    ],
)
def test_selective_shape_errors_name_argument_and_expected_shape(name, bad, pattern):
    kw = selective_inputs(40, 2, 7, 6, 3)
    kw[name] = bad
    with pytest.raises(ValueError, match=pattern):
        nbssm.selective_scan(**kw)


def test_two_dimensional_input_needs_every_sequence_argument_2d():
    kw = selective_inputs(41, 1, 7, 6, 3)
    kw["u"] = kw["u"][0]
    with pytest.raises(ValueError, match=r"delta: expected 2 dimensions for a 2-D \(length, channels\) input"):
        nbssm.selective_scan(**kw)
    with pytest.raises(ValueError, match=r"u: expected shape \(batch, length, channels\) or \(length, channels\)"):
        nbssm.selective_scan(**dict(kw, u=kw["u"][0]))


def test_linear_and_conv_shape_errors():
    a, b, h0 = linear_inputs(42, 2, 5, 3)
    with pytest.raises(ValueError, match=r"b: expected shape \(2, 5, 3\)"):
        nbssm.linear_scan(a, b[:, :4])
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(2, 3\)"):
        nbssm.linear_scan(a, b, h0[:1])
    x, w, bias, hist = conv_inputs(43, 2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3, width\)"):
        nbssm.causal_conv1d(x, w[:2])
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(2, 3, 3\)"):
        nbssm.causal_conv1d(x, w, initial_state=hist[:, :2])
    with pytest.raises(ValueError, match=r"activation"):
        nbssm.causal_conv1d(x, w, activation="relu")


def test_bad_strategy_and_chunk_length():
    a, b, _ = linear_inputs(44, 1, 5, 2)
    with pytest.raises(ValueError, match="strategy"):
        nbssm.linear_scan(a, b, strategy="parallel")
    with pytest.raises(ValueError, match="chunk_length"):
        nbssm.linear_scan(a, b, strategy="chunked", chunk_length=0)
    with pytest.raises(TypeError, match="chunk_length"):
        nbssm.linear_scan(a, b, strategy="chunked", chunk_length=2.5)


@pytest.mark.parametrize("dtype", [np.float16, np.complex128, np.bool_, object])
def test_unsupported_dtypes_raise_type_error(dtype):
    kw = selective_inputs(45, 1, 4, 3, 2)
    kw["u"] = kw["u"].astype(dtype)
    with pytest.raises(TypeError, match="u: "):
        nbssm.selective_scan(**kw)
    with pytest.raises(TypeError, match="a: "):
        nbssm.linear_scan(np.ones((1, 2, 2), dtype=dtype), np.ones((1, 2, 2)))


def test_integer_input_is_converted_to_float64():
    a = np.ones((1, 4, 2), dtype=np.int32)
    b = np.arange(8, dtype=np.int64).reshape(1, 4, 2)
    out = nbssm.linear_scan(a, b)
    assert out.dtype == np.float64
    assert out[0, :, 1].tolist() == [1.0, 4.0, 9.0, 16.0]
    x = np.arange(6).reshape(1, 6, 1)
    assert nbssm.causal_conv1d(x, np.ones((1, 2), dtype=np.int8)).dtype == np.float64


def test_dtype_follows_sequence_inputs_and_parameters_are_converted():
    kw = selective_inputs(46, 1, 6, 5, 2, np.float32)
    kw["A"] = kw["A"].astype(np.float64)  # parameters follow u/delta
    assert nbssm.selective_scan(**kw).dtype == np.float32
    kw["delta"] = kw["delta"].astype(np.float64)  # any float64 sequence input -> float64
    assert nbssm.selective_scan(**kw).dtype == np.float64


# ----------------------------------------------------------------------------- layouts
def _variants(arr):
    """Fortran order, negative strides, a strided slice and a read-only copy of ``arr`` (same values)."""
    out = [np.asfortranarray(arr)]
    flipped = np.ascontiguousarray(arr[..., ::-1])[..., ::-1]
    out.append(flipped)
    big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
    big[..., ::2] = arr
    out.append(big[..., ::2])
    ro = arr.copy()
    ro.flags.writeable = False
    out.append(ro)
    return out


def test_layouts_give_identical_results_and_inputs_are_never_written():
    kw = selective_inputs(47, 2, 9, 18, 3, np.float32)
    want = nbssm.selective_scan(**kw, return_final_state=True)
    for v in range(4):
        kw2 = {k: (_variants(x)[v] if isinstance(x, np.ndarray) else x) for k, x in kw.items()}
        snapshot = {k: x.copy() for k, x in kw2.items() if isinstance(x, np.ndarray)}
        flags = {k: x.flags.writeable for k, x in kw2.items() if isinstance(x, np.ndarray)}
        got = nbssm.selective_scan(**kw2, return_final_state=True)
        for g, w in zip(got, want):
            assert g.tobytes() == w.tobytes()
        for k, x in snapshot.items():
            assert np.array_equal(kw2[k], x) and kw2[k].flags.writeable == flags[k]
    a, b, h0 = linear_inputs(48, 2, 9, 5)
    want = nbssm.linear_scan(a, b, h0)
    for v in range(4):
        assert nbssm.linear_scan(_variants(a)[v], _variants(b)[v], _variants(h0)[v]).tobytes() == want.tobytes()
    x, w, bias, hist = conv_inputs(49, 2, 9, 5, 3)
    want = nbssm.causal_conv1d(x, w, bias, hist)
    for v in range(4):
        got = nbssm.causal_conv1d(_variants(x)[v], _variants(w)[v], _variants(bias)[v], _variants(hist)[v])
        assert got.tobytes() == want.tobytes()


def test_one_specialisation_per_dtype_whatever_the_layout():
    from nbssm._kernels import conv
    from nbssm._kernels import selective_scan as scan

    kw = selective_inputs(50, 1, 5, 17, 2)
    nbssm.selective_scan(**kw)
    before = len(scan.selective_scan_kernel.signatures)
    for v in range(4):
        nbssm.selective_scan(**{k: (_variants(x)[v] if isinstance(x, np.ndarray) else x) for k, x in kw.items()})
    nbssm.selective_scan(u=kw["u"], delta=kw["delta"], A=kw["A"], B=kw["B"], C=kw["C"])
    assert len(scan.selective_scan_kernel.signatures) == before
    x, w, bias, hist = conv_inputs(51, 1, 5, 3, 2)
    nbssm.causal_conv1d(x, w)
    n = len(conv.causal_conv1d_kernel.signatures)
    nbssm.causal_conv1d(np.asfortranarray(x), w[:, ::-1], bias, hist)
    assert len(conv.causal_conv1d_kernel.signatures) == n


# ----------------------------------------------------------------------------- edge sizes
@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
def test_length_zero_and_one(strategy):
    kw = selective_inputs(52, 2, 0, 5, 3)
    y, h = nbssm.selective_scan(**kw, return_final_state=True, strategy=strategy)
    assert y.shape == (2, 0, 5) and np.array_equal(h, kw["initial_state"])
    kw = selective_inputs(53, 2, 1, 5, 3)
    y, h = nbssm.selective_scan(**kw, return_final_state=True, strategy=strategy)
    kw_naive = {k: v for k, v in kw.items() if k != "initial_state"}
    y_ref, h_ref = naive_selective_scan(**kw_naive, h0=kw["initial_state"])
    assert max_rel_err(y, y_ref) <= tol("float64_vs_oracle") and max_rel_err(h, h_ref) <= tol("float64_vs_oracle")
    a, b, h0 = linear_inputs(54, 2, 0, 3)
    out, hT = nbssm.linear_scan(a, b, h0, return_final_state=True, strategy=strategy)
    assert out.shape == (2, 0, 3) and np.array_equal(hT, h0)
    x, w, bias, hist = conv_inputs(55, 2, 0, 3, 4)
    out, new_hist = nbssm.causal_conv1d(x, w, bias, hist, return_final_state=True)
    assert out.shape == (2, 0, 3) and np.array_equal(new_hist, hist)


def test_zero_batch_channels_and_state():
    kw = selective_inputs(56, 0, 4, 5, 3)
    assert nbssm.selective_scan(**kw).shape == (0, 4, 5)
    kw = selective_inputs(57, 2, 4, 0, 3)
    y, h = nbssm.selective_scan(**kw, return_final_state=True)
    assert y.shape == (2, 4, 0) and h.shape == (2, 0, 3)
    kw = selective_inputs(58, 2, 4, 5, 0)  # no state: y = (D * u) * silu(z)
    y = nbssm.selective_scan(**kw)
    z = kw["z"]
    assert max_rel_err(y, (kw["D"] * kw["u"]) * (z * (1.0 / (1.0 + np.exp(-z))))) <= tol("float64_vs_oracle")


# ----------------------------------------------------------------------------- NaN policy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
@pytest.mark.parametrize("where", ["u", "delta"])
def test_nan_propagates_only_to_its_channel_from_its_time_on(dtype, strategy, where):
    kw = selective_inputs(59, 2, 30, 20, 3, dtype)
    clean = nbssm.selective_scan(**kw, strategy=strategy, chunk_length=8)
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    bi, t, d = 1, 11, 17
    bad[where][bi, t, d] = np.nan
    y = nbssm.selective_scan(**bad, strategy=strategy, chunk_length=8)
    assert np.all(np.isnan(y[bi, t:, d]))
    mask = np.ones(y.shape, dtype=bool)
    mask[bi, t:, d] = False
    assert y[mask].tobytes() == clean[mask].tobytes()


@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
def test_inf_stays_in_its_channel(strategy):
    kw = selective_inputs(60, 1, 20, 18, 3, np.float32)
    clean = nbssm.selective_scan(**kw, strategy=strategy, chunk_length=4)
    bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    bad["u"][0, 5, 2] = np.inf
    y = nbssm.selective_scan(**bad, strategy=strategy, chunk_length=4)
    assert not np.all(np.isfinite(y[0, 5:, 2]))  # inf (or NaN where inf - inf occurs) from t on
    mask = np.ones(y.shape, dtype=bool)
    mask[0, 5:, 2] = False
    assert y[mask].tobytes() == clean[mask].tobytes()


def test_nan_in_linear_scan_and_conv():
    a, b, h0 = linear_inputs(61, 1, 40, 3, np.float32)
    clean = nbssm.linear_scan(a, b, h0, strategy="chunked", chunk_length=8)
    b2 = b.copy()
    b2[0, 9, 1] = np.nan
    y = nbssm.linear_scan(a, b2, h0, strategy="chunked", chunk_length=8)
    assert np.all(np.isnan(y[0, 9:, 1]))
    mask = np.ones(y.shape, dtype=bool)
    mask[0, 9:, 1] = False
    assert y[mask].tobytes() == clean[mask].tobytes()
    x, w, bias, hist = conv_inputs(62, 1, 12, 3, 4)
    clean = nbssm.causal_conv1d(x, w, bias, hist)
    x2 = x.copy()
    x2[0, 5, 0] = np.nan
    y = nbssm.causal_conv1d(x2, w, bias, hist)
    assert np.all(np.isnan(y[0, 5:9, 0]))
    mask = np.ones(y.shape, dtype=bool)
    mask[0, 5:9, 0] = False
    assert y[mask].tobytes() == clean[mask].tobytes()
