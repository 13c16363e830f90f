"""Runtime models: diagonal S4, compact Mamba, selective Mamba and the checkpoint-layout Mamba block.

Each model runs a batch of sequences ``x (batch, length, input_dim)`` (a 2-D
``(length, input_dim)`` array is one sequence, with 2-D outputs and a batch-1
state) and returns ``(y, final_state)``: the outputs ``(batch, length,
output_dim)`` and a :class:`~nbssm.state.ModelState` (the one state type: a
stack of per-layer SSM states and convolution histories, and per-sequence
positions). Pass that state back as ``initial_state`` to process the next
chunk, or call :meth:`step` token by token::

    y, state = model.forward(x)                 # whole sequences
    y1, s = model.forward(x[:, :5])             # or in chunks ...
    y2, s = model.forward(x[:, 5:], s)          # ... y1, y2 == y (bitwise, see below)
    yt, s = model.step(x[:, 0], s)              # or one token per sequence: (batch, input_dim)
    s0 = model.initial_state(batch=2)           # the zero state

Models: :class:`DiagonalS4`, :class:`CompactMamba`, :class:`SelectiveMamba`
(spec layout, ``[in, out]`` weights, bitwise refinement of the spec) and
:class:`MambaMixer` (the Mamba-1 block in the checkpoint layout of
transformers/mamba_ssm, the block :class:`nbssm.lm.MambaLM` is built from;
``to_spec()``, ``to_selective()``, ``from_selective()``).

Sign of ``A``: :class:`DiagonalS4` and :class:`CompactMamba` hold the per-step
multiplier ``A`` (``h = A h + B s``); :class:`SelectiveMamba` holds positive
rates (``exp(-delta A)``, as the spec); :class:`MambaMixer` holds mamba_ssm's
negative ``A = -exp(A_log)`` (``exp(delta A)``).

Glossary: ``b`` batch, ``l`` length, ``i`` input_dim, ``n`` state_dim,
``e`` inner_dim, ``o`` output_dim, ``w`` conv_width. Weights are laid out
``[in, out]`` and applied as ``x @ W``, as in the spec.

Guarantees
----------
* **Modes agree bit for bit.** With ``strategy="sequential"`` (and always for
  :meth:`step`), a sequence processed whole, in chunks of any sizes with the
  state carried, or token by token gives bitwise identical outputs and final
  states. The projections use a row-wise fold kernel
  (:mod:`nbssm._kernels.dense`) instead of BLAS precisely for this: BLAS
  rounds a row differently depending on how many rows it is given. With the
  chunked strategy the pieces agree with the whole up to rounding.
* **Refinement.** float64 follows the spec's operations and fold orders
  (projections, convolution, recurrence, activations with the C library's
  ``exp``/``log``) and, with ``strategy="sequential"``, reproduces the spec's
  double runner ``run_list`` (``nbssm.spec.context.DOUBLE``) bit for bit
  (asserted by ``tests/test_models.py``, edge dimensions included); the
  chunked strategy stays within 1e-12 relative. float32 runs the scan with
  the kernels' polynomial ``exp``/``log`` and is held to a tolerance
  (``tests/tolerances.py``, ``model_float32``).
* **Determinism.** Results do not depend on the number of threads;
  ``strategy="auto"`` depends only on batch size and channel count (see
  :mod:`nbssm.ops`).
* **State safety.** A state from another model kind, other dimensions,
  another dtype, other weights (the fingerprint digests every parameter) or
  another batch size is rejected with a :class:`~nbssm.state.StateMismatchError`
  (a ``ValueError``) naming both sides. Inputs and states passed in are never
  modified. (These bullets are about the spec-layout models; :class:`MambaMixer`
  projects through BLAS, see its notes.)

Dtypes: a model is float32 or float64 (its parameters' dtype). Inputs of the
other float dtype raise a ``TypeError`` (convert the input, or the model with
:meth:`astype`); integer inputs are converted to the model's dtype; float16,
bool, complex and object inputs raise ``TypeError``. NaN and Inf in inputs
propagate (channels never mix inside the recurrence; the projections mix
channels of the same token, as any dense layer does). Parameters must be
finite.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ._validate import _describe, as_float_array, check_int, float_dtype_of
from .state import DIM_NAMES, ModelState, StateMismatchError, weights_digest

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_STRATEGIES = ("auto", "sequential", "chunked")


# ============================================================================ helpers
def _model_dtype(dtype, params: dict) -> np.dtype:
    """The dtype of a model built from ``params``: ``dtype`` if given, else float32 iff all are float32."""
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in (_F32, _F64):
            raise TypeError(f"dtype: expected float32 or float64, got {dt}")
        return dt
    dts = [float_dtype_of(v, name) for name, v in params.items()]
    return _F32 if dts and all(d == _F32 for d in dts) else _F64


def _param(value: Any, name: str, dtype: np.dtype, shape: tuple, copy: bool = True) -> np.ndarray:
    """A parameter as the model's own read-only C-contiguous copy, shape and finiteness checked.

    With ``copy=False`` an array that already is read-only, C-contiguous and of ``dtype`` is
    used as it is (a view shared with its owner, e.g. a language model's stacked weights).
    """
    arr = np.asarray(value)
    float_dtype_of(arr, name)  # TypeError for float16, bool, complex, object
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {_describe(shape)}, got {arr.shape}")
    if not copy and arr.dtype == dtype and arr.flags.c_contiguous and not arr.flags.writeable:
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: parameters must be finite (found NaN or Inf)")
        return arr
    out = np.array(arr, dtype=dtype, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: parameters must be finite (found NaN or Inf)")
    out.flags.writeable = False
    return out


def _spec_array(value: Any, shape: tuple) -> np.ndarray:
    """A nested-list spec field as a float64 array of ``shape`` (exact: Python floats are doubles)."""
    return np.array(value, dtype=np.float64).reshape(shape)


def _to_list(arr: np.ndarray) -> list:
    """A parameter as nested Python floats (exact for float32 and float64)."""
    return arr.astype(np.float64).tolist()


def _project(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` with the spec's fold order, rows independent; ``x (..., k)``, ``w (k, m)`` -> ``(..., m)``.

    Bitwise equal, per row, whatever the number of rows (see :mod:`nbssm._kernels.dense`).
    """
    from ._kernels.dense import matmul_fold

    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(int(np.prod(lead)), x.shape[-1]))
    out = np.empty((x2.shape[0], w.shape[1]), dtype=x.dtype)
    if out.size:
        matmul_fold(x2, w, out)
    return out.reshape(lead + (w.shape[1],))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The spec's plain sigmoid ``1 / (1 + exp(-x))``, elementwise, C-library ``exp``."""
    from ._kernels.dense import sigmoid_rows

    x2 = np.ascontiguousarray(x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]))
    out = np.empty_like(x2)
    if out.size:
        sigmoid_rows(x2, out)
    return out.reshape(x.shape)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ============================================================================ base class
