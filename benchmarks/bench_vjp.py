"""selective_scan forward + backward: nbssm (forward op + ``selective_scan_vjp``) against
PyTorch autograd through a torch port of ``selective_scan_ref``, same run, interleaved.

Run (torch must be installed: ``pip install torch==2.13.0``, CPU wheel)::

    python benchmarks/bench_vjp.py                 # S1 (1, 2048, 1536, 16) float32
    python benchmarks/bench_vjp.py --quick         # a small shape
    python benchmarks/bench_vjp.py --no-torch      # nbssm only (no torch needed; the torch
                                                   # autograd round takes minutes at S1)

Writes ``benchmarks/results/vjp.md`` and ``vjp.json``. Targets: forward + backward at least 20x
faster than torch autograd, and at most 4x nbssm's own forward ("forward + backward" is the
checkpointing forward ``selective_scan_checkpointed`` then ``selective_scan_vjp(checkpoints=)``;
the old path, the plain forward then the VJP with its own checkpoint pass, is reported too, and
so are 1-thread CPU-time ratios). The machine may be shared:
rounds are interleaved (nbssm forward, nbssm forward + backward, torch forward + backward) and
the 1-minute load average is recorded before every round; the reported figure is the median
over rounds (min in parentheses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import nbssm
import nbssm.ops as O
from nbssm import reference as R


def torch_selective_scan(torch, u, delta, A, B, C, D, z, delta_bias):
    """``selective_scan_ref`` in torch (nbssm layout), softplus on, a loop over time."""
    dl = torch.nn.functional.softplus(delta + delta_bias)  # (b, l, d)
    b, l, d = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(l):
        dlt = dl[:, t, :, None]
        h = torch.exp(dlt * A) * h + (dlt * B[:, t, None, :]) * u[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) + D * u
    return y * torch.nn.functional.silu(z)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="time nbssm only (no torch autograd rounds)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "vjp.md"))
    args = p.parse_args(argv)
    torch = None if args.no_torch else __import__("torch")

    shape = (1, 256, 256, 16) if args.quick else (1, 2048, 1536, 16)
    kw = R.random_inputs("selective", shape, dtype=np.float32, seed=0, initial_state=False)
    gy = np.random.default_rng(1).standard_normal(shape[:3]).astype(np.float32)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    tin = {} if torch is None else {k: torch.from_numpy(np.array(kw[k])).requires_grad_(True) for k in names}
    tgy = None if torch is None else torch.from_numpy(gy)

    def nb_fwd():
        return O.selective_scan(**kw)

    def nb_fwd_bwd():  # the checkpointing forward, then the backward from its checkpoints
        _, _, ck = O.selective_scan_checkpointed(**kw)
        return O.selective_scan_vjp(gy, checkpoints=ck, **kw)

    def nb_fwd_bwd_old():  # the plain forward, then the backward with its own checkpoint pass
        O.selective_scan(**kw)
        return O.selective_scan_vjp(gy, **kw)

    def torch_fwd_bwd():
        for v in tin.values():
            v.grad = None
        y = torch_selective_scan(torch, *(tin[k] for k in names))
        y.backward(tgy)

    nb_fwd_bwd()  # compile / load
    nb_fwd_bwd_old()
    agree = {}
    if torch is not None:
        torch_fwd_bwd()
        # agreement of the two gradients (float32 vs float32)
        g = O.selective_scan_vjp(gy, **kw)
        agree = {k: float(np.max(np.abs(getattr(g, k) - tin[k].grad.numpy())) /
                          max(float(np.max(np.abs(tin[k].grad.numpy()))), 1e-30)) for k in names}
    timed = [("fwd", nb_fwd), ("fwd_bwd", nb_fwd_bwd), ("fwd_bwd_old", nb_fwd_bwd_old)] + ([("torch", torch_fwd_bwd)] if torch else [])
    rows = {key: [] for key, _ in timed}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for key, f in timed:
            t = time.perf_counter()
            f()
            rows[key].append(time.perf_counter() - t)
    # single-thread CPU time (process_time: less sensitive to other processes on a shared machine)
    cpu = {key: [] for key, _ in timed if key != "torch"}
    with nbssm.threads(1):
        for _ in range(args.rounds):
            for key, f in timed:
                if key in cpu:
                    t = time.process_time()
                    f()
                    cpu[key].append(time.process_time() - t)
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    med = {k: statistics.median(v) for k, v in rows.items()}
    mn = {k: min(v) for k, v in rows.items()}
    result = {
        "shape": shape, "dtype": "float32", "rounds": args.rounds, "times_s": rows,
        "median_s": med, "min_s": mn, "loadavg_1min": loads, "cpus": os.cpu_count(),
        "numba_threads": __import__("numba").get_num_threads(),
        "torch": torch.__version__ if torch else None, "torch_threads": torch.get_num_threads() if torch else None,
        "machine": platform.processor() or platform.machine(),
        "speedup_vs_torch": med["torch"] / med["fwd_bwd"] if torch else None,
        "fwd_bwd_over_fwd": med["fwd_bwd"] / med["fwd"], "fwd_bwd_old_over_fwd": med["fwd_bwd_old"] / med["fwd"],
        "cpu_1thread_s": cpu, "cpu_1thread_median_s": cpu_med,
        "cpu_1thread_fwd_bwd_over_fwd": cpu_med["fwd_bwd"] / cpu_med["fwd"],
        "cpu_1thread_fwd_bwd_old_over_fwd": cpu_med["fwd_bwd_old"] / cpu_med["fwd"],
        "grad_rel_diff_vs_torch": agree,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# selective_scan forward + backward, {shape} float32",
        "",
        f"{args.rounds} interleaved rounds; median (min) wall seconds; 1-min load average per round "
        f"{', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} CPUs (a shared machine); "
        f"numba threads {result['numba_threads']}, "
        + (f"torch {torch.__version__} threads {result['torch_threads']}." if torch else "torch not run."),
        "",
        "| what | median s | min s |",
        "|---|---|---|",
        f"| nbssm forward | {med['fwd']:.3f} | {mn['fwd']:.3f} |",
        f"| nbssm checkpointing forward + selective_scan_vjp(checkpoints=) | {med['fwd_bwd']:.3f} | "
        f"{mn['fwd_bwd']:.3f} |",
        f"| nbssm forward + selective_scan_vjp (the old path: its own checkpoint pass) | {med['fwd_bwd_old']:.3f} | "
        f"{mn['fwd_bwd_old']:.3f} |",
    ]
    if torch:
        lines.append(f"| torch autograd (selective_scan_ref port) forward + backward | {med['torch']:.3f} | "
                     f"{mn['torch']:.3f} |")
    lines += ["", f"- (forward + backward) / forward: **{result['fwd_bwd_over_fwd']:.2f}** (target <= 4); "
              f"the old path {result['fwd_bwd_old_over_fwd']:.2f}",
              f"- 1 thread, CPU time (process_time), median of {args.rounds}: forward {cpu_med['fwd']:.3f} s, "
              f"ratio **{result['cpu_1thread_fwd_bwd_over_fwd']:.2f}** (old path "
              f"{result['cpu_1thread_fwd_bwd_old_over_fwd']:.2f})"]
    if torch:
        lines += [f"- speedup over torch autograd: **{result['speedup_vs_torch']:.1f}x** (target >= 20x)",
                  f"- max relative gradient difference nbssm vs torch (both float32): {max(agree.values()):.1e}"]
    lines.append("")
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
