"""The state-tracking experiment (paper's Experiment B): the A5 data exactly, the models' scan
against nbssm's own kernel, and the quick mode end to end (skipped without torch)."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest

from nbssm.experiments import state_tracking as sx


# --------------------------------------------------------------------------- A5, independently
def _sign_by_cycles(p):
    """Sign of a permutation from its cycle decomposition (not inversion counting)."""
    seen, sign = set(), 1
    for start in range(len(p)):
        if start in seen:
            continue
        length, j = 0, start
        while j not in seen:
            seen.add(j)
            j = p[j]
            length += 1
        if length % 2 == 0:
            sign = -sign
    return sign


def _compose(a, b):
    """``a o b`` as a function: apply ``b`` first."""
    return tuple(a[b[i]] for i in range(len(b)))


def test_a5_has_60_even_elements():
    elems = sx.a5_elements()
    assert len(elems) == 60 == len(set(elems))
    assert all(_sign_by_cycles(p) == 1 for p in elems)
    odd = [p for p in itertools.permutations(range(5)) if _sign_by_cycles(p) == -1]
    assert len(odd) == 60 and not set(odd) & set(elems)
    assert elems[0] == (0, 1, 2, 3, 4)


def test_a5_table_is_the_group():
    elems = sx.a5_elements()
    T = sx.a5_table()
    assert T.shape == (60, 60) and T.min() >= 0 and T.max() < 60
    # closure, and the table is the composition of the tuples
    for i, a in enumerate(elems):
        for j, b in enumerate(elems):
            assert elems[T[i, j]] == _compose(a, b)
    # Latin square (cancellation), identity 0, associativity, inverses
    assert all(len(set(T[i])) == 60 and len(set(T[:, i])) == 60 for i in range(60))
    assert (T[0] == np.arange(60)).all() and (T[:, 0] == np.arange(60)).all()
    a, b, c = np.meshgrid(np.arange(60), np.arange(60), np.arange(60), indexing="ij")
    assert (T[T[a, b], c] == T[a, T[b, c]]).all()
    assert all((T[i] == 0).sum() == 1 for i in range(60))
    # non-abelian (A5 is simple and non-solvable: the reason the task is hard for diagonal models)
    assert (T != T.T).any()


def test_prefix_products_against_direct_composition():
    elems = sx.a5_elements()
    rng = np.random.default_rng(5)
    x = rng.integers(0, 60, size=(50, 9))
    y = sx.prefix_products(x)
    for row, out in zip(x, y):
        state = (0, 1, 2, 3, 4)
        for k, g in enumerate(row):
            state = _compose(elems[g], state)  # the newest element acts last
            assert elems[out[k]] == state
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        sx.prefix_products(np.array([[0, 60]]))
    with pytest.raises(ValueError, match="shape"):
        sx.prefix_products(np.array([1, 2]))


def _rows(a):
    return {tuple(r) for r in a.tolist()}


def test_data_split_all_sequences_for_short_lengths():
    d = sx.make_data(2, 0, seed=1)
    assert d["x_train"].shape == (2880, 2) and d["x_val"].shape == (720, 2)
    tr, va = _rows(d["x_train"]), _rows(d["x_val"])
    assert not tr & va and len(tr | va) == 3600
    np.testing.assert_array_equal(d["y_val"], sx.prefix_products(d["x_val"]))
    d3 = sx.make_data(3, 0, seed=0)
    assert d3["x_train"].shape[0] + d3["x_val"].shape[0] == 216000
    assert len(_rows(d3["x_train"]) | _rows(d3["x_val"])) == 216000


def test_data_split_sampled_lengths_are_distinct_and_disjoint():
    d = sx.make_data(5, 3000, seed=2)
    tr, va = _rows(d["x_train"]), _rows(d["x_val"])
    assert len(tr) == 2400 == d["x_train"].shape[0] and len(va) == 600 == d["x_val"].shape[0]
    assert not tr & va
    np.testing.assert_array_equal(d["y_train"], sx.prefix_products(d["x_train"]))
    again = sx.make_data(5, 3000, seed=2)
    np.testing.assert_array_equal(again["x_train"], d["x_train"])  # deterministic


# --------------------------------------------------------------------------- torch parts
def test_missing_torch_is_a_clear_error(monkeypatch, capsys):
    from nbssm.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install nbssm\[torch\]"):
        sx._torch()
    assert main(["experiment", "state-tracking", "--quick", "--out", "unused_dir"]) == 2
    assert "pip install nbssm[torch]" in capsys.readouterr().err


def test_torch_scan_matches_nbssm_kernel():
    torch = pytest.importorskip("torch")
    from nbssm.ops import selective_scan

    rng = np.random.default_rng(0)
    b, L, d, n = 2, 7, 3, 4
    u = rng.standard_normal((b, L, d))
    delta = np.log1p(np.exp(rng.standard_normal((b, L, d))))
    A = -np.exp(rng.standard_normal((d, n)))
    B = rng.standard_normal((b, L, n))
    C = rng.standard_normal((b, L, n))
    D = rng.standard_normal(d)
    ref = selective_scan(u, delta, A, B, C, D=D)
    got = sx._selective_scan(*(torch.from_numpy(a) for a in (u, delta, A, B, C, D)), backend="torch")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    if sx._bridge_scan() is not None:  # the Numba bridge: same values and gradients
        ts = [torch.from_numpy(a).requires_grad_() for a in (u, delta, A, B, C, D)]
        tb = [torch.from_numpy(a).requires_grad_() for a in (u, delta, A, B, C, D)]
        y1 = sx._selective_scan(*ts, backend="torch")
        y2 = sx._selective_scan(*tb, backend="nbssm")
        w = torch.from_numpy(rng.standard_normal((b, L, d)))
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        np.testing.assert_allclose(y2.detach().numpy(), y1.detach().numpy(), rtol=1e-10, atol=1e-12)
        for a1, a2 in zip(ts, tb):
            np.testing.assert_allclose(a2.grad.numpy(), a1.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_linear_cde_block_is_the_euler_recurrence():
    """The block's state equals an explicit Euler product of the transition matrices."""
    torch = pytest.importorskip("torch")
    mc = sx.ModelConfig(d_model=6, d_omega=3, cde_state=4)
    net = sx.build_model("linear_cde", 1, 5, mc, seed=0).double()
    blk = net.blocks[0]
    tokens = torch.tensor([[3, 17, 0, 59, 8]])
    captured = {}

    def hook(module, args, output):
        captured["z"] = args[0].detach().numpy()

    blk.out.register_forward_hook(hook)
    net(tokens)
    v = net.embed(tokens).detach()
    with torch.no_grad():
        w = blk.gate(blk.norm(v))[0].numpy()
    L = 5
    A, B, z = L * blk.A.detach().numpy(), L * blk.B.detach().numpy(), blk.z0.detach().numpy().copy()
    for k in range(L):
        M = (k + 1) / L * A[0] + np.tensordot(w[k], A[1:], axes=1)
        z = (np.eye(4) + M / L) @ z + B @ w[k] / L
        np.testing.assert_allclose(captured["z"][0, k], z, rtol=1e-12, atol=1e-12)


