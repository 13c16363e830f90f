"""Malformed and malicious checkpoint files: configs, safetensors headers, shards, pickles,
tokenizers, huge declared sizes.

Every case is a modified copy of the committed tiny checkpoint in ``tmp_path``. Each must end
in the documented error naming the file (``CheckpointError`` / ``UnsupportedConfigError``, both
``ValueError``), or load correctly; never a crash, a hang, an unbounded allocation or a
silently wrong model. Cases that could allocate without bound run in a child process with
``RLIMIT_AS`` capped a few hundred MiB above its start-up address space.
"""

from __future__ import annotations

import json
import os
import pickle
import time

import numpy as np
import pytest

pytest.importorskip("safetensors")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from nbssm.lm import CheckpointError, MambaLM, UnsupportedConfigError, parse_config  # noqa: E402
from nbssm.lm.config import MAX_DIM  # noqa: E402
from nbssm.lm.config import read_config as nb_read_config
from nbssm.lm.loading import load_checkpoint, read_safetensors_header  # noqa: E402
from reliability_files import (  # noqa: E402
    TIED,
    UNTIED,
    copy_checkpoint,
    join_file,
    load_in_child,
    read_config,
    split_file,
    tensor_spans,
    write_config,
)

FILE_ERRORS = (CheckpointError, UnsupportedConfigError)


def _prompts_and_logits(src=TIED):
    exp = load_file(os.path.join(src, "expected.safetensors"))
    return exp["prompts"], exp["prefill_logits_f64"]


