"""Checkpoint loading: both namings, shards, half precision, and every kind of bad file.

Each case writes a modified copy of the committed fixture into a temporary directory with
``safetensors.numpy`` and compares what ``MambaLM.from_pretrained`` makes of it with the
fixture's expected logits or with the error it must raise.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors.numpy import load_file, save_file  # noqa: E402

from nbssm.lm import CheckpointError, MambaLM, UnsupportedConfigError, parse_config  # noqa: E402
from tolerances import tol  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "mamba_tiny")
TIED = os.path.join(FIXTURE, "tied")
UNTIED = os.path.join(FIXTURE, "untied")
TOL32 = tol("lm_logits_float32_abs")


def _config(src=TIED):
    with open(os.path.join(src, "config.json")) as f:
        return json.load(f)


def _tensors(src=TIED):
    return load_file(os.path.join(src, "model.safetensors"))


def _write(directory, tensors, config, name="model.safetensors"):
    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(directory, name))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return directory


def _prompts_and_logits(src=TIED):
    exp = load_file(os.path.join(src, "expected.safetensors"))
    return exp["prompts"], exp["prefill_logits_f64"]


def _check_logits(directory, src=TIED, bound=TOL32):
    prompts, want = _prompts_and_logits(src)
    model = MambaLM.from_pretrained(directory)
    logits, _ = model.forward(prompts)
    assert np.max(np.abs(logits - want)) < bound
    return model


# ----------------------------------------------------------------------------- good files
def test_mamba_ssm_naming_and_config(tmp_path):
    """The original mamba_ssm layout: backbone.embedding.weight, d_model/n_layer/ssm_cfg config,
    lm_head.weight stored although tied, vocabulary padded to a multiple."""
    hf = _config()
    t = _tensors()
    renamed = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in t.items()}
    renamed["lm_head.weight"] = t["backbone.embeddings.weight"]
    cfg = {"d_model": hf["hidden_size"], "n_layer": hf["num_hidden_layers"], "vocab_size": hf["vocab_size"] - 5,
           "ssm_cfg": {"d_state": hf["state_size"], "d_conv": hf["conv_kernel"], "expand": hf["expand"],
                       "dt_rank": hf["time_step_rank"]},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
           "tie_embeddings": True}
    assert (hf["vocab_size"] - 5) % 8 != 0 and hf["vocab_size"] % 8 == 0
    model = _check_logits(_write(tmp_path / "m", renamed, cfg))
    assert model.config.dialect == "mamba_ssm" and model.config.vocab_size == hf["vocab_size"]


def test_sharded_checkpoint_with_index(tmp_path):
    t = _tensors(UNTIED)
    names = sorted(t)
    shards = {"model-00001-of-00003.safetensors": names[0::3], "model-00002-of-00003.safetensors": names[1::3],
              "model-00003-of-00003.safetensors": names[2::3]}
    d = tmp_path / "sharded"
    d.mkdir()
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: t[k] for k in keys}, str(d / fname))
        weight_map.update({k: fname for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(_config(UNTIED)))
    _check_logits(str(d), UNTIED)

    # a shard the index names but that is missing
    os.remove(d / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors.*missing"):
        MambaLM.from_pretrained(str(d))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_weights_are_converted_on_load(tmp_path, half):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = np.float16 if half == "float16" else ml_dtypes.bfloat16
    t = _tensors()
    halved = {k: v.astype(dt) for k, v in t.items()}
    rounded = {k: v.astype(np.float32) for k, v in halved.items()}  # the same values in float32
    m_half = MambaLM.from_pretrained(_write(tmp_path / "half", halved, _config()))
    m_f32 = MambaLM.from_pretrained(_write(tmp_path / "f32", rounded, _config()))
    prompts, want = _prompts_and_logits()
    a, _ = m_half.forward(prompts)
    b, _ = m_f32.forward(prompts)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # conversion is exact: same model bit for bit
    assert np.max(np.abs(a - want)) > 0  # and the rounding really happened


def test_float64_weights_and_float64_model(tmp_path):
    t = {k: v.astype(np.float64) for k, v in _tensors().items()}
    model = MambaLM.from_pretrained(_write(tmp_path / "f64", t, _config()), dtype=np.float64)
    prompts, want = _prompts_and_logits()
    logits, _ = model.forward(prompts)
    assert logits.dtype == np.float64 and np.max(np.abs(logits - want)) < tol("lm_logits_float64_abs")


def test_no_conv_bias_config(tmp_path):
    cfg = dict(_config(), use_conv_bias=False)
    t = {k: v for k, v in _tensors().items() if not k.endswith("conv1d.bias")}
    model = MambaLM.from_pretrained(_write(tmp_path / "nobias", t, cfg))
    assert not model.config.conv_bias and np.all(model.layers[0].conv_bias == 0)
    # and a file with conv biases that the config says do not exist
    with pytest.raises(CheckpointError, match="unexpected tensors.*conv1d.bias.*use_conv_bias=false"):
        MambaLM.from_pretrained(_write(tmp_path / "extra", _tensors(), cfg))


# ----------------------------------------------------------------------------- bad files
def test_pytorch_pickle_is_refused_with_conversion_hint(tmp_path):
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_config()))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a (harmless) pickle header
    with pytest.raises(CheckpointError, match=r"(?s)pytorch_model\.bin.*never loads.*arbitrary code.*save_file"):
        MambaLM.from_pretrained(str(d))


def test_empty_and_missing_directories(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        MambaLM.from_pretrained(str(tmp_path / "nope"))
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLM.from_pretrained(str(d))
    (d / "config.json").write_text(json.dumps(_config()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        MambaLM.from_pretrained(str(d))


def test_missing_tensor(tmp_path):
    t = _tensors()
    del t["backbone.layers.1.mixer.A_log"]
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): backbone\.layers\.1\.mixer\.A_log"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


def test_missing_untied_head(tmp_path):
    t = _tensors(UNTIED)
    del t["lm_head.weight"]
    with pytest.raises(CheckpointError, match="missing tensors.*lm_head.weight"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config(UNTIED)))


def test_unexpected_tensor(tmp_path):
    t = _tensors()
    t["backbone.layers.0.mixer.in_proj.bias"] = np.zeros(128, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): backbone\.layers\.0\.mixer\.in_proj\.bias"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


def test_extra_layer_is_unexpected(tmp_path):
    t = _tensors()
    for k in list(t):
        if k.startswith("backbone.layers.1."):
            t[k.replace("layers.1.", "layers.2.")] = t[k]
    with pytest.raises(CheckpointError, match="more layers than the config's 2"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


def test_misshaped_tensor(tmp_path):
    t = _tensors()
    t["backbone.layers.0.mixer.x_proj.weight"] = t["backbone.layers.0.mixer.x_proj.weight"][:-1]
    with pytest.raises(CheckpointError, match=r"wrong shape.*x_proj\.weight: expected \(20, 64\), found \(19, 64\)"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


def test_config_that_disagrees_with_tensors(tmp_path):
    cfg = dict(_config(), state_size=4)
    with pytest.raises(CheckpointError, match="wrong shape.*A_log: expected \\(64, 4\\), found \\(64, 8\\)"):
        MambaLM.from_pretrained(_write(tmp_path / "m", _tensors(), cfg))


def test_non_finite_tensor(tmp_path):
    t = _tensors()
    t["backbone.layers.0.mixer.D"] = t["backbone.layers.0.mixer.D"].copy()
    t["backbone.layers.0.mixer.D"][3] = np.nan
    with pytest.raises(CheckpointError, match="mixer.D.*NaN or Inf"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


def test_integer_tensor(tmp_path):
    t = _tensors()
    t["backbone.norm_f.weight"] = np.ones(32, np.int32)
    with pytest.raises(CheckpointError, match="norm_f.weight.*dtype I32"):
        MambaLM.from_pretrained(_write(tmp_path / "m", t, _config()))


@pytest.mark.parametrize("keep", [0, 5, 100, -1000, -4])
def test_truncated_file(tmp_path, keep):
    d = tmp_path / "trunc"
    shutil.copytree(TIED, d)
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CheckpointError, match="truncated"):
        MambaLM.from_pretrained(str(d))


def test_file_shrinking_while_read_in_parallel(tmp_path, monkeypatch):
    """A file cut short after its header was validated (changed while loading): the thread that
    reads past the end raises the loader's error, not a partial model."""
    from nbssm.lm import loading

    monkeypatch.setattr(loading, "_PARALLEL_READ_BYTES", 0)
    monkeypatch.setattr("nbssm.threads._affinity", lambda: 2)
    d = tmp_path / "shrinks"
    shutil.copytree(TIED, d)
    path = d / "model.safetensors"
    real = loading.read_headers

    def headers_then_cut(directory):
        got = real(directory)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - 64])
        return got

    monkeypatch.setattr(loading, "read_headers", headers_then_cut)
    with pytest.raises(CheckpointError, match="truncated"):
        MambaLM.from_pretrained(str(d))


