"""Determinism guarantees of the kernels: threads, prefixes, pieces, strategy choice."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nbssm
from nbssm import ops
from ops_inputs import conv_inputs, linear_inputs, selective_inputs


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


def _as32(kw):
    return {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_on_1_and_2_threads(dtype, restore_threads):
    kw = selective_inputs(20, 3, 70, 40, 4, dtype)
    a, b, h0 = linear_inputs(21, 1, 300, 3, dtype)
    x, w, bias, hist = conv_inputs(22, 3, 30, 40, 4, dtype)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        results.append([
            *nbssm.selective_scan(**kw, strategy="sequential", return_final_state=True),
            *nbssm.selective_scan(**kw, strategy="chunked", chunk_length=16, return_final_state=True),
            *nbssm.linear_scan(a, b, h0, strategy="chunked", chunk_length=7, return_final_state=True),
            *nbssm.linear_scan(a, b, h0, strategy="sequential", return_final_state=True),
            nbssm.causal_conv1d(x, w, bias, hist),
        ])
    for r1, r2 in zip(*results):
        assert r1.tobytes() == r2.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ["auto", "sequential", "chunked"])
def test_prefix_outputs_unchanged_when_tokens_are_appended(dtype, strategy):
    kw = selective_inputs(23, 2, 50, 18, 3, dtype)
    full = nbssm.selective_scan(**kw, strategy=strategy, chunk_length=8)
    for cut in (1, 7, 8, 9, 33):
        part = {k: (v[:, :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        y = nbssm.selective_scan(**part, strategy=strategy, chunk_length=8)
        assert y.tobytes() == np.ascontiguousarray(full[:, :cut]).tobytes()
    a, b, h0 = linear_inputs(24, 1, 50, 2, dtype)
    full = nbssm.linear_scan(a, b, h0, strategy=strategy, chunk_length=8)
    for cut in (1, 8, 17, 49):
        y = nbssm.linear_scan(a[:, :cut], b[:, :cut], h0, strategy=strategy, chunk_length=8)
        assert y.tobytes() == np.ascontiguousarray(full[:, :cut]).tobytes()


def test_prefix_stable_with_default_chunk_length_across_chunk_boundary():
    # one channel: "auto" is chunked with the default chunk length; cross its boundary
    cl = ops.default_chunk_length("linear", 1, 1)
    a, b, h0 = linear_inputs(25, 1, 2 * cl + 5, 1, np.float32)
    full = nbssm.linear_scan(a, b, h0)
    for cut in (cl - 1, cl, cl + 1, 2 * cl + 1):
        assert nbssm.linear_scan(a[:, :cut], b[:, :cut], h0).tobytes() == np.ascontiguousarray(full[:, :cut]).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_pieces_with_carried_state_equal_whole(dtype):
    kw = selective_inputs(26, 2, 41, 19, 3, dtype)
    y, h = nbssm.selective_scan(**kw, strategy="sequential", return_final_state=True)
    state = kw["initial_state"]
    pieces = []
    for lo, hi in [(0, 1), (1, 10), (10, 10), (10, 41)]:
        part = {k: (v[:, lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        part["initial_state"] = state
        yp, state = nbssm.selective_scan(**part, strategy="sequential", return_final_state=True)
        pieces.append(yp)
    assert np.concatenate(pieces, axis=1).tobytes() == y.tobytes()
    assert state.tobytes() == h.tobytes()
    a, b, h0 = linear_inputs(27, 2, 30, 5, dtype)
    out, hT = nbssm.linear_scan(a, b, h0, strategy="sequential", return_final_state=True)
    o1, s1 = nbssm.linear_scan(a[:, :13], b[:, :13], h0, strategy="sequential", return_final_state=True)
    o2, s2 = nbssm.linear_scan(a[:, 13:], b[:, 13:], s1, strategy="sequential", return_final_state=True)
    assert np.concatenate([o1, o2], axis=1).tobytes() == out.tobytes() and s2.tobytes() == hT.tobytes()


@pytest.mark.parametrize("width", [1, 3, 4])
def test_conv_pieces_with_carried_history_equal_whole(width):
    x, w, bias, _ = conv_inputs(28, 2, 23, 9, width)
    whole, hist_whole = nbssm.causal_conv1d(x, w, bias, return_final_state=True)
    hist = None
    outs = []
    for lo, hi in [(0, 1), (1, 2), (2, 2), (2, 15), (15, 23)]:
        o, hist = nbssm.causal_conv1d(x[:, lo:hi], w, bias, initial_state=hist, return_final_state=True)
        outs.append(o)
    assert np.concatenate(outs, axis=1).tobytes() == whole.tobytes()
    assert hist.tobytes() == hist_whole.tobytes()


def test_auto_strategy_and_chunk_length_depend_only_on_batch_times_channels():
    for kind in ("linear", "selective"):
        for bc in (1, 2, 15, 16, 31, 32, 33, 64, 4096):
            choices = {(ops.default_strategy(kind, b, bc // b), ops.default_chunk_length(kind, b, bc // b))
                       for b in (1, 2, 4) if bc % b == 0}
            assert len(choices) == 1
    assert ops.default_strategy("linear", 1, 1) == "chunked"
    assert ops.default_strategy("selective", 1, 1536) == "sequential"


def test_auto_equals_the_strategy_it_names():
    kw = selective_inputs(29, 1, 40, 4, 2)  # batch*channels = 4: chunked
    assert ops.default_strategy("selective", 1, 4) == "chunked"
    cl = ops.default_chunk_length("selective", 1, 4)
    assert nbssm.selective_scan(**kw).tobytes() == nbssm.selective_scan(
        **kw, strategy="chunked", chunk_length=cl).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_width_and_grouping_do_not_change_results(dtype):
    # the kernel's channel-block width and block grouping are chosen from the thread count for speed only
    from nbssm._kernels import selective_scan as scan
    from nbssm._validate import readonly

    kw = selective_inputs(30, 2, 21, 100, 3, dtype)
    args = [readonly(np.ascontiguousarray(kw[k])) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    h0 = readonly(np.ascontiguousarray(kw["initial_state"]))
    outs = []
    for width in scan.SELECTIVE_WIDTHS:
        for group in (1, 3):
            for cl in (21, 8):
                y = np.empty((2, 21, 100), dtype=dtype)
                hT = np.empty((2, 100, 3), dtype=dtype)
                scan.selective_scan_kernel(*args, True, True, True, True, h0, y, hT, cl, width, group)
                outs.append((cl, y.tobytes(), hT.tobytes()))
    by_cl = {}
    for cl, y, h in outs:
        by_cl.setdefault(cl, set()).add((y, h))
    assert all(len(v) == 1 for v in by_cl.values())
