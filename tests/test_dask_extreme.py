"""The time-parallel scans of nbssm.dask against the single-machine chunked scans, on extreme
values: underflowed and overflowed transition products, zeros of both signs, subnormals,
NaN, infinities, states past 2**52 and near the largest double.

``combine="serial"`` must equal ``nbssm.ops`` with ``strategy="chunked"`` and the same chunk
boundaries bit for bit (NaN where it has NaN, the same signs of zeros), because the
distributed carry applies the kernels' one rule (``carry_ok``) to the same summaries. The
graphs run on dask's synchronous scheduler (the graph, not the cluster, decides the bits;
tests/test_dask.py runs the same graphs on a local cluster).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask", reason="nbssm.dask needs dask (pip install 'nbssm[dask]')")
pytest.importorskip("dask.array", reason="nbssm.dask needs dask.array (pip install 'nbssm[dask]')")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nbssm.dask as nd  # noqa: E402
from nbssm import ops  # noqa: E402
from nbssm.spec.algorithms import chunked_diagonal_scan, ieee_carry_ok  # noqa: E402

INF, NAN = float("inf"), float("nan")
#: values where the summary cannot stand for a re-run (or only just can)
EXTREME = [0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.2250738585072014e-308, 1e-200, -1e-200, 1e-160, 1e160, 1e200,
           -1e200, 1.7976931348623157e308, -1.7976931348623157e308, INF, -INF, NAN, 2.0 ** 52, 2.0 ** 53 + 2,
           -(2.0 ** 60), 1e300]
MODERATE = [1.0, -1.0, 0.5, 2.0, 0.999, 1.001, 3.0, -0.25, 1e-3, 1e3]

SETTINGS = settings(deadline=None, max_examples=60, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def values():
    """Floats mixing extreme values, moderate ones and any double."""
    return st.one_of(st.sampled_from(EXTREME), st.sampled_from(MODERATE),
                     st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True))


def _arrays(draw, shape, elements):
    n = int(np.prod(shape))
    return np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)


def same_bits(x, y) -> bool:
    """Equal values, NaN where the other has NaN, and the same sign on every other number
    (zeros included)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True):
        return False
    num = ~np.isnan(x)
    return bool(np.array_equal(np.signbit(x[num]), np.signbit(y[num])))


@st.composite
def linear_cases(draw):
    cl = draw(st.integers(1, 5))
    n_blocks = draw(st.integers(2, 5))
    length = draw(st.integers(cl * n_blocks, cl * n_blocks + 2 * cl + 3))
    batch = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 2))
    a = _arrays(draw, (batch, length, channels), values())
    b = _arrays(draw, (batch, length, channels), values())
    h0 = _arrays(draw, (batch, channels), values())
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return a, b, h0, cl, n_blocks, dtype


def _linear_both(a, b, h0, cl, n_blocks, batch_chunks=1):
    want = ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=cl, return_final_state=True)
    ch = nd.time_chunks(a.shape[1], n_blocks, cl)
    A, B = (da.from_array(x, chunks=(batch_chunks, ch, x.shape[2])) for x in (a, b))
    got = nd.linear_scan(A, B, initial_state=h0, strategy="chunked", chunk_length=cl, return_final_state=True)
    with np.errstate(all="ignore"):
        got = dask.compute(*got, scheduler="synchronous")
    return want, got


@SETTINGS
@given(linear_cases())
def test_linear_serial_combine_bitwise_chunked_extreme_values(case):
    a, b, h0, cl, n_blocks, dtype = case
    with np.errstate(all="ignore"):
        a, b, h0 = (x.astype(dtype) for x in (a, b, h0))
    want, got = _linear_both(a, b, h0, cl, n_blocks)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


