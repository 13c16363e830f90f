"""The one recurrent-state type of nbssm's models and language models.

A :class:`ModelState` is a stack of per-layer states for a batch of sequences:

* ``ssm``: the SSM states, ``(layers, batch, *ssm_shape)``;
* ``conv``: the convolution histories, ``(layers, batch, max(conv_width - 1, 0), inner)``,
  the inputs of the last ``conv_width - 1`` tokens, **oldest first** (zeros before the first
  token: the spec's zero left padding); ``None`` for models without a convolution;
* ``positions``: ``(batch,)`` int64, how many tokens each sequence has consumed.

============================  ======  =====================  ==========================
model (``kind``)              layers  ``ssm_shape``          ``conv`` per layer
============================  ======  =====================  ==========================
``DiagonalS4``                1       ``(state_dim,)``       None
``CompactMamba``              1       ``(state_dim,)``       None
``SelectiveMamba``            1       ``(inner, state)``     ``(conv_width - 1, inner)``
``MambaMixer``                1       ``(d_inner, d_state)`` ``(d_conv - 1, d_inner)``
``MambaLM``                   n_layer ``(d_inner, d_state)`` ``(d_conv - 1, d_inner)``
============================  ======  =====================  ==========================

``state.layers[i]`` is layer ``i`` as a :class:`LayerState` ``(ssm, conv)`` of views.

Fingerprint
-----------
Every state carries the fingerprint of the model that made it: ``(kind, ((dim, size), ...),
dtype name, weights digest)``. The digest is a BLAKE2b hash of every parameter array of the
model (dtype, shape and bytes), computed once per model. A model refuses a state with another
fingerprint (another kind, size, dtype *or weights*) or another batch size with a
:class:`StateMismatchError` that names both sides.

File format
-----------
:meth:`ModelState.save` writes an uncompressed ``.npz`` (a zip of ``.npy`` members, nothing
pickled) with the members ``format`` (``"nbssm.ModelState/2"``), ``kind``, ``dim_names``,
``dim_values``, ``dtype``, ``weights``, ``positions``, ``ssm`` and, for models with a
convolution, ``conv``. :meth:`ModelState.load` reads only these members; it reads each
member's ``.npy`` header first and checks the declared shape and dtype against the
fingerprint (and against the model's, when one is given) before reading any data, refuses
object arrays, and ignores every other member without inflating it. A file that is not such a
state file (not a zip, truncated, a member missing, a wrong dtype or shape, a header that
lies) raises :class:`StateFileError` naming the file; a well-formed state of another model
raises :class:`StateMismatchError` naming the file. A missing file raises
``FileNotFoundError``.

Spec: the state ``h`` of ``DiagonalS4Spec`` / ``MambaBlockSpec`` and the pair ``(H, L)`` of
``SelectiveMambaBlockSpec`` (``L`` newest first there; stored oldest first here, truncated to
the ``conv_width - 1`` entries that can still be read, as the Array family's
``stepWithConvolutionHistory`` does).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

#: format tag written into every state file
FORMAT = "nbssm.ModelState/2"

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_LM_DIMS = ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "d_inner", "dt_rank")

#: model kind -> names of its dimensions, in order
DIM_NAMES = {
    "DiagonalS4": ("input_dim", "state_dim", "output_dim"),
    "CompactMamba": ("input_dim", "state_dim", "output_dim"),
    "SelectiveMamba": ("input_dim", "inner_dim", "state_dim", "output_dim", "conv_width"),
    "MambaMixer": ("d_model", "d_inner", "d_state", "d_conv", "dt_rank"),
    "MambaLM": _LM_DIMS,
}

#: the largest size a dimension read from a file may declare
_MAX_DIM = 2 ** 40
#: the longest string member (characters) and the most dimensions a state file may hold
_MAX_TEXT = 256
_MAX_NAMES = 16


class StateMismatchError(ValueError):
    """A state used with (or loaded for) a model or batch it does not belong to."""


class StateFileError(StateMismatchError):
    """A file that is not a readable nbssm state file (the message names the file)."""


class LayerState(NamedTuple):
    """One layer of a :class:`ModelState`: ``ssm (batch, *ssm_shape)``, ``conv (batch, w - 1, inner)`` or None."""

    ssm: np.ndarray
    conv: np.ndarray | None


def state_layout(kind: str, dims: dict) -> tuple:
    """``(layers, ssm_shape, conv_shape or None)`` of a model's state, per sequence and layer."""
    if kind == "SelectiveMamba":
        e, n, w = dims["inner_dim"], dims["state_dim"], dims["conv_width"]
        return 1, (e, n), (max(w - 1, 0), e)
    if kind in ("MambaMixer", "MambaLM"):
        e, n, w = dims["d_inner"], dims["d_state"], dims["d_conv"]
        return (dims["n_layer"] if kind == "MambaLM" else 1), (e, n), (max(w - 1, 0), e)
    return 1, (dims["state_dim"],), None


