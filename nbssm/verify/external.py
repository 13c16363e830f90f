"""The groups of ``nbssm verify`` that do not run through the spec's check registry.

:func:`external_checks` runs the kernel refinement checks
(:func:`nbssm.verify.refinement.refinement_checks`) and the linear-CDE checks
(:func:`nbssm.spec.checks.linear_cde.cde_checks`) and the distributed time-parallel scan's
checks (:func:`nbssm.spec.distributed.distributed_checks`) and the language-model rows
(:func:`nbssm.verify.lm_rows.lm_checks`). A group whose module is
missing, that raises, or that returns nothing gives one ``unknown`` row: never
a pass.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable

from nbssm.spec.verdict import BEYOND, UNKNOWN, CheckResult

#: (row name when the group fails, module, function name)
GROUPS: list[tuple[str, str, str]] = [
    ("refinement_checks", "nbssm.verify.refinement", "refinement_checks"),
    ("cde_checks", "nbssm.spec.checks.linear_cde", "cde_checks"),
    ("distributed_checks", "nbssm.spec.distributed", "distributed_checks"),
    ("lm_checks", "nbssm.verify.lm_rows", "lm_checks"),
]

#: budget of the CDE group when the per-check budget is unlimited
UNLIMITED_CDE_BUDGET = math.inf


def _run_group(label: str, module: str, attr: str, call: Callable[[Callable], list]) -> list[CheckResult]:
    t0 = time.perf_counter()
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        return [CheckResult(label, BEYOND, UNKNOWN, {}, 0.0, f"{module} unavailable: {e}")]
    try:
        got = list(call(fn))
    except Exception as e:  # noqa: BLE001 - an error is an unknown, never a pass
        return [CheckResult(label, BEYOND, UNKNOWN, {}, time.perf_counter() - t0, f"error: {type(e).__name__}: {e}")]
    if not got:
        return [CheckResult(label, BEYOND, UNKNOWN, {}, time.perf_counter() - t0, f"{attr} returned no result")]
    return got


def external_checks(budget_s: float | None, seed: int = 0) -> list[CheckResult]:
    """Kernel refinement, linear-CDE, distributed-scan and language-model checks, as ledger rows.

    Parameters
    ----------
    budget_s : float or None
        Budget of the CDE and distributed groups in seconds (None or ``inf``: unlimited).
        The refinement and LM groups are not budgeted (fixed sets of comparisons on
        small inputs).
    seed : int
        Seed of the refinement and LM groups' random inputs.
    """
    cde_budget = UNLIMITED_CDE_BUDGET if budget_s is None else budget_s
    calls = {
        "refinement_checks": lambda fn: fn(seed=seed),
        "cde_checks": lambda fn: fn(cde_budget),
        "distributed_checks": lambda fn: fn(budget_s),
        "lm_checks": lambda fn: fn(seed=seed),
    }
    results: list[CheckResult] = []
    for label, module, attr in GROUPS:
        results.extend(_run_group(label, module, attr, calls[label]))
    return results


#: names and statements of the groups, for ``nbssm verify --list``
GROUP_LISTING = [
    ("refinement_checks", "beyond, external: nbssm.verify.refinement", "kernels vs spec on random inputs"),
    ("cde_checks", "external: nbssm.spec.checks.linear_cde", "linear-CDE prefix causality and its control"),
    ("distributed_checks", "beyond, external: nbssm.spec.distributed",
     "the distributed time-parallel scan (nbssm.dask) equals diagonalSelectiveScan; swapped-compose control"),
    ("lm_checks", "beyond and control, external: nbssm.verify.lm_rows",
     "MambaMixer vs SelectiveMambaBlockSpec via to_spec(); MambaLM prefill/decode vs an independent numpy "
     "reference on checkpoints written in both dialects (tied, untied, a refused tied head, bf16/fp16); "
     "decode after prefill = prefill; a control per row"),
]
