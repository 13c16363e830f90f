"""nbssm.dask on 1 and 2 local worker processes (one thread each): batch scoring, a long
time-parallel linear scan, and the dask path's overhead over calling the model directly.

    python benchmarks/bench_dask.py            # full size (a quiet machine, >= 2 cores, ~4 GB)
    python benchmarks/bench_dask.py --quick    # small shapes, a smoke run
    python benchmarks/bench_dask.py --out results.json

Cases:

* ``score``: log-likelihood of 64 prompts x 512 tokens under a mamba-130m-shaped random
  model (d_model 768, 24 layers, vocab 50280, state 16), 16 tasks of 4 prompts; the model
  is built once per worker (``ModelSource``), never shipped. Targets: 2 workers >= 1.7x
  one worker; one worker <= 10% over ``log_likelihood`` called in this process (one thread).
* ``scan``: a 2^24-step, 1-channel linear scan over 8 time blocks (``combine="serial"``),
  inputs generated and persisted on the workers; checked bitwise against
  ``nbssm.ops.linear_scan(strategy="chunked")`` here. Target: 2 workers >= 1.5x one.

Writes JSON to ``--out`` (default: ``$TMPDIR/nbssm_bench_dask.json``).
"""

from __future__ import annotations

import os

# this process is the single-machine baseline: one thread, like one worker
for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "nbssm_bench_dask.json"))
    ap.add_argument("--workers", default="1,2", help="worker counts to time (comma-separated)")
    ap.add_argument("--scan-log2", type=int, default=None, help="log2 of the scan length (default 24; --quick 18)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.scan_log2 is not None:
        cfg["scan_log2"] = args.scan_log2

    import dask.array as da
    import distributed

    import nbssm.dask as nd
    from nbssm import ops
    from nbssm.dask.lm import log_likelihood

    dims = {k: cfg[k] for k in ("d_model", "n_layer", "vocab_size", "d_state")}
    source = nd.ModelSource.random(seed=0, dtype="float32", **dims)
    ids = np.random.default_rng(1).integers(0, cfg["vocab_size"], (cfg["prompts"], cfg["tokens"]))
    report = {"config": cfg, "quick": args.quick, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                              "platform": platform.platform()}}

    # ---- single machine, this process, one thread
    model = source.build()
    log_likelihood(model, ids[:1, :16])  # compile
    direct = {}
    direct_s, direct_all = _best(lambda: direct.setdefault("ll", log_likelihood(model, ids, cfg["batch_size"])),
                                 cfg["repeats"])
    want_ll = log_likelihood(model, ids, cfg["batch_size"])
    model = None  # free the weights before the cluster runs
    T = 2 ** cfg["scan_log2"]
    lc = ops.LINEAR_CHUNK_LENGTH
    chunks = nd.time_chunks(T, cfg["blocks"], lc)
    a_lazy, b_lazy = _scan_inputs(chunks)
    a_loc, b_loc = (x.compute(scheduler="synchronous") for x in (a_lazy, b_lazy))
    ops.linear_scan(a_loc[:, :4000], b_loc[:, :4000], strategy="chunked", chunk_length=lc)
    scan_direct_s, _ = _best(lambda: ops.linear_scan(a_loc, b_loc, strategy="chunked", chunk_length=lc),
                             cfg["repeats"])
    want_scan = ops.linear_scan(a_loc, b_loc, strategy="chunked", chunk_length=lc)
    a_loc = b_loc = None  # free the inputs before the cluster runs
    report["direct"] = {"score_s": direct_s, "score_all_s": direct_all, "scan_s": scan_direct_s}

    for n in [int(w) for w in args.workers.split(",")]:
        cluster = nd.local_cluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=40)
        client = distributed.Client(cluster)
        try:
            # warm up: the model on every worker, every kernel compiled (or loaded from the cache)
            client.run(lambda: source.load() and None)
            nd.score(source, da.from_array(ids[:n, :16], chunks=(1, 16))).compute()
            darr = da.from_array(ids, chunks=(cfg["per_task"], cfg["tokens"]))
            if args.quick:
                nd.score(source, darr, cfg["batch_size"]).compute()  # warm up (full size: the small run above)
            got = {}
            score_s, score_all = _best(
                lambda: got.setdefault("ll", nd.score(source, darr, cfg["batch_size"]).compute()), cfg["repeats"])
            score_equal = bool(np.array_equal(got["ll"], want_ll))
            # the long scan: inputs generated and kept on the workers
            a_d, b_d = client.persist([a_lazy, b_lazy])
            distributed.wait([a_d, b_d])
            nd.linear_scan(a_d, b_d, strategy="chunked", chunk_length=lc).sum().compute()  # warm up

            def run_scan():
                out = nd.linear_scan(a_d, b_d, strategy="chunked", chunk_length=lc).persist()
                distributed.wait(out)
                return out

            scan_s, scan_all = _best(run_scan, cfg["repeats"])
            out = run_scan().compute()
            scan_equal = bool(np.array_equal(out, want_scan))
            out = a_d = b_d = None  # release the persisted blocks
            report[f"workers_{n}"] = {"score_s": score_s, "score_all_s": score_all, "score_bitwise_equal_direct": score_equal,
                                      "scan_s": scan_s, "scan_all_s": scan_all, "scan_bitwise_equal_chunked": scan_equal}
        finally:
            client.close()
            cluster.close()

    w1, w2 = report.get("workers_1"), report.get("workers_2")
    summary = {}
    if w1:
        summary["score_overhead_1_worker"] = w1["score_s"] / direct_s - 1.0
    if w1 and w2:
        summary["score_speedup_2_vs_1"] = w1["score_s"] / w2["score_s"]
        summary["scan_speedup_2_vs_1"] = w1["scan_s"] / w2["scan_s"]
        summary["targets"] = {"score_speedup>=1.7": summary["score_speedup_2_vs_1"] >= 1.7,
                              "score_overhead<=0.10": summary["score_overhead_1_worker"] <= 0.10,
                              "scan_speedup>=1.5": summary["scan_speedup_2_vs_1"] >= 1.5,
                              "scan_bitwise": bool(w2["scan_bitwise_equal_chunked"])}
    report["summary"] = summary
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
