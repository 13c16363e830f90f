"""Plain numpy references of the three kernels, and the random inputs they are tested on.

``linear_scan_ref``, ``selective_scan_ref`` and ``causal_conv1d_ref`` take
exactly the arguments of :func:`nbssm.linear_scan`, :func:`nbssm.selective_scan`
and :func:`nbssm.causal_conv1d` and return exactly what they return (the same
shapes, dtypes, final states, 2-D handling), as mamba_ssm pairs
``selective_scan_fn`` with ``selective_scan_ref``. Each is a readable loop
over time, vectorised over the other axes, with numpy's ``exp``/``log``; it
shares no code with the kernels (only the argument checking of
:mod:`nbssm._validate`, so that bad arguments fail the same way). Tests and
benchmarks compare the kernels against them with the tolerances of
:mod:`nbssm.tolerances`.

``strategy`` and ``chunk_length`` are accepted and ignored: the references
compute the recurrence in time order (the kernels' chunked strategy equals it
up to rounding). ``out`` is honoured like the ops do. The compute dtype
follows the ops' rule (float64 if a sequence input is float64 or integer, else
float32).

Glossary: ``b`` batch, ``l`` length, ``d`` channels, ``n`` state, ``w``
convolution width.
"""

from __future__ import annotations

import numpy as np

from ._validate import as_float_array, check_out, optional_float_array, result_dtype

__all__ = ["causal_conv1d_ref", "causal_conv1d_vjp_ref", "linear_scan_ref", "linear_scan_vjp_ref", "random_inputs",
           "selective_scan_ref", "selective_scan_vjp_ref"]


def _sequence(x, name: str):
    """``(array as (b, l, d), unbatched)``: a 2-D ``(l, d)`` input is one sequence."""
    if x is None:
        raise TypeError(f"{name}: expected an array of shape (batch, length, channels) or (length, channels), got None")
    arr = np.asarray(x)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected shape (batch, length, channels) or (length, channels), got {arr.shape}")
    return arr, False


def _state(x, name: str, dt, shape, unbatched: bool):
    """An optional state argument as a float array of ``shape`` (batch axis first)."""
    if x is None:
        return np.zeros(shape, dtype=dt)
    arr = np.asarray(x)
    if unbatched:
        arr = as_float_array(arr, name, dt, shape=shape[1:])[None]
    else:
        arr = as_float_array(arr, name, dt, shape=shape)
    return np.array(arr, dtype=dt)


def _finish(outputs, state, unbatched, out, return_final_state, inputs):
    """Drop the batch axis of a 2-D call, honour ``out``, append the final state if asked."""
    y = outputs[0] if unbatched else outputs
    s = state[0] if unbatched else state
    if out is not None:
        check_out(out, y.shape, y.dtype, inputs)
        out[...] = y
        y = out
    return (y, s) if return_final_state else y


def linear_scan_ref(a, b, initial_state=None, return_final_state=False, strategy="auto", chunk_length=None,
                    out=None):
    """``h_t = a_t * h_{t-1} + b_t`` in time order; the reference of :func:`nbssm.linear_scan`.

    Parameters and returns: those of :func:`nbssm.linear_scan`.
    """
    a_, unbatched = _sequence(a, "a")
    b_, _ = _sequence(b, "b")
    dt = result_dtype((a_, "a"), (b_, "b"))
    a_ = as_float_array(a_, "a", dt)  # (b, l, d)
    batch, length, channels = a_.shape
    b_ = as_float_array(b_, "b", dt, shape=(batch, length, channels))  # (b, l, d)
    h = _state(initial_state, "initial_state", dt, (batch, channels), unbatched)  # (b, d)
    hs = np.empty((batch, length, channels), dtype=dt)  # (b, l, d)
    with np.errstate(all="ignore"):
        for t in range(length):
            h = a_[:, t] * h + b_[:, t]  # (b, d)
            hs[:, t] = h  # (b, d)
    return _finish(hs, h, unbatched, out, return_final_state, {"a": a, "b": b, "initial_state": initial_state})


def _softplus(x):
    """``log(1 + exp(x))`` without overflow: ``x`` itself where ``exp`` would overflow."""
    return np.logaddexp(np.zeros_like(x), x)


def _sigmoid(x):
    """Plain sigmoid ``1 / (1 + exp(-x))``."""
    return 1 / (1 + np.exp(-x))


