"""Runtime models: diagonal S4, compact Mamba and selective Mamba, driven like RNNs.

Each model runs a batch of sequences ``x (batch, length, input_dim)`` (a 2-D
``(length, input_dim)`` array is one sequence) and returns
``(y, state)``: the outputs ``(batch, length, output_dim)`` and a
:class:`~nbssm.state.ModelState` holding everything needed to continue (SSM
state, convolution history, position). Pass that state back to process the
next chunk, or call :meth:`step` token by token::

    y, state = model.forward(x)                 # whole sequences
    y1, s = model.forward(x[:, :5])             # or in chunks ...
    y2, s = model.forward(x[:, 5:], s)          # ... y1, y2 == y (bitwise, see below)
    yt, s = model.step(x[:, 0], s)              # or one token per sequence: (batch, input_dim)

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
  another dtype or another batch size is rejected with a ``ValueError``
  naming both sides. Inputs and states passed in are never modified.

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
from typing import Any

import numpy as np

from ._validate import _describe, as_float_array, check_int, float_dtype_of
from .state import DIM_NAMES, ModelState

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


def _param(value: Any, name: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """A parameter as the model's own read-only C-contiguous copy, shape and finiteness checked."""
    arr = np.asarray(value)
    float_dtype_of(arr, name)  # TypeError for float16, bool, complex, object
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {_describe(shape)}, got {arr.shape}")
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
        """``(kind, ((dim name, size), ...), dtype name)``; states carry the same one."""
        return (self.kind, tuple(self._dims.items()), self.dtype.name)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._dims.items())
        return f"{self.kind}({inner}, dtype={self.dtype.name})"

    def parameters(self) -> dict:
        """The parameters by name (read-only arrays, the model's own)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def astype(self, dtype) -> "_Model":
        """The same model with parameters converted to ``dtype`` (float32 or float64)."""
        return type(self)(**self.parameters(), dtype=dtype, strategy=self.strategy)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch: int = 1) -> ModelState:
        """The zero state for ``batch`` sequences (zero SSM state and history, position 0)."""
        batch = check_int(batch, "batch", 0)
        return ModelState.zeros(self.kind, self._dims, self.dtype, batch)

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

    # ------------------------------------------------------------------ input
    def _input(self, x: Any, name: str = "x") -> np.ndarray:
        arr = np.asarray(x)
        dt = float_dtype_of(arr, name)
        if arr.dtype.kind == "f" and dt != self.dtype:
            conv = "float32" if self.dtype == _F32 else "float64"
            raise TypeError(
                f"{name}: {arr.dtype} input to a {self.dtype.name} {self.kind}; convert the input "
                f"({name}.astype(np.{conv})) or the model (model.astype(np.{arr.dtype.name}))")
        i = self._dims["input_dim"]
        if arr.ndim not in (2, 3) or arr.shape[-1] != i:
            raise ValueError(f"{name}: expected shape (batch, length, {i}) or (length, {i}), got {arr.shape}")
        return as_float_array(arr, name, self.dtype)

    # ------------------------------------------------------------------ running
    def forward(self, x: Any, state: ModelState | None = None, *, strategy: str | None = None,
                chunk_length: int | None = None) -> tuple:
        """Run whole sequences (or the next chunk of them) from ``state``.

        Parameters
        ----------
        x : array_like, shape (batch, length, input_dim) or (length, input_dim)
            A 2-D array is one sequence (its state has batch 1).
        state : ModelState, optional
            Where to start; the zero state (:meth:`initial_state`) if omitted.
            Must come from a model with the same fingerprint and have the
            input's batch size. It is not modified.
        strategy : {"auto", "sequential", "chunked"}, optional
            The scan strategy (default: the model's ``strategy``). Only
            "sequential" makes chunked and token-by-token runs bitwise equal
            to the whole.
        chunk_length : int, optional
            Chunk length of the chunked strategy (default: the kernel's).

        Returns
        -------
        y : ndarray, shape (batch, length, output_dim) or (length, output_dim)
            Same number of dimensions as ``x``; the model's dtype.
        state : ModelState
            The state after the last token (a new object).
        """
        strategy = self.strategy if strategy is None else strategy
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy: expected one of {_STRATEGIES}, got {strategy!r}")
        x_ = self._input(x)
        single = x_.ndim == 2
        x3 = x_[None] if single else x_
        st = self._state_for(state, x3.shape[0])
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
        i = self._dims["input_dim"]
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
        if l == 0 or self._dims["state_dim"] == 0:
            h, hT = np.zeros_like(s), state.ssm.copy()
        else:
            a = np.broadcast_to(self.A, s.shape)                  # (b, l, n)
            h, hT = linear_scan(a, self.B * s, initial_state=state.ssm, return_final_state=True,
                                strategy=strategy, chunk_length=chunk_length)  # (b, l, n), (b, n)
        y_s = self.C * h + self.D * s                             # (b, l, n)
        new = ModelState(self.kind, self._dims, self.dtype, hT, None, state.position + l)
        return s, y_s, new

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
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> "DiagonalS4":
        """Build from a ``DiagonalS4Spec`` (exact in float64; rounded once in float32)."""
        i, n, o = spec.input_dim, spec.state_dim, spec.output_dim
        ssm = spec.ssm
        return cls(_spec_array(spec.in_proj, (i, n)), _spec_array(spec.out_proj, (n, o)),
                   _spec_array(ssm.A, (n,)), _spec_array(ssm.B, (n,)), _spec_array(ssm.C, (n,)),
                   _spec_array(ssm.D, (n,)), dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, state_dim: int, output_dim: int, *, seed=None, dtype=np.float64,
               strategy: str = "auto") -> "DiagonalS4":
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
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> "CompactMamba":
        """Build from a ``MambaBlockSpec`` (exact in float64; rounded once in float32)."""
        i, n, o = spec.input_dim, spec.state_dim, spec.output_dim
        ssm = spec.ssm
        return cls(_spec_array(spec.in_proj, (i, n)), _spec_array(spec.gate_proj, (i, n)),
                   _spec_array(spec.out_proj, (n, o)), _spec_array(ssm.A, (n,)), _spec_array(ssm.B, (n,)),
                   _spec_array(ssm.C, (n,)), _spec_array(ssm.D, (n,)), dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, state_dim: int, output_dim: int, *, seed=None, dtype=np.float64,
               strategy: str = "auto") -> "CompactMamba":
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
        delta_t = softplus(u_t @ dt_proj + dt_bias)                     (inner_dim,)
        B_t = u_t @ b_proj ;  C_t = u_t @ c_proj                        (state_dim,)
        H_t[d, n] = exp(-delta_t[d] A[d, n]) H_{t-1}[d, n] + delta_t[d] B_t[n] u_t[d]
        y_t[d] = d_skip[d] u_t[d] + sum_n H_t[d, n] C_t[n]
        o_t = (y_t * silu(z_t)) @ out_proj                              (output_dim,)

    Parameters
    ----------
    x_proj, z_proj : array_like, shape (input_dim, inner_dim)
    conv_kernel : array_like, shape (conv_width, inner_dim)
        Newest tap first (row 0 multiplies the current token), the spec's
        orientation; a checkpoint's ``conv1d.weight[d, 0, k]`` is
        ``conv_kernel[conv_width - 1 - k, d]``. ``conv_width`` may be 0
        (``c_t = conv_bias``).
    conv_bias, dt_bias, d_skip : array_like, shape (inner_dim,)
    dt_proj : array_like, shape (inner_dim, inner_dim)
    A, b_proj, c_proj : array_like, shape (inner_dim, state_dim)
        ``A`` holds positive decay rates (the kernel is given ``-A``, which is exact).
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
    _PARAMS = ("x_proj", "z_proj", "conv_kernel", "conv_bias", "dt_proj", "dt_bias", "A",
               "b_proj", "c_proj", "d_skip", "out_proj")

    def __init__(self, x_proj, z_proj, conv_kernel, conv_bias, dt_proj, dt_bias, A, b_proj, c_proj,
                 d_skip, out_proj, *, dtype=None, strategy: str = "auto") -> None:
        params = dict(x_proj=x_proj, z_proj=z_proj, conv_kernel=conv_kernel, conv_bias=conv_bias,
                      dt_proj=dt_proj, dt_bias=dt_bias, A=A, b_proj=b_proj, c_proj=c_proj,
                      d_skip=d_skip, out_proj=out_proj)
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
                  "dt_proj": (e, e), "dt_bias": (e,), "A": (e, n), "b_proj": (e, n), "c_proj": (e, n),
                  "d_skip": (e,), "out_proj": (e, o)}
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
        if l == 0:
            y = np.zeros((b, 0, e), dtype=self.dtype)
            hist, hT = state.conv.copy(), state.ssm.copy()
        else:
            u, hist = causal_conv1d(p, self._conv_weight, self.conv_bias, history=state.conv,
                                    return_history=True, activation="silu")  # (b, l, e), (b, w-1, e)
            udbc = _project(u, self._u_proj)                         # (b, l, e + 2n)
            dt_pre = udbc[..., :e]                                   # (b, l, e)
            Bt, Ct = udbc[..., e:e + n], udbc[..., e + n:]           # (b, l, n) each
            if e == 0:
                y, hT = np.zeros((b, l, 0), dtype=self.dtype), state.ssm.copy()
            else:
                y, hT = selective_scan(u, dt_pre, self._neg_A, Bt, Ct, D=self.d_skip, z=z,
                                       delta_bias=self.dt_bias, delta_softplus=True,
                                       initial_state=state.ssm, return_final_state=True,
                                       strategy=strategy, chunk_length=chunk_length)  # (b, l, e), (b, e, n)
        out = _project(y, self.out_proj)                             # (b, l, o)
        new = ModelState(self.kind, d, self.dtype, np.ascontiguousarray(hT), np.ascontiguousarray(hist),
                         state.position + l)
        return out, new

    def to_spec(self):
        """The spec model (exact). Returns ``nbssm.spec.models.SelectiveMambaBlockSpec``."""
        from .spec.models import SelectiveMambaBlockSpec

        d = self._dims
        return SelectiveMambaBlockSpec(d["input_dim"], d["inner_dim"], d["state_dim"], d["output_dim"],
                                       d["conv_width"], **{k: _to_list(v) for k, v in self.parameters().items()})

    @classmethod
    def from_spec(cls, spec, *, dtype=np.float64, strategy: str = "auto") -> "SelectiveMamba":
        """Build from a ``SelectiveMambaBlockSpec`` (exact in float64; rounded once in float32)."""
        shapes = spec.field_shapes()
        return cls(**{k: _spec_array(getattr(spec, k), shapes[k]) for k in cls._PARAMS},
                   dtype=dtype, strategy=strategy)

    @classmethod
    def random(cls, input_dim: int, inner_dim: int, state_dim: int, output_dim: int, conv_width: int = 4, *,
               seed=None, dtype=np.float64, strategy: str = "auto") -> "SelectiveMamba":
        """A random model with Mamba-like initialisation.

        Projections ``N(0, 1/fan_in)``; convolution taps and bias
        ``U(-1/sqrt(w), 1/sqrt(w))``; ``dt_proj ~ N(0, 0.1^2/inner_dim)``;
        ``dt_bias`` the inverse softplus of a step log-uniform in
        ``[1e-3, 1e-1]``; ``A[d, n] = n + 1`` (S4D-real); ``d_skip = 1``.
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
            dt_bias=dt0 + np.log(-np.expm1(-dt0)),
            A=np.tile(np.arange(1, n + 1, dtype=np.float64), (e, 1)),
            b_proj=rng.standard_normal((e, n)) / np.sqrt(max(e, 1)),
            c_proj=rng.standard_normal((e, n)) / np.sqrt(max(e, 1)),
            d_skip=np.ones(e),
            out_proj=rng.standard_normal((e, o)) / np.sqrt(max(e, 1)),
            dtype=dtype, strategy=strategy,
        )


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
                      SelectiveMamba.random(2, 2, 2, 2, 2, seed=0, dtype=dt)):
            for strategy in ("sequential", "chunked"):
                model.forward(x, strategy=strategy, chunk_length=1)
        _project(np.zeros((big, big), dtype=dt), np.zeros((big, big), dtype=dt))


__all__ = ["DiagonalS4", "CompactMamba", "SelectiveMamba", "ModelState", "DIM_NAMES", "warmup"]
