"""Do this machine's CPUs share execution units or memory bandwidth?

Runs two throughput-bound loops (float32 multiply-adds on an L1-resident array, and a triad
over arrays far larger than the last-level cache), first in one process, then in one process
per CPU at the same time. If two CPUs were SMT siblings of one physical core, the per-process
multiply-add rate would drop by about half when both run; if they share a memory channel,
the triad's per-process bandwidth drops instead. Used to tell apart a kernel that scales
poorly because of its own serial parts from a machine whose CPUs cannot both run at full rate.

    python benchmarks/core_sharing.py [--procs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from nbssm._config import affinity


def _measure() -> dict[str, float]:
    import numba

    @numba.njit(fastmath=True)
    def fma(n, x, a, b):
        for _ in range(n):
            for k in range(x.shape[0]):
                x[k] = x[k] * a[k] + b[k]
        return x.sum()

    @numba.njit(fastmath=True)
    def triad(x, y, z):
        for k in range(x.shape[0]):
            x[k] = y[k] + np.float32(1.5) * z[k]
        return x[0]

    m, n = 512, 400_000
    x = np.ones(m, np.float32)
    a = np.full(m, 0.9999999, np.float32)
    b = np.full(m, 1e-7, np.float32)
    fma(2, x, a, b)
    best_fma = min(_timed(lambda: fma(n, x, a, b)) for _ in range(5))
    big = 1 << 25
    xs, ys, zs = (np.full(big, v, np.float32) for v in (0.0, 1.0, 1.0))
    triad(xs, ys, zs)
    best_triad = min(_timed(lambda: triad(xs, ys, zs)) for _ in range(5))
    return {"fma_gflops": 2 * m * n / best_fma / 1e9, "triad_gbs": 12 * big / best_triad / 1e9}


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(_measure()), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=affinity())
    args = p.parse_args()
    cmd = [sys.executable, __file__, "--child"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    alone = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.procs)]
    together = [json.loads(q.communicate()[0]) for q in procs]
    print(f"{platform.processor() or platform.machine()}, {affinity()} CPUs, load {os.getloadavg()}")
    print(f"alone:    multiply-add {alone['fma_gflops']:.1f} GFLOP/s, triad {alone['triad_gbs']:.1f} GB/s")
    for i, r in enumerate(together):
        print(
            f"together {i}: multiply-add {r['fma_gflops']:.1f} GFLOP/s "
            f"({r['fma_gflops'] / alone['fma_gflops']:.0%}), triad {r['triad_gbs']:.1f} GB/s "
            f"({r['triad_gbs'] / alone['triad_gbs']:.0%})"
        )


if __name__ == "__main__":
    main()
