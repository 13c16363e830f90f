"""``nbssm generate``: streaming from a checkpoint directory, through the real CLI entry point."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("safetensors")

from nbssm.cli import main  # noqa: E402
from nbssm.lm import MambaLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TIED = os.path.join(HERE, "fixtures", "mamba_tiny", "tied")
UNTIED = os.path.join(HERE, "fixtures", "mamba_tiny", "untied")


def test_generate_ids_greedy(capsys):
    assert main(["generate", UNTIED, "--ids", "5,9,17", "-n", "4"]) == 0
    out, err = capsys.readouterr()
    prompt, gen = out.strip().split("|")
    assert prompt.split() == ["5", "9", "17"]
    want = list(MambaLM.from_pretrained(UNTIED).generate(np.array([5, 9, 17]), 4))
    assert [int(t) for t in gen.split()] == want
    assert "tokens/s" in err and "4 tokens" in err


def test_generate_text_prompt_with_tokenizer(capsys):
    pytest.importorskip("tokenizers")
    assert main(["generate", TIED, "--prompt", "Hello", "-n", "5", "--temperature", "0.7", "--top-k", "8",
                 "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    model = MambaLM.from_pretrained(TIED)
    ids = list(model.generate("Hello", 5, temperature=0.7, top_k=8, seed=1))
    assert out == "Hello" + model.tokenizer.decode(ids) + "\n"
    assert "tokens/s" in err


def test_generate_errors(capsys, tmp_path):
    assert main(["generate", str(tmp_path / "missing"), "--ids", "1"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["generate", UNTIED, "--prompt", "hi"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", UNTIED, "--ids", "1,x"])
    assert exc.value.code == 2
    assert "argument --ids" in capsys.readouterr().err
    assert main(["generate", UNTIED, "--ids", "1000"]) == 2
    assert "[0, 96)" in capsys.readouterr().err


def test_generate_timings_split_the_first_token(capsys):
    import json

    assert main(["generate", UNTIED, "--ids", "5,9", "-n", "2", "--timings"]) == 0
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("[nbssm] timings:")]
    assert len(line) == 1
    t = json.loads(line[0].split(":", 1)[1])
    assert {"import_s", "load_s", "kernels_s", "kernels", "prefill_s", "first_token_s", "decode_s"} <= set(t)
    assert t["tokens"] == 2 and t["prompt_tokens"] == 2 and t["kernels"] in ("from cache", "compiled", "compiled, no cache")
    assert t["first_token_after_load_s"] >= t["load_s"] + t["kernels_s"] + t["prefill_s"]
    assert "kernels" in err and "first token" in err


def test_compiling_message_only_when_the_cache_is_cold(capsys, monkeypatch):
    from nbssm.lm import cli

    for state, shown in (("cold", True), ("cached", False), ("no cache", False)):
        monkeypatch.setattr(cli, "kernel_cache_state", lambda dtype, prefill=True, s=state: s)
        assert main(["generate", UNTIED, "--ids", "5", "-n", "1"]) == 0
        err = capsys.readouterr().err
        assert (cli.COMPILING_MESSAGE in err) is shown and err.count(cli.COMPILING_MESSAGE) <= 1
        assert ("no kernel cache" in err) is (state == "no cache")


def test_warm_cache_loads_the_decode_kernel_beside_the_checkpoint_read(capsys, monkeypatch):
    """With the decode kernel in the cache, ``generate`` starts a thread that loads it while
    the checkpoint is read, and ``warmup_generate`` joins it before the tiny step; a cold
    cache starts the compiling child instead (no thread)."""
    import threading

    from nbssm import _warmup
    from nbssm.lm import cli

    started, joined = [], []
    real = _warmup.preload_decode

    def spy(dtype, weights=None):
        thread = real(dtype, weights)
        started.append(thread)
        orig_join = thread.join
        thread.join = lambda *a, **k: (joined.append(thread), orig_join(*a, **k))[1]
        return thread

    monkeypatch.setattr(_warmup, "preload_decode", spy)
    monkeypatch.setattr(cli, "kernel_cache_state", lambda dtype, prefill=True: "cached")
    assert main(["generate", UNTIED, "--ids", "5,9", "-n", "2"]) == 0
    assert len(started) == 1 and joined == started and not started[0].is_alive()
    assert isinstance(started[0], threading.Thread) and started[0].daemon
    monkeypatch.setattr(cli, "kernel_cache_state", lambda dtype, prefill=True: "cold")
    monkeypatch.setattr(_warmup, "compile_decode_aside", lambda dtype, weights=None: None)
    assert main(["generate", UNTIED, "--ids", "5,9", "-n", "2"]) == 0
    assert len(started) == 1
    capsys.readouterr()


def test_preload_failure_is_left_to_warmup_generate(monkeypatch):
    """A preload thread that fails (here: an unknown weight format) ends quietly (no exception
    escapes the thread); the error is raised where it is reported, by the tiny step that
    warmup_generate runs itself."""
    import threading

    from nbssm import _warmup

    escaped = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    thread = _warmup.preload_decode(np.float32, "int3")
    thread.join(timeout=60)
    assert not thread.is_alive() and escaped == []
    with pytest.raises((ValueError, TypeError)):
        _warmup._tiny_step(np.float32, "int3")


def test_kernel_cache_state_reads_the_index_files():
    from nbssm._kernels._jit import cache_directory, cached_signatures
    from nbssm._kernels.limits import triad
    from nbssm.lm.cli import kernel_cache_state

    triad(np.zeros(3), np.ones(3), np.ones(3), 2.0)  # compiled (or loaded) and saved to the cache
    sigs = cached_signatures(triad)
    if cache_directory() is None:
        assert sigs is None and kernel_cache_state(np.float32) == "no cache"
        return
    assert any("float64" in s for s in sigs)
    main(["generate", UNTIED, "--ids", "5", "-n", "1"])  # a short prompt: the decode kernel only
    assert kernel_cache_state(np.float32, prefill=False) == "cached"
    main(["generate", UNTIED, "--ids", ",".join(["5"] * 10), "-n", "1"])  # a long one: the prefill's too
    assert kernel_cache_state(np.float32) == "cached"
    assert cached_signatures(len) is None  # not a kernel


COLD_CODE = """
import sys
from nbssm.cli import main
sys.exit(main(["generate", sys.argv[1], "--ids", "5,9", "-n", "2"]))
"""


@pytest.mark.slow
def test_cold_start_message_once_with_a_fresh_cache(tmp_path):
    import subprocess
    import sys

    from nbssm.lm.cli import COMPILING_MESSAGE

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), NBSSM_CACHE_DIR=str(tmp_path / "nbssm"))
    env.pop("NBSSM_CACHE", None)
    errs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", COLD_CODE, UNTIED], env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stderr
        errs.append(proc.stderr)
    assert errs[0].count(COMPILING_MESSAGE) == 1 and "compiled" in errs[0]
    assert COMPILING_MESSAGE not in errs[1] and "from cache" in errs[1]