def _selective_inputs(u, delta, A, B, C, D, z, delta_bias):
    """The selective scan's arguments checked and as float arrays of one dtype ``dt``, batched:
    ``u, delta, z (b, l, d)``, ``A (d, n)``, ``B, C (b, l, n)``, ``D, delta_bias (d,)`` (with the
    ``has_`` flags of the optional ones), then ``dt`` and whether the input was unbatched."""
    u_, unbatched = _sequence(u, "u")
    delta_, _ = _sequence(delta, "delta")
    dt = result_dtype((u_, "u"), (delta_, "delta"))
    u_ = as_float_array(u_, "u", dt)  # (b, l, d)
    batch, length, channels = u_.shape
    seq = (batch, length, channels)
    delta_ = as_float_array(delta_, "delta", dt, shape=seq)  # (b, l, d)
    A_ = as_float_array(A, "A", dt, shape=(channels, "state"))  # (d, n)
    nstate = A_.shape[1]
    B_ = as_float_array(B if not unbatched or B is None else np.asarray(B)[None], "B", dt,
                        shape=(batch, length, nstate))  # (b, l, n)
    C_ = as_float_array(C if not unbatched or C is None else np.asarray(C)[None], "C", dt,
                        shape=(batch, length, nstate))  # (b, l, n)
    D_, has_D = optional_float_array(D, "D", dt, shape=(channels,))  # (d,)
    z_, has_z = optional_float_array(z if not unbatched or z is None else np.asarray(z)[None], "z", dt,
                                     shape=seq)  # (b, l, d)
    bias_, has_bias = optional_float_array(delta_bias, "delta_bias", dt, shape=(channels,))  # (d,)
    return u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, dt, unbatched


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_final_state=False, strategy="auto", chunk_length=None, out=None):
    """The fused Mamba selective scan, three visible steps; the reference of :func:`nbssm.selective_scan`.

    Discretize (``dl = softplus(delta + delta_bias)``), recur
    (``h = exp(dl * A) * h + (dl * B) * u``), read out (``y = C . h + D * u``),
    gate (``y * silu(z)``). ``A`` as used in ``exp(delta * A)``: negative for decay.
    Parameters and returns: those of :func:`nbssm.selective_scan`.
    """
    (u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, dt, unbatched) = _selective_inputs(
        u, delta, A, B, C, D, z, delta_bias)
    batch, length, channels = u_.shape
    nstate = A_.shape[1]
    seq = (batch, length, channels)
    h = _state(initial_state, "initial_state", dt, (batch, channels, nstate), unbatched)  # (b, d, n)
    y = np.empty(seq, dtype=dt)  # (b, l, d)
    with np.errstate(all="ignore"):
        dl = delta_ + bias_ if has_bias else np.array(delta_)  # (b, l, d)
        if delta_softplus:
            dl = _softplus(dl)  # (b, l, d)
        for t in range(length):
            dlt = dl[:, t, :, None]  # (b, d, 1)
            decay = np.exp(dlt * A_)  # (b, d, n)
            h = decay * h + (dlt * B_[:, t, None, :]) * u_[:, t, :, None]  # (b, d, n)
            yt = np.sum(h * C_[:, t, None, :], axis=2)  # (b, d)
            if has_D:
                yt = yt + D_ * u_[:, t]  # (b, d)
            if has_z:
                zt = z_[:, t]  # (b, d)
                yt = yt * (zt * _sigmoid(zt))  # (b, d)
            y[:, t] = yt  # (b, d)
    inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
              "initial_state": initial_state}
    return _finish(y, h, unbatched, out, return_final_state, inputs)


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None,
                      out=None):
    """Depthwise causal convolution by explicit left padding; the reference of :func:`nbssm.causal_conv1d`.

    ``out[t] = bias + sum_i weight[:, i] * x[t - (w-1-i)]`` with the ``w-1``
    positions before the first token read from ``initial_state`` (zeros if
    omitted); ``weight (d, w)`` oldest tap first. Parameters and returns:
    those of :func:`nbssm.causal_conv1d`.
    """
    x_, unbatched = _sequence(x, "x")
    dt = result_dtype((x_, "x"))
    x_ = as_float_array(x_, "x", dt)  # (b, l, d)
    batch, length, channels = x_.shape
    w = np.asarray(weight) if weight is not None else None
    if w is not None and w.ndim == 3 and w.shape[1] == 1:
        w = w[:, 0, :]  # (d, w)
    w = as_float_array(w, "weight", dt, shape=(channels, "width"))  # (d, w)
    width = w.shape[1]
    pad = max(width - 1, 0)
    bias_, has_bias = optional_float_array(bias, "bias", dt, shape=(channels,))  # (d,)
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    hist = _state(initial_state, "initial_state", dt, (batch, pad, channels), unbatched)  # (b, w-1, d)
    xp = np.concatenate([hist, x_], axis=1)  # (b, w-1+l, d)
    y = np.empty((batch, length, channels), dtype=dt)  # (b, l, d)
    with np.errstate(all="ignore"):
        for t in range(length):
            acc = np.broadcast_to(bias_ if has_bias else np.zeros(channels, dt), (batch, channels))  # (b, d)
            for i in range(width):  # weight[:, i] multiplies the token w-1-i steps back
                acc = acc + w[:, i] * xp[:, t + pad - (width - 1 - i)]  # (b, d)
            y[:, t] = acc * _sigmoid(acc) if activation == "silu" else acc  # (b, d)
    final = np.array(xp[:, xp.shape[1] - pad:], dtype=dt)  # (b, w-1, d)
    inputs = {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state}
    return _finish(y, final, unbatched, out, return_final_state, inputs)


