"""The registry and the one runner of the symbolic checker.

Every check is a :class:`CheckSpec` registered under its Lean name (kind
``"theorem"``), under a descriptive name for nbssm's own statements (kind
``"beyond"``) or for a negative control (kind ``"control"``), together with
its family (the note of ``proofs_notes/`` that explains it) and how it is
decided. :func:`run_check` runs one under a wall-clock budget and turns the
outcome into a :class:`~nbssm.spec.verdict.CheckResult`; unknown is never a
pass.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import sympy

from ..symbolic import IDENTITY, Budget, BudgetExceeded, Refuted, Unknown
from ..verdict import CONTROL, PROVED, REFUTED, UNKNOWN, CheckResult


@dataclass(frozen=True)
class Dims:
    """Dimensions and lengths a check is instantiated at.

    ``input_dim, inner_dim, state_dim, output_dim, conv_width`` as in the spec
    (S4 and compact Mamba use input, state and output dims); ``n_xs`` and
    ``n_ys`` are |xs| and |ys| (scan statements use them as numbers of
    transitions).
    """

    input_dim: int = 2
    inner_dim: int = 2
    state_dim: int = 2
    output_dim: int = 2
    conv_width: int = 3
    n_xs: int = 3
    n_ys: int = 2

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Dims.{k}: expected a non-negative integer, got {v!r}")

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Dims] = {
    "minimal": Dims(1, 1, 1, 1, 2, 2, 1),
    "default": Dims(),
    "target4": Dims(4, 4, 4, 4, 4, 8, 4),
    "target8": Dims(8, 8, 8, 8, 4, 3, 2),
}

#: family -> the note of ``proofs_notes/`` that explains it
FAMILY_NOTES: dict[str, str] = {
    "causality": "causality.md",
    "scan_array": "scan_algebra.md",
    "scan_algebra": "scan_algebra.md",
    "model_lemmas": "model_lemmas.md",
    "runner_equivalence": "runner_equivalence.md",
    "length_generic_certificate": "length_generic_certificate.md",
    "algorithm_refinement": "algorithm_refinement.md",
    "fold_order": "fold_order.md",
    "model_steps": "model_steps.md",
    "activation_branches": "activation_branches.md",
    "linear_cde": "linear_cde.md",
}


@dataclass
class CheckSpec:
    """One registered check.

    ``fn(dims, budget) -> str`` returns the evidence when the statement is
    proved and raises :class:`Refuted` / :class:`Unknown` /
    :class:`BudgetExceeded` otherwise. ``mirrors`` names the spec code the
    statement is about (for the ledger).
    """

    name: str
    kind: str
    family: str
    statement: str
    fn: Callable[[Dims, Budget], str]
    method: str = IDENTITY
    mirrors: str = ""


REGISTRY: list[CheckSpec] = []

#: Python recursion limit while a check runs (see run_check)
RECURSION_LIMIT = 12000


def register(name: str, kind: str, family: str, statement: str, method: str = IDENTITY, mirrors: str = ""):
    """Decorator: register ``fn(dims, budget) -> evidence`` as a check (names are unique)."""

    def deco(fn):
        if any(c.name == name for c in REGISTRY):
            raise ValueError(f"check name: expected a new name, got {name!r} (already registered)")
        REGISTRY.append(CheckSpec(name, kind, family, statement, fn, method, mirrors))
        return fn

    return deco


def registry() -> list[CheckSpec]:
    """All registered checks in ledger order: family by family (:data:`FAMILY_NOTES` order), then registration."""
    order = {f: k for k, f in enumerate(FAMILY_NOTES)}
    return sorted(REGISTRY, key=lambda c: order.get(c.family, len(order)))


def select(names: Sequence[str] | None = None, kinds: Sequence[str] | None = None) -> list[CheckSpec]:
    """Registered checks filtered by name substrings and kinds."""
    out = []
    for c in registry():
        if kinds is not None and c.kind not in kinds:
            continue
        if names and not any(n in c.name for n in names):
            continue
        out.append(c)
    return out


def run_check(spec: CheckSpec, dims: Dims, budget_s: float | None = 30.0) -> CheckResult:
    """Run one check under a wall-clock budget and return its :class:`CheckResult`.

    Parameters
    ----------
    spec : CheckSpec
        The registered check.
    dims : Dims
        Dimensions and lengths to instantiate the statement at.
    budget_s : float or None
        Wall-clock budget in seconds (None or ``inf``: unlimited). A budget of
        0 s (or less) gives ``unknown`` without running anything; a check
        still running when it is spent is interrupted and gives ``unknown``.

    Returns
    -------
    CheckResult
        ``proved`` / ``refuted`` (detail: the counterexample) / ``unknown``
        (detail: why). Any exception other than the verdict signals gives
        ``unknown`` with the error as detail (never a pass). A control whose
        mutated statement is proved at these dimensions gives ``unknown``
        (the mutation is not observable there).

    Raises
    ------
    ValueError
        If ``budget_s`` is NaN.
    """
    if budget_s is not None and math.isnan(budget_s):
        raise ValueError(f"budget_s: expected a number of seconds or None, got {budget_s!r}")
    t0 = time.perf_counter()
    if budget_s is not None and budget_s <= 0:
        return CheckResult(spec.name, spec.kind, UNKNOWN, dims.as_dict(), 0.0,
                           f"time budget of {budget_s:g} s: not attempted")
    budget = Budget(budget_s)
    old_limit = sys.getrecursionlimit()
    # sympy's constructors compare and query deep expressions recursively (Basic.compare,
    # assumptions): a run of ~500 tokens nests deeper than Python's default limit of 1000.
    # 12000 keeps a wide margin below the depth at which CPython 3.11 overflows an 8 MiB
    # C stack on sympy's C-recursive paths (measured above 24000); beyond it: unknown.
    sys.setrecursionlimit(max(old_limit, RECURSION_LIMIT))
    try:
        with budget.alarm():
            detail = spec.fn(dims, budget)
        verdict = PROVED
    except Refuted as e:
        verdict, detail = REFUTED, str(e)
    except Unknown as e:
        verdict, detail = UNKNOWN, str(e)
    except BudgetExceeded as e:
        verdict, detail = UNKNOWN, str(e)
    except RecursionError as e:  # pragma: no cover - depends on sizes
        verdict, detail = UNKNOWN, f"recursion limit reached ({e})"
    except Exception as e:  # noqa: BLE001 - an error is an unknown, never a pass
        verdict, detail = UNKNOWN, f"error: {type(e).__name__}: {e}"
    finally:
        sys.setrecursionlimit(old_limit)
        sympy.core.cache.clear_cache()
    if spec.kind == CONTROL and verdict == PROVED:
        # the mutated statement holds here: the mutation is not observable at these dimensions
        verdict, detail = UNKNOWN, f"control not refuted: the mutated statement holds at these dimensions ({detail})"
    return CheckResult(spec.name, spec.kind, verdict, dims.as_dict(), time.perf_counter() - t0, detail)


def run_all(dims: Dims | None = None, budget_s: float | None = 30.0, names: Sequence[str] | None = None,
            kinds: Sequence[str] | None = None, progress: Callable[[CheckSpec, int, int], None] | None = None
            ) -> list[CheckResult]:
    """Run the selected registered checks and return their results."""
    dims = dims or PRESETS["default"]
    chosen = select(names, kinds)
    results = []
    for k, c in enumerate(chosen):
        if progress is not None:
            progress(c, k, len(chosen))
        results.append(run_check(c, dims, budget_s))
    return results
