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
  ``(block, n) @ (n, dw*n)`` per Horner stage) and ``"numba"`` (parallel over paths).
- :func:`diagonal_cde_scan`: diagonal ``A_i = diag(a_i)``, exact elementwise step.

Glossary: ``b`` batch, ``T`` steps, ``n`` state size, ``dw``/``dx`` gate channels.

Taylor truncation error (per step, exact arithmetic): with ``mu = ||M_k||`` and
``nu = ||B dxi[k]||`` the step error is at most
``(mu**(p+1)/(p+1)! ||Z|| + mu**p/(p+1)! nu) * exp(mu)``; over ``T`` steps errors add up
amplified by at most ``exp(sum_k mu_k)``. ``proofs_notes/linear_cde.md`` has the bound and the
measured errors.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["linear_cde_scan", "diagonal_cde_scan", "increments", "taylor_error_bound"]


def increments(path) -> np.ndarray:
    """Per-step increments of sampled gate paths: ``path[..., 1:, :] - path[..., :-1, :]``.

    Parameters
    ----------
    path : array_like, shape (length, channels) or (batch, length, channels)

    Returns
    -------
    ndarray, shape (length - 1, channels) or (batch, length - 1, channels)
    """
    p = np.asarray(path)
    if p.ndim not in (2, 3):
        raise ValueError(f"path must have shape (length, channels) or (batch, length, channels), got {p.shape}")
    return np.diff(p, axis=-2)


def taylor_error_bound(mu: float, nu: float, z_norm: float, order: int) -> float:
    """Bound on one Taylor step's error: ``(mu^(p+1)/(p+1)! |Z| + mu^p/(p+1)! nu) e^mu``.

    ``mu = ||M||``, ``nu = ||B dxi||``, ``z_norm = ||Z||`` in any submultiplicative norm.
    """
    p = int(order)
    return (mu ** (p + 1) / math.factorial(p + 1) * z_norm + mu**p / math.factorial(p + 1) * nu) * math.exp(mu)


def _float_array(name, x, shapes_doc):
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real array of shape {shapes_doc}, got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _prepare(A, B, domega, dxi, z0, diagonal):
    a_doc = "(dw, n)" if diagonal else "(dw, n, n)"
    A = _float_array("A", A, a_doc)
    B = _float_array("B", B, "(n, dx)")
    domega = _float_array("domega", domega, "(b, T, dw) or (T, dw)")
    dxi = _float_array("dxi", dxi, "(b, T, dx) or (T, dx)")
    z0 = _float_array("z0", z0, "(b, n) or (n,)")
    if A.ndim != (2 if diagonal else 3) or (not diagonal and A.shape[1] != A.shape[2]):
        raise ValueError(f"A must have shape {a_doc}, got {A.shape}")
    dw, n = A.shape[0], A.shape[1]
    if B.ndim != 2 or B.shape[0] != n:
        raise ValueError(f"B must have shape (n, dx) = ({n}, dx), got {B.shape}")
    dx = B.shape[1]
    if domega.ndim not in (2, 3):
        raise ValueError(f"domega must have shape (b, T, dw) or (T, dw), got {domega.shape}")
    unbatched = domega.ndim == 2
    if unbatched:
        domega = domega[None]
        if dxi.ndim != 2:
            raise ValueError(f"dxi must have shape (T, dx) like domega, got {dxi.shape}")
        dxi = dxi[None]
        if z0.ndim != 1:
            raise ValueError(f"z0 must have shape (n,) = ({n},) for unbatched gates, got {z0.shape}")
        z0 = z0[None]
    b, T = domega.shape[0], domega.shape[1]
    if domega.shape[2] != dw:
        raise ValueError(f"domega must have shape (b, T, dw) with dw = {dw} (A.shape[0]), got {domega.shape}")
    if dxi.ndim != 3 or dxi.shape != (b, T, dx):
        raise ValueError(f"dxi must have shape (b, T, dx) = {(b, T, dx)}, got {dxi.shape}")
    if z0.ndim != 2 or z0.shape != (b, n):
        raise ValueError(f"z0 must have shape (b, n) = {(b, n)}, got {z0.shape}")
    out_dtype = np.float32 if domega.dtype == np.float32 else np.float64
    return A, B, domega, dxi, z0, unbatched, out_dtype


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
    AS = np.ascontiguousarray(np.concatenate([A[i].T for i in range(dw)], axis=0), dtype=dtype)  # (dw*n, n)
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
        if return_states:
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
            if return_states:
                states[s:e, k + 1] = z
        final[s:e] = z
    return final, states


