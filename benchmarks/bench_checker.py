"""Check time of the symbolic checker against dimensions and lengths, the targets and the frontier.

Run (one command; wrap in the shared lock on a busy machine)::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_checker.py            # full (~10-20 min)
    python benchmarks/bench_checker.py --quick                                # targets + default total only

Writes a Markdown table to stdout and to ``--out`` (default
``benchmarks/results/bench_checker.md``), and the raw rows as JSON next to it.

Measured:
1. the targets: ``selectiveMamba_runList_append_outputs_prefix`` with every
   parameter, H0 and every input symbolic, at dims 4 / convWidth 4 / 8+4 tokens
   (target < 5 s) and dims 8 / convWidth 4 / 3+2 tokens (target < 15 s);
2. every registered check at the default preset, one after another (target
   < 60 s in total on 2 cores), without the external groups;
3. scaling of the selective causality check with the dimensions (3+2 tokens)
   and with |xs| (|ys| = 2, default dimensions);
4. the frontier: the largest dimensions (all four equal, convWidth 3) at 3+2
   tokens and the longest |xs|+|ys| (|ys| = 2) at the default dimensions that
   finish within 60 s (a check over the budget is unknown and ends the search).
Each point is run in a fresh process-free loop with sympy's cache cleared;
times are wall-clock seconds of one run (min of ``--repeat`` runs for the
targets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import sympy

from nbssm.spec import checks as C

TARGET = "selectiveMamba_runList_append_outputs_prefix"


def spec_named(name: str) -> C.CheckSpec:
    return next(c for c in C.registry() if c.name == name)


LAST_DETAIL = {}


def time_check(name: str, dims: C.Dims, budget: float) -> tuple[str, float]:
    r = C.run_check(spec_named(name), dims, budget)
    LAST_DETAIL["detail"] = r.detail
    return r.verdict, r.seconds


def machine() -> str:
    return (f"{platform.node()} {platform.machine()} {platform.processor() or ''} | cpus {os.cpu_count()} | "
            f"Python {platform.python_version()} | sympy {sympy.__version__} | "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="targets and the default total only")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frontier-budget", type=float, default=60.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_checker.md"))
    args = ap.parse_args(argv)
    rows: list[dict] = []
    lines = ["# nbssm checker timings", "", f"machine: {machine()}", ""]

    # 1. targets
    lines += ["## Targets (selectiveMamba_runList_append_outputs_prefix, everything symbolic)", "",
              "| dims | convWidth | xs+ys | verdict | best s | all runs s | target s |", "|---|---|---|---|---|---|---|"]
    for preset, target in (("target4", 5.0), ("target8", 15.0)):
        d = C.PRESETS[preset]
        runs = [time_check(TARGET, d, 120) for _ in range(args.repeat)]
        best = min(s for _, s in runs)
        verdicts = {v for v, _ in runs}
        lines.append(f"| {d.input_dim} | {d.conv_width} | {d.n_xs}+{d.n_ys} | {'/'.join(sorted(verdicts))} | "
                     f"{best:.2f} | {', '.join(f'{s:.2f}' for _, s in runs)} | < {target:g} |")
        rows.append(dict(section="target", preset=preset, verdicts=sorted(verdicts), seconds=[s for _, s in runs]))
    print("\n".join(lines), flush=True)

    # 2. default preset total
    t0 = time.perf_counter()
    res = C.run_all(C.PRESETS["default"], 60)
    wall = time.perf_counter() - t0
    n_pass = sum(r.passed for r in res)
    slowest = sorted(res, key=lambda r: -r.seconds)[:5]
    lines += ["", "## All registered checks at the default preset (no external groups)", "",
              f"{len(res)} checks, {n_pass} passed, wall {wall:.2f} s (target < 60 s); slowest: "
              + ", ".join(f"{r.name} {r.seconds:.2f} s" for r in slowest)]
    rows.append(dict(section="default_total", n=len(res), passed=n_pass, wall=wall))
    print("\n".join(lines[-3:]), flush=True)

    if not args.quick:
        # 3. scaling
        lines += ["", f"## Scaling of {TARGET}", "", "| dims | convWidth | xs+ys | verdict | s |", "|---|---|---|---|---|"]
        for dd in (1, 2, 3, 4, 6, 8, 12):
            d = C.Dims(dd, dd, dd, dd, 3, 3, 2)
            v, s = time_check(TARGET, d, args.frontier_budget)
            lines.append(f"| {dd} | 3 | 3+2 | {v} | {s:.2f} |")
            rows.append(dict(section="scale_dims", dims=dd, verdict=v, seconds=s))
            print(lines[-1], flush=True)
        for nx in (3, 8, 16, 32, 64):
            d = replace(C.PRESETS["default"], n_xs=nx)
            v, s = time_check(TARGET, d, args.frontier_budget)
            lines.append(f"| 2 | 3 | {nx}+2 | {v} | {s:.2f} |")
            rows.append(dict(section="scale_len", n_xs=nx, verdict=v, seconds=s))
            print(lines[-1], flush=True)

        # 4. frontier: grow geometrically until over budget, then bisect
        reasons: dict[str, str] = {}
        def frontier(make, start: int, label: str):
            lo, hi, t_lo = None, None, None
            n = start
            while hi is None:
                v, s = time_check(TARGET, make(n), args.frontier_budget)
                rows.append(dict(section=f"frontier_{label}", n=n, verdict=v, seconds=s))
                print(f"frontier {label}: {n} -> {v} {s:.2f} s", flush=True)
                if v == "proved":
                    lo, t_lo = n, s
                    n *= 2
                else:
                    hi = n
                    reasons[label] = f"{n}: {LAST_DETAIL['detail'][:80]}"
            while lo is not None and hi - lo > max(1, lo // 8):
                mid = (lo + hi) // 2
                v, s = time_check(TARGET, make(mid), args.frontier_budget)
                rows.append(dict(section=f"frontier_{label}", n=mid, verdict=v, seconds=s))
                print(f"frontier {label}: {mid} -> {v} {s:.2f} s", flush=True)
                if v == "proved":
                    lo, t_lo = mid, s
                else:
                    hi = mid
                    reasons[label] = f"{mid}: {LAST_DETAIL['detail'][:80]}"
            return lo, hi, t_lo

        dlo, dhi, dt = frontier(lambda n: C.Dims(n, n, n, n, 3, 3, 2), 8, "dims")
        llo, lhi, lt = frontier(lambda n: replace(C.PRESETS["default"], n_xs=max(n - 2, 0)), 64, "length")
        lines += ["", f"## Frontier of {TARGET} within {args.frontier_budget:g} s", "",
                  f"- largest dims (input = inner = state = output, convWidth 3) at 3+2 tokens: {dlo} "
                  f"({dt:.1f} s); {dhi} did not finish" if dlo else "- dims frontier: not reached",
                  f"- longest |xs|+|ys| (|ys| = 2) at the default dims (2, convWidth 3): {llo} ({lt:.1f} s); "
                  f"{lhi} did not finish" if llo else "- length frontier: not reached",
                  "- why the smallest failing points failed: " + "; ".join(f"{k} {v}" for k, v in reasons.items())]
        print("\n".join(lines[-5:]), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(machine=machine(), rows=rows), indent=1))
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
