"""The language-model group of ``nbssm verify`` (nbssm.verify.lm_rows): every row passes on the
real code, every control is refuted, and plausible bugs in nbssm.lm / nbssm.models make rows fail.

The group's own pieces are checked against independent ones: its numpy reference against
``tests/lm_naive.py``, its safetensors writer against the ``safetensors`` package, its bf16
rounding against ``ml_dtypes``.
"""

from __future__ import annotations

import numpy as np
import pytest

from nbssm.spec.verdict import BEYOND, CONTROL
from nbssm.verify import lm_rows
from nbssm.verify.external import GROUP_LISTING, GROUPS
from nbssm.verify.lm_reference import reference_lm


@pytest.fixture(scope="module")
def lm_results():
    return lm_rows.lm_checks(seed=0)


def test_every_row_passes_and_every_control_is_refuted(lm_results):
    names = [r.name for r in lm_results]
    assert tuple(names) == lm_rows.ROW_NAMES
    bad = [(r.name, r.verdict, r.detail) for r in lm_results if not r.passed]
    assert not bad
    for r in lm_results:
        assert r.verdict == ("refuted" if r.kind == CONTROL else "proved")
    kinds = [r.kind for r in lm_results]
    assert kinds == [BEYOND, CONTROL] * (len(kinds) // 2), "each row is followed by its control"


def test_group_is_registered():
    assert ("lm_checks", "nbssm.verify.lm_rows", "lm_checks") in GROUPS
    assert "lm_checks" in {name for name, _, _ in GROUP_LISTING}


def test_another_seed_passes_too():
    res = lm_rows.lm_checks(seed=3)
    assert all(r.passed for r in res), [(r.name, r.detail) for r in res if not r.passed]


def test_reference_agrees_with_the_tests_naive_lm():
    """Two independent transcriptions of the LM agree (float64, tied and untied, with a state)."""
    from lm_naive import checkpoint_params, naive_lm

    rng = np.random.default_rng(5)
    for tied in (False, True):
        t = lm_rows.random_tensors(rng, 11, tied=tied, conv_bias=True)
        ids = rng.integers(0, 11, 7)
        ref, state = reference_lm(t, 2, 1e-3, tied, ids)
        naive, naive_state = naive_lm(checkpoint_params(t, 2, tied), ids, 1e-3)
        np.testing.assert_allclose(ref, naive, rtol=0, atol=1e-12)
        for (H, hist), (ch, s) in zip(state, naive_state):
            np.testing.assert_allclose(H, s, rtol=0, atol=1e-12)
            np.testing.assert_allclose(hist, ch, rtol=0, atol=1e-12)
        # continuing from the state equals running the longer sequence
        more = rng.integers(0, 11, 3)
        cont, _ = reference_lm(t, 2, 1e-3, tied, more, state)
        whole, _ = reference_lm(t, 2, 1e-3, tied, np.concatenate([ids, more]))
        np.testing.assert_allclose(cont, whole[7:], rtol=0, atol=1e-12)


def test_safetensors_writer_round_trips(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    arrays = {"a": ("F32", rng.normal(size=(3, 2)).astype("<f4")), "b": ("F16", rng.normal(size=5).astype("<f2")),
              "c": ("F32", np.zeros((0, 4), "<f4"))}
    path = tmp_path / "x.safetensors"
    lm_rows.write_safetensors(str(path), arrays)
    back = st.load_file(str(path))
    assert set(back) == set(arrays)
    for name, (_, raw) in arrays.items():
        assert back[name].dtype == raw.dtype and np.array_equal(back[name], raw)


def test_bf16_rounding_is_round_to_nearest_even():
    ml = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=2000).astype(np.float32) * 10.0 ** rng.integers(-5, 5, 2000),
                        np.float32([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.0e38])])  # ties included
    want = x.astype(ml.bfloat16).view(np.uint16)
    assert np.array_equal(lm_rows.bf16_bits(x), want)


def _passed(results, name):
    return next(r for r in results if r.name == name).passed


def test_a_tied_head_loaded_silently_fails_the_refusal_row(monkeypatch):
    """The bug of issue text: a tied checkpoint silently using a stored, different lm_head.weight."""
    from nbssm.lm import loading

    real = loading.check_tensors

    def accepting(tensors, config, directory="checkpoint"):
        if config.tie_embeddings and "lm_head.weight" in tensors:
            tensors = {**tensors, "lm_head.weight": tensors["backbone.embeddings.weight"]}
        return real(tensors, config, directory)

    monkeypatch.setattr(loading, "check_tensors", accepting)
    res = lm_rows.lm_checks()
    assert not _passed(res, "lm_tied_checkpoint_storing_a_different_head_is_refused")


def test_to_spec_without_reversed_taps_fails_the_mixer_row(monkeypatch):
    from nbssm import models

    real = models.spec_fields

    def wrong(p, d_state, dt_rank, exp=np.exp):
        out = real(p, d_state, dt_rank, exp)
        out["conv_kernel"] = p["conv_weight"].T  # taps oldest first: the conversion's classic slip
        return out

    monkeypatch.setattr(models, "spec_fields", wrong)
    res = lm_rows.lm_checks()
    assert not _passed(res, "lm_mixer_refines_SelectiveMambaBlockSpec_via_to_spec")


def test_rms_norm_without_weight_fails_the_checkpoint_rows(monkeypatch):
    from nbssm.lm import model

    real = model.rms_norm
    monkeypatch.setattr(model, "rms_norm", lambda x, weight, eps: real(x, np.ones_like(weight), eps))
    res = lm_rows.lm_checks()
    for name in ("lm_hf_checkpoint_untied_matches_reference", "lm_mamba_ssm_checkpoint_tied_matches_reference",
                 "lm_bf16_fp16_checkpoints_converted_on_load",
                 "lm_decode_after_prefill_equals_prefill_of_longer_sequence"):
        assert not _passed(res, name), name


def test_mamba_ssm_embedding_name_not_mapped_fails(monkeypatch):
    from nbssm.lm import loading

    monkeypatch.setattr(loading, "_normal_name", lambda name: name)
    res = lm_rows.lm_checks()
    assert not _passed(res, "lm_mamba_ssm_checkpoint_tied_matches_reference")
    assert _passed(res, "lm_hf_checkpoint_untied_matches_reference")
