"""The symbolic theorem checker, one module per theorem family.

Each check instantiates its statement with sympy symbols for every parameter,
initial state and input at given dimensions and lengths (:class:`Dims`),
builds the two sides separately (from a cleared sympy cache, exactly as the
Lean statement writes them) and decides it:

* structural statements (causality, append, length, runner = fold) by exact
  structural identity (:func:`nbssm.spec.symbolic.dag_equal`), prefix
  causality also as "no future-input symbol occurs in any prefix output";
* algebraic statements (semiring laws) by ``expand`` of the difference;
* the two inequalities over the reals by a symbolic argument under sign
  assumptions.

Verdicts: ``proved``; ``refuted`` with a concrete counterexample; ``unknown``
(budget spent, or inconclusive). Unknown is never a pass.

Layout: :mod:`.base` holds the registry and the one runner
(:func:`run_check`); :mod:`.common` the symbolic instances and the shared
deciders; one module per family, named like its note in ``proofs_notes/``:
:mod:`.causality`, :mod:`.scan_algebra` (families ``scan_algebra`` and
``scan_array``), :mod:`.model_lemmas`, :mod:`.runner_equivalence`,
:mod:`.length_generic_certificate`, :mod:`.algorithm_refinement`. Importing
this package registers every check, family by family, in that order. Every
family has at least one negative control (kind ``"control"``): a mutant
subclass of a spec model, or a mutated statement, which must be refuted.
The linear-CDE family is :mod:`.linear_cde` (its own runner, listed in the
ledger as an external group).
"""

from __future__ import annotations

from ..symbolic import EXPAND, IDENTITY, Budget, BudgetExceeded, Refuted, Unknown
from . import (  # noqa: F401 - importing a family registers its checks
    activation_branches,
    algorithm_refinement,
    causality,
    fold_order,
    length_generic_certificate,
    model_lemmas,
    model_steps,
    runner_equivalence,
    scan_algebra,
)
from .base import (
    FAMILY_NOTES,
    PRESETS,
    RECURSION_LIMIT,
    CheckSpec,
    Dims,
    register,
    registry,
    run_all,
    run_check,
    select,
)
from .common import (
    all_symbols,
    lengths_equal,
    patched,
    prefix_causality,
    sides,
    smat,
    stokens,
    svec,
    sym,
    sym_compact,
    sym_H0,
    sym_h0,
    sym_L0,
    sym_s4,
    sym_selective,
    sym_ssm,
    xs_ys,
)
from .length_generic_certificate import certificate

FAMILIES = tuple(dict.fromkeys(c.family for c in registry()))

__all__ = [
    "EXPAND",
    "FAMILIES",
    "FAMILY_NOTES",
    "IDENTITY",
    "PRESETS",
    "RECURSION_LIMIT",
    "Budget",
    "BudgetExceeded",
    "CheckSpec",
    "Dims",
    "Refuted",
    "Unknown",
    "all_symbols",
    "certificate",
    "lengths_equal",
    "patched",
    "prefix_causality",
    "register",
    "registry",
    "run_all",
    "run_check",
    "select",
    "sides",
    "smat",
    "stokens",
    "svec",
    "sym",
    "sym_H0",
    "sym_L0",
    "sym_compact",
    "sym_h0",
    "sym_s4",
    "sym_selective",
    "sym_ssm",
    "xs_ys",
]
