"""The README's spec example runs and says what it claims."""

import re

from readme import README, python_blocks


def test_readme_starts_with_the_two_quick_start_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "nbssm verify" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs the README's test command verbatim


def test_readme_spec_example():
    code = python_blocks("spec")
    assert code
    ns: dict = {}
    exec(compile(code[0], "README-spec", "exec"), ns)
    assert ns["ys"] == [[1.0], [3.0], [8.0]]
