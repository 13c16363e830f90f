"""The README's sections and code blocks (shared by tests/test_*readme*.py)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section(name: str) -> str:
    """The text between ``<!-- section:NAME -->`` and ``<!-- /section:NAME -->``."""
    m = re.search(rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", README.read_text(), re.S)
    assert m, f"README has no section {name!r}"
    return m.group(1)


def python_blocks(name: str) -> list:
    """The fenced ```python blocks of section ``name``, in order."""
    return re.findall(r"```python\n(.*?)```", section(name), re.S)
