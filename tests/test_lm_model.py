"""MambaLM behaviour: paths agree, batching, state objects, sampling, generation, bad input.

Oracles: ``lm_naive`` (plain numpy, token by token, independent of nbssm) for random models
the fixture does not cover; otherwise one path of the model against another (prefill vs
decode, batch vs alone) with the stated tolerance or bitwise where the kernel promises it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("safetensors")

from lm_naive import naive_model_logits
from nbssm.lm import MambaLM, MambaLMConfig, ModelState, StateMismatchError, sample_next
from tolerances import tol

HERE = os.path.dirname(os.path.abspath(__file__))
TIED = os.path.join(HERE, "fixtures", "mamba_tiny", "tied")
TOL_DP = tol("lm_decode_vs_prefill_abs")


@pytest.fixture(scope="module")
def model():
    return MambaLM.from_pretrained(TIED)


def _random_model(dtype=np.float32, tie=True, conv_bias=True, d_conv=4, seed=1):
    cfg = MambaLMConfig(d_model=24, n_layer=2, vocab_size=50, d_state=5, d_conv=d_conv, d_inner=200, dt_rank=3,
                        tie_embeddings=tie, conv_bias=conv_bias)
    return MambaLM.random(cfg, seed=seed, dtype=dtype)




@pytest.mark.parametrize("kw", [dict(), dict(tie=False), dict(conv_bias=False), dict(d_conv=2), dict(d_conv=1)])
def test_random_models_against_naive_reference(kw):
    """A model shape the fixture does not have (d_inner above the decode chunk of 128, odd sizes)."""
    ids = np.random.default_rng(3).integers(0, 50, 11)
    want = naive_model_logits(_random_model(np.float64, **kw), ids)
    for dtype, bound in ((np.float64, tol("lm_logits_float64_abs")), (np.float32, tol("lm_logits_float32_abs"))):
        m = _random_model(dtype, **kw)
        logits, _ = m.forward(ids)
        assert np.max(np.abs(logits - want)) < bound
        state = m.initial_state(1)
        for t, tok in enumerate(ids):
            step_logits, state = m.step(tok, state)
            assert step_logits.shape == (50,)
            assert np.max(np.abs(step_logits - want[t])) < bound


def test_chunked_prefill_equals_whole(model):
    ids = np.random.default_rng(0).integers(0, 96, (2, 13))
    whole, s_whole = model.forward(ids)
    for split in (1, 3, 4, 12):
        a, s = model.forward(ids[:, :split])
        b, s = model.forward(ids[:, split:], s)
        got = np.concatenate([a, b], axis=1)
        assert np.max(np.abs(got - whole)) < TOL_DP
        assert np.max(np.abs(s.ssm - s_whole.ssm)) < TOL_DP
        np.testing.assert_array_equal(s.positions, s_whole.positions)


def test_decode_is_batch_invariant_bitwise(model):
    """A sequence gets the same bits from the fused decode kernel alone or inside any batch."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 96, (5, 6))
    state = model.initial_state(5)
    alone = [model.initial_state(1) for _ in range(5)]
    for t in range(6):
        batched, state = model.step(ids[:, t], state)
        for i in range(5):
            one, alone[i] = model.step(ids[i:i + 1, t], alone[i])
            np.testing.assert_array_equal(one[0], batched[i])
    for i in range(5):
        np.testing.assert_array_equal(alone[i].ssm[:, 0], state.ssm[:, i])


def test_ragged_prefill_equals_each_alone_then_batched_decode(model):
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 96, n) for n in (7, 2, 11, 1)]
    last, state = model.prefill(prompts)
    for i, p in enumerate(prompts):
        alone, s = model.prefill([p])
        np.testing.assert_array_equal(last[i], alone[0])  # bitwise: each prompt is run alone
        np.testing.assert_array_equal(state.ssm[:, i], s.ssm[:, 0])
        logits, _ = model.forward(p)  # all positions' logits: BLAS on more rows, within rounding
        assert np.max(np.abs(last[i] - logits[-1])) < TOL_DP
    nxt = rng.integers(0, 96, 4)
    batched, _ = model.step(nxt, state)
    for i in range(4):
        alone, _ = model.step(nxt[i:i + 1], state.select([i]))
        np.testing.assert_array_equal(alone[0], batched[i])


