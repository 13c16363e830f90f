"""The signature-task experiment (paper's Experiment A) in quick mode, and its pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nbssm.experiments import signature_tasks as st
from signature_naive import signature_dict


def test_make_data_protocol():
    paths, labels = st.make_data(2, 40, seed=3, length=12)
    assert paths.shape == (40, 12, 2) and labels.shape == (40,)
    assert np.abs(paths).max() == 1.0 and np.abs(labels).max() == 1.0
    # paths are cumulative sums of integers, divided by one global scale
    scale = 1.0 / np.abs(paths[paths != 0]).min()
    raw = paths * scale
    steps = np.diff(np.concatenate([np.zeros((40, 1, 2)), raw], axis=1), axis=1)
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
    # labels: S^{12} of each path (the test's own Chen reference), globally normalised
    ref = np.array([signature_dict(p.tolist(), 2)[(0, 1)] for p in paths])
    np.testing.assert_allclose(labels, ref / np.abs(ref).max(), rtol=1e-12, atol=1e-15)
    p3, l3 = st.make_data(3, 10, seed=3, length=8)
    ref3 = np.array([signature_dict(p.tolist(), 3)[(0, 1, 2)] for p in p3])
    np.testing.assert_allclose(l3, ref3 / np.abs(ref3).max(), rtol=1e-12, atol=1e-15)


def test_ols_rmse_recovers_a_linear_target():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((500, 6)) * [1, 10, 1e3, 1e-3, 5, 1]
    y = F @ rng.standard_normal(6) + 0.7
    assert st.ols_rmse(F, y, 400) < 1e-9
    noise = rng.standard_normal(500) * 0.1
    r = st.ols_rmse(F, y + noise, 400)
    assert 0.08 < r < 0.12  # the noise level: the readout neither fails nor overfits


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    from nbssm.cli import main

    out = tmp_path_factory.mktemp("sigtasks")
    rc = main(["experiment", "signature-tasks", "--n-paths", "2000", "--seed", "1", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    return out


def test_quick_run_writes_table_json_and_plot(quick_results):
    out = quick_results
    res = json.loads((out / "results.json").read_text())
    assert set(res["table"]) == {"zero", *st.MODELS}
    for model, row in res["table"].items():
        for task in ("area", "volume"):
            assert np.isfinite(row[task]["mean"]) and row[task]["mean"] >= 0
    md = (out / "results.md").read_text()
    assert "| random dense linear CDE + least squares |" in md and "paper" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the zero baseline is the RMS of the validation labels, recomputed here
    for task, dim in st.TASKS.items():
        _, labels = st.make_data(dim, 2000, seed=1)
        assert res["table"]["zero"][task]["mean"] == pytest.approx(np.sqrt(np.mean(labels[1600:] ** 2)), rel=1e-12)


def test_quick_run_agrees_with_theory(quick_results):
    t = json.loads((quick_results / "results.json").read_text())["table"]
    zero_a, zero_v = t["zero"]["area"]["mean"], t["zero"]["volume"]["mean"]
    # diagonal with the raw channels in its gate solves the area, not the volume
    assert t["diagonal"]["area"]["mean"] < 1e-3 * zero_a
    assert t["diagonal"]["volume"]["mean"] > 0.5 * zero_v
    # time-invariant: features linear in X, no better than predicting zero
    assert t["s4"]["area"]["mean"] > 0.9 * zero_a
    # dense: far better than zero on both
    assert t["dense"]["area"]["mean"] < 0.02 * zero_a
    assert t["dense"]["volume"]["mean"] < 0.5 * zero_v


def test_cli_rejects_bad_arguments():
    from nbssm.cli import main

    with pytest.raises(SystemExit):
        main(["experiment", "signature-tasks", "--models", "dense,transformer"])
    assert main(["experiment", "signature-tasks", "--n-paths", "3", "--out", "/nonexistent/x"]) == 2
