"""The README's `kernels` section runs, and the benchmarks section holds the generated table markers."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(name: str) -> str:
    m = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", README.read_text(), re.S)
    assert m, f"README has no section {name!r}"
    return m.group(1)


def test_readme_kernels_example():
    code = re.findall(r"```python\n(.*?)```", _section("kernels"), re.S)
    assert code
    ns: dict = {}
    exec(compile(code[0], "README-kernels", "exec"), ns)
    assert ns["y"].shape == (2, 1000, 64) and ns["h"].shape == (2, 64, 16)
    assert ns["hist"].shape == (2, 3, 64)
    assert ns["states"][0, -1, 0] > 990  # 1 + 0.999 + 0.999**2 + ... -> 1000


def test_readme_benchmarks_has_generated_table_markers():
    from nbssm.bench import README_BEGIN, README_END

    sec = _section("benchmarks")
    assert README_BEGIN in sec and README_END in sec
