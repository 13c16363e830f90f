"""Verdicts of the checker: proved, refuted (with a counterexample) or unknown.

Every check in ``nbssm verify`` (theorem, beyond-Lean property, negative
control, kernel refinement) returns one :class:`CheckResult`. ``unknown`` is
never a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROVED = "proved"
REFUTED = "refuted"
UNKNOWN = "unknown"
VERDICTS = (PROVED, REFUTED, UNKNOWN)

THEOREM = "theorem"    # a statement of the Lean files, under its Lean name
BEYOND = "beyond"      # nbssm's own statement (runner equivalence, certificates, algorithms, kernels)
CONTROL = "control"    # a deliberately broken variant that must be refuted
KINDS = (THEOREM, BEYOND, CONTROL)


@dataclass
class CheckResult:
    """Outcome of one check.

    name:    the Lean name (theorems) or a descriptive snake_case name
    kind:    "theorem", "beyond" or "control"
    verdict: "proved", "refuted" or "unknown"
    dims:    the dimensions and lengths it was instantiated at
    seconds: wall time of the check
    detail:  human-readable evidence: the counterexample for "refuted", the
             reason for "unknown", the method for "proved"
    """

    name: str
    kind: str
    verdict: str
    dims: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def passed(self) -> bool:
        """Theorems and beyond-Lean checks pass when proved, controls when refuted."""
        expected = REFUTED if self.kind == CONTROL else PROVED
        return self.verdict == expected

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
