"""nbssm.dask on 1 and 2 local worker processes (one thread each): batch scoring, a long
time-parallel linear scan, and the dask path's overhead over calling the model directly.

    python benchmarks/bench_dask.py            # full size (a quiet machine, >= 2 cores, ~4 GB;
                                               # about 25 min on 2 cores, mostly the scoring)
    python benchmarks/bench_dask.py --quick    # small shapes, a smoke run (seconds)
    python benchmarks/bench_dask.py --prompts 16 --tokens 256 --scan-log2 22 --out-md x.md

Cases:

* ``score``: log-likelihood of 64 prompts x 512 tokens under a mamba-130m-shaped random
  model (d_model 768, 24 layers, vocab 50280, state 16), 16 tasks of 4 prompts; the model
  is built once per worker (``ModelSource``), never shipped. Targets: 2 workers >= 1.7x
  one worker; one worker <= 10% over ``log_likelihood`` called in this process (one thread).
* ``scan``: a 2^24-step, 1-channel linear scan over 8 time blocks (``combine="serial"``),
  inputs generated and persisted on the workers; checked bitwise against
  ``nbssm.ops.linear_scan(strategy="chunked")`` here. Target: 2 workers >= 1.5x one.

Prints its progress; records the machine (CPU, ISA, cores, load average before and after);
writes ``--out`` (JSON, default ``benchmarks/results/dask.json``) and ``--out-md`` (default
``benchmarks/results/dask.md``); ``--quick`` writes to ``$TMPDIR`` unless told otherwise.
"""

from __future__ import annotations

import os

# this process is the single-machine baseline: one thread, like one worker
for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

FULL = dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16, prompts=64, tokens=512, per_task=4,
            batch_size=2, scan_log2=24, blocks=8, repeats=2)
QUICK = dict(d_model=64, n_layer=2, vocab_size=1000, d_state=16, prompts=16, tokens=64, per_task=4,
             batch_size=2, scan_log2=18, blocks=8, repeats=2)


def _scan_block(t0, t1, seed=0):
    """The inputs ``(a, b)`` of the time block ``[t0, t1)`` stacked, a function of its position only."""
    rng = np.random.default_rng([seed, t0])
    a = rng.uniform(0.999, 1.0, (1, t1 - t0, 1))
    b = rng.standard_normal((1, t1 - t0, 1))
    return np.stack([a, b])


def _scan_inputs(chunks):
    """Lazy ``a, b`` (1, T, 1) with the given time chunks; block j of both made by one task
    (so they live on the same worker)."""
    import dask
    import dask.array as da

    parts, t0 = [], 0
    for c in chunks:
        parts.append(da.from_delayed(dask.delayed(_scan_block, pure=True)(t0, t0 + c), shape=(2, 1, c, 1),
                                     dtype=np.float64))
        t0 += c
    ab = da.concatenate(parts, axis=2)
    return ab[0], ab[1]


def _best(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times), times