def random_inputs(kind: str, shape, dtype=np.float64, seed: int = 0, *, extras: bool = True,
                  initial_state: bool = True) -> dict:
    """Seeded random keyword arguments of one op, in a realistic (Mamba-like) range.

    Parameters
    ----------
    kind : {"linear", "selective", "conv"}
        The op: :func:`nbssm.linear_scan`, :func:`nbssm.selective_scan`,
        :func:`nbssm.causal_conv1d` (and their ``*_ref``).
    shape : tuple
        ``(b, l, d)`` for "linear", ``(b, l, d, n)`` for "selective",
        ``(b, l, d, w)`` for "conv".
    dtype : float32 or float64
    seed : int
    extras : bool
        "selective" only: also ``D``, ``z``, ``delta_bias`` and
        ``delta_softplus=True``; without them ``delta`` is already positive
        (``exp`` of the pre-softplus draw) so that the recurrence contracts.
    initial_state : bool
        Also draw ``initial_state``.

    Returns
    -------
    dict
        "linear": ``a`` uniform in (-1, 1), ``b`` standard normal, ``initial_state (b, d)``.
        "selective": ``u, delta, A, B, C`` (``A = -exp(N(0, 0.5))``, negative as in
        Mamba; ``delta ~ N(-1, 0.5)`` before softplus), the extras, ``initial_state (b, d, n)``.
        "conv": ``x``, ``weight (d, w)``, ``bias (d,)``, ``initial_state (b, w-1, d)``.
        Every other array is standard normal. The draws are made in float64, then cast.
    """
    rng = np.random.default_rng(seed)

    def normal(*s):
        return rng.standard_normal(s).astype(dtype)

    if kind == "linear":
        batch, length, channels = shape
        kw = {"a": rng.uniform(-1.0, 1.0, (batch, length, channels)).astype(dtype),  # (b, l, d)
              "b": normal(batch, length, channels)}  # (b, l, d)
        if initial_state:
            kw["initial_state"] = normal(batch, channels)  # (b, d)
        return kw
    if kind == "selective":
        batch, length, channels, nstate = shape
        kw = {
            "u": normal(batch, length, channels),  # (b, l, d)
            "delta": (rng.standard_normal((batch, length, channels)) * 0.5 - 1.0).astype(dtype),  # (b, l, d)
            "A": (-np.exp(rng.standard_normal((channels, nstate)) * 0.5)).astype(dtype),  # (d, n)
            "B": normal(batch, length, nstate),  # (b, l, n)
            "C": normal(batch, length, nstate),  # (b, l, n)
        }
        if not extras:
            kw["delta"] = np.exp(kw["delta"].astype(np.float64)).astype(dtype)  # (b, l, d)
        else:
            kw["D"] = normal(channels)  # (d,)
            kw["z"] = normal(batch, length, channels)  # (b, l, d)
            kw["delta_bias"] = (rng.standard_normal(channels) * 0.1).astype(dtype)  # (d,)
            kw["delta_softplus"] = True
        if initial_state:
            kw["initial_state"] = normal(batch, channels, nstate)  # (b, d, n)
        return kw
    if kind == "conv":
        batch, length, channels, width = shape
        kw = {"x": normal(batch, length, channels),  # (b, l, d)
              "weight": normal(channels, width),  # (d, w)
              "bias": normal(channels)}  # (d,)
        if initial_state:
            kw["initial_state"] = normal(batch, max(width - 1, 0), channels)  # (b, w-1, d)
        return kw
    raise ValueError(f"kind: expected one of ('linear', 'selective', 'conv'), got {kind!r}")


# --------------------------------------------------------------------------- backward (VJPs)
#
# Plain reverse-mode of the three references above: every forward state is kept (memory
# O(b * l * d * n), fine for tests), then one loop runs backward in time. They share no code
# with the kernels of nbssm._kernels.vjp; the tests compare the two tightly.


