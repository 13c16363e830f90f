"""``nbssm verify``: run the symbolic checker and print the theorem ledger.

Runs every registered check (:mod:`nbssm.spec.checker`: the Lean theorems
under their Lean names, nbssm's beyond-Lean statements and the negative
controls) at one set of dimensions, then the kernel refinement checks
(``nbssm.refinement``) and the linear-CDE checks (``nbssm.spec.cde_checks``),
and prints one ledger row per check: name, kind, dimensions, verdict, seconds.

Exit status: 0 only if every theorem and beyond-Lean check is ``proved`` and
every control ``refuted``; 1 otherwise (anything ``unknown`` included, e.g. a
budget of 0 s); 2 when the selection is empty.

Examples::

    nbssm verify                              # default preset: dims 2, convWidth 3, |xs|=3, |ys|=2
    nbssm verify --preset target4 --only selectiveMamba_runList_append_outputs_prefix
    nbssm verify --dims 3 --xs 4 --ys 2 --budget 10 --json > ledger.json
    nbssm verify --controls                   # the negative controls only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

from .verdict import BEYOND, CONTROL, THEOREM, UNKNOWN, CheckResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nbssm verify``."""
    from .checker import PRESETS

    g = parser.add_argument_group("dimensions and lengths")
    g.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="named dimensions: minimal (1,1,1,1, W2, 2+1), default (2,2,2,2, W3, 3+2), "
                        "target4 (4, W4, 8+4), target8 (8, W4, 3+2); explicit options override it")
    g.add_argument("--dims", type=int, metavar="N", help="set inputDim, innerDim, stateDim and outputDim to N")
    g.add_argument("--input-dim", type=int, metavar="N")
    g.add_argument("--inner-dim", type=int, metavar="N")
    g.add_argument("--state-dim", type=int, metavar="N")
    g.add_argument("--output-dim", type=int, metavar="N")
    g.add_argument("--conv-width", type=int, metavar="W")
    g.add_argument("--xs", type=int, metavar="N", help="|xs|: length of the prefix (and of the first transition list)")
    g.add_argument("--ys", type=int, metavar="N", help="|ys|: length of the appended suffix")
    s = parser.add_argument_group("selection")
    s.add_argument("--controls", nargs="?", const="only", default="include", choices=["include", "only", "exclude"],
                   help="negative controls: include (default), only (also the bare flag), exclude")
    s.add_argument("--only", action="append", metavar="NAME",
                   help="run only checks whose name contains NAME (repeatable); skips the external groups")
    s.add_argument("--kind", action="append", choices=[THEOREM, BEYOND, CONTROL],
                   help="run only checks of this kind (repeatable)")
    s.add_argument("--no-external", action="store_true",
                   help="skip the kernel refinement checks (nbssm.refinement) and the CDE checks (spec.cde_checks)")
    s.add_argument("--list", action="store_true", help="list the selected checks with their statements; run nothing")
    o = parser.add_argument_group("running and output")
    o.add_argument("--budget", type=float, default=30.0, metavar="SECONDS",
                   help="time budget per check (default 30); a check over budget is unknown; 0 runs nothing")
    o.add_argument("--seed", type=int, default=0, help="seed of the kernel refinement checks (default 0)")
    o.add_argument("--json", action="store_true",
                   help="print the results as a JSON list (name, kind, verdict, dims, seconds, detail) on stdout")
    o.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress display on stderr (default: when stderr is a terminal; tqdm if installed)")
    o.add_argument("--no-progress", dest="progress", action="store_false")


def dims_from_args(args: argparse.Namespace):
    """The :class:`~nbssm.spec.checker.Dims` selected by the preset and the explicit options."""
    from .checker import PRESETS

    d = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    if args.dims is not None:
        changes.update(input_dim=args.dims, inner_dim=args.dims, state_dim=args.dims, output_dim=args.dims)
    for opt, fld in (("input_dim", "input_dim"), ("inner_dim", "inner_dim"), ("state_dim", "state_dim"),
                     ("output_dim", "output_dim"), ("conv_width", "conv_width"), ("xs", "n_xs"), ("ys", "n_ys")):
        v = getattr(args, opt)
        if v is not None:
            changes[fld] = v
    return replace(d, **changes)


def _kinds(args: argparse.Namespace) -> list[str]:
    kinds = list(args.kind) if args.kind else [THEOREM, BEYOND, CONTROL]
    if args.controls == "only":
        kinds = [CONTROL]
    elif args.controls == "exclude":
        kinds = [k for k in kinds if k != CONTROL]
    return kinds