class _Model:
    """Common machinery: dims, dtype, input/state validation, forward/step plumbing."""

    kind = "abstract"
    _PARAMS: tuple = ()

    def __init__(self, dims: dict, dtype: np.dtype, strategy: str) -> None:
        self._dims = dims
        self.dtype = dtype
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy: expected one of {_STRATEGIES}, got {strategy!r}")
        self.strategy = strategy

    # ------------------------------------------------------------------ identity
    @property
    def dims(self) -> dict:
        """The model's dimensions by name (a copy)."""
        return dict(self._dims)

    def __getattr__(self, name: str) -> Any:
        dims = self.__dict__.get("_dims")
        if dims is not None and name in dims:
            return dims[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def fingerprint(self) -> tuple:
        """``(kind, ((dim name, size), ...), dtype name, weights digest)``; states carry the same one.

        The digest (:func:`nbssm.state.weights_digest`) covers every parameter array; it is
        computed on first use and kept (parameters are read-only).
        """
        digest = self.__dict__.get("_digest")
        if digest is None:
            digest = weights_digest(self.parameters().values())
            self._digest = digest
        return (self.kind, tuple(self._dims.items()), self.dtype.name, digest)

    @property
    def _input_dim(self) -> int:
        return self._dims["input_dim"]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._dims.items())
        return f"{self.kind}({inner}, dtype={self.dtype.name})"

    def parameters(self) -> dict:
        """The parameters by name (read-only arrays, the model's own)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def astype(self, dtype) -> _Model:
        """The same model with parameters converted to ``dtype`` (float32 or float64)."""
        return type(self)(**self.parameters(), dtype=dtype, strategy=self.strategy)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch: int = 1) -> ModelState:
        """The zero state for ``batch`` sequences (zero SSM state and history, position 0)."""
        batch = check_int(batch, "batch", 0)
        return ModelState.zeros(self.kind, self._dims, self.dtype, batch, self.fingerprint[3])

    def load_state(self, path: str | os.PathLike) -> ModelState:
        """:meth:`ModelState.load` with this model's fingerprint checked."""
        return ModelState.load(path, model=self)

    def _state_for(self, state: Any, batch: int) -> ModelState:
        if state is None:
            return self.initial_state(batch)
        if not isinstance(state, ModelState):
            raise TypeError(f"state: expected a ModelState (from {self.kind}.initial_state or forward), "
                            f"got {type(state).__name__}")
        state.check(self.fingerprint, batch)
        return state

    def _new_state(self, ssm: np.ndarray, conv: np.ndarray | None, old: ModelState, length: int) -> ModelState:
        """The one-layer state after ``length`` more tokens: ``ssm (b, ...)``, ``conv (b, w-1, e)``."""
        conv = None if conv is None else np.ascontiguousarray(conv)[None]
        return ModelState(self.kind, self._dims, self.dtype, np.ascontiguousarray(ssm)[None], conv,
                          old.positions + length, old.weights)

    # ------------------------------------------------------------------ input
    def _input(self, x: Any, name: str = "x") -> np.ndarray:
        arr = np.asarray(x)
        dt = float_dtype_of(arr, name)
        if arr.dtype.kind == "f" and dt != self.dtype:
            conv = "float32" if self.dtype == _F32 else "float64"
            raise TypeError(
                f"{name}: {arr.dtype} input to a {self.dtype.name} {self.kind}; convert the input "
                f"({name}.astype(np.{conv})) or the model (model.astype(np.{arr.dtype.name}))")
        i = self._input_dim
        if arr.ndim not in (2, 3) or arr.shape[-1] != i:
            raise ValueError(f"{name}: expected shape (batch, length, {i}) or (length, {i}), got {arr.shape}")
        return as_float_array(arr, name, self.dtype)

    # ------------------------------------------------------------------ running
    def forward(self, x: Any, initial_state: ModelState | None = None, *, strategy: str | None = None,
                chunk_length: int | None = None, state: ModelState | None = None) -> tuple:
        """Run whole sequences (or the next chunk of them) from ``initial_state``.

        Parameters
        ----------
        x : array_like, shape (batch, length, input_dim) or (length, input_dim)
            A 2-D array is one sequence (its state has batch 1).
        initial_state : ModelState, optional
            Where to start; the zero state (:meth:`initial_state`) if omitted.
            Must come from a model with the same fingerprint and have the
            input's batch size. It is not modified.
        strategy : {"auto", "sequential", "chunked"}, optional
            The scan strategy (default: the model's ``strategy``). Only
            "sequential" makes chunked and token-by-token runs bitwise equal
            to the whole.
        chunk_length : int, optional
            Chunk length of the chunked strategy (default: the kernel's).
        state : ModelState, optional
            Deprecated name of ``initial_state``.

        Returns
        -------
        y : ndarray, shape (batch, length, output_dim) or (length, output_dim)
            Same number of dimensions as ``x``; the model's dtype.
        final_state : ModelState
            The state after the last token (a new object; always returned, so models take no
            ``return_final_state``).
        """
        if state is not None:
            warnings.warn("forward(state=...) is deprecated; use initial_state=", DeprecationWarning, stacklevel=2)
            if initial_state is not None:
                raise TypeError("initial_state: given twice (as initial_state and as the deprecated state)")
            initial_state = state
        strategy = self.strategy if strategy is None else strategy
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy: expected one of {_STRATEGIES}, got {strategy!r}")
        x_ = self._input(x)
        single = x_.ndim == 2
        x3 = x_[None] if single else x_
        st = self._state_for(initial_state, x3.shape[0])
        if chunk_length is not None:
            chunk_length = check_int(chunk_length, "chunk_length", 1)
        y, new = self._run(x3, st, strategy, chunk_length)
        return (y[0] if single else y), new

    __call__ = forward

    def step(self, x: Any, state: ModelState | None = None) -> tuple:
        """Advance by one token per sequence (or by several), sequentially.

        Parameters
        ----------
        x : array_like
            ``(input_dim,)``: one token of one sequence (state batch 1);
            ``(batch, input_dim)``: one token for each sequence;
            ``(batch, length, input_dim)``: several tokens, as :meth:`forward`.
        state : ModelState, optional
            As in :meth:`forward`.

        Returns
        -------
        y : ndarray, shape (output_dim,), (batch, output_dim) or (batch, length, output_dim)
        state : ModelState

        Notes
        -----
        Always uses the sequential strategy, so stepping token by token equals
        ``forward(x, strategy="sequential")`` bit for bit.
        Spec: ``step`` of the spec model (iterated by ``runList``).
        """
        arr = np.asarray(x)
        if arr.ndim == 1:
            y, new = self.forward(arr[None, None, :], state, strategy="sequential")
            return y[0, 0], new
        if arr.ndim == 2:
            y, new = self.forward(arr[:, None, :], state, strategy="sequential")
            return y[:, 0], new
        if arr.ndim == 3:
            return self.forward(arr, state, strategy="sequential")
        i = self._input_dim
        raise ValueError(f"x: expected shape ({i},), (batch, {i}) or (batch, length, {i}), got {arr.shape}")

    def _run(self, x: np.ndarray, state: ModelState, strategy: str, chunk_length) -> tuple:  # pragma: no cover
        raise NotImplementedError


