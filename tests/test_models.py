"""Runtime models (nbssm.models) against the spec's double runner, and mode agreement.

Oracles: the spec mirror's ``run_list`` on the double context (pure Python,
left folds, shares no code with the runtime path) on spec models drawn by
``spec_factories`` (not by the models' own ``random``), and a plain Python
fold for the projection kernel.
"""

from __future__ import annotations

import zlib

import numba
import numpy as np
import pytest

from nbssm.models import (
    CompactMamba,
    DiagonalS4,
    ModelState,
    SelectiveMamba,
    StateMismatchError,
)
from nbssm.spec.context import DOUBLE
from nbssm.spec.models import vec_mat
from spec_factories import random_compact, random_inputs, random_s4, random_selective
from tolerances import MODEL_F32_RTOL, MODEL_F64_RTOL, max_rel_err

CLASSES = {"s4": DiagonalS4, "compact": CompactMamba, "selective": SelectiveMamba}

# (kind, dims): spec-model dimensions, edge sizes included
CASES = [
    ("s4", (3, 4, 2)),
    ("s4", (3, 0, 2)),      # state_dim 0
    ("s4", (0, 3, 2)),      # input_dim 0
    ("s4", (2, 3, 0)),      # output_dim 0
    ("compact", (3, 4, 2)),
    ("compact", (1, 1, 1)),
    ("compact", (3, 0, 2)),
    ("selective", (3, 5, 2, 4, 3)),
    ("selective", (2, 17, 3, 2, 4)),  # more channels than one kernel block (16)
    ("selective", (3, 4, 0, 2, 3)),   # state_dim 0: y = d_skip * u
    ("selective", (3, 0, 2, 2, 3)),   # inner_dim 0: every output is zero
    ("selective", (3, 4, 2, 2, 1)),   # conv_width 1: no history
    ("selective", (3, 4, 2, 2, 0)),   # conv_width 0: c = conv_bias
    ("selective", (0, 3, 2, 2, 2)),   # input_dim 0
]
LENGTHS = (0, 1, 6)


def _spec_model(kind, dims, rng):
    return {"s4": random_s4, "compact": random_compact, "selective": random_selective}[kind](rng, *dims)


def _spec_run(spec, xs):
    """``run_list`` from the zero state on one sequence; returns (final state, outputs (T, o)) as arrays."""
    if hasattr(spec, "inner_dim"):
        h0 = [[0.0] * spec.state_dim for _ in range(spec.inner_dim)]
        shape = (spec.inner_dim, spec.state_dim)
    else:
        h0 = [0.0] * spec.state_dim
        shape = (spec.state_dim,)
    h, ys = spec.run_list(DOUBLE, h0, xs)
    return np.array(h, dtype=np.float64).reshape(shape), np.array(ys, dtype=np.float64).reshape(len(xs), spec.output_dim)


def _inputs(rng, batch, length, dim):
    return np.array([random_inputs(rng, length, dim) for _ in range(batch)], dtype=np.float64).reshape(
        batch, length, dim)


# ============================================================================ refinement
@pytest.mark.parametrize("kind,dims", CASES)
def test_float64_refines_spec_run_list(kind, dims):
    rng = np.random.default_rng(zlib.crc32(repr((kind, dims)).encode()))
    spec = _spec_model(kind, dims, rng)
    model = CLASSES[kind].from_spec(spec)
    for length in LENGTHS:
        x = _inputs(rng, 2, length, dims[0])
        refs = [_spec_run(spec, x[b].tolist()) for b in range(2)]
        # sequential: the documented bitwise claim
        y, st = model.forward(x, strategy="sequential")
        assert y.shape == (2, length, spec.output_dim) and y.dtype == np.float64
        assert st.position == length
        for b, (h_ref, y_ref) in enumerate(refs):
            np.testing.assert_array_equal(y[b], y_ref)
            np.testing.assert_array_equal(st.layers[0].ssm[b], h_ref)
        # chunked (parallel in time, small chunks): within the float64 tolerance
        y, st = model.forward(x, strategy="chunked", chunk_length=2)
        for b, (h_ref, y_ref) in enumerate(refs):
            assert max_rel_err(y[b], y_ref) <= MODEL_F64_RTOL
            assert max_rel_err(st.layers[0].ssm[b], h_ref) <= MODEL_F64_RTOL


