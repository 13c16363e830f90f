"""The generated tables of ``proofs_notes/README.md`` (``nbssm verify --ledger``).

The tables come from the registry of :mod:`nbssm.spec.checks` (name, kind,
family, statement, mirrored code, decision method) and from the verdicts of
one run of ``nbssm verify`` at one preset (the external groups included).
They live between :data:`BEGIN` and :data:`END` in the ledger file; the rest
of the file is written by hand. A test regenerates them and fails when the
committed file differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from nbssm.spec.verdict import BEYOND, CONTROL, THEOREM, CheckResult

BEGIN = "<!-- begin generated ledger (nbssm verify --ledger proofs_notes/README.md); do not edit by hand -->"
END = "<!-- end generated ledger -->"

#: how each family's statements are decided, when more specific than the check's method
FAMILY_METHOD = {
    "causality": "no future symbol + identity",
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _method(spec) -> str:
    return FAMILY_METHOD.get(spec.family, spec.method)


def _note(family: str) -> str:
    from nbssm.spec.checks import FAMILY_NOTES

    note = FAMILY_NOTES.get(family)
    return f"[{family}]({note})" if note else family


def render(specs: Sequence, results: Iterable[CheckResult], preset_text: str) -> str:
    """The generated section: one table per theorem family, then beyond-Lean, controls, external groups.

    Parameters
    ----------
    specs : sequence of CheckSpec
        The registered checks (ledger order: registration order).
    results : iterable of CheckResult
        The verdicts of one run; a registered check without a result is
        listed as ``not run``, a result without a registered check as an
        external row.
    preset_text : str
        The dimensions the verdicts were obtained at, for the heading.
    """
    by_name = {r.name: r for r in results}
    registered = {s.name for s in specs}

    def verdict(name: str) -> str:
        r = by_name.get(name)
        if r is None:
            return "not run"
        return r.verdict if r.passed else f"**{r.verdict} (NOT PASSED)**"

    out = [BEGIN, "", f"Verdicts of `nbssm verify` at {preset_text}.", ""]
    theorems = [s for s in specs if s.kind == THEOREM]
    for family in dict.fromkeys(s.family for s in theorems):
        out += [f"### Theorems: {family}", "", f"Note: {_note(family)}.", "",
                "| Lean name | statement | mirrored by | checked by | verdict |", "|---|---|---|---|---|"]
        for s in theorems:
            if s.family == family:
                out.append(f"| `{s.name}` | {_cell(s.statement)} | {_cell(s.mirrors) or '-'} | {_method(s)} "
                           f"| {verdict(s.name)} |")
        out.append("")
    out += ["### Beyond Lean", "", "| name | statement | family | mirrored by | checked by | verdict |",
            "|---|---|---|---|---|---|"]
    for s in specs:
        if s.kind == BEYOND:
            out.append(f"| `{s.name}` | {_cell(s.statement)} | {_note(s.family)} | {_cell(s.mirrors) or '-'} "
                       f"| {_method(s)} | {verdict(s.name)} |")
    out += ["", "### Negative controls (each must be refuted)", "",
            "| name | mutation | family | verdict |", "|---|---|---|---|"]
    for s in specs:
        if s.kind == CONTROL:
            out.append(f"| `{s.name}` | {_cell(s.statement)} | {_note(s.family)} | {verdict(s.name)} |")
    external = [r for r in by_name.values() if r.name not in registered]
    out += ["", "### External groups (kernel refinement, linear CDEs, distributed scan, language model)", "", "| name | kind | verdict |", "|---|---|---|"]
    for r in external:
        out.append(f"| `{r.name}` | {r.kind} | {verdict(r.name)} |")
    out += ["", END]
    return "\n".join(out)


def replace_section(text: str, section: str) -> str:
    """``text`` with its generated section replaced by ``section`` (appended when it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"


def current_section(text: str) -> str | None:
    """The generated section of ``text`` (markers included), or None when it has none."""
    if BEGIN not in text or END not in text:
        return None
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


def write(path: str | Path, section: str) -> None:
    """Rewrite the generated section of the ledger file ``path`` (created when missing)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    p.write_text(replace_section(text, section), encoding="utf-8")