# ============================================================================ S4 and compact Mamba
class _DiagonalCore(_Model):
    """Shared parts of :class:`DiagonalS4` and :class:`CompactMamba` (``DiagonalSSM`` core)."""

    def _init_core(self, in_proj, out_proj, A, B, C, D, extra: dict, dtype, strategy) -> None:
        params = {"in_proj": in_proj, "out_proj": out_proj, "A": A, "B": B, "C": C, "D": D, **extra}
        for name, v in params.items():
            if v is None:
                raise TypeError(f"{name}: expected an array, got None")
        dt = _model_dtype(dtype, params)
        ip = np.asarray(in_proj)
        op = np.asarray(out_proj)
        if ip.ndim != 2:
            raise ValueError(f"in_proj: expected shape (input_dim, state_dim), got {ip.shape}")
        if op.ndim != 2:
            raise ValueError(f"out_proj: expected shape (state_dim, output_dim), got {op.shape}")
        i, n = ip.shape
        o = op.shape[1]
        shapes = {"in_proj": (i, n), "out_proj": (n, o), "A": (n,), "B": (n,), "C": (n,), "D": (n,)}
        shapes.update({k: (i, n) for k in extra})
        for name, v in params.items():
            setattr(self, name, _param(v, name, dt, shapes[name]))
        super().__init__({"input_dim": i, "state_dim": n, "output_dim": o}, dt, strategy)

    def _core(self, x: np.ndarray, state: ModelState, strategy: str, chunk_length) -> tuple:
        """``s = x@in_proj``; ``h_t = A*h_{t-1} + B*s_t``; returns ``(s, yS = C*h + D*s, final state)``."""
        from .ops import linear_scan

        b, l, _ = x.shape
        s = _project(x, self.in_proj)                             # (b, l, n)
        h0 = state.ssm[0]                                         # (b, n)
        if l == 0 or self._dims["state_dim"] == 0:
            h, hT = np.zeros_like(s), h0.copy()
        else:
            a = np.broadcast_to(self.A, s.shape)                  # (b, l, n)
            h, hT = linear_scan(a, self.B * s, initial_state=h0, return_final_state=True,
                                strategy=strategy, chunk_length=chunk_length)  # (b, l, n), (b, n)
        y_s = self.C * h + self.D * s                             # (b, l, n)
        return s, y_s, self._new_state(hT, None, state, l)

    def _ssm_spec(self):
        from .spec.models import DiagonalSSM

        n = self._dims["state_dim"]
        return DiagonalSSM(n, _to_list(self.A), _to_list(self.B), _to_list(self.C), _to_list(self.D))

    @staticmethod
    def _random_core(rng, i: int, n: int, o: int, dtype) -> dict:
        return {
            "in_proj": rng.standard_normal((i, n)) / np.sqrt(max(i, 1)),
            "out_proj": rng.standard_normal((n, o)) / np.sqrt(max(n, 1)),
            "A": rng.uniform(0.5, 0.99, n),
            "B": rng.standard_normal(n),
            "C": rng.standard_normal(n),
            "D": rng.standard_normal(n),
        }


class DiagonalS4(_DiagonalCore):
    """Diagonal S4 layer (no discretization: ``A`` is the per-step multiplier).

    Per token ``x_t`` (input_dim,)::

        s_t = x_t @ in_proj                    (state_dim,)
        h_t = A * h_{t-1} + B * s_t            (state_dim,)
        y_t = (C * h_t + D * s_t) @ out_proj   (output_dim,)

    Parameters
    ----------
    in_proj : array_like, shape (input_dim, state_dim)
    out_proj : array_like, shape (state_dim, output_dim)
    A, B, C, D : array_like, shape (state_dim,)
        The ``DiagonalSSM`` core. All parameters must be finite.
    dtype : {None, float32, float64}
        Default: float32 if every parameter is float32, else float64.
    strategy : {"auto", "sequential", "chunked"}
        Default scan strategy of :meth:`forward` (:func:`nbssm.linear_scan`).

    Notes
    -----
    State: ``ssm (batch, state_dim)``. float64 with the sequential strategy
    reproduces ``DiagonalS4Spec.run_list`` on the double context bit for bit.

    Spec: ``DiagonalS4Spec inputDim stateDim outputDim`` (section 4.1).
    """

    kind = "DiagonalS4"
    _PARAMS = ("in_proj", "out_proj", "A", "B", "C", "D")

    def __init__(self, in_proj, out_proj, A, B, C, D, *, dtype=None, strategy: str = "auto") -> None:
        self._init_core(in_proj, out_proj, A, B, C, D, {}, dtype, strategy)

    def _run(self, x, state, strategy, chunk_length):
        _s, y_s, new = self._core(x, state, strategy, chunk_length)
        return _project(y_s, self.out_proj), new                  # (b, l, o)

    def to_spec(self):
        """The spec model (exact: every float32/float64 value is a Python float).

        Returns
        -------
        nbssm.spec.models.DiagonalS4Spec
        """
        from .spec.models import DiagonalS4Spec

        d = self._dims
        return DiagonalS4Spec(d["input_dim"], d["state_dim"], d["output_dim"],
                              _to_list(self.in_proj), _to_list(self.out_proj), self._ssm_spec())

    @classmethod
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> DiagonalS4:
        """Build from a ``DiagonalS4Spec`` (exact in float64; rounded once in float32)."""
        i, n, o = spec.input_dim, spec.state_dim, spec.output_dim
        ssm = spec.ssm
        return cls(_spec_array(spec.in_proj, (i, n)), _spec_array(spec.out_proj, (n, o)),
                   _spec_array(ssm.A, (n,)), _spec_array(ssm.B, (n,)), _spec_array(ssm.C, (n,)),
                   _spec_array(ssm.D, (n,)), dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, state_dim: int, output_dim: int, *, seed=None, dtype=np.float64,
               strategy: str = "auto") -> DiagonalS4:
        """A random model: projections ``N(0, 1/fan_in)``, ``A ~ U(0.5, 0.99)``, ``B, C, D ~ N(0, 1)``.

        ``seed``: an int, ``None`` or a ``numpy.random.Generator``; values are
        drawn in float64 and then converted to ``dtype``.
        """
        i = check_int(input_dim, "input_dim", 0)
        n = check_int(state_dim, "state_dim", 0)
        o = check_int(output_dim, "output_dim", 0)
        return cls(**cls._random_core(_rng(seed), i, n, o, dtype), dtype=dtype, strategy=strategy)


