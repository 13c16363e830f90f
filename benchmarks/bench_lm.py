"""Language-model benchmarks on a mamba-130m-shaped model.

One command (2 threads by default; wrap timing runs in the shared lock)::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_lm.py [--torch-python /tmp/torchenv/bin/python]

Measures, with random float32 weights (d_model 768, 24 layers, d_state 16, expand 2, conv 4,
tied head, vocab 50280; 516 MB of weights):

- decode tokens/s at batch 1 and 8 (greedy, steady state over 128 tokens after a warm-up;
  median of per-token times, and the best 16-token window);
- prefill tokens/s at batch 1, length 2048 (logits of the last position, as generation needs);
- one mixer layer at batch 1, length 2048;
- with ``--torch-python PY`` (an interpreter with torch + transformers, never in CI), the same
  mixer layer, decode and prefill through transformers' pure-PyTorch ``MambaForCausalLM``, in
  a subprocess of the same run with the same thread count.

Writes ``benchmarks/results/bench_lm.json`` and ``benchmarks/results/bench_lm.md``.

``--weights float32,bf16,int8`` (the decode weight formats, see :mod:`nbssm.lm.quant`) runs
the decode comparison instead: one model per format, decode at batch 1 and 8, the formats
and batch sizes interleaved over ``--rounds`` rounds (the machine may be shared: medians over
rounds, the load average recorded), with the weight bytes read per token and the
weight-streaming floor (those bytes / the memory bandwidth, measured here with a numpy triad
and a BLAS matrix-vector product over arrays larger than the last-level cache). Writes
``benchmarks/results/bench_lm_quant.json`` and ``.md``.

``--weights ... --split`` profiles the same formats in two parts, per token and in CPU
milliseconds of this process (``time.process_time``; run it with ``--threads 1``): the 24
layers without the head (vocabulary 8) and the head with one layer (vocabulary 50280), each
with the GB/s of its weight bytes, and the triad bandwidth of the same run. Writes
``benchmarks/results/bench_lm_quant_split{_tN}.md``.
"""

from __future__ import annotations

import argparse
import json
import os

# what `import nbssm` does before numpy is loaded (see nbssm/__init__.py); set here because the
# transformers side of this script runs in an interpreter without nbssm
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import platform
import subprocess
import sys
import time

SHAPE = dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16, d_conv=4)
HERE = os.path.dirname(os.path.abspath(__file__))


def _threads_env(threads: int) -> None:
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _stats(samples):
    import statistics

    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}


# ----------------------------------------------------------------------------- transformers
def torch_main(args) -> int:
    """Runs inside the scratch interpreter: prints one JSON line."""
    import torch
    import transformers
    from transformers import MambaConfig, MambaForCausalLM
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMixer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["d_model"], state_size=SHAPE["d_state"],
                      num_hidden_layers=SHAPE["n_layer"], expand=2, conv_kernel=SHAPE["d_conv"], tie_word_embeddings=True)
    out = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        mixer = HFMixer(cfg, layer_idx=0).eval()
        x = torch.randn(1, args.length, SHAPE["d_model"])
        mixer(x)
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            mixer(x)
            ts.append(time.perf_counter() - t)
        out["mixer_s"] = _stats(ts)
        if args.mixer_only:
            print(json.dumps(out))
            return 0
        model = MambaForCausalLM(cfg).eval()
        ids = torch.randint(0, SHAPE["vocab_size"], (1, args.length))
        t = time.perf_counter()
        model(ids, logits_to_keep=1)
        out["prefill_s"] = time.perf_counter() - t
        for batch in (1, 8):
            res = model(torch.randint(0, SHAPE["vocab_size"], (batch, 4)), use_cache=True)
            cache = res.cache_params
            tok = res.logits[:, -1].argmax(-1, keepdim=True)
            per = []
            for i in range(args.torch_tokens + 4):
                t = time.perf_counter()
                res = model(tok, cache_params=cache, use_cache=True)
                cache = res.cache_params
                tok = res.logits[:, -1].argmax(-1, keepdim=True)
                if i >= 4:
                    per.append(time.perf_counter() - t)
            out[f"decode_b{batch}_s_per_step"] = _stats(per)
    print(json.dumps(out))
    return 0


