"""``nbssm verify``: run the symbolic checker and the refinement checks; print the theorem ledger.

Runs every registered check (:mod:`nbssm.spec.checks`: the Lean theorems
under their Lean names, nbssm's beyond-Lean statements and the negative
controls) at one set of dimensions, then the kernel refinement checks
(:mod:`nbssm.verify.refinement`), the linear-CDE checks
(:mod:`nbssm.spec.checks.linear_cde`), the distributed-scan checks and the language-model
rows (:mod:`nbssm.verify.lm_rows`), and prints one ledger row per check:
name, kind, dimensions, verdict, seconds.

Exit status: 0 only if every theorem and beyond-Lean check is ``proved`` and
every control ``refuted``; 1 otherwise (anything ``unknown`` included, e.g. a
budget of 0 s); 2 for bad arguments or an empty selection.

``--budget`` takes seconds per check: a number >= 0 or ``inf`` (no limit);
NaN, negative numbers and non-numbers are argument errors. With ``--json``
stdout is always one JSON document: the list of result objects, or, on an
argument error or an empty selection, ``{"error": {"command", "status", "message"}}``
(the format of every ``--json`` command, :func:`nbssm.cli.json_error`).

Examples::

    nbssm verify                              # default preset: dims 2, convWidth 3, |xs|=3, |ys|=2
    nbssm verify --preset target4 --only selectiveMamba_runList_append_outputs_prefix
    nbssm verify --dims 3 --xs 4 --ys 2 --budget 10 --json > ledger.json
    nbssm verify --controls                   # the negative controls only
    nbssm verify --ledger proofs_notes/README.md   # regenerate the ledger's tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from typing import Any

from nbssm.spec.verdict import BEYOND, CONTROL, THEOREM, UNKNOWN, CheckResult

PRESET_NAMES = ("default", "minimal", "target4", "target8")


def _budget(text: str) -> float:
    """``--budget``: seconds >= 0, or ``inf`` for no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 or 'inf', got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 or 'inf', got {text!r}")
    return value


def _count(text: str) -> int:
    """A non-negative integer option (dimensions, lengths, seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nbssm verify``."""
    g = parser.add_argument_group("dimensions and lengths")
    g.add_argument("--preset", choices=sorted(PRESET_NAMES), default="default",
                   help="named dimensions: minimal (1,1,1,1, W2, 2+1), default (2,2,2,2, W3, 3+2), "
                        "target4 (4, W4, 8+4), target8 (8, W4, 3+2); explicit options override it")
    g.add_argument("--dims", type=_count, metavar="N", help="set inputDim, innerDim, stateDim and outputDim to N")
    g.add_argument("--input-dim", type=_count, metavar="N")
    g.add_argument("--inner-dim", type=_count, metavar="N")
    g.add_argument("--state-dim", type=_count, metavar="N")
    g.add_argument("--output-dim", type=_count, metavar="N")
    g.add_argument("--conv-width", type=_count, metavar="W")
    g.add_argument("--xs", type=_count, metavar="N", help="|xs|: length of the prefix (and of the first transition list)")
    g.add_argument("--ys", type=_count, metavar="N", help="|ys|: length of the appended suffix")
    s = parser.add_argument_group("selection")
    s.add_argument("--controls", nargs="?", const="only", default="include", choices=["include", "only", "exclude"],
                   help="negative controls: include (default), only (also the bare flag), exclude")
    s.add_argument("--only", action="append", metavar="NAME",
                   help="run only checks whose name contains NAME (repeatable); skips the external groups")
    s.add_argument("--kind", action="append", choices=[THEOREM, BEYOND, CONTROL],
                   help="run only checks of this kind (repeatable)")
    s.add_argument("--no-external", action="store_true",
                   help="skip the external groups: kernel refinement (nbssm.verify.refinement), linear CDEs, "
                        "the distributed scan and the language model (nbssm.verify.lm_rows)")
    s.add_argument("--list", action="store_true", help="list the selected checks with their statements; run nothing")
    o = parser.add_argument_group("running and output")
    o.add_argument("--budget", type=_budget, default=30.0, metavar="SECONDS",
                   help="time budget per check: seconds >= 0 or 'inf' for no limit (default 30); "
                        "a check over budget is unknown; 0 runs nothing")
    o.add_argument("--seed", type=_count, default=0, help="seed of the kernel refinement checks (default 0)")
    o.add_argument("--json", action="store_true",
                   help="print the results as a JSON list (name, kind, verdict, dims, seconds, detail) on stdout; "
                        "an error is a JSON object {error, status}")
    o.add_argument("--ledger", nargs="?", const="-", metavar="FILE",
                   help="after the run, write the generated ledger tables: into the marked section of FILE "
                        "(e.g. proofs_notes/README.md), or on stdout without FILE")
    o.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress display on stderr (default: when stderr is a terminal; tqdm if installed)")
    o.add_argument("--no-progress", dest="progress", action="store_false")


