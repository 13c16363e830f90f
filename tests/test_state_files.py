"""State files: round trips for every model, and malformed or malicious files.

Every bad file must raise ``StateFileError`` (a ``ValueError``) naming the file, a state of
another model ``StateMismatchError``; never ``BadZipFile``, ``EOFError``, ``KeyError``,
``TypeError``, an unbounded allocation or a silently wrong state. Files are built here by
hand (``zipfile`` and ``numpy.lib.format``), independently of the writer under test.
"""

from __future__ import annotations

import functools
import io
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbssm.lm import MambaLM, MambaLMConfig
from nbssm.models import CompactMamba, DiagonalS4, MambaMixer, SelectiveMamba
from nbssm.state import FORMAT, ModelState, StateFileError, StateMismatchError

MODELS = {
    "DiagonalS4": lambda dt: DiagonalS4.random(3, 4, 2, seed=0, dtype=dt),
    "CompactMamba": lambda dt: CompactMamba.random(3, 4, 2, seed=0, dtype=dt),
    "SelectiveMamba": lambda dt: SelectiveMamba.random(3, 5, 2, 4, 3, seed=0, dtype=dt),
    "MambaMixer": lambda dt: MambaMixer.random(4, 6, 3, 3, 2, seed=0, dtype=dt),
    "MambaLM": lambda dt: MambaLM.random(MambaLMConfig(d_model=8, n_layer=2, vocab_size=11, d_state=3, d_conv=3),
                                         seed=0, dtype=dt),
}
_CACHE: dict = {}


def _model(kind, dtype=np.float64):
    key = (kind, np.dtype(dtype).name)
    if key not in _CACHE:
        _CACHE[key] = MODELS[kind](dtype)
    return _CACHE[key]


def _input(model, batch=2, length=5):
    rng = np.random.default_rng(1)
    if isinstance(model, MambaLM):
        return rng.integers(0, model.config.vocab_size, (batch, length))
    d = model.dims.get("input_dim", model.dims.get("d_model"))
    return rng.standard_normal((batch, length, d)).astype(model.dtype)


def _state(kind, dtype=np.float64):
    model = _model(kind, dtype)
    return model, model.forward(_input(model))[1]


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=True)
    return buf.getvalue()


