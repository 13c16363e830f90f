"""Benchmark: nbssm.signature against iisignature (or esig) in the same run.

Run (one command):  flock /tmp/nbssm-bench.lock python benchmarks/bench_signature.py
Target: nbssm at least as fast as iisignature for batch 1000, length 100, dim 3,
depth 4. iisignature is not in the test extra (it builds from source:
``pip install --no-build-isolation iisignature`` after numpy, setuptools and wheel); when it is
absent the script compares with esig and says so. Writes
``benchmarks/results/bench_signature.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def _time(fn, repeats):
    fn()  # warm (compilation, caches)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def _reference():
    try:
        import iisignature

        return "iisignature", getattr(iisignature, "__version__", "0.24+"), lambda p, m: iisignature.sig(p, m)
    except ImportError:
        pass
    try:
        import esig

        def f(p, m):
            return np.stack([np.asarray(esig.stream2sig(x, m))[1:] for x in p])

        return "esig", getattr(esig, "__version__", "?"), f
    except ImportError:
        return None, None, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)

    import numba

    from nbssm.signatures import signature

    name, version, ref = _reference()
    cases = [(1000, 100, 3, 4), (1000, 100, 2, 6), (100, 1000, 3, 4), (1000, 100, 5, 3)]
    rows = []
    rng = np.random.default_rng(0)
    for b, l, d, m in cases:
        path = rng.standard_normal((b, l, d))
        ours = _time(lambda: signature(path, m), args.repeats)
        row = {"batch": b, "length": l, "dim": d, "depth": m, "nbssm_min_s": ours[0], "nbssm_median_s": ours[1]}
        if ref is not None:
            np.testing.assert_allclose(signature(path[:5], m), ref(path[:5], m), rtol=1e-9, atol=1e-9)
            theirs = _time(lambda: ref(path, m), args.repeats)
            row.update({"ref_min_s": theirs[0], "ref_median_s": theirs[1], "speedup_min": theirs[0] / ours[0],
                        "speedup_median": theirs[1] / ours[1]})
        rows.append(row)
        print(row, flush=True)
    meta = {"reference": name, "reference_version": version, "machine": platform.machine(),
            "processor": platform.processor() or platform.platform(), "cpu_count": os.cpu_count(),
            "numba_threads": numba.get_num_threads(), "numpy": np.__version__, "numba": numba.__version__,
            "python": platform.python_version(), "repeats": args.repeats}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_signature.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    lines = [f"Reference: {name} {version}; {meta['cpu_count']} CPUs, {meta['numba_threads']} numba threads, "
             f"numpy {meta['numpy']}, numba {meta['numba']}; min / median of {args.repeats} runs.", "",
             "| batch | length | dim | depth | nbssm (ms) | reference (ms) | speedup (min) | speedup (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['length']} | {r['dim']} | {r['depth']} | {1e3 * r['nbssm_min_s']:.2f} | "
                     + (f"{1e3 * r['ref_min_s']:.2f} | {r['speedup_min']:.2f}x | {r['speedup_median']:.2f}x |"
                        if "ref_min_s" in r else "n/a | n/a | n/a |"))
    with open(os.path.join(args.out, "bench_signature.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
