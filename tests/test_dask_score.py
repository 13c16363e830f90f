"""Scoring without the full logits: ``MambaLM.token_log_probs`` (the LM head in tiles with a
running log-sum-exp) and ``nbssm.dask.lm.log_likelihood`` / ``nd.score`` on top of it.

Compared against an independent float64 computation (``tests/lm_naive.py``, token by token,
then a plain log-softmax) and against ``forward``'s full logits; tolerance row
``lm_score_vs_logits``.
"""

from __future__ import annotations

import os
import sys

import numba
import numpy as np
import pytest

from nbssm.lm import MambaLM

sys.path.insert(0, os.path.dirname(__file__))
from lm_naive import naive_model_logits  # noqa: E402
from tolerances import max_rel_err, tol  # noqa: E402

TOL = tol("lm_score_vs_logits")


def _log_softmax_at(logits, targets):
    """float64 ``log_softmax(logits)[targets]`` the plain way (numpy, whole rows)."""
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1, keepdims=True)
    lsm = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return np.take_along_axis(lsm, np.asarray(targets)[..., None], axis=-1)[..., 0]


def _model(dtype, vocab=37, seed=5):
    return MambaLM.random(seed=seed, dtype=dtype, d_model=16, n_layer=2, vocab_size=vocab, d_state=4)


def _ids(b, length, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (b, length))


@pytest.mark.parametrize("rows,vocab_tile", [(256, 2048), (3, 8), (1, 1), (5, 37), (4, 36)])
def test_token_log_probs_vs_naive_float64(rows, vocab_tile):
    # vocabulary 37: tiles of 8 and 36 leave a partial last tile; positions 2 x 8 = 16 vs rows 3, 5
    m = _model(np.float64)
    ids = _ids(2, 9, 37)
    got = m.token_log_probs(ids, rows=rows, vocab_tile=vocab_tile)
    assert got.shape == (2, 8) and got.dtype == np.float64
    want = np.stack([_log_softmax_at(naive_model_logits(m, ids[i])[:-1], ids[i, 1:]) for i in range(2)])
    assert max_rel_err(got, want) <= TOL


@pytest.mark.parametrize("shape,vocab,vocab_tile", [((3, 50), 1000, 256), ((1, 2), 40, 7), ((4, 17), 301, 300)])
def test_token_log_probs_float32_vs_full_logits(shape, vocab, vocab_tile):
    m = _model(np.float32, vocab=vocab)
    ids = _ids(*shape, vocab, seed=1)
    before = ids.copy()
    got = m.token_log_probs(ids, rows=8, vocab_tile=vocab_tile)
    assert np.array_equal(ids, before)  # input not modified
    logits, _ = m.forward(ids)
    assert max_rel_err(got, _log_softmax_at(logits[:, :-1], ids[:, 1:])) <= TOL
    # and the independent float64 model on the same (float32) weights, within the float32 row
    want = np.stack([_log_softmax_at(naive_model_logits(m, ids[i])[:-1], ids[i, 1:]) for i in range(shape[0])])
    assert max_rel_err(got, want) <= tol("float32_vs_float64")


def test_token_log_probs_shapes_length_one_and_one_dimensional():
    m = _model(np.float32)
    ids = _ids(3, 6, 37, seed=2)
    assert m.token_log_probs(ids[:, :1]).shape == (3, 0)
    one = m.token_log_probs(ids[1])
    assert one.shape == (5,)
    assert max_rel_err(one, m.token_log_probs(ids[1:2])[0]) <= TOL
    with pytest.raises(ValueError):
        m.token_log_probs(ids[:, :0])
    with pytest.raises(ValueError):
        m.token_log_probs(np.array([[0, 37]]))  # out of the vocabulary
    with pytest.raises(TypeError):
        m.token_log_probs(np.array([[0.5, 1.0]]))


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, None])
def test_token_log_probs_rejects_bad_tiles(bad):
    m = _model(np.float32)
    ids = _ids(1, 4, 37)
    with pytest.raises(ValueError, match="rows"):
        m.token_log_probs(ids, rows=bad)
    with pytest.raises(ValueError, match="vocab_tile"):
        m.token_log_probs(ids, vocab_tile=bad)


def test_token_log_probs_deterministic_across_threads():
    m = _model(np.float32, vocab=500)
    ids = _ids(3, 40, 500, seed=3)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = m.token_log_probs(ids, rows=16, vocab_tile=128)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = m.token_log_probs(ids, rows=16, vocab_tile=128)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(one, two)


pytest.importorskip("dask", reason="nbssm.dask needs dask (pip install 'nbssm[dask]')")


def test_log_likelihood_sums_token_log_probs():
    from nbssm.dask.lm import log_likelihood

    m = _model(np.float32)
    ids = _ids(5, 12, 37, seed=4)
    got = log_likelihood(m, ids, batch_size=2)
    want = np.concatenate([m.token_log_probs(ids[s:s + 2]).sum(axis=1) for s in (0, 2, 4)])
    assert np.array_equal(got, want)
    logits, _ = m.forward(ids)
    assert max_rel_err(got, _log_softmax_at(logits[:, :-1], ids[:, 1:]).sum(axis=1)) <= TOL
    assert np.array_equal(log_likelihood(m, ids[:, :1]), np.zeros(5))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, np.float64(2.0)])
def test_batch_size_rejected(bad):
    import dask.array as da

    import nbssm.dask as nd
    from nbssm.dask.lm import log_likelihood

    m = _model(np.float32)
    ids = _ids(2, 5, 37)
    with pytest.raises(ValueError, match="batch_size"):
        log_likelihood(m, ids, batch_size=bad)
    source = nd.ModelSource.random(seed=5, dtype="float32", d_model=16, n_layer=2, vocab_size=37, d_state=4)
    with pytest.raises(ValueError, match="batch_size"):
        nd.score(source, da.from_array(ids, chunks=(1, 5)), batch_size=bad)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_token_log_probs_compressed_head(weights):
    # the head dequantized one vocabulary tile at a time equals forward's dequantized head
    m = MambaLM.random(seed=5, dtype=np.float32, weights=weights, d_model=32, n_layer=2, vocab_size=300,
                       d_state=4, tie_embeddings=False)
    ids = _ids(2, 11, 300, seed=6)
    logits, _ = m.forward(ids)
    got = m.token_log_probs(ids, rows=7, vocab_tile=128)
    assert max_rel_err(got, _log_softmax_at(logits[:, :-1], ids[:, 1:])) <= TOL
