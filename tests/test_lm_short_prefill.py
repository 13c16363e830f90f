"""Short prompts are prefilled by the decode kernel (``STEP_PREFILL_MAX_TOKENS``), so that a first
``generate`` on a short prompt compiles that one kernel only.

Oracles: the prefill path (:meth:`MambaLM.forward`, BLAS + ops kernels, independent of the
decode kernel) within ``lm_decode_vs_prefill_abs``, the transformers fixture (float64 logits)
within ``lm_logits_float32_abs``, and ``lm_naive`` (plain numpy) for float64; bitwise where the
decode kernel promises it (batch invariance).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("safetensors")

from lm_naive import naive_lm
from nbssm.lm import MambaLM, MambaLMConfig
from nbssm.lm.model import STEP_PREFILL_MAX_TOKENS as SHORT
from tolerances import tol

HERE = os.path.dirname(os.path.abspath(__file__))
TIED = os.path.join(HERE, "fixtures", "mamba_tiny", "tied")
TOL_DP = tol("lm_decode_vs_prefill_abs")


@pytest.fixture(scope="module")
def model():
    return MambaLM.from_pretrained(TIED)


def _no_forward(monkeypatch, m):
    def refuse(*a, **k):
        raise AssertionError("forward ran for a short prompt")

    monkeypatch.setattr(m, "forward", refuse)


@pytest.mark.parametrize("length", [1, 2, 4, SHORT])
def test_short_prompt_prefill_uses_the_decode_kernel_and_matches_forward(model, monkeypatch, length):
    ids = np.random.default_rng(length).integers(0, 96, (2, length))
    want, s_want = model.forward(ids)  # the prefill path: an independent code path
    _no_forward(monkeypatch, model)
    last, st = model.prefill(ids)
    assert last.shape == (2, 96) and last.dtype == np.float32
    assert np.max(np.abs(last - want[:, -1])) < TOL_DP
    assert np.max(np.abs(st.ssm - s_want.ssm)) < TOL_DP
    assert np.max(np.abs(st.conv - s_want.conv)) < TOL_DP
    np.testing.assert_array_equal(st.positions, s_want.positions)
    for i in range(2):  # a batch of one length: bitwise each prompt alone (decode is batch-invariant)
        alone, s = model.prefill([ids[i]])
        np.testing.assert_array_equal(alone[0], last[i])
        np.testing.assert_array_equal(s.ssm[:, 0], st.ssm[:, i])


def test_longer_prompts_still_use_forward(model, monkeypatch):
    ids = np.random.default_rng(0).integers(0, 96, (1, SHORT + 1))
    want, _ = model.forward(ids, last_only=True)
    calls = []
    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    last, _ = model.prefill(ids)
    assert calls == [1]
    np.testing.assert_array_equal(last, want[:, -1])


def test_short_prefill_continues_from_a_state_and_does_not_modify_it(model):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 96, (1, 3 + SHORT))
    _, s0 = model.forward(ids[:, :SHORT + 1])  # long: forward
    before = s0.copy()
    last, s1 = model.prefill(ids[:, SHORT + 1:], s0)  # 2 tokens: by steps
    np.testing.assert_array_equal(s0.ssm, before.ssm)
    np.testing.assert_array_equal(s0.conv, before.conv)
    want, s_want = model.forward(ids)
    assert np.max(np.abs(last - want[:, -1])) < TOL_DP
    assert np.max(np.abs(s1.ssm - s_want.ssm)) < TOL_DP
    np.testing.assert_array_equal(s1.positions, s_want.positions)


def test_ragged_prompts_each_take_their_own_path_bitwise(model):
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 96, n) for n in (SHORT + 3, 2, SHORT, 1, SHORT + 1)]
    last, state = model.prefill(prompts)
    for i, p in enumerate(prompts):
        alone, s = model.prefill([p])
        np.testing.assert_array_equal(last[i], alone[0])
        np.testing.assert_array_equal(state.ssm[:, i], s.ssm[:, 0])
        assert np.max(np.abs(last[i] - model.forward(p)[0][-1])) < TOL_DP


def test_short_prompt_prefill_against_transformers_fixture():
    from safetensors.numpy import load_file

    exp = load_file(os.path.join(TIED, "expected.safetensors"))
    assert exp["prompts"].shape[1] > SHORT  # its prefixes (causal) give both sides of the rule
    for dtype, bound in ((np.float32, tol("lm_logits_float32_abs")), (np.float64, tol("lm_logits_float64_abs"))):
        m = MambaLM.from_pretrained(TIED, dtype=dtype)
        for k in (1, 3, SHORT, SHORT + 1):
            last, _ = m.prefill(exp["prompts"][:, :k])
            assert np.max(np.abs(last - exp["prefill_logits_f64"][:, k - 1])) < bound, k


def test_float64_short_prefill_against_naive_reference():
    cfg = MambaLMConfig(d_model=24, n_layer=2, vocab_size=50, d_state=5, d_conv=4, d_inner=200, dt_rank=3)
    m = MambaLM.random(cfg, seed=2, dtype=np.float64)
    ids = np.random.default_rng(1).integers(0, 50, 5)
    f64 = np.float64
    lm = {"embed": m.embed.astype(f64), "head": m.head.astype(f64), "norm_f": m.norm_f.astype(f64),
          "layers": [(m.norms[i].astype(f64), {k: v.astype(f64) for k, v in blk.parameters().items()})
                     for i, blk in enumerate(m.blocks)]}
    want = naive_lm(lm, ids, m.config.norm_eps)[0]
    last, _ = m.prefill([ids])
    assert np.max(np.abs(last[0] - want[-1])) < tol("lm_logits_float64_abs")


def test_generate_after_a_short_prompt_matches_a_forward_only_greedy_loop(model):
    prompt = np.array([5, 9, 17])
    got = list(model.generate(prompt, max_new_tokens=5))
    ids = list(prompt)
    for _ in range(5):
        logits, _ = model.forward(np.array(ids))
        ids.append(int(np.argmax(logits[-1])))
    assert got == ids[3:]


def test_warmup_generate_runs_forward_only_for_long_prompts(model, monkeypatch):
    from nbssm._warmup import warmup_generate

    calls = []
    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    warmup_generate(model, prompt_length=3)
    assert calls == []
    warmup_generate(model, prompt_length=SHORT + 1)
    assert calls == [1]


def test_warmup_generate_joins_the_preload_before_any_kernel(model, monkeypatch):
    """The preload thread is joined before the long prompt's forward runs: two threads
    launching parallel kernels at once is unsafe on Numba's workqueue threading layer."""
    from nbssm import _warmup

    order = []

    class Preload:
        def join(self, timeout=None):
            order.append("join")

    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: order.append("forward") or orig(*a, **k))
    monkeypatch.setattr(_warmup, "_tiny_step", lambda dtype, weights: order.append("tiny"))
    _warmup.warmup_generate(model, prompt_length=SHORT + 1, preload=Preload())
    assert order == ["join", "forward", "tiny"]


def test_kernel_cache_state_for_a_short_prompt_reads_the_decode_kernel_only(monkeypatch):
    from nbssm._kernels import _jit
    from nbssm._kernels.decode import decode_step
    from nbssm.lm import cli

    seen = []

    def fake(disp):
        seen.append(disp)
        return ["(float32,)"] if disp is decode_step else []

    monkeypatch.setattr(_jit, "cached_signatures", fake)
    assert cli.kernel_cache_state(np.float32, prefill=False) == "cached" and seen == [decode_step]
    assert cli.kernel_cache_state(np.float32) == "cold" and len(seen) == 4
    assert cli.kernel_cache_state(np.float64, prefill=False) == "cold"
