"""benchmarks/bench_dask.py --quick end to end (a smoke run: the report's shape and the bitwise
checks, never the timings)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("distributed", reason="nbssm.dask needs dask.distributed (pip install 'nbssm[dask]')")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_its_report(tmp_path):
    out, md = tmp_path / "dask.json", tmp_path / "dask.md"
    # a fresh process: the benchmark pins one thread before numba and BLAS load
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dask.py"), "--quick", "--scan-log2", "16",
                    "--prompts", "4", "--tokens", "32", "--repeats", "1", "--workers", "2", "--out", str(out), "--out-md", str(md)],
                   check=True, timeout=600, capture_output=True)
    saved = json.loads(out.read_text())
    assert saved["workers_2"]["score_bitwise_equal_direct"] is True
    assert saved["workers_2"]["scan_bitwise_equal_chunked"] is True
    assert saved["machine"]["cores"] and len(saved["load_before"]) == 3 and len(saved["load_after"]) == 3
    assert "| score |" in md.read_text() and "| scan |" in md.read_text()
    assert saved["config"]["scan_log2"] == 16 and saved["config"]["prompts"] == 4
