"""``nbssm experiment``: run a paper experiment.

Subcommands:

- ``signature-tasks``: Experiment A of "Theoretical Foundations of Deep Selective State-Space
  Models" (predicting ``S^{(1,2)}`` and ``S^{(1,2,3)}`` from random recurrent features), see
  :mod:`nbssm.experiments.signature_tasks`. Writes ``results.json``, ``results.md`` and
  ``results.png`` (ours next to the paper's numbers) into ``--out``.
- ``state-tracking``: Experiment B (A5 prefix products: the fewest blocks of a linear CDE, an
  S4-style and a Mamba-style stack reaching 90% validation token accuracy per length), see
  :mod:`nbssm.experiments.state_tracking`; trains with torch (``pip install nbssm[torch]``).
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
    from nbssm.experiments.signature_tasks import MODELS, TASKS, TRAINED_MODELS

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
    p.add_argument("--trained", type=_csv(tuple(TRAINED_MODELS)), default=(),
                   help="also train these Mamba-style stacks (torch; pip install nbssm[torch]): mamba_1, mamba_2 (default none)")
    p.add_argument("--train-steps", type=_int_in(1, 10**7), default=2000, help="training steps per trained model at most (default 2000)")
    p.add_argument("--train-seconds", type=_positive(float), default=300.0, help="training seconds per trained model at most (default 300)")
    p.add_argument("--train-batch", type=_int_in(1, 1 << 16), default=64, help="batch size of the trained models (default 64)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    _add_state_tracking(sub)


def _ints(low: int, high: int):
    def parse(text: str) -> tuple:
        one = _int_in(low, high)
        items = tuple(sorted({one(s.strip()) for s in text.split(",") if s.strip()}))
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers in [{low}, {high}], got {text!r}")
        return items

    return parse


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _add_state_tracking(sub) -> None:
    # no torch import here: `nbssm experiment --help` works without the extra
    from nbssm.experiments.state_tracking import MODELS as ST_MODELS

    p = sub.add_parser("state-tracking", help="the paper's Experiment B: A5 state tracking, fewest blocks per length (torch)",
                       description="The paper's Experiment B: train a linear CDE, an S4-style and a Mamba-style "
                                   "stack on A5 prefix products and report, per sequence length, the fewest blocks "
                                   "reaching 90% validation token accuracy, next to the paper's numbers. Needs "
                                   "torch (pip install nbssm[torch]). The defaults are the reduced protocol "
                                   "(benchmarks/results/state_tracking/).")
    p.add_argument("--quick", action="store_true", help="tiny protocol for tests: lengths 3,4, blocks 1,2, tiny widths, 24 steps (< 2 min)")
    p.add_argument("--models", type=_csv(ST_MODELS), default=None, help=f"comma-separated subset of {','.join(ST_MODELS)} (default all)")
    p.add_argument("--lengths", type=_ints(1, 64), default=None, help="comma-separated sequence lengths (default 3,4,5,6,8,10)")
    p.add_argument("--blocks", type=_ints(1, 8), default=None, help="block counts tried in increasing order (default 1,2,3,4)")
    p.add_argument("--max-steps", type=_int_in(1, 10**7), default=None, help="training steps per configuration at most (default 3000)")
    p.add_argument("--time-budget", type=_positive(float), default=None, help="seconds per configuration at most (default 95)")
    p.add_argument("--batch-size", type=_int_in(1, 1 << 16), default=None, help="default 64")
    p.add_argument("--lr", type=_positive(float), default=None, help="AdamW learning rate (default 3e-3)")
    p.add_argument("--eval-every", type=_int_in(1, 10**7), default=None, help="evaluate every this many steps (default 100)")
    p.add_argument("--n-val-eval", type=_int_in(1, 10**7), default=None, help="validation sequences evaluated (default 4096)")
    p.add_argument("--n-samples", type=_int_in(2, 10**7), default=None, help="distinct sequences sampled for lengths >= 4 (default 100000)")
    p.add_argument("--d-model", type=_int_in(1, 4096), default=None, help="model width (default 64)")
    p.add_argument("--state", type=_int_in(1, 1024), default=None, help="diagonal state per channel, S4/Mamba (default 16)")
    p.add_argument("--cde-state", type=_int_in(1, 1024), default=None, help="dense state N of the linear CDE (default 64)")
    p.add_argument("--d-omega", type=_int_in(1, 1024), default=None, help="gate channels of the linear CDE (default 32)")
    p.add_argument("--conv", type=_int_in(0, 64), default=None, help="Mamba causal conv width, 0 = none (default 4)")
    p.add_argument("--scan", choices=("auto", "torch", "nbssm"), default="auto",
                   help="Mamba scan: plain torch, nbssm.torch (the Numba bridge), or auto (the bridge when installed)")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0, help="random seed (default 0)")
    p.add_argument("--out", type=_out_dir, default="state_tracking_results", help="output directory for results.json/.md/.png")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def _run_state_tracking(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("nbssm experiment state-tracking: error: torch is not installed; pip install nbssm[torch]", file=sys.stderr)
        return 2
    from nbssm.experiments import state_tracking as sx

    cfg = sx.quick_config() if args.quick else sx.Config()
    # torch threads: the common --threads option (added by nbssm.cli), else nbssm's default
    from nbssm.threads import default_threads

    cfg.threads = getattr(args, "threads", None) or default_threads()
    for name, attr in (("models", "models"), ("lengths", "lengths"), ("blocks", "blocks"), ("n_samples", "n_samples"),
                       ("seed", "seed")):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, attr, tuple(value) if isinstance(value, tuple) else value)
    for name in ("max_steps", "time_budget", "batch_size", "lr", "eval_every", "n_val_eval"):
        if getattr(args, name) is not None:
            setattr(cfg.train, name, getattr(args, name))
    for name in ("d_model", "state", "cde_state", "d_omega", "conv"):
        if getattr(args, name) is not None:
            setattr(cfg.model, name, getattr(args, name))
    cfg.model.scan_backend = args.scan
    cfg.progress = not args.no_progress
    if args.scan == "nbssm" and sx._bridge_scan() is None:
        print("nbssm experiment state-tracking: error: --scan nbssm needs nbssm.torch (the PyTorch bridge)", file=sys.stderr)
        return 2
    results = sx.run(cfg)
    files = sx.write_outputs(results, args.out)
    print(sx.markdown_table(results))
    print(f"total {results['total_seconds']:.1f} s; wrote {', '.join(files)}")
    return 0


def run(args) -> int:
    from nbssm.experiments import signature_tasks as st

    if args.experiment == "state-tracking":
        return _run_state_tracking(args)
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
    if args.trained:
        try:
            import torch  # noqa: F401
        except ImportError:
            print(f"{prog}: error: --trained needs torch; pip install nbssm[torch]", file=sys.stderr)
            return 2
    cfg = st.Config(seed=args.seed, n_paths=args.n_paths, models=tuple(args.models), tasks=tuple(args.tasks),
                    dense_order=args.dense_order, dense_dtype=args.dense_dtype, dense_seeds=args.dense_seeds,
                    progress=not args.no_progress, trained=tuple(args.trained), train_steps=args.train_steps,
                    train_seconds=args.train_seconds, train_batch=args.train_batch,
                    train_threads=getattr(args, "threads", None) or 1)
    results = st.run(cfg)
    files = st.write_outputs(results, args.out)
    print(st.markdown_table(results))
    print(f"total {results['total_seconds']:.1f} s; wrote {', '.join(files)}")
    return 0