@pytest.mark.parametrize("kind,dims", [
    ("s4", (3, 4, 2)), ("compact", (3, 4, 2)), ("compact", (1, 1, 1)), ("selective", (3, 5, 2, 4, 3)),
    ("selective", (2, 17, 3, 2, 4)), ("selective", (3, 4, 0, 2, 3)), ("selective", (3, 4, 2, 2, 0)),
])
def test_float32_refines_spec_within_tolerance(kind, dims):
    """float32 model vs the double spec run on the float32-rounded parameters and inputs."""
    rng = np.random.default_rng(7)
    model = CLASSES[kind].from_spec(_spec_model(kind, dims, rng), dtype=np.float32)
    assert model.dtype == np.float32
    spec = model.to_spec()  # exact: the rounded float32 values as doubles
    x = _inputs(rng, 2, 12, dims[0]).astype(np.float32)
    for strategy in ("sequential", "chunked"):
        y, st = model.forward(x, strategy=strategy, chunk_length=5)
        assert y.dtype == np.float32 and st.ssm.dtype == np.float32
        for b in range(2):
            h_ref, y_ref = _spec_run(spec, x[b].astype(np.float64).tolist())
            assert max_rel_err(y[b], y_ref) <= MODEL_F32_RTOL
            assert max_rel_err(st.layers[0].ssm[b], h_ref) <= MODEL_F32_RTOL


def test_selective_float32_large_delta_uses_threshold_softplus():
    """Delta pre-activations above 20: the float32 softplus returns its argument (documented)."""
    rng = np.random.default_rng(3)
    spec = random_selective(rng, 2, 3, 2, 2, 2)
    spec.dt_bias = [25.0, 30.0, 40.0]
    m32 = SelectiveMamba.from_spec(spec, dtype=np.float32)
    x = _inputs(rng, 1, 5, 2).astype(np.float32)
    y, _ = m32.forward(x)
    _h, y_ref = _spec_run(m32.to_spec(), x[0].astype(np.float64).tolist())
    assert np.all(np.isfinite(y)) and max_rel_err(y[0], y_ref) <= MODEL_F32_RTOL


# ============================================================================ spec conversion
@pytest.mark.parametrize("kind,dims", [CASES[0], CASES[4], CASES[7], CASES[12]])
def test_to_spec_round_trips_bit_for_bit(kind, dims):
    cls = CLASSES[kind]
    model = cls.random(*dims, seed=11)
    spec = model.to_spec()
    back = cls.from_spec(spec)
    for name, arr in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], arr)
        assert back.parameters()[name].dtype == np.float64
    # and spec -> model -> spec is the identity on the nested lists
    spec2 = cls.from_spec(_spec_model(kind, dims, np.random.default_rng(0)))
    again = cls.from_spec(spec2.to_spec()).to_spec()
    for name in model.parameters():
        if name in ("A", "B", "C", "D") and kind != "selective":
            assert getattr(again.ssm, name) == getattr(spec2.to_spec().ssm, name)
        else:
            field = getattr(cls, "SPEC_NAMES", {}).get(name, name)  # parameter name -> spec field
            assert getattr(again, field) == getattr(spec2.to_spec(), field)
    # float32 converts exactly to doubles
    m32 = model.astype(np.float32)
    for name, arr in m32.to_spec().__dict__.items():
        name = {v: k for k, v in getattr(cls, "SPEC_NAMES", {}).items()}.get(name, name)  # spec -> parameter
        if name in model.parameters():
            np.testing.assert_array_equal(np.array(arr, dtype=np.float64).reshape(m32.parameters()[name].shape),
                                          m32.parameters()[name].astype(np.float64))


def test_random_is_seeded_and_dims_are_exposed():
    a = SelectiveMamba.random(3, 4, 2, 5, 3, seed=1)
    b = SelectiveMamba.random(3, 4, 2, 5, 3, seed=1)
    c = SelectiveMamba.random(3, 4, 2, 5, 3, seed=2)
    assert all(np.array_equal(a.parameters()[k], b.parameters()[k]) for k in a.parameters())
    assert not np.array_equal(a.x_proj, c.x_proj)
    assert (a.input_dim, a.inner_dim, a.state_dim, a.output_dim, a.conv_width) == (3, 4, 2, 5, 3)
    assert np.all(a.A > 0)  # positive rates, the spec's convention
    s4 = DiagonalS4.random(2, 3, 4, seed=0, dtype=np.float32)
    assert s4.dtype == np.float32 and s4.in_proj.dtype == np.float32
    assert s4.dims == {"input_dim": 2, "state_dim": 3, "output_dim": 4}