# ============================================================================ config.json
class TestConfigTypes:
    """Every field nbssm reads is type-checked: no truthy strings, no float dimensions."""

    @pytest.mark.parametrize("field,value", [
        ("tie_word_embeddings", "false"), ("tie_word_embeddings", "true"), ("tie_word_embeddings", 0),
        ("tie_word_embeddings", 1), ("tie_word_embeddings", []), ("use_conv_bias", "false"),
        ("use_conv_bias", 0), ("use_bias", "false"), ("use_bias", 0),
    ])
    def test_booleans_must_be_json_booleans(self, tmp_path, field, value):
        d = copy_checkpoint(tmp_path / "m")
        write_config(d, dict(read_config(), **{field: value}))
        with pytest.raises(UnsupportedConfigError, match=rf"config\.json: field '{field}': expected true or false"):
            MambaLM.from_pretrained(d)

    def test_string_false_is_not_true(self, tmp_path):
        """The untied fixture with the string "false" must not load as a tied model."""
        d = copy_checkpoint(tmp_path / "m", UNTIED)
        write_config(d, dict(read_config(UNTIED), tie_word_embeddings="false"))
        with pytest.raises(UnsupportedConfigError, match="tie_word_embeddings"):
            load_checkpoint(d)

    @pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "state_size",
                                       "conv_kernel", "intermediate_size", "time_step_rank"])
    @pytest.mark.parametrize("value", [1e8, 2.0, "2", True, False, [2], {"v": 2}])
    def test_integers_must_be_json_integers(self, field, value):
        with pytest.raises(UnsupportedConfigError, match=rf"field '{field}': expected an integer"):
            parse_config(dict(read_config(), **{field: value}), where="x/config.json")

    @pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
    @pytest.mark.parametrize("value", [-1, MAX_DIM + 1, 2**64, 10**40])
    def test_integers_out_of_range(self, field, value):
        with pytest.raises(UnsupportedConfigError, match=rf"field '{field}'|{field}"):
            parse_config(dict(read_config(), **{field: value}))

    @pytest.mark.parametrize("change,match", [
        ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": -1.0}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": True}, "layer_norm_epsilon"),
        ({"model_type": 3}, "model_type.*expected a string"),
        ({"hidden_act": None, "model_type": ["mamba"]}, "model_type.*expected a string"),
        ({"hidden_act": 1}, "hidden_act.*expected a string"),
        ({"eos_token_id": "1"}, "eos_token_id"),
        ({"eos_token_id": 1.0}, "eos_token_id"),
        ({"eos_token_id": [1, "2"]}, "eos_token_id"),
        ({"pad_token_id": -3}, "pad_token_id"),
        ({"bos_token_id": True}, "bos_token_id"),
        ({"expand": "2", "intermediate_size": None}, "expand"),
        ({"expand": 1e300, "intermediate_size": None}, "expand"),
        ({"expand": -2, "intermediate_size": None}, "expand"),
    ])
    def test_other_fields(self, change, match):
        with pytest.raises(UnsupportedConfigError, match=match):
            parse_config(dict(read_config(), **change))

    @pytest.mark.parametrize("change,match", [
        ({"tie_embeddings": "false"}, "tie_embeddings"),
        ({"ssm_cfg": [1]}, "ssm_cfg"),
        ({"ssm_cfg": {"d_state": 8.0}}, "d_state"),
        ({"ssm_cfg": {"conv_bias": "yes"}}, "conv_bias"),
        ({"ssm_cfg": {"layer": 2}}, "layer"),
        ({"ssm_cfg": {"expand": 10**400}}, "expand"),
        ({"rms_norm": "true"}, "rms_norm"),
        ({"pad_vocab_size_multiple": 8.0}, "pad_vocab_size_multiple"),
        ({"attn_layer_idx": "1"}, "attn_layer_idx"),
        ({"d_intermediate": "0"}, "d_intermediate"),
        ({"n_layer": 1e8}, "n_layer"),
        ({"vocab_size": MAX_DIM, "pad_vocab_size_multiple": 1024}, "vocab_size"),
    ])
    def test_mamba_ssm_fields(self, change, match):
        with pytest.raises(UnsupportedConfigError, match=match):
            parse_config(dict({"d_model": 32, "n_layer": 2, "vocab_size": 96}, **change))

    def test_null_counts_as_absent(self):
        c = parse_config(dict(read_config(), pad_token_id=None, state_size=None, use_conv_bias=None))
        assert (c.pad_token_id, c.d_state, c.conv_bias) == (None, 16, True)

    @given(st.sampled_from(["hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel",
                            "intermediate_size", "time_step_rank", "expand", "tie_word_embeddings",
                            "use_conv_bias", "use_bias", "layer_norm_epsilon", "eos_token_id", "model_type",
                            "hidden_act"]),
           st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                        max_leaves=6))
    @settings(max_examples=300, deadline=None)
    def test_any_json_value_in_any_field(self, field, value):
        """Whatever JSON value a field holds: a config or UnsupportedConfigError, nothing else."""
        try:
            c = parse_config(dict(read_config(), **{field: value}))
        except UnsupportedConfigError as exc:
            assert field in str(exc) or "config" in str(exc)
            return
        assert isinstance(c.tie_embeddings, bool) and isinstance(c.conv_bias, bool)
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "d_inner", "dt_rank"):
            v = getattr(c, name)
            assert type(v) is int and 1 <= v <= MAX_DIM


