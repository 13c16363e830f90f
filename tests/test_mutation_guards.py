"""Guards added after the mutation test (``benchmarks/mutation.py``).

* The mutation list cannot rot: every mutant's snippet still occurs exactly once in its file.
* The refinement rows added for the mutants the first run let through can fail: each has a
  negative control (a broken kernel, patched in at the ops level) that must be refuted,
  while an unrelated row stays proved.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mutation_module():
    spec = importlib.util.spec_from_file_location("nbssm_mutation_list", os.path.join(ROOT, "benchmarks",
                                                                                       "mutation.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_snippet_occurs_exactly_once():
    mod = _mutation_module()
    assert len(mod.MUTANTS) >= 35
    assert mod.check_list(mod.MUTANTS, ROOT) == []
    files = {m["file"] for m in mod.MUTANTS}
    assert "nbssm/reference.py" not in files  # the oracle is never mutated
    for area in ("spec/", "nbssm/_kernels/", "nbssm/ops.py", "nbssm/lm/", "nbssm/models.py"):
        assert any(f.startswith(area) for f in files), area


def test_check_list_reports_a_rotten_snippet():
    mod = _mutation_module()
    bad = dict(mod.MUTANTS[0], edits=[("this text is not in the file", "x")])
    twice = dict(mod.MUTANTS[0], id="twice", edits=[("def ", "def  ")])
    problems = mod.check_list([bad, twice], ROOT)
    assert any("occurs 0 times" in p for p in problems)
    assert any("twice" in p and "times" in p for p in problems)


def _rows():
    from nbssm.verify import refinement

    return {r.name: r for r in refinement._branch_and_extreme_checks() + refinement._model_checks(0)}


def test_new_refinement_rows_are_proved():
    rows = _rows()
    for name in ("kernel_activations_refine_spec_on_both_sides_of_every_branch",
                 "chunked_scans_refine_chunked_reference_where_the_carry_re_runs",
                 "runtime_models_refine_spec_run_list", "dense_cde_kernel_refines_linear_cde_spec",
                 "signature_kernel_refines_chen_product"):
        assert rows[name].verdict == "proved", (name, rows[name].detail)


def test_activation_row_refutes_a_moved_softplus_threshold(monkeypatch):
    # control: softplus returning x above 20 (PyTorch's float32 threshold) in float64
    from nbssm import ops

    real = ops.selective_scan

    def moved(u, delta, *args, delta_softplus=False, **kwargs):
        y = real(u, delta, *args, delta_softplus=delta_softplus, **kwargs)
        if delta_softplus and y.dtype == np.float64:
            y = np.where(np.asarray(delta) > 20.0, np.asarray(delta), y)
        return y

    monkeypatch.setattr(ops, "selective_scan", moved)
    from nbssm.verify import refinement

    rows = {r.name: r for r in refinement._branch_and_extreme_checks()}
    r = rows["kernel_activations_refine_spec_on_both_sides_of_every_branch"]
    assert r.verdict == "refuted" and "float64 softplus" in r.detail


def test_activation_grid_straddles_every_branch_point():
    from nbssm.verify import refinement

    grid = refinement._activation_grid()
    for c in refinement._THRESHOLDS:
        assert (grid < c).any() and (grid > c).any()
        assert math.nextafter(c, math.inf) in grid and math.nextafter(c, -math.inf) in grid


def test_extreme_row_exercises_the_re_run():
    # the chunked reference must actually re-run a chunk on these inputs (else the row proves nothing
    # about the fallback): the carry rule rejects the first chunk's summary of channel 0
    from nbssm.spec.algorithms import ieee_carry_ok
    from nbssm.verify import refinement

    lin, _sel = refinement._extreme_inputs()
    a, b, h0 = lin["a"][0, :16, 0], lin["b"][0, :16, 0], lin["initial_state"][0, 0]
    p, q = 1.0, 0.0
    for at, bt in zip(a, b):
        p, q = at * p, at * q + bt
    assert not ieee_carry_ok(p, q, h0, p * h0 + q)


def test_model_row_refutes_a_model_that_drops_the_conv_history(monkeypatch):
    from nbssm import ops
    from nbssm.verify import refinement

    real = ops.causal_conv1d

    def forgetful(x, weight, bias=None, initial_state=None, **kwargs):
        return real(x, weight, bias, initial_state=None, **kwargs)

    monkeypatch.setattr(ops, "causal_conv1d", forgetful)
    rows = {r.name: r for r in refinement._model_checks(0)}
    r = rows["runtime_models_refine_spec_run_list"]
    assert r.verdict == "refuted" and "SelectiveMamba continued" in r.detail


@pytest.mark.parametrize("level", [3, 4])
def test_chen_reference_is_independent_and_sensitive(level):
    # the independent Chen product agrees with nbssm.signatures, and a wrong coefficient at one
    # level is far outside the row's tolerance
    from nbssm.signatures import signature
    from nbssm.tolerances import tol
    from nbssm.verify import refinement

    rng = np.random.default_rng(3)
    path = rng.standard_normal((9, 3)) * 0.5
    want, bounds = refinement._chen_signature(path, 4)
    got = signature(path, 4)
    off = sum(3 ** k for k in range(1, level))
    lv = got[off:off + 3 ** level]
    assert np.max(np.abs(lv - want[level - 1])) <= tol("signature_vs_chen_reference") * bounds[level - 1]
    assert np.max(np.abs(lv * 1.001 - want[level - 1])) > tol("signature_vs_chen_reference") * bounds[level - 1]


def test_tied_checkpoint_storing_a_different_head_is_refused(tmp_path):
    # mutant lm_tie_check_dropped: a tied config whose checkpoint stores another lm_head.weight
    # must be refused (the stored head would otherwise be silently ignored)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    import json

    from nbssm.lm import CheckpointError, MambaLM

    src = os.path.join(ROOT, "tests", "fixtures", "mamba_tiny", "tied")
    tensors = safetensors_numpy.load_file(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    embed = tensors["backbone.embeddings.weight"]
    for name, head, ok in (("same", embed.copy(), True), ("other", embed[::-1].copy(), False)):
        d = tmp_path / name
        d.mkdir()
        safetensors_numpy.save_file({**tensors, "lm_head.weight": head}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        if ok:
            model = MambaLM.from_pretrained(str(d), tokenizer=False)
            np.testing.assert_array_equal(model.head, model.embed)
        else:
            with pytest.raises(CheckpointError, match="differs from the embedding"):
                MambaLM.from_pretrained(str(d), tokenizer=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_carry_of_a_huge_state_through_an_underflowed_product_reruns(dtype):
    """A state above 2**52 entering a chunk whose transition product underflowed to 0 must not use
    the summary: the product of the state and the chunk's transitions is representable (taken
    step by step), so chunked equals sequential bitwise and the state after that chunk is not 0."""
    from nbssm import ops

    length, chunk = 64, 16
    # a**16 underflows to 0, but big * a**16 is a normal number (1e-30 / 1e-13)
    a_value, big = (10.0 ** (-330 / 16), 1e300) if dtype == np.float64 else (10.0 ** (-50 / 16), 1e37)
    a = np.full((1, length, 1), a_value, dtype)
    b = np.zeros((1, length, 1), dtype)
    b[0, chunk - 1, 0] = big  # the state entering chunk 1 is huge
    assert dtype(a_value) ** chunk == 0
    seq = ops.linear_scan(a, b, strategy="sequential")
    chk = ops.linear_scan(a, b, strategy="chunked", chunk_length=chunk)
    assert seq[0, 2 * chunk - 1, 0] != 0 and seq[0, 2 * chunk, 0] != 0
    assert np.array_equal(seq, chk)