def dims_from_args(args: argparse.Namespace):
    """The :class:`~nbssm.spec.checks.Dims` selected by the preset and the explicit options."""
    from nbssm.spec.checks import PRESETS

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


def fmt_dims(d: dict) -> str:
    """Dimensions as ``inputDim/innerDim/stateDim/outputDim W convWidth |xs|+|ys|``."""
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
        t = fmt_dims(r.dims)
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
    counts: dict[tuple[str, str], int] = {}
    for r in results:
        counts[(r.kind, r.verdict)] = counts.get((r.kind, r.verdict), 0) + 1
    parts = [f"{n} {k} {v}" for (k, v), n in sorted(counts.items())]
    n_bad = sum(1 for r in results if not r.passed)
    status = "ALL PASSED" if n_bad == 0 else f"{n_bad} NOT PASSED"
    return f"{len(results)} checks in {seconds:.1f} s: {', '.join(parts)}. {status}"


def _fail(args: argparse.Namespace, message: str, status: int = 2) -> int:
    print(f"nbssm verify: {message}", file=sys.stderr)
    if args.json:
        from nbssm.cli import json_error

        json_error("verify", status, f"nbssm verify: {message}")
    return status


def _budget_text(budget: float | None) -> str:
    return "no limit" if budget is None or math.isinf(budget) else f"{budget:g} s"


def run(args: argparse.Namespace) -> int:
    """Run ``nbssm verify``; returns the exit status."""
    from nbssm.spec import checks as K

    from . import ledger as LG
    from .external import GROUP_LISTING, GROUPS, external_checks

    try:
        dims = dims_from_args(args)
    except ValueError as e:
        return _fail(args, str(e))
    if args.ledger is not None and (args.json or args.list):
        return _fail(args, "--ledger: expected without --json and --list")
    budget = None if math.isinf(args.budget) else args.budget
    kinds = _kinds(args)
    chosen = K.select(args.only, kinds)
    external = not args.no_external and not args.only
    if args.list:
        for c in chosen:
            print(f"{c.name}  [{c.kind}, {c.family}, {c.method}]  {c.statement}")
        if external:
            for name, where, what in GROUP_LISTING:
                print(f"{name}  [{where}]  {what}")
        return 0
    if not chosen and not external:
        return _fail(args, "no check selected")
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = _Progress(len(chosen) + (1 if external else 0), enabled)
    t0 = time.perf_counter()
    results: list[CheckResult] = []
    try:
        for c in chosen:
            progress.start(c.name)
            results.append(K.run_check(c, dims, budget))
            progress.done()
        if external:
            progress.start("external: " + ", ".join(label for label, _, _ in GROUPS))
            if budget is not None and budget <= 0:
                ext = [CheckResult(n, BEYOND, UNKNOWN, {}, 0.0, f"time budget of {budget:g} s: not attempted")
                       for n, _, _ in GROUPS]
            else:
                ext = external_checks(budget, seed=args.seed)
            results.extend(r for r in ext if r.kind in kinds)
            progress.done()
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    status = 0 if results and all(r.passed for r in results) else 1
    if args.json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        print(summary(results, elapsed), file=sys.stderr)
        return status
    if args.ledger is not None:
        section = LG.render(K.registry(), results, ledger_heading(args, dims))
        if args.ledger == "-":
            print(section)
        else:
            try:
                LG.write(args.ledger, section)
            except OSError as e:
                return _fail(args, f"{args.ledger}: expected a writable ledger file, got {type(e).__name__}: {e}")
            print(f"nbssm verify: wrote the ledger tables into {args.ledger}", file=sys.stderr)
        print(summary(results, elapsed), file=sys.stderr)
        return status
    print(f"nbssm verify at {fmt_dims(dims.as_dict())} (dims: inputDim/innerDim/stateDim/outputDim W convWidth "
          f"|xs|+|ys|), budget {_budget_text(budget)} per check")
    print(format_ledger(results))
    print(summary(results, elapsed))
    return status


def ledger_heading(args: argparse.Namespace | None, dims) -> str:
    """How the ledger's heading names the dimensions of its verdicts."""
    preset = getattr(args, "preset", "default") if args is not None else "default"
    return f"the `{preset}` preset (dims {fmt_dims(dims.as_dict())}: inputDim/innerDim/stateDim/outputDim W convWidth |xs|+|ys|)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbssm verify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``nbssm verify`` as a function: parse ``argv`` and run; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or an argument error (2)
        return int(e.code or 0)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
