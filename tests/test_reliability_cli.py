"""CLI misuse and sampling edge cases: argparse-style errors with status 2 before any work,
JSON on stdout under ``--json`` even for errors, no tracebacks, the NaN/Inf policy of sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib import import_module

import numpy as np
import pytest

from nbssm.cli import main
from nbssm.lm.sampling import NonFiniteLogitsError, check_sampling_args, sample_next

HERE = os.path.dirname(os.path.abspath(__file__))
TIED = os.path.join(HERE, "fixtures", "mamba_tiny", "tied")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a checkpoint is opened: proves validation ran before the work."""
    from nbssm.lm import model

    def boom(*a, **k):
        raise AssertionError("the checkpoint was loaded before the arguments were validated")

    monkeypatch.setattr(model.MambaLM, "from_pretrained", classmethod(boom))


# ============================================================================ generate
@pytest.mark.parametrize("args,option", [
    (["--ids", "1", "-t", "-1"], "--temperature"),
    (["--ids", "1", "-t", "nan"], "--temperature"),
    (["--ids", "1", "-t", "inf"], "--temperature"),
    (["--ids", "1", "-t", "hot"], "--temperature"),
    (["--ids", "1", "--top-k", "0"], "--top-k"),
    (["--ids", "1", "--top-k", "1.5"], "--top-k"),
    (["--ids", "1", "--seed", "-1"], "--seed"),
    (["--ids", "1", "-n", "-1"], "--max-new-tokens"),
    (["--ids", ""], "--ids"),
    (["--ids", "1,-2"], "--ids"),
    (["--ids", "a"], "--ids"),
    (["--ids", "1", "--dtype", "float16"], "--dtype"),
    (["--ids", "1", "--prompt", "x"], "--prompt"),
    ([], "--prompt --ids"),
])
def test_generate_bad_arguments(capsys, no_loading, args, option):
    with pytest.raises(SystemExit) as exc:
        main(["generate", TIED, *args])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "nbssm generate: error:" in err and option in err and "Traceback" not in err


