"""The Mamba-1 mixer in the common checkpoint layout, and its conversion to the spec block.

Glossary: ``b`` batch, ``l`` length, ``Dm`` d_model (hidden size), ``E`` d_inner,
``N`` d_state, ``W`` d_conv, ``R`` dt_rank.

Parameters are kept exactly as checkpoints store them (PyTorch's ``[out, in]`` orientation,
C-contiguous, in the compute dtype), which is the layout the decode kernel's row-wise dot
products want and a free transposed view for the prefill's matrix products:

==================  ============  =================================================
name                shape         checkpoint tensor
==================  ============  =================================================
``in_proj``         (2E, Dm)      ``in_proj.weight`` (x rows first, then z)
``conv_weight``     (E, W)        ``conv1d.weight[:, 0, :]`` (taps oldest first)
``conv_bias``       (E,)          ``conv1d.bias`` (zeros when the config has none)
``x_proj``          (R+2N, E)     ``x_proj.weight`` (rows: dt, B, C)
``dt_proj_weight``  (E, R)        ``dt_proj.weight``
``dt_proj_bias``    (E,)          ``dt_proj.bias``
``A_log``           (E, N)        ``A_log`` (the transition rate is ``A = -exp(A_log)``)
``D``               (E,)          ``D``
``out_proj``        (Dm, E)       ``out_proj.weight``
==================  ============  =================================================
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

_SCRATCH = threading.local()

PARAM_NAMES = ("in_proj", "conv_weight", "conv_bias", "x_proj", "dt_proj_weight", "dt_proj_bias", "A_log", "D", "out_proj")


def _ops():
    from nbssm import ops

    return ops


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` elementwise (a new array of x's dtype)."""
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))


def param_shapes(d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int) -> dict:
    """Expected shape of every mixer parameter."""
    D, E, N, W, R = d_model, d_inner, d_state, d_conv, dt_rank
    return {
        "in_proj": (2 * E, D), "conv_weight": (E, W), "conv_bias": (E,), "x_proj": (R + 2 * N, E),
        "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A_log": (E, N), "D": (E,), "out_proj": (D, E),
    }


