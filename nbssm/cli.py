"""The ``nbssm`` command line.

Each subcommand lives in its own module, imported only when it runs, so that
``nbssm --help`` stays instant and one subcommand's optional dependencies never
break another.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "verify": ("nbssm.verify.cli", "check every mirrored Lean theorem symbolically, the beyond-Lean properties, the negative controls and the kernels' refinement; print the ledger"),
    "bench": ("nbssm.bench", "measure kernel throughput against a numpy reference"),
    "generate": ("nbssm.lm.cli", "generate text from a local Mamba checkpoint directory"),
    "experiment": ("nbssm.experiments.cli", "run a paper experiment (signature-tasks)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbssm", description=__doc__.splitlines()[0])
    from nbssm import __version__

    parser.add_argument("--version", action="version", version=f"nbssm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # arguments are added lazily in main() once the subcommand is known
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints help / version / error
        parser.print_help()
        return 2
    name = argv[0]
    module = import_module(SUBCOMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"nbssm {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
