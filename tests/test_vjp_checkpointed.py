"""The checkpointing forward (``ops.selective_scan_checkpointed``) and the VJP from its
checkpoints: checkpoints against a numpy recurrence at chunk boundaries, y / final state
bitwise the sequential forward's, gradients bitwise those computed without checkpoints,
thread-count invariance, bad checkpoints refused."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import nbssm
import nbssm.ops as O
from nbssm import reference as R


def _inputs(shape, seed=0, dtype=np.float64, init=True, extras=True):
    kw = R.random_inputs("selective", shape, dtype=dtype, seed=seed, extras=extras, initial_state=init)
    b, l, d, n = shape
    rng = np.random.default_rng(seed + 7)
    gy = rng.standard_normal((b, l, d)).astype(dtype)
    gT = rng.standard_normal((b, d, n)).astype(dtype)
    return kw, gy, gT


def _states_numpy(kw):
    """Every state h_t (b, l + 1, d, n) by a plain numpy recurrence (float64)."""
    u = np.asarray(kw["u"], np.float64)
    dl = np.asarray(kw["delta"], np.float64)
    if kw.get("delta_bias") is not None:
        dl = dl + np.asarray(kw["delta_bias"], np.float64)
    if kw.get("delta_softplus"):
        dl = np.logaddexp(0.0, dl)
    A = np.asarray(kw["A"], np.float64)
    B = np.asarray(kw["B"], np.float64)
    b, l, d = u.shape
    n = A.shape[1]
    h0 = kw.get("initial_state")
    h = np.zeros((b, d, n)) if h0 is None else np.asarray(h0, np.float64).copy()
    out = np.empty((b, l + 1, d, n))
    out[:, 0] = h
    for t in range(l):
        h = np.exp(dl[:, t, :, None] * A) * h + (dl[:, t, :, None] * B[:, t, None, :]) * u[:, t, :, None]
        out[:, t + 1] = h
    return out


@pytest.mark.parametrize("shape,cl", [((2, 37, 45, 5), 16), ((1, 64, 96, 16), 16), ((3, 50, 33, 4), 7),
                                      ((1, 16, 32, 3), 16), ((2, 21, 7, 40), 16), ((1, 5, 70, 2), 3),
                                      ((1, 20, 33, 70), 16)])  # 70 states: two slabs of the forward
def test_checkpoints_are_the_states_at_chunk_boundaries(shape, cl):
    kw, _, _ = _inputs(shape, seed=sum(shape))
    y, hT, ck = O.selective_scan_checkpointed(checkpoint_length=cl, **kw)
    H = _states_numpy(kw)
    c = min(cl, shape[1], 16384 // (32 * shape[3]))  # the backward's cap: a chunk's states fit its stack scratch
    nchunks = -(-shape[1] // c)
    assert ck.shape == (shape[0], nchunks, shape[3], shape[2]) and ck.dtype == np.float64  # state-major
    np.testing.assert_allclose(ck, H[:, 0:nchunks * c:c].transpose(0, 1, 3, 2), rtol=1e-12, atol=1e-12)
    assert np.array_equal(ck[:, 0], kw["initial_state"].transpose(0, 2, 1))
    y0, hT0 = O.selective_scan(strategy="sequential", return_final_state=True, **kw)
    assert np.array_equal(y, y0) and np.array_equal(hT, hT0)  # bitwise the sequential forward
    y1 = O.selective_scan(**kw)  # "auto" is sequential here (batch * channels >= 16)
    assert np.array_equal(y, y1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 37, 45, 5), (1, 48, 96, 16), (1, 33, 20, 3), (2, 21, 70, 40)])
@pytest.mark.parametrize("extras", [True, False])
def test_vjp_with_checkpoints_bitwise_equals_without(shape, dtype, extras):
    kw, gy, gT = _inputs(shape, seed=3, dtype=dtype, extras=extras)
    if not extras:
        kw["delta"] = np.abs(kw["delta"])  # no softplus: keep the steps positive (decaying states)
    _, _, ck = O.selective_scan_checkpointed(**kw)
    g0 = O.selective_scan_vjp(gy, grad_final_state=gT, **kw)
    g1 = O.selective_scan_vjp(gy, grad_final_state=gT, checkpoints=ck, **kw)
    for name, a in g0._asdict().items():
        b = getattr(g1, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_vjp_with_checkpoints_other_chunk_lengths_and_2d():
    kw, gy, gT = _inputs((1, 45, 40, 6), seed=5)
    g0 = O.selective_scan_vjp(gy, grad_final_state=gT, **kw)
    for cl in (1, 4, 16, 44, 45, 100):  # lengths not multiples of the chunk, one chunk, more than the length
        _, _, ck = O.selective_scan_checkpointed(checkpoint_length=cl, **kw)
        g1 = O.selective_scan_vjp(gy, grad_final_state=gT, chunk_length=cl, checkpoints=ck, **kw)
        for name, a in g0._asdict().items():
            assert np.array_equal(a, getattr(g1, name)), (cl, name)
    k2 = {k: (v[0] if k in ("u", "delta", "B", "C", "z", "initial_state") else v) for k, v in kw.items()}
    y, hT, ck = O.selective_scan_checkpointed(**k2)
    nchunks = -(-45 // O.VJP_CHUNK_LENGTH)  # 6 states: the default chunk is under the scratch cap
    assert y.shape == (45, 40) and hT.shape == (40, 6) and ck.shape == (nchunks, 6, 40)
    g2 = O.selective_scan_vjp(gy[0], grad_final_state=gT[0], checkpoints=ck, **k2)
    assert np.array_equal(g2.u, g0.u[0]) and np.array_equal(g2.A, g0.A)


def test_length_zero():
    kw, gy, gT = _inputs((2, 0, 33, 4), seed=1)
    y, hT, ck = O.selective_scan_checkpointed(**kw)
    assert y.shape == (2, 0, 33) and ck.shape == (2, 0, 4, 33) and np.array_equal(hT, kw["initial_state"])
    g = O.selective_scan_vjp(gy, grad_final_state=gT, checkpoints=ck, **kw)
    assert np.array_equal(g.initial_state, gT)


def test_checkpointed_bitwise_independent_of_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    kw, gy, gT = _inputs((3, 70, 100, 8), seed=11, dtype=np.float32)
    res = []
    for t in (1, 2):
        with nbssm.threads(t):
            y, hT, ck = O.selective_scan_checkpointed(**kw)
            g = O.selective_scan_vjp(gy, grad_final_state=gT, checkpoints=ck, **kw)
            res.append((y, hT, ck, g))
    for a, b in zip(res[0][:3], res[1][:3]):
        assert np.array_equal(a, b)
    for name, a in res[0][3]._asdict().items():
        assert np.array_equal(a, getattr(res[1][3], name)), name


def test_bad_checkpoints_rejected():
    kw, gy, gT = _inputs((2, 40, 33, 4), seed=2)
    _, _, ck = O.selective_scan_checkpointed(**kw)
    with pytest.raises(ValueError, match="checkpoints: expected shape"):
        O.selective_scan_vjp(gy, checkpoints=ck[:, :-1], **kw)
    with pytest.raises(ValueError, match="checkpoints: expected shape"):
        O.selective_scan_vjp(gy, checkpoints=ck, chunk_length=8, **kw)  # other chunk length
    with pytest.raises(TypeError, match="checkpoints: expected dtype float64"):
        O.selective_scan_vjp(gy, checkpoints=ck.astype(np.float32), **kw)
    bad = ck.copy()
    bad[1, -1, 3, 0] = np.nan  # the last checkpoint
    with pytest.raises(ValueError, match="checkpoints: expected finite"):
        O.selective_scan_vjp(gy, checkpoints=bad, **kw)
    bad[1, -1, 3, 0] = np.inf
    with pytest.raises(ValueError, match="checkpoints: expected finite"):
        O.selective_scan_vjp(gy, checkpoints=bad, **kw)
    with pytest.raises(ValueError, match="strategy"):
        O.selective_scan_checkpointed(strategy="chunked", **kw)
    with pytest.raises(ValueError, match="chunk_length"):
        O.selective_scan_checkpointed(chunk_length=64, **kw)


def test_inputs_not_modified():
    kw, gy, gT = _inputs((1, 30, 40, 4), seed=4)
    _, _, ck = O.selective_scan_checkpointed(**kw)
    before = {k: np.array(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    ck0, gy0 = ck.copy(), gy.copy()
    O.selective_scan_vjp(gy, grad_final_state=gT, checkpoints=ck, **kw)
    assert np.array_equal(ck, ck0) and np.array_equal(gy, gy0)
    for k, v in before.items():
        assert np.array_equal(v, kw[k]), k


def test_exported():
    assert nbssm.selective_scan_checkpointed is O.selective_scan_checkpointed
