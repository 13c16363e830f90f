"""Helpers for the malformed-file tests: copies of the committed tiny checkpoint, rewritten.

Every helper writes into a directory it is given (a pytest ``tmp_path``); the fixture itself
is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "mamba_tiny")
TIED = os.path.join(FIXTURE, "tied")
UNTIED = os.path.join(FIXTURE, "untied")
ROOT = os.path.dirname(HERE)


def read_config(src: str = TIED) -> dict:
    with open(os.path.join(src, "config.json")) as f:
        return json.load(f)


def copy_checkpoint(dst, src: str = TIED, tokenizer: bool = False) -> str:
    """``config.json`` and ``model.safetensors`` (and ``tokenizer.json`` if asked) copied to ``dst``."""
    os.makedirs(dst, exist_ok=True)
    names = ["config.json", "model.safetensors"] + (["tokenizer.json"] if tokenizer else [])
    for name in names:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return str(dst)


def write_config(directory, config) -> None:
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))


def split_file(path: str) -> tuple[dict, bytes]:
    """(header dict with ``__metadata__``, data buffer) of a safetensors file, parsed directly."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_file(path: str, header, data: bytes, header_bytes: bytes | None = None, length: int | None = None) -> None:
    """Write a safetensors file from a header (dict, or raw bytes) and a data buffer; ``length``
    overrides the 8-byte header length (to make it lie)."""
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb) if length is None else length) + hb + data)


def tensor_spans(header: dict) -> list[tuple[int, int, str]]:
    return sorted((e["data_offsets"][0], e["data_offsets"][1], k) for k, e in header.items() if k != "__metadata__")


CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    sys.path.insert(0, {root!r})
    from nbssm.lm import CheckpointError, UnsupportedConfigError
    from nbssm.lm.loading import load_checkpoint
    limit_mib = {limit_mib!r}
    if limit_mib:
        # address space now (numpy, numba mapped) plus a fixed allowance: any large allocation fails
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        cap = vm + limit_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = []
    for d in sys.argv[1:]:
        t0 = time.perf_counter()
        try:
            config, tensors = load_checkpoint(d)
            out.append(["ok", "", time.perf_counter() - t0])
        except (CheckpointError, UnsupportedConfigError, FileNotFoundError) as exc:
            out.append([type(exc).__name__, str(exc)[:2000], time.perf_counter() - t0])
        except BaseException as exc:
            out.append(["UNEXPECTED " + type(exc).__name__, repr(exc)[:2000], time.perf_counter() - t0])
    print("RESULT " + json.dumps(out))
""")


def load_in_child(directories, limit_mib: int | None = 256, timeout: float = 240) -> list:
    """Load each directory in one child process (memory capped at its current address space plus
    ``limit_mib`` MiB); returns ``[kind, message, seconds]`` per directory. Asserts that the
    child exited normally (no signal, no hang)."""
    code = CHILD.format(root=ROOT, limit_mib=limit_mib)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, directories)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"child died with status {proc.returncode}: {proc.stderr[-3000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])