def _log(msg: str) -> None:
    print(f"[bench_dask {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _load() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _machine() -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from nbssm.bench import machine_info

    return machine_info()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    ap.add_argument("--out", default=None, help="JSON report (default benchmarks/results/dask.json)")
    ap.add_argument("--out-md", default=None, help="markdown report (default benchmarks/results/dask.md)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (comma-separated)")
    ap.add_argument("--scan-log2", type=int, default=None, help="log2 of the scan length (default 24; --quick 18)")
    ap.add_argument("--prompts", type=int, default=None, help="documents scored (default 64)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per document (default 512)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per case (best kept; default 2)")
    ap.add_argument("--label", default="", help="a note on the conditions, written to the report")
    ap.add_argument("--cases", default="score,scan", help="cases to run (comma-separated: score, scan)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("scan_log2", "prompts", "tokens", "repeats"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    tmp = tempfile.gettempdir()
    out_json = args.out or (os.path.join(tmp, "nbssm_bench_dask.json") if args.quick
                            else os.path.join(results, "dask.json"))
    out_md = args.out_md or (os.path.join(tmp, "nbssm_bench_dask.md") if args.quick
                             else os.path.join(results, "dask.md"))

    import dask.array as da
    import distributed

    import nbssm.dask as nd
    from nbssm import ops
    from nbssm.dask.lm import log_likelihood

    t_start = time.perf_counter()
    report = {"config": cfg, "quick": args.quick, "label": args.label, "machine": _machine(),
              "load_before": _load()}
    _log(f"config {cfg}; load average {report['load_before']}")
    dims = {k: cfg[k] for k in ("d_model", "n_layer", "vocab_size", "d_state")}
    source = nd.ModelSource.random(seed=0, dtype="float32", **dims)
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], (cfg["prompts"], cfg["tokens"]))

    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases or cases - {"score", "scan"}:
        ap.error(f"--cases: expected a comma-separated subset of score,scan, got {args.cases!r}")
    report["cases"] = sorted(cases)
    direct_s = scan_direct_s = None
    report["direct"] = {}
    # ---- single machine, this process, one thread
    if "score" in cases:
        _log("building the model here (one thread)")
        model = source.build()
        log_likelihood(model, ids[:1, :16])  # compile
        direct = {}
        _log(f"scoring {ids.shape} directly ({cfg['repeats']} runs)")
        direct_s, direct_all = _best(
            lambda: direct.__setitem__("ll", log_likelihood(model, ids, cfg["batch_size"])), cfg["repeats"])
        want_ll = direct["ll"]
        model = None  # free the weights before the cluster runs
        report["direct"].update(score_s=direct_s, score_all_s=direct_all)
        _log(f"direct: score {direct_s:.3f} s")
    T = 2 ** cfg["scan_log2"]
    lc = ops.LINEAR_CHUNK_LENGTH
    chunks = nd.time_chunks(T, cfg["blocks"], lc)
    a_lazy, b_lazy = _scan_inputs(chunks)
    if "scan" in cases:
        a_loc, b_loc = (x.compute(scheduler="synchronous") for x in (a_lazy, b_lazy))
        ops.linear_scan(a_loc[:, :4000], b_loc[:, :4000], strategy="chunked", chunk_length=lc)
        scan = {}
        _log(f"linear scan of 2^{cfg['scan_log2']} steps directly (chunked, one thread)")
        scan_direct_s, scan_direct_all = _best(
            lambda: scan.__setitem__("h", ops.linear_scan(a_loc, b_loc, strategy="chunked", chunk_length=lc)),
            max(cfg["repeats"], 3))
        want_scan = scan.pop("h")
        a_loc = b_loc = None  # free the inputs before the cluster runs
        report["direct"].update(scan_s=scan_direct_s, scan_all_s=scan_direct_all)
        _log(f"direct: scan {scan_direct_s * 1e3:.1f} ms")

    for n in [int(w) for w in args.workers.split(",")]:
        _log(f"starting {n} worker process(es), one thread each")
        cluster = nd.local_cluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=40)
        client = distributed.Client(cluster)
        row: dict = {}
        try:
            if "score" in cases:
                # warm up: the model on every worker, every kernel compiled (or loaded from the cache)
                t0 = time.perf_counter()
                client.run(lambda: source.load() and None)
                load_s = time.perf_counter() - t0
                nd.score(source, da.from_array(ids[:n, :16], chunks=(1, 16))).compute()
                darr = da.from_array(ids, chunks=(cfg["per_task"], cfg["tokens"]))
                if args.quick:
                    nd.score(source, darr, cfg["batch_size"]).compute()  # warm up (full size: the small run above)
                got = {}
                _log(f"{n} worker(s): model built on every worker in {load_s:.2f} s; scoring ({cfg['repeats']} runs)")
                score_s, score_all = _best(
                    lambda: got.__setitem__("ll", nd.score(source, darr, cfg["batch_size"]).compute()),
                    cfg["repeats"])
                score_equal = bool(np.array_equal(got["ll"], want_ll))
                _log(f"{n} worker(s): score {score_s:.3f} s (bitwise equal to direct: {score_equal})")
                row.update(score_s=score_s, score_all_s=score_all, score_bitwise_equal_direct=score_equal,
                           model_load_s=load_s)
                client.run(lambda: nd.lm.clear_models())
            report[f"workers_{n}"] = row
        finally:
            client.close()
            cluster.close()

    if "scan" in cases:
        counts = [int(w) for w in args.workers.split(",")]
        _log(f"scan: clusters of {counts} worker process(es) side by side, runs alternated between them")
        for n, row in _paired_scans(nd, distributed, counts, a_lazy, b_lazy, lc, want_scan,
                                    max(cfg["repeats"], 3)).items():
            report.setdefault(f"workers_{n}", {}).update(row)
            _log(f"{n} worker(s): scan best {row['scan_s'] * 1e3:.1f} ms, median {row['scan_median_s'] * 1e3:.1f} ms "
                 f"(bitwise equal to chunked: {row['scan_bitwise_equal_chunked']})")

    w1, w2 = report.get("workers_1"), report.get("workers_2")
    summary = {}
    targets = {}
    if w1 and "score_s" in w1:
        summary["score_overhead_1_worker"] = w1["score_s"] / direct_s - 1.0
        targets["score_overhead<=0.10"] = summary["score_overhead_1_worker"] <= 0.10
    if w1 and "scan_s" in w1:
        summary["scan_1_worker_over_direct"] = w1["scan_s"] / scan_direct_s
    if w1 and w2 and "score_s" in w1:
        summary["score_speedup_2_vs_1"] = w1["score_s"] / w2["score_s"]
        targets["score_speedup>=1.7"] = summary["score_speedup_2_vs_1"] >= 1.7
    if w1 and w2 and "scan_s" in w1:
        summary["scan_speedup_2_vs_1"] = w1["scan_s"] / w2["scan_s"]
        summary["scan_speedup_2_vs_1_median"] = w1["scan_median_s"] / w2["scan_median_s"]
        pairs = [x / y for x, y in zip(w1["scan_all_s"], w2["scan_all_s"])]
        summary["scan_speedup_2_vs_1_per_round"] = pairs
        summary["scan_speedup_2_vs_1_median_of_rounds"] = float(np.median(pairs))
        targets["scan_speedup>=1.5"] = summary["scan_speedup_2_vs_1"] >= 1.5
        targets["scan_bitwise"] = bool(w2["scan_bitwise_equal_chunked"])
    if targets:
        summary["targets"] = targets
    report["summary"] = summary
    report["load_after"] = _load()
    report["wall_s"] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(report, f, indent=2)
    with open(out_md, "w") as f:
        f.write(to_markdown(report))
    print(json.dumps(summary, indent=2))
    _log(f"wrote {out_json} and {out_md} ({report['wall_s']:.0f} s in all; load average {report['load_after']})")
    return report