# ----------------------------------------------------------------------------- nbssm
def nbssm_main(args) -> dict:
    import numba
    import numpy as np

    import nbssm
    from nbssm.lm import MambaLM, MambaLMConfig

    res = {"threads": numba.get_num_threads(), "numpy": np.__version__, "numba": numba.__version__,
           "nbssm": nbssm.__version__}
    # one mixer layer, batch 1: layer 0 of the random model (trained-like weight scales; a
    # mixer with O(1) weights drives Δ so high that the state underflows into slow denormals),
    # on a unit-variance input like the RMS-normalised hidden state it sees in the model
    model = MambaLM.random(MambaLMConfig(**dict(SHAPE, n_layer=1, vocab_size=8)), seed=0)
    mixer = model.layers[0]
    x = np.random.default_rng(0).standard_normal((1, args.length, 768), dtype=np.float32)
    mixer.forward(x)
    ts = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        mixer.forward(x)
        ts.append(time.perf_counter() - t)
    res["mixer_s"] = _stats(ts)
    del mixer, x, model
    if args.mixer_only:
        return res

    t = time.perf_counter()
    model = MambaLM.random(MambaLMConfig(**SHAPE), seed=0)
    res["build_s"] = time.perf_counter() - t
    res["weights_MB"] = round(sum(a.nbytes for a in model.parameters().values()) / 1e6, 1)
    ids = np.random.default_rng(1).integers(0, SHAPE["vocab_size"], (1, args.length))
    model.forward(ids[:, :64], last_only=True)
    ts = []
    for _ in range(max(1, args.repeat // 2)):
        t = time.perf_counter()
        model.forward(ids, last_only=True)
        ts.append(time.perf_counter() - t)
    res["prefill_s"] = _stats(ts)
    for batch in (1, 8):
        state = model.initial_state(batch)
        tok = np.zeros(batch, np.int64)
        for _ in range(8):  # warm-up (compilation, caches)
            logits, state = model.step(tok, state, inplace=True)
            tok = logits.argmax(1)
        per = []
        for _ in range(args.tokens):
            t = time.perf_counter()
            logits, state = model.step(tok, state, inplace=True)
            tok = logits.argmax(1)
            per.append(time.perf_counter() - t)
        windows = [sum(per[i:i + 16]) / 16 for i in range(0, len(per) - 15, 16)]
        res[f"decode_b{batch}_s_per_step"] = dict(_stats(per), best_16_window=min(windows), mean=sum(per) / len(per))
    # the machine's own limit, in the same run: triad bandwidth at the same thread count, and the
    # weight-streaming floor of decode (bytes of weights one step reads / bandwidth)
    from nbssm import bench

    bw = bench.bench_bandwidth(5, [res["threads"]], log=lambda *a: None)
    res["limits"] = {"triad_gbs": bw[f"gbs_{res['threads']}thr"], "triad_array_bytes": bw["array_bytes"],
                     "isa": bench.isa_info()["isa"], "load_average": bench.load_average()}
    res["weight_bytes_per_token"] = bench.decode_weight_bytes(model)
    floor = res["limits"]["triad_gbs"] * 1e9 / res["weight_bytes_per_token"]
    res["decode_floor_tok_s"] = floor
    res["decode_b1_frac_of_floor"] = 1.0 / res["decode_b1_s_per_step"]["median"] / floor
    return res


# ----------------------------------------------------------------------------- weight formats
def _bandwidth(repeat: int = 5) -> dict:
    """Memory bandwidth (bytes/s): numpy triad ``a = b + s * c`` (3 x 64 MiB float64, counted as
    3 arrays moved; numpy runs it in two passes, so this undercounts) and a BLAS float32
    matrix-vector product over a 256 MiB matrix (read once: the decode access pattern)."""
    import numpy as np

    n = 8 * 2**20
    b = np.random.default_rng(0).standard_normal(n)
    c = np.random.default_rng(1).standard_normal(n)
    a = np.empty(n)
    tri, tri_cpu = [], []
    for _ in range(repeat):
        t, tc = time.perf_counter(), time.process_time()
        np.multiply(c, 3.0, out=a)
        a += b
        tri.append(time.perf_counter() - t)
        tri_cpu.append(time.process_time() - tc)
    del a, b, c
    m = np.random.default_rng(2).standard_normal((8192, 8192), dtype=np.float32)
    x = np.ones(8192, np.float32)
    m @ x
    gemv = []
    for _ in range(repeat):
        t = time.perf_counter()
        m @ x
        gemv.append(time.perf_counter() - t)
    out = {"triad_numpy_Bps": 3 * n * 8 / min(tri), "gemv_blas_Bps": m.nbytes / min(gemv),
           "triad_numpy_cpu_Bps": 3 * n * 8 / max(min(tri_cpu), 1e-9)}
    out["floor_Bps"] = max(out.values())
    return out


def quant_main(args) -> dict:
    import numba
    import numpy as np

    import nbssm
    from nbssm.lm import MambaLM, MambaLMConfig

    formats = [f.strip() for f in args.weights.split(",") if f.strip()]
    res = {"threads": numba.get_num_threads(), "numpy": np.__version__, "numba": numba.__version__,
           "nbssm": nbssm.__version__, "formats": formats, "rounds": args.rounds, "tokens": args.tokens,
           "loadavg_start": os.getloadavg()}
    models = {}
    for fmt in formats:
        t = time.perf_counter()
        models[fmt] = MambaLM.random(MambaLMConfig(**SHAPE), seed=0, weights=fmt)
        res[f"build_s_{fmt}"] = time.perf_counter() - t
        res[f"weight_bytes_{fmt}"] = models[fmt].weight_bytes
    res["bandwidth"] = _bandwidth()
    batches = (1, 8)
    states = {}
    for fmt, model in models.items():
        for batch in batches:
            state = model.initial_state(batch)
            tok = np.zeros(batch, np.int64)
            for _ in range(4):  # warm-up (compilation, caches)
                logits, state = model.step(tok, state, inplace=True)
                tok = logits.argmax(1)
            states[fmt, batch] = (state, tok)
    per: dict = {key: [] for key in states}
    cpu: dict = {key: [] for key in states}
    for _ in range(args.rounds):
        for key in states:
            model = models[key[0]]
            state, tok = states[key]
            for _ in range(args.tokens):
                t, tc = time.perf_counter(), time.process_time()
                logits, state = model.step(tok, state, inplace=True)
                tok = logits.argmax(1)
                per[key].append(time.perf_counter() - t)
                cpu[key].append(time.process_time() - tc)
            states[key] = (state, tok)
    res["loadavg_end"] = os.getloadavg()
    for (fmt, batch), ts in per.items():
        s = _stats(ts)
        s["tokens_per_s"] = batch / s["median"]
        c = _stats(cpu[(fmt, batch)])
        s["cpu_s_median"] = c["median"]
        s["tokens_per_cpu_s"] = batch / c["median"]  # per CPU-second of this process (all its threads)
        res[f"decode_{fmt}_b{batch}"] = s
    return res


def split_main(args) -> str:
    """Layers and head separately, CPU ms per token (see the module docstring)."""
    import numba
    import numpy as np

    from nbssm import bench
    from nbssm.lm import MambaLM, MambaLMConfig

    formats = [f.strip() for f in args.weights.split(",") if f.strip()]
    base = dict(d_model=SHAPE["d_model"], d_state=SHAPE["d_state"], d_conv=SHAPE["d_conv"])
    parts = {"layers": dict(base, n_layer=SHAPE["n_layer"], vocab_size=8),
             "head + 1 layer": dict(base, n_layer=1, vocab_size=SHAPE["vocab_size"])}
    models = {(fmt, part): MambaLM.random(MambaLMConfig(**cfg), seed=0, weights=fmt)
              for fmt in formats for part, cfg in parts.items()}
    load0 = os.getloadavg()
    per: dict = {}
    for _ in range(args.rounds):
        for (fmt, part), m in models.items():
            for b in (1, 8):
                st = m.initial_state(b)
                tok = np.zeros(b, np.int64)
                for _ in range(2):
                    m.step(tok, st, inplace=True)
                for _ in range(args.tokens):
                    c = time.process_time()
                    m.step(tok, st, inplace=True)
                    per.setdefault((fmt, part, b), []).append(time.process_time() - c)
    th = numba.get_num_threads()
    bw = bench.bench_bandwidth(5, [th], log=lambda *a: None)[f"gbs_{th}thr"]
    lines = [f"# Decode profile: layers and head (mamba-130m shape, {th} thread(s), CPU ms per token)", "",
             f"Load average at start {tuple(round(x, 2) for x in load0)}, at end "
             f"{tuple(round(x, 2) for x in os.getloadavg())}; triad {bw:.2f} GB/s in the same run; medians of "
             f"{args.rounds} x {args.tokens} tokens.", "",
             "| weights | part | MB | batch 1 ms | GB/s | batch 8 ms | b8 / b1 time |", "|---|---|---|---|---|---|---|"]
    for fmt in formats:
        for part in parts:
            wb = models[fmt, part].weight_bytes
            t1 = float(np.median(per[fmt, part, 1])) * 1e3
            t8 = float(np.median(per[fmt, part, 8])) * 1e3
            lines.append(f"| {fmt} | {part} | {wb / 1e6:.1f} | {t1:.2f} | {wb / t1 / 1e6:.2f} | {t8:.2f} | {t8 / t1:.2f} |")
    return "\n".join(lines + [""])


def _quant_markdown(r: dict) -> str:
    n = r["nbssm"]
    bw = n["bandwidth"]
    fl = bw["floor_Bps"]
    base = n.get("decode_float32_b1")
    lines = [f"# Decode by weight format (mamba-130m shape, {n['threads']} threads)", "",
             f"Machine: {r['machine']}; Python {r['python']}; numpy {n['numpy']}, numba {n['numba']}, nbssm {n['nbssm']}.",
             f"Load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in n['loadavg_start'])}, at end "
             f"{tuple(round(x, 2) for x in n['loadavg_end'])} (the machine is shared: figures are medians of "
             f"per-token times over {n['rounds']} interleaved rounds of {n['tokens']} tokens).",
             f"Bandwidth: numpy triad {bw['triad_numpy_Bps'] / 1e9:.1f} GB/s (per CPU-second of the process: "
             f"{bw['triad_numpy_cpu_Bps'] / 1e9:.1f} GB/s), BLAS float32 gemv {bw['gemv_blas_Bps'] / 1e9:.1f} GB/s; "
             "the floor uses the largest.", "",
             "Wall-clock figures, then (in brackets) tokens per CPU-second of this process, which a shared machine "
             "distorts less (time waiting for a core is not counted; spinning at a barrier is).", "",
             "| weights | bytes/token | floor tok/s | batch 1 tok/s | of floor | vs float32 b1 | batch 8 tok/s (aggregate) | b8 / b1 |",
             "|---|---|---|---|---|---|---|---|"]
    for fmt in n["formats"]:
        b1, b8 = n[f"decode_{fmt}_b1"], n[f"decode_{fmt}_b8"]
        wb = n[f"weight_bytes_{fmt}"]
        floor = fl / wb
        rel = f"{b1['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else ""
        crel = f" [{b1['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x]" if base else ""
        lines.append(f"| {fmt} | {wb / 1e6:.1f} MB | {floor:.1f} | {b1['tokens_per_s']:.1f} [{b1['tokens_per_cpu_s']:.1f}] | "
                     f"{b1['tokens_per_s'] / floor:.0%} [{b1['tokens_per_cpu_s'] / floor:.0%}] | {rel}{crel} | "
                     f"{b8['tokens_per_s']:.1f} [{b8['tokens_per_cpu_s']:.1f}] | "
                     f"{b8['tokens_per_s'] / b1['tokens_per_s']:.2f}x [{b8['tokens_per_cpu_s'] / b1['tokens_per_cpu_s']:.2f}x] |")
    lines += ["", "Targets (issue 15): bf16 >= 1.8x float32, int8 >= 3x, batch 8 >= 5x batch 1, float32 batch 1 "
              ">= 90% of the floor.", ""]
    return "\n".join(lines)


def _markdown(r: dict) -> str:
    n, t = r["nbssm"], r.get("transformers")
    L = r["length"]
    lines = [f"# Mamba LM benchmark (mamba-130m shape, float32, {n['threads']} threads)", "",
             f"Machine: {r['machine']}; Python {r['python']}; numpy {n['numpy']}, numba {n['numba']}, nbssm {n['nbssm']}"
             + (f"; torch {t['torch']}, transformers {t['transformers']}" if t else "; transformers not measured"),
             f"Weights: {n['weights_MB']} MB. Medians (best in brackets).", "",
             "| measurement | nbssm | transformers (pure PyTorch) | ratio |", "|---|---|---|---|"]

    def row(name, ours, theirs, unit, invert=False):
        ratio = ""
        if theirs is not None:
            ratio = f"{(ours / theirs if invert else theirs / ours):.1f}x"
        lines.append(f"| {name} | {ours if isinstance(ours, str) else f'{ours:.3g}'} {unit} | "
                     f"{'' if theirs is None else f'{theirs:.3g} {unit}'} | {ratio} |")

    m = n["mixer_s"]
    row(f"one mixer layer, batch 1, length {L} (s)", m["median"], t["mixer_s"]["median"] if t else None, "s")
    for b in (1, 8):
        d = n[f"decode_b{b}_s_per_step"]
        ours = b / d["median"]
        theirs = b / t[f"decode_b{b}_s_per_step"]["median"] if t else None
        row(f"decode, batch {b} (tokens/s; best 16-token window {b / d['best_16_window']:.0f})", ours, theirs, "tok/s", invert=True)
    p = n["prefill_s"]
    row(f"prefill, batch 1, length {L} (tokens/s)", L / p["median"], L / t["prefill_s"] if t else None, "tok/s", invert=True)
    if "limits" in n:
        lim = n["limits"]
        lines += ["", f"Machine limit in the same run ({lim['isa']}, load average {lim['load_average']}): triad bandwidth "
                  f"{lim['triad_gbs']:.1f} GB/s, so the weight-streaming floor of decode is "
                  f"{n['weight_bytes_per_token'] / 1e6:.0f} MB / {lim['triad_gbs']:.1f} GB/s = "
                  f"{n['decode_floor_tok_s']:.1f} tokens/s; batch-1 decode reaches {n['decode_b1_frac_of_floor']:.0%} of it."]
    lines += ["", "Ratio: how many times faster nbssm is. Decode is greedy, steady state over "
              f"{n['decode_b1_s_per_step']['n']} tokens after 8 warm-up tokens.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=128, help="decode tokens timed (steady state)")
    ap.add_argument("--torch-tokens", type=int, default=32, help="decode tokens timed for transformers")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--torch-python", default=None, help="interpreter with torch + transformers (optional)")
    ap.add_argument("--mixer-only", action="store_true", help="only the one-layer comparison")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--weights", default=None,
                    help="comma-separated decode weight formats (float32,bf16,fp16,int8): the format comparison only")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the --weights comparison")
    ap.add_argument("--split", action="store_true", help="with --weights: layers and head profiled separately")
    args = ap.parse_args()
    _threads_env(args.threads)
    if args.torch_only:
        return torch_main(args)
    result = {"machine": f"{platform.machine()} {_cpu_name()} ({os.cpu_count()} cpus)", "python": platform.python_version(),
              "length": args.length, "shape": SHAPE}
    if args.weights and args.split:
        md = split_main(args)
        os.makedirs(args.out, exist_ok=True)
        tag = "" if args.threads == 2 else f"_t{args.threads}"
        with open(os.path.join(args.out, f"bench_lm_quant_split{tag}.md"), "w") as f:
            f.write(md)
        print(md)
        return 0
    if args.weights:
        result["nbssm"] = quant_main(args)
        os.makedirs(args.out, exist_ok=True)
        tag = "" if args.threads == 2 else f"_t{args.threads}"
        with open(os.path.join(args.out, f"bench_lm_quant{tag}.json"), "w") as f:
            json.dump(result, f, indent=1)
        md = _quant_markdown(result)
        with open(os.path.join(args.out, f"bench_lm_quant{tag}.md"), "w") as f:
            f.write(md)
        print(md)
        return 0
    result["nbssm"] = nbssm_main(args)
    if args.torch_python:
        cmd = [args.torch_python, os.path.abspath(__file__), "--torch-only", "--threads", str(args.threads),
               "--length", str(args.length), "--repeat", str(max(2, args.repeat // 2)), "--torch-tokens", str(args.torch_tokens)]
        cmd += ["--mixer-only"] if args.mixer_only else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
        else:
            result["transformers"] = json.loads(proc.stdout.strip().splitlines()[-1])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_lm.json"), "w") as f:
        json.dump(result, f, indent=1)
    if args.mixer_only:
        n, t = result["nbssm"]["mixer_s"], result.get("transformers", {}).get("mixer_s")
        md = (f"one mixer layer, batch 1, length {args.length}, {result['nbssm']['threads']} threads: nbssm median "
              f"{n['median']:.3f} s (min {n['min']:.3f})"
              + (f"; transformers median {t['median']:.3f} s (min {t['min']:.3f}); ratio of medians "
                 f"{t['median'] / n['median']:.1f}x, of minima {t['min'] / n['min']:.1f}x" if t else ""))
        print(md)
        with open(os.path.join(args.out, "bench_lm_mixer.json"), "w") as f:
            json.dump(result, f, indent=1)
        return 0
    md = _markdown(result)
    with open(os.path.join(args.out, "bench_lm.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


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