def test_state_is_not_modified_and_copy_is_independent(model):
    ids = np.arange(5)[None]
    _, s = model.forward(ids)
    before = s.copy()
    model.forward(ids, s)
    model.step(np.array([3]), s)
    np.testing.assert_array_equal(s.ssm, before.ssm)
    np.testing.assert_array_equal(s.conv, before.conv)
    _, s2 = model.step(np.array([3]), s, inplace=True)
    assert s2 is s and not np.array_equal(s.ssm, before.ssm) and s.positions[0] == before.positions[0] + 1


def test_state_save_load_continues_exactly(model, tmp_path):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 96, (2, 8))
    _, s = model.forward(ids[:, :5])
    path = tmp_path / "state.npz"
    s.save(path)
    loaded = ModelState.load(path, model)
    a, _ = model.forward(ids[:, 5:], s)
    b, _ = model.forward(ids[:, 5:], loaded)
    np.testing.assert_array_equal(a, b)
    c, _ = model.step(ids[:, 5], loaded)
    d, _ = model.step(ids[:, 5], s)
    np.testing.assert_array_equal(c, d)
    with np.load(path, allow_pickle=False) as f:  # a plain npz, nothing pickled
        assert set(f.files) == {"format", "kind", "dim_names", "dim_values", "dtype", "weights", "positions",
                                "conv", "ssm"}


