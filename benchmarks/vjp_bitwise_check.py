"""Dump / compare selective_scan_vjp gradients on a few shapes (bitwise check of a kernel change).

Usage: run `python benchmarks/vjp_bitwise_check.py dump` with the old tree on PYTHONPATH, then
`python benchmarks/vjp_bitwise_check.py compare ck` with the new one (`ck`: also the VJP from
`selective_scan_checkpointed` checkpoints). Results in /tmp/vjp_baseline.npz."""
import sys

import numpy as np

import nbssm.ops as O
from nbssm import reference as R

cases = []
for dt in (np.float32, np.float64):
    for shape, kwx in [((2, 37, 45, 5), dict()), ((1, 64, 96, 16), dict()), ((3, 50, 33, 4), dict(initial_state=True)),
                       ((1, 16, 32, 3), dict()), ((2, 21, 70, 40), dict(initial_state=True)), ((1, 5, 7, 2), dict())]:
        cases.append((dt, shape, kwx))
out = {}
for i, (dt, shape, kwx) in enumerate(cases):
    for variant in ("full", "bare"):
        kw = R.random_inputs("selective", shape, dtype=dt, seed=i, **kwx)
        if variant == "bare":
            for k in ("D", "z", "delta_bias"):
                kw.pop(k, None)
            kw["delta_softplus"] = False
        rng = np.random.default_rng(100 + i)
        gy = rng.standard_normal(shape[:3]).astype(dt)
        ghT = rng.standard_normal((shape[0], shape[2], shape[3])).astype(dt)
        g = O.selective_scan_vjp(gy, grad_final_state=ghT, **kw)
        for k, v in g._asdict().items():
            if v is not None:
                out[f"{i}_{variant}_{k}"] = v
        if len(sys.argv) > 2 and sys.argv[2] == "ck":
            y, hT, ck = O.selective_scan_checkpointed(**kw)
            y0, hT0 = O.selective_scan(return_final_state=True, strategy="sequential", **kw)
            assert np.array_equal(y, y0, equal_nan=True) and np.array_equal(hT, hT0, equal_nan=True), (i, variant)
            if not np.isfinite(ck).all():
                print("non-finite checkpoints, skipped", i, variant)
                continue
            g2 = O.selective_scan_vjp(gy, grad_final_state=ghT, checkpoints=ck, **kw)
            for k, v in g2._asdict().items():
                if v is not None:
                    out[f"{i}_{variant}_{k}"] = v  # overwrite: compare checkpointed path too
                    assert np.array_equal(v, getattr(g, k), equal_nan=True), (i, variant, k)
mode = sys.argv[1]
if mode == "dump":
    np.savez("/tmp/vjp_baseline.npz", **out)
    print("dumped", len(out))
else:
    base = np.load("/tmp/vjp_baseline.npz")
    bad = [k for k in base.files if not np.array_equal(base[k], out[k], equal_nan=True)]
    assert set(base.files) == set(out), "keys differ"
    print("compared", len(base.files), "bad", bad)