def _grad_like(g, name: str, dt, shape, unbatched: bool):
    """``grad_*`` argument as a float array of ``shape`` (batch axis first); zeros if None."""
    if g is None:
        return np.zeros(shape, dtype=dt)
    arr = np.asarray(g)
    if unbatched:
        return np.array(as_float_array(arr, name, dt, shape=shape[1:])[None], dtype=dt)
    return np.array(as_float_array(arr, name, dt, shape=shape), dtype=dt)


def _unbatch(x, unbatched: bool):
    return None if x is None else (x[0] if unbatched else x)


def _sigmoid_any(x):
    return 1 / (1 + np.exp(-x))


def linear_scan_vjp_ref(grad_y, a, b, initial_state=None, grad_final_state=None):
    """Reverse-mode of :func:`linear_scan_ref`: ``(grad_a, grad_b, grad_initial_state)``.

    ``grad_y`` has the shape of ``h``; ``grad_final_state`` (optional) that of the final
    state. ``grad_initial_state`` is None when ``initial_state`` is None.
    """
    a_, unbatched = _sequence(a, "a")
    b_, _ = _sequence(b, "b")
    dt = result_dtype((a_, "a"), (b_, "b"))
    a_ = as_float_array(a_, "a", dt)  # (b, l, d)
    batch, length, channels = a_.shape
    b_ = as_float_array(b_, "b", dt, shape=(batch, length, channels))
    h0 = _state(initial_state, "initial_state", dt, (batch, channels), unbatched)  # (b, d)
    gy = _grad_like(grad_y, "grad_y", dt, (batch, length, channels), unbatched)
    gh = _grad_like(grad_final_state, "grad_final_state", dt, (batch, channels), unbatched)
    hs = np.empty((batch, length + 1, channels), dtype=dt)  # h_0 .. h_T
    hs[:, 0] = h0
    ga = np.empty_like(a_)
    gb = np.empty_like(b_)
    with np.errstate(all="ignore"):
        for t in range(length):
            hs[:, t + 1] = a_[:, t] * hs[:, t] + b_[:, t]
        for t in range(length - 1, -1, -1):
            gh = gh + gy[:, t]  # dL/dh_t
            ga[:, t] = gh * hs[:, t]
            gb[:, t] = gh
            gh = gh * a_[:, t]  # dL/dh_{t-1}
    return (_unbatch(ga, unbatched), _unbatch(gb, unbatched),
            None if initial_state is None else _unbatch(gh, unbatched))


def selective_scan_vjp_ref(grad_y, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, grad_final_state=None):
    """Reverse-mode of :func:`selective_scan_ref`.

    Returns
    -------
    dict
        ``u, delta, A, B, C, D, z, delta_bias, initial_state`` -> gradient (None for an
        argument given as None), shapes of the arguments; ``A, D, delta_bias`` summed over
        the batch.
    """
    (u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, dt, unbatched) = _selective_inputs(
        u, delta, A, B, C, D, z, delta_bias)
    batch, length, channels = u_.shape
    nstate = A_.shape[1]
    seq = (batch, length, channels)
    h0 = _state(initial_state, "initial_state", dt, (batch, channels, nstate), unbatched)  # (b, d, n)
    gy = _grad_like(grad_y, "grad_y", dt, seq, unbatched)  # (b, l, d)
    gh = _grad_like(grad_final_state, "grad_final_state", dt, (batch, channels, nstate), unbatched)
    with np.errstate(all="ignore"):
        pre = delta_ + bias_ if has_bias else np.array(delta_)  # (b, l, d)
        dl = _softplus(pre) if delta_softplus else pre
        hs = np.empty((batch, length + 1, channels, nstate), dtype=dt)  # h_0 .. h_T
        hs[:, 0] = h0
        for t in range(length):
            dlt = dl[:, t, :, None]
            hs[:, t + 1] = np.exp(dlt * A_) * hs[:, t] + (dlt * B_[:, t, None, :]) * u_[:, t, :, None]
        gu = np.zeros(seq, dtype=dt)
        gdl = np.zeros(seq, dtype=dt)
        gz = np.zeros(seq if has_z else (batch, length, 0), dtype=dt)
        gA = np.zeros((channels, nstate), dtype=dt)
        gB = np.zeros((batch, length, nstate), dtype=dt)
        gC = np.zeros((batch, length, nstate), dtype=dt)
        gD = np.zeros(channels, dtype=dt) if has_D else None
        for t in range(length - 1, -1, -1):
            h = hs[:, t + 1]  # (b, d, n)
            g = gy[:, t]  # (b, d)
            if has_z:
                zt = z_[:, t]
                s = _sigmoid_any(zt)
                yraw = np.sum(h * C_[:, t, None, :], axis=2) + (D_ * u_[:, t] if has_D else 0)
                gz[:, t] = g * yraw * (s * (1 + zt * (1 - s)))
                g = g * (zt * s)
            if has_D:
                gD += np.sum(g * u_[:, t], axis=0)
                gu[:, t] += g * D_
            gC[:, t] = np.sum(g[:, :, None] * h, axis=1)
            gh = gh + g[:, :, None] * C_[:, t, None, :]  # dL/dh_t (b, d, n)
            dlt = dl[:, t, :, None]  # (b, d, 1)
            at = np.exp(dlt * A_)  # (b, d, n)
            ga = gh * hs[:, t]  # dL/da_t
            gA += np.sum(ga * at * dlt, axis=0)
            gdl[:, t] = np.sum(ga * at * A_ + gh * B_[:, t, None, :] * u_[:, t, :, None], axis=2)
            gB[:, t] = np.sum(gh * dlt * u_[:, t, :, None], axis=1)
            gu[:, t] += np.sum(gh * dlt * B_[:, t, None, :], axis=2)
            gh = gh * at  # dL/dh_{t-1}
        gpre = gdl * _sigmoid_any(pre) if delta_softplus else gdl
    grads = {
        "u": _unbatch(gu, unbatched), "delta": _unbatch(gpre, unbatched), "A": gA,
        "B": _unbatch(gB, unbatched), "C": _unbatch(gC, unbatched), "D": gD,
        "z": _unbatch(gz, unbatched) if has_z else None, "delta_bias": np.sum(gpre, axis=(0, 1)) if has_bias else None,
        "initial_state": None if initial_state is None else _unbatch(gh, unbatched),
    }
    return grads