def _members(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _good(tmp_path, kind="SelectiveMamba"):
    model, state = _state(kind)
    path = tmp_path / "good.npz"
    state.save(path)
    return model, state, path


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_round_trip_continues_exactly(kind, dtype, tmp_path):
    model, state = _state(kind, dtype)
    path = tmp_path / "s.npz"
    state.save(path)
    loaded = ModelState.load(path, model)
    assert loaded.fingerprint == state.fingerprint == model.fingerprint
    np.testing.assert_array_equal(loaded.ssm, state.ssm)
    np.testing.assert_array_equal(loaded.positions, state.positions)
    if state.conv is not None:
        np.testing.assert_array_equal(loaded.conv, state.conv)
    x = _input(model)
    np.testing.assert_array_equal(model.forward(x, loaded)[0], model.forward(x, state)[0])
    assert model.load_state(path).fingerprint == model.fingerprint
    assert ModelState.load(path).describe() == state.describe()  # no model: the file's fingerprint


def test_every_weight_is_in_the_fingerprint(tmp_path):
    """A state from a model that differs in one element of any one weight is refused."""
    model, state = _state("MambaLM")
    path = tmp_path / "s.npz"
    state.save(path)
    config, base = model.config, model
    tensors = {}
    for name, arr in base.parameters().items():
        if arr.ndim and name.startswith(("norm.", "mixer.")):
            for i in range(config.n_layer):
                t = arr[i]
                if name == "mixer.conv1d.weight":
                    t = t[:, None, :]
                tensors[f"backbone.layers.{i}.{name}"] = t
        else:
            tensors[name] = arr
    assert MambaLM(config, tensors, base.dtype).fingerprint == base.fingerprint
    for name in sorted(tensors):
        changed = dict(tensors)
        t = np.array(tensors[name])
        t.flat[t.size // 2] += 0.5
        changed[name] = t
        other = MambaLM(config, changed, base.dtype)
        with pytest.raises(StateMismatchError, match="other weights"):
            ModelState.load(path, other)
        with pytest.raises(StateMismatchError, match="other weights"):
            other.forward(np.array([[1, 2]]), state)
    for kind in ("DiagonalS4", "SelectiveMamba", "MambaMixer"):
        m, s = _state(kind)
        for name, arr in m.parameters().items():
            if arr.size == 0:
                continue
            p = dict(m.parameters())
            q = np.array(arr)
            q.flat[0] += 0.25
            p[name] = q
            with pytest.raises(StateMismatchError, match="other weights"):
                type(m)(**p).forward(_input(m), s)


def test_state_of_another_model_names_the_file(tmp_path):
    _, _, path = _good(tmp_path)
    other = SelectiveMamba.random(3, 5, 2, 4, 2, seed=0)
    with pytest.raises(StateMismatchError, match="good.npz.*conv_width=3.*conv_width=2") as info:
        ModelState.load(path, other)
    assert not isinstance(info.value, StateFileError)
    with pytest.raises(StateMismatchError, match="good.npz"):
        ModelState.load(path, _model("MambaLM"))


def test_file_objects_load_too(tmp_path):
    model, state, path = _good(tmp_path)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(ModelState.load(f, model).ssm, state.ssm)
    with pytest.raises(StateFileError, match="not a readable"):
        ModelState.load(io.BytesIO(b"junk"))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ModelState.load(tmp_path / "nope.npz")


# ----------------------------------------------------------------------------- malformed files
def _bad_files(tmp_path):
    """(name, path builder) for every family of damaged file."""
    _, state, path = _good(tmp_path)
    m = _members(path)
    e, n = 5, 2
    cases = {
        "empty": lambda p: _raw(p, b""),
        "not a zip": lambda p: _raw(p, b"\x93NUMPY not a zip at all"),
        "an npy, not an npz": lambda p: _raw(p, _npy(np.zeros(3))),
        "wrong format tag": lambda p: _write(p, dict(m, **{"format.npy": _npy(np.array("nbssm.Other/9"))})),
        "old format tag": lambda p: _write(p, dict(m, **{"format.npy": _npy(np.array("nbssm.ModelState/1"))})),
        "format not a string": lambda p: _write(p, dict(m, **{"format.npy": _npy(np.arange(3))})),
        "huge string": lambda p: _write(p, dict(m, **{"kind.npy": _npy(np.array("x" * 100_000))})),
        "unknown kind": lambda p: _write(p, dict(m, **{"kind.npy": _npy(np.array("Transformer"))})),
        "dim names of another kind": lambda p: _write(p, dict(m, **{"dim_names.npy": _npy(np.array(list("abcde")))})),
        "dims float": lambda p: _write(p, dict(m, **{"dim_values.npy": _npy(np.arange(5.0))})),
        "negative dim": lambda p: _write(p, dict(m, **{"dim_values.npy": _npy(np.array([3, -5, 2, 4, 3]))})),
        "dtype not a float": lambda p: _write(p, dict(m, **{"dtype.npy": _npy(np.array("int8"))})),
        "dtype garbage": lambda p: _write(p, dict(m, **{"dtype.npy": _npy(np.array("<not a dtype>"))})),
        "ssm float32 in a float64 state": lambda p: _write(
            p, dict(m, **{"ssm.npy": _npy(state.ssm.astype(np.float32))})),
        "ssm int": lambda p: _write(p, dict(m, **{"ssm.npy": _npy(state.ssm.astype(np.int64))})),
        "ssm wrong shape": lambda p: _write(p, dict(m, **{"ssm.npy": _npy(np.zeros((1, 2, e, n + 1)))})),
        "ssm object array": lambda p: _write(p, dict(m, **{"ssm.npy": _npy(np.array([{"a": 1}], dtype=object))})),
        "ssm structured": lambda p: _write(p, dict(m, **{"ssm.npy": _npy(np.zeros(2, dtype=[("a", "f8")]))})),
        "positions negative": lambda p: _write(p, dict(m, **{"positions.npy": _npy(np.array([-1, 3]))})),
        "positions 2-D": lambda p: _write(p, dict(m, **{"positions.npy": _npy(np.zeros((2, 1), np.int64))})),
        "positions of another batch": lambda p: _write(p, dict(m, **{"positions.npy": _npy(np.zeros(3, np.int64))})),
        "conv on a model without one": lambda p: _write(
            p, dict(_members(_save(_state("DiagonalS4")[1], tmp_path / "d.npz")),
                    **{"conv.npy": _npy(np.zeros((1, 2, 2, 5)))})),
        "npy version 9": lambda p: _write(p, dict(m, **{"ssm.npy": b"\x93NUMPY\x09\x00" + m["ssm.npy"][8:]})),
        "npy bad magic": lambda p: _write(p, dict(m, **{"ssm.npy": b"PICKLE" + m["ssm.npy"][6:]})),
        "npy header garbage": lambda p: _write(p, dict(m, **{"ssm.npy": m["ssm.npy"][:10] + b"{'descr': ]]" + m["ssm.npy"][22:]})),
        "npy data truncated": lambda p: _write(p, dict(m, **{"ssm.npy": m["ssm.npy"][:-8]})),
        "npy header only": lambda p: _write(p, dict(m, **{"ssm.npy": m["ssm.npy"][:128]})),
        "lying header: more data than stored": lambda p: _write(p, dict(m, **{"ssm.npy": _lying_npy(state.ssm)})),
    }
    for key in ("format", "kind", "dim_names", "dim_values", "dtype", "weights", "positions", "ssm", "conv"):
        cases[f"missing {key}"] = functools.partial(_without, members=m, key=key)
    raw = path.read_bytes()
    for frac in (0.1, 0.5, 0.9, 0.99):
        cases[f"truncated at {frac}"] = functools.partial(_truncated, raw=raw, cut=int(len(raw) * frac))
    return cases


def _without(path, members: dict, key: str):
    return _write(path, {a: b for a, b in members.items() if a != f"{key}.npy"})


def _truncated(path, raw: bytes, cut: int):
    return _raw(path, raw[:cut])


def _raw(path, data: bytes):
    path.write_bytes(data)
    return path


def _save(state, path):
    state.save(path)
    return path


def _lying_npy(arr) -> bytes:
    """An .npy whose header declares twice the rows the data holds."""
    full = _npy(arr)
    hdr = np.lib.format.header_data_from_array_1_0(arr)
    hdr["shape"] = (arr.shape[0], 2 * arr.shape[1]) + arr.shape[2:]
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    head_len = len(full) - arr.nbytes
    return buf.getvalue() + full[head_len:]


@pytest.fixture
def bad_cases(tmp_path):
    return _bad_files(tmp_path)


BAD = [
    "empty", "not a zip", "an npy, not an npz", "wrong format tag", "old format tag", "format not a string",
    "huge string", "unknown kind", "dim names of another kind", "dims float", "negative dim", "dtype not a float",
    "dtype garbage", "ssm float32 in a float64 state", "ssm int", "ssm wrong shape", "ssm object array",
    "ssm structured", "positions negative", "positions 2-D", "positions of another batch",
    "conv on a model without one", "npy version 9", "npy bad magic", "npy header garbage", "npy data truncated",
    "npy header only", "lying header: more data than stored",
    "missing format", "missing kind", "missing dim_names", "missing dim_values", "missing dtype", "missing weights",
    "missing positions", "missing ssm", "missing conv",
    "truncated at 0.1", "truncated at 0.5", "truncated at 0.9", "truncated at 0.99",
]


@pytest.mark.parametrize("with_model", [False, True])
@pytest.mark.parametrize("case", BAD)
def test_malformed_file_raises_state_file_error_naming_it(case, with_model, tmp_path, bad_cases):
    assert set(BAD) == set(bad_cases)
    path = bad_cases[case](tmp_path / "bad.npz")
    model = _model("SelectiveMamba") if with_model else None
    with pytest.raises(StateMismatchError) as info:
        ModelState.load(path, model)
    err = info.value
    assert isinstance(err, ValueError)
    assert "bad.npz" in str(err) or "d.npz" in str(err)
    # a broken file is a StateFileError; only a well-formed state of another model is a mismatch
    if not (with_model and case in ("positions of another batch",)):
        assert isinstance(err, StateFileError) or "belongs to" in str(err), (case, err)


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    """A pickled member is refused from its header; unpickling is never attempted."""
    import pickle

    _, _state_, path = _good(tmp_path)
    m = _members(path)
    bad = _write(tmp_path / "p.npz", dict(m, **{"ssm.npy": _npy(np.array([object()], dtype=object)[:0])}))

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("pickle.load called")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(StateFileError, match="never unpickled"):
        ModelState.load(bad)


# ----------------------------------------------------------------------------- memory bounds
def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def _add_deflated_zeros(path, name, nbytes, header=True):
    """Append a member of ``nbytes`` zeros, deflated (a few hundred KiB on disk)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(name, "w", force_zip64=True) as f:
            if header:
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)})
                f.write(buf.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)


def test_unknown_members_are_never_inflated(tmp_path):
    _, state, path = _good(tmp_path)
    _add_deflated_zeros(path, "junk.npy", 64 << 20)
    _add_deflated_zeros(path, "other", 64 << 20, header=False)
    assert os.path.getsize(path) < 2 << 20
    loaded = []
    peak = _peak_mib(lambda: loaded.append(ModelState.load(path)))
    assert peak < 8, peak  # the state itself is a few hundred bytes
    np.testing.assert_array_equal(loaded[0].ssm, state.ssm)


def test_huge_declared_shapes_are_refused_before_reading(tmp_path):
    """A header (or a fingerprint) declaring a huge array is refused without allocating it."""
    _, _state_, path = _good(tmp_path)
    m = _members(path)
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False,
                                               "shape": (1, 2, 5 * 10 ** 9, 2)})
    bad = _write(tmp_path / "h.npz", dict(m, **{"ssm.npy": hdr.getvalue() + bytes(64)}))
    peak = _peak_mib(lambda: pytest.raises(StateFileError, ModelState.load, bad))
    assert peak < 8, peak
    # a consistent fingerprint that declares a huge state, with a deflated member of matching
    # declared size: refused against the model's fingerprint before the data is read
    m2 = dict(m, **{"dim_values.npy": _npy(np.array([3, 5 * 10 ** 6, 2, 4, 3]))})
    del m2["ssm.npy"]
    big = _write(tmp_path / "big.npz", m2)
    _add_deflated_zeros(big, "ssm.npy", 16 << 20)
    model = _model("SelectiveMamba")
    peak = _peak_mib(lambda: pytest.raises(StateMismatchError, ModelState.load, big, model))
    assert peak < 8, peak


def test_a_zip_that_declares_fewer_bytes_than_the_array_needs(tmp_path):
    _, _state_, path = _good(tmp_path)
    m = _members(path)
    raw = bytearray(_write(tmp_path / "z.npz", m).read_bytes())
    # shrink the declared uncompressed size of ssm.npy in the central directory
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("ssm.npy")
    start = 0
    while True:
        i = raw.find(b"PK\x01\x02", start)
        assert i >= 0
        name_len = int.from_bytes(raw[i + 28:i + 30], "little")
        if raw[i + 46:i + 46 + name_len] == b"ssm.npy":
            break
        start = i + 4
    raw[i + 24:i + 28] = (info.file_size - 16).to_bytes(4, "little")
    bad = tmp_path / "short.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(StateFileError, match="short.npz"):
        ModelState.load(bad)


# ----------------------------------------------------------------------------- fuzzing
_FUZZ_BASE: dict = {}


def _fuzz_base() -> bytes:
    if "raw" not in _FUZZ_BASE:
        _, state = _state("SelectiveMamba")
        buf = io.BytesIO()
        np.savez(buf, **_npz_fields(state))
        _FUZZ_BASE["raw"] = buf.getvalue()
    return _FUZZ_BASE["raw"]


def _npz_fields(state):
    out = {"format": np.array(FORMAT), "kind": np.array(state.kind), "dim_names": np.array(list(state.dims)),
           "dim_values": np.array(list(state.dims.values()), dtype=np.int64), "dtype": np.array(state.dtype.name),
           "weights": np.array(state.weights), "positions": state.positions, "ssm": state.ssm}
    if state.conv is not None:
        out["conv"] = state.conv
    return out


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_gives_a_state_or_a_state_file_error(tmp_path, data):
    raw = bytearray(_fuzz_base())
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 64))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(raw))
    try:
        state = ModelState.load(path)
    except StateFileError as exc:
        assert "fuzz.npz" in str(exc)
        return
    # when it loads, it is a consistent state of its own fingerprint
    assert state.ssm.shape[1] == state.batch == state.positions.shape[0]


# ----------------------------------------------------------------- the lazy weights digest
def test_lm_digest_is_hashed_only_when_it_meets_another_digest(tmp_path):
    """A MambaLM's states carry its LazyDigest: making, stepping and checking them against the
    same model hashes nothing; saving, pickling or meeting another model's digest hashes once,
    and the value is weights_digest of the parameters (computed here independently)."""
    import pickle

    from nbssm.state import LazyDigest, weights_digest

    cfg = MambaLMConfig(d_model=8, n_layer=2, vocab_size=11, d_state=3, d_conv=3)
    model = MambaLM.random(cfg, seed=3)
    digest = model.fingerprint[3]
    assert isinstance(digest, LazyDigest) and not digest.computed
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    _, state = model.forward(ids, model.initial_state(2))
    _, state = model.step(np.array([7, 8]), state)
    model.generate(np.array([1, 2]), max_new_tokens=3)
    assert state.weights is digest and not digest.computed

    other = MambaLM.random(cfg, seed=4)
    with pytest.raises(StateMismatchError, match="other weights"):
        other.forward(ids, state)
    assert digest.computed
    assert str(digest) == weights_digest(model.parameters().values())
    assert digest == str(digest) and str(digest) == digest and digest != other.fingerprint[3]

    fresh = MambaLM.random(cfg, seed=3)  # same weights, another object: equal digests
    assert fresh.fingerprint == model.fingerprint and fresh.fingerprint[3] is not digest
    assert type(pickle.loads(pickle.dumps(state)).weights) is str
    path = tmp_path / "s.npz"
    state.save(path)
    again = MambaLM.random(cfg, seed=3)
    loaded = again.load_state(path)
    assert np.array_equal(loaded.ssm, state.ssm) and loaded.fingerprint == again.fingerprint