def state_shapes(kind: str, dims: dict) -> tuple:
    """Per-sequence shapes ``(ssm_shape, conv_shape or None)`` of one layer's state."""
    return state_layout(kind, dims)[1:]


def weights_digest(arrays: Iterable[np.ndarray]) -> str:
    """A BLAKE2b digest (32 hex digits) of arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        if a.size:
            h.update(memoryview(a).cast("B"))  # type: ignore[arg-type]  # ndarray exports a buffer
    return h.hexdigest()


class LazyDigest:
    """A weights digest hashed on first use, so that making and checking states costs nothing.

    ``MambaLM`` (516 MB of weights at mamba-130m) hands its states this object instead of the
    digest string: a state checked against the model that made it compares the same object,
    which is equal to itself without hashing; comparing with any other digest (a string, or
    another model's ``LazyDigest``), printing, saving or pickling computes the BLAKE2b digest
    once (:func:`weights_digest`) and uses that string. ``compute`` returns the digest string.
    """

    __slots__ = ("_compute", "_value")

    def __init__(self, compute: Callable[[], str]) -> None:
        self._compute: Callable[[], str] | None = compute
        self._value: str | None = None

    @property
    def computed(self) -> bool:
        """Whether the digest has been hashed yet."""
        return self._value is not None

    def __str__(self) -> str:
        if self._value is None:
            assert self._compute is not None
            value = self._compute()
            if not isinstance(value, str):
                raise TypeError(f"weights digest: expected a string, got {type(value).__name__}")
            self._value, self._compute = value, None
        return self._value

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, (LazyDigest, str)):
            return str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __getitem__(self, index: Any) -> str:
        return str(self)[index]

    def __len__(self) -> int:
        return len(str(self))

    def __repr__(self) -> str:
        return f"LazyDigest({self._value!r})" if self._value is not None else "LazyDigest(<not hashed yet>)"

    def __reduce__(self) -> tuple:
        # a pickled or copied state carries the digest string, never the model's weights
        return (str, (str(self),))


def describe_fingerprint(fp: tuple) -> str:
    """A fingerprint as text: ``Kind(dim=size, ..., dtype=float64, weights=1a2b3c4d)``."""
    kind, dims, dtype, weights = fp
    inner = "".join(f"{k}={v}, " for k, v in dims)
    return f"{kind}({inner}dtype={dtype}, weights={weights[:8] or '?'})"


def check_fingerprint(ours: tuple, theirs: tuple, name: str = "state") -> None:
    """Raise :class:`StateMismatchError` naming both sides unless fingerprint ``ours == theirs``."""
    if ours != theirs:
        why = ("the same dimensions and dtype, other weights" if ours[:3] == theirs[:3]
               else "another model, size or dtype")
        raise StateMismatchError(f"{name}: this state belongs to {describe_fingerprint(ours)}, not to "
                                 f"{describe_fingerprint(theirs)} ({why})")


def _positions(value: Any, batch: int) -> np.ndarray:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"state positions: expected non-negative integers, got {value!r}")
    if isinstance(value, (int, np.integer)):
        value = np.full(batch, int(value), dtype=np.int64)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.shape != (batch,) or (arr.size and arr.min() < 0):
        raise ValueError(f"state positions: expected {batch} non-negative integers, got {arr.dtype} {arr.shape}")
    return np.array(arr, dtype=np.int64)


class ModelState:
    """Recurrent state of a batch of sequences: a stack of per-layer states, with a fingerprint.

    Build one with ``model.initial_state(batch)``; every ``forward`` and ``step`` returns a
    new one (the state passed in is never modified, except by ``MambaLM.step(...,
    inplace=True)``).

    Parameters
    ----------
    kind : str
        The model kind (a key of :data:`DIM_NAMES`).
    dims : dict
        The model's dimensions by name.
    dtype : numpy dtype
        float32 or float64.
    ssm : ndarray, shape (layers, batch, *ssm_shape)
    conv : ndarray, shape (layers, batch, max(conv_width - 1, 0), inner), or None
    positions : int or array of int, shape (batch,)
        Tokens consumed so far by each sequence (an int: the same for all).
    weights : str
        The model's weights digest (:func:`weights_digest`).

    Attributes
    ----------
    fingerprint : tuple
        ``(kind, ((name, size), ...), dtype name, weights digest)``.
    batch, n_layers : int
    positions : ndarray of int64, shape (batch,)
    position : int
        The common position of every sequence (``ValueError`` when they differ; use
        ``positions``).
    layers : tuple of LayerState
        Per-layer views ``(ssm (batch, ...), conv (batch, ...) or None)``.
    """

    __slots__ = ("conv", "dims", "dtype", "kind", "positions", "ssm", "weights")

    def __init__(self, kind: str, dims: dict, dtype: Any, ssm: np.ndarray, conv: np.ndarray | None,
                 positions: Any, weights: str = "") -> None:
        if kind not in DIM_NAMES:
            raise ValueError(f"state kind: expected one of {sorted(DIM_NAMES)}, got {kind!r}")
        names = DIM_NAMES[kind]
        if set(dims) != set(names):
            raise ValueError(f"state dims of a {kind}: expected {names}, got {tuple(dims)}")
        self.kind = kind
        self.dims = {k: int(dims[k]) for k in names}
        if any(v < 0 for v in self.dims.values()):
            raise ValueError(f"state dims: expected non-negative sizes, got {self.dims}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (_F32, _F64):
            raise ValueError(f"state dtype: expected float32 or float64, got {self.dtype}")
        if not isinstance(weights, (str, LazyDigest)):
            raise TypeError(f"state weights: expected a digest string, got {type(weights).__name__}")
        self.weights = weights
        n_layers, ssm_shape, conv_shape = state_layout(kind, self.dims)
        ssm = np.asarray(ssm)
        if ssm.dtype != self.dtype or ssm.ndim != 2 + len(ssm_shape) or ssm.shape[0] != n_layers \
                or ssm.shape[2:] != ssm_shape:
            raise ValueError(
                f"state ssm: expected a {self.dtype} array of shape "
                f"({n_layers}, batch, {', '.join(map(str, ssm_shape))}), got {ssm.dtype} {ssm.shape}")
        batch = ssm.shape[1]
        if conv_shape is None:
            if conv is not None:
                raise ValueError(f"state conv: a {kind} state has no convolution history, got an array")
        else:
            conv = np.asarray(conv) if conv is not None else None
            want = (n_layers, batch) + conv_shape
            if conv is None or conv.dtype != self.dtype or conv.shape != want:
                got = "None" if conv is None else f"{conv.dtype} {conv.shape}"
                raise ValueError(f"state conv: expected a {self.dtype} array of shape {want}, got {got}")
        self.ssm = ssm
        self.conv = conv
        self.positions = _positions(positions, batch)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> tuple:
        """``(kind, ((dim name, size), ...), dtype name, weights digest)``."""
        return (self.kind, tuple(self.dims.items()), self.dtype.name, self.weights)

    @property
    def batch(self) -> int:
        """Number of sequences in the batch."""
        return int(self.ssm.shape[1])

    @property
    def n_layers(self) -> int:
        """Number of layers (1 for the single-block models)."""
        return int(self.ssm.shape[0])

    @property
    def position(self) -> int:
        """Tokens consumed, when every sequence has consumed the same number (else ValueError)."""
        p = self.positions
        if p.size and np.any(p != p[0]):
            raise ValueError(f"state position: the sequences are at different positions {p.tolist()}; "
                             "use state.positions")
        return int(p[0]) if p.size else 0

    @property
    def layers(self) -> tuple:
        """Per-layer :class:`LayerState` views."""
        return tuple(LayerState(self.ssm[i], None if self.conv is None else self.conv[i])
                     for i in range(self.n_layers))

    def describe(self) -> str:
        """The fingerprint as text, e.g. ``DiagonalS4(input_dim=2, ..., dtype=float64, weights=...)``."""
        return describe_fingerprint(self.fingerprint)

    def __repr__(self) -> str:
        p = self.positions
        pos = str(int(p[0])) if p.size and np.all(p == p[0]) else str(p.tolist())
        return f"ModelState({self.describe()}, batch={self.batch}, position={pos})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def zeros(cls, kind: str, dims: dict, dtype: Any, batch: int, weights: str = "") -> ModelState:
        """The initial state: zero SSM states, zero histories (left padding), positions 0."""
        n_layers, ssm_shape, conv_shape = state_layout(kind, dims)
        conv = None if conv_shape is None else np.zeros((n_layers, batch) + conv_shape, dtype=dtype)
        return cls(kind, dims, dtype, np.zeros((n_layers, batch) + ssm_shape, dtype=dtype), conv,
                   np.zeros(batch, np.int64), weights)

    def _like(self, ssm, conv, positions) -> ModelState:
        return ModelState(self.kind, self.dims, self.dtype, ssm, conv, positions, self.weights)

    def copy(self) -> ModelState:
        """An independent deep copy."""
        conv = None if self.conv is None else self.conv.copy()
        return self._like(self.ssm.copy(), conv, self.positions.copy())

    def select(self, rows) -> ModelState:
        """The state of some sequences of the batch (a copy), e.g. ``state.select([0, 2])``."""
        rows = np.atleast_1d(np.asarray(rows))
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(f"rows: expected a 1-D integer array, got {rows.dtype} {rows.shape}")
        if rows.size and (rows.min() < -self.batch or rows.max() >= self.batch):
            raise ValueError(f"rows: expected indices in [{-self.batch}, {self.batch}), got {rows.tolist()}")
        conv = None if self.conv is None else self.conv[:, rows].copy()
        return self._like(self.ssm[:, rows].copy(), conv, self.positions[rows].copy())

    @staticmethod
    def concatenate(states: list) -> ModelState:
        """Stack the batches of several states of the same model."""
        states = list(states)
        if not states:
            raise ValueError("states: expected at least one state, got none")
        first = states[0]
        for i, s in enumerate(states[1:], 1):
            if s.fingerprint != first.fingerprint:
                raise StateMismatchError(f"states[{i}]: belongs to {s.describe()}, not to {first.describe()}")
        conv = None if first.conv is None else np.concatenate([s.conv for s in states], axis=1)
        return first._like(np.concatenate([s.ssm for s in states], axis=1), conv,
                           np.concatenate([s.positions for s in states]))

    def check(self, fingerprint: tuple, batch: int | None = None, name: str = "state") -> None:
        """Raise :class:`StateMismatchError` unless this state has ``fingerprint`` (and ``batch``)."""
        check_fingerprint(self.fingerprint, fingerprint, name)
        if batch is not None and self.batch != batch:
            raise StateMismatchError(
                f"{name}: the state holds a batch of {self.batch} sequences, the input has {batch}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an uncompressed ``.npz`` file (numpy appends ``.npz`` to a bare name).

        Members: see the module docstring; nothing is pickled.
        """
        arrays = {
            "format": np.array(FORMAT),
            "kind": np.array(self.kind),
            "dim_names": np.array(list(self.dims.keys())),
            "dim_values": np.array(list(self.dims.values()), dtype=np.int64),
            "dtype": np.array(self.dtype.name),
            "weights": np.array(str(self.weights)),
            "positions": self.positions,
            "ssm": self.ssm,
        }
        if self.conv is not None:
            arrays["conv"] = self.conv
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as allow_pickle

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> ModelState:
        """Read a state written by :meth:`save`, checking every member before reading its data.

        Parameters
        ----------
        path : str, path-like or binary file object
            The ``.npz`` file.
        model : model, optional
            Any model with a ``fingerprint`` (``DiagonalS4``, ..., ``MambaLM``); when given,
            the file's fingerprint must equal it, checked before the state arrays are read.

        Raises
        ------
        StateFileError
            The file is not a readable state file (see the module docstring).
        StateMismatchError
            With ``model``: the state belongs to another model, size, dtype or weights.
        FileNotFoundError
            No such file.
        """
        named = isinstance(path, (str, bytes, os.PathLike))
        where = f"state file {os.fspath(path)!r}" if named else f"state file {getattr(path, 'name', path)!r}"
        try:
            zf = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, ...: the file is not a zip
            raise StateFileError(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
        with zf:
            reader = _Reader(zf, where)
            try:
                return reader.state(model)
            except (StateFileError, StateMismatchError):
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the zip or npy layer raises on damage
                raise StateFileError(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


class _Reader:
    """Reads the known members of a state file, headers first."""

    def __init__(self, zf: zipfile.ZipFile, where: str) -> None:
        self.zf = zf
        self.where = where
        self.members = {}
        for info in zf.infolist():
            name = info.filename
            if name.endswith(".npy"):
                self.members[name[:-4]] = info

    def fail(self, what: str) -> StateFileError:
        return StateFileError(f"{self.where}: {what}")

    def header(self, key: str) -> tuple:
        """``(shape, dtype)`` declared by member ``key``'s .npy header (no data read)."""
        info = self.members.get(key)
        if info is None:
            raise self.fail(f"missing field {key!r}")
        with self.zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise self.fail(f"field {key!r}: unsupported .npy version {version}")
        if dtype.hasobject or dtype.fields is not None:
            raise self.fail(f"field {key!r}: expected a plain numeric or string array, got dtype {dtype} "
                            "(object arrays are never unpickled)")
        return tuple(shape), dtype

    def read(self, key: str, shape: tuple, kinds: str, dtype: np.dtype | None = None,
             max_itemsize: int | None = None) -> np.ndarray:
        """Member ``key`` after checking its declared shape and dtype, then its size in the zip."""
        got_shape, got_dtype = self.header(key)
        if dtype is not None and got_dtype != dtype:
            raise self.fail(f"field {key!r}: expected a {dtype} array of shape {shape}, got {got_dtype} {got_shape}")
        if got_dtype.kind not in kinds or (max_itemsize is not None and got_dtype.itemsize > max_itemsize):
            raise self.fail(f"field {key!r}: expected dtype kind {kinds!r}, got {got_dtype}")
        if got_shape != tuple(shape):
            want = f"a {dtype} array of shape" if dtype is not None else "shape"
            raise self.fail(f"field {key!r}: expected {want} {tuple(shape)}, got {got_dtype} {got_shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * got_dtype.itemsize
        info = self.members[key]
        if info.file_size < nbytes:
            raise self.fail(f"field {key!r}: the zip declares {info.file_size} bytes, the array needs {nbytes}")
        with self.zf.open(info) as f:
            arr = np.lib.format.read_array(f, allow_pickle=False)
        if arr.shape != tuple(shape) or arr.dtype != got_dtype:  # pragma: no cover - read_array checks
            raise self.fail(f"field {key!r}: data does not match its header")
        return arr

    def text(self, key: str) -> str:
        return str(self.read(key, (), "U", max_itemsize=4 * _MAX_TEXT)[()])

    def state(self, model: Any) -> ModelState:
        fmt = self.text("format")
        if fmt != FORMAT:
            raise self.fail(f"format {fmt!r}, expected {FORMAT!r} (not an nbssm state file, or another version)")
        kind = self.text("kind")
        if kind not in DIM_NAMES:
            raise self.fail(f"unknown model kind {kind!r}, expected one of {sorted(DIM_NAMES)}")
        k = len(DIM_NAMES[kind])
        names = self.read("dim_names", (k,), "U", max_itemsize=4 * _MAX_TEXT)
        values = self.read("dim_values", (k,), "iu")
        dims = {str(n): int(v) for n, v in zip(names, values)}
        if tuple(dims) != DIM_NAMES[kind]:
            raise self.fail(f"malformed dimensions: expected {DIM_NAMES[kind]}, got {tuple(dims)}")
        if any(v < 0 or v > _MAX_DIM for v in dims.values()):
            raise self.fail(f"malformed dimensions: sizes out of range {dims}")
        dtype_name = self.text("dtype")
        if dtype_name not in ("float32", "float64"):
            raise self.fail(f"field 'dtype': expected 'float32' or 'float64', got {dtype_name!r}")
        dtype = np.dtype(dtype_name)
        weights = self.text("weights")
        fp = (kind, tuple(dims.items()), dtype.name, weights)
        if model is not None:
            check_fingerprint(fp, model.fingerprint, self.where)
        pshape, _ = self.header("positions")
        if len(pshape) != 1:
            raise self.fail(f"field 'positions': expected shape (batch,), got {pshape}")
        batch = pshape[0]
        positions = self.read("positions", (batch,), "iu")
        if positions.size and positions.min() < 0:
            raise self.fail("field 'positions': expected non-negative integers")
        n_layers, ssm_shape, conv_shape = state_layout(kind, dims)
        ssm = self.read("ssm", (n_layers, batch) + ssm_shape, "f", dtype)
        conv = None
        if conv_shape is not None:
            conv = self.read("conv", (n_layers, batch) + conv_shape, "f", dtype)
        elif "conv" in self.members:
            raise self.fail(f"field 'conv': a {kind} state has no convolution history")
        try:
            state = ModelState(kind, dims, dtype, ssm, conv, positions, weights)
        except ValueError as exc:  # pragma: no cover - every field was checked above
            raise self.fail(str(exc)) from None
        assert state.fingerprint == fp
        return state


__all__ = [
    "DIM_NAMES",
    "FORMAT",
    "LayerState",
    "LazyDigest",
    "ModelState",
    "StateFileError",
    "StateMismatchError",
    "check_fingerprint",
    "describe_fingerprint",
    "state_layout",
    "state_shapes",
    "weights_digest",
]