def causal_conv1d_vjp_ref(grad_y, x, weight, bias=None, initial_state=None, activation=None,
                          grad_final_state=None):
    """Reverse-mode of :func:`causal_conv1d_ref`: ``(grad_x, grad_weight, grad_bias, grad_initial_state)``.

    ``grad_weight`` has shape ``(d, w)`` (oldest tap first); ``grad_bias`` / ``grad_initial_state``
    are None when ``bias`` / ``initial_state`` are None.
    """
    x_, unbatched = _sequence(x, "x")
    dt = result_dtype((x_, "x"))
    x_ = as_float_array(x_, "x", dt)  # (b, l, d)
    batch, length, channels = x_.shape
    w = np.asarray(weight) if weight is not None else None
    if w is not None and w.ndim == 3 and w.shape[1] == 1:
        w = w[:, 0, :]
    w = as_float_array(w, "weight", dt, shape=(channels, "width"))  # (d, w)
    width = w.shape[1]
    pad = max(width - 1, 0)
    bias_, has_bias = optional_float_array(bias, "bias", dt, shape=(channels,))
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    hist = _state(initial_state, "initial_state", dt, (batch, pad, channels), unbatched)
    gy = _grad_like(grad_y, "grad_y", dt, (batch, length, channels), unbatched)
    gfin = _grad_like(grad_final_state, "grad_final_state", dt, (batch, pad, channels), unbatched)
    xp = np.concatenate([hist, x_], axis=1)  # (b, w-1+l, d)
    gxp = np.zeros_like(xp)
    gw = np.zeros((channels, width), dtype=dt)
    gbias = np.zeros(channels, dtype=dt)
    with np.errstate(all="ignore"):
        for t in range(length - 1, -1, -1):
            acc = np.broadcast_to(bias_ if has_bias else np.zeros(channels, dt), (batch, channels))
            for i in range(width):
                acc = acc + w[:, i] * xp[:, t + pad - (width - 1 - i)]
            g = gy[:, t]
            if activation == "silu":
                s = _sigmoid_any(acc)
                g = g * (s * (1 + acc * (1 - s)))
            gbias += np.sum(g, axis=0)
            for i in range(width):
                src = t + pad - (width - 1 - i)
                gw[:, i] += np.sum(g * xp[:, src], axis=0)
                gxp[:, src] += g * w[:, i]
        if pad:
            gxp[:, xp.shape[1] - pad:] += gfin
    gx = gxp[:, pad:]
    gh = gxp[:, :pad]
    return (_unbatch(np.ascontiguousarray(gx), unbatched), gw, gbias if has_bias else None,
            None if initial_state is None else _unbatch(np.ascontiguousarray(gh), unbatched))
