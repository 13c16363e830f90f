"""benchmarks/bench_dask.py --quick end to end (a smoke run: the report's shape and the bitwise
checks, never the timings)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("distributed", reason="nbssm.dask needs dask.distributed (pip install 'nbssm[dask]')")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_dask", ROOT / "benchmarks" / "bench_dask.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, md = tmp_path / "dask.json", tmp_path / "dask.md"
    report = bench.main(["--quick", "--scan-log2", "16", "--prompts", "4", "--tokens", "32", "--repeats", "1",
                         "--out", str(out), "--out-md", str(md)])
    saved = json.loads(out.read_text())
    assert saved["summary"]["targets"]["scan_bitwise"] is True
    for n in (1, 2):
        assert saved[f"workers_{n}"]["score_bitwise_equal_direct"] is True
        assert saved[f"workers_{n}"]["scan_bitwise_equal_chunked"] is True
    assert saved["machine"]["cores"] and len(saved["load_before"]) == 3 and len(saved["load_after"]) == 3
    assert "| score |" in md.read_text() and "| scan |" in md.read_text()
    assert report["config"]["scan_log2"] == 16