def test_projection_kernel_is_the_spec_fold_and_row_independent():
    """The row-wise projection equals the spec's vec_mat bit for bit, for any number of rows and tiles."""
    from nbssm.models import _project

    rng = np.random.default_rng(5)
    x = rng.standard_normal((11, 7))       # 11 rows: two row tiles
    w = rng.standard_normal((7, 600))      # 600 columns: two column tiles
    out = _project(x, w)
    ref = np.array([vec_mat(DOUBLE, row.tolist(), w.tolist(), 600) for row in x])
    np.testing.assert_array_equal(out, ref)
    for r in (0, 5, 10):
        np.testing.assert_array_equal(_project(x[r:r + 1], w), out[r:r + 1])
    # the parallel and the serial driver run the same tiles: the same bits
    from nbssm._kernels.dense import _matmul_fold_parallel, _matmul_fold_serial

    for dt in (np.float64, np.float32):
        xb = rng.standard_normal((37, 50)).astype(dt)
        wb = rng.standard_normal((50, 1100)).astype(dt)
        o1, o2 = np.empty((37, 1100), dt), np.empty((37, 1100), dt)
        _matmul_fold_parallel(xb, wb, o1)
        _matmul_fold_serial(xb, wb, o2)
        np.testing.assert_array_equal(o1, o2)
    ref = np.array([vec_mat(DOUBLE, r.tolist(), wb[:, 1020:1030].astype(np.float64).tolist(), 10)
                    for r in xb.astype(np.float64)])
    np.testing.assert_array_equal(_project(xb.astype(np.float64), wb.astype(np.float64))[:, 1020:1030], ref)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    out32 = _project(x32, w32)
    loop = np.zeros((11, 600), dtype=np.float32)   # plain float32 fold written here
    for i in range(7):
        loop = loop + x32[:, i:i + 1] * w32[i]
    np.testing.assert_array_equal(out32, loop)


