"""The explicit recurrent state of a runtime model (:mod:`nbssm.models`).

A :class:`ModelState` holds everything a model needs to continue a batch of
sequences exactly where it stopped:

* ``ssm``: the SSM state, ``(batch, state_dim)`` for :class:`~nbssm.models.DiagonalS4`
  and :class:`~nbssm.models.CompactMamba`, ``(batch, inner_dim, state_dim)``
  for :class:`~nbssm.models.SelectiveMamba`;
* ``conv``: the convolution history of :class:`~nbssm.models.SelectiveMamba`,
  the projected inputs of the last ``conv_width - 1`` tokens, **oldest first**,
  ``(batch, max(conv_width - 1, 0), inner_dim)`` (zeros before the first
  token: the spec's zero left padding); ``None`` for the other models;
* ``position``: how many tokens have been consumed since the initial state.

and a *fingerprint*: the model kind, its dimensions and its dtype. A model
refuses a state whose fingerprint differs from its own or whose batch size
differs from the input's, with an error that says which.

States are saved to ``.npz`` files (:meth:`ModelState.save`) and read back
with ``allow_pickle=False`` (:meth:`ModelState.load`); every field is checked
on load, so a malformed or foreign file raises a ``ValueError`` naming what is
wrong.

Spec: the state ``h`` of ``DiagonalS4Spec`` / ``MambaBlockSpec`` and the pair
``(H, L)`` of ``SelectiveMambaBlockSpec`` (``L`` newest first there; stored
oldest first here, truncated to the ``conv_width - 1`` entries that can still
be read, as the Array family's ``stepWithConvolutionHistory`` does).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: format tag written into every state file
FORMAT = "nbssm.ModelState/1"

#: model kind -> names of its dimensions, in order
DIM_NAMES = {
    "DiagonalS4": ("input_dim", "state_dim", "output_dim"),
    "CompactMamba": ("input_dim", "state_dim", "output_dim"),
    "SelectiveMamba": ("input_dim", "inner_dim", "state_dim", "output_dim", "conv_width"),
}


def state_shapes(kind: str, dims: dict) -> tuple:
    """Per-sequence shapes ``(ssm_shape, conv_shape or None)`` of a model's state."""
    if kind == "SelectiveMamba":
        e, n, w = dims["inner_dim"], dims["state_dim"], dims["conv_width"]
        return (e, n), (max(w - 1, 0), e)
    return (dims["state_dim"],), None


def _fingerprint_text(fp: tuple) -> str:
    kind, dims, dtype = fp
    inner = ", ".join(f"{k}={v}" for k, v in dims)
    return f"{kind}({inner}, dtype={dtype})"


