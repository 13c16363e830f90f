"""Cold and warm start of ``nbssm generate`` on a mamba-130m-shaped random checkpoint.

Writes a random float32 checkpoint (``config.json`` + ``model.safetensors``, 516 MB, tied head)
into a temporary directory, then runs ``nbssm generate DIR --ids 1,2,3 -n 4 --timings`` in fresh
processes: the first with empty kernel caches (``NUMBA_CACHE_DIR`` and ``NBSSM_CACHE_DIR`` in a
new temporary directory: everything compiles), the next ones with the caches that run filled.
For each it records the wall time from process start to the first generated token on stdout
(the issue's target: cold < 20 s, warm < 1 s on 2 cores) and the command's own breakdown
(checkpoint load, kernels, prefill, first token). Run timing jobs under the shared lock::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_coldstart.py [--threads 2] [--warm 3]

Writes ``benchmarks/results/coldstart.json`` and ``coldstart.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SHAPE = dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16, d_conv=4)
HERE = os.path.dirname(os.path.abspath(__file__))


def write_checkpoint(path: str, seed: int = 0, **dims) -> str:
    """Save ``MambaLM.random(**dims)`` as a transformers-style checkpoint directory (float32)."""
    import numpy as np
    from safetensors.numpy import save_file

    from nbssm.lm import MambaLM

    dims = dims or SHAPE
    model = MambaLM.random(seed=seed, **dims)
    c = model.config
    p = model.parameters()
    t = {"backbone.embeddings.weight": np.asarray(p["backbone.embeddings.weight"]),
         "backbone.norm_f.weight": np.asarray(p["backbone.norm_f.weight"])}
    if "lm_head.weight" in p:
        t["lm_head.weight"] = np.asarray(p["lm_head.weight"])
    for suffix, stacked in p.items():
        if suffix.startswith(("backbone.", "lm_head")):
            continue
        for i in range(c.n_layer):
            a = np.asarray(stacked[i])
            if suffix == "mixer.conv1d.weight":
                a = a[:, None, :]  # (E, 1, W) as transformers stores it
            t[f"backbone.layers.{i}.{suffix}"] = np.ascontiguousarray(a)
    os.makedirs(path, exist_ok=True)
    save_file(t, os.path.join(path, "model.safetensors"))
    cfg = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": c.d_model,
           "num_hidden_layers": c.n_layer, "vocab_size": c.vocab_size, "state_size": c.d_state,
           "conv_kernel": c.d_conv, "expand": 2, "intermediate_size": c.d_inner, "time_step_rank": c.dt_rank,
           "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": bool(c.tie_embeddings),
           "use_conv_bias": bool(c.conv_bias), "use_bias": False, "hidden_act": "silu", "eos_token_id": 0,
           "bos_token_id": 0, "pad_token_id": 0, "residual_in_fp32": True, "dtype": "float32"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return path


def run_generate(model_dir: str, env: dict, threads: int, tokens: int = 4, prompt_tokens: int = 3) -> dict:
    """One ``nbssm generate`` in a fresh process: wall time to the first token, and its own report."""
    ids = ",".join(str(1 + i % 1000) for i in range(prompt_tokens))
    cmd = [sys.executable, "-m", "nbssm.cli", "generate", model_dir, "--ids", ids, "-n", str(tokens),
           "--timings", "--threads", str(threads)]
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = None
    buf = b""
    while True:
        ch = proc.stdout.read(1)
        if not ch:
            break
        buf += ch
        if first is None and b"|" in buf and buf.split(b"|", 1)[1].strip():
            first = time.perf_counter() - t0  # the first generated id has started to appear
    err = proc.stderr.read().decode()
    rc = proc.wait()
    total = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # the process and its waited children
    timings = {}
    for line in err.splitlines():
        if line.startswith("[nbssm] timings:"):
            timings = json.loads(line.split(":", 1)[1])
    return {"rc": rc, "wall_to_first_token_s": first, "wall_total_s": total, "cpu_s": cpu,
            "compiling_message": "compiling kernels" in err, "timings": timings, "stderr_tail": err[-400:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--model-dir", default=None, help="use this checkpoint instead of writing a random one")
    ap.add_argument("--prompt-tokens", type=int, default=3,
                    help="prompt length (default 3, the issue's '1,2,3'; above nbssm.lm.model.STEP_PREFILL_MAX_TOKENS "
                         "the prefill path's kernels compile too)")
    ap.add_argument("--tag", default="", help="suffix of the result files (coldstart<TAG>.json/.md)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbssm-coldstart-") as tmp:
        model_dir = args.model_dir or write_checkpoint(os.path.join(tmp, "mamba130m"))
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba"), NBSSM_CACHE_DIR=os.path.join(tmp, "nbssm"))
        load_before = os.getloadavg()
        cold = run_generate(model_dir, env, args.threads, prompt_tokens=args.prompt_tokens)
        warm = [run_generate(model_dir, env, args.threads, prompt_tokens=args.prompt_tokens) for _ in range(args.warm)]
        load_after = os.getloadavg()
    res = {"machine": f"{platform.machine()} {_cpu_name()} ({os.cpu_count()} cpus)", "threads": args.threads,
           "shape": SHAPE, "prompt_tokens": args.prompt_tokens, "load_average_before": load_before, "load_average_after": load_after,
           "cold": cold, "warm": warm, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"coldstart{args.tag}.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(args.out, f"coldstart{args.tag}.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def markdown(res: dict) -> str:
    def row(name, r):
        t = r["timings"]
        return (f"| {name} | {r['wall_to_first_token_s']:.2f} | {r['cpu_s']:.1f} | {t.get('import_s', float('nan')):.2f} | "
                f"{t.get('load_s', float('nan')):.2f} | {t.get('kernels_s', float('nan')):.2f} "
                f"({t.get('kernels', '?')}) | {t.get('prefill_s', float('nan')):.3f} | "
                f"{'yes' if r['compiling_message'] else 'no'} |")

    lines = [f"# Cold and warm start of `nbssm generate` (mamba-130m shape, float32, random weights, "
             f"{res['threads']} threads, {res.get('prompt_tokens', 3)}-token prompt)", "",
             f"Machine: {res['machine']}, shared with other jobs: load average {[round(v, 2) for v in res['load_average_before']]} "
             f"before, {[round(v, 2) for v in res['load_average_after']]} after; {res['date_utc']} UTC. "
             "Targets: cold < 20 s, warm < 1 s to the first token.", "",
             "| run | wall to first token (s) | CPU time, all processes (s) | Python imports (s) | checkpoint load (s) | "
             "kernels (s) | prefill (s) | 'compiling' message |", "|---|---|---|---|---|---|---|---|",
             row("cold (empty caches)", res["cold"])]
    for i, w in enumerate(res["warm"]):
        lines.append(row(f"warm {i + 1}", w))
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    sys.exit(main())