# ============================================================================ mode agreement
MODE_MODELS = [
    ("s4", (3, 4, 2)),
    ("compact", (3, 4, 2)),
    ("selective", (3, 5, 2, 4, 3)),
    ("selective", (2, 4, 2, 3, 1)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,dims", MODE_MODELS)
def test_whole_chunked_and_stepwise_agree_bitwise(kind, dims, dtype):
    cls = CLASSES[kind]
    model = cls.random(*dims, seed=3, dtype=dtype, strategy="sequential")
    rng = np.random.default_rng(4)
    length = 7
    x = rng.standard_normal((2, length, dims[0])).astype(dtype)
    y, st = model.forward(x)
    # every split point, state carried
    for split in range(length + 1):
        y1, s1 = model.forward(x[:, :split])
        y2, s2 = model.forward(x[:, split:], s1)
        np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
        np.testing.assert_array_equal(s2.ssm, st.ssm)
        if st.conv is not None:
            np.testing.assert_array_equal(s2.conv, st.conv)
        assert s1.position == split and s2.position == length
    # token by token with step: (batch, input_dim) tokens
    s = model.initial_state(2)
    ys = []
    for t in range(length):
        yt, s = model.step(x[:, t], s)
        assert yt.shape == (2, dims[-1] if kind != "selective" else dims[3])
        ys.append(yt)
    np.testing.assert_array_equal(np.stack(ys, axis=1), y)
    np.testing.assert_array_equal(s.ssm, st.ssm)
    # one sequence: 2-D forward and 1-D step equal batch row 0
    y0, s0 = model.forward(x[0])
    np.testing.assert_array_equal(y0, y[0])
    s = None
    for t in range(length):
        yt, s = model.step(x[0, t], s)
        np.testing.assert_array_equal(yt, y[0, t])
    np.testing.assert_array_equal(s.ssm[0, 0], st.ssm[0, 0])
    assert s0.batch == 1


@pytest.mark.parametrize("kind,dims", MODE_MODELS[:3])
def test_chunked_strategy_pieces_agree_within_rounding(kind, dims):
    model = CLASSES[kind].random(*dims, seed=8)
    x = np.random.default_rng(9).standard_normal((1, 9, dims[0]))
    y, st = model.forward(x, strategy="chunked", chunk_length=2)
    y1, s1 = model.forward(x[:, :4], strategy="chunked", chunk_length=2)
    y2, s2 = model.forward(x[:, 4:], s1, strategy="chunked", chunk_length=3)
    assert max_rel_err(np.concatenate([y1, y2], axis=1), y) <= MODEL_F64_RTOL
    assert max_rel_err(s2.ssm, st.ssm) <= MODEL_F64_RTOL


def test_selective_continuation_from_a_nonzero_history_matches_run_list_aux():
    """A carried convolution history is the spec's L0 (newest first there, oldest first here)."""
    rng = np.random.default_rng(12)
    spec = random_selective(rng, 2, 3, 2, 2, 3)
    model = SelectiveMamba.from_spec(spec, strategy="sequential")
    x = _inputs(rng, 1, 8, 2)
    _y, s = model.forward(x[:, :5])
    y2, s2 = model.forward(x[:, 5:], s)
    # the stored history is the last conv_width - 1 = 2 projected tokens, oldest first
    want = [vec_mat(DOUBLE, x[0, t].tolist(), spec.x_proj, spec.inner_dim) for t in (3, 4)]
    np.testing.assert_array_equal(s.conv[0, 0], np.array(want))
    H0 = s.ssm[0, 0].tolist()
    L0 = s.conv[0, 0][::-1].tolist()  # newest first
    H, ys = spec.run_list_aux(DOUBLE, H0, L0, x[0, 5:].tolist())
    np.testing.assert_array_equal(y2[0], np.array(ys))
    np.testing.assert_array_equal(s2.ssm[0, 0], np.array(H))


def test_warmup_runs():
    from nbssm.models import warmup

    assert warmup() is None


def test_results_do_not_depend_on_the_thread_count():
    model = SelectiveMamba.random(3, 20, 3, 4, 4, seed=5)
    x = np.random.default_rng(6).standard_normal((3, 9, 3))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, s1 = model.forward(x)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        y2, s2 = model.forward(x)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1.ssm, s2.ssm)


@pytest.mark.parametrize("kind,dims", MODE_MODELS[:3])
def test_nan_in_one_sequence_stays_in_that_sequence_and_after_its_token(kind, dims):
    model = CLASSES[kind].random(*dims, seed=2, strategy="sequential")
    x = np.random.default_rng(3).standard_normal((2, 6, dims[0]))
    y, _ = model.forward(x)
    xn = x.copy()
    xn[0, 3, 0] = np.nan
    yn, sn = model.forward(xn)
    np.testing.assert_array_equal(yn[1], y[1])          # the other sequence: bitwise unchanged
    np.testing.assert_array_equal(yn[0, :3], y[0, :3])  # earlier tokens: bitwise unchanged (causal)
    assert np.isnan(yn[0, 3]).all()
    assert np.isnan(sn.ssm[0, 0]).any() and not np.isnan(sn.ssm[0, 1]).any()


# ============================================================================ state objects
def test_state_rejects_other_models_dtypes_and_batches():
    s4 = DiagonalS4.random(3, 4, 2, seed=0)
    cm = CompactMamba.random(3, 4, 2, seed=0)
    x = np.zeros((2, 3, 3))
    _, st = s4.forward(x)
    with pytest.raises(ValueError, match="belongs to DiagonalS4.*not to CompactMamba"):
        cm.forward(x, st)
    with pytest.raises(ValueError, match="state_dim=5"):
        DiagonalS4.random(3, 5, 2, seed=0).forward(x, st)
    with pytest.raises(ValueError, match="dtype=float64.*dtype=float32"):
        s4.astype(np.float32).forward(x.astype(np.float32), st)
    with pytest.raises(ValueError, match="batch of 2 sequences, the input has 1"):
        s4.forward(x[:1], st)
    with pytest.raises(ValueError, match="batch of 2"):
        s4.step(x[0, 0], st)
    with pytest.raises(TypeError, match="state: expected a ModelState"):
        s4.forward(x, st.ssm)
    sm = SelectiveMamba.random(3, 4, 2, 2, 3, seed=0)
    with pytest.raises(ValueError, match="belongs to DiagonalS4.*not to SelectiveMamba"):
        sm.forward(x, st)
    # the same dims and dtype with other weights: refused too (the fingerprint digests every weight)
    with pytest.raises(StateMismatchError, match="other weights"):
        DiagonalS4.random(3, 4, 2, seed=99).forward(x, st)
    # ... and a copy with the same weights is accepted
    DiagonalS4(**s4.parameters()).forward(x, st)


def test_state_is_not_modified_and_copy_is_independent():
    model = SelectiveMamba.random(2, 3, 2, 2, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 4, 2))
    _, s = model.forward(x)
    before_ssm, before_conv = s.ssm.copy(), s.conv.copy()
    c = s.copy()
    _, s2 = model.forward(x, s)
    np.testing.assert_array_equal(s.ssm, before_ssm)
    np.testing.assert_array_equal(s.conv, before_conv)
    assert s2 is not s and s.position == 4 and s2.position == 8
    c.ssm[...] = 0.0
    np.testing.assert_array_equal(s.ssm, before_ssm)


