"""Tests of ``nbssm verify`` (nbssm.verify), run in-process through nbssm.cli.main."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nbssm.cli import main
from nbssm.spec import checks as C
from nbssm.spec.checks import base as checks_base
from nbssm.spec.verdict import CheckResult
from nbssm.verify import cli as verify_cli
from nbssm.verify import ledger as LG
from nbssm.verify.external import external_checks

LEDGER = Path(__file__).resolve().parent.parent / "proofs_notes" / "README.md"


def run_json(capsys, *argv) -> tuple[int, list[dict], str]:
    rc = main(["verify", "--json", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


@pytest.fixture(scope="module")
def default_run():
    """One run of the default ``nbssm verify --json`` (every check and the external groups)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["verify", "--json", "--no-progress"])
    return rc, json.loads(out.getvalue()), err.getvalue()


def test_default_preset_proves_everything_and_exits_zero(default_run):
    # the real command: every registered check plus the external groups (kernels, CDE)
    rc, rows, err = default_run
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


def test_committed_ledger_is_current(default_run):
    # proofs_notes/README.md's generated tables equal what `nbssm verify --ledger` writes now
    _, rows, _ = default_run
    results = [CheckResult(**r) for r in rows]
    want = LG.render(C.registry(), results, verify_cli.ledger_heading(None, C.PRESETS["default"]))
    got = LG.current_section(LEDGER.read_text(encoding="utf-8"))
    assert got is not None, "the ledger has no generated section"
    assert got == want, "proofs_notes/README.md is stale: run `nbssm verify --ledger proofs_notes/README.md`"


def test_ledger_marks_failures_and_missing_rows():
    specs = [C.CheckSpec("a_thm", "theorem", "causality", "s | t", lambda d, b: "ok", mirrors="m"),
             C.CheckSpec("b_ctl", "control", "causality", "mut", lambda d, b: "ok", mirrors="m")]
    res = [CheckResult("a_thm", "theorem", "refuted", {}, 0.0, "x"), CheckResult("ext", "beyond", "proved")]
    text = LG.render(specs, res, "test")
    assert "NOT PASSED" in text and "not run" in text and "`ext`" in text and "s \\| t" in text
    doc = "# head\n\n" + LG.BEGIN + "\nold\n" + LG.END + "\n\ntail\n"
    new = LG.replace_section(doc, text)
    assert new.startswith("# head") and new.endswith("tail\n") and "old" not in new
    assert LG.current_section(new) == text
    assert LG.current_section("no markers") is None


