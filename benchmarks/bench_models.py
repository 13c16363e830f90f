"""Runtime-model benchmarks: what the bitwise mode agreement costs, and forward vs step.

Run from the repository root (one command; take the shared lock on a busy machine)::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_models.py [--quick]

Measured in one run, each time the best of ``--repeat`` (wall clock, after a warm-up call):

1. projections: nbssm's row-wise fold kernel (``nbssm.models._project``, bitwise
   independent of the number of rows) against numpy's BLAS ``x @ w`` (the reference);
2. ``SelectiveMamba.forward`` on whole sequences with the fold projections against the same
   model with BLAS projections patched in (the reference: what giving up bitwise
   whole/chunk/step agreement would buy);
3. token-by-token ``step`` (one token per sequence, state carried) against ``forward`` on the
   whole sequence, per token.

Writes a Markdown table to stdout and to ``--out`` (default ``benchmarks/results/models.md``),
and the raw rows as JSON next to it, with machine, thread count and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np

import nbssm.models as M


def best(f, repeat: int) -> float:
    f()
    t = float("inf")
    for _ in range(repeat):
        s = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - s)
    return t


def machine() -> str:
    return (f"{platform.node()} {platform.machine()} | cpus {os.cpu_count()} | numba threads "
            f"{numba.get_num_threads()} | Python {platform.python_version()} | numpy {np.__version__} | "
            f"numba {numba.__version__} | {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/models.md")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []

    proj_shapes = [(1, 768, 3072), (256, 256, 1024)] + ([] if args.quick else [(2048, 768, 3072)])
    for dt in (np.float32, np.float64):
        for m, k, n in proj_shapes:
            x = rng.standard_normal((m, k)).astype(dt)
            w = rng.standard_normal((k, n)).astype(dt)
            tf = best(lambda: M._project(x, w), args.repeat)
            tb = best(lambda: x @ w, args.repeat)
            rows.append({"what": "projection", "dtype": np.dtype(dt).name, "shape": f"({m},{k})@({k},{n})",
                         "nbssm_s": tf, "reference": "numpy BLAS x @ w", "reference_s": tb, "ratio": tf / tb})

    model_dims = [(64, 128, 16, 64, 4)] + ([] if args.quick else [(256, 512, 16, 256, 4)])
    batch, length = 4, 256
    for dt in (np.float32, np.float64):
        for dims in model_dims:
            model = M.SelectiveMamba.random(*dims, seed=0, dtype=dt, strategy="sequential")
            x = rng.standard_normal((batch, length, dims[0])).astype(dt)
            tf = best(lambda: model.forward(x), args.repeat)
            orig = M._project
            M._project = lambda a, b: a @ b
            try:
                tb = best(lambda: model.forward(x), args.repeat)
            finally:
                M._project = orig
            label = f"E={dims[1]} N={dims[2]} I=O={dims[0]} b={batch} l={length}"
            rows.append({"what": "SelectiveMamba.forward", "dtype": np.dtype(dt).name, "shape": label,
                         "nbssm_s": tf, "reference": "same with BLAS projections", "reference_s": tb,
                         "ratio": tf / tb})

            def steps():
                s = model.initial_state(batch)
                for t in range(length):
                    _, s = model.step(x[:, t], s)

            ts = best(steps, max(1, args.repeat // 2))
            rows.append({"what": "SelectiveMamba.step x l", "dtype": np.dtype(dt).name, "shape": label,
                         "nbssm_s": ts, "reference": "forward on the whole sequence", "reference_s": tf,
                         "ratio": ts / tf})

    head = f"Machine: {machine()}\n\n"
    table = ["| what | dtype | shape | nbssm (ms) | reference | reference (ms) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['what']} | {r['dtype']} | {r['shape']} | {r['nbssm_s'] * 1e3:.2f} | {r['reference']} "
                     f"| {r['reference_s'] * 1e3:.2f} | {r['ratio']:.2f} |")
    text = head + "\n".join(table) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