class _Progress:
    """tqdm on stderr when available, else one line per check; silent when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.total = total
        self.count = 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="check", leave=False, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def start(self, name: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(name[:48])
        else:
            print(f"[{self.count + 1}/{self.total}] {name} ...", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_dims(d: dict) -> str:
    if not d:
        return "-"
    keys = ("input_dim", "inner_dim", "state_dim", "output_dim")
    if all(k in d for k in keys) and {"conv_width", "n_xs", "n_ys"} <= set(d):
        base = f"{d['input_dim']}/{d['inner_dim']}/{d['state_dim']}/{d['output_dim']} W{d['conv_width']} {d['n_xs']}+{d['n_ys']}"
        rest = {k: v for k, v in d.items() if k not in keys + ("conv_width", "n_xs", "n_ys")}
        return base + ("".join(f" {k}={v}" for k, v in rest.items()))
    return " ".join(f"{k}={v}" for k, v in d.items())


def format_ledger(results: list[CheckResult], details: bool = True, dims_width: int = 64) -> str:
    """The ledger as text: one row per check, then the evidence of every failing row.

    Columns: name, kind, verdict, seconds, ok (passed), dims (truncated to
    ``dims_width`` characters; ``--json`` has them in full).
    """
    def dims_text(r: CheckResult) -> str:
        t = _fmt_dims(r.dims)
        return t if len(t) <= dims_width else t[: dims_width - 3] + "..."

    name_w = max([len(r.name) for r in results] + [4])
    lines = [f"{'name':<{name_w}}  {'kind':<7}  {'verdict':<8}  {'seconds':>8}  {'ok':<3}  dims"]
    for r in results:
        lines.append(f"{r.name:<{name_w}}  {r.kind:<7}  {r.verdict:<8}  {r.seconds:8.2f}  "
                     f"{'yes' if r.passed else 'NO':<3}  {dims_text(r)}")
    bad = [r for r in results if not r.passed]
    if details and bad:
        lines.append("")
        lines.append("not passed:")
        for r in bad:
            lines.append(f"  {r.name} ({r.kind}, {r.verdict}): {r.detail}")
    return "\n".join(lines)


def summary(results: list[CheckResult], seconds: float) -> str:
    counts = {}
    for r in results:
        counts[(r.kind, r.verdict)] = counts.get((r.kind, r.verdict), 0) + 1
    parts = [f"{n} {k} {v}" for (k, v), n in sorted(counts.items())]
    n_bad = sum(1 for r in results if not r.passed)
    status = "ALL PASSED" if n_bad == 0 else f"{n_bad} NOT PASSED"
    return f"{len(results)} checks in {seconds:.1f} s: {', '.join(parts)}. {status}"


def run(args: argparse.Namespace) -> int:
    """Run ``nbssm verify``; returns the exit status."""
    from . import checker as C

    try:
        dims = dims_from_args(args)
    except ValueError as e:
        print(f"nbssm verify: {e}", file=sys.stderr)
        return 2
    kinds = _kinds(args)
    chosen = C.select(args.only, kinds)
    external = not args.no_external and not args.only
    if args.list:
        for c in chosen:
            print(f"{c.name}  [{c.kind}, {c.family}, {c.method}]  {c.statement}")
        if external:
            print("refinement_checks  [beyond, external: nbssm.refinement]  kernels vs spec on random inputs")
            print("cde_checks  [external: nbssm.spec.cde_checks]  linear-CDE prefix causality and its control")
        return 0
    if not chosen and not external:
        print("nbssm verify: no check selected", file=sys.stderr)
        return 2
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = _Progress(len(chosen) + (1 if external else 0), enabled)
    t0 = time.perf_counter()
    results: list[CheckResult] = []
    try:
        for c in chosen:
            progress.start(c.name)
            results.append(C.run_check(c, dims, args.budget))
            progress.done()
        if external:
            progress.start("external: refinement_checks, cde_checks")
            if args.budget is not None and args.budget <= 0:
                ext = [CheckResult(n, BEYOND, UNKNOWN, {}, 0.0, f"time budget of {args.budget:g} s: not attempted")
                       for n in ("refinement_checks", "cde_checks")]
            else:
                ext = C.external_checks(args.budget, seed=args.seed)
            results.extend(r for r in ext if r.kind in kinds)
            progress.done()
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    if args.json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        print(summary(results, elapsed), file=sys.stderr)
    else:
        print(f"nbssm verify at {_fmt_dims(dims.as_dict())} (dims: inputDim/innerDim/stateDim/outputDim W convWidth |xs|+|ys|), "
              f"budget {args.budget:g} s per check")
        print(format_ledger(results))
        print(summary(results, elapsed))
    return 0 if results and all(r.passed for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbssm verify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