def test_ledger_option_prints_or_writes_the_tables(capsys, tmp_path):
    assert main(["verify", "--ledger", "--no-external", "--no-progress", "--only", "compose_assoc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(LG.BEGIN) and "`compose_assoc`" in out and "proved" in out
    target = tmp_path / "ledger.md"
    target.write_text("# my ledger\n\nkept\n")
    assert main(["verify", "--ledger", str(target), "--no-external", "--no-progress", "--only", "compose_id"]) == 0
    text = target.read_text()
    assert text.startswith("# my ledger\n\nkept\n") and "`compose_id_left`" in text and LG.END in text
    assert main(["verify", "--ledger", str(tmp_path / "missing_dir" / "x.md"), "--no-external", "--no-progress",
                 "--only", "compose_id_left"]) == 2
    assert "expected a writable ledger file" in capsys.readouterr().err


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
    monkeypatch.setattr(checks_base, "REGISTRY", checks_base.REGISTRY + [fake_control])
    rc = main(["verify", "--no-external", "--no-progress", "--only", "zz_fake_control"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "zz_fake_control" in out and "NO" in out and "not passed" in out
    assert "control not refuted" in out

    def refuted(d, b):
        raise C.Refuted("counterexample")

    fake_thm = C.CheckSpec("zz_fake_theorem", "theorem", "t", "fake", refuted)
    monkeypatch.setattr(checks_base, "REGISTRY", checks_base.REGISTRY + [fake_thm])
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
    monkeypatch.setitem(sys.modules, "nbssm.verify.refinement", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "nbssm.spec.checks.linear_cde", None)
    monkeypatch.setitem(sys.modules, "nbssm.spec.distributed", None)
    monkeypatch.setitem(sys.modules, "nbssm.verify.lm_rows", None)
    res = external_checks(5)
    assert [r.verdict for r in res] == ["unknown", "unknown", "unknown", "unknown"]
    assert [r.name for r in res] == ["refinement_checks", "cde_checks", "distributed_checks", "lm_checks"]
    assert not any(r.passed for r in res)


def test_external_groups_results_and_errors(monkeypatch, capsys):
    ok = CheckResult("kernel_scan_refines_spec", "beyond", "proved", {"T": 5}, 0.1, "max err 0")

    def boom(budget_s):
        raise RuntimeError("cde broke")

    _fake_module(monkeypatch, "nbssm.verify.refinement", refinement_checks=lambda seed=0: [ok])
    _fake_module(monkeypatch, "nbssm.spec.checks.linear_cde", cde_checks=boom)
    res = external_checks(5)
    assert res[0] is ok
    assert res[1].verdict == "unknown" and "cde broke" in res[1].detail

    good_cde = [CheckResult("cde_prefix", "theorem", "proved", {}, 0.1, ""),
                CheckResult("cde_control", "control", "refuted", {}, 0.1, "")]
    _fake_module(monkeypatch, "nbssm.spec.checks.linear_cde", cde_checks=lambda budget_s: good_cde)
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


# ----------------------------------------------------------------------------- arguments and JSON
def test_budget_inf_means_no_limit(capsys):
    rc, rows, _ = run_json(capsys, "--budget", "inf", "--no-external", "--only", "compose_assoc",
                           "--only", "selectiveMamba_runList_eq_runArray")
    assert rc == 0 and len(rows) == 2 and all(r["verdict"] == "proved" for r in rows)
    assert main(["verify", "--budget", "1e300", "--no-external", "--no-progress", "--only", "compose_assoc"]) == 0
    assert "budget 1e+300 s per check" in capsys.readouterr().out
    assert main(["verify", "--budget", "inf", "--no-external", "--no-progress", "--only", "compose_assoc"]) == 0
    assert "budget no limit per check" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["--budget", "nan"], "--budget"),
    (["--budget", "-1"], "--budget"),
    (["--budget", "abc"], "--budget"),
    (["--budget", "-inf"], "--budget"),
    (["--dims", "-1"], "--dims"),
    (["--xs", "two"], "--xs"),
    (["--seed", "-3"], "--seed"),
    (["--preset", "huge"], "--preset"),
    (["--no-such-option"], "unrecognized"),
])
def test_bad_arguments_are_argparse_errors_not_tracebacks(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        main(["verify", "--no-progress", *argv])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: nbssm verify" in err and fragment in err and "Traceback" not in err
    assert out == ""
    # with --json, stdout is still one JSON document
    with pytest.raises(SystemExit) as e:
        main(["verify", "--json", "--no-progress", *argv])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["error"]["status"] == 2 and fragment in doc["error"]["message"]


def test_json_is_valid_on_every_exit(capsys):
    rc = main(["verify", "--json", "--no-progress", "--only", "no_such_check_name"])
    out, err = capsys.readouterr()
    assert rc == 2 and json.loads(out) == {"error": {"command": "verify", "status": 2, "message": "nbssm verify: no check selected"}}
    rc = main(["verify", "--json", "--ledger", "--no-progress", "--only", "compose_assoc"])
    out, _ = capsys.readouterr()
    assert rc == 2 and "--ledger" in json.loads(out)["error"]["message"]
    rc, rows, _ = run_json(capsys, "--budget", "0", "--no-external", "--only", "compose_assoc")
    assert rc == 1 and rows[0]["verdict"] == "unknown"


def test_verify_main_returns_two_on_bad_arguments(capsys):
    from nbssm.verify import main as verify_main

    assert verify_main(["--budget", "nan"]) == 2
    assert "expected a number of seconds" in capsys.readouterr().err


def test_bad_budget_in_a_subprocess_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "nbssm.cli", "verify", "--budget", "nan", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--budget" in proc.stderr
    assert json.loads(proc.stdout)["error"]["status"] == 2


def test_budget_object_and_runner_validate_nan():
    from nbssm.spec.symbolic import Budget

    with pytest.raises(ValueError, match="budget"):
        Budget(float("nan"))
    assert Budget(float("inf")).seconds is None
    spec = C.CheckSpec("probe", "theorem", "t", "s", lambda d, b: "ok")
    with pytest.raises(ValueError, match="budget_s"):
        C.run_check(spec, C.PRESETS["minimal"], float("nan"))
    assert C.run_check(spec, C.PRESETS["minimal"], float("inf")).verdict == "proved"


def test_deprecated_module_names_still_work():
    import importlib
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop("nbssm.spec.checker", None)
        old = importlib.import_module("nbssm.spec.checker")
        sys.modules.pop("nbssm.refinement", None)
        ref = importlib.import_module("nbssm.refinement")
    assert old.registry() == C.registry()
    from nbssm.verify import refinement

    assert ref is refinement
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