class CompactMamba(_DiagonalCore):
    """Compact (non-selective) Mamba block: a diagonal SSM with a sigmoid gate.

    Per token ``x_t`` (input_dim,)::

        s_t = x_t @ in_proj                                   (state_dim,)
        h_t = A * h_{t-1} + B * s_t                           (state_dim,)
        g_t = sigmoid(x_t @ gate_proj)                        (state_dim,)
        y_t = ((C * h_t + D * s_t) * g_t) @ out_proj          (output_dim,)

    The gate is the sigmoid of the raw token's projection (not SiLU), the
    plain form ``1/(1 + exp(-v))``.

    Parameters
    ----------
    in_proj, gate_proj : array_like, shape (input_dim, state_dim)
    out_proj : array_like, shape (state_dim, output_dim)
    A, B, C, D : array_like, shape (state_dim,)
    dtype, strategy
        As in :class:`DiagonalS4`.

    Notes
    -----
    State: ``ssm (batch, state_dim)``. float64 with the sequential strategy
    reproduces ``MambaBlockSpec.run_list`` on the double context bit for bit.

    Spec: ``MambaBlockSpec inputDim stateDim outputDim`` (section 4.2).
    """

    kind = "CompactMamba"
    _PARAMS = ("in_proj", "gate_proj", "out_proj", "A", "B", "C", "D")

    def __init__(self, in_proj, gate_proj, out_proj, A, B, C, D, *, dtype=None, strategy: str = "auto") -> None:
        self._init_core(in_proj, out_proj, A, B, C, D, {"gate_proj": gate_proj}, dtype, strategy)

    def _run(self, x, state, strategy, chunk_length):
        _s, y_s, new = self._core(x, state, strategy, chunk_length)
        g = _sigmoid(_project(x, self.gate_proj))                 # (b, l, n)
        return _project(y_s * g, self.out_proj), new              # (b, l, o)

    def to_spec(self):
        """The spec model (exact). Returns ``nbssm.spec.models.MambaBlockSpec``."""
        from .spec.models import MambaBlockSpec

        d = self._dims
        return MambaBlockSpec(d["input_dim"], d["state_dim"], d["output_dim"], _to_list(self.in_proj),
                              _to_list(self.gate_proj), _to_list(self.out_proj), self._ssm_spec())

    @classmethod
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> CompactMamba:
        """Build from a ``MambaBlockSpec`` (exact in float64; rounded once in float32)."""
        i, n, o = spec.input_dim, spec.state_dim, spec.output_dim
        ssm = spec.ssm
        return cls(_spec_array(spec.in_proj, (i, n)), _spec_array(spec.gate_proj, (i, n)),
                   _spec_array(spec.out_proj, (n, o)), _spec_array(ssm.A, (n,)), _spec_array(ssm.B, (n,)),
                   _spec_array(ssm.C, (n,)), _spec_array(ssm.D, (n,)), dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, state_dim: int, output_dim: int, *, seed=None, dtype=np.float64,
               strategy: str = "auto") -> CompactMamba:
        """A random model, as :meth:`DiagonalS4.random` plus ``gate_proj ~ N(0, 1/input_dim)``."""
        i = check_int(input_dim, "input_dim", 0)
        n = check_int(state_dim, "state_dim", 0)
        o = check_int(output_dim, "output_dim", 0)
        rng = _rng(seed)
        params = cls._random_core(rng, i, n, o, dtype)
        params["gate_proj"] = rng.standard_normal((i, n)) / np.sqrt(max(i, 1))
        return cls(**params, dtype=dtype, strategy=strategy)


