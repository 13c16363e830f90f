"""Tests of ``nbssm verify`` (nbssm.spec.verify), run in-process through nbssm.cli.main."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from nbssm.cli import main
from nbssm.spec import checker as C
from nbssm.spec.verdict import CheckResult


def run_json(capsys, *argv) -> tuple[int, list[dict], str]:
    rc = main(["verify", "--json", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


def test_default_preset_proves_everything_and_exits_zero(capsys):
    # the real command: every registered check plus the external groups (kernels, CDE)
    rc, rows, err = run_json(capsys)
    names = {r["name"] for r in rows}
    assert names >= {c.name for c in C.registry()}
    external = [r for r in rows if r["name"] not in {c.name for c in C.registry()}]
    assert len(external) >= 2, "the kernel refinement and CDE groups must appear in the ledger"
    bad = [(r["name"], r["verdict"], r["detail"]) for r in rows
           if r["verdict"] != ("refuted" if r["kind"] == "control" else "proved")]
    assert not bad
    assert rc == 0
    for r in rows:
        assert set(r) >= {"name", "kind", "verdict", "dims", "seconds", "detail"}
        assert r["kind"] in {"theorem", "beyond", "control"}
        assert r["verdict"] in {"proved", "refuted", "unknown"}
    for r in rows:
        if r not in external:
            assert r["dims"] == C.PRESETS["default"].as_dict()
    assert "ALL PASSED" in err
    total = sum(r["seconds"] for r in rows if r not in external)
    assert total < 120  # target: < 60 s on 2 cores (measured by benchmarks/bench_checker.py)


def test_budget_zero_gives_unknown_and_nonzero_exit(capsys):
    rc, rows, _ = run_json(capsys, "--budget", "0")
    assert rc != 0
    assert rows and all(r["verdict"] == "unknown" for r in rows)


def test_controls_flag_runs_only_controls(capsys):
    rc, rows, _ = run_json(capsys, "--controls", "--no-external", "--preset", "minimal")
    assert rows and all(r["kind"] == "control" and r["verdict"] == "refuted" for r in rows)
    assert rc == 0
    rc, rows, _ = run_json(capsys, "--controls", "exclude", "--no-external", "--only", "compose")
    assert rows and all(r["kind"] != "control" for r in rows)


def test_explicit_dimensions_override_the_preset(capsys):
    rc, rows, _ = run_json(capsys, "--preset", "target8", "--dims", "1", "--conv-width", "2", "--xs", "2", "--ys", "1",
                           "--only", "selectiveMamba_runList_append_outputs_prefix")
    assert rc == 0
    assert len(rows) == 1
    assert rows[0]["dims"] == dict(input_dim=1, inner_dim=1, state_dim=1, output_dim=1, conv_width=2, n_xs=2, n_ys=1)


def test_ledger_text_and_exit_status_follow_the_verdicts(capsys, monkeypatch):
    # a control that is "proved" and a theorem that is refuted must both make the exit status non-zero
    fake_control = C.CheckSpec("zz_fake_control", "control", "controls", "fake", lambda d, b: "holds")
    monkeypatch.setattr(C, "REGISTRY", C.REGISTRY + [fake_control])
    rc = main(["verify", "--no-external", "--no-progress", "--only", "zz_fake_control"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "zz_fake_control" in out and "NO" in out and "not passed" in out
    assert "control not refuted" in out

    def refuted(d, b):
        raise C.Refuted("counterexample")

    fake_thm = C.CheckSpec("zz_fake_theorem", "theorem", "t", "fake", refuted)
    monkeypatch.setattr(C, "REGISTRY", C.REGISTRY + [fake_thm])
    assert main(["verify", "--no-external", "--no-progress", "--only", "zz_fake_theorem"]) == 1
    assert "counterexample" in capsys.readouterr().out


def test_empty_selection_exits_two(capsys):
    assert main(["verify", "--only", "no_such_check_name", "--no-progress"]) == 2


def test_list_prints_statements(capsys):
    assert main(["verify", "--list", "--only", "compose_assoc"]) == 0
    out = capsys.readouterr().out
    assert "compose_assoc" in out and "compose (compose t3 t2) t1" in out


def _fake_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)


def test_external_groups_missing_are_unknown(monkeypatch):
    monkeypatch.setitem(sys.modules, "nbssm.refinement", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "nbssm.spec.cde_checks", None)
    res = C.external_checks(5)
    assert [r.verdict for r in res] == ["unknown", "unknown"]
    assert not any(r.passed for r in res)


def test_external_groups_results_and_errors(monkeypatch, capsys):
    ok = CheckResult("kernel_scan_refines_spec", "beyond", "proved", {"T": 5}, 0.1, "max err 0")

    def boom(budget_s):
        raise RuntimeError("cde broke")

    _fake_module(monkeypatch, "nbssm.refinement", refinement_checks=lambda seed=0: [ok])
    _fake_module(monkeypatch, "nbssm.spec.cde_checks", cde_checks=boom)
    res = C.external_checks(5)
    assert res[0] is ok
    assert res[1].verdict == "unknown" and "cde broke" in res[1].detail

    good_cde = [CheckResult("cde_prefix", "theorem", "proved", {}, 0.1, ""),
                CheckResult("cde_control", "control", "refuted", {}, 0.1, "")]
    _fake_module(monkeypatch, "nbssm.spec.cde_checks", cde_checks=lambda budget_s: good_cde)
    rc, rows, _ = run_json(capsys, "--kind", "control", "--preset", "minimal")
    assert rc == 0
    assert "cde_control" in {r["name"] for r in rows}
    assert "kernel_scan_refines_spec" not in {r["name"] for r in rows}  # filtered by kind


def test_progress_without_tqdm_prints_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["verify", "--only", "compose_id", "--no-external", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] compose_id_left" in err


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "nbssm.cli", "verify", "--only", "homogeneous_zero_fixed",
                           "--no-external", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "homogeneous_zero_fixed" in proc.stdout and "proved" in proc.stdout
