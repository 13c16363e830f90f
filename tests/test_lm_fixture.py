"""MambaLM against the committed transformers fixture (tests/fixtures/mamba_tiny), and mutations.

The fixture was produced once by ``benchmarks/make_mamba_fixture.py`` with transformers'
``MambaForCausalLM`` (pure-PyTorch path); no torch is needed here. Expected logits come from
transformers run in float64 on the stored float32 weights (``*_f64``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors.numpy import load_file

from nbssm.lm import MambaLM, load_checkpoint
from tolerances import tol

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "mamba_tiny")
KINDS = ("tied", "untied")
TOL32 = tol("lm_logits_float32_abs")
TOL64 = tol("lm_logits_float64_abs")
MUTATION = tol("lm_mutation_factor") * TOL32


def _expected(kind):
    return load_file(os.path.join(FIXTURE, kind, "expected.safetensors"))


_MODELS: dict = {}


def _model(kind, dtype=np.float32) -> MambaLM:
    key = (kind, np.dtype(dtype).name)
    if key not in _MODELS:
        _MODELS[key] = MambaLM.from_pretrained(os.path.join(FIXTURE, kind), dtype=dtype)
    return _MODELS[key]


def _err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_fixture_is_small_and_has_no_pickles():
    total = 0
    for root, _, files in os.walk(FIXTURE):
        for name in files:
            assert not name.endswith((".bin", ".pt", ".pth", ".pkl"))
            total += os.path.getsize(os.path.join(root, name))
    assert total < 2_000_000


@pytest.mark.parametrize("dtype,bound", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_logits_match_transformers(kind, dtype, bound):
    exp = _expected(kind)
    model = _model(kind, dtype)
    logits, state = model.forward(exp["prompts"])
    assert logits.shape == exp["prefill_logits_f64"].shape and logits.dtype == dtype
    assert _err(logits, exp["prefill_logits_f64"]) < bound
    assert state.positions.tolist() == [exp["prompts"].shape[1]] * exp["prompts"].shape[0]


@pytest.mark.parametrize("dtype,bound", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("kind", KINDS)
def test_decode_after_prefill_matches_transformers_cache(kind, dtype, bound):
    exp = _expected(kind)
    model = _model(kind, dtype)
    _, state = model.forward(exp["prompts"])
    for t in range(exp["decode_tokens"].shape[1]):
        logits, state = model.step(exp["decode_tokens"][:, t], state)
        assert _err(logits, exp["decode_logits_f64"][:, t]) < bound, t


@pytest.mark.parametrize("dtype,bound", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("kind", KINDS)
def test_token_by_token_from_empty_state_matches_prefill(kind, dtype, bound):
    exp = _expected(kind)
    model = _model(kind, dtype)
    ids = np.concatenate([exp["prompts"], exp["decode_tokens"]], axis=1)
    want = np.concatenate([exp["prefill_logits_f64"], exp["decode_logits_f64"]], axis=1)
    state = model.initial_state(ids.shape[0])
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        assert _err(logits, want[:, t]) < bound, t


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_prompts_match_each_run_alone_in_transformers(kind):
    exp = _expected(kind)
    model = _model(kind)
    prompts = [exp["prompts"][i, :n] for i, n in enumerate(exp["ragged_k"])]
    assert len({p.size for p in prompts}) > 1
    last, state = model.prefill(prompts)
    assert _err(last, exp["ragged_last_logits_f64"]) < TOL32
    assert state.positions.tolist() == [int(n) for n in exp["ragged_k"]]


def test_float32_reference_in_fixture_is_consistent():
    # the fixture's own float32 transformers run agrees with its float64 one: the tolerance
    # above is a float32 tolerance, not hiding a fixture error
    for kind in KINDS:
        exp = _expected(kind)
        assert _err(exp["prefill_logits_f32"], exp["prefill_logits_f64"]) < TOL32


# ----------------------------------------------------------------------------- mutations
def _mutate_all_layers(tensors, suffix, fn):
    out = dict(tensors)
    for name in tensors:
        if name.endswith(suffix):
            out[name] = fn(tensors[name])
    return out


def _shift_dt_slice(config):
    R = config.dt_rank

    def fn(w):  # rows of x_proj: dt (R), B (N), C (N); shift the dt block down by one row
        w = w.copy()
        w[:R] = np.roll(w, 1, axis=0)[:R]
        return w

    return fn


MUTATIONS = {
    "A sign flipped": lambda t, c: t,  # the tensors stay; _FlippedA flips the rate
    "conv taps reversed": lambda t, c: _mutate_all_layers(t, "mixer.conv1d.weight", lambda w: w[..., ::-1].copy()),
    "D zeroed": lambda t, c: _mutate_all_layers(t, "mixer.D", np.zeros_like),
    "dt slice of x_proj shifted": lambda t, c: _mutate_all_layers(t, "mixer.x_proj.weight", _shift_dt_slice(c)),
}


class _FlippedA(MambaLM):
    """A model whose transition rate has the wrong sign: ``A = +exp(A_log)`` (a plausible bug)."""

    def __init__(self, config, tensors, dtype=np.float32):
        super().__init__(config, tensors, dtype)
        for block in self.blocks:  # the prefill path reads each block's A = -exp(A_log)
            block.A.flags.writeable = True
            np.negative(block.A, out=block.A)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_mutations_move_logits_far_beyond_tolerance(kind, mutation):
    exp = _expected(kind)
    config, tensors = load_checkpoint(os.path.join(FIXTURE, kind))
    cls = _FlippedA if mutation == "A sign flipped" else MambaLM
    with np.errstate(over="ignore", invalid="ignore"):
        model = cls(config, MUTATIONS[mutation](tensors, config))
        logits, _ = model.forward(exp["prompts"])
    moved = np.abs(logits.astype(np.float64) - exp["prefill_logits_f64"])
    moved = np.where(np.isfinite(moved), moved, np.inf)
    assert moved.max() > MUTATION, (mutation, moved.max())


@pytest.mark.parametrize("kind", KINDS)
def test_head_tying_mutation_moves_logits(kind):
    """Untie a tied head (a separate head that is not the embedding), or tie an untied one."""
    exp = _expected(kind)
    config, tensors = load_checkpoint(os.path.join(FIXTURE, kind))
    from dataclasses import replace

    t = dict(tensors)
    if config.tie_embeddings:
        rng = np.random.default_rng(0)
        t["lm_head.weight"] = (t["backbone.embeddings.weight"] + rng.normal(0, 0.1, t["backbone.embeddings.weight"].shape)).astype(np.float32)
        mutated = MambaLM(replace(config, tie_embeddings=False), t)
    else:
        t.pop("lm_head.weight")
        mutated = MambaLM(replace(config, tie_embeddings=True), t)
    logits, _ = mutated.forward(exp["prompts"])
    assert _err(logits, exp["prefill_logits_f64"]) > MUTATION
