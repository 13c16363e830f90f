"""The benchmark harness: run order, report rendering, a quick end-to-end run (no timings asserted)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from nbssm import bench


def test_interleaved_medians_alternate_the_cases():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    med, times = bench._interleaved_medians(fns, 3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then alternating
    assert set(med) == {"a", "b"} and all(len(t) == 3 for t in times.values())
    assert all(med[k] >= 0 for k in med)


def test_markdown_reports_both_length_ratios():
    res = {
        "machine": {"cpu": "cpu", "simd": "avx2", "cores": 2, "python": "3", "numpy": "2", "numba": "0",
                    "threading_layer": "omp", "date_utc": "today"},
        "repeats": 7,
        "selective": [],
        "length_scaling": {"threads": 2, "repeats": 9, "t_L2048_ms": 10.0, "t_L16384_ms": 79.0,
                           "ratio_L16384_over_L2048": 7.9, "t_L2048_ms_no_output_cache": 10.5,
                           "t_L16384_ms_no_output_cache": 90.3, "ratio_L16384_over_L2048_no_output_cache": 8.6},
    }
    md = bench.to_markdown(res)
    assert "ratio 7.90 (linear: 8)" in md and "median of 9 runs" in md
    assert "With the output cache disabled (`NBSSM_OUTPUT_CACHE_MB=0`): 10.5 ms and 90.3 ms, ratio 8.60." in md


def test_quick_run_writes_json_and_markdown(tmp_path):
    args = SimpleNamespace(repeats=5, out=str(tmp_path), quick=True, skip=[])
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "kernels.json").read_text())
    assert [r["shape"] for r in res["selective"]] == ["S3"]
    assert res["selective"][0]["rel_err_vs_float64"] <= 1e-5
    assert "| S3 (1, 16384, 64, 16) |" in (tmp_path / "kernels.md").read_text()


def test_out_defaults_outside_the_source_tree():
    import argparse
    from pathlib import Path

    from nbssm import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = Path(parser.parse_args([]).out).resolve()
    repo = Path(bench.__file__).resolve().parent.parent
    assert repo not in out.parents and out != repo
    assert "--update-readme" not in parser.format_help()