def _paired_scans(nd, distributed, counts, a_lazy, b_lazy, lc, want, repeats):
    """The long scan on one cluster per worker count, all started first, the timed runs
    alternated between them round by round (each round sees the same state of a shared
    machine; an idle cluster costs only its heartbeats). Inputs generated and persisted on
    each cluster's workers; every run's result is forgotten before the next."""
    started = []
    try:
        for n in counts:
            cluster = nd.local_cluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=40)
            client = distributed.Client(cluster, set_as_default=False)
            started.append((n, cluster, client))
        inputs = {}
        for n, _, client in started:
            with client.as_current():
                a_d, b_d = client.persist([a_lazy, b_lazy])
                distributed.wait([a_d, b_d])
                inputs[n] = (a_d, b_d)
                nd.linear_scan(a_d, b_d, strategy="chunked", chunk_length=lc).sum().compute()  # warm up

        def run(n, client):
            a_d, b_d = inputs[n]
            with client.as_current():
                out = nd.linear_scan(a_d, b_d, strategy="chunked", chunk_length=lc).persist()
                distributed.wait(out)
            return out

        times = {n: [] for n, _, _ in started}
        for _ in range(repeats):
            for n, _, client in started:
                t0 = time.perf_counter()
                out = run(n, client)
                times[n].append(time.perf_counter() - t0)
                client.cancel(out)  # the graph's keys are deterministic: forget this result
                out = None
                time.sleep(0.2)
        rows = {}
        for n, _, client in started:
            with client.as_current():
                equal = bool(np.array_equal(run(n, client).compute(), want))
            rows[n] = dict(scan_s=min(times[n]), scan_median_s=float(np.median(times[n])), scan_all_s=times[n],
                           scan_bitwise_equal_chunked=equal)
        return rows
    finally:
        inputs = None
        for _, cluster, client in started:
            client.close()
            cluster.close()


