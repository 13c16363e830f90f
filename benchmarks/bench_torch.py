"""The PyTorch bridge (nbssm.torch) against transformers' and PyTorch's own CPU paths, one run.

One command (2 threads by default; wrap timing runs in the shared lock)::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_torch.py [--reps 7] [--quick]

Needs torch and transformers (``pip install torch==2.13.0 transformers``). Measures, interleaved
(reference then bridge in every repetition, so that the machine's load hits both alike), and
records the load average before and after:

1. **Training step**: forward + backward + Adam of a 2-block ``MambaForCausalLM`` (d_model 128,
   state 16, expand 2, conv 4, vocabulary 256, batch 32, length 64, cross-entropy on the next
   token): transformers' CPU path (its pure-PyTorch ``slow_forward`` loop) against the same
   model (a deep copy, same weights, its own Adam) patched with :func:`nbssm.torch.patch_mamba`.
   Target: the bridge at least 5x faster.
2. **Selective scan forward + backward** at S1 (batch 1, length 2048, channels 1536, state 16,
   float32, with ``D``, ``z``, ``delta_bias`` and the softplus, as in a Mamba block):
   :func:`nbssm.torch.selective_scan` against PyTorch autograd through a torch
   ``selective_scan_ref`` (mamba_ssm's reference formulation: the discretised ``exp(delta A)``
   and ``delta B u`` for the whole sequence, then a time loop). Also nbssm's forward alone.
   Targets: at least 20x faster than the reference, and within 4x of nbssm's own forward.
3. A ``torch.profiler`` table of one bridge training step (where the time goes).

Writes ``benchmarks/results/torch_bridge.json`` and ``benchmarks/results/torch_bridge.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _threads_env(threads: int) -> None:
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _stats(samples):
    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples),
            "samples": [round(s, 6) for s in samples]}


def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias):
    """A plain-PyTorch selective scan in nbssm's layout (u, delta, z (b, l, d); B, C (b, l, n)),
    formulated as mamba_ssm's ``selective_scan_ref``: discretise the whole sequence, then loop."""
    import torch
    import torch.nn.functional as F

    delta = F.softplus(delta + delta_bias)
    deltaA = torch.exp(delta[..., None] * A)  # (b, l, d, n)
    deltaBu = (delta * u)[..., None] * B[:, :, None, :]  # (b, l, d, n)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = deltaA[:, t] * h + deltaBu[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    y = torch.stack(ys, dim=1) + u * D
    return y * F.silu(z)


