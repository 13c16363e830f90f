"""nbssm.dask on a local dask.distributed cluster of 2 worker processes (1 thread each).

Every distributed result is compared with the single-machine function it must equal,
bitwise (batch chunks; time chunks with combine="serial" against strategy="chunked" with
the same chunk boundaries), or within the stated tolerance (combine="tree").
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

import numpy as np
import pytest

dask = pytest.importorskip("dask", reason="nbssm.dask needs dask (pip install 'nbssm[dask]')")
pytest.importorskip("dask.array", reason="nbssm.dask needs dask.array (pip install 'nbssm[dask]')")
distributed = pytest.importorskip("distributed", reason="nbssm.dask needs dask.distributed (pip install 'nbssm[dask]')")

import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402

import nbssm.dask as nd  # noqa: E402
from nbssm import ops  # noqa: E402
from nbssm.dask.lm import log_likelihood  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from tolerances import max_rel_err, tol  # noqa: E402

DIMS = dict(d_model=16, n_layer=2, vocab_size=40, d_state=4)
SOURCE = nd.ModelSource.random(seed=3, dtype="float32", **DIMS)


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    cluster = nd.local_cluster(n_workers=2, threads_per_worker=1, processes=True, silence_logs=40)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _rng(seed=0):
    return np.random.default_rng(seed)


def _linear_inputs(batch, length, channels, seed=0, dtype=np.float64):
    rng = _rng(seed)
    a = rng.uniform(0.9, 1.0, (batch, length, channels)).astype(dtype)
    b = rng.standard_normal((batch, length, channels)).astype(dtype)
    h0 = rng.standard_normal((batch, channels)).astype(dtype)
    return a, b, h0


def _selective_inputs(batch, length, channels, nstate, seed=1, dtype=np.float64):
    rng = _rng(seed)
    u, dl, z = (rng.standard_normal((batch, length, channels)).astype(dtype) for _ in range(3))
    A = (-np.exp(rng.standard_normal((channels, nstate)))).astype(dtype)
    Bm, Cm = (rng.standard_normal((batch, length, nstate)).astype(dtype) for _ in range(2))
    kw = dict(D=rng.standard_normal(channels).astype(dtype), z=z, delta_bias=rng.standard_normal(channels).astype(dtype),
              delta_softplus=True)
    h0 = rng.standard_normal((batch, channels, nstate)).astype(dtype)
    return (u, dl, A, Bm, Cm), kw, h0


def _persist(client):
    """``client.persist`` of copies under new keys: an array whose keys an earlier graph of the
    same inputs used can lose its blocks to that graph's late release messages (dask reuses
    keys)."""
    def persist(xs):
        one = not isinstance(xs, (list, tuple))
        fresh = [x.map_blocks(np.copy, name=f"persisted-{uuid.uuid4().hex}", dtype=x.dtype) for x in ([xs] if one else xs)]
        out = client.persist(fresh)
        distributed.wait(out)
        return out[0] if one else out
    return persist


# ----------------------------------------------------------------------------- batch chunks
def test_batch_chunks_bitwise(client):
    """Batch (and channel) chunks: bitwise the single-machine ops, with "auto" resolved
    from the whole array (batch 40 x 1 channel is "sequential"; a block of 8 would be "chunked")."""
    a, b, h0 = _linear_inputs(40, 300, 1)
    want = ops.linear_scan(a, b, initial_state=h0)
    got = nd.linear_scan(da.from_array(a, chunks=(8, 300, 1)), da.from_array(b, chunks=(8, 300, 1)),
                         initial_state=h0).compute()
    assert np.array_equal(got, want)
    a, b, h0 = _linear_inputs(6, 200, 5)
    want = ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=7)
    got = nd.linear_scan(da.from_array(a, chunks=(4, 200, 2)), da.from_array(b, chunks=(3, 200, 3)),
                         initial_state=h0, strategy="chunked", chunk_length=7).compute()
    assert np.array_equal(got, want)
    args, kw, h0 = _selective_inputs(5, 120, 12, 3)
    want_y, want_h = ops.selective_scan(*args, **kw, initial_state=h0, return_final_state=True)
    dargs = [da.from_array(x, chunks=(2,) + x.shape[1:]) if x.ndim == 3 else x for x in args]
    y, h = nd.selective_scan(*dargs, **kw, initial_state=h0, return_final_state=True)
    y, h = dask.compute(y, h)
    assert np.array_equal(y, want_y) and np.array_equal(h, want_h)


# ----------------------------------------------------------------------------- time chunks
@pytest.mark.parametrize("combine", ["serial", "chain"])
@pytest.mark.parametrize("n_blocks,chunk_length", [(2, 64), (3, 50), (5, 1), (8, 37)])
def test_linear_time_blocks_serial_bitwise_chunked(client, n_blocks, chunk_length, combine):
    length = 600 if chunk_length > 1 else 40
    a, b, h0 = _linear_inputs(2, length, 3, seed=n_blocks)
    want, want_h = ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=chunk_length,
                                   return_final_state=True)
    ch = nd.time_chunks(length, n_blocks, chunk_length)
    assert len(ch) == n_blocks
    A, B = (da.from_array(x, chunks=(1, ch, 3)) for x in (a, b))
    if n_blocks == 8:  # inputs persisted on the cluster (each block carries its own state)
        A, B = _persist(client)([A, B])
    got, got_h = nd.linear_scan(A, B, initial_state=h0, strategy="chunked", chunk_length=chunk_length,
                                return_final_state=True, combine=combine)
    got, got_h = dask.compute(got, got_h)
    assert np.array_equal(got, want) and np.array_equal(got_h, want_h)
    # the sequential scan differs in the last bits (the carry uses the summaries; with Lc = 1 it is the same)
    if chunk_length > 1 and n_blocks > 2:
        assert not np.array_equal(got, ops.linear_scan(a, b, initial_state=h0, strategy="sequential"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_selective_time_blocks_serial_bitwise_chunked(client, dtype):
    args, kw, h0 = _selective_inputs(2, 400, 40, 4, dtype=dtype)
    cl = 30
    want_y, want_h = ops.selective_scan(*args, **kw, initial_state=h0, strategy="chunked", chunk_length=cl,
                                        return_final_state=True)
    ch = nd.time_chunks(400, 4, cl)
    dargs = [da.from_array(x, chunks=(1, ch, x.shape[2])) if x.ndim == 3 else x for x in args]
    kw2 = dict(kw, z=da.from_array(kw["z"], chunks=(1, ch, 40)))
    y, h = nd.selective_scan(*dargs, **kw2, initial_state=h0, strategy="chunked", chunk_length=cl,
                             return_final_state=True)
    y, h = dask.compute(y, h)
    assert np.array_equal(y, want_y) and np.array_equal(h, want_h)
    # inputs persisted on the cluster: every block carries its own entering state
    pargs = [_persist(client)(x) if hasattr(x, "dask") else x for x in dargs]
    y, h = nd.selective_scan(*pargs, **dict(kw2, z=_persist(client)(kw2["z"])), initial_state=h0, strategy="chunked",
                             chunk_length=cl, return_final_state=True)
    y, h = dask.compute(y, h)
    assert np.array_equal(y, want_y) and np.array_equal(h, want_h)


@pytest.mark.parametrize("n_blocks", [2, 5, 16])
def test_tree_combine_within_tolerance(client, n_blocks):
    """combine="tree" reassociates the carry: within TREE_RTOL of the chunked scan, and (at 5
    or more blocks on these inputs) not bitwise equal to it."""
    cl = 16
    a, b, h0 = _linear_inputs(1, cl * 4 * n_blocks, 2, seed=7)
    want = ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=cl)
    ch = nd.time_chunks(a.shape[1], n_blocks, cl)
    A, B = (da.from_array(x, chunks=(1, ch, 2)) for x in (a, b))
    got = nd.linear_scan(A, B, initial_state=h0, strategy="chunked", chunk_length=cl, combine="tree").compute()
    assert max_rel_err(got, want) <= nd.TREE_RTOL["float64"]
    if n_blocks >= 5:
        assert not np.array_equal(got, want)
    a32, b32, h32 = (x.astype(np.float32) for x in (a, b, h0))
    want32 = ops.linear_scan(a32, b32, initial_state=h32, strategy="chunked", chunk_length=cl)
    got32 = nd.linear_scan(da.from_array(a32, chunks=(1, ch, 2)), da.from_array(b32, chunks=(1, ch, 2)),
                           initial_state=h32, strategy="chunked", chunk_length=cl, combine="tree").compute()
    assert max_rel_err(got32, want32) <= nd.TREE_RTOL["float32"]


def test_sequential_strategy_pieces_bitwise(client):
    a, b, h0 = _linear_inputs(3, 500, 2)
    want = ops.linear_scan(a, b, initial_state=h0, strategy="sequential")
    A, B = (da.from_array(x, chunks=(2, (10, 90, 400), 2)) for x in (a, b))
    assert np.array_equal(nd.linear_scan(A, B, initial_state=h0, strategy="sequential").compute(), want)


def test_overflowing_product_follows_the_kernel(client):
    """A chunk product that overflows to inf with a zero carried state, on the cluster: the
    distributed carry applies the kernels' rule (``carry_ok``: the chunk is re-run from the
    zero state, no NaN). tests/test_dask_extreme.py covers the other extreme values."""
    a = np.ones((1, 48, 2))
    a[0, :8, 0] = 1e200
    a[0, 8:, 0] = 1e-3
    b = np.zeros_like(a)
    b[0, 20:, :] = 1.0
    want = ops.linear_scan(a, b, strategy="chunked", chunk_length=4)
    A, B = (da.from_array(x, chunks=(1, (16, 16, 16), 2)) for x in (a, b))
    got = nd.linear_scan(A, B, strategy="chunked", chunk_length=4).compute()
    assert np.array_equal(got, want) and not np.isnan(got).any()
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("persisted", [False, True], ids=["graph-inputs", "persisted-inputs"])
@pytest.mark.parametrize("combine", ["serial", "chain"])
def test_rerun_blocks_on_the_cluster_bitwise(client, combine, persisted):
    """Blocks whose summaries cannot stand, on the cluster: with "serial" the carry submits
    their carry next to their data (an overflowed linear product; a selective state past
    2**52 through a product that underflows to 0), bitwise the chunked kernels. Inputs made
    by the graph are carried by one task; persisted inputs by every block itself, each later
    block re-running the earlier blocks that need it."""
    keep = _persist(client) if persisted else (lambda xs: xs)
    a = np.full((1, 96, 2), 0.5)
    a[0, 30:34, 0] = 1e200  # block 1's chunk product overflows
    a[0, 70:72, 1] = 1e-200  # block 2's chunk product underflows to 0
    b = np.ones_like(a)
    h0 = np.array([[3.0, 1e300]])
    want = ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=8)
    A, B = keep([da.from_array(x, chunks=(1, (32, 32, 32), 2)) for x in (a, b)])
    got = nd.linear_scan(A, B, initial_state=h0, strategy="chunked", chunk_length=8, combine=combine).compute()
    assert np.array_equal(got, want, equal_nan=True)
    args, kw, h0s = _selective_inputs(1, 90, 3, 2, seed=5)
    kw["delta_bias"] = np.array([30.0, 0.0, 0.0])  # channel 0: exp(delta * A) underflows to 0
    h0s[0, 0, :] = 1e60
    want_y = ops.selective_scan(*args, **kw, initial_state=h0s, strategy="chunked", chunk_length=10)
    ch = nd.time_chunks(90, 3, 10)
    dargs = [keep(da.from_array(x, chunks=(1, ch, x.shape[2]))) if x.ndim == 3 else x for x in args]
    kw2 = dict(kw, z=keep(da.from_array(kw["z"], chunks=(1, ch, 3))))
    got_y = nd.selective_scan(*dargs, **kw2, initial_state=h0s, strategy="chunked", chunk_length=10,
                              combine=combine).compute()
    assert np.array_equal(got_y, want_y, equal_nan=True)


def test_serial_graph_for_a_cluster_computed_elsewhere_refuses_a_rerun(client):
    """A "serial" graph built with a distributed client carries in one task; computed by the
    synchronous scheduler it cannot fetch a block's data for a re-run: a clear error, not a
    wrong result (moderate values need no re-run and compute anywhere)."""
    a = np.full((1, 64, 1), 0.5)
    a[0, 3:6, 0] = 1e200
    A, B = (da.from_array(x, chunks=(1, (32, 32), 1)) for x in (a, np.ones_like(a)))
    g = nd.linear_scan(A, B, strategy="chunked", chunk_length=8)
    with pytest.raises(RuntimeError, match="re-run"):
        g.compute(scheduler="synchronous")
    a2 = np.full((1, 64, 1), 0.5)
    A2, B2 = (da.from_array(x, chunks=(1, (32, 32), 1)) for x in (a2, np.ones_like(a2)))
    assert np.array_equal(nd.linear_scan(A2, B2, strategy="chunked", chunk_length=8).compute(scheduler="synchronous"),
                          ops.linear_scan(a2, np.ones_like(a2), strategy="chunked", chunk_length=8))


def _dropped(client, x, chunks):
    """``x`` persisted on the cluster under a fresh key, as a dask array the caller does not
    keep (the graph built on it must hold its blocks)."""
    return _persist(client)(da.from_array(x, chunks=chunks))


@pytest.mark.parametrize("op", ["linear-serial", "linear-chain", "linear-tree", "linear-sequential", "selective",
                                "conv", "score_long"])
def test_graphs_keep_persisted_inputs_alive(client, op):
    """A graph built on persisted arrays that the caller then drops holds their blocks: it
    computes (not "lost dependencies") and equals the single-machine result. Optimised
    ``to_delayed`` culled the futures from the graph, for every blockwise-in-time builder."""
    import gc

    ch = nd.time_chunks(96, 3, 8)
    if op.startswith("linear"):
        a, b, h0 = _linear_inputs(1, 96, 2, seed=4)
        strategy, combine = ("sequential", "serial") if op == "linear-sequential" else ("chunked", op.split("-")[1])
        got = nd.linear_scan(_dropped(client, a, (1, ch, 2)), _dropped(client, b, (1, ch, 2)), initial_state=h0,
                             strategy=strategy, chunk_length=8, combine=combine)
        want = ops.linear_scan(a, b, initial_state=h0, strategy=strategy, chunk_length=8)
        if combine == "tree":  # reassociated: the same graph on inputs it makes itself
            want = nd.linear_scan(*(da.from_array(x, chunks=(1, ch, 2)) for x in (a, b)), initial_state=h0,
                                  strategy=strategy, chunk_length=8, combine=combine).compute()
    elif op == "selective":
        args, kw, h0 = _selective_inputs(1, 96, 3, 2, seed=6)
        dargs = [_dropped(client, x, (1, ch, x.shape[2])) if x.ndim == 3 else x for x in args]
        kw2 = dict(kw, z=_dropped(client, kw["z"], (1, ch, 3)))
        got = nd.selective_scan(*dargs, **kw2, initial_state=h0, strategy="chunked", chunk_length=8)
        want = ops.selective_scan(*args, **kw, initial_state=h0, strategy="chunked", chunk_length=8)
        del dargs, kw2
    elif op == "conv":
        x = _rng(7).standard_normal((2, 96, 3))
        w = _rng(8).standard_normal((3, 4))
        got = nd.causal_conv1d(_dropped(client, x, (1, ch, 3)), w, activation="silu")
        want = ops.causal_conv1d(x, w, activation="silu")
    else:
        ids = _ids(1, 60, seed=9)[0]
        got = nd.score_long(SOURCE, _dropped(client, ids, ((7, 23, 30),)))
        want = nd.score_long(SOURCE, da.from_array(ids, chunks=((7, 23, 30),))).compute()
    gc.collect()
    time.sleep(0.3)  # the release messages of the dropped arrays reach the scheduler
    assert np.array_equal(got.compute(), want)


def test_time_blocks_off_the_chunk_grid_raise():
    a, b, _ = _linear_inputs(1, 100, 1)
    A, B = (da.from_array(x, chunks=(1, (30, 70), 1)) for x in (a, b))
    with pytest.raises(ValueError, match="multiples of chunk_length=20"):
        nd.linear_scan(A, B, strategy="chunked", chunk_length=20)
    with pytest.raises(ValueError, match="combine"):
        nd.linear_scan(A, B, strategy="chunked", chunk_length=10, combine="pairwise")
    assert nd.time_chunks(100, 3, 20) == (40, 40, 20)
    assert nd.time_chunks(10, 4, 20) == (10,)


def test_causal_conv1d_time_and_batch_chunks_bitwise(client):
    rng = _rng(5)
    x = rng.standard_normal((3, 200, 5))
    w, bias, hist = rng.standard_normal((5, 4)), rng.standard_normal(5), rng.standard_normal((3, 3, 5))
    want, want_hist = ops.causal_conv1d(x, w, bias, initial_state=hist, activation="silu", return_final_state=True)
    X = da.from_array(x, chunks=(2, (1, 2, 97, 100), (2, 3)))
    got, got_hist = nd.causal_conv1d(X, w, bias, history=hist, activation="silu", return_history=True)
    got, got_hist = dask.compute(got, got_hist)
    assert np.array_equal(got, want) and np.array_equal(got_hist, want_hist)


# ----------------------------------------------------------------------------- language model
def _ids(n, length, seed=0):
    return _rng(seed).integers(0, DIMS["vocab_size"], (n, length))


def test_score_blocks_bitwise_local(client):
    ids = _ids(6, 24)
    model = SOURCE.build()
    got = nd.score(SOURCE, da.from_array(ids, chunks=(2, 24))).compute()
    assert got.dtype == np.float64 and got.shape == (6,)
    assert np.array_equal(got, log_likelihood(model, ids, batch_size=2))
    # an independent computation: the softmax of forward's logits, one document at a time
    for i in range(6):
        logits, _ = model.forward(ids[i])
        x = logits[:-1].astype(np.float64)
        ref = sum(x[t, ids[i, t + 1]] - np.log(np.exp(x[t]).sum()) for t in range(23))
        # the head runs in tiles (float32 GEMM slices, float32 exp per tile): not bitwise
        assert abs(got[i] - ref) <= tol("lm_score_vs_logits") * abs(ref)


def test_score_bag_of_documents(client):
    docs = [_ids(1, n, seed=n)[0] for n in (5, 9, 2, 17, 9)]
    bag = db.from_sequence(docs, npartitions=3)
    got = nd.score(SOURCE, bag).compute()
    model = SOURCE.build()
    assert got == [float(log_likelihood(model, d[None])[0]) for d in docs]


def test_score_long_carries_the_state(client):
    ids = _ids(1, 60, seed=9)[0]
    model = SOURCE.build()
    lp, state = nd.score_long(SOURCE, da.from_array(ids, chunks=((7, 23, 30),)), return_state=True)
    lp, state = dask.compute(lp, state)
    # single machine, the same pieces one after the other
    want, s, last = [], None, None
    from nbssm.dask.lm import token_log_probs
    for piece in (ids[:7], ids[7:30], ids[30:]):
        logits, s = model.forward(piece[None], s)
        if last is not None:
            want.append(token_log_probs(last[None], piece[:1]))
        want.append(token_log_probs(logits[0, :-1], piece[1:]))
        last = logits[0, -1]
    assert np.array_equal(lp, np.concatenate(want))
    assert np.array_equal(state.ssm, s.ssm) and np.array_equal(state.conv, s.conv)
    # and the whole sequence at once, up to the rounding of the projections
    logits, _ = model.forward(ids)
    assert max_rel_err(lp, token_log_probs(logits[:-1], ids[1:])) <= 1e-5


def test_generate_array_and_bag(client):
    prompts = _ids(4, 6, seed=2)
    got = nd.generate(SOURCE, da.from_array(prompts, chunks=(2, 6)), max_new_tokens=5).compute()
    model = SOURCE.build()
    want = np.concatenate([np.stack(list(model.generate(prompts[i:i + 2], max_new_tokens=5)), axis=1)
                           for i in (0, 2)])
    assert got.shape == (4, 5) and np.array_equal(got, want)
    docs = [prompts[0, :3], prompts[1], prompts[2, :4]]
    out = nd.generate(SOURCE, db.from_sequence(docs, npartitions=2), max_new_tokens=3).compute()
    assert [o.tolist() for o in out] == [list(model.generate(d, max_new_tokens=3)) for d in docs]


# ----------------------------------------------------------------------------- features
def test_signature_and_cde_features(client):
    from nbssm import signature
    from nbssm.cde import linear_cde_scan

    rng = _rng(4)
    paths = rng.standard_normal((10, 20, 3))
    got = nd.signature_features(da.from_array(paths, chunks=(3, 20, 3)), 3).compute()
    assert np.array_equal(got, signature(paths, 3))
    assert np.array_equal(got[4], signature(paths[4], 3))
    n, dw, dx = 4, 2, 3
    A = 0.3 * rng.standard_normal((dw, n, n))
    Bm = rng.standard_normal((n, dx))
    dom, dxi = 0.1 * rng.standard_normal((10, 20, dw)), 0.1 * rng.standard_normal((10, 20, dx))
    z0 = rng.standard_normal((10, n))
    got = nd.cde_features(A, Bm, da.from_array(dom, chunks=(4, 20, dw)), da.from_array(dxi, chunks=(4, 20, dx)),
                          z0).compute()
    assert np.array_equal(got, linear_cde_scan(A, Bm, dom, dxi, z0, backend="numba"))


# ----------------------------------------------------------------------------- faults and order
def _slow(x, seconds):
    time.sleep(seconds)
    return x


def _random_delay(x, block_info=None):
    loc = block_info[0]["chunk-location"] if block_info else (0,)
    time.sleep(float(np.random.default_rng(hash(loc) % 2**32).uniform(0, 0.3)))
    return x


def test_results_independent_of_workers_and_finish_order(client):
    """The same graph on the cluster (tasks delayed at random, so they finish in any order) and
    in this process with the synchronous scheduler (one worker) gives the same bits."""
    cl = 25
    a, b, h0 = _linear_inputs(4, 400, 2, seed=11)
    ch = nd.time_chunks(400, 4, cl)
    A = da.from_array(a, chunks=(2, ch, 2)).map_blocks(_random_delay, dtype=a.dtype)
    B = da.from_array(b, chunks=(2, ch, 2)).map_blocks(_random_delay, dtype=b.dtype)
    out = nd.linear_scan(A, B, initial_state=h0, strategy="chunked", chunk_length=cl)
    ids = da.from_array(_ids(6, 12), chunks=(1, 12)).map_blocks(_random_delay, dtype=np.int64)
    lls = nd.score(SOURCE, ids)
    on_cluster = dask.compute(out, lls)
    local = dask.compute(out, lls, scheduler="synchronous")
    assert all(np.array_equal(x, y) for x, y in zip(on_cluster, local))
    assert np.array_equal(on_cluster[0], ops.linear_scan(a, b, initial_state=h0, strategy="chunked", chunk_length=cl))


def test_worker_killed_mid_job_same_result(client):
    ids = _ids(8, 16, seed=13)
    want = log_likelihood(SOURCE.build(), ids, batch_size=1)
    slow = da.from_array(ids, chunks=(1, 16)).map_blocks(_slow, 1.0, dtype=ids.dtype)
    fut = client.compute(nd.score(SOURCE, slow))
    victim = None
    deadline = time.time() + 30
    while victim is None and time.time() < deadline:
        busy = {w: t for w, t in client.processing().items() if t}
        if busy:
            victim = sorted(busy)[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "no task started within 30 s"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    got = fut.result(timeout=120)
    assert np.array_equal(got, want)
    client.wait_for_workers(2, timeout=60)


def test_time_parallel_summaries_carry_a_higher_priority():
    # the block summaries are the critical path: annotated to run before ready fix-ups
    da = pytest.importorskip("dask.array")
    import nbssm.dask as nd

    a = da.from_array(np.full((1, 640, 1), 0.5), chunks=(1, 128, 1))
    b = da.from_array(np.ones((1, 640, 1)), chunks=(1, 128, 1))
    g = nd.linear_scan(a, b, strategy="chunked", chunk_length=64).__dask_graph__()
    prio = {name: (getattr(layer, "annotations", None) or {}).get("priority") for name, layer in g.layers.items()}
    summaries = [n for n in prio if n.startswith("linear_summaries")]
    assert len(summaries) == 5  # one per time block (the last one's chunks but its last)
    assert all(prio[n] == 1 for n in summaries)
    assert all(prio[n] is None for n in prio if n not in summaries)
