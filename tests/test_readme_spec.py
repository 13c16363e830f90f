"""The README's spec example runs and says what it claims."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", text, re.S)
    assert m, f"README has no section {name!r}"
    return m.group(1)


def test_readme_starts_with_the_two_quick_start_commands():
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert "nbssm verify" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs the README's test command verbatim


def test_readme_spec_example():
    code = re.findall(r"```python\n(.*?)```", _section("spec"), re.S)
    assert code
    ns: dict = {}
    exec(compile(code[0], "README-spec", "exec"), ns)
    assert ns["ys"] == [[1.0], [3.0], [8.0]]
