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
    args = SimpleNamespace(repeats=5, out=str(tmp_path), quick=True, skip=["limits", "decode"])
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


# ----------------------------------------------------------------------------- machine limits
def test_triad_kernel_matches_numpy():
    import numpy as np

    from nbssm._kernels.limits import TRIAD_BLOCK, triad

    rng = np.random.default_rng(0)
    n = 3 * TRIAD_BLOCK + 17  # several blocks and a partial one
    b, c = rng.standard_normal(n), rng.standard_normal(n)
    b0, c0 = b.copy(), c.copy()
    a = np.full(n, np.nan)
    triad(a, b, c, 3.0)
    np.testing.assert_array_equal(a, b + 3.0 * c)  # one multiply, one add: bitwise numpy's
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(c, c0)


def test_exp_kernel_matches_numpy_and_sums_in_order():
    import numpy as np

    from nbssm._kernels.limits import EXP_LANES, exp_sum
    from tolerances import tol

    rng = np.random.default_rng(1)
    for dt, name in ((np.float32, "exp32"), (np.float64, "float64_vs_oracle")):
        x = rng.uniform(-80.0, 80.0, (3, EXP_LANES)).astype(dt)
        for row in range(3):  # one row, one repetition: the exp of each input
            out = np.empty((2, EXP_LANES), dt)
            exp_sum(x[row:row + 1].copy(), 1, out)
            want = np.exp(x[row].astype(np.float64))
            assert np.all(np.abs(out - want) <= tol(name) * want), dt
        single = np.stack([_exp_rows(exp_sum, x[i:i + 1].copy()) for i in range(3)])  # (3, lanes): exact exps
        out = np.empty((4, EXP_LANES), dt)
        exp_sum(x, 2, out)
        acc = np.zeros(EXP_LANES, dt)
        for _ in range(2):  # reps outer, rows inner, as the kernel documents
            for i in range(3):
                acc = (acc + single[i]).astype(dt)
        for k in range(4):
            np.testing.assert_array_equal(out[k], acc)


def _exp_rows(exp_sum, x):
    import numpy as np

    out = np.empty((1, x.shape[1]), x.dtype)
    exp_sum(x, 1, out)
    return out[0]


def test_isa_and_caches_are_recorded():
    info = bench.isa_info()
    assert info["isa"] in ("avx512", "avx2", "other") and info["isa_cpuinfo"] in ("avx512", "avx2", "other")
    caches = bench.cache_sizes()
    assert "llc" in caches
    n = bench.triad_elements(caches["llc"])
    assert 3 * 8 * n >= 256 << 20 and (caches["llc"] is None or 8 * n >= 4 * caches["llc"])


def test_fractions_of_the_limits():
    res = {"threads": [1, 2], "limits": {"exp": {"gexp_s_float32_1thr": 2.0, "gexp_s_float32_2thr": 4.0},
                                          "bandwidth": {"gbs_1thr": 10.0, "gbs_2thr": 20.0}},
           "selective": [{"shape": "S1", "gelem_s_1thr": 1.0, "gelem_s_2thr": 3.0}],
           "decode": {"small": {"weight_bytes_per_token": 10**9, "tok_s_1thr": 5.0, "tok_s_2thr": 10.0}}}
    bench.add_fractions(res)
    assert res["selective"][0]["frac_of_exp_1thr"] == 0.5 and res["selective"][0]["frac_of_exp_2thr"] == 0.75
    d = res["decode"]["small"]
    assert d["floor_tok_s_2thr"] == 20.0 and d["frac_of_floor_2thr"] == 0.5 and d["frac_of_floor_1thr"] == 0.5
    md = bench.limits_markdown({**res, "default_threads": 2,
                                "limits": {**res["limits"], "isa": {"isa": "avx2", "isa_cpuinfo": "avx2", "llvm_cpu": "x"},
                                           "caches": {"llc": 1 << 25}, "load_average_before": [1, 1, 1],
                                           "load_average_after": [1, 1, 1],
                                           "bandwidth": {**res["limits"]["bandwidth"], "array_bytes": 1 << 27}}})
    assert "| selective_scan S1 float32, G elements/s / G exp/s | 1.00 = 50% | 3.00 = 75% |" in md
    assert "10.0 / 20.0 = 50%" in md