class TestConfigFiles:
    @pytest.mark.parametrize("text,match", [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        ("[1, 2]", "expected a JSON object"),
        ('"mamba"', "expected a JSON object"),
        ("", "not valid JSON"),
        ('{"hidden_size": 32, "hidden_size": 64}', "duplicate key 'hidden_size'"),
        ('{"layer_norm_epsilon": NaN}', "NaN"),
        ('{"layer_norm_epsilon": Infinity}', "Infinity"),
        ('{"vocab_size": ' + "9" * 5000 + "}", "not valid JSON"),
    ])
    def test_malformed_json(self, tmp_path, text, match):
        d = copy_checkpoint(tmp_path / "m")
        write_config(d, text)
        with pytest.raises(UnsupportedConfigError, match=match) as exc:
            MambaLM.from_pretrained(d)
        assert "config.json" in str(exc.value)

    def test_invalid_utf8(self, tmp_path):
        d = copy_checkpoint(tmp_path / "m")
        with open(os.path.join(d, "config.json"), "wb") as f:
            f.write(b'{"hidden_size": "\xff\xfe"}')
        with pytest.raises(UnsupportedConfigError, match="config.json.*not UTF-8"):
            MambaLM.from_pretrained(d)

    def test_huge_config_file_is_not_read(self, tmp_path):
        d = copy_checkpoint(tmp_path / "m")
        with open(os.path.join(d, "config.json"), "wb") as f:
            f.truncate(2**40)  # sparse: 1 TiB declared, nothing on disk
        t0 = time.perf_counter()
        with pytest.raises(UnsupportedConfigError, match=r"config\.json: expected a config\.json of at most"):
            nb_read_config(d)
        assert time.perf_counter() - t0 < 1.0

    def test_config_that_is_not_a_file(self, tmp_path):
        d = copy_checkpoint(tmp_path / "m")
        os.remove(os.path.join(d, "config.json"))
        os.mkdir(os.path.join(d, "config.json"))
        with pytest.raises(FileNotFoundError, match="no config.json"):
            MambaLM.from_pretrained(d)
        os.rmdir(os.path.join(d, "config.json"))
        os.mkfifo(os.path.join(d, "config.json"))  # never opened: reading a FIFO would hang
        with pytest.raises(FileNotFoundError, match="no config.json"):
            MambaLM.from_pretrained(d)


