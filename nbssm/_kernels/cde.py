"""Numba kernels for linear controlled differential equations (linear CDEs).

Glossary: ``b`` batch, ``T`` number of steps (path length minus one), ``n`` state size,
``dw`` gate-omega channels, ``dx`` gate-xi channels. On step ``k`` the gates have increments
``domega[k]`` (``dw``,) and ``dxi[k]`` (``dx``,); ``M_k = sum_i domega[k, i] A_i`` and
``v_k = B dxi[k]``.

- dense Taylor step of order ``p``: ``Z <- sum_{j=0..p} M^j (Z / j! + v / (j+1)!)``, the
  order-``p`` truncation of ``exp(M) Z + phi1(M) v`` evaluated by Horner's rule with ``p``
  matrix-vector products;
- dense Euler step: ``Z <- Z + M Z + v``;
- diagonal exact step: ``Z <- exp(m) * Z + phi1(m) * v`` elementwise with
  ``m = sum_i domega[k, i] a_i`` and ``phi1(m) = expm1(m) / m`` (1 at 0).

Validation lives in :mod:`nbssm.cde`; kernels take float64 C-contiguous arrays.
"""

from __future__ import annotations

import math

import numpy as np

from nbssm import _config

from ._jit import njit, prange


@njit(cache=_config.CACHE, nogil=True)
def _dense_path(A, B, domega, dxi, z, order, euler, states, save):
    """Run one path in place on ``z`` (n,); optionally write states (T+1, n)."""
    dw, n, _ = A.shape
    T = domega.shape[0]
    dx = B.shape[1]
    M = np.empty((n, n))
    v = np.empty(n)
    r = np.empty(n)
    tmp = np.empty(n)
    # inverse factorials 1/j! for j = 0..order+1
    invfact = np.empty(order + 2)
    fact = 1.0
    for j in range(order + 2):
        if j > 0:
            fact *= j  # exact in float64 for j <= 22
        invfact[j] = 1.0 / fact
    if save:
        for q in range(n):
            states[0, q] = z[q]
    for k in range(T):
        # M = sum_i domega[k, i] A_i  (left fold over i)
        for q in range(n):
            for c in range(n):
                M[q, c] = 0.0
        for i in range(dw):
            w = domega[k, i]
            for q in range(n):
                for c in range(n):
                    M[q, c] += w * A[i, q, c]
        # v = B dxi[k]
        for q in range(n):
            acc = 0.0
            for j in range(dx):
                acc += B[q, j] * dxi[k, j]
            v[q] = acc
        if euler:
            for q in range(n):
                acc = 0.0
                for c in range(n):
                    acc += M[q, c] * z[c]
                tmp[q] = acc
            for q in range(n):
                z[q] = z[q] + tmp[q] + v[q]
        else:
            # Horner: R = Z/p! + v/(p+1)!; R <- M R + Z/j! + v/(j+1)! for j = p-1..0
            for q in range(n):
                r[q] = z[q] * invfact[order] + v[q] * invfact[order + 1]
            for j in range(order - 1, -1, -1):
                for q in range(n):
                    acc = 0.0
                    for c in range(n):
                        acc += M[q, c] * r[c]
                    tmp[q] = acc
                for q in range(n):
                    r[q] = tmp[q] + z[q] * invfact[j] + v[q] * invfact[j + 1]
            for q in range(n):
                z[q] = r[q]
        if save:
            for q in range(n):
                states[k + 1, q] = z[q]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def dense_cde_scan(A, B, domega, dxi, z0, order, euler, final, states, save):
    """Dense linear CDE over a batch, parallel over paths.

    Parameters
    ----------
    A : (dw, n, n) float64
    B : (n, dx) float64
    domega : (b, T, dw) float64
    dxi : (b, T, dx) float64
    z0 : (b, n) float64
    order : int
        Taylor order ``p >= 1`` (ignored when ``euler``).
    euler : bool
    final : (b, n) float64
        Output: the state after the last step.
    states : (b, T+1, n) float64 if ``save`` else any 3-D array
        Output: every state, ``states[:, 0] = z0``.
    save : bool
    """
    b = z0.shape[0]
    n = z0.shape[1]
    for p in prange(b):
        z = np.empty(n)
        for q in range(n):
            z[q] = z0[p, q]
        if save:
            _dense_path(A, B, domega[p], dxi[p], z, order, euler, states[p], True)
        else:
            _dense_path(A, B, domega[p], dxi[p], z, order, euler, states[0], False)
        for q in range(n):
            final[p, q] = z[q]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def diagonal_cde_scan(a, B, domega, dxi, z0, euler, final, states, save):
    """Diagonal linear CDE over a batch, parallel over paths.

    Parameters
    ----------
    a : (dw, n) float64
        Diagonals of the transition matrices ``A_i = diag(a[i])``.
    B : (n, dx) float64
    domega : (b, T, dw) float64
    dxi : (b, T, dx) float64
    z0 : (b, n) float64
    euler : bool
        Euler step ``Z + m Z + v`` instead of the exact step.
    final : (b, n) float64
    states : (b, T+1, n) float64 if ``save`` else any 3-D array
    save : bool
    """
    b, n = z0.shape
    T = domega.shape[1]
    dw = a.shape[0]
    dx = B.shape[1]
    for p in prange(b):
        z = np.empty(n)
        for q in range(n):
            z[q] = z0[p, q]
        if save:
            for q in range(n):
                states[p, 0, q] = z[q]
        for k in range(T):
            for q in range(n):
                m = 0.0
                for i in range(dw):
                    m += domega[p, k, i] * a[i, q]
                v = 0.0
                for j in range(dx):
                    v += B[q, j] * dxi[p, k, j]
                if euler:
                    z[q] = z[q] + m * z[q] + v
                else:
                    # exp(m) = 1 + expm1(m), phi1(m) = expm1(m) / m: one transcendental call
                    e1 = math.expm1(m)
                    phi = e1 / m if m != 0.0 else 1.0
                    z[q] = (1.0 + e1) * z[q] + phi * v
            if save:
                for q in range(n):
                    states[p, k + 1, q] = z[q]
        for q in range(n):
            final[p, q] = z[q]