class ModelState:
    """Recurrent state of a batch of sequences for one runtime model.

    Build one with ``model.initial_state(batch)``; every ``forward`` and
    ``step`` returns a new one (the state passed in is never modified).

    Parameters
    ----------
    kind : str
        ``"DiagonalS4"``, ``"CompactMamba"`` or ``"SelectiveMamba"``.
    dims : dict
        The model's dimensions by name (see :data:`DIM_NAMES`).
    dtype : numpy dtype
        float32 or float64.
    ssm : ndarray
        ``(batch, state_dim)`` or ``(batch, inner_dim, state_dim)``.
    conv : ndarray or None
        ``(batch, max(conv_width - 1, 0), inner_dim)``, oldest token first,
        for ``SelectiveMamba``; ``None`` otherwise.
    position : int
        Tokens consumed so far.

    Attributes
    ----------
    fingerprint : tuple
        ``(kind, ((name, value), ...), dtype name)``; equal for the model and
        every state it accepts.
    batch : int
        The batch size (``ssm.shape[0]``).

    Notes
    -----
    The arrays are the state's own copies; they are not marked read-only,
    but the models never write into a state they are given.
    """

    __slots__ = ("kind", "dims", "dtype", "ssm", "conv", "position")

    def __init__(self, kind: str, dims: dict, dtype: Any, ssm: np.ndarray, conv: np.ndarray | None, position: int) -> None:
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
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"state dtype: expected float32 or float64, got {self.dtype}")
        ssm_shape, conv_shape = state_shapes(kind, self.dims)
        ssm = np.asarray(ssm)
        if ssm.dtype != self.dtype or ssm.ndim != 1 + len(ssm_shape) or ssm.shape[1:] != ssm_shape:
            raise ValueError(
                f"state ssm: expected a {self.dtype} array of shape (batch, {', '.join(map(str, ssm_shape))}), "
                f"got {ssm.dtype} {ssm.shape}"
            )
        batch = ssm.shape[0]
        if conv_shape is None:
            if conv is not None:
                raise ValueError(f"state conv: a {kind} state has no convolution history, got an array")
        else:
            conv = np.asarray(conv) if conv is not None else None
            want = (batch,) + conv_shape
            if conv is None or conv.dtype != self.dtype or conv.shape != want:
                got = "None" if conv is None else f"{conv.dtype} {conv.shape}"
                raise ValueError(f"state conv: expected a {self.dtype} array of shape {want}, got {got}")
        if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer)) or position < 0:
            raise ValueError(f"state position: expected a non-negative integer, got {position!r}")
        self.ssm = ssm
        self.conv = conv
        self.position = int(position)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> tuple:
        """``(kind, ((dim name, size), ...), dtype name)``."""
        return (self.kind, tuple(self.dims.items()), self.dtype.name)

    @property
    def batch(self) -> int:
        """Number of sequences in the batch."""
        return int(self.ssm.shape[0])

    def describe(self) -> str:
        """The fingerprint as text, e.g. ``DiagonalS4(input_dim=2, ..., dtype=float64)``."""
        return _fingerprint_text(self.fingerprint)

    def __repr__(self) -> str:
        return f"ModelState({self.describe()}, batch={self.batch}, position={self.position})"

    @classmethod
    def zeros(cls, kind: str, dims: dict, dtype: Any, batch: int) -> "ModelState":
        """The initial state: zero SSM state, zero history (left padding), position 0."""
        ssm_shape, conv_shape = state_shapes(kind, dims)
        conv = None if conv_shape is None else np.zeros((batch,) + conv_shape, dtype=dtype)
        return cls(kind, dims, dtype, np.zeros((batch,) + ssm_shape, dtype=dtype), conv, 0)

    def copy(self) -> "ModelState":
        """An independent deep copy."""
        conv = None if self.conv is None else self.conv.copy()
        return ModelState(self.kind, dict(self.dims), self.dtype, self.ssm.copy(), conv, self.position)

    def check(self, fingerprint: tuple, batch: int | None = None, name: str = "state") -> None:
        """Raise ``ValueError`` unless this state has ``fingerprint`` (and ``batch``, when given)."""
        if self.fingerprint != fingerprint:
            raise ValueError(
                f"{name}: this state belongs to {self.describe()}, not to {_fingerprint_text(fingerprint)}"
            )
        if batch is not None and self.batch != batch:
            raise ValueError(f"{name}: the state holds a batch of {self.batch} sequences, the input has {batch}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an ``.npz`` file (numpy appends ``.npz`` to a name without it).

        The file holds the format tag, the fingerprint (kind, dimension names
        and sizes, dtype), the position and the arrays; nothing is pickled.
        """
        arrays = {
            "format": np.array(FORMAT),
            "kind": np.array(self.kind),
            "dim_names": np.array(list(self.dims.keys())),
            "dim_values": np.array(list(self.dims.values()), dtype=np.int64),
            "dtype": np.array(self.dtype.name),
            "position": np.array(self.position, dtype=np.int64),
            "ssm": self.ssm,
        }
        if self.conv is not None:
            arrays["conv"] = self.conv
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> "ModelState":
        """Read a state written by :meth:`save` (``allow_pickle=False``).

        Parameters
        ----------
        path : str or path-like
            The ``.npz`` file.
        model : runtime model, optional
            When given, the state's fingerprint must equal the model's.

        Raises
        ------
        ValueError
            For a file that is not a state file, a missing or malformed field,
            or (with ``model``) a state of another model kind, dimension or
            dtype.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"state file {os.fspath(path)!r}: not a readable .npz file ({exc})") from exc

        def field(key: str) -> np.ndarray:
            if key not in data:
                raise ValueError(f"state file {os.fspath(path)!r}: missing field {key!r}")
            return data[key]

        def text(key: str) -> str:
            v = field(key)
            if v.shape != () or v.dtype.kind != "U":
                raise ValueError(f"state file {os.fspath(path)!r}: field {key!r} must be a string")
            return str(v[()])

        if text("format") != FORMAT:
            raise ValueError(f"state file {os.fspath(path)!r}: format {text('format')!r}, expected {FORMAT!r}")
        kind = text("kind")
        names, values = field("dim_names"), field("dim_values")
        if names.ndim != 1 or names.dtype.kind != "U" or values.ndim != 1 or values.dtype.kind not in "iu" \
                or names.shape != values.shape:
            raise ValueError(f"state file {os.fspath(path)!r}: malformed dimensions")
        position = field("position")
        if position.shape != () or position.dtype.kind not in "iu":
            raise ValueError(f"state file {os.fspath(path)!r}: field 'position' must be an integer")
        try:
            dtype = np.dtype(text("dtype"))
        except TypeError as exc:
            raise ValueError(f"state file {os.fspath(path)!r}: unknown dtype") from exc
        dims = {str(k): int(v) for k, v in zip(names, values)}
        try:
            state = cls(kind, dims, dtype, field("ssm"), data.get("conv"), int(position))
        except ValueError as exc:
            raise ValueError(f"state file {os.fspath(path)!r}: {exc}") from exc
        if model is not None:
            state.check(model.fingerprint, name=f"state file {os.fspath(path)!r}")
        return state


__all__ = ["ModelState", "FORMAT", "DIM_NAMES", "state_shapes"]
