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
  process imports nbssm and finishes its first S1 call.

Every timing is the median of ``--repeats`` runs (at least 5) after a warm-up
run. Results go to ``kernels.json`` and ``kernels.md`` in ``--out`` (default
``nbssm-bench`` in the temporary directory, never the source tree); it
never edits the README or any committed file. Run timing jobs under
``flock /tmp/nbssm-bench.lock`` on shared machines::

    flock /tmp/nbssm-bench.lock nbssm bench --out /tmp/bench
"""

from __future__ import annotations

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
    }


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
            f"| {r.get('gelem_s_numpy', float('nan')):.3f} ({r.get('t_numpy_ms', float('nan')):.0f} ms) "
            f"| {r.get('speedup_vs_numpy', float('nan')):.1f}x | {r['rel_err_vs_float64']:.1e} |")
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
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(parser):
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median; at least 5)")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "nbssm-bench"),
                        help="directory for kernels.json and kernels.md (default: nbssm-bench in the temp directory)")
    parser.add_argument("--quick", action="store_true", help="S3 only, no numpy reference, no subprocess parts")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["selective", "scaling", "linear", "memory", "startup", "numpy"],
                        help="parts to leave out")


def run(args) -> int:
    import numba

    repeats = max(5, int(args.repeats))
    threads = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]

    print("warming up (compiling or loading the kernels)...")
    from ._warmup import warmup

    warmup(models=False)
    res = {"machine": machine_info(), "repeats": repeats, "threads": threads}
    skip = set(args.skip)
    if args.quick:
        skip |= {"scaling", "linear", "memory", "startup", "numpy"}
    if "selective" not in skip:
        print("selective_scan:")
        shapes = {"S3": SHAPES["S3"]} if args.quick else SHAPES
        res["selective"] = bench_selective(repeats, threads, shapes, numpy_ref="numpy" not in skip)
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
    res["machine"] = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res) if "selective" in res else ""
    (out / "kernels.md").write_text(md)
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.md'}")
    print(md)
    return 0
