"""The import contract: imports run one way, spec -> kernels -> ops -> models -> applications.

Every import statement of every module under ``spec/`` (installed as ``nbssm.spec``) and
``nbssm/`` is read with :mod:`ast`, including imports inside functions, ``if`` blocks and
``try`` blocks, and checked against the layer table below. A module may import modules of its
own layer or of a lower one, never of a higher one. ``nbssm.spec`` is the bottom layer and
imports nothing of nbssm outside itself.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The layer of every module, lowest first. Patterns are fnmatch patterns on dotted module
# names; the first matching row wins. A module that matches no row fails
# test_every_module_has_a_layer, so a new module gets a place in this table when it is added.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # the executable mirror of the Lean definitions: pure Python, sympy
    ("spec", ("nbssm.spec", "nbssm.spec.*")),
    # the package itself (lazy names only), the configuration read once from the environment,
    # and the process-wide thread policy the kernels apply when they load
    ("base", ("nbssm", "nbssm._config", "nbssm.threads")),
    # Numba kernels: private, array in / array out
    ("kernels", ("nbssm._kernels", "nbssm._kernels.*")),
    # the public ops, their numpy reference twins, validation, memory, tolerances, threads
    (
        "ops",
        (
            "nbssm.ops",
            "nbssm.reference",
            "nbssm._memory",
            "nbssm._validate",
            "nbssm._paper_inputs",
            "nbssm.tolerances",
        ),
    ),
    # runtime models, their state, linear CDEs and signatures
    (
        "models",
        (
            "nbssm.models",
            "nbssm.state",
            "nbssm.cde",
            "nbssm.signature",
            "nbssm.signatures",
            "nbssm._signature",
        ),
    ),
    # everything allowed to know every layer below
    (
        "applications",
        (
            "nbssm.lm",
            "nbssm.lm.*",
            "nbssm.experiments",
            "nbssm.experiments.*",
            "nbssm.verify",
            "nbssm.verify.*",
            "nbssm.refinement",
            "nbssm.dask",
            "nbssm.dask.*",
            "nbssm.torch",
            "nbssm.torch.*",
            "nbssm.warmup",
            "nbssm._warmup",
            "nbssm.bench",
            "nbssm.cli",
        ),
    ),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}

# Third-party packages the spec may import (besides the standard library).
SPEC_THIRD_PARTY = {"sympy", "mpmath"}
# Numba decorators come from one module only.
JIT_MODULE = "nbssm._kernels._jit"
NUMBA_DECORATORS = {"njit", "jit", "prange", "vectorize", "guvectorize", "cfunc", "generated_jit", "stencil"}

# Layering debts still in the tree, as (importer, imported) pairs. Each entry must still be a
# violation: test_known_violations_still_exist fails for an entry that has been fixed, so the
# list only shrinks. Do not add to it.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # dotted module name (internal) or top-level package name (third party)
    line: int
    names: tuple[str, ...] = ()  # the names of a ``from target import ...``

    def where(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.target}"


def module_files() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for nbssm/ and spec/ (as nbssm.spec)."""
    out = {}
    for top, package in (("nbssm", "nbssm"), ("spec", "nbssm.spec")):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = module_files()


