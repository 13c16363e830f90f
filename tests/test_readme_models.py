"""The README's `models` section runs, and what it claims holds."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", text, re.S)
    assert m, f"README has no section {name!r}"
    return m.group(1)


def test_readme_models_example(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", _section("models"), re.S)
    assert code, "the models section has no python block"
    monkeypatch.chdir(tmp_path)  # the example writes state.npz in the working directory
    ns: dict = {}
    for i, block in enumerate(code):
        exec(compile(block, f"README-models-{i}", "exec"), ns)
    assert (tmp_path / "state.npz").exists()
    state = ns["state"]
    assert state.position == 20 and state.batch == 2
    assert ns["more"].shape == (2, 10, 8)
    printed = capsys.readouterr().out
    assert printed.startswith("ModelState(SelectiveMamba(input_dim=8, inner_dim=16, state_dim=4")
    assert "batch=2, position=20" in printed