# ============================================================================ selective Mamba
class SelectiveMamba(_Model):
    """Full selective Mamba block (a Mamba-1 mixer with a dense ``dt_proj``).

    Per token ``x_t`` (input_dim,), with ``A`` **positive** rates::

        p_t = x_t @ x_proj ;  z_t = x_t @ z_proj                       (inner_dim,)
        c_t[d] = conv_bias[d] + sum_k p_{t-k}[d] * conv_kernel[k, d]    (k = 0: current token)
        u_t = silu(c_t)
        delta_t = softplus(u_t @ dt_proj + delta_bias)                  (inner_dim,)
        B_t = u_t @ b_proj ;  C_t = u_t @ c_proj                        (state_dim,)
        H_t[d, n] = exp(-delta_t[d] A[d, n]) H_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
        y_t[d] = D[d] u_t[d] + sum_n H_t[d, n] C_t[n]
        o_t = (y_t * silu(z_t)) @ out_proj                              (output_dim,)

    Parameters
    ----------
    x_proj, z_proj : array_like, shape (input_dim, inner_dim)
    conv_kernel : array_like, shape (conv_width, inner_dim)
        Newest tap first (row 0 multiplies the current token), the spec's
        orientation; a checkpoint's ``conv1d.weight[d, 0, k]`` is
        ``conv_kernel[conv_width - 1 - k, d]``. ``conv_width`` may be 0
        (``c_t = conv_bias``).
    conv_bias, delta_bias, D : array_like, shape (inner_dim,)
        ``delta_bias`` and ``D`` are the spec's ``dt_bias`` and ``d_skip`` (mamba_ssm's
        names; the former keywords ``dt_bias=``/``d_skip=`` and attributes are deprecated).
    dt_proj : array_like, shape (inner_dim, inner_dim)
    A, b_proj, c_proj : array_like, shape (inner_dim, state_dim)
        Sign of ``A``: this block (like the spec) holds **positive** decay rates,
        ``exp(A_log)`` of a checkpoint; the kernel is given ``-A`` (exact).
        :class:`MambaMixer` holds mamba_ssm's negative ``A = -exp(A_log)``.
    out_proj : array_like, shape (inner_dim, output_dim)
    dtype, strategy
        As in :class:`DiagonalS4`; ``strategy`` applies to :func:`nbssm.selective_scan`.

    Notes
    -----
    State: ``ssm (batch, inner_dim, state_dim)`` and ``conv (batch,
    max(conv_width - 1, 0), inner_dim)``, the last projected tokens oldest
    first (zeros at the start: the spec's zero left padding). The
    convolution (:func:`nbssm.causal_conv1d`, fused SiLU) and the scan
    (:func:`nbssm.selective_scan`, softplus fused with ``delta_bias``) keep
    the spec's folds, so float64 with the sequential strategy reproduces
    ``SelectiveMambaBlockSpec.run_list`` on the double context bit for bit.
    float32 softplus returns its argument above 20 (as PyTorch).

    Spec: ``SelectiveMambaBlockSpec inputDim innerDim stateDim outputDim convWidth``
    (section 4.3).
    """

    kind = "SelectiveMamba"
    _PARAMS = ("x_proj", "z_proj", "conv_kernel", "conv_bias", "dt_proj", "delta_bias", "A",
               "b_proj", "c_proj", "D", "out_proj")
    #: parameter name -> spec field name (``SelectiveMambaBlockSpec``), where they differ
    SPEC_NAMES: ClassVar[dict] = {"delta_bias": "dt_bias", "D": "d_skip"}

    def __init__(self, x_proj, z_proj, conv_kernel, conv_bias, dt_proj, delta_bias=None, A=None, b_proj=None,
                 c_proj=None, D=None, out_proj=None, *, dtype=None, strategy: str = "auto",
                 dt_bias=None, d_skip=None) -> None:
        for old, new, value in (("dt_bias", "delta_bias", dt_bias), ("d_skip", "D", d_skip)):
            if value is not None:
                warnings.warn(f"SelectiveMamba({old}=...) is deprecated; use {new}=", DeprecationWarning,
                              stacklevel=2)
        if dt_bias is not None:
            if delta_bias is not None:
                raise TypeError("delta_bias: given twice (as delta_bias and as the deprecated dt_bias)")
            delta_bias = dt_bias
        if d_skip is not None:
            if D is not None:
                raise TypeError("D: given twice (as D and as the deprecated d_skip)")
            D = d_skip
        params = dict(x_proj=x_proj, z_proj=z_proj, conv_kernel=conv_kernel, conv_bias=conv_bias,
                      dt_proj=dt_proj, delta_bias=delta_bias, A=A, b_proj=b_proj, c_proj=c_proj,
                      D=D, out_proj=out_proj)
        for name, v in params.items():
            if v is None:
                raise TypeError(f"{name}: expected an array, got None")
        dt = _model_dtype(dtype, params)
        xp, ck, a, op = (np.asarray(v) for v in (x_proj, conv_kernel, A, out_proj))
        if xp.ndim != 2:
            raise ValueError(f"x_proj: expected shape (input_dim, inner_dim), got {xp.shape}")
        if ck.ndim != 2:
            raise ValueError(f"conv_kernel: expected shape (conv_width, inner_dim), got {ck.shape}")
        if a.ndim != 2:
            raise ValueError(f"A: expected shape (inner_dim, state_dim), got {a.shape}")
        if op.ndim != 2:
            raise ValueError(f"out_proj: expected shape (inner_dim, output_dim), got {op.shape}")
        i, e = xp.shape
        w, n, o = ck.shape[0], a.shape[1], op.shape[1]
        shapes = {"x_proj": (i, e), "z_proj": (i, e), "conv_kernel": (w, e), "conv_bias": (e,),
                  "dt_proj": (e, e), "delta_bias": (e,), "A": (e, n), "b_proj": (e, n), "c_proj": (e, n),
                  "D": (e,), "out_proj": (e, o)}
        for name, v in params.items():
            setattr(self, name, _param(v, name, dt, shapes[name]))
        super().__init__({"input_dim": i, "inner_dim": e, "state_dim": n, "output_dim": o, "conv_width": w},
                         dt, strategy)
        # fused weights: one fold per output element, so concatenating columns changes no bit
        self._xz_proj = np.ascontiguousarray(np.concatenate([self.x_proj, self.z_proj], axis=1))  # (i, 2e)
        self._u_proj = np.ascontiguousarray(
            np.concatenate([self.dt_proj, self.b_proj, self.c_proj], axis=1))                      # (e, e+2n)
        self._conv_weight = np.ascontiguousarray(self.conv_kernel[::-1].T)                       # (e, w) oldest first
        self._neg_A = np.ascontiguousarray(-self.A)                                               # (e, n), exact

    def _run(self, x, state, strategy, chunk_length):
        from .ops import causal_conv1d, selective_scan

        d = self._dims
        e, n = d["inner_dim"], d["state_dim"]
        b, l, _ = x.shape
        xz = _project(x, self._xz_proj)                              # (b, l, 2e)
        p, z = xz[..., :e], xz[..., e:]                              # (b, l, e) each
        conv0, ssm0 = state.conv[0], state.ssm[0]                    # (b, w-1, e), (b, e, n)
        if l == 0:
            y = np.zeros((b, 0, e), dtype=self.dtype)
            hist, hT = conv0.copy(), ssm0.copy()
        else:
            u, hist = causal_conv1d(p, self._conv_weight, self.conv_bias, initial_state=conv0,
                                    return_final_state=True, activation="silu")  # (b, l, e), (b, w-1, e)
            udbc = _project(u, self._u_proj)                         # (b, l, e + 2n)
            dt_pre = udbc[..., :e]                                   # (b, l, e)
            Bt, Ct = udbc[..., e:e + n], udbc[..., e + n:]           # (b, l, n) each
            if e == 0:
                y, hT = np.zeros((b, l, 0), dtype=self.dtype), ssm0.copy()
            else:
                y, hT = selective_scan(u, dt_pre, self._neg_A, Bt, Ct, D=self.D, z=z,
                                       delta_bias=self.delta_bias, delta_softplus=True,
                                       initial_state=ssm0, return_final_state=True,
                                       strategy=strategy, chunk_length=chunk_length)  # (b, l, e), (b, e, n)
        out = _project(y, self.out_proj)                             # (b, l, o)
        return out, self._new_state(hT, hist, state, l)

    def to_spec(self):
        """The spec model (exact). Returns ``nbssm.spec.models.SelectiveMambaBlockSpec``."""
        from .spec.models import SelectiveMambaBlockSpec

        d = self._dims
        return SelectiveMambaBlockSpec(d["input_dim"], d["inner_dim"], d["state_dim"], d["output_dim"],
                                       d["conv_width"], **{self.SPEC_NAMES.get(k, k): _to_list(v)
                                                           for k, v in self.parameters().items()})

    @property
    def dt_bias(self) -> np.ndarray:
        """Deprecated name of :attr:`delta_bias`."""
        warnings.warn("SelectiveMamba.dt_bias is deprecated; use delta_bias", DeprecationWarning, stacklevel=2)
        return self.delta_bias

    @property
    def d_skip(self) -> np.ndarray:
        """Deprecated name of :attr:`D`."""
        warnings.warn("SelectiveMamba.d_skip is deprecated; use D", DeprecationWarning, stacklevel=2)
        return self.D

    @classmethod
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> SelectiveMamba:
        """Build from a ``SelectiveMambaBlockSpec`` (exact in float64; rounded once in float32)."""
        shapes = spec.field_shapes()
        names = {k: cls.SPEC_NAMES.get(k, k) for k in cls._PARAMS}
        return cls(**{k: _spec_array(getattr(spec, f), shapes[f]) for k, f in names.items()},
                   dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, inner_dim: int, state_dim: int, output_dim: int, conv_width: int = 4, *,
               seed=None, dtype=np.float64, strategy: str = "auto") -> SelectiveMamba:
        """A random model with Mamba-like initialisation.

        Projections ``N(0, 1/fan_in)``; convolution taps and bias
        ``U(-1/sqrt(w), 1/sqrt(w))``; ``dt_proj ~ N(0, 0.1^2/inner_dim)``;
        ``delta_bias`` the inverse softplus of a step log-uniform in
        ``[1e-3, 1e-1]``; ``A[d, n] = n + 1`` (S4D-real); ``D = 1``.
        ``seed``: an int, ``None`` or a ``numpy.random.Generator``.
        """
        i = check_int(input_dim, "input_dim", 0)
        e = check_int(inner_dim, "inner_dim", 0)
        n = check_int(state_dim, "state_dim", 0)
        o = check_int(output_dim, "output_dim", 0)
        w = check_int(conv_width, "conv_width", 0)
        rng = _rng(seed)
        bound = 1.0 / np.sqrt(max(w, 1))
        dt0 = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), e))
        return cls(
            x_proj=rng.standard_normal((i, e)) / np.sqrt(max(i, 1)),
            z_proj=rng.standard_normal((i, e)) / np.sqrt(max(i, 1)),
            conv_kernel=rng.uniform(-bound, bound, (w, e)),
            conv_bias=rng.uniform(-bound, bound, e),
            dt_proj=rng.standard_normal((e, e)) * (0.1 / np.sqrt(max(e, 1))),
            delta_bias=dt0 + np.log(-np.expm1(-dt0)),
            A=np.tile(np.arange(1, n + 1, dtype=np.float64), (e, 1)),
            b_proj=rng.standard_normal((e, n)) / np.sqrt(max(e, 1)),
            c_proj=rng.standard_normal((e, n)) / np.sqrt(max(e, 1)),
            D=np.ones(e),
            out_proj=rng.standard_normal((e, o)) / np.sqrt(max(e, 1)),
            dtype=dtype, strategy=strategy,
        )