@pytest.mark.parametrize("kind,dims", MODE_MODELS[:3] + [("selective", (2, 3, 2, 2, 1))])
def test_save_load_continues_exactly(kind, dims, tmp_path):
    model = CLASSES[kind].random(*dims, seed=1, strategy="sequential")
    x = np.random.default_rng(2).standard_normal((2, 9, dims[0]))
    y, st = model.forward(x)
    _, s1 = model.forward(x[:, :4])
    path = tmp_path / "state.npz"
    s1.save(path)
    loaded = model.load_state(path)
    assert loaded.fingerprint == model.fingerprint and loaded.position == 4 and loaded.batch == 2
    y2, s2 = model.forward(x[:, 4:], loaded)
    np.testing.assert_array_equal(y2, y[:, 4:])
    np.testing.assert_array_equal(s2.ssm, st.ssm)
    # without a model: fingerprint still read back
    assert ModelState.load(path).describe() == s1.describe()


def test_load_checks_fingerprint_and_rejects_malformed_files(tmp_path):
    model = SelectiveMamba.random(2, 3, 2, 2, 3, seed=0)
    _, st = model.forward(np.zeros((1, 2, 2)))
    good = tmp_path / "good.npz"
    st.save(good)
    other = SelectiveMamba.random(2, 3, 2, 2, 4, seed=0)
    with pytest.raises(ValueError, match="conv_width=3.*conv_width=4"):
        other.load_state(good)
    with pytest.raises(ValueError, match="dtype=float64.*dtype=float32"):
        model.astype(np.float32).load_state(good)
    fields = dict(np.load(good, allow_pickle=False))

    def write(name, **changes):
        d = dict(fields)
        for k, v in changes.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        p = tmp_path / name
        np.savez(p, **d)
        return p

    with pytest.raises(ValueError, match="missing field 'ssm'"):
        ModelState.load(write("a.npz", ssm=None))
    with pytest.raises(ValueError, match="missing field 'conv'"):
        ModelState.load(write("b.npz", conv=None))
    with pytest.raises(ValueError, match="field 'ssm': expected a float64 array of shape"):
        ModelState.load(write("c.npz", ssm=np.zeros((1, 3, 5))))
    with pytest.raises(ValueError, match="field 'ssm': expected a float64"):
        ModelState.load(write("d.npz", ssm=fields["ssm"].astype(np.float32)))
    with pytest.raises(ValueError, match="format"):
        ModelState.load(write("e.npz", format=np.array("something else")))
    with pytest.raises(ValueError, match="kind"):
        ModelState.load(write("f.npz", kind=np.array("Transformer")))
    with pytest.raises(ValueError, match="object arrays are never unpickled"):
        ModelState.load(write("g.npz", ssm=np.array([{"a": 1}], dtype=object)))
    garbage = tmp_path / "h.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        ModelState.load(garbage)
    with pytest.raises(ValueError, match="position"):
        ModelState.load(write("i.npz", positions=np.array([-1])))