def time_interleaved(fns: dict, reps: int) -> dict:
    """``{name: fn}`` each timed ``reps`` times, round-robin; seconds per call."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: _stats(s) for name, s in samples.items()}


def training_step_bench(reps: int, quick: bool) -> dict:
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    import nbssm.torch as nt

    batch, length = (4, 16) if quick else (32, 64)
    cfg = MambaConfig(vocab_size=256, hidden_size=128, state_size=16, num_hidden_layers=2, expand=2,
                      conv_kernel=4, use_cache=False)
    torch.manual_seed(0)
    ref = MambaForCausalLM(cfg).train()
    fast = nt.patch_mamba(copy.deepcopy(ref)).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    opts = {"ref": torch.optim.Adam(ref.parameters(), lr=1e-3), "fast": torch.optim.Adam(fast.parameters(), lr=1e-3)}
    models = {"ref": ref, "fast": fast}
    losses: dict[str, list[float]] = {"ref": [], "fast": []}

    def step(name):
        def run():
            opt = opts[name]
            opt.zero_grad(set_to_none=True)
            loss = models[name](ids, labels=ids).loss
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
        return run

    fns = {"transformers_cpu": step("ref"), "nbssm_bridge": step("fast")}
    for fn in fns.values():  # warm-up: Numba compile / cache load, allocator, Adam state
        for _ in range(2):
            fn()
    res = time_interleaved(fns, reps)
    # the two models start from the same weights and see the same batch: same losses (float32)
    res["loss_first_steps"] = {k: [round(v, 6) for v in vals[:4]] for k, vals in losses.items()}
    res["speedup_median"] = res["transformers_cpu"]["median"] / res["nbssm_bridge"]["median"]
    res["shape"] = dict(batch=batch, length=length, d_model=128, d_inner=256, state=16, layers=2, vocab=256)
    res["profile"] = profile_step(fns["nbssm_bridge"])
    return res


def profile_step(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48)


def scan_bench(reps: int, quick: bool) -> dict:
    import numpy as np
    import torch

    import nbssm.torch as nt
    from nbssm import ops

    b, l, d, n = (1, 256, 256, 16) if quick else (1, 2048, 1536, 16)
    gen = torch.Generator().manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen) * scale).requires_grad_()
    u, delta, z = r(b, l, d), r(b, l, d, scale=0.5), r(b, l, d)
    B, C = r(b, l, n), r(b, l, n)
    A = (-torch.exp(torch.randn(d, n, generator=gen) * 0.5)).requires_grad_()
    D, bias = r(d), r(d, scale=0.3)
    leaves = (u, delta, A, B, C, D, z, bias)
    gy = torch.randn(b, l, d, generator=gen)

    def bridge():
        y = nt.selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        grads = torch.autograd.grad(y, leaves, gy)
        return y, grads

    def reference():
        y = selective_scan_ref(u, delta, A, B, C, D, z, bias)
        grads = torch.autograd.grad(y, leaves, gy)
        return y, grads

    arrs = [t.detach().numpy() for t in leaves]

    def forward_only():
        ops.selective_scan(*arrs[:5], D=arrs[5], z=arrs[6], delta_bias=arrs[7], delta_softplus=True)

    # agreement of the two (float32 each; relative to the largest value)
    yb, gb = bridge()
    yr, gr = reference()

    def rel(a, w):
        a, w = a.detach().double().numpy(), w.detach().double().numpy()
        return float(np.max(np.abs(a - w)) / max(np.max(np.abs(w)), 1e-300))

    agree = {"y": rel(yb, yr), **{name: rel(x, w) for name, x, w in zip("u delta A B C D z delta_bias".split(), gb, gr)}}
    forward_only()
    res = time_interleaved({"torch_autograd_ref": reference, "nbssm_bridge": bridge, "nbssm_forward": forward_only},
                           reps)
    res["speedup_median"] = res["torch_autograd_ref"]["median"] / res["nbssm_bridge"]["median"]
    res["bridge_over_forward"] = res["nbssm_bridge"]["median"] / res["nbssm_forward"]["median"]
    res["shape"] = dict(batch=b, length=l, channels=d, state=n, dtype="float32")
    res["max_rel_diff_vs_reference"] = agree
    return res


def machine(threads: int) -> dict:
    import numba
    import numpy
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": numpy.__version__, "numba": numba.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def write_md(res: dict, path: str) -> None:
    m, tr, sc = res["machine"], res["training_step"], res.get("selective_scan")
    ms = lambda s: f"{s['median'] * 1e3:.1f} ms (min {s['min'] * 1e3:.1f}, n={s['n']})"
    lines = [
        "# PyTorch bridge (nbssm.torch) benchmark",
        "",
        f"Machine: {m['cpu']} ({m['cpus']} cpus), {m['threads']} threads for torch and Numba; Python {m['python']}, "
        f"numpy {m['numpy']}, numba {m['numba']}, torch {m['torch']}, transformers {m['transformers']}.",
        f"Load average (1, 5, 15 min) before: {res['load_before']}, after: {res['load_after']} "
        "(a shared machine: other jobs ran beside this one; every repetition times both sides back to back).",
        "Command: `flock /tmp/nbssm-bench.lock python benchmarks/bench_torch.py`" + (" --quick" if res["quick"] else "")
        + (" --skip-scan" if not sc else ""),
        "",
        "## One training step (forward + backward + Adam)",
        "",
        f"2-block `MambaForCausalLM`, {tr['shape']}, float32, cross-entropy on the next token.",
        "",
        "| path | time per step |",
        "|---|---|",
        f"| transformers CPU path (pure-PyTorch loop) | {ms(tr['transformers_cpu'])} |",
        f"| the same model patched with `nbssm.torch.patch_mamba` | {ms(tr['nbssm_bridge'])} |",
        "",
        f"Speed-up (medians): **{tr['speedup_median']:.1f}x** (target >= 5x). Losses of the first steps "
        f"(same weights, same batch): {tr['loss_first_steps']}.",
        "",
        "## Where a bridge training step spends its time (torch.profiler, self CPU time)",
        "",
        "```",
        tr["profile"].rstrip(),
        "```",
        "",
    ]
    if sc:
        at = lines.index("## Where a bridge training step spends its time (torch.profiler, self CPU time)")
        lines[at:at] = [
            "## Selective scan forward + backward at S1",
            "",
            f"Shape {sc['shape']}, with D, z, delta_bias and softplus; gradients for all eight inputs.",
            "",
            "| path | time |",
            "|---|---|",
            f"| PyTorch autograd through a torch `selective_scan_ref` | {ms(sc['torch_autograd_ref'])} |",
            f"| `nbssm.torch.selective_scan` (Numba forward + VJP) | {ms(sc['nbssm_bridge'])} |",
            f"| nbssm forward alone (`nbssm.ops.selective_scan`) | {ms(sc['nbssm_forward'])} |",
            "",
            f"Speed-up (medians): **{sc['speedup_median']:.1f}x** (target >= 20x); forward + backward = "
            f"**{sc['bridge_over_forward']:.2f}x** nbssm's forward (target <= 4x).",
            "Largest relative difference from the reference (float32 both): "
            + ", ".join(f"{k} {v:.1e}" for k, v in sc["max_rel_diff_vs_reference"].items()) + ".",
            "",
        ]
    else:
        lines[-1:-1] = ["The S1 selective scan was not timed in this run (`--skip-scan`): see "
                        "`benchmarks/results/vjp.md`.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--scan-reps", type=int, default=3, help="repetitions of the S1 scan (the reference takes minutes)")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not a measurement)")
    p.add_argument("--skip-scan", action="store_true",
                   help="the training step only (the S1 scan's reference takes minutes; bench_vjp.py times it too)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    _threads_env(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    res = {"machine": machine(args.threads), "quick": args.quick, "load_before": list(os.getloadavg())}
    os.makedirs(args.out, exist_ok=True)
    name = "torch_bridge_quick" if args.quick else "torch_bridge"
    res["training_step"] = training_step_bench(args.reps, args.quick)
    with open(os.path.join(args.out, name + ".json"), "w") as f:  # the first half, in case the second is cut
        json.dump(res, f, indent=1)
    if not args.skip_scan:
        res["selective_scan"] = scan_bench(args.scan_reps, args.quick)
    res["load_after"] = list(os.getloadavg())
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)
    write_md(res, os.path.join(args.out, name + ".md"))
    tr = res["training_step"]
    print(f"training step: transformers {tr['transformers_cpu']['median'] * 1e3:.1f} ms, bridge "
          f"{tr['nbssm_bridge']['median'] * 1e3:.1f} ms, {tr['speedup_median']:.1f}x")
    sc = res.get("selective_scan")
    if sc:
        print(f"selective scan fwd+bwd: ref {sc['torch_autograd_ref']['median'] * 1e3:.1f} ms, bridge "
              f"{sc['nbssm_bridge']['median'] * 1e3:.1f} ms, {sc['speedup_median']:.1f}x; "
              f"forward {sc['nbssm_forward']['median'] * 1e3:.1f} ms ({sc['bridge_over_forward']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