# ============================================================================ checkpoint-layout Mamba block
def mixer_param_shapes(d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int) -> dict:
    """Expected shape of every :class:`MambaMixer` parameter."""
    D, E, N, W, R = d_model, d_inner, d_state, d_conv, dt_rank
    return {
        "in_proj": (2 * E, D), "conv_weight": (E, W), "conv_bias": (E,), "x_proj": (R + 2 * N, E),
        "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A_log": (E, N), "D": (E,), "out_proj": (D, E),
    }


def spec_fields(p: dict, d_state: int, dt_rank: int, exp: Callable[[Any], Any] = np.exp) -> dict:
    """The 11 ``SelectiveMambaBlockSpec`` fields (= :class:`SelectiveMamba` parameters) of a :class:`MambaMixer`.

    Works on float arrays and on object arrays of sympy expressions alike (``exp`` is applied
    elementwise: ``numpy.exp`` for floats, ``numpy.vectorize(sympy.exp)`` for symbols).

    Parameters
    ----------
    p : dict
        ``in_proj`` (2E, Dm), ``conv_weight`` (E, W), ``conv_bias`` (E,), ``x_proj`` (R+2N, E),
        ``dt_proj_weight`` (E, R), ``dt_proj_bias`` (E,), ``A_log`` (E, N), ``D`` (E,),
        ``out_proj`` (Dm, E).

    Returns
    -------
    dict of arrays: ``x_proj``/``z_proj`` (Dm, E), ``conv_kernel`` (W, E), ``conv_bias`` (E,),
    ``dt_proj`` (E, E), ``dt_bias`` (E,), ``A`` (E, N), ``b_proj``/``c_proj`` (E, N),
    ``d_skip`` (E,), ``out_proj`` (E, Dm).

    Notes
    -----
    Spec section 4.4: ``xProj = in_proj[:E].T``, ``zProj = in_proj[E:].T``,
    ``convKernel[k, d] = conv1d.weight[d, 0, W-1-k]`` (the spec's tap 0 is the current token),
    ``dtProj = (dt_proj.weight @ x_proj.weight[:R]).T`` (the low rank multiplied out),
    ``A = exp(A_log)`` (positive rates), ``bProj = x_proj.weight[R:R+N].T``,
    ``cProj = x_proj.weight[R+N:].T``, ``dSkip = D``, ``outProj = out_proj.weight.T``.
    """
    E = p["A_log"].shape[0]
    N, R = d_state, dt_rank
    return {
        "x_proj": p["in_proj"][:E].T,
        "z_proj": p["in_proj"][E:].T,
        "conv_kernel": p["conv_weight"][:, ::-1].T,
        "conv_bias": p["conv_bias"],
        "dt_proj": (p["dt_proj_weight"] @ p["x_proj"][:R]).T,
        "dt_bias": p["dt_proj_bias"],
        "A": exp(p["A_log"]),
        "b_proj": p["x_proj"][R:R + N].T,
        "c_proj": p["x_proj"][R + N:R + 2 * N].T,
        "d_skip": p["D"],
        "out_proj": p["out_proj"].T,
    }