class MambaMixer:
    """A Mamba-1 mixer (selective SSM block) with checkpoint-layout parameters.

    Parameters
    ----------
    in_proj : (2E, Dm); conv_weight : (E, W); conv_bias : (E,); x_proj : (R+2N, E);
    dt_proj_weight : (E, R); dt_proj_bias : (E,); A_log : (E, N); D : (E,); out_proj : (Dm, E)
        See the module docstring. Arrays are copied into C-contiguous arrays of ``dtype``
        (the caller's arrays are never written); a (E, 1, W) ``conv_weight`` is accepted.
    dtype : {numpy.float32, numpy.float64}

    Notes
    -----
    Per token, with ``x`` the RMS-normalised hidden state (transformers' ``slow_forward``)::

        x_in, z = in_proj[:E] @ x, in_proj[E:] @ x       # (E,), (E,)
        u = silu(conv1d(x_in) + conv_bias)                # causal, depthwise, width W
        dt_low, B, C = split(x_proj @ u)                  # (R,), (N,), (N,)
        delta = softplus(dt_proj_weight @ dt_low + dt_proj_bias)
        h = exp(delta * A) * h + (delta * B) * u          # A = -exp(A_log); h (E, N)
        y = (h @ C + D * u) * silu(z)
        out = out_proj @ y

    Spec: ``SelectiveMambaBlockSpec`` via :meth:`to_spec` (section 4.4 of the spec document).
    """

    def __init__(self, in_proj, conv_weight, conv_bias, x_proj, dt_proj_weight, dt_proj_bias, A_log, D, out_proj,
                 dtype=np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"MambaMixer: dtype must be float32 or float64, got {dtype}")
        conv_weight = np.asarray(conv_weight)
        if conv_weight.ndim == 3 and conv_weight.shape[1] == 1:
            conv_weight = conv_weight[:, 0, :]
        in_proj = np.asarray(in_proj)
        x_proj = np.asarray(x_proj)
        A_log = np.asarray(A_log)
        dt_proj_weight = np.asarray(dt_proj_weight)
        if in_proj.ndim != 2 or in_proj.shape[0] % 2 or x_proj.ndim != 2 or A_log.ndim != 2 or dt_proj_weight.ndim != 2 or conv_weight.ndim != 2:
            raise ValueError(
                "MambaMixer: expected in_proj (2E, Dm), conv_weight (E, W) or (E, 1, W), x_proj (R+2N, E), "
                f"dt_proj_weight (E, R), A_log (E, N); got in_proj {in_proj.shape}, conv_weight {conv_weight.shape}, "
                f"x_proj {x_proj.shape}, dt_proj_weight {dt_proj_weight.shape}, A_log {A_log.shape}"
            )
        E2, Dm = in_proj.shape
        E, N = A_log.shape
        W = conv_weight.shape[1]
        R = dt_proj_weight.shape[1]
        self.d_model, self.d_inner, self.d_state, self.d_conv, self.dt_rank = Dm, E, N, W, R
        self.dtype = dtype
        given = dict(in_proj=in_proj, conv_weight=conv_weight, conv_bias=conv_bias, x_proj=x_proj,
                     dt_proj_weight=dt_proj_weight, dt_proj_bias=dt_proj_bias, A_log=A_log, D=D, out_proj=out_proj)
        for name, shape in param_shapes(Dm, E, N, W, R).items():
            value = given[name]
            if value is None and name == "conv_bias":
                value = np.zeros(E)
            value = np.asarray(value)
            if value.shape != shape:
                raise ValueError(f"MambaMixer: {name} must have shape {shape} (Dm={Dm}, E={E}, N={N}, W={W}, R={R}), got {value.shape}")
            if not np.issubdtype(value.dtype, np.floating) and not np.issubdtype(value.dtype, np.integer):
                raise TypeError(f"MambaMixer: {name} must be a real array, got dtype {value.dtype}")
            setattr(self, name, np.array(value, dtype=dtype, order="C"))
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the derived arrays (after a parameter changed)."""
        self.A_neg = np.ascontiguousarray(-np.exp(self.A_log.astype(self.dtype)))  # (E, N)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, tensors: dict, prefix: str = "", dtype=np.float32) -> "MambaMixer":
        """Build from checkpoint tensors named ``prefix + "in_proj.weight"`` etc."""
        t = tensors
        return cls(
            t[prefix + "in_proj.weight"], t[prefix + "conv1d.weight"], t.get(prefix + "conv1d.bias"),
            t[prefix + "x_proj.weight"], t[prefix + "dt_proj.weight"], t[prefix + "dt_proj.bias"],
            t[prefix + "A_log"], t[prefix + "D"], t[prefix + "out_proj.weight"], dtype=dtype,
        )

    @classmethod
    def random(cls, d_model: int, d_inner: int | None = None, d_state: int = 16, d_conv: int = 4,
               dt_rank: int | None = None, seed: int = 0, dtype=np.float32, scale: float = 0.3) -> "MambaMixer":
        """Random parameters (seeded) in the regime where every part of the mixer matters.

        Projections N(0, scale²), ``A_log`` uniform on [0, 3], Δ around 0.1..1, ``D`` around 1.
        """
        E = 2 * d_model if d_inner is None else d_inner
        R = -(-d_model // 16) if dt_rank is None else dt_rank
        rng = np.random.default_rng(seed)
        delta = rng.uniform(0.1, 1.0, E)
        return cls(
            in_proj=rng.normal(0, scale, (2 * E, d_model)),
            conv_weight=rng.normal(0, 0.5, (E, d_conv)),
            conv_bias=rng.normal(0, scale, E),
            x_proj=rng.normal(0, scale, (R + 2 * d_state, E)),
            dt_proj_weight=rng.normal(0, scale, (E, R)),
            dt_proj_bias=np.log(np.expm1(delta)),
            A_log=rng.uniform(0, 3, (E, d_state)),
            D=rng.normal(1, scale, E),
            out_proj=rng.normal(0, scale, (d_model, E)),
            dtype=dtype,
        )

    def params(self) -> dict:
        """The parameters by name (the arrays themselves, not copies)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    # ------------------------------------------------------------------ running
    def zero_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(conv_history (b, W-1, E), ssm_state (b, E, N))``, zeros."""
        return (np.zeros((batch, self.d_conv - 1, self.d_inner), self.dtype),
                np.zeros((batch, self.d_inner, self.d_state), self.dtype))

    def forward(self, x: np.ndarray, conv_history: np.ndarray | None = None, ssm_state: np.ndarray | None = None):
        """Run a sequence (prefill), continuing from an optional state.

        Parameters
        ----------
        x : (b, l, Dm) array of the mixer dtype (a (l, Dm) array is one sequence)
        conv_history : (b, W-1, E), optional
            The last W-1 inputs of the convolution, oldest first (zeros: a fresh sequence).
        ssm_state : (b, E, N), optional

        Returns
        -------
        out : (b, l, Dm) (or (l, Dm))
        (conv_history, ssm_state) : the final state, new arrays; the arguments are not written.
        """
        ops = _ops()
        x = np.asarray(x)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[2] != self.d_model:
            raise ValueError(f"MambaMixer.forward: x must have shape (batch, length, {self.d_model}), got {x.shape}")
        x = x.astype(self.dtype, copy=False)
        b, l, _ = x.shape
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        if conv_history is None or ssm_state is None:
            h0, s0 = self.zero_state(b)
            conv_history = h0 if conv_history is None else conv_history
            ssm_state = s0 if ssm_state is None else ssm_state
        x_in, z, dt = self._workspace(b, l)                                # reused buffers
        np.matmul(x, self.in_proj[:E].T, out=x_in)                         # (b, l, E)
        np.matmul(x, self.in_proj[E:].T, out=z)                            # (b, l, E)
        u, hist = ops.causal_conv1d(x_in, self.conv_weight, self.conv_bias, history=conv_history,
                                    return_history=True, activation="silu")  # (b, l, E), (b, W-1, E)
        xdbl = u @ self.x_proj.T                                           # (b, l, R+2N)
        np.matmul(xdbl[..., :R], self.dt_proj_weight.T, out=dt)            # (b, l, E)
        B = np.ascontiguousarray(xdbl[..., R:R + N])                       # (b, l, N)
        C = np.ascontiguousarray(xdbl[..., R + N:])                        # (b, l, N)
        y, h = ops.selective_scan(u, dt, self.A_neg, B, C, D=self.D, z=z, delta_bias=self.dt_proj_bias,
                                  delta_softplus=True, initial_state=ssm_state,
                                  return_final_state=True)                 # (b, l, E), (b, E, N)
        out = y @ self.out_proj.T                                          # (b, l, Dm)
        return (out[0] if single else out), (hist, h)

    def _workspace(self, b: int, l: int) -> tuple:
        """Scratch arrays (b, l, E) x3 for x_in, z and the Δ pre-activation.

        One set per thread, shared by every mixer and kept while the shape and dtype stay the
        same (the layers of a model): fresh multi-megabyte arrays cost page faults on every call.
        """
        key = (b, l, self.d_inner, self.dtype)
        ws = getattr(_SCRATCH, "ws", None)
        if ws is None or ws[0] != key:
            ws = (key, tuple(np.empty((b, l, self.d_inner), self.dtype) for _ in range(3)))
            _SCRATCH.ws = ws
        return ws[1]

    # ------------------------------------------------------------------ spec
    def to_spec(self):
        """The ``SelectiveMambaBlockSpec`` this mixer implements (float parameters, as Python floats).

        Spec: section 4.4 of the spec document (the table there). Exact over the reals (see
        :func:`spec_fields`); in floats the multiplied-out ``dt_proj`` rounds differently from
        the low-rank product.
        """
        from nbssm.spec.models import SelectiveMambaBlockSpec

        p = {k: v.astype(np.float64) for k, v in self.params().items()}
        fields = spec_fields(p, self.d_state, self.dt_rank, exp=np.exp)
        return SelectiveMambaBlockSpec(input_dim=self.d_model, inner_dim=self.d_inner, state_dim=self.d_state,
                                       output_dim=self.d_model, conv_width=self.d_conv,
                                       **{k: v.tolist() for k, v in fields.items()})


def spec_fields(p: dict, d_state: int, dt_rank: int, exp: Callable[[Any], Any] = np.exp) -> dict:
    """The 11 ``SelectiveMambaBlockSpec`` fields from checkpoint-layout mixer parameters.

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
    Section 4.4: ``xProj = in_proj[:E].T``, ``zProj = in_proj[E:].T``,
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
