"""Scalar math for the kernels: accurate for float64, inlined polynomials for float32.

Numba from PyPI has no vectorised math library: ``math.exp`` is a scalar libm
call that also stops LLVM from vectorising the loop around it. The float32
kernels therefore use the inlined polynomial approximations below, written
with float32 arithmetic only (``np.floor``, never ``math.floor``, which would
silently promote to float64), so that a loop over channels vectorises.
float64 always uses the C library (``math.exp``, ``math.log``), the same
functions as the spec's double context, so float64 kernels reproduce the spec
bit for bit.

The generic names :func:`exp_`, :func:`softplus_`, :func:`sigmoid_` dispatch on
the argument type at compile time (``numba.extending.overload``).

Accuracy of the float32 approximations (measured by
``tests/test_ops_fastmath.py`` against float64 libm over their whole range):

* ``exp32``: relative error below 2.5e-7 (measured 1.8e-7) for results >= 2**-125 (arguments
  from -86.64); between -86.99 and -86.64 the results are below 2**-125 (less accurate, the
  scaling by 2**(n-1) passes through subnormals); arguments below -86.99 give +0.0;
  arguments above 88.72 give +inf; NaN gives NaN.
* ``softplus32``: relative error below 4e-7 (measured 2.47e-7) for any finite
  argument; ``x`` itself above 20 (as PyTorch and mamba_ssm); NaN gives NaN.
* ``sigmoid32``: ``1 / (1 + exp32(-x))``.

float64 softplus is the plain form where ``exp(x)`` is finite and ``x`` above
``log(DBL_MAX)`` = 709.78 (finite for every finite argument, like float32's).

NaN and infinities propagate: nothing here uses fast-math flags.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from .. import _config
from ._jit import njit
from .intrinsics import fma32

_f32 = np.float32


# exp32 constants (range reduction: Cody-Waite split of ln2 from Cephes expf)
_LOG2E = _f32(1.44269504088896341)
_LN2_HI = _f32(0.693359375)
_LN2_LO = _f32(-2.12194440e-4)
# the accurate range is [-86.64, 88.7228] (exp(-86.64) = 2**-125.0; 88.7228 the largest
# argument with a finite float32 exp); the clamp that replaces range selects keeps
# n = round(x/ln2) in [-126, 128], where the
# exponent field built below is 0 (scale +0.0, the result +0.0) at n = -126 and the result
# overflows to +inf at n = 128 with r >= 0
_EXP_CLAMP_LO = _f32(-87.5)  # n = -126
_EXP_CLAMP_HI = _f32(89.0)  # n = 128, r = 0.277
_SHIFTER = _f32(12582912.0)  # 1.5 * 2**23
# exp(r) ~ 1 + r + r**2 (E2 + E3 r + E4 r**2 + E5 r**3) on |r| <= ln2/2 (fitted, relative error 1.05e-7)
_E2 = _f32(0.4999923)
_E3 = _f32(0.16667114)
_E4 = _f32(0.04189017)
_E5 = _f32(0.00831253)
_HALF = _f32(0.5)
_ONE = _f32(1.0)
_TWO = _f32(2.0)

# Cephes logf constants
_SQRTHF = _f32(0.707106781186547524)
_L0 = _f32(7.0376836292e-2)
_L1 = _f32(-1.1514610310e-1)
_L2 = _f32(1.1676998740e-1)
_L3 = _f32(-1.2420140846e-1)
_L4 = _f32(1.4249322787e-1)
_L5 = _f32(-1.6668057665e-1)
_L6 = _f32(2.0000714765e-1)
_L7 = _f32(-2.4999993993e-1)
_L8 = _f32(3.3333331174e-1)
_LN2 = _f32(0.693147180559945309)
_SOFTPLUS_THRESHOLD32 = _f32(20.0)


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def exp32(x):
    """float32 ``exp(x)``: range reduction and a degree-5 polynomial, branch-free.

    ``x = n*ln2 + r`` with ``n = round(x/ln2)`` obtained by adding the magic
    constant ``1.5 * 2**23`` (its low mantissa bits then hold ``n``, so ``2**n``
    is built with an integer shift and add, no float-int conversion);
    ``|r| <= ln2/2`` (Cody-Waite split of ln2); ``exp(r)`` by a near-minimax
    polynomial ``1 + r + r**2 (c2 + c3 r + c4 r**2 + c5 r**3)`` fitted for
    relative error (1.05e-7 in exact arithmetic). ``2**n`` is applied as
    ``2 * 2**(n-1)`` so that ``n = 128`` stays representable. The range is handled
    by one clamp of the argument to ``[-87.5, 89]`` (a min and a max; no select on the
    result): there ``n`` stays in ``[-126, 128]``, the exponent field built for ``n = -126``
    (arguments below -86.99) is that of +0.0, so the result is +0.0, and at ``n = 128`` with
    ``r > 0`` (arguments above 88.7228) the product overflows to +inf. NaN passes the clamp
    (both comparisons are false) and gives NaN. Six vector operations fewer per exp than
    selects on the result (about 20% off the float32 selective scan).
    """
    xc = x
    if xc < _EXP_CLAMP_LO:
        xc = _EXP_CLAMP_LO
    if xc > _EXP_CLAMP_HI:
        xc = _EXP_CLAMP_HI
    t = fma32(xc, _LOG2E, _SHIFTER)
    n = t - _SHIFTER
    r = fma32(n, -_LN2_HI, xc)
    r = fma32(n, -_LN2_LO, r)
    q = fma32(_E5, r, _E4)
    q = fma32(q, r, _E3)
    q = fma32(q, r, _E2)
    p = fma32(q, r * r, r) + _ONE
    bits = np.int64(np.float32(t).view(np.int32))
    scale = np.int32((bits << 23) + np.int64(126 << 23)).view(np.float32)
    res = (p * scale) * _TWO
    return res


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def log32_ge1(v):
    """float32 ``log(v)`` for ``1 <= v < inf`` (Cephes logf polynomial).

    ``v = m * 2**k`` with ``sqrt(1/2) <= m < sqrt(2)``; ``log v = k*ln2 + log m``.
    """
    bits = np.float32(v).view(np.int32)
    k = ((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(127)
    m = np.int32((bits & np.int32(0x7FFFFF)) | np.int32(0x3F800000)).view(np.float32)
    kf = np.float32(k)
    if m > _f32(1.41421356237):
        m = m * _HALF
        kf = kf + _ONE
    f = m - _ONE
    f2 = f * f
    # Horner in fused multiply-adds: half the operations and a shorter dependency chain than
    # separate products and sums (the softplus runs once per token and channel)
    q = fma32(_L0, f, _L1)
    q = fma32(q, f, _L2)
    q = fma32(q, f, _L3)
    q = fma32(q, f, _L4)
    q = fma32(q, f, _L5)
    q = fma32(q, f, _L6)
    q = fma32(q, f, _L7)
    q = fma32(q, f, _L8)
    q = q * f * f2
    q = fma32(-_HALF, f2, q)
    return fma32(kf, _LN2, f + q)


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def softplus32(x):
    """float32 softplus ``log(1 + exp(x))``; ``x`` above 20 (PyTorch's threshold).

    ``log1p(e)`` is evaluated as ``log(1+e) + (e - ((1+e) - 1)) / (1+e)``
    (the rounding of ``1+e`` corrected to first order), so tiny results keep
    their relative accuracy. NaN propagates through the correction term.
    """
    e = exp32(x)
    v = _ONE + e
    res = log32_ge1(v) + (e - (v - _ONE)) / v
    if x > _SOFTPLUS_THRESHOLD32:
        res = x
    return res


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def sigmoid32(x):
    """float32 plain sigmoid ``1 / (1 + exp(-x))``."""
    return _ONE / (_ONE + exp32(-x))


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def softplus_sigmoid32(x):
    """``(softplus32(x), sigmoid(x))`` from one ``exp32``: the softplus bit for bit that of
    :func:`softplus32`, the sigmoid as ``e / (1 + e)`` with ``e = exp32(x)`` (1 above the
    softplus threshold 20, where the float32 sigmoid rounds to 1; below -86.99, where
    ``exp32`` flushes to 0, it is 0 instead of a subnormal). NaN gives NaN twice."""
    e = exp32(x)
    v = _ONE + e
    res = log32_ge1(v) + (e - (v - _ONE)) / v
    sig = e / v
    if x > _SOFTPLUS_THRESHOLD32:
        res = x
        sig = _ONE
    return res, sig


#: log(DBL_MAX): the largest float64 argument with a finite exp
_LOG_DBL_MAX = math.log(np.finfo(np.float64).max)


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def softplus64(x):
    """float64 softplus: plain ``log(1 + exp(x))`` (the spec's List family) where ``exp(x)`` is finite.

    Above ``log(DBL_MAX)`` = 709.78, where ``exp`` overflows and the plain form
    would give inf, the result is ``x``: the branched form's value there
    (``x + log(1 + exp(-x))`` rounds to ``x`` for every ``x > 36.8``). So the
    result is bitwise the List family's wherever that is finite, and finite
    for every finite ``x``. NaN gives NaN, inf gives inf.
    """
    res = math.log(1.0 + math.exp(x))
    if x > _LOG_DBL_MAX:
        res = x
    return res


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def sigmoid64(x):
    """float64 plain sigmoid ``1 / (1 + exp(-x))`` (the spec's List family)."""
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- dispatch
def exp_(x):  # pragma: no cover - replaced inside jitted code
    """``exp`` of a float32 (polynomial) or float64 (libm) scalar, inside jitted code."""
    raise NotImplementedError("exp_ is only callable from jitted code")


def softplus_(x):  # pragma: no cover
    """Softplus of a float32 (:func:`softplus32`) or float64 (:func:`softplus64`) scalar."""
    raise NotImplementedError("softplus_ is only callable from jitted code")


def sigmoid_(x):  # pragma: no cover
    """Plain sigmoid of a float32 (:func:`sigmoid32`) or float64 (:func:`sigmoid64`) scalar."""
    raise NotImplementedError("sigmoid_ is only callable from jitted code")


@overload(exp_, jit_options={"error_model": "numpy"}, inline="always")
def _ov_exp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(softplus_, jit_options={"error_model": "numpy"}, inline="always")
def _ov_softplus(x):
    if x == types.float32:
        return lambda x: softplus32(x)
    if x == types.float64:
        return lambda x: softplus64(x)
    return None


def softplus_sigmoid_(x):  # pragma: no cover
    """``(softplus_(x), sigmoid(x))``: float32 from one exp (:func:`softplus_sigmoid32`),
    float64 the two libm forms (:func:`softplus64`, :func:`sigmoid64`)."""
    raise NotImplementedError("softplus_sigmoid_ is only callable from jitted code")


@overload(softplus_sigmoid_, jit_options={"error_model": "numpy"}, inline="always")
def _ov_softplus_sigmoid(x):
    if x == types.float32:
        return lambda x: softplus_sigmoid32(x)
    if x == types.float64:
        return lambda x: (softplus64(x), sigmoid64(x))
    return None


@overload(sigmoid_, jit_options={"error_model": "numpy"}, inline="always")
def _ov_sigmoid(x):
    if x == types.float32:
        return lambda x: sigmoid32(x)
    if x == types.float64:
        return lambda x: sigmoid64(x)
    return None
