"""The ``nbssm`` command line.

Each subcommand lives in its own module, imported only when it runs, so that
``nbssm --help`` stays instant and one subcommand's optional dependencies never
break another.

Behaviour common to every subcommand:

- bad arguments print an argparse-style message (``nbssm CMD: error: ...``) and exit with
  status 2 (``SystemExit(2)``) before any work starts; no traceback;
- errors about input files (a ``ValueError``/``OSError`` from the subcommand, whose message
  names the file) print ``nbssm CMD: error: ...`` and exit with status 2;
- with ``--json`` (on the subcommands that have it) standard output is always one JSON
  document, also on errors: ``{"error": {"command": CMD, "status": N, "message": TEXT}}``;
- Ctrl-C exits with status 130 and one line, no traceback;
- ``--threads N`` sets the number of kernel and BLAS threads for that command
  (:mod:`nbssm.threads`).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from importlib import import_module

# subcommand -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "verify": ("nbssm.verify.cli", "check every mirrored Lean theorem symbolically, the beyond-Lean properties, the negative controls and the kernels' refinement; print the ledger"),
    "bench": ("nbssm.bench", "measure kernel throughput against a numpy reference"),
    "generate": ("nbssm.lm.cli", "generate text from a local Mamba checkpoint directory"),
    "experiment": ("nbssm.experiments.cli", "run a paper experiment (signature-tasks, state-tracking)"),
}


class _ArgumentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors to :func:`main` instead of exiting."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise _ArgumentError(2, f"{self.prog}: error: {message}")


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


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return option in parser._option_string_actions


def build_subparser(name: str, module) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (its own options plus ``--threads`` where available)."""
    sub = _Parser(prog=f"nbssm {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub)
    from nbssm.threads import add_threads_argument  # imports numba: only once a command runs

    parsers = [sub]
    while parsers:  # the command's parser and its own subcommands' parsers (nbssm experiment NAME)
        p = parsers.pop()
        if not _has_option(p, "--threads"):
            add_threads_argument(p)
            if p is not sub:  # a nested parser's default must not undo `nbssm experiment --threads N NAME`
                p._option_string_actions["--threads"].default = argparse.SUPPRESS
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return sub


def json_error(name: str, status: int, message: str) -> None:
    """Print the one JSON error document of every ``--json`` command on standard output."""
    json.dump({"error": {"command": name, "status": status, "message": message.strip()}}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


class _Watch(io.TextIOBase):
    """A text stream that passes writes through and remembers whether (and what) was written."""

    def __init__(self, inner, keep: bool) -> None:
        self.inner = inner
        self.keep = keep
        self.written = False
        self.text: list[str] = []

    def write(self, s: str) -> int:
        if s:
            self.written = True
            if self.keep and sum(map(len, self.text)) < 4000:
                self.text.append(s)
        return self.inner.write(s)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    @property
    def encoding(self):  # noqa: D102
        return getattr(self.inner, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.inner.fileno()


def main(argv: list[str] | None = None) -> int:
    """Run the ``nbssm`` command line; returns the subcommand's exit status.

    Bad arguments raise ``SystemExit(2)`` after printing the message (as argparse does), so
    that ``nbssm ...`` in a shell exits with status 2; ``--help`` and ``--version`` raise
    ``SystemExit(0)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        parser.parse_args(argv)  # prints help / version / error (SystemExit)
        parser.print_help()
        return 2
    name = argv[0]
    want_json = "--json" in argv[1:]
    module = import_module(SUBCOMMANDS[name][0])
    early = getattr(module, "start_early", None)
    if early is not None and not ({"-h", "--help"} & set(argv[1:])):
        early(argv[1:])  # e.g. generate's checkpoint read, during the imports below
    sub = build_subparser(name, module)
    want_json = want_json and _has_option(sub, "--json")
    try:
        args = sub.parse_args(argv[1:])
        from nbssm.threads import apply_threads_argument

        apply_threads_argument(args)
    except _ArgumentError as exc:
        sub.print_usage(sys.stderr)
        print(exc.message, file=sys.stderr)
        if want_json:
            json_error(name, exc.status, exc.message)
        raise SystemExit(exc.status) from None
    except SystemExit as exc:  # --help, or a subcommand's own parser exiting
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if want_json and code:
            json_error(name, code, f"nbssm {name}: invalid arguments")
        raise SystemExit(code) from None
    except (ValueError, TypeError) as exc:  # an option applied to the process (e.g. --threads) is refused
        message = f"nbssm {name}: error: {exc}"
        print(message, file=sys.stderr)
        if want_json:
            json_error(name, 2, message)
        raise SystemExit(2) from None
    want_json = want_json and bool(getattr(args, "json", False))
    out, err = sys.stdout, sys.stderr
    if want_json:
        sys.stdout, sys.stderr = _Watch(out, keep=False), _Watch(err, keep=True)
    try:
        status = int(module.run(args) or 0)
    except KeyboardInterrupt:
        status, message = 130, f"nbssm {name}: interrupted"
    except (ValueError, OSError) as exc:  # documented file/value errors name their file or argument
        status, message = 2, f"nbssm {name}: error: {exc}"
    except MemoryError:
        status, message = 1, f"nbssm {name}: error: out of memory"
    else:
        message = None
    finally:
        watched_out, watched_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
    if message is not None:
        print(message, file=sys.stderr)
    if want_json and status and not watched_out.written:
        if message is None:
            message = "".join(watched_err.text) or f"nbssm {name}: exited with status {status} without output"
        json_error(name, status, message)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