# ============================================================================ config vs tensors
class TestDeclaredSizes:
    """A config edit that declares huge dimensions is refused from the headers, in milliseconds,
    with bounded memory."""

    CASES = [
        {"num_hidden_layers": 10**8}, {"num_hidden_layers": MAX_DIM}, {"hidden_size": MAX_DIM},
        {"vocab_size": MAX_DIM}, {"state_size": MAX_DIM}, {"intermediate_size": MAX_DIM},
        {"conv_kernel": MAX_DIM}, {"time_step_rank": MAX_DIM}, {"state_size": 32768},
        {"hidden_size": 2**20, "intermediate_size": 2**21, "vocab_size": 2**20},
    ]

    @pytest.mark.parametrize("change", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
    def test_refused_quickly_in_process(self, tmp_path, change):
        d = copy_checkpoint(tmp_path / "m")
        write_config(d, dict(read_config(), **change))
        t0 = time.perf_counter()
        with pytest.raises(CheckpointError, match="does not match its config.json"):
            load_checkpoint(d)
        assert time.perf_counter() - t0 < 2.0  # milliseconds on a quiet machine

    def test_refused_with_bounded_memory(self, tmp_path):
        dirs = []
        for i, change in enumerate(self.CASES):
            d = copy_checkpoint(tmp_path / f"m{i}")
            write_config(d, dict(read_config(), **change))
            dirs.append(d)
        results = load_in_child(dirs, limit_mib=256)
        for change, (kind, message, seconds) in zip(self.CASES, results):
            assert kind == "CheckpointError", (change, kind, message)
            assert "does not match its config.json" in message

    def test_layer_count_names_both_numbers(self, tmp_path):
        d = copy_checkpoint(tmp_path / "m")
        write_config(d, dict(read_config(), num_hidden_layers=10**8))
        with pytest.raises(CheckpointError, match=r"n_layer=100000000 .* hold 2 layer"):
            load_checkpoint(d)


def _big_state_checkpoint(directory, n_state: int) -> str:
    t = load_file(os.path.join(TIED, "model.safetensors"))
    rng = np.random.default_rng(0)
    for i in range(2):
        p = f"backbone.layers.{i}.mixer."
        t[p + "x_proj.weight"] = (rng.standard_normal((4 + 2 * n_state, 64)) * 0.01).astype(np.float32)
        t[p + "A_log"] = np.log(np.tile(np.arange(1, n_state + 1, dtype=np.float32), (64, 1)))
    os.makedirs(directory, exist_ok=True)
    save_file(t, os.path.join(directory, "model.safetensors"))
    write_config(directory, dict(read_config(), state_size=n_state))
    return str(directory)


def test_large_state_size_checkpoint_loads(tmp_path):
    """A consistent checkpoint with state_size=32768 (about 50 MB) loads, within memory bounds."""
    d = _big_state_checkpoint(tmp_path / "big", 32768)
    [(kind, message, _)] = load_in_child([d], limit_mib=1024)
    assert kind == "ok", message


def test_large_state_size_checkpoint_generates_without_crashing(tmp_path):
    import subprocess
    import sys

    d = _big_state_checkpoint(tmp_path / "big", 32768)
    proc = subprocess.run([sys.executable, "-m", "nbssm.cli", "generate", d, "--ids", "1,2,3", "-n", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1, 2), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ============================================================================ safetensors headers
def _rewrite(tmp_path, mutate, src=TIED):
    """A checkpoint whose model.safetensors header went through ``mutate(header, data) -> (header, data)``."""
    d = copy_checkpoint(tmp_path / "m", src)
    path = os.path.join(d, "model.safetensors")
    header, data = split_file(path)
    header, data = mutate(header, data)
    join_file(path, header, data)
    return d


def _entry(header, name="backbone.layers.0.mixer.D"):
    return header[name]


def _set(name, **fields):
    def mutate(h, data):
        h[name].update(fields)
        return h, data
    return mutate


D0 = "backbone.layers.0.mixer.D"         # 64 float32: 256 bytes
D1 = "backbone.layers.1.mixer.D"


def _swap_offsets(h, data):
    h[D0]["data_offsets"], h[D1]["data_offsets"] = h[D1]["data_offsets"], h[D0]["data_offsets"]
    return h, data  # a valid file with two tensors exchanged: loads, but differently


def _overlap(h, data):
    h[D1]["data_offsets"] = list(h[D0]["data_offsets"])
    return h, data


def _past_end(h, data):
    n = len(data)
    h[D0]["data_offsets"] = [n, n + 256]
    return h, data


def _gap(h, data):
    spans = tensor_spans(h)
    begin, end, name = spans[-1]
    h[name]["data_offsets"] = [begin + 4, end + 4]
    return h, data + b"\0" * 4


def _trailing(h, data):
    return h, data + b"\0" * 16


def _dup_names(h, data):
    return h, data


HEADER_CASES = {
    "negative begin": (_set(D0, data_offsets=[-256, 0]), "data_offsets"),
    "begin after end": (lambda h, d: (h.__setitem__(D0, dict(h[D0], data_offsets=h[D0]["data_offsets"][::-1])) or h, d),
                        "data_offsets"),
    "float offsets": (lambda h, d: (h[D0].update(data_offsets=[float(x) for x in h[D0]["data_offsets"]]) or h, d),
                      "data_offsets"),
    "bool offsets": (_set(D0, data_offsets=[False, True]), "data_offsets"),
    "three offsets": (lambda h, d: (h[D0].update(data_offsets=h[D0]["data_offsets"] + [0]) or h, d), "data_offsets"),
    "string offsets": (_set(D0, data_offsets="0,256"), "data_offsets"),
    "offsets past the end": (_past_end, "truncated"),
    "overlapping": (_overlap, "overlaps|belong to no tensor"),
    "gap": (_gap, "belong to no tensor"),
    "trailing bytes": (_trailing, "belong to no tensor"),
    "unknown dtype": (_set(D0, dtype="F33"), "unknown dtype"),
    "lower-case dtype": (_set(D0, dtype="f32"), "unknown dtype"),
    "dtype number": (_set(D0, dtype=4), "unknown dtype"),
    "integer dtype": (_set(D0, dtype="I32"), "dtype I32"),
    "dtype width lies": (_set(D0, dtype="F64"), "needs 512 bytes"),
    "shape too small": (_set(D0, shape=[32]), "needs 128 bytes"),
    "shape negative": (_set(D0, shape=[-64]), "shape"),
    "shape float": (_set(D0, shape=[64.0]), "shape"),
    "shape bool": (_set(D0, shape=[True] * 64), "shape"),
    "shape nested": (_set(D0, shape=[[64]]), "shape"),
    "shape string": (_set(D0, shape="64"), "shape"),
    "shape huge": (_set(D0, shape=[2**62, 2**62]), "needs"),
    "shape huge with matching offsets": (_set(D0, shape=[2**40, 2**20], data_offsets=[0, 2**62]), "truncated"),
    "too many dims": (_set(D0, shape=[1] * 17 + [64]), "shape"),
    "missing dtype": (lambda h, d: (h[D0].pop("dtype") and h, d), "expected an object"),
    "extra key": (_set(D0, extra=1), "expected an object"),
    "entry not an object": (lambda h, d: (h.__setitem__(D0, [1, 2]) or h, d), "expected an object"),
    "metadata not an object": (lambda h, d: (h.__setitem__("__metadata__", "pt") or h, d), "__metadata__"),
    "header a list": (lambda h, d: ([1, 2], d), "expected a JSON object"),
    "empty header": (lambda h, d: ({}, d), "belong to no tensor"),
}


class TestSafetensorsHeaders:
    @pytest.mark.parametrize("case", list(HEADER_CASES))
    def test_lying_header(self, tmp_path, case):
        mutate, match = HEADER_CASES[case]
        d = _rewrite(tmp_path, mutate)
        with pytest.raises(CheckpointError, match=match) as exc:
            load_checkpoint(d)
        assert "model.safetensors" in str(exc.value)

    def test_lying_headers_in_bounded_memory(self, tmp_path):
        dirs = []
        for i, (mutate, _) in enumerate(HEADER_CASES.values()):
            dirs.append(_rewrite(tmp_path / str(i), mutate))
        for case, (kind, message, _) in zip(HEADER_CASES, load_in_child(dirs, limit_mib=256)):
            assert kind == "CheckpointError", (case, kind, message)

    def test_a_valid_permutation_is_still_a_valid_file(self, tmp_path):
        """Exchanging two equal-sized tensors' offsets makes a valid (other) model: it loads,
        and the tensors are the exchanged ones."""
        d = _rewrite(tmp_path, _swap_offsets)
        _, t = load_checkpoint(d)
        ref = load_file(os.path.join(TIED, "model.safetensors"))
        np.testing.assert_array_equal(t[D0], ref[D1])

    def test_duplicate_tensor_names(self, tmp_path):
        d = copy_checkpoint(tmp_path / "m")
        path = os.path.join(d, "model.safetensors")
        header, data = split_file(path)
        text = json.dumps(header)
        entry = json.dumps({D0: header[D0]})[1:-1]
        join_file(path, None, data, header_bytes=(text[:-1] + ", " + entry + "}").encode())
        with pytest.raises(CheckpointError, match=f"duplicate key '{D0}'"):
            load_checkpoint(d)

    @pytest.mark.parametrize("length", [0, 1, 7, 2**63, 2**64 - 1, 100_000_001])
    def test_header_length_lies(self, tmp_path, length):
        d = copy_checkpoint(tmp_path / "m")
        path = os.path.join(d, "model.safetensors")
        header, data = split_file(path)
        join_file(path, header, data, length=length)
        with pytest.raises(CheckpointError, match="model.safetensors"):
            load_checkpoint(d)

    @pytest.mark.parametrize("raw", [b"\xff" * 64, b"[" * 50_000 + b"]" * 50_000, b'{"a": NaN}', b"   "])
    def test_header_not_json(self, tmp_path, raw):
        d = copy_checkpoint(tmp_path / "m")
        path = os.path.join(d, "model.safetensors")
        _, data = split_file(path)
        join_file(path, None, data, header_bytes=raw)
        with pytest.raises(CheckpointError, match="not valid JSON"):
            load_checkpoint(d)

    @given(st.data())
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    def test_random_byte_corruption(self, tmp_path_factory, data):
        """Overwrite, insert or cut bytes anywhere: the file loads (then gives finite logits of the
        right shape) or is refused with CheckpointError; nothing else."""
        d = copy_checkpoint(tmp_path_factory.mktemp("c"))
        path = os.path.join(d, "model.safetensors")
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        (n,) = np.frombuffer(bytes(raw[:8]), "<u8")
        where = data.draw(st.sampled_from(["length", "header", "data", "anywhere"]))
        lo, hi = {"length": (0, 8), "header": (8, 8 + int(n)), "data": (8 + int(n), len(raw)),
                  "anywhere": (0, len(raw))}[where]
        pos = data.draw(st.integers(lo, hi - 1))
        op = data.draw(st.sampled_from(["set", "insert", "cut"]))
        byte = data.draw(st.integers(0, 255))
        if op == "set":
            raw[pos] = byte
        elif op == "insert":
            raw[pos:pos] = bytes([byte])
        else:
            del raw[pos:pos + data.draw(st.integers(1, 64))]
        with open(path, "wb") as f:
            f.write(bytes(raw))
        try:
            model = MambaLM.from_pretrained(d)
        except (CheckpointError, UnsupportedConfigError):
            return
        prompts, _ = _prompts_and_logits()
        with np.errstate(all="ignore"):
            logits, _ = model.forward(prompts)
        assert logits.shape == (*prompts.shape, 96)


# ============================================================================ shards and index
def _sharded(tmp_path, src=UNTIED, nshards=3):
    t = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(t)
    d = tmp_path / "sharded"
    d.mkdir()
    weight_map = {}
    for i in range(nshards):
        fname = f"model-{i + 1:05d}-of-{nshards:05d}.safetensors"
        keys = names[i::nshards]
        save_file({k: t[k] for k in keys}, str(d / fname))
        weight_map.update({k: fname for k in keys})
    write_config(d, read_config(src))
    return d, weight_map


def _write_index(d, weight_map, raw=None):
    (d / "model.safetensors.index.json").write_text(raw if raw is not None else
                                                    json.dumps({"metadata": {}, "weight_map": weight_map}))


class TestShards:
    def test_valid_shards_load(self, tmp_path):
        d, wm = _sharded(tmp_path)
        _write_index(d, wm)
        _, t = load_checkpoint(str(d))
        assert len(t) == len(wm)

    @pytest.mark.parametrize("shard", ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x.safetensors",
                                       "..", ".", "", "a\\b.safetensors", "x\0.safetensors", 3, None, ["a"]])
    def test_path_traversal_and_bad_names(self, tmp_path, shard):
        d, wm = _sharded(tmp_path)
        wm[next(iter(wm))] = shard
        _write_index(d, wm)
        with pytest.raises(CheckpointError, match="index.json: tensor .* invalid shard file name"):
            load_checkpoint(str(d))

    def test_index_naming_a_pickle_shard(self, tmp_path):
        d, wm = _sharded(tmp_path)
        wm[next(iter(wm))] = "pytorch_model-00001-of-00002.bin"
        _write_index(d, wm)
        with pytest.raises(CheckpointError, match="pickle.*never loads"):
            load_checkpoint(str(d))

    def test_missing_shard(self, tmp_path):
        d, wm = _sharded(tmp_path)
        _write_index(d, wm)
        os.remove(d / "model-00002-of-00003.safetensors")
        with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors.*is missing"):
            load_checkpoint(str(d))

    def test_index_names_a_tensor_the_shard_lacks(self, tmp_path):
        d, wm = _sharded(tmp_path)
        wm["backbone.layers.9.mixer.D"] = "model-00001-of-00003.safetensors"
        _write_index(d, wm)
        with pytest.raises(CheckpointError, match="00001-of-00003.safetensors: the index lists tensors this shard does not hold"):
            load_checkpoint(str(d))

    def test_shard_holds_a_tensor_the_index_omits(self, tmp_path):
        d, wm = _sharded(tmp_path)
        wm.pop(sorted(wm)[0])
        _write_index(d, wm)
        with pytest.raises(CheckpointError, match="shard holds tensors the index does not list"):
            load_checkpoint(str(d))

    def test_tensor_in_two_shards(self, tmp_path):
        d, wm = _sharded(tmp_path)
        t = load_file(str(d / "model-00001-of-00003.safetensors"))
        t2 = load_file(str(d / "model-00002-of-00003.safetensors"))
        name = sorted(t)[0]
        t2[name] = t[name]
        save_file(t2, str(d / "model-00002-of-00003.safetensors"))
        # the index can map each name once only: the second shard now holds an unlisted tensor
        _write_index(d, wm)
        with pytest.raises(CheckpointError, match="does not list|more than one file"):
            load_checkpoint(str(d))

    def test_unlisted_extra_shard_files_are_ignored(self, tmp_path):
        d, wm = _sharded(tmp_path)
        _write_index(d, wm)
        (d / "model-00009-of-00009.safetensors").write_bytes(b"junk")
        load_checkpoint(str(d))

    @pytest.mark.parametrize("raw,match", [
        ("[1, 2]", "not a safetensors index"),
        ('{"weight_map": []}', "not a safetensors index"),
        ('{"weight_map": {}}', "not a safetensors index"),
        ('{"metadata": {}}', "not a safetensors index"),
        ("{", "not valid JSON"),
        ("[" * 100_000, "nested too deeply|not valid JSON"),
        ('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}', "duplicate key"),
    ])
    def test_bad_index(self, tmp_path, raw, match):
        d, wm = _sharded(tmp_path)
        _write_index(d, wm, raw)
        with pytest.raises(CheckpointError, match=match) as exc:
            load_checkpoint(str(d))
        assert "model.safetensors.index.json" in str(exc.value)

    def test_huge_index_is_not_read(self, tmp_path):
        d, wm = _sharded(tmp_path)
        with open(d / "model.safetensors.index.json", "wb") as f:
            f.truncate(2**40)
        with pytest.raises(CheckpointError, match="index.json: expected a safetensors index of at most"):
            load_checkpoint(str(d))

    def test_lying_shard_header(self, tmp_path):
        d, wm = _sharded(tmp_path)
        _write_index(d, wm)
        path = str(d / "model-00003-of-00003.safetensors")
        header, data = split_file(path)
        join_file(path, header, data[:-10])
        with pytest.raises(CheckpointError, match="00003-of-00003.safetensors: truncated"):
            load_checkpoint(str(d))


# ============================================================================ pickles
class _Trap:
    """Unpickling this writes a marker file (what a malicious pickle would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "model.pkl",
                                  "consolidated.pt"])
def test_pickles_are_never_loaded(tmp_path, name):
    d = tmp_path / "pt"
    d.mkdir()
    write_config(d, read_config())
    marker = tmp_path / "UNPICKLED"
    (d / name).write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(CheckpointError, match=rf"(?s){name}.*never loads.*arbitrary code"):
        MambaLM.from_pretrained(str(d))
    assert not marker.exists()


def test_pickle_next_to_safetensors_is_ignored(tmp_path):
    d = copy_checkpoint(tmp_path / "m")
    marker = tmp_path / "UNPICKLED"
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
        f.write(pickle.dumps(_Trap(str(marker))))
    MambaLM.from_pretrained(d)
    assert not marker.exists()


# ============================================================================ tied heads
class TestTiedHead:
    def test_tied_config_with_a_different_stored_head_is_refused(self, tmp_path):
        t = load_file(os.path.join(UNTIED, "model.safetensors"))
        assert not np.array_equal(t["lm_head.weight"], t["backbone.embeddings.weight"])
        d = tmp_path / "m"
        d.mkdir()
        save_file(t, str(d / "model.safetensors"))
        write_config(d, dict(read_config(UNTIED), tie_word_embeddings=True))
        with pytest.raises(CheckpointError, match="tie_word_embeddings=true.*differs from the embedding"):
            MambaLM.from_pretrained(str(d))

    def test_tied_with_a_different_head_refused_for_direct_construction(self):
        from nbssm.lm.config import parse_config as pc

        t = load_file(os.path.join(UNTIED, "model.safetensors"))
        with pytest.raises(CheckpointError, match="differs from the embedding"):
            MambaLM(pc(dict(read_config(UNTIED), tie_word_embeddings=True)), t)

    def test_mamba_ssm_dialect_names_its_own_key(self, tmp_path):
        from nbssm.lm.loading import check_tensors

        t = load_file(os.path.join(UNTIED, "model.safetensors"))
        cfg = parse_config({"d_model": 32, "n_layer": 2, "vocab_size": 96,
                            "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 4}})
        with pytest.raises(CheckpointError, match="tie_embeddings=true"):
            check_tensors(t, cfg)

    def test_tied_with_an_equal_stored_head_loads(self, tmp_path):
        t = load_file(os.path.join(TIED, "model.safetensors"))
        t["lm_head.weight"] = t["backbone.embeddings.weight"].copy()
        d = tmp_path / "m"
        d.mkdir()
        save_file(t, str(d / "model.safetensors"))
        write_config(d, read_config(TIED))
        prompts, want = _prompts_and_logits(TIED)
        logits, _ = MambaLM.from_pretrained(str(d)).forward(prompts)
        assert np.max(np.abs(logits - want)) < 1e-4

    def test_untied_uses_the_stored_head(self):
        prompts, want = _prompts_and_logits(UNTIED)
        logits, _ = MambaLM.from_pretrained(UNTIED).forward(prompts)
        assert np.max(np.abs(logits - want)) < 1e-4


# ============================================================================ tokenizers
TOKENIZER_CASES = {
    "not json": b"{not json",
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "empty object": b"{}",
    "wrong model": b'{"version": "1.0", "model": {"type": "NoSuch"}}',
    "list": b"[1, 2, 3]",
}


def test_bad_tokenizers_raise_checkpoint_error(tmp_path):
    """Each bad tokenizer.json, loaded in a child process (a native parser): CheckpointError naming
    the file, never a crash."""
    pytest.importorskip("tokenizers")
    import subprocess
    import sys

    dirs = []
    for i, raw in enumerate(TOKENIZER_CASES.values()):
        d = tmp_path / f"t{i}"
        d.mkdir()
        (d / "tokenizer.json").write_bytes(raw)
        dirs.append(str(d))
    code = ("import sys\nfrom nbssm.lm import CheckpointError\nfrom nbssm.lm.tokenizer import load_tokenizer\n"
            "for d in sys.argv[1:]:\n"
            "    try:\n        load_tokenizer(d); print('ok')\n"
            "    except CheckpointError as e:\n        print('CheckpointError', 'tokenizer.json' in str(e))\n")
    proc = subprocess.run([sys.executable, "-c", code, *dirs], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")[:len(dirs)]
    assert lines == ["CheckpointError True"] * len(dirs), dict(zip(TOKENIZER_CASES, lines))


def test_tokenizer_that_is_not_a_file_is_absent(tmp_path):
    from nbssm.lm.tokenizer import load_tokenizer

    (tmp_path / "tokenizer.json").mkdir()
    assert load_tokenizer(tmp_path) is None
    os.rmdir(tmp_path / "tokenizer.json")
    os.mkfifo(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path) is None


def test_header_is_validated_without_reading_data(tmp_path):
    """read_safetensors_header on a file whose data region is unreadable garbage still works
    (only the header is read) and is fast."""
    d = copy_checkpoint(tmp_path / "m")
    path = os.path.join(d, "model.safetensors")
    header, data = split_file(path)
    join_file(path, header, b"\xff" * len(data))
    t0 = time.perf_counter()
    h = read_safetensors_header(path)
    assert time.perf_counter() - t0 < 0.5 and D0 in h
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(d)
