"""``nbssm verify``: the evidence that the code computes what the Lean spec says.

It composes three groups of checks into one ledger:

* the symbolic checks of the spec (:mod:`nbssm.spec.checks`: the Lean
  theorems under their Lean names, nbssm's beyond-Lean statements and the
  negative controls), run by :func:`nbssm.spec.checks.run_check`;
* the kernel refinement checks (:mod:`nbssm.verify.refinement`): the Numba
  kernels against the spec's double runners on seeded random inputs;
* the linear-CDE checks (:mod:`nbssm.spec.checks.linear_cde`).

Modules: :mod:`.cli` (the command: options, ledger text, JSON, exit status),
:mod:`.external` (the refinement and CDE groups, each failure an ``unknown``
row), :mod:`.ledger` (the generated tables of ``proofs_notes/README.md``,
``nbssm verify --ledger``), :mod:`.refinement`.

Importing this package imports neither sympy nor numba; the command imports
what it runs.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``nbssm verify`` with ``argv`` (see :mod:`nbssm.verify.cli`); returns the exit status."""
    from .cli import main as _main

    return _main(argv)