def test_linear_extreme_cases_take_every_branch_of_the_rule():
    """Hand-made chains: an overflowed product on a zero state, an underflowed product on an
    infinite or huge state, NaN summaries: the distributed result is the chunked kernel's, and
    that is the spec's chunked scan with ``ieee_carry_ok`` (float64), bit for bit."""
    cl, T = 3, 24
    rows = [
        [1e200] * 6 + [1e-3] * 18,                       # P overflows, the state stays 0
        [1e-200] * 6 + [1.0] * 18,                       # P underflows
        [1.0, INF, 0.0] + [1.0] * 21,                    # inf * 0 inside a chunk: NaN summary
        [2.0] * 24,                                      # the state grows past 2**52 (b large)
    ]
    b_rows = [[0.0] * 9 + [1.0] * 15, [0.0] * 3 + [1e300] * 21, [1.0] * 24, [1e14] * 24]
    h0s = [0.0, INF, -0.0, 2.0 ** 60]
    for ar, br, h0 in zip(rows, b_rows, h0s):
        a = np.array(ar, dtype=np.float64).reshape(1, T, 1)
        b = np.array(br, dtype=np.float64).reshape(1, T, 1)
        h = np.array([[h0]])
        with np.errstate(all="ignore"):
            want, got = _linear_both(a, b, h, cl, 4)
            spec = chunked_diagonal_scan([h0], a[0].tolist(), b[0].tolist(), cl, carry_ok=ieee_carry_ok)
        assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])
        assert same_bits(want[0][0], np.array(spec, dtype=np.float64))


def test_linear_batch_and_time_chunks_together_extreme():
    rng = np.random.default_rng(5)
    a = rng.choice(np.array(EXTREME + MODERATE * 3), size=(4, 60, 3))
    b = rng.choice(np.array(EXTREME + MODERATE * 3), size=(4, 60, 3))
    h0 = rng.choice(np.array(EXTREME + MODERATE), size=(4, 3))
    with np.errstate(all="ignore"):
        want, got = _linear_both(a, b, h0, 4, 5, batch_chunks=2)
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


@st.composite
def selective_cases(draw):
    cl = draw(st.integers(1, 4))
    n_blocks = draw(st.integers(2, 4))
    length = draw(st.integers(cl * n_blocks, cl * n_blocks + cl + 2))
    channels = draw(st.integers(1, 3))
    nstate = draw(st.integers(1, 2))
    u = _arrays(draw, (1, length, channels), values())
    delta = _arrays(draw, (1, length, channels), values())
    A = _arrays(draw, (channels, nstate), st.one_of(st.sampled_from([-1.0, -0.5, -1e-3, -30.0, -1e300, 0.0, 2.0, 1e3]),
                                                    st.floats(-1e3, 1e3)))
    B = _arrays(draw, (1, length, nstate), values())
    C = _arrays(draw, (1, length, nstate), st.sampled_from(MODERATE))
    h0 = _arrays(draw, (1, channels, nstate), values())
    bias = draw(st.one_of(st.none(), st.just(_arrays(draw, (channels,), st.sampled_from(MODERATE + [1e300, -1e300])))))
    softplus = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return (u, delta, A, B, C), dict(delta_bias=bias, delta_softplus=softplus), h0, cl, n_blocks, dtype


@SETTINGS
@given(selective_cases())
def test_selective_serial_combine_bitwise_chunked_extreme_values(case):
    args, kw, h0, cl, n_blocks, dtype = case
    with np.errstate(all="ignore"):
        args = [x.astype(dtype) for x in args]
        h0 = h0.astype(dtype)
        if kw["delta_bias"] is not None:
            kw = dict(kw, delta_bias=kw["delta_bias"].astype(dtype))
        want = ops.selective_scan(*args, **kw, initial_state=h0, strategy="chunked", chunk_length=cl,
                                  return_final_state=True)
        ch = nd.time_chunks(args[0].shape[1], n_blocks, cl)
        dargs = [da.from_array(x, chunks=(1, ch, x.shape[2])) if x.ndim == 3 else x for x in args]
        got = nd.selective_scan(*dargs, **kw, initial_state=h0, strategy="chunked", chunk_length=cl,
                                return_final_state=True)
        got = dask.compute(*got, scheduler="synchronous")
    assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])