def lazy_names() -> dict[str, str]:
    """``nbssm``'s lazy public names (``_LAZY`` in nbssm/__init__.py): name -> defining module."""
    tree = ast.parse((ROOT / "nbssm" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets) and node.value is not None:
                return ast.literal_eval(node.value)
    return {}


LAZY = lazy_names()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_in(importer: str, tree: ast.AST) -> list[Import]:
    """Every module that the code ``tree`` of module ``importer`` imports, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(importer, node)
            if source == "__future__":
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:  # a submodule: `from nbssm import ops`
                    found.append(Import(importer, f"{source}.{alias.name}", node.lineno))
                elif source == "nbssm" and alias.name in LAZY:  # a lazy name imports its module
                    found.append(Import(importer, LAZY[alias.name], node.lineno))
                else:
                    found.append(Import(importer, source, node.lineno, (alias.name,)))
    return found


def imports_of(module: str) -> list[Import]:
    """Every module that ``module`` imports, anywhere in its file."""
    return imports_in(module, ast.parse(MODULES[module].read_text(), filename=str(MODULES[module])))


def layer(module: str) -> str | None:
    for name, patterns in LAYERS:
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return name
    return None


def is_internal(target: str) -> bool:
    return target == "nbssm" or target.startswith("nbssm.")


def top_level(target: str) -> str:
    return target.split(".")[0]


def violations_of(imp: Import) -> list[str]:
    """Why ``imp`` breaks the contract (empty when it does not)."""
    out = []
    src = layer(imp.importer)
    if is_internal(imp.target):
        dst = layer(imp.target)
        if dst is None:
            out.append(f"{imp.where()}, a module with no layer")
        elif src is not None and RANK[dst] > RANK[src]:
            out.append(f"{imp.where()}: layer {src!r} may not import layer {dst!r}")
    elif top_level(imp.target) == "spec":
        out.append(f"{imp.where()}: there is no top-level `spec` package (use nbssm.spec)")
    elif src == "spec":
        root = top_level(imp.target)
        if root not in sys.stdlib_module_names and root not in SPEC_THIRD_PARTY:
            out.append(f"{imp.where()}: the spec imports only the standard library and {sorted(SPEC_THIRD_PARTY)}")
    if imp.importer != JIT_MODULE and top_level(imp.target) == "numba":
        taken = set(imp.names) & NUMBA_DECORATORS
        if taken:
            out.append(f"{imp.where()}: {sorted(taken)} come from {JIT_MODULE} only")
    return out


def contract_violations() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) -> messages, over every module."""
    found: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        for imp in imports_of(module):
            for message in violations_of(imp):
                found.setdefault((imp.importer, imp.target), []).append(message)
    return found


def numba_decorator_attributes(module: str) -> list[str]:
    """Uses of ``numba.njit``-style attributes (``import numba`` then ``@numba.njit``)."""
    tree = ast.parse(MODULES[module].read_text())
    return [
        f"{module} (line {node.lineno}) uses numba.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "numba"
        and node.attr in NUMBA_DECORATORS
    ]


# --- the contract -------------------------------------------------------------------------


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer(m) is None]
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_imports_run_one_way():
    found = contract_violations()
    new = {pair: msgs for pair, msgs in found.items() if pair not in KNOWN_VIOLATIONS}
    assert not new, "import contract broken:\n" + "\n".join(m for msgs in new.values() for m in msgs)


def test_known_violations_still_exist():
    fixed = KNOWN_VIOLATIONS - set(contract_violations())
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_numba_decorators_only_through_jit_module():
    uses = [u for m in MODULES if m != JIT_MODULE for u in numba_decorator_attributes(m)]
    assert not uses, "\n".join(uses)


def test_import_nbssm_is_light():
    """`import nbssm` imports neither numba nor sympy (a fresh interpreter)."""
    code = "import sys, nbssm; print(sorted(m for m in ('numba', 'sympy', 'llvmlite') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --- the checker itself can fail ------------------------------------------------------------


def _parse(importer: str, source: str) -> list[Import]:
    """Imports of ``source`` as if it were the module ``importer`` (for the self-tests)."""
    return imports_in(importer, ast.parse(source))


@pytest.mark.parametrize(
    "importer, source",
    [
        ("nbssm.spec.scan", "from nbssm import ops"),
        ("nbssm.spec.scan", "import numpy"),
        ("nbssm.spec.scan", "import spec.models"),
        ("nbssm._kernels.linear_scan", "def f():\n    from nbssm.ops import selective_scan\n"),
        ("nbssm._kernels.linear_scan", "from numba import njit"),
        ("nbssm.ops", "from .models import SelectiveMamba"),
        ("nbssm.models", "from nbssm.lm import MambaLM"),
        ("nbssm.ops", "from nbssm.no_such_module import x"),
    ],
)
def test_contract_rejects(importer, source):
    assert any(violations_of(imp) for imp in _parse(importer, source))


@pytest.mark.parametrize(
    "importer, source",
    [
        ("nbssm.spec.models", "from .scan import run_list\nimport sympy\nimport math"),
        ("nbssm._kernels.linear_scan", "from ._jit import njit, prange\nfrom numba import carray"),
        ("nbssm.ops", "from ._kernels import scan"),
        ("nbssm.models", "from .spec.models import DiagonalSSM\nfrom . import ops"),
        ("nbssm.lm.model", "from nbssm.models import SelectiveMamba"),
    ],
)
def test_contract_accepts(importer, source):
    assert not [v for imp in _parse(importer, source) for v in violations_of(imp)]


def test_relative_imports_resolve():
    node = ast.parse("from ..spec import models").body[0]
    assert resolve("nbssm.lm.model", node) == "nbssm.spec"
    node = ast.parse("from .scan import x").body[0]
    assert resolve("nbssm.spec", node) == "nbssm.spec.scan"  # a package's own level
