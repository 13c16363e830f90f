"""The ops against their numpy references (``nbssm.reference``): outputs and final states, 2-D input, ``out=``.

float64 is compared with the ``float64_vs_oracle`` row (the references use numpy's exp/log),
float32 kernels against the float64 reference with ``float32_vs_float64``. The references
themselves are checked against the independent loops of ``tests/naive.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import nbssm
from naive import naive_causal_conv1d, naive_linear_scan, naive_selective_scan
from nbssm.reference import (
    causal_conv1d_ref,
    linear_scan_ref,
    random_inputs,
    selective_scan_ref,
)
from tolerances import max_rel_err, tol

OPS = {
    "linear": (nbssm.linear_scan, linear_scan_ref, (3, 150, 5)),
    "selective": (nbssm.selective_scan, selective_scan_ref, (2, 150, 40, 4)),
    "conv": (nbssm.causal_conv1d, causal_conv1d_ref, (2, 150, 70, 4)),
}


def _f64(kw):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def _close(got, want, row):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert max_rel_err(g, w) <= tol(row), (row, max_rel_err(g, w))


@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("strategy", ["sequential", "chunked"])
def test_float64_ops_match_reference_with_final_state(kind, strategy):
    op, ref, shape = OPS[kind]
    kw = random_inputs(kind, shape, np.float64, seed=1)
    extra = {} if kind == "conv" else {"strategy": strategy, "chunk_length": 37}
    got = op(**kw, **extra, return_final_state=True)
    want = ref(**kw, **extra, return_final_state=True)
    assert all(g.dtype == np.float64 for g in got) and all(w.dtype == np.float64 for w in want)
    _close(got, want, "float64_vs_oracle" if strategy == "sequential" else "float64_chunked_vs_sequential")


@pytest.mark.parametrize("kind", sorted(OPS))
def test_float32_ops_match_float64_reference(kind):
    op, ref, shape = OPS[kind]
    kw = random_inputs(kind, shape, np.float32, seed=2)
    got = op(**kw, return_final_state=True)
    assert all(g.dtype == np.float32 for g in got)
    assert all(w.dtype == np.float32 for w in ref(**kw, return_final_state=True))
    row = "float32_linear_vs_float64" if kind == "linear" else "float32_vs_float64"
    _close(got, ref(**_f64(kw), return_final_state=True), row)


def test_references_match_the_independent_naive_loops():
    kw = random_inputs("selective", (2, 30, 5, 3), np.float64, seed=3)
    y, h = selective_scan_ref(**kw, return_final_state=True)
    ny, nh = naive_selective_scan(**{k: v for k, v in kw.items() if k != "initial_state"}, h0=kw["initial_state"])
    assert max_rel_err(y, ny) <= 1e-13 and max_rel_err(h, nh) <= 1e-13
    kw = random_inputs("linear", (2, 30, 5), np.float64, seed=4)
    out, hT = linear_scan_ref(**kw, return_final_state=True)
    nout, nhT = naive_linear_scan(kw["a"], kw["b"], kw["initial_state"])
    assert np.array_equal(out, nout) and np.array_equal(hT, nhT)
    kw = random_inputs("conv", (2, 30, 5, 4), np.float64, seed=5)
    for act in (None, "silu"):
        out, hist = causal_conv1d_ref(**kw, activation=act, return_final_state=True)
        nout, nhist = naive_causal_conv1d(kw["x"], kw["weight"], kw["bias"], kw["initial_state"], silu=act == "silu")
        assert max_rel_err(out, nout) <= 1e-14 and np.array_equal(hist, nhist)


def _unbatched(kind, kw):
    """The same call for one sequence given 2-D (and its states unbatched)."""
    one = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray) and k in ("a", "b", "u", "delta", "z", "B", "C", "x", "initial_state"):
            one[k] = v[0]
        else:
            one[k] = v
    return one


@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("impl", [0, 1])
def test_two_dimensional_input_is_one_sequence(kind, impl):
    fn = OPS[kind][impl]
    shape = (1,) + OPS[kind][2][1:]
    kw = random_inputs(kind, shape, np.float64, seed=6)
    y3, s3 = fn(**kw, return_final_state=True)
    y2, s2 = fn(**_unbatched(kind, kw), return_final_state=True)
    assert y2.shape == y3.shape[1:] and s2.shape == s3.shape[1:]
    assert y2.tobytes() == y3[0].tobytes() and s2.tobytes() == s3[0].tobytes()
    assert fn(**_unbatched(kind, kw)).shape == y2.shape


@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("impl", [0, 1])
@pytest.mark.parametrize("two_d", [False, True])
def test_out_is_written_and_returned(kind, impl, two_d):
    fn = OPS[kind][impl]
    kw = random_inputs(kind, OPS[kind][2], np.float32, seed=7)
    if two_d:
        kw = _unbatched(kind, kw)
    want, want_state = fn(**kw, return_final_state=True)
    out = np.full(want.shape, np.nan, np.float32)
    got, state = fn(**kw, return_final_state=True, out=out)
    assert got is out and out.tobytes() == want.tobytes() and state.tobytes() == want_state.tobytes()


@pytest.mark.parametrize("impl", [0, 1])
def test_bad_out_raises_naming_out(impl):
    fn = OPS["selective"][impl]
    kw = random_inputs("selective", (1, 8, 6, 2), np.float32, seed=8)
    shape = (1, 8, 6)
    ro = np.zeros(shape, np.float32)
    ro.flags.writeable = False
    for bad, exc, pattern in [
        ([[0.0]], TypeError, "out: expected a numpy.ndarray, got list"),
        (np.zeros(shape, np.float64), TypeError, "out: expected dtype float32"),
        (np.zeros((1, 8, 5), np.float32), ValueError, r"out: expected shape \(1, 8, 6\)"),
        (np.zeros((1, 8, 12), np.float32)[..., ::2], ValueError, "out: expected a C-contiguous"),
        (ro, ValueError, "out: expected a writable array"),
        (kw["u"], ValueError, "out: expected an array sharing no memory with the inputs, got one overlapping u"),
    ]:
        with pytest.raises(exc, match=pattern):
            fn(**kw, out=bad)


def test_conv_history_names_are_deprecated_aliases():
    kw = random_inputs("conv", (2, 9, 3, 4), np.float64, seed=9)
    want = nbssm.causal_conv1d(**kw, return_final_state=True)
    x, w, bias, hist = kw["x"], kw["weight"], kw["bias"], kw["initial_state"]
    with pytest.warns(DeprecationWarning, match="history= is deprecated; use initial_state="), \
            pytest.warns(DeprecationWarning, match="return_history= is deprecated; use return_final_state="):
        got = nbssm.causal_conv1d(x, w, bias, history=hist, return_history=True)
    assert all(g.tobytes() == v.tobytes() for g, v in zip(got, want))
    with pytest.raises(TypeError, match="history"), pytest.warns(DeprecationWarning):
        nbssm.causal_conv1d(x, w, bias, initial_state=hist, history=hist)


def test_conv_accepts_checkpoint_weight_shape():
    kw = random_inputs("conv", (1, 9, 3, 4), np.float64, seed=10)
    want = nbssm.causal_conv1d(**kw)
    got = nbssm.causal_conv1d(**dict(kw, weight=kw["weight"][:, None, :]))
    assert got.tobytes() == want.tobytes()