class MambaMixer(_Model):
    """A Mamba-1 block in the checkpoint layout (transformers' ``MambaMixer``, mamba_ssm's ``Mamba``).

    Glossary: ``Dm`` d_model, ``E`` d_inner, ``N`` d_state, ``W`` d_conv, ``R`` dt_rank.
    Parameters are kept as checkpoints store them (PyTorch's ``[out, in]`` orientation,
    C-contiguous, read-only, in the model's dtype):

    ==================  ============  =================================================
    name                shape         checkpoint tensor
    ==================  ============  =================================================
    ``in_proj``         (2E, Dm)      ``in_proj.weight`` (x rows first, then z)
    ``conv_weight``     (E, W)        ``conv1d.weight[:, 0, :]`` (taps oldest first)
    ``conv_bias``       (E,)          ``conv1d.bias`` (zeros when the checkpoint has none)
    ``x_proj``          (R+2N, E)     ``x_proj.weight`` (rows: dt, B, C)
    ``dt_proj_weight``  (E, R)        ``dt_proj.weight``
    ``dt_proj_bias``    (E,)          ``dt_proj.bias`` (the scan's ``delta_bias``)
    ``A_log``           (E, N)        ``A_log``
    ``D``               (E,)          ``D``
    ``out_proj``        (Dm, E)       ``out_proj.weight``
    ==================  ============  =================================================

    Sign of ``A``: this block uses mamba_ssm's convention, ``A = -exp(A_log)`` (negative,
    the :attr:`A` attribute, passed as it is to :func:`nbssm.selective_scan`);
    :class:`SelectiveMamba` and the spec hold the positive rates ``exp(A_log)``.

    Per token, with ``x`` the (RMS-normalised) input (transformers' ``slow_forward``)::

        x_in, z = in_proj[:E] @ x, in_proj[E:] @ x       # (E,), (E,)
        u = silu(conv1d(x_in) + conv_bias)                # causal, depthwise, width W
        dt_low, B, C = split(x_proj @ u)                  # (R,), (N,), (N,)
        delta = softplus(dt_proj_weight @ dt_low + dt_proj_bias)
        h = exp(delta * A) * h + (delta * B) * u          # h (E, N)
        y = (h @ C + D * u) * silu(z)
        out = out_proj @ y                                # (Dm,)

    Parameters
    ----------
    in_proj, conv_weight, conv_bias, x_proj, dt_proj_weight, dt_proj_bias, A_log, D, out_proj
        As in the table; a (E, 1, W) ``conv_weight`` is accepted, ``conv_bias=None`` means
        zeros. Copied (the caller's arrays are never written) unless ``copy=False`` and the
        array already is read-only, C-contiguous and of ``dtype``.
    dtype : {None, float32, float64}
        Default: float32 if every parameter is float32, else float64.
    strategy : {"auto", "sequential", "chunked"}
        Scan strategy of :func:`nbssm.selective_scan`.

    Notes
    -----
    The projections run through BLAS (``numpy.matmul``), not the row-wise fold kernel of the
    spec-layout models, so whole, chunked and token-by-token runs agree within rounding, not
    bit for bit (see :mod:`nbssm.lm.model` for why). State: ``ssm (1, batch, E, N)``, ``conv
    (1, batch, W-1, E)``.

    Spec: ``SelectiveMambaBlockSpec`` via :meth:`to_spec` (section 4.4), exact over the reals.
    """

    kind = "MambaMixer"
    _PARAMS = ("in_proj", "conv_weight", "conv_bias", "x_proj", "dt_proj_weight", "dt_proj_bias", "A_log", "D",
               "out_proj")

    def __init__(self, in_proj, conv_weight, conv_bias, x_proj, dt_proj_weight, dt_proj_bias, A_log, D, out_proj,
                 *, dtype=None, strategy: str = "auto", copy: bool = True) -> None:
        conv_weight = np.asarray(conv_weight) if conv_weight is not None else None
        if conv_weight is not None and conv_weight.ndim == 3 and conv_weight.shape[1] == 1:
            conv_weight = conv_weight[:, 0, :]
        params = dict(in_proj=in_proj, conv_weight=conv_weight, conv_bias=conv_bias, x_proj=x_proj,
                      dt_proj_weight=dt_proj_weight, dt_proj_bias=dt_proj_bias, A_log=A_log, D=D, out_proj=out_proj)
        for name, v in params.items():
            if v is None and name != "conv_bias":
                raise TypeError(f"{name}: expected an array, got None")
        dt = _model_dtype(dtype, {k: v for k, v in params.items() if v is not None})
        arrs = {k: np.asarray(params[k]) for k in ("in_proj", "conv_weight", "A_log", "dt_proj_weight")}
        for name, want in (("in_proj", "(2 * d_inner, d_model)"), ("conv_weight", "(d_inner, d_conv)"),
                           ("A_log", "(d_inner, d_state)"), ("dt_proj_weight", "(d_inner, dt_rank)")):
            if arrs[name].ndim != 2:
                raise ValueError(f"{name}: expected shape {want}, got {arrs[name].shape}")
        E, N = arrs["A_log"].shape
        Dm = arrs["in_proj"].shape[1]
        W = arrs["conv_weight"].shape[1]
        R = arrs["dt_proj_weight"].shape[1]
        if params["conv_bias"] is None:
            zeros = np.zeros(E, dt)
            if not copy:
                zeros.flags.writeable = False
            params["conv_bias"] = zeros
        for name, shape in mixer_param_shapes(Dm, E, N, W, R).items():
            setattr(self, name, _param(params[name], name, dt, shape, copy))
        super().__init__({"d_model": Dm, "d_inner": E, "d_state": N, "d_conv": W, "dt_rank": R}, dt, strategy)
        A = np.ascontiguousarray(-np.exp(self.A_log))                        # (E, N), negative
        A.flags.writeable = False
        self.A = A

    @property
    def _input_dim(self) -> int:
        return self._dims["d_model"]

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(cls, d_model: int, d_inner: int | None = None, d_state: int = 16, d_conv: int = 4,
               dt_rank: int | None = None, seed=0, dtype=np.float32, scale: float = 0.3,
               strategy: str = "auto") -> MambaMixer:
        """Random parameters (seeded) in the regime where every part of the block matters.

        Projections ``N(0, scale^2)``, ``A_log ~ U(0, 3)``, delta around 0.1..1, ``D`` around 1;
        ``d_inner`` defaults to ``2 d_model``, ``dt_rank`` to ``ceil(d_model / 16)``.
        """
        Dm = check_int(d_model, "d_model", 0)
        E = 2 * Dm if d_inner is None else check_int(d_inner, "d_inner", 0)
        R = -(-Dm // 16) if dt_rank is None else check_int(dt_rank, "dt_rank", 0)
        N = check_int(d_state, "d_state", 0)
        W = check_int(d_conv, "d_conv", 0)
        rng = _rng(seed)
        delta = rng.uniform(0.1, 1.0, E)
        return cls(
            in_proj=rng.normal(0, scale, (2 * E, Dm)),
            conv_weight=rng.normal(0, 0.5, (E, W)),
            conv_bias=rng.normal(0, scale, E),
            x_proj=rng.normal(0, scale, (R + 2 * N, E)),
            dt_proj_weight=rng.normal(0, scale, (E, R)),
            dt_proj_bias=np.log(np.expm1(delta)),
            A_log=rng.uniform(0, 3, (E, N)),
            D=rng.normal(1, scale, E),
            out_proj=rng.normal(0, scale, (Dm, E)),
            dtype=dtype, strategy=strategy,
        )

    def params(self) -> dict:
        """Deprecated name of :meth:`parameters`."""
        warnings.warn("MambaMixer.params() is deprecated; use parameters()", DeprecationWarning, stacklevel=2)
        return self.parameters()

    # ------------------------------------------------------------------ running
    def forward(self, x: Any, initial_state: Any = None, ssm_state: Any = None, **kwargs) -> tuple:
        """:meth:`_Model.forward`: ``(y, final_state)`` for ``x (batch, length, d_model)`` or ``(length, d_model)``.

        The former signature ``forward(x, conv_history, ssm_state) -> (out, (conv_history,
        ssm_state))`` with bare arrays still works and is deprecated.
        """
        if isinstance(initial_state, np.ndarray) or ssm_state is not None:
            warnings.warn("MambaMixer.forward(x, conv_history, ssm_state) is deprecated; pass a ModelState "
                          "(initial_state=) and read the arrays from the returned state", DeprecationWarning,
                          stacklevel=2)
            x_ = self._input(x)
            single = x_.ndim == 2
            x3 = x_[None] if single else x_
            b = x3.shape[0]
            zero = self.initial_state(b)
            assert zero.conv is not None  # a Mamba block always has a convolution history
            hist0 = zero.conv[0] if initial_state is None else np.asarray(initial_state, self.dtype)
            h0 = zero.ssm[0] if ssm_state is None else np.asarray(ssm_state, self.dtype)
            out, hist, h = self.mix(x3, hist0, h0)
            return (out[0] if single else out), (hist, h)
        return super().forward(x, initial_state, **kwargs)

    __call__ = forward

    def _run(self, x, state, strategy, chunk_length):
        out, hist, h = self.mix(x, state.conv[0], state.ssm[0], strategy, chunk_length)
        return out, self._new_state(h, hist, state, x.shape[1])

    def mix(self, x: np.ndarray, conv_history: np.ndarray, ssm_state: np.ndarray, strategy: str | None = None,
            chunk_length: int | None = None) -> tuple:
        """The block on arrays: what :meth:`forward` and ``MambaLM.forward`` run for each layer.

        Parameters
        ----------
        x : ndarray, shape (b, l, Dm), the model's dtype
        conv_history : ndarray, shape (b, W-1, E)
            The last W-1 inputs of the convolution, oldest first (zeros: a fresh sequence).
        ssm_state : ndarray, shape (b, E, N)
        strategy, chunk_length
            As in :meth:`forward` (default: the block's strategy).

        Returns
        -------
        out : (b, l, Dm); conv_history : (b, W-1, E); ssm_state : (b, E, N)
            New arrays; the arguments are not written.
        """
        from .ops import causal_conv1d, selective_scan

        b, l = x.shape[:2]
        d = self._dims
        E, N, R = d["d_inner"], d["d_state"], d["dt_rank"]
        if l == 0:
            return np.zeros((b, 0, d["d_model"]), self.dtype), conv_history.copy(), ssm_state.copy()
        x_in, z, dt = _workspace(b, l, E, self.dtype)                          # reused buffers
        np.matmul(x, self.in_proj[:E].T, out=x_in)                            # (b, l, E)
        np.matmul(x, self.in_proj[E:].T, out=z)                               # (b, l, E)
        u, hist = causal_conv1d(x_in, self.conv_weight, self.conv_bias, initial_state=conv_history,
                                return_final_state=True, activation="silu")     # (b, l, E), (b, W-1, E)
        xdbl = u @ self.x_proj.T                                              # (b, l, R+2N)
        np.matmul(xdbl[..., :R], self.dt_proj_weight.T, out=dt)               # (b, l, E)
        B = np.ascontiguousarray(xdbl[..., R:R + N])                          # (b, l, N)
        C = np.ascontiguousarray(xdbl[..., R + N:])                           # (b, l, N)
        y, h = selective_scan(u, dt, self.A, B, C, D=self.D, z=z, delta_bias=self.dt_proj_bias,
                              delta_softplus=True, initial_state=ssm_state, return_final_state=True,
                              strategy=self.strategy if strategy is None else strategy,
                              chunk_length=chunk_length)                     # (b, l, E), (b, E, N)
        out = y @ self.out_proj.T                                             # (b, l, Dm)
        return out, hist, h

    # ------------------------------------------------------------------ spec and runtime block
    def to_spec(self):
        """The ``SelectiveMambaBlockSpec`` this block implements (:func:`spec_fields`, as Python floats).

        Exact over the reals (``tests/test_lm_spec.py`` proves it with sympy); in floats the
        multiplied-out ``dt_proj`` and ``exp(A_log)`` round.
        """
        from .spec.models import SelectiveMambaBlockSpec

        d = self._dims
        fields = self._selective_fields()
        return SelectiveMambaBlockSpec(input_dim=d["d_model"], inner_dim=d["d_inner"], state_dim=d["d_state"],
                                       output_dim=d["d_model"], conv_width=d["d_conv"],
                                       **{k: v.tolist() for k, v in fields.items()})

    def _selective_fields(self) -> dict:
        p = {k: v.astype(np.float64) for k, v in self.parameters().items()}
        return spec_fields(p, self._dims["d_state"], self._dims["dt_rank"], exp=np.exp)

    def to_selective(self, *, dtype=None, strategy: str | None = None) -> SelectiveMamba:
        """The same block as a :class:`SelectiveMamba` (spec layout), fields computed in float64.

        Exact over the reals; ``dt_proj`` (the low rank multiplied out) and ``A = exp(A_log)``
        round once (then once more to float32 for a float32 block).
        """
        inverse = {v: k for k, v in SelectiveMamba.SPEC_NAMES.items()}
        fields = {inverse.get(k, k): v for k, v in self._selective_fields().items()}
        return SelectiveMamba(**fields, dtype=self.dtype if dtype is None else dtype,
                              strategy=self.strategy if strategy is None else strategy)

    @classmethod
    def from_selective(cls, model: SelectiveMamba, *, dtype=None, strategy: str | None = None) -> MambaMixer:
        """A :class:`SelectiveMamba` in the checkpoint layout (needs ``input_dim == output_dim``).

        ``dt_rank = inner_dim`` with ``dt_proj_weight`` the identity (exact), taps reversed
        (exact), ``A_log = log(A)`` (rounds; ``A`` must be positive).
        """
        if not isinstance(model, SelectiveMamba):
            raise TypeError(f"model: expected a SelectiveMamba, got {type(model).__name__}")
        d = model.dims
        if d["input_dim"] != d["output_dim"]:
            raise ValueError(f"model: expected input_dim == output_dim, got {d['input_dim']} and {d['output_dim']}")
        if np.any(model.A <= 0):
            raise ValueError("model.A: expected positive rates (A_log = log(A)), got a value <= 0")
        p = {k: v.astype(np.float64) for k, v in model.parameters().items()}
        e = d["inner_dim"]
        return cls(in_proj=np.concatenate([p["x_proj"].T, p["z_proj"].T]),
                   conv_weight=p["conv_kernel"][::-1].T, conv_bias=p["conv_bias"],
                   x_proj=np.concatenate([p["dt_proj"].T, p["b_proj"].T, p["c_proj"].T]),
                   dt_proj_weight=np.eye(e), dt_proj_bias=p["delta_bias"], A_log=np.log(p["A"]), D=p["D"],
                   out_proj=p["out_proj"].T, dtype=model.dtype if dtype is None else dtype,
                   strategy=model.strategy if strategy is None else strategy)


_SCRATCH = threading.local()


def _workspace(b: int, l: int, e: int, dtype: np.dtype) -> tuple:
    """Scratch arrays (b, l, e) x3 for the x and z projections and the delta pre-activation.

    One set per thread, shared by every block and kept while the shape and dtype stay the
    same (the layers of a model): fresh multi-megabyte arrays cost page faults on every call.
    Per thread, so blocks and models may be used from several threads at once.
    """
    key = (b, l, e, dtype)
    ws = getattr(_SCRATCH, "ws", None)
    if ws is None or ws[0] != key:
        ws = (key, tuple(np.empty((b, l, e), dtype) for _ in range(3)))
        _SCRATCH.ws = ws
    return ws[1]



def warmup() -> None:
    """Compile (or load from Numba's cache) every kernel the models use, float32 and float64.

    Runs each model once on a tiny input, with both scan strategies and a
    projection large enough to take the parallel path.
    """
    from ._kernels.dense import SERIAL_BELOW

    big = int(np.ceil(SERIAL_BELOW ** (1 / 3))) + 1
    for dt in (_F32, _F64):
        x = np.zeros((1, 2, 2), dtype=dt)
        for model in (DiagonalS4.random(2, 2, 2, seed=0, dtype=dt), CompactMamba.random(2, 2, 2, seed=0, dtype=dt),
                      SelectiveMamba.random(2, 2, 2, 2, 2, seed=0, dtype=dt),
                      MambaMixer.random(2, 2, 2, 2, 1, seed=0, dtype=dt)):
            for strategy in ("sequential", "chunked"):
                model.forward(x, strategy=strategy, chunk_length=1)
        _project(np.zeros((big, big), dtype=dt), np.zeros((big, big), dtype=dt))


__all__ = [
    "DIM_NAMES",
    "CompactMamba",
    "DiagonalS4",
    "MambaMixer",
    "ModelState",
    "SelectiveMamba",
    "StateMismatchError",
    "spec_fields",
    "warmup",
]