def test_garbage_header(tmp_path):
    d = tmp_path / "garbage"
    shutil.copytree(TIED, d)
    data = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    (d / "model.safetensors").write_bytes(data[:8] + b"{" * n + data[8 + n:])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MambaLM.from_pretrained(str(d))


def test_bad_index_file(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_config()))
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        MambaLM.from_pretrained(str(d))


def test_bad_config_json(tmp_path):
    d = tmp_path / "cfg"
    shutil.copytree(TIED, d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedConfigError, match="not valid JSON"):
        MambaLM.from_pretrained(str(d))


@pytest.mark.parametrize("change,match", [
    ({"use_bias": True}, "use_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "mamba2"}, "model_type 'mamba2'"),
    ({"model_type": "falcon_mamba"}, "model_type 'falcon_mamba'"),
    ({"hidden_size": "32"}, "hidden_size.*integer"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
    ({"state_size": 0}, "d_state must be a positive integer"),
])
def test_unsupported_hf_configs(change, match):
    cfg = dict(_config(), **change)
    with pytest.raises(UnsupportedConfigError, match=match):
        parse_config(cfg)


@pytest.mark.parametrize("change,match", [
    ({"ssm_cfg": {"layer": "Mamba2"}}, "Mamba2"),
    ({"attn_layer_idx": [1]}, "attention"),
    ({"d_intermediate": 128}, "MLP"),
    ({"rms_norm": False}, "LayerNorm"),
    ({"ssm_cfg": {"bias": True}}, "bias=true"),
])
def test_unsupported_mamba_ssm_configs(change, match):
    cfg = dict({"d_model": 32, "n_layer": 2, "vocab_size": 96}, **change)
    with pytest.raises(UnsupportedConfigError, match=match):
        parse_config(cfg)


def test_hf_config_defaults():
    c = parse_config({"hidden_size": 40, "num_hidden_layers": 3, "vocab_size": 10})
    assert (c.d_inner, c.dt_rank, c.d_state, c.d_conv, c.tie_embeddings, c.conv_bias) == (80, 3, 16, 4, True, True)


# ------------------------------------------------------- per-layer tensors read in place
@pytest.mark.parametrize("threads", [1, 2, 3], ids=["serial", "2-threads", "3-threads"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loaded_tensors_equal_safetensors_own_reader(tmp_path, dtype, threads, monkeypatch):
    """Per-layer tensors are read straight into one (layers, ...) buffer per family (float32:
    the stored bytes; float64: converted into it); every tensor still equals what safetensors
    itself reads, in sharded files too (families split across shards), read by one thread or
    by several (groups of tensors, each thread with its own file handles)."""
    from nbssm.lm import loading
    from nbssm.lm.loading import load_checkpoint

    monkeypatch.setattr(loading, "_PARALLEL_READ_BYTES", 0 if threads > 1 else 1 << 62)
    monkeypatch.setattr(loading, "_READ_THREADS", threads)
    monkeypatch.setattr("nbssm._config.affinity", lambda: 8)

    t = _tensors(UNTIED)
    names = sorted(t)
    d = tmp_path / "sharded"
    d.mkdir()
    weight_map = {}
    for k, fname in enumerate(["a.safetensors", "b.safetensors"]):
        save_file({n: t[n] for n in names[k::2]}, str(d / fname))
        weight_map.update({n: fname for n in names[k::2]})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(_config(UNTIED)))
    _, got = load_checkpoint(str(d), dtype)
    assert set(got) == set(t)
    stored_order = [n for n in names[0::2]] + [n for n in names[1::2]]
    assert [n for n in got if n in t] == [n for n in stored_order if n in got]  # the files' order, not the threads'
    for n in t:
        assert got[n].dtype == dtype and np.array_equal(got[n], t[n].astype(dtype)), n
    layered = [n for n in t if ".layers." in n]
    assert layered and all(got[n].base is not None for n in layered)  # rows of a family buffer
    model = MambaLM(MambaLM.from_pretrained(str(d)).config, got, dtype)
    stacked = model.parameters()
    for n in layered:
        prefix, rest = n.split(".layers.", 1)
        i, suffix = rest.split(".", 1)
        want = t[n].astype(dtype)
        have = np.asarray(stacked[suffix])[int(i)]
        assert np.array_equal(have.reshape(want.shape), want), n


def test_a_callers_own_stacked_buffer_is_copied():
    """Tensors that happen to be rows of the caller's own array are copied into the model:
    the caller's array stays writable and later writes to it do not reach the model."""
    t = _tensors(UNTIED)
    cfg = MambaLM.from_pretrained(UNTIED).config
    key = "mixer.in_proj.weight"
    names = [f"backbone.layers.{i}.{key}" for i in range(cfg.n_layer)]
    mine = np.stack([t[n] for n in names])
    for i, n in enumerate(names):
        t[n] = mine[i]
    model = MambaLM(cfg, t, np.float32)
    before = np.asarray(model.parameters()[key]).copy()
    assert mine.flags.writeable
    mine += 1.0
    assert np.array_equal(np.asarray(model.parameters()[key]), before)


def test_finite_check_survives_an_overflowing_sum():
    from nbssm.lm.loading import _all_finite

    big = np.full(16, 3e38, np.float32)  # finite, but the sum overflows to inf
    assert _all_finite(big)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(1000, np.float32)
        x[617] = bad
        assert not _all_finite(x)
    assert _all_finite(np.zeros(0, np.float32))


# --------------------------------------------------------------------------- prefetch
# `nbssm generate` reads its checkpoint in a thread while it imports the kernels' modules
# (nbssm.lm.loading.prefetch_checkpoint); the load then takes that result.


def test_prefetched_checkpoint_is_taken_once_with_the_same_tensors(tmp_path):
    from nbssm.lm import loading

    d = _write(str(tmp_path / "m"), _tensors(), _config())
    _, want = loading.load_checkpoint(d, np.float32)
    assert loading.prefetch_checkpoint(d, np.float32)
    assert not loading.prefetch_checkpoint(d, np.float32)  # one pending per (directory, dtype, keep)
    pending = loading._prefetched[loading._prefetch_key(d, np.float32, None)]
    _, got = loading.load_checkpoint(d, np.float32)
    assert got is pending[2]["result"][1]  # the prefetched result itself, not a second read
    assert not loading._prefetched
    assert list(got) == list(want) and all(np.array_equal(got[n], want[n]) for n in want)
    _, again = loading.load_checkpoint(d, np.float32)  # taken once: this call reads
    assert again is not got and all(np.array_equal(again[n], want[n]) for n in want)


def test_prefetch_of_other_arguments_or_changed_files_is_not_used(tmp_path):
    from nbssm.lm import loading

    t = _tensors()
    d = _write(str(tmp_path / "m"), t, _config())
    assert loading.prefetch_checkpoint(d, np.float64)
    _, got = loading.load_checkpoint(d, np.float32)  # another dtype: read, the float64 prefetch stays
    assert all(v.dtype == np.float32 for v in got.values())
    assert len(loading._prefetched) == 1
    _, got64 = loading.load_checkpoint(d, np.float64)
    assert not loading._prefetched and all(v.dtype == np.float64 for v in got64.values())

    assert loading.prefetch_checkpoint(d, np.float32)
    loading._prefetched[loading._prefetch_key(d, np.float32, None)][1].join()
    name = next(n for n in t if n.endswith("embeddings.weight"))
    t2 = dict(t, **{name: t[name] + 1})
    path = os.path.join(d, "model.safetensors")
    before = os.stat(path).st_mtime_ns
    _write(d, t2, _config())  # rewritten after the prefetch read it: the load reads again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, max(st.st_mtime_ns, before + 1)))  # a coarse clock may repeat
    _, got = loading.load_checkpoint(d, np.float32)
    assert np.array_equal(got[name], t2[name].astype(np.float32))


def test_failed_prefetch_lets_the_load_raise_its_own_error(tmp_path):
    from nbssm.lm import loading

    t = _tensors()
    name = next(n for n in t if n.endswith("A_log"))
    t[name] = t[name].copy()
    t[name].flat[0] = np.nan
    d = _write(str(tmp_path / "m"), t, _config())
    assert loading.prefetch_checkpoint(d, np.float32)
    with pytest.raises(CheckpointError, match="non-finite|NaN"):
        loading.load_checkpoint(d, np.float32)
    assert not loading._prefetched
    assert not loading.prefetch_checkpoint(str(tmp_path / "absent"), np.float32)  # nothing to list: not started


def test_generate_starts_the_prefetch_before_importing_numba(tmp_path):
    """`nbssm generate` looks at its arguments before Numba is imported and starts the read;
    arguments it cannot parse, a directory without config.json, --help: nothing started."""
    import subprocess
    import sys

    d = _write(str(tmp_path / "m"), _tensors(), _config())
    probe = (
        f"D = {d!r}\n"
        "import sys\n"
        "import nbssm.cli, nbssm.lm.cli, nbssm.lm.loading as L\n"
        "assert 'numba' not in sys.modules, 'numba imported by the command line modules'\n"
        "started = []\n"
        "L.prefetch_checkpoint = lambda *a, **k: started.append((a, k)) or True\n"
        "for argv in ([D, '--ids', '1,2', '--threads', '1'], ['--weights', 'bf16', D, '--ids', '1'],\n"
        "             [D, '--ids', '1', '--dtype', 'float64', '--weights', 'bf16'], [D + '/none', '--ids', '1'],\n"
        "             ['--ids', '1'], [D, '--max-new-tokens', 'x', '--ids', '1']):\n"
        "    nbssm.lm.cli.start_early(argv)\n"
        "print(started)\n"
        "assert 'numba' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([((d, "float32"), {"keep": None}), ((d, "float32"), {"keep": "bf16"})])
