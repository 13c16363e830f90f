"""Accuracy of the dense linear-CDE step vs its Taylor order, in the experiment's regime.

Run:  python benchmarks/cde_taylor_error.py
Paths, gates and parameters exactly as in ``nbssm experiment signature-tasks`` (N = 256,
100 samples, omega = xi = (t, X), A_i entries N(0, 1/N)); the reference is the exact step
computed by the augmented-matrix exponential exp([[M, v], [0, 0]]) (scaling and squaring,
degree-30 Taylor) on a few paths. Writes ``benchmarks/results/cde_taylor_error.md``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from naive import expm_reference as expm  # noqa: E402  (the tests' accurate exp(M))


def main():
    from nbssm.cde import linear_cde_scan
    from nbssm.experiments import signature_tasks as st

    rows = []
    for task, dim in st.TASKS.items():
        paths, _ = st.make_data(dim, 2000, seed=0)
        paths = paths[:4]
        rng = st._model_rng(0, dim, "dense")
        n = st.N_FEATURES
        A = rng.standard_normal((dim + 1, n, n)) / math.sqrt(n)
        B = rng.standard_normal((n, dim + 1))
        z0 = st._z0(paths, rng, n)
        g = st._gates(paths)
        # exact reference
        ref = np.empty_like(z0)
        mus = []
        for p in range(paths.shape[0]):
            z = z0[p].copy()
            for k in range(g.shape[1]):
                M = np.tensordot(g[p, k], A, axes=1)
                mus.append(np.linalg.norm(M, 2))
                aug = np.zeros((n + 1, n + 1))
                aug[:n, :n] = M
                aug[:n, n] = B @ g[p, k]
                E = expm(aug)
                z = E[:n, :n] @ z + E[:n, n]
            ref[p] = z
        scale = np.abs(ref).max()
        for label, kw in [("euler", dict(method="euler")), ("taylor 1", dict(order=1)), ("taylor 2", dict(order=2)),
                          ("taylor 3", dict(order=3)), ("taylor 4", dict(order=4))]:
            for dt in (np.float64, np.float32):
                got = linear_cde_scan(A, B, g, g, z0, backend="blas", compute_dtype=dt, **kw)
                err = np.abs(got - ref).max() / scale
                rows.append((task, label, np.dtype(dt).name, err, float(np.median(mus)), float(np.max(mus))))
                print(rows[-1], flush=True)
    lines = ["| task | step | GEMM dtype | max error / max abs(state) | median ‖M_k‖₂ | max ‖M_k‖₂ |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} | {r[4]:.3f} | {r[5]:.3f} |")
    out = os.path.join(os.path.dirname(__file__), "results", "cde_taylor_error.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
