"""``nbssm bench``: kernel throughput against a numpy reference, written as JSON and Markdown.

Measures, on this machine, with the machine, thread counts and versions recorded:

* ``selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
  delta_softplus=True)`` in float32 at S1 = (1, 2048, 1536, 16),
  S2 = (8, 512, 768, 16), S3 = (1, 16384, 64, 16) (batch, length, channels,
  state), on 1 and 2 threads, in elements/s (elements = b*l*d*n), against
  :func:`nbssm.reference.selective_scan_ref` (a numpy loop over the length)
  in the same run, and the error of the
  float32 result against the float64 kernel (max|y - y64| / max|y64|);
* cost linear in length: time(L=16384) / time(L=2048) at S1's channels and state,
  the runs of the two lengths alternating, with the output cache on and off;
* ``linear_scan`` on one long sequence (1, 2**22, 1) float32: sequential and
  chunked on 1 thread, chunked on 2 threads;
* peak memory above inputs plus outputs (``ru_maxrss`` in a fresh process);
* cold start (empty Numba cache) and warm start (cache filled): a fresh
  process imports nbssm and finishes its first S1 call;
* the machine's own limits, in the same run (:func:`bench_limits`): memory bandwidth (a
  STREAM triad over float64 arrays at least 4x the last-level cache), the throughput of
  the kernels' own ``exp`` (float32 polynomial, float64 libm), the instruction set (AVX-512
  or AVX2) and the load average; every figure is then also reported as a fraction of its
  limit: S1 float32 against the exp throughput (one exp per (t, d, n) element), decode
  tokens/s against the weight-streaming floor (measured bandwidth / bytes of weights);
* decode tokens/s of a small model and of a mamba-130m-shaped one (random weights);
* with ``--contention`` (:func:`bench_contention`): S1 and decode quiet, then beside one
  CPU-bound process per core but one, at the default thread count and at 1 thread.

Every timing is the median of ``--repeats`` runs (at least 5) after a warm-up
run. Results go to ``kernels.json`` and ``kernels.md`` in ``--out`` (default
``nbssm-bench`` in the temporary directory, never the source tree); it
never edits the README or any committed file. Run timing jobs under
``flock /tmp/nbssm-bench.lock`` on shared machines::

    flock /tmp/nbssm-bench.lock nbssm bench --out /tmp/bench
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"S1": (1, 2048, 1536, 16), "S2": (8, 512, 768, 16), "S3": (1, 16384, 64, 16)}
LINEAR_SHAPE = (1, 1 << 22, 1)


# ----------------------------------------------------------------------------- inputs
def make_inputs(shape, dtype=np.float32, seed=0):
    """``selective_scan`` keyword arguments at ``shape = (b, l, d, n)``: :func:`nbssm.reference.random_inputs`
    with the extras (``D``, ``z``, ``delta_bias``, ``delta_softplus=True``) and no initial state."""
    from .reference import random_inputs

    return random_inputs("selective", shape, dtype, seed, initial_state=False)


def _median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), [float(t) for t in times]


# ----------------------------------------------------------------------------- machine
def machine_info():
    """CPU model, core count, versions, Numba threading layer."""
    import numba

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = "avx512f" if "avx512f" in text else ("avx2" if "avx2" in text else "")
    except OSError:
        pass
    from . import __version__

    return {
        "cpu": cpu,
        "simd": flags,
        "cores": os.cpu_count(),
        "numba_threads_max": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": numba.threading_layer() if _threading_started() else str(numba.config.THREADING_LAYER),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "nbssm": __version__,
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "isa": isa_info()["isa"],
        "cpus_usable": _usable_cpus(),
        "default_threads": _default_threads(),
        "load_average": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }


def _usable_cpus():
    from .threads import _affinity

    return _affinity()


def _default_threads():
    from .threads import default_threads

    return default_threads()


def _threading_started():
    import numba

    try:
        numba.threading_layer()
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- parts
def bench_selective(repeats, threads, shapes=SHAPES, numpy_ref=True, log=print):
    import numba

    from . import ops
    from .reference import selective_scan_ref

    rows = []
    for name, shape in shapes.items():
        kw = make_inputs(shape)
        elements = int(np.prod(shape))
        row = {"shape": name, "dims (b,l,d,n)": list(shape), "elements": elements}
        for th in threads:
            numba.set_num_threads(th)
            med, all_t = _median_time(lambda: ops.selective_scan(**kw), repeats)
            row[f"t_{th}thr_ms"] = med * 1e3
            row[f"gelem_s_{th}thr"] = elements / med / 1e9
            log(f"  {name} {th} thread(s): {med * 1e3:.1f} ms, {elements / med / 1e9:.2f} G elements/s")
        if numpy_ref:
            med, _ = _median_time(lambda: selective_scan_ref(**kw), max(3, repeats // 2 if repeats > 6 else repeats))
            row["t_numpy_ms"] = med * 1e3
            row["gelem_s_numpy"] = elements / med / 1e9
            best = min(row[f"t_{th}thr_ms"] for th in threads)
            row["speedup_vs_numpy"] = med * 1e3 / best
            log(f"  {name} numpy reference (selective_scan_ref): {med * 1e3:.1f} ms ({row['speedup_vs_numpy']:.1f}x slower than nbssm)")
        # accuracy against the float64 kernel (bitwise the spec's double runner)
        numba.set_num_threads(max(threads))
        y32 = ops.selective_scan(**kw)
        kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        y64 = ops.selective_scan(**kw64)
        row["rel_err_vs_float64"] = float(np.max(np.abs(y32 - y64)) / np.max(np.abs(y64)))
        rows.append(row)
    return rows


def _interleaved_medians(fns, repeats):
    """Median time of each ``fns[key]()``, the keys alternating run by run.

    Alternating (instead of all runs of one case, then all of the next) makes
    every case see the same machine conditions (neighbours on a shared host,
    clock, memory traffic), which is what a ratio between cases needs.
    """
    for fn in fns.values():
        fn()  # warm-up
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: float(np.median(ts)) for key, ts in times.items()}, times


def bench_length_scaling(repeats, threads, log=print):
    """time(L=16384) / time(L=2048) at S1's channels and state, runs of the two lengths alternating.

    Measured with nbssm's output cache as shipped (the default) and, for
    comparison, with it disabled: then every L=16384 call writes into a fresh
    100 MB mapping whose pages the OS faults in and zeroes, while the 12.5 MB
    output of L=2048 is recycled by glibc's heap either way.
    """
    import numba

    from . import _memory, ops

    numba.set_num_threads(threads)
    kws = {length: make_inputs((1, length, 1536, 16)) for length in (2048, 16384)}
    fns = {length: (lambda kw=kw: ops.selective_scan(**kw)) for length, kw in kws.items()}
    out = {"threads": threads, "repeats": max(repeats, 9), "order": "interleaved"}
    budget = _memory.output_cache_info()["budget_bytes"] >> 20
    for label, limit in (("", budget), ("_no_output_cache", 0)):
        _memory.set_output_cache_limit(limit)
        try:
            med, _ = _interleaved_medians(fns, out["repeats"])
        finally:
            _memory.set_output_cache_limit(budget)
            _memory.clear_output_cache()
        for length, t in med.items():
            out[f"t_L{length}_ms{label}"] = t * 1e3
        out[f"ratio_L16384_over_L2048{label}"] = med[16384] / med[2048]
    out["output_cache_mb"] = budget
    log(f"  L=16384 / L=2048: {out['ratio_L16384_over_L2048']:.2f} (ideal 8; "
        f"{out['t_L16384_ms']:.1f} / {out['t_L2048_ms']:.1f} ms); without the output cache "
        f"{out['ratio_L16384_over_L2048_no_output_cache']:.2f} "
        f"({out['t_L16384_ms_no_output_cache']:.1f} / {out['t_L2048_ms_no_output_cache']:.1f} ms)")
    return out


def bench_linear(repeats, log=print):
    import numba

    from . import ops

    rng = np.random.default_rng(1)
    a = rng.uniform(0.9, 1.0, LINEAR_SHAPE).astype(np.float32)
    b = rng.standard_normal(LINEAR_SHAPE).astype(np.float32)
    res = {"dims (b,l,d)": list(LINEAR_SHAPE), "chunk_length": ops.default_chunk_length("linear", 1, 1)}
    for th, strategy in [(1, "sequential"), (1, "chunked"), (2, "chunked"), (2, "sequential")]:
        if th > numba.config.NUMBA_NUM_THREADS:
            continue
        numba.set_num_threads(th)
        med, _ = _median_time(lambda: ops.linear_scan(a, b, strategy=strategy), repeats)
        res[f"t_{strategy}_{th}thr_ms"] = med * 1e3
        log(f"  linear_scan {LINEAR_SHAPE} {strategy} {th} thread(s): {med * 1e3:.2f} ms")
    best1 = min(res["t_sequential_1thr_ms"], res["t_chunked_1thr_ms"])
    if "t_chunked_2thr_ms" in res:
        res["speedup_chunked_2thr_vs_best_1thr"] = best1 / res["t_chunked_2thr_ms"]
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return res


_CHILD_MEMORY = r"""
import json, resource, sys, numpy as np
import nbssm
from nbssm import ops
from nbssm.bench import make_inputs
shape = tuple(json.loads(sys.argv[1]))
kw = make_inputs(shape)
# load the kernel specialisation the S1 call uses (from the filled cache) on a tiny input
small = make_inputs((shape[0], 2, shape[2], shape[3]))
ops.selective_scan(**small, return_final_state=True)
del small
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
base = rss()
try:
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    reset = True
except OSError:
    reset = False