def test_state_from_another_model_dtype_or_batch_is_rejected(model, tmp_path):
    other = _random_model()
    with pytest.raises(StateMismatchError, match="another model"):
        model.forward(np.arange(3)[None], other.initial_state(1))
    m64 = MambaLM.from_pretrained(TIED, dtype=np.float64)
    with pytest.raises(StateMismatchError, match="dtype"):
        model.step(np.array([1]), m64.initial_state(1))
    with pytest.raises(StateMismatchError, match="holds a batch of 2 sequences, the input has 1"):
        model.step(np.array([1]), model.initial_state(2))
    # same dimensions, different weights
    untied = MambaLM.from_pretrained(os.path.join(HERE, "fixtures", "mamba_tiny", "untied"))
    path = tmp_path / "s.npz"
    untied.initial_state(1).save(path)
    with pytest.raises(StateMismatchError, match="weights"):
        ModelState.load(path, model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StateMismatchError, match="not a readable .npz"):
        ModelState.load(tmp_path / "junk.npz", model)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 96\)"):
        model.forward(np.array([[1, 96]]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 96\)"):
        model.step(np.array([-1]))
    with pytest.raises(TypeError, match="integer array"):
        model.forward(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        model.forward(np.zeros((1, 2, 3), np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        model.prefill([np.array([1, 2]), np.array([], np.int64)])
    ids = np.array([[1, 2, 3]])
    ids.setflags(write=False)
    logits, _ = model.forward(ids)  # read-only input is fine
    empty, s = model.forward(np.zeros((2, 0), np.int64))
    assert empty.shape == (2, 0, 96) and s.positions.tolist() == [0, 0]


def test_sampling_greedy_topk_and_seed():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 40))
    np.testing.assert_array_equal(sample_next(logits), logits.argmax(1))
    a = [sample_next(logits, 1.0, 5, np.random.default_rng(9)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    draws = np.array([sample_next(logits, 1.0, 5, np.random.default_rng(s)) for s in range(300)])
    for i in range(3):
        assert set(draws[:, i]) <= set(top5[i])
    # the empirical distribution follows softmax(logits / T) on the top k (chi-square-free check)
    p = np.exp(logits[0, top5[0]] - logits[0, top5[0]].max())
    p /= p.sum()
    freq = np.array([(draws[:, 0] == t).mean() for t in top5[0]])
    assert np.max(np.abs(freq - p)) < 0.1
    assert set(sample_next(logits, 1.0, 1, np.random.default_rng(0))) == set(logits.argmax(1))
    with pytest.raises(ValueError, match="rng"):
        sample_next(logits, 0.5)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, 0.5, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, -1.0)


def test_generate_streams_and_matches_manual_greedy_loop(model):
    prompt = np.array([5, 9, 17, 33])
    gen = model.generate(prompt, max_new_tokens=6)
    got = []
    for tok in gen:
        assert isinstance(tok, int)
        got.append(tok)
    assert len(got) == 6
    # the same loop by hand, through forward only (prefill path, an independent code path)
    ids = list(prompt)
    for _ in range(6):
        logits, _ = model.forward(np.array(ids))
        ids.append(int(np.argmax(logits[-1])))
    assert got == ids[4:]
    assert gen.state.positions.tolist() == [10] and gen.state.position == 10
    assert gen.tokens_per_second > 0


def test_generate_batch_ragged_sampling_seeded_and_eos(model):
    prompts = [np.array([3, 4, 5]), np.array([7]), np.array([8, 9, 10, 11, 12])]
    a = np.array(list(model.generate(prompts, 5, temperature=0.8, top_k=10, seed=3)))
    b = np.array(list(model.generate(prompts, 5, temperature=0.8, top_k=10, seed=3)))
    assert a.shape == (5, 3)
    np.testing.assert_array_equal(a, b)
    greedy = np.array(list(model.generate(prompts, 4)))
    eos = int(greedy[1, 0])  # sequence 0 emits this at step 2
    out = np.array(list(model.generate(prompts, 50, eos_token_id=eos)))
    assert out[1, 0] == eos and np.all(out[1:, 0] == eos)
    # continuing from a state: generate(prompt, state) equals generating after the whole context
    _, s = model.forward(np.array([1, 2, 3]))
    c = list(model.generate(np.array([4, 5]), 3, state=s))
    d = list(model.generate(np.array([1, 2, 3, 4, 5]), 3))
    assert c == d


def test_tokenizer_roundtrip_when_available(model):
    pytest.importorskip("tokenizers")
    tok = model.tokenizer
    assert tok is not None
    ids = tok.encode("Hello, Mamba!")
    assert ids.dtype == np.int64 and tok.decode(ids) == "Hello, Mamba!"
    out = list(model.generate("abc", 3))
    assert len(out) == 3


def test_text_prompt_without_tokenizer():
    m = MambaLM.from_pretrained(os.path.join(HERE, "fixtures", "mamba_tiny", "untied"))
    with pytest.raises(ValueError, match="tokenizer"):
        m.generate("hello", 2)


def test_deprecated_lm_names_warn_and_still_work(model, tmp_path):
    import nbssm.lm

    with pytest.warns(DeprecationWarning, match="MambaLMState"):
        alias = nbssm.lm.MambaLMState
    assert alias is ModelState
    with pytest.warns(DeprecationWarning, match="initial_state"):
        s = model.init_state(2)
    assert s.fingerprint == model.initial_state(2).fingerprint and s.batch == 2
    ids = np.array([[1, 2, 3]])
    _, s1 = model.forward(ids)
    with pytest.warns(DeprecationWarning, match="initial_state"):
        a, _ = model.forward(ids, state=s1)
    np.testing.assert_array_equal(a, model.forward(ids, initial_state=s1)[0])
    path = tmp_path / "s.npz"
    s1.save(path)
    np.testing.assert_array_equal(alias.load(path, model).ssm, s1.ssm)


def test_one_dimensional_ids_are_one_sequence(model):
    ids = np.array([4, 8, 15, 16])
    logits, s = model.forward(ids)
    batched, sb = model.forward(ids[None])
    assert logits.shape == (4, 96) and s.batch == 1
    np.testing.assert_array_equal(logits, batched[0])
    np.testing.assert_array_equal(s.ssm, sb.ssm)
    step, _ = model.step(23, s)
    assert step.shape == (96,)


@pytest.mark.parametrize("options", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=0),
                                     dict(top_k=1.5), dict(seed="x")])
def test_generate_checks_sampling_options_before_any_work(monkeypatch, options):
    from nbssm import MambaLM

    model = MambaLM.random(seed=0, d_model=16, n_layer=1, vocab_size=32)
    monkeypatch.setattr(model, "prefill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("prefill ran")))
    with pytest.raises((TypeError, ValueError)):
        model.generate(np.array([1, 2, 3]), max_new_tokens=2, **options)
