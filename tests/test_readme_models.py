"""The README's `models` section runs, and what it claims holds."""

from readme import python_blocks


def test_readme_models_example(tmp_path, monkeypatch, capsys):
    code = python_blocks("models")
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