def test_quick_mode_end_to_end(tmp_path):
    pytest.importorskip("torch")
    from nbssm.cli import main

    out = tmp_path / "st"
    assert main(["experiment", "state-tracking", "--quick", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["min_blocks"]) == set(sx.MODELS)
    for m, per in res["min_blocks"].items():
        assert set(per) == {"3", "4"}
        assert all(v in (None, 1, 2) for v in per.values())
    for r in res["rows"]:
        assert 0.0 <= r["best_val_accuracy"] <= 1.0 and r["steps"] >= 1
        assert len(r["per_position_accuracy"]) == r["length"]
    # a configuration was run with more blocks only if the fewer did not reach 90%
    for m in sx.MODELS:
        for L in (3, 4):
            tried = sorted(r["blocks"] for r in res["rows"] if r["model"] == m and r["length"] == L)
            assert tried[0] == 1
            got = res["min_blocks"][m][str(L)]
            assert tried[-1] == (got if got is not None else 2)
    md = (out / "results.md").read_text()
    assert "| linear CDE |" in md and "| paper |" in md and "Protocol (reduced)" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["estimate"]["worst_case_seconds"] > 0


def test_signature_tasks_trained_rows():
    """Item 5: the trained Mamba-style rows of Figure 1 (a few steps; the value is only sane)."""
    pytest.importorskip("torch")
    from nbssm.experiments import signature_tasks as st

    paths, labels = st.make_data(2, 60, seed=0, length=12)
    out = st.train_mamba(paths, labels, 48, n_blocks=2, seed=0, steps=3, seconds=60.0, batch=8, eval_every=2)
    assert out["steps"] == 3 and np.isfinite(out["rmse"]) and out["best_rmse"] <= out["rmse"]
    assert out["n_params"] > 0


def test_mamba_model_same_loss_and_grads_on_both_scans():
    """The Mamba-style model on nbssm.torch gives the loss and gradients of the torch loop."""
    torch = pytest.importorskip("torch")
    if sx._bridge_scan() is None:
        pytest.skip("nbssm.torch (the PyTorch bridge) is not installed")
    d = sx.make_data(5, 200, seed=0)
    x, y = torch.from_numpy(d["x_train"][:8]), torch.from_numpy(d["y_train"][:8])
    results = []
    for backend in ("torch", "nbssm"):
        mc = sx.ModelConfig(d_model=8, state=4, expand=2, conv=2, scan_backend=backend)
        net = sx.build_model("mamba", 2, 5, mc, seed=3).double()
        loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, 60), y.reshape(-1))
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in net.parameters()]))
    (l1, g1), (l2, g2) = results
    assert l2 == pytest.approx(l1, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-12)
