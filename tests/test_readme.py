"""The README and the user guide: their examples run as doctests, their commands and links hold."""

from __future__ import annotations

import doctest
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "nbssm" / "GUIDE.md", ROOT / "benchmarks" / "README.md"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def run_doctests(path: pathlib.Path) -> doctest.TestResults:
    return doctest.testfile(str(path), module_relative=False, optionflags=FLAGS, encoding="utf-8", verbose=False)


@pytest.mark.parametrize("name", ["README.md", "nbssm/GUIDE.md"])
def test_examples_run(name, tmp_path, monkeypatch):
    """Every ``>>>`` example gives the output written under it (run where a user would: the repo root
    for the README's relative fixture path; files written by the guide land in a scratch folder)."""
    path = ROOT / name
    if name == "README.md":
        monkeypatch.chdir(ROOT)
    else:
        (tmp_path / "tests").symlink_to(ROOT / "tests")
        monkeypatch.chdir(tmp_path)
    result = run_doctests(path)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"


def test_doctests_can_fail(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("```python\n>>> 1 + 1\n3\n\n```\n")
    assert run_doctests(bad).failed == 1


def test_readme_starts_with_the_two_quick_start_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    install_and_verify, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "pip install ." in install_and_verify and install_and_verify.endswith("nbssm verify")
    assert 'pip install -e ".[test]"' in install_and_test and install_and_test.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_test.split(" && ", 1)[1] in ci  # CI installs and tests as the README says


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 9000, "the README is a front door: move detail into nbssm/GUIDE.md or benchmarks/"
    for heading in ("## Deployment", "## Errors and NaN policy", "## Changelog"):
        assert heading in text
    for target in ("proofs_notes/README.md", "benchmarks/README.md", "benchmarks/results/"):
        assert f"]({target})" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert local
    missing = [link for link in local if not (doc.parent / link).exists()]
    assert not missing, f"{doc.name}: broken links {missing}"


def test_docs_do_not_depend_on_the_bench_editing_them():
    """`nbssm bench` writes to its --out folder; no document carries markers for it to rewrite."""
    for doc in DOCS:
        assert "<!-- bench:" not in doc.read_text(encoding="utf-8")
        assert "--update-readme" not in doc.read_text(encoding="utf-8")
