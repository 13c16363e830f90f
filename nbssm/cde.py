"""Linear controlled differential equations (linear CDEs), batched.

The paper's model ("Theoretical Foundations of Deep Selective State-Space Models", Muca Cirone
et al., NeurIPS 2024, section 1 of ``paper/notes.md``): the state ``Z_t`` in ``R^n`` solves

    Z_t = Z_0 + sum_i int_0^t A_i Z_s domega^i_s + int_0^t B dxi_s,

driven by two gate paths ``omega`` (``dw`` channels) and ``xi`` (``dx`` channels). For
piecewise-linear gates with increments ``domega[k]``, ``dxi[k]`` on step ``k`` the exact step is
``Z <- exp(M_k) Z + phi1(M_k) B dxi[k]`` with ``M_k = sum_i domega[k, i] A_i`` and
``phi1(M) = sum_j M^j / (j+1)!``.

- :func:`linear_cde_scan`: dense ``A_i``. The step is the order-``p`` Taylor truncation of the
  exact step, evaluated with matrix-vector products only (Horner's rule, ``p`` products per
  step); or an Euler step. Two backends: ``"blas"`` (all paths of a block at once, one GEMM
  ``(block, dw*n) @ (dw*n, n)`` per Horner stage) and ``"numba"`` (parallel over paths).
- :func:`diagonal_cde_scan`: diagonal ``A_i = diag(a_i)``, exact elementwise step.

Glossary: ``b`` batch, ``T`` steps, ``n`` state size, ``dw``/``dx`` gate channels.

Conventions (those of :mod:`nbssm.ops`): ``initial_state=`` is ``Z_0`` (zeros when omitted);
2-D gates ``(T, channels)`` are one path and give unbatched states ``(n,)``, 3-D gates are
``(b, T, channels)``. The scans return the final state ``Z_T`` (the paper's readout point)
and, with ``return_states=True``, every state as well. NaN and Inf are refused in every
array argument (``ValueError`` naming it); inputs are never modified.

Taylor truncation error (per step, exact arithmetic): with ``mu = ||M_k||`` and
``nu = ||B dxi[k]||`` the step error is at most
``(mu**(p+1)/(p+1)! ||Z|| + mu**p/(p+1)! nu) * exp(mu)``; over ``T`` steps errors add up
amplified by at most ``exp(sum_k mu_k)``. ``proofs_notes/linear_cde.md`` has the bound and the
measured errors.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np

from nbssm._paper_inputs import check_bool, check_finite, check_int, check_output_size, real_array

__all__ = ["linear_cde_scan", "diagonal_cde_scan", "increments", "taylor_error_bound", "LinearCDEGrads",
           "linear_cde_scan_vjp", "diagonal_cde_scan_vjp"]


#: largest Taylor order (``1/(order+1)!`` stays a normal float64)
MAX_ORDER = 150


def increments(path) -> np.ndarray:
    """Per-step increments of sampled gate paths: ``path[..., 1:, :] - path[..., :-1, :]``.

    Parameters
    ----------
    path : array_like, shape (length, channels) or (batch, length, channels)
        float32, float64 or integer (integers are converted to float64 first, so unsigned
        paths give negative increments). NaN and Inf propagate into the increments.

    Returns
    -------
    ndarray, shape (length - 1, channels) or (batch, length - 1, channels)
        ``path``'s float dtype; an empty first axis for ``length <= 1``.
    """
    p = real_array(path, "path")
    if p.ndim not in (2, 3):
        raise ValueError(f"path: expected shape (length, channels) or (batch, length, channels), got {p.shape}")
    return np.diff(p, axis=-2)


def taylor_error_bound(mu: float, nu: float, z_norm: float, order: int) -> float:
    """Bound on one Taylor step's error: ``(mu^(p+1)/(p+1)! |Z| + mu^p/(p+1)! nu) e^mu``.

    ``mu = ||M||``, ``nu = ||B dxi||``, ``z_norm = ||Z||`` in any submultiplicative norm: finite
    and ``>= 0`` (``ValueError`` otherwise). Returns ``inf`` when the bound overflows.
    """
    p = check_int(order, "order", 1, MAX_ORDER)
    vals = []
    for name, x in (("mu", mu), ("nu", nu), ("z_norm", z_norm)):
        try:
            x = float(x)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected a real number, got {type(x).__name__}") from None
        if not (math.isfinite(x) and x >= 0.0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {x}")
        vals.append(x)
    mu, nu, z_norm = vals
    try:
        return (mu ** (p + 1) / math.factorial(p + 1) * z_norm + mu**p / math.factorial(p + 1) * nu) * math.exp(mu)
    except OverflowError:
        return math.inf



def _real_or_zeros(x, name: str, shape: tuple, note: str = "") -> np.ndarray:
    """``x`` as a real float64 array of ``shape`` (a clear error otherwise), zeros when None."""
    if x is None:
        return np.zeros(shape)
    x = real_array(x, name)
    if x.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}{note}, got {x.shape}")
    return x

def _prepare(A, B, domega, dxi, initial_state, diagonal):
    """Validate the five arrays; return them batched (3-D gates, 2-D states) and the layout."""
    a_name = "a" if diagonal else "A"
    a_doc = "(dw, n)" if diagonal else "(dw, n, n)"
    A = real_array(A, a_name)
    B = real_array(B, "B")
    domega = real_array(domega, "domega")
    dxi = real_array(dxi, "dxi")
    if A.ndim != (2 if diagonal else 3) or (not diagonal and A.shape[1] != A.shape[2]):
        raise ValueError(f"{a_name}: expected shape {a_doc}, got {A.shape}")
    dw, n = A.shape[0], A.shape[1]
    if B.ndim != 2 or B.shape[0] != n:
        raise ValueError(f"B: expected shape (n, dx) with n = {n}, got {B.shape}")
    dx = B.shape[1]
    if domega.ndim not in (2, 3):
        raise ValueError(f"domega: expected shape (b, T, dw) or (T, dw), got {domega.shape}")
    unbatched = domega.ndim == 2
    lead = domega.shape[:-1]  # (T,) or (b, T)
    if domega.shape[-1] != dw:
        raise ValueError(f"domega: expected shape {lead + (dw,)} (dw = {a_name}.shape[0]), got {domega.shape}")
    if dxi.shape != lead + (dx,):
        raise ValueError(f"dxi: expected shape {lead + (dx,)} (like domega, dx = B.shape[1]), got {dxi.shape}")
    state_shape = (n,) if unbatched else (lead[0], n)
    initial_state = _real_or_zeros(initial_state, "initial_state", state_shape)
    for name, arr in ((a_name, A), ("B", B), ("domega", domega), ("dxi", dxi), ("initial_state", initial_state)):
        check_output_size(name, arr.shape, what="a float64 copy")  # also catches zero-stride views
        check_finite(arr, name)
    if unbatched:
        domega, dxi, initial_state = domega[None], dxi[None], initial_state[None]
    out_dtype = np.float32 if domega.dtype == np.float32 else np.float64
    return A, B, domega, dxi, initial_state, unbatched, out_dtype


_MISSING = object()


def _renamed(initial_state, z0, return_states):
    """Resolve the deprecated keyword ``z0`` (now ``initial_state``); check ``return_states``."""
    if z0 is not _MISSING:
        warnings.warn("z0= is deprecated, use initial_state=", DeprecationWarning, stacklevel=3)
        if initial_state is not None:
            raise TypeError("initial_state: expected either initial_state= or its deprecated name z0=, got both")
        initial_state = z0
    return initial_state, check_bool(return_states, "return_states")


def _finish(final, states, unbatched, out_dtype, return_states):
    final = final.astype(out_dtype, copy=False)
    if unbatched:
        final = final[0]
    if not return_states:
        return final
    states = states.astype(out_dtype, copy=False)
    if unbatched:
        states = states[0]
    return final, states


def _apply_m(r, AS, w, g, mr, n):
    """``mr[p] = M_p r[p]`` for every path ``p`` of a block, with ``M_p = sum_i w[p, i] A_i``.

    Rows are scaled first, ``g[:, i*n:(i+1)*n] = w[:, i] * r``, then one GEMM
    ``mr = g @ AS`` with ``AS = [A_0^T; A_1^T; ...]`` (``(bs, dw*n) @ (dw*n, n)``): the sum over
    ``i`` happens inside BLAS.
    """
    for i in range(w.shape[1]):
        np.multiply(r, w[:, i:i + 1], out=g[:, i * n:(i + 1) * n])
    np.matmul(g, AS, out=mr)  # (bs, n)


def _blas_scan(A, B, domega, dxi, z0, order, euler, return_states, block_size, dtype):
    """Dense scan through BLAS GEMMs, in blocks of paths (see linear_cde_scan)."""
    dw, n, _ = A.shape
    b, T, _ = domega.shape
    # stacked transposes: [w_0 R, w_1 R, ...] @ AS = sum_i w_i R A_i^T = (M R^T)^T
    AS = np.ascontiguousarray(A.transpose(0, 2, 1).reshape(dw * n, n), dtype=dtype)  # (dw*n, n)
    BT = np.ascontiguousarray(B.T, dtype=dtype)  # (dx, n)
    invfact = [1.0 / math.factorial(j) for j in range(order + 2)]
    final = np.empty((b, n), dtype=dtype)
    states = np.empty((b, T + 1, n), dtype=dtype) if return_states else None
    g = None
    for s in range(0, b, block_size):
        e = min(b, s + block_size)
        z = np.array(z0[s:e], dtype=dtype)  # (bs, n), a copy
        dwb = np.asarray(domega[s:e], dtype=dtype)  # (bs, T, dw)
        v_all = np.asarray(dxi[s:e], dtype=dtype) @ BT  # (bs, T, n)
        bs = e - s
        if g is None or g.shape[0] != bs:
            g = np.empty((bs, dw * n), dtype=dtype)
        mr = np.empty((bs, n), dtype=dtype)
        if states is not None:
            states[s:e, 0] = z

        for k in range(T):
            v = v_all[:, k]  # (bs, n)
            w = dwb[:, k]  # (bs, dw)
            if euler:
                _apply_m(z, AS, w, g, mr, n)
                z = z + mr + v
            else:
                r = z * invfact[order] + v * invfact[order + 1]
                for j in range(order - 1, -1, -1):
                    _apply_m(r, AS, w, g, mr, n)
                    mr += z * invfact[j]
                    mr += v * invfact[j + 1]
                    r, mr = mr, r
                z = r
            if states is not None:
                states[s:e, k + 1] = z
        final[s:e] = z
    return final, states


def linear_cde_scan(
    A,
    B,
    domega,
    dxi,
    initial_state=None,
    *,
    method: str = "taylor",
    order: int = 3,
    backend: str = "auto",
    return_states: bool = False,
    block_size: int = 4096,
    compute_dtype=np.float64,
    z0=_MISSING,
):
    """Dense linear CDE ``dZ = sum_i A_i Z domega^i + B dxi`` with piecewise-linear gates.

    Parameters
    ----------
    A : array_like, shape (dw, n, n)
        Transition matrices ``A_i``.
    B : array_like, shape (n, dx)
        Input matrix.
    domega : array_like, shape (b, T, dw) or (T, dw)
        Per-step increments of the gate ``omega``; 2-D is one path.
    dxi : array_like, shape (b, T, dx) or (T, dx)
        Per-step increments of the gate ``xi`` (same leading shape as ``domega``).
    initial_state : array_like, shape (b, n) or (n,), optional
        ``Z_0``; zeros when omitted. ``(n,)`` with 2-D gates, ``(b, n)`` with 3-D ones.
        (Deprecated name: ``z0=``.)
    method : {"taylor", "euler"}
        ``"taylor"``: ``Z <- sum_{j<=p} M^j (Z/j! + B dxi/(j+1)!)``, the order-``p`` truncation of
        the exact step ``exp(M) Z + phi1(M) B dxi``; ``"euler"``: ``Z <- Z + M Z + B dxi``.
    order : int, default 3
        Taylor order ``1 <= p <= 150`` (``p`` matrix-vector products per step).
    backend : {"auto", "blas", "numba"}
        ``"blas"``: blocks of paths through GEMMs (numpy's BLAS threads); ``"numba"``: one
        path per thread with explicit matrix-vector loops. ``"auto"`` picks ``"blas"`` when
        ``b >= 64`` and ``n >= 32``, else ``"numba"``.
    return_states : bool, default False
        Also return every state.
    block_size : int, default 4096
        Paths per block on the BLAS backend (bounds memory to ``O(block * dw * n)``).
    compute_dtype : {np.float64, np.float32}
        Arithmetic precision of the BLAS backend (the numba backend always uses float64).

    Returns
    -------
    final : ndarray, shape (b, n) or (n,)
        The state after the last step (``initial_state`` when ``T = 0``).
    states : ndarray, shape (b, T+1, n) or (T+1, n)
        Only with ``return_states``; ``states[..., 0, :] = initial_state``.
        Outputs are float32 when ``domega`` is float32, else float64.

    Raises
    ------
    TypeError
        An array that is not float32, float64 or integer (bool, complex, object, float16),
        or an option of the wrong type.
    ValueError
        A wrong shape, a NaN or Inf in any array argument, an option out of range, or
        ``states`` too large for memory (checked before allocating).

    Notes
    -----
    Spec: ``LinearCDESpec`` (``nbssm.spec.cde``), dense kind, step ``"taylor"`` with the same
    order or ``"euler"``: the numba kernel refines ``run_list`` (bitwise in float64).
    Per-step truncation error and its measured size are in ``proofs_notes/linear_cde.md``.

    Inputs are never modified; any strides, Fortran order and read-only arrays are accepted;
    integer arrays are converted to float64.

    NaN/Inf: refused in every array argument. Finite inputs whose states leave the float
    range (``||M_k||`` large, many steps) give ``inf`` or ``nan`` in the states from that step
    on; this is not checked. Subnormal inputs are computed with as is.

    Scan = iterated pieces: running ``T = T1 + T2`` steps equals running ``T1`` steps, then
    ``T2`` steps from the first run's final state (bitwise on the numba backend).
    """
    initial_state, return_states = _renamed(initial_state, z0, return_states)
    if method not in ("taylor", "euler"):
        raise ValueError(f"method: expected 'taylor' or 'euler', got {method!r}")
    order = check_int(order, "order", 1, MAX_ORDER)
    if backend not in ("auto", "blas", "numba"):
        raise ValueError(f"backend: expected 'auto', 'blas' or 'numba', got {backend!r}")
    block_size = check_int(block_size, "block_size", 1)
    try:
        compute_dtype = np.dtype(compute_dtype)
    except TypeError:
        raise TypeError(f"compute_dtype: expected float32 or float64, got {compute_dtype!r}") from None
    if compute_dtype not in (np.float32, np.float64):
        raise ValueError(f"compute_dtype: expected float32 or float64, got {compute_dtype}")
    A, B, domega, dxi, z0, unbatched, out_dtype = _prepare(A, B, domega, dxi, initial_state, diagonal=False)
    b, T, _ = domega.shape
    n = A.shape[1]
    if return_states:
        check_output_size("states", (b, T + 1, n))
    euler = method == "euler"
    if backend == "auto":
        backend = "blas" if (b >= 64 and n >= 32) else "numba"
    if backend == "numba" and compute_dtype != np.float64:
        raise ValueError("compute_dtype: expected float64 on the 'numba' backend (float32 needs 'blas'), got float32")
    if backend == "blas":
        final, states = _blas_scan(A, B, domega, dxi, z0, order, euler, return_states, block_size, compute_dtype)
        return _finish(final, states, unbatched, out_dtype, return_states)
    from nbssm._kernels import cde as _k

    f64 = lambda x: np.ascontiguousarray(x, dtype=np.float64)  # noqa: E731
    final = np.empty((b, n))
    states = np.empty((b, T + 1, n)) if return_states else np.empty((1, 1, 1))
    if b:
        _k.dense_cde_scan(f64(A), f64(B), f64(domega), f64(dxi), f64(z0), order, euler, final, states, return_states)
    return _finish(final, states, unbatched, out_dtype, return_states)


def diagonal_cde_scan(a, B, domega, dxi, initial_state=None, *, method: str = "exact",
                      return_states: bool = False, z0=_MISSING):
    """Diagonal linear CDE ``dZ = sum_i diag(a_i) Z domega^i + B dxi``, exact step.

    Parameters
    ----------
    a : array_like, shape (dw, n)
        Diagonals ``a_i`` of the transitions.
    B : array_like, shape (n, dx)
    domega : array_like, shape (b, T, dw) or (T, dw)
        2-D is one path.
    dxi : array_like, shape (b, T, dx) or (T, dx)
    initial_state : array_like, shape (b, n) or (n,), optional
        ``Z_0``; zeros when omitted. (Deprecated name: ``z0=``.)
    method : {"exact", "euler"}
        ``"exact"``: ``Z <- exp(m) Z + phi1(m) B dxi`` elementwise with
        ``m = sum_i domega^i a_i`` and ``phi1(m) = expm1(m)/m`` (1 at ``m = 0``);
        ``"euler"``: ``Z <- Z + m Z + B dxi``.
    return_states : bool, default False

    Returns
    -------
    final : ndarray, shape (b, n) or (n,)
    states : ndarray, shape (b, T+1, n) or (T+1, n), only with ``return_states``
        float32 when ``domega`` is float32, else float64.

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_cde_scan`.

    Notes
    -----
    Spec: ``LinearCDESpec`` (``nbssm.spec.cde``), diagonal kind, step ``"exact"`` or
    ``"euler"``. The homogeneous solution from ``s`` to ``t`` is ``exp(sum_i a_i (omega^i_t -
    omega^i_s))``: it depends only on the increment (the paper's diagonal limitation).

    Inputs are never modified (any layout accepted). NaN/Inf: refused in every array
    argument; a finite ``m`` above about 709.78 overflows ``exp(m)`` to ``inf`` (and
    ``phi1`` gives ``nan`` if ``m`` itself overflows), propagated, not checked.

    Scan = iterated pieces, bitwise: ``T1`` steps then ``T2`` steps from the final state equal
    ``T1 + T2`` steps.
    """
    initial_state, return_states = _renamed(initial_state, z0, return_states)
    if method not in ("exact", "euler"):
        raise ValueError(f"method: expected 'exact' or 'euler', got {method!r}")
    a, B, domega, dxi, z0, unbatched, out_dtype = _prepare(a, B, domega, dxi, initial_state, diagonal=True)
    b, T, _ = domega.shape
    n = a.shape[1]
    if return_states:
        check_output_size("states", (b, T + 1, n))
    from nbssm._kernels import cde as _k

    f64 = lambda x: np.ascontiguousarray(x, dtype=np.float64)  # noqa: E731
    final = np.empty((b, n))
    states = np.empty((b, T + 1, n)) if return_states else np.empty((1, 1, 1))
    if b:
        _k.diagonal_cde_scan(f64(a), f64(B), f64(domega), f64(dxi), f64(z0), method == "euler", final, states, return_states)
    return _finish(final, states, unbatched, out_dtype, return_states)


# --------------------------------------------------------------------------- backward (VJPs)

class LinearCDEGrads(NamedTuple):
    """Gradients of :func:`linear_cde_scan` / :func:`diagonal_cde_scan` (``A`` is ``a`` for the
    diagonal scan); ``initial_state`` None when it was not given. ``A`` and ``B`` are summed
    over the batch."""

    A: np.ndarray
    B: np.ndarray
    domega: np.ndarray
    dxi: np.ndarray
    initial_state: Optional[np.ndarray]


def _cotangents(grad_final, grad_states, b, T, n, unbatched):
    """The cotangents as float64 ``(b, n)`` and ``(b, T+1, n)`` (or None) arrays."""
    fshape = (n,) if unbatched else (b, n)
    sshape = (T + 1, n) if unbatched else (b, T + 1, n)
    gf = _real_or_zeros(grad_final, "grad_final", fshape, " (the shape of the final state)")
    gs = None
    if grad_states is not None:
        gs = real_array(grad_states, "grad_states")
        if gs.shape != sshape:
            raise ValueError(f"grad_states: expected shape {sshape} (the shape of states), got {gs.shape}")
        check_finite(gs, "grad_states")
        gs = np.asarray(gs, dtype=np.float64)
        if unbatched:
            gs = gs[None]
    check_finite(gf, "grad_final")
    gf = np.array(gf, dtype=np.float64)
    return (gf[None] if unbatched else gf), gs


def _vjp_finish(gA, gB, gdw, gdx, gz0, has_z0, unbatched, out_dtype):
    cast = lambda x: np.asarray(x, dtype=out_dtype)  # noqa: E731
    if unbatched:
        gdw, gdx, gz0 = gdw[0], gdx[0], gz0[0]
    return LinearCDEGrads(A=cast(gA), B=cast(gB), domega=cast(gdw), dxi=cast(gdx),
                          initial_state=cast(gz0) if has_z0 else None)


def linear_cde_scan_vjp(grad_final, A, B, domega, dxi, initial_state=None, *, method: str = "taylor",
                        order: int = 3, grad_states=None):
    """Vector-Jacobian product of :func:`linear_cde_scan` (methods ``"taylor"`` and ``"euler"``).

    The gradients of ``<grad_final, Z_T> + <grad_states, states>`` with respect to ``A``,
    ``B``, ``domega``, ``dxi`` and ``initial_state``: the exact derivative of the method's
    step (the Taylor polynomial of order ``order``, not of ``exp``), computed in float64 by
    reverse-mode through Horner's rule (per step, the ``p + 1`` Horner vectors are
    recomputed from the stored state), vectorised over the batch with numpy.

    Parameters
    ----------
    grad_final : array_like, shape (b, n) or (n,), or None
        Cotangent of the final state (zero if None).
    A, B, domega, dxi, initial_state, method, order
        As :func:`linear_cde_scan` (same checks; NaN/Inf refused).
    grad_states : array_like, shape (b, T+1, n) or (T+1, n), optional
        Cotangent of every state (the ``return_states`` output).

    Returns
    -------
    LinearCDEGrads
        ``(A, B, domega, dxi, initial_state)`` with the arguments' shapes; ``A`` and ``B``
        summed over the batch; float32 when ``domega`` is float32, else float64.
    """
    if method not in ("taylor", "euler"):
        raise ValueError(f"method: expected 'taylor' or 'euler', got {method!r}")
    order = check_int(order, "order", 1, MAX_ORDER)
    has_z0 = initial_state is not None
    A, B, domega, dxi, z0, unbatched, out_dtype = _prepare(A, B, domega, dxi, initial_state, diagonal=False)
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    w_all = np.asarray(domega, dtype=np.float64)  # (b, T, dw)
    x_all = np.asarray(dxi, dtype=np.float64)  # (b, T, dx)
    b, T, dw = w_all.shape
    n = A.shape[1]
    gZ, gs = _cotangents(grad_final, grad_states, b, T, n, unbatched)
    euler = method == "euler"
    invfact = [1.0 / math.factorial(j) for j in range(order + 2)]
    v_all = x_all @ B.T  # (b, T, n)
    Z = np.empty((b, T + 1, n))
    Z[:, 0] = z0
    with np.errstate(all="ignore"):
        for k in range(T):  # the states, in the numba kernel's step formula
            M = np.einsum("pi,iqc->pqc", w_all[:, k], A)  # (b, n, n)
            z, v = Z[:, k], v_all[:, k]
            if euler:
                Z[:, k + 1] = z + np.einsum("pqc,pc->pq", M, z) + v
            else:
                r = z * invfact[order] + v * invfact[order + 1]
                for j in range(order - 1, -1, -1):
                    r = np.einsum("pqc,pc->pq", M, r) + z * invfact[j] + v * invfact[j + 1]
                Z[:, k + 1] = r
        gA = np.zeros_like(A)
        gv = np.zeros((b, T, n))
        gdw = np.zeros((b, T, dw))
        if gs is not None:
            gZ = gZ + gs[:, T]
        for k in range(T - 1, -1, -1):
            M = np.einsum("pi,iqc->pqc", w_all[:, k], A)
            z, v = Z[:, k], v_all[:, k]
            if euler:
                gM = gZ[:, :, None] * z[:, None, :]  # (b, n, n)
                gz = gZ + np.einsum("pqc,pq->pc", M, gZ)
                gv[:, k] = gZ
            else:
                rs: list[Any] = [None] * (order + 1)  # rs[j] = r_j, r_0 = Z_{k+1}
                rs[order] = z * invfact[order] + v * invfact[order + 1]
                for j in range(order - 1, 0, -1):
                    rs[j] = np.einsum("pqc,pc->pq", M, rs[j + 1]) + z * invfact[j] + v * invfact[j + 1]
                gr = gZ  # cotangent of r_0
                gz = np.zeros_like(z)
                gvk = np.zeros_like(v)
                gM = np.zeros((b, n, n))
                for j in range(order):  # r_j = M r_{j+1} + z/j! + v/(j+1)!
                    gz += gr * invfact[j]
                    gvk += gr * invfact[j + 1]
                    gM += gr[:, :, None] * rs[j + 1][:, None, :]
                    gr = np.einsum("pqc,pq->pc", M, gr)
                gz += gr * invfact[order]
                gvk += gr * invfact[order + 1]
                gv[:, k] = gvk
            gA += np.einsum("pi,pqc->iqc", w_all[:, k], gM)
            gdw[:, k] = np.einsum("iqc,pqc->pi", A, gM)
            gZ = gz
            if gs is not None:
                gZ = gZ + gs[:, k]
        gB = np.einsum("ptq,ptj->qj", gv, x_all)
        gdx = gv @ B  # (b, T, dx)
    return _vjp_finish(gA, gB, gdw, gdx, gZ, has_z0, unbatched, out_dtype)


def _phi1_and_derivative(m):
    """``phi1(m) = expm1(m)/m`` and ``phi1'(m) = (exp(m) - phi1(m))/m`` (series near 0)."""
    small = np.abs(m) < 1e-3
    safe = np.where(small, 1.0, m)
    e = np.exp(m)
    phi = np.where(small, 1.0 + m / 2 + m * m / 6 + m**3 / 24, np.expm1(safe) / safe)
    dphi = np.where(small, 0.5 + m / 3 + m * m / 8 + m**3 / 30, (e - phi) / safe)
    return e, phi, dphi


def diagonal_cde_scan_vjp(grad_final, a, B, domega, dxi, initial_state=None, *, method: str = "exact",
                          grad_states=None):
    """Vector-Jacobian product of :func:`diagonal_cde_scan` (methods ``"exact"`` and ``"euler"``).

    Exact step ``Z' = exp(m) Z + phi1(m) v`` with ``m = sum_i domega^i a_i``, ``v = B dxi``:
    ``dZ = exp(m) dZ'``, ``dm = dZ' (exp(m) Z + phi1'(m) v)`` with
    ``phi1'(m) = (exp(m) - phi1(m)) / m`` (a series below ``|m| = 1e-3``). float64 numpy,
    vectorised over the batch, every state stored (memory of ``return_states``).

    Parameters and returns as :func:`linear_cde_scan_vjp` (``A`` of the result is the
    gradient of ``a (dw, n)``).
    """
    if method not in ("exact", "euler"):
        raise ValueError(f"method: expected 'exact' or 'euler', got {method!r}")
    has_z0 = initial_state is not None
    a, B, domega, dxi, z0, unbatched, out_dtype = _prepare(a, B, domega, dxi, initial_state, diagonal=True)
    a = np.asarray(a, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    w_all = np.asarray(domega, dtype=np.float64)
    x_all = np.asarray(dxi, dtype=np.float64)
    b, T, dw = w_all.shape
    n = a.shape[1]
    gZ, gs = _cotangents(grad_final, grad_states, b, T, n, unbatched)
    euler = method == "euler"
    with np.errstate(all="ignore"):
        m_all = w_all @ a  # (b, T, n)
        v_all = x_all @ B.T  # (b, T, n)
        Z = np.empty((b, T + 1, n))
        Z[:, 0] = z0
        for k in range(T):
            m, v = m_all[:, k], v_all[:, k]
            if euler:
                Z[:, k + 1] = Z[:, k] + m * Z[:, k] + v
            else:
                e, phi, _ = _phi1_and_derivative(m)
                Z[:, k + 1] = e * Z[:, k] + phi * v
        gm = np.zeros((b, T, n))
        gv = np.zeros((b, T, n))
        if gs is not None:
            gZ = gZ + gs[:, T]
        for k in range(T - 1, -1, -1):
            m, v, z = m_all[:, k], v_all[:, k], Z[:, k]
            if euler:
                gm[:, k] = gZ * z
                gv[:, k] = gZ
                gZ = gZ + m * gZ
            else:
                e, phi, dphi = _phi1_and_derivative(m)
                gm[:, k] = gZ * (e * z + dphi * v)
                gv[:, k] = gZ * phi
                gZ = e * gZ
            if gs is not None:
                gZ = gZ + gs[:, k]
        ga = np.einsum("pti,ptn->in", w_all, gm)
        gdw = gm @ a.T  # (b, T, dw)
        gB = np.einsum("ptq,ptj->qj", gv, x_all)
        gdx = gv @ B
    return _vjp_finish(ga, gB, gdw, gdx, gZ, has_z0, unbatched, out_dtype)