def test_generate_negative_temperature_in_a_shell():
    """The reported case: ``nbssm generate -t -1`` printed a traceback after the prompt."""
    proc = subprocess.run([sys.executable, "-m", "nbssm.cli", "generate", TIED, "--ids", "1,2", "-t", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "argument --temperature" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_file_errors_name_the_file(capsys, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(TIED, d)
    (d / "config.json").write_text('{"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 96, '
                                   '"tie_word_embeddings": "false"}')
    assert main(["generate", str(d), "--ids", "1"]) == 2
    err = capsys.readouterr().err
    assert str(d / "config.json") in err and "tie_word_embeddings" in err and "Traceback" not in err


def test_generate_token_out_of_vocabulary(capsys):
    assert main(["generate", TIED, "--ids", "1,96"]) == 2
    assert "--ids: token ids must lie in [0, 96)" in capsys.readouterr().err


def test_generate_non_finite_logits_midway(capsys, tmp_path):
    """Weights so large that the logits overflow: a clear error and status 1, not sampled noise."""
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file, save_file

    t = load_file(os.path.join(TIED, "model.safetensors"))
    t["backbone.norm_f.weight"] = np.full_like(t["backbone.norm_f.weight"], 3e38)
    d = tmp_path / "m"
    d.mkdir()
    save_file(t, str(d / "model.safetensors"))
    with open(os.path.join(TIED, "config.json")) as f:
        (d / "config.json").write_text(f.read())
    with np.errstate(all="ignore"):
        status = main(["generate", str(d), "--ids", "1,2,3", "-n", "3"])
    out, err = capsys.readouterr()
    assert status == 1
    assert "expected finite values" in err and "Traceback" not in err


def test_keyboard_interrupt_exits_130(capsys, monkeypatch):
    from nbssm.lm import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert main(["generate", TIED, "--ids", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err


# ============================================================================ top level and --json
def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--budget", "x"], ["--kind", "nope"], ["--dims", "-3"], ["--only"]])
def test_verify_json_errors_are_json(capsys, args):
    try:
        status = main(["verify", "--json", "--no-progress", "--no-external", *args])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["error"]["command"] == "verify" and doc["error"]["status"] == 2 and doc["error"]["message"]
    assert "Traceback" not in err


def test_json_error_from_an_exception_in_run(capsys, monkeypatch):
    """A file error escaping a --json subcommand's run still gives one JSON document on stdout."""
    import argparse

    fake = types.ModuleType("fake_json_cmd")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true")

    def run(args):
        raise ValueError("some/file.json: expected an object, got a list")

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "fake_json_cmd", fake)
    from nbssm import cli as nbcli

    monkeypatch.setitem(nbcli.SUBCOMMANDS, "fakecmd", ("fake_json_cmd", "a test command"))
    assert main(["fakecmd", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "some/file.json" in json.loads(out)["error"]["message"]
    assert "some/file.json" in err


# ============================================================================ --threads hook
@pytest.mark.parametrize("command", [["generate", TIED, "--ids", "1"], ["verify", "--list"], ["bench", "--quick"],
                                     ["experiment", "signature-tasks"]])
def test_every_command_takes_threads(monkeypatch, command):
    """The real nbssm.threads option on every subcommand: applied for the command's run, then restored."""
    import numba

    from nbssm import cli as nbcli

    seen = []
    module = import_module(nbcli.SUBCOMMANDS[command[0]][0])
    monkeypatch.setattr(module, "run", lambda args: seen.append(numba.get_num_threads()) or 0)
    before = numba.get_num_threads()
    assert main([*command, "--threads", "1"]) == 0
    assert seen == [1]
    numba.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", str(10**6)])
def test_bad_threads_is_an_argument_error(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["generate", TIED, "--ids", "1", "--threads", value])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


# ============================================================================ experiment
@pytest.mark.parametrize("args,option", [
    (["--n-paths", "5"], "--n-paths"), (["--n-paths", str(10**9)], "--n-paths"), (["--seed", "-1"], "--seed"),
    (["--dense-order", "100"], "--dense-order"), (["--dense-seeds", "0"], "--dense-seeds"),
])
def test_experiment_bad_values(capsys, monkeypatch, args, option):
    from nbssm.experiments import signature_tasks

    monkeypatch.setattr(signature_tasks, "run", lambda cfg: (_ for _ in ()).throw(AssertionError("ran")))
    assert main(["experiment", "signature-tasks", *args]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err


def test_experiment_out_is_a_file(capsys, monkeypatch, tmp_path):
    from nbssm.experiments import signature_tasks

    monkeypatch.setattr(signature_tasks, "run", lambda cfg: (_ for _ in ()).throw(AssertionError("ran")))
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["experiment", "signature-tasks", "--out", str(f)]) == 2
    assert "argument --out" in capsys.readouterr().err
    assert main(["experiment", "signature-tasks", "--out", str(f / "sub")]) == 2


# ============================================================================ sampling
class TestSampling:
    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    @pytest.mark.parametrize("temperature", [0.0, 0.7])
    def test_nan_and_plus_inf_are_refused(self, bad, temperature):
        logits = np.zeros((2, 5))
        logits[1, 3] = bad
        with pytest.raises(NonFiniteLogitsError, match="row 1, token 3"):
            sample_next(logits, temperature, rng=np.random.default_rng(0))

    def test_minus_inf_marks_forbidden_tokens(self):
        logits = np.array([[0.0, -np.inf, 1.0, -np.inf]])
        draws = {int(sample_next(logits, 5.0, rng=np.random.default_rng(s))[0]) for s in range(200)}
        assert draws == {0, 2}
        assert sample_next(logits)[0] == 2
        with pytest.raises(NonFiniteLogitsError, match="row 0 is -inf everywhere"):
            sample_next(np.full((1, 3), -np.inf))

    @pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e300, 1.7e308])
    def test_extreme_temperatures_stay_valid(self, temperature):
        rng = np.random.default_rng(0)
        logits = rng.normal(0, 30, (4, 50))
        ids = sample_next(logits, temperature, 7, rng)
        assert ids.dtype == np.int64 and ((ids >= 0) & (ids < 50)).all()
        if temperature < 1e-200:
            np.testing.assert_array_equal(ids, logits.argmax(1))

    def test_float32_extremes(self):
        logits = np.array([[3e38, -3e38, 0.0]], np.float32)
        assert sample_next(logits, 1.0, rng=np.random.default_rng(0))[0] == 0

    @pytest.mark.parametrize("kwargs,err,match", [
        ({"temperature": "0.5"}, TypeError, "temperature"), ({"temperature": True}, TypeError, "temperature"),
        ({"temperature": -1e-9}, ValueError, "temperature"), ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"top_k": 2.0}, TypeError, "top_k"), ({"top_k": True}, TypeError, "top_k"), ({"top_k": -3}, ValueError, "top_k"),
        ({"seed": -1}, ValueError, "seed"), ({"seed": 1.5}, TypeError, "seed"), ({"seed": "1"}, TypeError, "seed"),
    ])
    def test_options_checked(self, kwargs, err, match):
        with pytest.raises(err, match=match):
            check_sampling_args(**kwargs)

    def test_numpy_integer_top_k_and_logits_types(self):
        logits = np.arange(12.0).reshape(2, 6)
        assert sample_next(logits, 1.0, np.int64(1), np.random.default_rng(0)).tolist() == [5, 5]
        assert sample_next(np.arange(6).reshape(1, 6)).tolist() == [5]
        with pytest.raises(TypeError, match="logits"):
            sample_next(np.array([["a", "b"]]))
        with pytest.raises(TypeError, match="rng"):
            sample_next(logits, 1.0, rng=0)
