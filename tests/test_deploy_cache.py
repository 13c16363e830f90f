"""Deployment: the cache of compiled kernels (staleness, read-only installs, damage, bad settings).

Every case runs in a fresh interpreter on a private copy of the package, with small
functions decorated by ``nbssm._kernels._jit.njit`` placed in the copy's ``_kernels``
directory (so they are covered by the same source key as the real kernels).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbssm

PACKAGE = Path(nbssm.__file__).resolve().parent

HELPER = "from ._jit import njit\n\n@njit(inline='always')\ndef helper(x):\n    return x + {k}.0\n"
USER = textwrap.dedent(
    """
    from ._jit import njit
    from .g_helper import helper

    @njit(cache=True)
    def kernel(x):
        return helper(x) * 2.0
    """
)
# the same pair with plain numba: the control that shows the staleness being fixed
PLAIN_HELPER = "from numba import njit\n\n@njit(inline='always')\ndef helper(x):\n    return x + {k}.0\n"
PLAIN_USER = USER.replace("from ._jit import njit", "from numba import njit").replace("g_helper", "g_plain_helper")

RUN = textwrap.dedent(
    """
    import warnings, json, sys
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        from nbssm._kernels import {mod} as m
        from nbssm._kernels import _jit
        value = m.kernel(1.0)
    print(json.dumps({{"value": value, "hits": sum(m.kernel.stats.cache_hits.values()),
                      "dir": _jit.cache_directory() if hasattr(_jit, "cache_directory") else None,
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}}))
    """
)


def _copy_package(tmp_path: Path, k: int = 1) -> Path:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "nbssm", ignore=shutil.ignore_patterns("__pycache__"))
    kd = root / "nbssm" / "_kernels"
    (kd / "g_helper.py").write_text(HELPER.format(k=k))
    (kd / "g_user.py").write_text(USER)
    (kd / "g_plain_helper.py").write_text(PLAIN_HELPER.format(k=k))
    (kd / "g_plain_user.py").write_text(PLAIN_USER)
    return root


def _env(root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBSSM_", "NUMBA_CACHE"))}
    env["PYTHONPATH"] = str(root)
    env.update(extra)
    return env


def _run(root: Path, mod: str = "g_user", user: str | None = None, **extra):
    import json

    cmd = [sys.executable, "-c", RUN.format(mod=mod)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, env=_env(root, **extra), capture_output=True, text=True, timeout=300, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_edit_to_inlined_helper_is_not_stale(tmp_path):
    root = _copy_package(tmp_path)
    assert _run(root)["value"] == 4.0
    again = _run(root)
    assert again == {**again, "value": 4.0, "hits": 1}  # warm cache used
    (root / "nbssm" / "_kernels" / "g_helper.py").write_text(HELPER.format(k=5))
    assert _run(root)["value"] == 12.0


def test_control_plain_numba_cache_is_stale(tmp_path):
    # documents the failure the project's cache keys fix: numba keys on the defining file only
    root = _copy_package(tmp_path)
    assert _run(root, "g_plain_user")["value"] == 4.0
    (root / "nbssm" / "_kernels" / "g_plain_helper.py").write_text(PLAIN_HELPER.format(k=5))
    assert _run(root, "g_plain_user")["value"] == 4.0  # stale machine code


@pytest.mark.parametrize("damage", ["truncate_data", "garbage_data", "truncate_index", "garbage_index", "empty_both"])
def test_damaged_cache_is_recompiled_and_rewritten(tmp_path, damage):
    root = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    first = _run(root, NBSSM_CACHE_DIR=str(cache))
    assert first["value"] == 4.0 and first["warnings"] == []
    files = {p.suffix: p for p in Path(first["dir"]).glob("g_user.kernel-*")}
    data, index = files[".nbc"], files[".nbi"]
    if damage == "truncate_data":
        data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    elif damage == "garbage_data":
        data.write_bytes(os.urandom(len(data.read_bytes())))
    elif damage == "truncate_index":
        index.write_bytes(index.read_bytes()[:10])
    elif damage == "garbage_index":
        index.write_bytes(b"\x80\x04garbage" * 10)
    else:
        data.write_bytes(b"")
        index.write_bytes(b"")
    second = _run(root, NBSSM_CACHE_DIR=str(cache))
    assert second["value"] == 4.0 and second["hits"] == 0 and second["warnings"] == []
    third = _run(root, NBSSM_CACHE_DIR=str(cache))
    assert third["value"] == 4.0 and third["hits"] == 1  # rewritten


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))


def _can_drop_to_nobody() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", "import numba"],
                           capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_drop_to_nobody(), reason="needs root and setpriv to run as a non-root user")
def test_read_only_install_without_home_falls_back_with_one_warning():
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="nbssm-ro-"))  # pytest's own tmp dirs are private to root
    try:
        _read_only_case(tmp_path)
    finally:
        for p in [tmp_path, *tmp_path.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(tmp_path)


def _read_only_case(tmp_path):
    root = _copy_package(tmp_path)
    # a complete in-tree cache written at install time, then the tree made read-only
    assert _run(root)["value"] == 4.0
    _read_only(root)
    tmp_path.chmod(0o755)
    user_tmp = tmp_path / "tmp"
    user_tmp.mkdir()
    user_tmp.chmod(0o1777)
    env = {"HOME": "/nonexistent", "XDG_CACHE_HOME": "", "TMPDIR": str(user_tmp)}
    out = _run(root, user="nobody", **env)
    assert out["value"] == 4.0
    assert out["dir"].startswith(str(user_tmp)) and len(out["warnings"]) == 1
    assert _run(root, user="nobody", **env)["hits"] == 1  # the fallback cache is reused


def test_cache_dir_pointing_at_a_file_falls_back_with_one_warning(tmp_path):
    root = _copy_package(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = _run(root, NBSSM_CACHE_DIR=str(afile), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out["value"] == 4.0
    assert len(out["warnings"]) == 1 and "NBSSM_CACHE_DIR" in out["warnings"][0]
    assert out["dir"].startswith(str(tmp_path / "xdg"))


def test_cache_off(tmp_path):
    root = _copy_package(tmp_path)
    out = _run(root, NBSSM_CACHE="0")
    assert out["value"] == 4.0 and out["dir"] is None and out["warnings"] == []
    assert _run(root, NBSSM_CACHE="off")["hits"] == 0


@pytest.mark.parametrize("name,value", [("NBSSM_CACHE", "maybe"), ("NBSSM_NUM_THREADS", "x"),
                                        ("NBSSM_NUM_THREADS", "0"), ("NBSSM_OUTPUT_CACHE_MB", "-1")])
def test_bad_environment_values_are_clear_errors(name, value):
    proc = subprocess.run([sys.executable, "-c", "import nbssm._config"], env={**os.environ, name: value},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"ValueError: {name}: expected" in proc.stderr
    assert value in proc.stderr


def test_serial_and_parallel_compilations_use_distinct_entries():
    from nbssm._kernels import _jit, cde, conv, decode, dense, linear_scan, selective_scan, signature  # noqa: F401

    tags = {}
    for disp, options, cached in _jit.kernels():
        if cached:
            tags[disp.py_func] = disp._cache.tag
            serial = _jit.KernelCache(disp.py_func, dict(options, parallel=False, _forked_child=True)).tag
            assert serial != disp._cache.tag
    assert len(tags) > 10


def test_numba_cache_dir_is_honoured(tmp_path):
    root = _copy_package(tmp_path)
    out = _run(root, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    assert out["value"] == 4.0 and out["dir"].startswith(str(tmp_path / "numba" / "nbssm"))
    assert _run(root, NUMBA_CACHE_DIR=str(tmp_path / "numba"))["hits"] == 1


def test_numba_ir_assumption_warning_silenced_for_nbssm_kernels_only():
    """Numba's pedantic IR check ("variable ... is not in scope. Please report ...") fires when
    the selective-scan backward compiles: silenced where Numba reports it (the kernel file's
    path as the module), still shown for any other code; a compile puts the filter back when
    a ``catch_warnings`` block took it away (pytest's per-test blocks do)."""
    import warnings

    import numba

    from nbssm._kernels import _jit

    # a compile (re)installs the filter, whatever catch_warnings blocks took it away since
    with warnings.catch_warnings():
        warnings.resetwarnings()
        assert not any(f[2] is numba.NumbaIRAssumptionWarning for f in warnings.filters)
        numba.njit(lambda x: x + 1)(1)
        assert any(f[2] is numba.NumbaIRAssumptionWarning and f[0] == "ignore" for f in warnings.filters)
    _jit._quiet_ir_checks()
    _jit._quiet_ir_checks()
    assert sum(f[2] is numba.NumbaIRAssumptionWarning for f in warnings.filters) == 1  # installed once
    kernel = os.path.join(os.path.dirname(nbssm.__file__), "_kernels", "vjp.py")
    elsewhere = os.path.join(os.path.dirname(nbssm.__file__), "..", "user_kernels", "vjp.py")
    for path, shown in ((kernel, False), (elsewhere, True), ("/work/other/_kernels/x.py", True)):
        with warnings.catch_warnings(record=True) as got:
            # keep the installed filters; let everything else through
            warnings.filterwarnings("always", category=UserWarning)
            warnings.warn_explicit("variable 'v' is not in scope.", numba.NumbaIRAssumptionWarning, path, 451)
        assert (len(got) == 1) is shown, path


@pytest.mark.parametrize("name,value", [("OPT", 0), ("ENABLE_PROFILING", 1), ("DEBUGINFO_DEFAULT", 1),
                                        ("BOUNDSCHECK", 1), ("CPU_NAME", "generic")])
def test_codegen_settings_select_another_cache_directory(monkeypatch, name, value):
    # a profiling or debugging run must not leave its machine code to the runs after it
    import numba

    from nbssm._kernels import _jit

    before = _jit.source_key()
    monkeypatch.setattr(numba.config, name, value)
    assert _jit.source_key() != before
    monkeypatch.undo()
    assert _jit.source_key() == before