def test_decode_weight_bytes_count_what_a_step_reads():
    import numpy as np

    from nbssm.lm import MambaLM

    for tie in (True, False):
        model = MambaLM.random(seed=0, d_model=8, n_layer=2, vocab_size=16, d_state=2, d_conv=2, tie_embeddings=tie)
        params = model.parameters()
        total = sum(a.nbytes for a in params.values())
        embed = params["backbone.embeddings.weight"].nbytes
        # tied: the embedding is the head (read whole); untied: only one embedding row is read
        assert bench.decode_weight_bytes(model) == (total if tie else total - embed)
        assert isinstance(bench.decode_weight_bytes(model), int) and np.isfinite(total)


# ----------------------------------------------------------------------------- contention
def _alive(pid):
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - not Linux
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_burners_run_and_are_reaped_even_on_errors():
    import pytest

    with bench.Burners(2) as burners:
        pids = burners.pids
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert not any(_alive(p) for p in pids) and burners.procs == []
    with pytest.raises(KeyboardInterrupt):
        with bench.Burners(1) as burners:
            pids = burners.pids
            raise KeyboardInterrupt
    assert not any(_alive(p) for p in pids)


def test_burner_exits_by_itself_when_its_parent_dies():
    import subprocess
    import sys
    import time

    code = ("import os, sys; from nbssm import bench; b = bench.Burners(1).start(); "
            "print(b.pids[0], flush=True); os._exit(0)")  # no cleanup at all, as after SIGKILL
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_contention_runs_every_condition_and_reaps_its_burners(monkeypatch):
    import pytest

    from nbssm.threads import get_threads

    seen = []

    def measure():
        seen.append(get_threads())
        return 2.0 if len(seen) % 2 else 1.0  # default threads: 2.0, 1 thread: 1.0

    res = bench.bench_contention({"tiny": (measure, "things/s")}, default_threads=get_threads(), rounds=2,
                                 burners=1, log=lambda *a: None)
    assert len(seen) == 2 * 2 * 2 and seen.count(1) >= 4  # rounds x (quiet, contended) x (default, 1 thread)
    f = res["figures"]["tiny"]
    assert f["contended_over_quiet_default"] == 1.0 and f["contended_default_over_contended_1thr"] == 2.0
    assert f["meets_target"] and res["burners"] == 1 and len(res["burner_pids"]) == 2
    assert not any(_alive(p) for p in res["burner_pids"])
    assert {"load_average_before", "load_average_contended", "load_average_after"} <= set(res)
    md = bench.contention_markdown(res)
    assert "| tiny (things/s) | 2 | 1 | 2 | 1 | 1.00 | 2.00 | met |" in md

    pids = []

    class Spy(bench.Burners):
        def start(self):
            out = super().start()
            pids.extend(self.pids)
            return out

    def fails_when_contended():
        if pids:  # the burners are running: this is the contended part
            raise RuntimeError("measurement failed")
        return 1.0

    monkeypatch.setattr(bench, "Burners", Spy)
    with pytest.raises(RuntimeError):
        bench.bench_contention({"bad": (fails_when_contended, "x")}, 1, rounds=1, burners=1, log=lambda *a: None)
    assert pids and not any(_alive(p) for p in pids)


def test_run_writes_limits_decode_and_contention(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "contention_figures", lambda quick=False: {"tiny": (lambda: 1.0, "x/s")})
    args = SimpleNamespace(repeats=5, out=str(tmp_path), quick=True, skip=["selective"], contention=True,
                           contention_rounds=1, triad_mib=8)
    assert bench.run(args) == 0
    res = json.loads((tmp_path / "kernels.json").read_text())
    m = res["machine"]
    assert m["isa"] in ("avx512", "avx2", "other") and len(m["load_average"]) == 3 and m["default_threads"] >= 1
    lim = res["limits"]
    assert lim["bandwidth"]["bytes_per_element"] == 24 and lim["bandwidth"]["write_allocate_counted"] is False
    assert all(lim["bandwidth"][f"gbs_{t}thr"] > 0 for t in res["threads"])
    assert all(lim["exp"][f"gexp_s_{dt}_{t}thr"] > 0 for dt in ("float32", "float64") for t in res["threads"])
    d = res["decode"]["small"]
    assert all(d[f"frac_of_floor_{t}thr"] > 0 for t in res["threads"])
    c = json.loads((tmp_path / "contention.json").read_text())
    assert c["figures"]["tiny"]["contended_over_quiet_default"] == 1.0
    assert "| tiny (x/s) |" in (tmp_path / "contention.md").read_text()
    assert "Machine limits" in (tmp_path / "kernels.md").read_text()