def linear_cde_scan(
    A,
    B,
    domega,
    dxi,
    z0,
    *,
    method: str = "taylor",
    order: int = 3,
    backend: str = "auto",
    return_states: bool = False,
    block_size: int = 4096,
    compute_dtype=np.float64,
):
    """Dense linear CDE ``dZ = sum_i A_i Z domega^i + B dxi`` with piecewise-linear gates.

    Parameters
    ----------
    A : array_like, shape (dw, n, n)
        Transition matrices ``A_i``.
    B : array_like, shape (n, dx)
        Input matrix.
    domega : array_like, shape (b, T, dw) or (T, dw)
        Per-step increments of the gate ``omega``.
    dxi : array_like, shape (b, T, dx) or (T, dx)
        Per-step increments of the gate ``xi``.
    z0 : array_like, shape (b, n) or (n,)
        Initial states.
    method : {"taylor", "euler"}
        ``"taylor"``: ``Z <- sum_{j<=p} M^j (Z/j! + B dxi/(j+1)!)``, the order-``p`` truncation of
        the exact step ``exp(M) Z + phi1(M) B dxi``; ``"euler"``: ``Z <- Z + M Z + B dxi``.
    order : int, default 3
        Taylor order ``p >= 1`` (``p`` matrix-vector products per step).
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
        The state after the last step (``z0`` when ``T = 0``).
    states : ndarray, shape (b, T+1, n) or (T+1, n)
        Only with ``return_states``; ``states[..., 0, :] = z0``.
        Outputs are float32 when ``domega`` is float32, else float64.

    Notes
    -----
    Spec: ``LinearCDESpec`` (``nbssm.spec.cde``), dense kind, step ``"taylor"`` with the same
    order or ``"euler"``: the kernel refines ``run_list``. Per-step truncation error and its
    measured size are in ``proofs_notes/linear_cde.md``. Inputs are never modified.
    """
    if method not in ("taylor", "euler"):
        raise ValueError(f"method must be 'taylor' or 'euler', got {method!r}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"order must be an int >= 1, got {order!r}")
    if backend not in ("auto", "blas", "numba"):
        raise ValueError(f"backend must be 'auto', 'blas' or 'numba', got {backend!r}")
    if int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    compute_dtype = np.dtype(compute_dtype)
    if compute_dtype not in (np.float32, np.float64):
        raise ValueError(f"compute_dtype must be float32 or float64, got {compute_dtype}")
    A, B, domega, dxi, z0, unbatched, out_dtype = _prepare(A, B, domega, dxi, z0, diagonal=False)
    b, T, _ = domega.shape
    n = A.shape[1]
    euler = method == "euler"
    if backend == "auto":
        backend = "blas" if (b >= 64 and n >= 32) else "numba"
    if backend == "numba" and compute_dtype != np.float64:
        raise ValueError("compute_dtype float32 is only available on the 'blas' backend")
    if backend == "blas":
        final, states = _blas_scan(A, B, domega, dxi, z0, int(order), euler, return_states, int(block_size), compute_dtype)
        return _finish(final, states, unbatched, out_dtype, return_states)
    from nbssm._kernels import cde as _k

    f64 = lambda x: np.ascontiguousarray(x, dtype=np.float64)  # noqa: E731
    final = np.empty((b, n))
    states = np.empty((b, T + 1, n)) if return_states else np.empty((1, 1, 1))
    if b:
        _k.dense_cde_scan(f64(A), f64(B), f64(domega), f64(dxi), f64(z0), int(order), euler, final, states, return_states)
    return _finish(final, states, unbatched, out_dtype, return_states)


def diagonal_cde_scan(a, B, domega, dxi, z0, *, method: str = "exact", return_states: bool = False):
    """Diagonal linear CDE ``dZ = sum_i diag(a_i) Z domega^i + B dxi``, exact step.

    Parameters
    ----------
    a : array_like, shape (dw, n)
        Diagonals ``a_i`` of the transitions.
    B : array_like, shape (n, dx)
    domega : array_like, shape (b, T, dw) or (T, dw)
    dxi : array_like, shape (b, T, dx) or (T, dx)
    z0 : array_like, shape (b, n) or (n,)
    method : {"exact", "euler"}
        ``"exact"``: ``Z <- exp(m) Z + phi1(m) B dxi`` elementwise with
        ``m = sum_i domega^i a_i`` and ``phi1(m) = expm1(m)/m`` (1 at ``m = 0``);
        ``"euler"``: ``Z <- Z + m Z + B dxi``.
    return_states : bool, default False

    Returns
    -------
    final : ndarray, shape (b, n) or (n,)
    states : ndarray, shape (b, T+1, n) or (T+1, n), only with ``return_states``

    Notes
    -----
    Spec: ``LinearCDESpec`` (``nbssm.spec.cde``), diagonal kind, step ``"exact"`` or
    ``"euler"``. The homogeneous solution from ``s`` to ``t`` is ``exp(sum_i a_i (omega^i_t -
    omega^i_s))``: it depends only on the increment (the paper's diagonal limitation).
    """
    if method not in ("exact", "euler"):
        raise ValueError(f"method must be 'exact' or 'euler', got {method!r}")
    a, B, domega, dxi, z0, unbatched, out_dtype = _prepare(a, B, domega, dxi, z0, diagonal=True)
    b, T, _ = domega.shape
    n = a.shape[1]
    from nbssm._kernels import cde as _k

    f64 = lambda x: np.ascontiguousarray(x, dtype=np.float64)  # noqa: E731
    final = np.empty((b, n))
    states = np.empty((b, T + 1, n)) if return_states else np.empty((1, 1, 1))
    if b:
        _k.diagonal_cde_scan(f64(a), f64(B), f64(domega), f64(dxi), f64(z0), method == "euler", final, states, return_states)
    return _finish(final, states, unbatched, out_dtype, return_states)