y, h = ops.selective_scan(**kw, return_final_state=True)
peak_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(rss_before_call=base, peak_after_call=peak_ru, vmhwm_after_call=hwm(), hwm_reset=reset,
                      inputs_bytes=sum(v.nbytes for v in kw.values() if hasattr(v, 'nbytes')), outputs_bytes=y.nbytes + h.nbytes)))
"""

_CHILD_START = r"""
import time, json, sys
t_start = time.perf_counter()
import numpy as np
from nbssm.bench import make_inputs
kw = make_inputs(tuple(json.loads(sys.argv[1])))
t0 = time.perf_counter()
import nbssm
y = nbssm.selective_scan(**kw)
t1 = time.perf_counter()
print(json.dumps(dict(import_and_first_call_s=t1 - t0, process_s=t1 - t_start)))
"""


# Linux carries a process's peak RSS (ru_maxrss) into the children it forks or vforks
# (the child starts with the parent's current or peak RSS). A tiny intermediate Python
# process launches the measured child, so the child's ru_maxrss starts near zero.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def _child(code, arg, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "-c", code, arg],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(log=print):
    r = _child(_CHILD_MEMORY, json.dumps(SHAPES["S1"]))
    io = r["inputs_bytes"] + r["outputs_bytes"]
    # growth of the resident set during the call beyond the outputs it returns: ru_maxrss
    # (valid because the process did nothing bigger before: kernels load from the cache) and
    # VmHWM reset just before the call (immune to earlier peaks)
    r["extra_bytes_ru_maxrss"] = max(r["peak_after_call"] - r["rss_before_call"] - r["outputs_bytes"], 0)
    if r["hwm_reset"]:
        r["extra_bytes_vmhwm"] = max(r["vmhwm_after_call"] - r["rss_before_call"] - r["outputs_bytes"], 0)
    # VmHWM reset just before the call measures the call alone; ru_maxrss can only be
    # trusted if nothing earlier in the process peaked higher
    extra = r.get("extra_bytes_vmhwm", r["extra_bytes_ru_maxrss"])
    r["extra_bytes"] = extra
    r["extra_over_inputs_outputs"] = extra / io
    log(f"  peak memory above inputs+outputs at S1: {extra / 2**20:.1f} MiB = {extra / io:.3f}x of {io / 2**20:.1f} MiB"
        f" (ru_maxrss growth {r['extra_bytes_ru_maxrss'] / 2**20:.1f} MiB)")
    return r


def bench_startup(log=print):
    with tempfile.TemporaryDirectory(prefix="nbssm-numba-cache-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = _child(_CHILD_START, json.dumps(SHAPES["S1"]), env)
        warm = [_child(_CHILD_START, json.dumps(SHAPES["S1"]), env) for _ in range(3)]
    warm_s = float(np.median([w["import_and_first_call_s"] for w in warm]))
    log(f"  cold start (empty cache): {cold['import_and_first_call_s']:.2f} s; warm start: {warm_s:.2f} s")
    return {"cold_import_and_first_S1_call_s": cold["import_and_first_call_s"],
            "warm_import_and_first_S1_call_s": warm_s,
            "warm_runs_s": [w["import_and_first_call_s"] for w in warm]}


# ----------------------------------------------------------------------------- limits
def load_average():
    """``os.getloadavg()`` as a list (1, 5, 15 minutes), or None where it does not exist."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def cache_sizes():
    """CPU caches of cpu0 from ``/sys`` (else ``lscpu -B``): ``{"L1d": bytes, ..., "llc": bytes}``."""
    sizes = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        for idx in sorted(base.glob("index*")):
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            text = (idx / "size").read_text().strip()
            size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
            name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
            sizes[name] = size
    except (OSError, ValueError, KeyError):
        sizes = {}
    if not sizes:
        try:
            out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True, timeout=10).stdout
            for line in out.splitlines():
                key, _, val = line.partition(":")
                if key.strip().endswith("cache") and val.strip().split()[0].isdigit():
                    sizes[key.strip().split()[0]] = int(val.strip().split()[0])
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    data = {k: v for k, v in sizes.items() if not k.endswith("i")}
    sizes["llc"] = max(data.values()) if data else None
    return sizes


