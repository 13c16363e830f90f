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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nbssm.experiments.signature_tasks import MODELS, TASKS

    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("signature-tasks", help="the paper's Experiment A: predict the area S^12 (2-D) and volume S^123 (3-D)",
                       description="The paper's Experiment A: predict the signature terms S^12 (2-D paths) and "
                                   "S^123 (3-D paths) from the final states of frozen random recurrences with a "
                                   "least-squares readout; compare with the paper's numbers.")
    p.add_argument("--seed", type=int, default=0, help="random seed for data and models (default 0)")
    p.add_argument("--n-paths", type=int, default=100_000, help="number of paths per task (default 100000, the paper's; e.g. 2000 for a quick run)")
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
    if args.n_paths < 10:
        print(f"--n-paths must be at least 10, got {args.n_paths}", file=sys.stderr)
        return 2
    if args.dense_seeds < 1 or args.dense_order < 0:
        print("--dense-seeds must be >= 1 and --dense-order >= 0", file=sys.stderr)
        return 2
    cfg = st.Config(seed=args.seed, n_paths=args.n_paths, models=tuple(args.models), tasks=tuple(args.tasks),
                    dense_order=args.dense_order, dense_dtype=args.dense_dtype, dense_seeds=args.dense_seeds,
                    progress=not args.no_progress)
    results = st.run(cfg)
    files = st.write_outputs(results, args.out)
    print(st.markdown_table(results))
    print(f"total {results['total_seconds']:.1f} s; wrote {', '.join(files)}")
    return 0
