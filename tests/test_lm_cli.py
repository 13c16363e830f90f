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