# ============================================================================ bad input
def test_bad_inputs_get_clear_errors_and_inputs_are_not_written():
    model = CompactMamba.random(3, 4, 2, seed=0)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, length, 3\) or \(length, 3\)"):
        model.forward(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="x: expected shape"):
        model.forward(np.zeros(3))
    with pytest.raises(TypeError, match="float16"):
        model.forward(np.zeros((5, 3), dtype=np.float16))
    with pytest.raises(TypeError, match="float32 input to a float64 CompactMamba"):
        model.forward(np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="complex"):
        model.forward(np.zeros((5, 3), dtype=np.complex128))
    with pytest.raises(ValueError, match=r"x: expected shape \(3,\), \(batch, 3\)"):
        model.step(np.zeros((1, 1, 1, 3)))
    with pytest.raises(ValueError, match="strategy"):
        model.forward(np.zeros((5, 3)), strategy="fast")
    # integers are converted to the model's dtype
    xi = np.arange(15).reshape(5, 3)
    yi, _ = model.forward(xi)
    np.testing.assert_array_equal(yi, model.forward(xi.astype(np.float64))[0])
    # non-contiguous, Fortran-order and read-only inputs: same bits, never written
    x = np.random.default_rng(0).standard_normal((2, 6, 8))[:, ::-1, 1:7:2]
    ref = model.forward(np.ascontiguousarray(x))[0]
    xf = np.asfortranarray(x)
    xr = np.ascontiguousarray(x)
    xr.flags.writeable = False
    keep = x.copy()
    for variant in (x, xf, xr):
        np.testing.assert_array_equal(model.forward(variant)[0], ref)
    np.testing.assert_array_equal(x, keep)


def test_bad_parameters_get_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"out_proj: expected shape \(state_dim, output_dim\)"):
        DiagonalS4(np.zeros((3, 4)), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"B: expected shape \(4,\), got \(5,\)"):
        DiagonalS4(np.zeros((3, 4)), np.zeros((4, 2)), np.zeros(4), np.zeros(5), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"gate_proj: expected shape \(3, 4\)"):
        CompactMamba(np.zeros((3, 4)), np.zeros((4, 3)), np.zeros((4, 2)), *[np.zeros(4)] * 4)
    with pytest.raises(ValueError, match="A: parameters must be finite"):
        DiagonalS4(np.zeros((3, 4)), np.zeros((4, 2)), np.full(4, np.nan), np.zeros(4), np.zeros(4), np.zeros(4))
    params = SelectiveMamba.random(2, 3, 2, 2, 3, seed=0).parameters()
    bad = dict(params, dt_proj=rng.standard_normal((3, 2)))
    with pytest.raises(ValueError, match=r"dt_proj: expected shape \(3, 3\)"):
        SelectiveMamba(**bad)
    with pytest.raises(TypeError, match="dtype"):
        SelectiveMamba(**params, dtype=np.float16)
    # parameters are the model's own copies
    src = np.ones((3, 4))
    m = DiagonalS4(src, np.ones((4, 2)), np.ones(4) * 0.5, np.ones(4), np.ones(4), np.ones(4))
    src[...] = 7.0
    assert np.all(m.in_proj == 1.0) and not m.in_proj.flags.writeable
    # dtype: float32 iff all parameters are float32
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    assert SelectiveMamba(**p32).dtype == np.float32
    assert SelectiveMamba(**dict(p32, A=params["A"])).dtype == np.float64


# ============================================================================ deprecated names
def test_deprecated_names_still_work_and_warn():
    sm = SelectiveMamba.random(2, 3, 2, 2, 3, seed=0)
    p = sm.parameters()
    old = dict(p)
    old["dt_bias"], old["d_skip"] = old.pop("delta_bias"), old.pop("D")
    with pytest.warns(DeprecationWarning, match="is deprecated"):
        again = SelectiveMamba(**old)
    assert again.fingerprint == sm.fingerprint
    with pytest.warns(DeprecationWarning, match="delta_bias"):
        np.testing.assert_array_equal(sm.dt_bias, sm.delta_bias)
    with pytest.warns(DeprecationWarning, match="use D"):
        np.testing.assert_array_equal(sm.d_skip, sm.D)
    with pytest.raises(TypeError, match="given twice"), pytest.warns(DeprecationWarning):
        SelectiveMamba(**p, dt_bias=p["delta_bias"])
    x = np.random.default_rng(0).standard_normal((1, 4, 2))
    y, s = sm.forward(x)
    with pytest.warns(DeprecationWarning, match="initial_state"):
        y2, _ = sm.forward(x, state=s)
    np.testing.assert_array_equal(y2, sm.forward(x, initial_state=s)[0])