def to_markdown(report: dict) -> str:
    """The report as a markdown page."""
    m, cfg, s = report["machine"], report["config"], report.get("summary", {})
    lines = ["# nbssm.dask: 1 vs 2 worker processes (one thread each)", "",
             f"Machine: {m.get('cpu')} ({m.get('simd')}), {m.get('cores')} cores; Python {m.get('python')}, "
             f"numpy {m.get('numpy')}, numba {m.get('numba')}; {m.get('date_utc')} UTC.",
             f"Load average (1, 5, 15 min) before {report.get('load_before')}, after {report.get('load_after')}.",
             ]
    if report.get("label"):
        lines.append(f"Conditions: {report['label']}.")
    lines += ["", f"Scoring: {cfg['prompts']} prompts x {cfg['tokens']} tokens, random MambaLM d_model "
              f"{cfg['d_model']}, {cfg['n_layer']} layers, vocab {cfg['vocab_size']}, state {cfg['d_state']}; "
              f"tasks of {cfg['per_task']} prompts. Scan: 2^{cfg['scan_log2']} steps, 1 channel, "
              f"{cfg['blocks']} time blocks, combine=\"serial\". Best of {cfg['repeats']} runs (scan: of "
              f"{max(cfg['repeats'], 3)}).", "",
              "| case | direct (this process) | 1 worker | 2 workers | 2 vs 1 | bitwise |",
              "|---|---|---|---|---|---|"]
    d = report["direct"]
    w1, w2 = report.get("workers_1", {}), report.get("workers_2", {})

    def f(x, scale=1.0, unit="s"):
        return "-" if x is None else f"{x * scale:.3f} {unit}" if unit == "s" else f"{x * scale:.1f} {unit}"

    def cell(key, x):
        return "-" if key not in x else f"{x[key]}"

    if "score_s" in d:
        lines.append(f"| score | {f(d['score_s'])} | {f(w1.get('score_s'))} | {f(w2.get('score_s'))} | "
                     f"{s.get('score_speedup_2_vs_1', float('nan')):.2f}x | "
                     f"{cell('score_bitwise_equal_direct', w1)}/{cell('score_bitwise_equal_direct', w2)} |")
    if "scan_s" in d:
        lines.append(f"| scan | {f(d['scan_s'], 1e3, 'ms')} | {f(w1.get('scan_s'), 1e3, 'ms')} | "
                     f"{f(w2.get('scan_s'), 1e3, 'ms')} | {s.get('scan_speedup_2_vs_1', float('nan')):.2f}x | "
                     f"{cell('scan_bitwise_equal_chunked', w1)}/{cell('scan_bitwise_equal_chunked', w2)} |")
    if "scan_speedup_2_vs_1_median_of_rounds" in s:
        ms = ", ".join(f"{x * 1e3:.0f}" for x in w1["scan_all_s"])
        ms2 = ", ".join(f"{x * 1e3:.0f}" for x in w2["scan_all_s"])
        lines += ["", f"Scan runs alternated between the two clusters (ms; 1 worker: {ms}; 2 workers: {ms2}): "
                  f"2 vs 1 of the medians {s['scan_speedup_2_vs_1_median']:.2f}x, median of the per-round ratios "
                  f"{s['scan_speedup_2_vs_1_median_of_rounds']:.2f}x, best/best {s['scan_speedup_2_vs_1']:.2f}x."]
    if "score_overhead_1_worker" in s:
        lines += ["", f"Dask path at one worker over the direct call: {100 * s['score_overhead_1_worker']:+.1f}% "
                  f"(target <= +10%)."]
    if "targets" in s:
        lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in s["targets"].items()) + "."]
    lines += ["", f"Whole run: {report.get('wall_s', 0):.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