def isa_info():
    """The vector ISA: ``"avx512"`` (AVX-512F), ``"avx2"`` (AVX2 + FMA, no AVX-512) or ``"other"``.

    Both the CPU's flags (``/proc/cpuinfo``) and what Numba compiles for (LLVM's host
    features, or ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` when set) are recorded: a VM or an
    override can hide AVX-512 from the compiler although the CPU has it.
    """
    import numba
    from llvmlite import binding as ll

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from ._kernels._jit import compiled_features

    feats = compiled_features()
    try:
        cpu_name = ll.get_host_cpu_name()
    except Exception:  # noqa: BLE001  # pragma: no cover
        cpu_name = "unknown"
    cpu_name = os.environ.get("NUMBA_CPU_NAME") or getattr(numba.config, "CPU_NAME", None) or cpu_name

    def kind(s):
        if "avx512f" in s:
            return "avx512"
        if "avx2" in s and "fma" in s:
            return "avx2"
        return "other"

    vec = sorted(f for f in feats if f.startswith(("avx", "fma", "sse4")))
    return {"isa": kind(feats) if feats else kind(flags), "isa_cpuinfo": kind(flags),
            "llvm_cpu": cpu_name, "llvm_vector_features": vec}


def triad_elements(llc_bytes=None):
    """Elements per triad array: each array at least 4x the last-level cache, 256 MiB in all at least."""
    llc = llc_bytes if llc_bytes else 0
    per_array = max(4 * llc, (256 << 20) // 3)
    return int(per_array // 8)


def bench_bandwidth(repeats, threads, elements=None, log=print):
    """STREAM triad ``a = b + s*c`` (float64): GB/s per thread count.

    Bytes counted: 3 arrays x 8 bytes per element (STREAM's convention: the write-allocate
    read of ``a``, which a CPU without streaming stores also does, is *not* counted; the
    figure with it is 4/3 of this and is recorded as ``gbs_write_allocate_*``).
    """
    from ._kernels.limits import triad
    from .threads import threads as use_threads

    n = int(elements or triad_elements(cache_sizes().get("llc")))
    a = np.zeros(n)
    b = np.full(n, 1.0)
    c = np.full(n, 2.0)
    out = {"elements": n, "array_bytes": 8 * n, "bytes_per_element": 24, "write_allocate_counted": False}
    for th in threads:
        with use_threads(th):
            med, _ = _median_time(lambda: triad(a, b, c, 3.0), repeats)
        out[f"t_{th}thr_ms"] = med * 1e3
        out[f"gbs_{th}thr"] = 24 * n / med / 1e9
        out[f"gbs_write_allocate_{th}thr"] = 32 * n / med / 1e9
        log(f"  triad ({3 * 8 * n / 2**20:.0f} MiB), {th} thread(s): {out[f'gbs_{th}thr']:.1f} GB/s")
    return out


def bench_exp(repeats, threads, dtypes=(np.float32, np.float64), target_s=0.05, log=print):
    """Throughput of the kernels' exp (G exp/s) per dtype and thread count (:func:`exp_sum`)."""
    from ._kernels.limits import EXP_LANES, exp_sum
    from .threads import threads as use_threads

    rows, blocks = 8, 64
    out = {"lanes": EXP_LANES, "rows": rows, "blocks": blocks}
    for dt in dtypes:
        name = np.dtype(dt).name
        x = np.random.default_rng(0).uniform(-8.0, 0.0, (rows, EXP_LANES)).astype(dt)
        res = np.empty((blocks, EXP_LANES), dt)
        with use_threads(max(threads)):
            exp_sum(x, 1, res)  # compile / load
            t0 = time.perf_counter()
            exp_sum(x, 16, res)
            t = max(time.perf_counter() - t0, 1e-6)
        reps = max(16, int(16 * target_s / t * max(threads)))
        count = reps * rows * EXP_LANES * blocks
        out[f"reps_{name}"] = reps
        for th in threads:
            with use_threads(th):
                med, _ = _median_time(lambda: exp_sum(x, reps, res), repeats)
            out[f"gexp_s_{name}_{th}thr"] = count / med / 1e9
            log(f"  exp {name}, {th} thread(s): {count / med / 1e9:.2f} G exp/s")
    return out


def bench_limits(repeats, threads, triad_elements=None, log=print):
    """Memory bandwidth, exp throughput, ISA, caches and load average of this machine, now."""
    out = {"load_average_before": load_average(), "isa": isa_info(), "caches": cache_sizes()}
    log(f"  ISA {out['isa']['isa']} (cpuinfo: {out['isa']['isa_cpuinfo']}, LLVM cpu {out['isa']['llvm_cpu']}); "
        f"last-level cache {(out['caches'].get('llc') or 0) / 2**20:.0f} MiB; load average {out['load_average_before']}")
    out["bandwidth"] = bench_bandwidth(repeats, threads, elements=triad_elements, log=log)
    out["exp"] = bench_exp(repeats, threads, log=log)
    out["load_average_after"] = load_average()
    return out


# ----------------------------------------------------------------------------- decode
DECODE_SHAPES = {
    "small": dict(d_model=256, n_layer=4, vocab_size=2048, d_state=16, d_conv=4),
    "130m": dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16, d_conv=4),
}


def decode_weight_bytes(model):
    """Bytes of weights one decode step reads: every layer weight, the final norm, the head.

    Taken from the model's decode weights (whatever their format); of the embedding only
    one row per token is read, so it counts only when it is also the (tied) head.
    """
    w = getattr(model, "_decode_weights", None)
    if w is None:  # pragma: no cover - older models
        return int(sum(a.nbytes for a in model.parameters().values()))
    total = 0
    fields = getattr(w, "_fields", ())
    for name in fields:
        a = getattr(w, name)
        if name == "embed":
            continue
        for part in (a if isinstance(a, tuple) else (a,)):
            if isinstance(part, np.ndarray):
                total += part.nbytes
    return int(total)


def make_decode(dims, seed=0):
    """``(step, model)``: ``step()`` advances a batch-1 greedy decode by one token (state kept)."""
    from .lm import MambaLM

    model = MambaLM.random(seed=seed, dtype=np.float32, **dims)
    state = model.initial_state(1)
    tok = np.zeros(1, np.int64)
    box = {"tok": tok}

    def step():
        logits, _ = model.step(box["tok"], state, inplace=True)
        box["tok"] = np.asarray([int(np.argmax(logits[0]))], np.int64)

    return step, model


def _tokens_per_second(step, tokens):
    for _ in range(4):  # warm-up (caches, first call)
        step()
    per = []
    for _ in range(tokens):
        t0 = time.perf_counter()
        step()
        per.append(time.perf_counter() - t0)
    return 1.0 / float(np.median(per))


def bench_decode(tokens, threads, shapes=("small", "130m"), log=print):
    """Batch-1 greedy decode tokens/s (median per-token time) per model shape and thread count."""
    from .threads import threads as use_threads

    out = {}
    for name in shapes:
        step, model = make_decode(DECODE_SHAPES[name])
        row = {"dims": DECODE_SHAPES[name], "weight_bytes_per_token": decode_weight_bytes(model), "tokens": tokens}
        for th in threads:
            with use_threads(th):
                row[f"tok_s_{th}thr"] = _tokens_per_second(step, tokens)
            log(f"  decode {name} ({row['weight_bytes_per_token'] / 1e6:.1f} MB of weights), {th} thread(s): "
                f"{row[f'tok_s_{th}thr']:.1f} tokens/s")
        out[name] = row
        del step, model
    return out


def add_fractions(res):
    """Every figure as a fraction of its limit, measured in the same run (in place; returns ``res``).

    * ``selective`` rows: G elements/s over the float32 G exp/s at the same thread count
      (one exp per (b, l, d, n) element: the kernel's dominant cost);
    * ``decode`` rows: tokens/s over the weight-streaming floor, measured triad bandwidth /
      bytes of weights per token (above 1 when the weights fit in the cache).
    """
    lim = res.get("limits")
    if not lim:
        return res
    ex, bw = lim.get("exp", {}), lim.get("bandwidth", {})
    for row in res.get("selective", []):
        for th in res.get("threads", []):
            g, e = row.get(f"gelem_s_{th}thr"), ex.get(f"gexp_s_float32_{th}thr")
            if g and e:
                row[f"frac_of_exp_{th}thr"] = g / e
    for row in res.get("decode", {}).values():
        for th in res.get("threads", []):
            tps, gbs = row.get(f"tok_s_{th}thr"), bw.get(f"gbs_{th}thr")
            if tps and gbs:
                floor = gbs * 1e9 / row["weight_bytes_per_token"]
                row[f"floor_tok_s_{th}thr"] = floor
                row[f"frac_of_floor_{th}thr"] = tps / floor
    return res


# ----------------------------------------------------------------------------- contention
_BURNER = r"""
import os, sys
parent = int(sys.argv[1])
sys.stdout.write("r")
sys.stdout.flush()
while os.getppid() == parent:  # exits by itself within ms once its parent is gone
    for _ in range(100000):
        pass
"""


class Burners:
    """Context manager: ``n`` CPU-bound busy-loop processes for the duration of the block.

    Each is a Python busy loop (not pinned: the scheduler places it, as other users' work).
    They are killed and reaped on leaving the block, also when it raises (``KeyboardInterrupt``
    included), at interpreter exit (``atexit``), and each one exits by itself once its parent
    process is gone (it polls its parent's pid), so none outlives the benchmark.
    """

    def __init__(self, n: int):
        self.n = int(n)
        self.procs: list = []

    def start(self):
        import atexit

        atexit.register(self.stop)
        try:
            for _ in range(self.n):
                p = subprocess.Popen([sys.executable, "-c", _BURNER, str(os.getpid())], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self.procs.append(p)
            for p in self.procs:
                if p.stdout.read(1) != b"r":  # running its loop
                    raise RuntimeError("a burner process did not start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            if p.stdout is not None:
                p.stdout.close()
        self.procs = []

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def bench_contention(figures, default_threads, rounds=3, burners=None, log=print):
    """Each figure quiet and beside ``burners`` CPU-bound processes, at the default threads and at 1.

    Parameters
    ----------
    figures : dict
        ``name -> (measure, unit)``: ``measure()`` returns a throughput (higher is better)
        under the current thread setting.
    default_threads : int
    rounds : int
        The four conditions (quiet/contended x default/1 thread) are measured in turn, round
        after round, and each figure's median over the rounds is reported (interleaving makes
        every condition see the same machine drift).
    burners : int, optional
        Default: the CPUs this process may use, minus one (at least one).

    Returns
    -------
    dict
        Per figure the medians and the ratios ``contended / quiet`` (each thread count) and
        ``contended default / contended 1-thread``, plus the load average before and after.
    """
    from .threads import _affinity
    from .threads import threads as use_threads

    nburn = max(1, _affinity() - 1) if burners is None else int(burners)
    th = {"default": int(default_threads), "1thr": 1}
    out = {"burners": nburn, "default_threads": th["default"], "rounds": rounds, "load_average_before": load_average(),
           "burner": "Python busy loop, not pinned", "figures": {}}
    samples = {name: {f"{c}_{t}": [] for c in ("quiet", "contended") for t in th} for name in figures}
    for _ in range(rounds):
        for cond in ("quiet", "contended"):
            ctx = Burners(nburn) if cond == "contended" else contextlib.nullcontext()
            with ctx:
                if cond == "contended":
                    out["load_average_contended"] = load_average()
                    out.setdefault("burner_pids", []).extend(ctx.pids)
                for name, (measure, _unit) in figures.items():
                    for key, n in th.items():
                        with use_threads(n):
                            samples[name][f"{cond}_{key}"].append(float(measure()))
    for name, (_measure, unit) in figures.items():
        med = {k: float(np.median(v)) for k, v in samples[name].items()}
        fig = {"unit": unit, **med, "samples": samples[name]}
        fig["contended_over_quiet_default"] = med["contended_default"] / med["quiet_default"]
        fig["contended_over_quiet_1thr"] = med["contended_1thr"] / med["quiet_1thr"]
        fig["contended_default_over_contended_1thr"] = med["contended_default"] / med["contended_1thr"]
        fig["meets_target"] = bool(fig["contended_over_quiet_default"] >= 0.4
                                   and fig["contended_default_over_contended_1thr"] >= 1.0)
        out["figures"][name] = fig
        log(f"  {name}: quiet {med['quiet_default']:.3g} ({th['default']} thr) / {med['quiet_1thr']:.3g} (1 thr); "
            f"contended {med['contended_default']:.3g} / {med['contended_1thr']:.3g} {unit}; contended/quiet "
            f"{fig['contended_over_quiet_default']:.2f}, contended default/1-thread "
            f"{fig['contended_default_over_contended_1thr']:.2f}")
    out["load_average_after"] = load_average()
    return out


def contention_figures(quick=False):
    """The figures ``--contention`` measures: S1 (or S3 when quick) and decode of the small model (and 130m)."""
    from . import ops

    name = "S3" if quick else "S1"
    kw = make_inputs(SHAPES[name])
    elements = int(np.prod(SHAPES[name]))

    def scan():
        ops.selective_scan(**kw)  # warm
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            ops.selective_scan(**kw)
            t.append(time.perf_counter() - t0)
        return elements / float(np.median(t)) / 1e9

    figs = {f"selective_scan {name} float32": (scan, "G elements/s")}
    for shape in (("small",) if quick else ("small", "130m")):
        step, _model = make_decode(DECODE_SHAPES[shape])
        n = 32 if shape == "small" else 16
        figs[f"decode {shape} batch 1"] = (lambda step=step, n=n: _tokens_per_second(step, n), "tokens/s")
    return figs


# ----------------------------------------------------------------------------- report
def to_markdown(res):
    """The Markdown tables of a result dict (what the README shows)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['simd']}), {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, "
        f"Numba {m['numba']} ({m['threading_layer']}); {m['date_utc']} UTC; median of {res['repeats']} runs "
        "after a warm-up.",
        "",
        "`selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True)`, float32, "
        "G elements/s (elements = batch·length·channels·state):",
        "",
        "| shape (b, l, d, n) | 1 thread | 2 threads | numpy reference | speedup vs numpy | max rel. err vs float64 |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["selective"]:
        dims = ", ".join(str(v) for v in r["dims (b,l,d,n)"])
        lines.append(
            f"| {r['shape']} ({dims}) | {r.get('gelem_s_1thr', float('nan')):.2f} ({r.get('t_1thr_ms', float('nan')):.1f} ms) "
            f"| {r.get('gelem_s_2thr', float('nan')):.2f} ({r.get('t_2thr_ms', float('nan')):.1f} ms) "
            + (f"| {r['gelem_s_numpy']:.3f} ({r['t_numpy_ms']:.0f} ms) | {r['speedup_vs_numpy']:.1f}x "
               if "gelem_s_numpy" in r else "| not run | not run ")
            + f"| {r['rel_err_vs_float64']:.1e} |")
    lines.append("")
    if "length_scaling" in res:
        s = res["length_scaling"]
        lines.append(f"Cost in length (b=1, d=1536, n=16, {s['threads']} threads, the two lengths alternating "
                     f"run by run, median of {s.get('repeats', res['repeats'])} runs): "
                     f"L=2048 {s['t_L2048_ms']:.1f} ms, L=16384 {s['t_L16384_ms']:.1f} ms, ratio {s['ratio_L16384_over_L2048']:.2f} (linear: 8).")
        if "ratio_L16384_over_L2048_no_output_cache" in s:
            lines.append(f"With the output cache disabled (`NBSSM_OUTPUT_CACHE_MB=0`): "
                         f"{s['t_L2048_ms_no_output_cache']:.1f} ms and {s['t_L16384_ms_no_output_cache']:.1f} ms, "
                         f"ratio {s['ratio_L16384_over_L2048_no_output_cache']:.2f}.")
        lines.append("")
    if "linear" in res:
        lr = res["linear"]
        lines.append(f"`linear_scan` on one sequence (1, 2^22, 1) float32 (chunk length {lr['chunk_length']}):")
        lines.append("")
        lines.append("| strategy | 1 thread | 2 threads |")
        lines.append("|---|---|---|")
        for strat in ("sequential", "chunked"):
            lines.append(f"| {strat} | {lr.get(f't_{strat}_1thr_ms', float('nan')):.2f} ms "
                         f"| {lr.get(f't_{strat}_2thr_ms', float('nan')):.2f} ms |")
        if "speedup_chunked_2thr_vs_best_1thr" in lr:
            lines.append("")
            lines.append(f"Chunked on 2 threads vs the best strategy on 1 thread: "
                         f"{lr['speedup_chunked_2thr_vs_best_1thr']:.2f}x.")
        lines.append("")
    if "memory" in res:
        mm = res["memory"]
        how = "VmHWM reset just before the call" if "extra_bytes_vmhwm" in mm else "`ru_maxrss`"
        lines.append(f"Peak memory above inputs + outputs during an S1 call (fresh process, {how}): "
                     f"{mm['extra_bytes'] / 2**20:.1f} MiB = {mm['extra_over_inputs_outputs']:.3f}x of "
                     f"{(mm['inputs_bytes'] + mm['outputs_bytes']) / 2**20:.1f} MiB "
                     f"(`ru_maxrss` growth over the call: {mm['extra_bytes_ru_maxrss'] / 2**20:.1f} MiB).")
        lines.append("")
    if "startup" in res:
        st = res["startup"]
        lines.append(f"Start-up, a fresh process importing nbssm and finishing its first S1 call: "
                     f"cold (empty Numba cache) {st['cold_import_and_first_S1_call_s']:.2f} s, "
                     f"warm (cache filled) {st['warm_import_and_first_S1_call_s']:.2f} s.")
        lines.append("")
    if res.get("limits"):
        lines.append(limits_markdown(res))
    return "\n".join(lines).rstrip() + "\n"


def limits_markdown(res):
    """The machine's limits and every figure as a fraction of its limit (Markdown)."""
    lim = res.get("limits")
    if not lim:
        return ""
    ths = res.get("threads", [])
    bw, ex, isa = lim["bandwidth"], lim["exp"], lim["isa"]
    llc = lim["caches"].get("llc")
    lines = [f"Machine limits, measured in the same run (ISA {isa['isa']}: cpuinfo {isa['isa_cpuinfo']}, "
             f"LLVM cpu {isa['llvm_cpu']}; last-level cache {(llc or 0) / 2**20:.0f} MiB; load average "
             f"{lim['load_average_before']} before, {lim['load_average_after']} after; default threads "
             f"{res.get('default_threads')}):", "",
             "| limit | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in ths) + " |",
             "|---|" + "---|" * len(ths),
             f"| memory bandwidth, triad over 3 x {bw['array_bytes'] / 2**20:.0f} MiB float64 (GB/s, 24 B/element, "
             "write-allocate not counted) | " + " | ".join(f"{bw.get(f'gbs_{t}thr', float('nan')):.1f}" for t in ths) + " |"]
    for dt in ("float32", "float64"):
        lines.append(f"| kernels' exp, {dt} (G exp/s) | "
                     + " | ".join(f"{ex.get(f'gexp_s_{dt}_{t}thr', float('nan')):.2f}" for t in ths) + " |")
    sel = [r for r in res.get("selective", []) if any(f"frac_of_exp_{t}thr" in r for t in ths)]
    dec = res.get("decode", {})
    if sel or dec:
        lines += ["", "Figures as fractions of their limits (figure / limit at the same thread count):", "",
                  "| figure | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in ths) + " |",
                  "|---|" + "---|" * len(ths)]
        for r in sel:
            lines.append(f"| selective_scan {r['shape']} float32, G elements/s / G exp/s | "
                         + " | ".join(f"{r.get(f'gelem_s_{t}thr', float('nan')):.2f} = "
                                      f"{r.get(f'frac_of_exp_{t}thr', float('nan')):.0%}" for t in ths) + " |")
        for name, r in dec.items():
            fits = llc and r["weight_bytes_per_token"] < llc
            lines.append(f"| decode {name} batch 1, tokens/s / floor ({r['weight_bytes_per_token'] / 1e6:.1f} MB of "
                         f"weights{', fits in the LLC' if fits else ''}) | "
                         + " | ".join(f"{r.get(f'tok_s_{t}thr', float('nan')):.1f} / "
                                      f"{r.get(f'floor_tok_s_{t}thr', float('nan')):.1f} = "
                                      f"{r.get(f'frac_of_floor_{t}thr', float('nan')):.0%}" for t in ths) + " |")
    return "\n".join(lines) + "\n"


def contention_markdown(c, machine=None):
    """The ``--contention`` table (Markdown)."""
    d = c["default_threads"]
    head = (f"Contention: each figure quiet and beside {c['burners']} CPU-bound process(es) ({c['burner']}), "
            f"at the default {d} threads and at 1 thread; median of {c['rounds']} interleaved rounds. Load average "
            f"{c['load_average_before']} before, {c.get('load_average_contended')} while contended, "
            f"{c['load_average_after']} after")
    if machine:
        head += f"; {machine.get('cpu')}, {machine.get('cores')} cores"
    lines = [head + ".", "",
             f"| figure | quiet, {d} thr | quiet, 1 thr | contended, {d} thr | contended, 1 thr | contended / quiet "
             f"({d} thr) | contended {d} thr / contended 1 thr | target (>= 40%, >= 1-thread) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in c["figures"].items():
        lines.append(f"| {name} ({f['unit']}) | {f['quiet_default']:.3g} | {f['quiet_1thr']:.3g} | "
                     f"{f['contended_default']:.3g} | {f['contended_1thr']:.3g} | {f['contended_over_quiet_default']:.2f} | "
                     f"{f['contended_default_over_contended_1thr']:.2f} | {'met' if f['meets_target'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser):
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median; at least 5)")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "nbssm-bench"),
                        help="directory for kernels.json and kernels.md (default: nbssm-bench in the temp directory)")
    parser.add_argument("--quick", action="store_true", help="S3 only, no numpy reference, no subprocess parts")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["selective", "scaling", "linear", "memory", "startup", "numpy", "limits", "decode"],
                        help="parts to leave out")
    parser.add_argument("--contention", action="store_true",
                        help="also run S1 and decode quiet and beside one CPU-bound process per core but one, "
                             "at the default threads and at 1 thread (contention.json / contention.md)")
    parser.add_argument("--contention-rounds", type=int, default=3, help="interleaved rounds of --contention (median)")
    parser.add_argument("--triad-mib", type=int, default=None,
                        help="MiB of each triad array (default: 4x the last-level cache, 256 MiB in all at least)")


def run(args) -> int:
    from .threads import default_threads, max_threads

    repeats = max(5, int(args.repeats))
    dflt = default_threads()
    threads = sorted({t for t in (1, 2, dflt) if t <= max_threads()})

    print("warming up (compiling or loading the kernels)...")
    from ._warmup import warmup

    warmup(models=False)
    res = {"machine": machine_info(), "repeats": repeats, "threads": threads, "default_threads": dflt,
           "load_average_start": load_average()}
    skip = set(args.skip)
    quick = bool(getattr(args, "quick", False))
    if quick:
        skip |= {"scaling", "linear", "memory", "startup", "numpy"}
    if "limits" not in skip:
        print("machine limits:")
        mib = getattr(args, "triad_mib", None)
        res["limits"] = bench_limits(repeats, threads, triad_elements=(mib << 20) // 8 if mib else None)
    if "selective" not in skip:
        print("selective_scan:")
        shapes = {"S3": SHAPES["S3"]} if quick else SHAPES
        res["selective"] = bench_selective(repeats, threads, shapes, numpy_ref="numpy" not in skip)
    if "decode" not in skip:
        print("decode (batch 1, random weights):")
        res["decode"] = bench_decode(16 if quick else 32, threads, ("small",) if quick else ("small", "130m"))
    if "scaling" not in skip:
        print("length scaling:")
        res["length_scaling"] = bench_length_scaling(repeats, max(threads))
    if "linear" not in skip:
        print("linear_scan:")
        res["linear"] = bench_linear(repeats)
    if "memory" not in skip:
        print("memory:")
        res["memory"] = bench_memory()
    if "startup" not in skip:
        print("start-up:")
        res["startup"] = bench_startup()
    add_fractions(res)
    if getattr(args, "contention", False):
        print("contention:")
        res["contention"] = bench_contention(contention_figures(quick), dflt,
                                             rounds=max(1, int(getattr(args, "contention_rounds", 3))))
    res["machine"] = machine_info()
    res["load_average_end"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res) if "selective" in res else limits_markdown(res)
    (out / "kernels.md").write_text(md)
    written = [out / "kernels.json", out / "kernels.md"]
    if "contention" in res:
        (out / "contention.json").write_text(json.dumps({"machine": res["machine"], **res["contention"]}, indent=2) + "\n")
        (out / "contention.md").write_text(contention_markdown(res["contention"], res["machine"]))
        written += [out / "contention.json", out / "contention.md"]
    print("wrote " + ", ".join(str(w) for w in written))
    print(md)
    if "contention" in res:
        print(contention_markdown(res["contention"], res["machine"]))
    return 0
