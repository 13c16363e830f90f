"""``nbssm experiment``: run a paper experiment.

Subcommands:

- ``signature-tasks``: Experiment A of "Theoretical Foundations of Deep Selective State-Space
  Models" (predicting ``S^{(1,2)}`` and ``S^{(1,2,3)}`` from random recurrent features), see
  :mod:`nbssm.experiments.signature_tasks`. Writes ``results.json``, ``results.md`` and
  ``results.png`` (ours next to the paper's numbers) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys


def _csv(choices):
    def parse(text):
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return items

    return parse


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}")
        return value

    return parse


def _out_dir(text: str) -> str:
    """An output directory that exists or can be created (checked before the run starts)."""
    import os

    if not text:
        raise argparse.ArgumentTypeError("expected a directory path, got ''")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}, which is an existing file")
    probe = os.path.abspath(text)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {probe!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {probe!r} is not writable")
    return text


#: Upper bounds of the options (the paper uses 100000 paths, order 2, 3 seeds).
MAX_PATHS = 1_000_000
MAX_SEED = 2**32 - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nbssm.experiments.signature_tasks import MODELS, TASKS

    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("signature-tasks", help="the paper's Experiment A: predict the area S^12 (2-D) and volume S^123 (3-D)",
                       description="The paper's Experiment A: predict the signature terms S^12 (2-D paths) and "
                                   "S^123 (3-D paths) from the final states of frozen random recurrences with a "
                                   "least-squares readout; compare with the paper's numbers.")
    p.add_argument("--seed", type=int, default=0, help="random seed for data and models (default 0)")
    p.add_argument("--n-paths", type=int, default=100_000,
                   help=f"number of paths per task, 10..{MAX_PATHS} (default 100000, the paper's; e.g. 2000 for a quick run)")
    p.add_argument("--out", default="signature_tasks_results", help="output directory for results.json/.md/.png")
    p.add_argument("--models", type=_csv(MODELS), default=MODELS, help=f"comma-separated subset of {','.join(MODELS)} (default all)")
    p.add_argument("--tasks", type=_csv(tuple(TASKS)), default=tuple(TASKS), help="comma-separated subset of area,volume (default both)")
    p.add_argument("--dense-seeds", type=int, default=1, help="run the dense model with this many seeds (seed, seed+1, ...) and report mean and std (default 1)")
    p.add_argument("--dense-order", type=int, default=2, help="Taylor order of the dense step; 0 = Euler (default 2)")
    p.add_argument("--dense-dtype", choices=("float32", "float64"), default="float32", help="GEMM precision of the dense scan (default float32)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args) -> int:
    from nbssm.experiments import signature_tasks as st

    if args.experiment != "signature-tasks":  # pragma: no cover - argparse restricts choices
        print(f"unknown experiment {args.experiment!r}", file=sys.stderr)
        return 2
    prog = "nbssm experiment signature-tasks"
    checks = [("--seed", args.seed, 0, MAX_SEED), ("--n-paths", args.n_paths, 10, MAX_PATHS),
              ("--dense-seeds", args.dense_seeds, 1, 100), ("--dense-order", args.dense_order, 0, 8)]
    for option, value, low, high in checks:
        if not low <= value <= high:
            print(f"{prog}: error: argument {option}: expected an integer in [{low}, {high}], got {value}", file=sys.stderr)
            return 2
    try:
        _out_dir(args.out)
    except argparse.ArgumentTypeError as exc:
        print(f"{prog}: error: argument --out: {exc}", file=sys.stderr)
        return 2
    cfg = st.Config(seed=args.seed, n_paths=args.n_paths, models=tuple(args.models), tasks=tuple(args.tasks),
                    dense_order=args.dense_order, dense_dtype=args.dense_dtype, dense_seeds=args.dense_seeds,
                    progress=not args.no_progress)
    results = st.run(cfg)
    files = st.write_outputs(results, args.out)
    print(st.markdown_table(results))
    print(f"total {results['total_seconds']:.1f} s; wrote {', '.join(files)}")
    return 0
