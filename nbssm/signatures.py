"""Truncated path signatures (iisignature's conventions), computed with Numba.

The signature of a path ``X: [0, 1] -> R^d`` is the collection of iterated integrals
``S^I(X) = int_{0<u_1<...<u_k<1} dX^{i_1}_{u_1} ... dX^{i_k}_{u_k}`` over words
``I = (i_1, ..., i_k)``. A path given by samples is linearly interpolated; each linear segment
with increment ``delta`` has signature ``(1, delta, delta^{(x)2}/2!, ...)`` and Chen's identity
``S_{s,u} = S_{s,t} (x) S_{t,u}`` glues the segments.

Conventions (those of iisignature): levels ``1..depth`` (level 0, the constant 1, is not
returned), words in lexicographic order within each level, levels concatenated. For
``d = 2``: ``[S^1, S^2, S^11, S^12, S^21, S^22, S^111, ...]``. The path
``[[1,1],[3,4],[5,2],[8,6]]`` has level 1 ``(7, 5)`` and level 2 ``(24.5, 19, 16, 12.5)``.

:func:`signature` is also the top-level ``nbssm.signature``. This module is named
``signatures`` so that importing it never rebinds that name (the old module path
``nbssm.signature`` remains one release as a deprecated alias).
"""

from __future__ import annotations

import math

import numpy as np

from nbssm._paper_inputs import MAX_ELEMENTS, check_bool, check_finite, check_int, check_output_size, real_array

__all__ = ["signature", "signature_length", "word_index"]


def signature_length(dim: int, depth: int) -> int:
    """Number of signature coordinates at levels ``1..depth`` of a ``dim``-dimensional path.

    Returns ``dim + dim**2 + ... + dim**depth``. ``ValueError`` if ``dim < 1``, ``depth < 1``
    or the count exceeds ``2**62`` (no array that large can be indexed).
    """
    dim = check_int(dim, "dim", 1)
    depth = check_int(depth, "depth", 1)
    if dim == 1:
        total = depth
    elif depth * math.log2(dim) > 63:  # dim**depth alone exceeds 2**63: do not form it
        total = MAX_ELEMENTS + 1
    else:
        total = (dim ** (depth + 1) - dim) // (dim - 1)
    if total > MAX_ELEMENTS:
        raise ValueError(
            f"depth: expected dim + ... + dim**depth <= 2**62 coordinates, got dim = {dim}, depth = {depth}"
        )
    return total


def word_index(word, dim: int) -> int:
    """Position of a word in the flat signature returned by :func:`signature`.

    Parameters
    ----------
    word : sequence of int
        0-based letters, e.g. ``(0, 1)`` for ``S^{12}`` in 1-based notation.
    dim : int
        Path dimension, ``>= 1``.

    Returns
    -------
    int
        ``sum_{k < len(word)} dim**k`` minus 1 plus the lexicographic rank of the word in its
        level, i.e. the column holding ``S^word``.
    """
    dim = check_int(dim, "dim", 1)
    try:
        letters = list(word)
    except TypeError:
        raise TypeError(f"word: expected a sequence of ints, got {type(word).__name__}") from None
    if not letters:
        raise ValueError("word: expected a non-empty word (level 0 is not stored), got ()")
    for c in letters:
        check_int(c, "word", 0, dim - 1)
    k = len(letters)
    offset = signature_length(dim, k - 1) if k > 1 else 0
    rank = 0
    for c in letters:
        rank = rank * dim + int(c)
    return offset + rank


def _offsets(dim: int, depth: int) -> np.ndarray:
    off = np.zeros(depth + 1, dtype=np.int64)
    acc = 0
    for k in range(1, depth + 1):
        off[k] = acc
        acc += dim**k
    return off


def signature(path, depth: int, stream: bool = False) -> np.ndarray:
    """Truncated signature of a piecewise-linear path.

    Parameters
    ----------
    path : array_like, shape (length, dim) or (batch, length, dim)
        Samples of the path (linearly interpolated between samples); 2-D is one path.
        float32, float64 or integer (converted to float64), any strides, Fortran order or
        read-only; never modified.
    depth : int
        Truncation level, ``>= 1`` (level 0, the constant 1, is never returned).
    stream : bool, default False
        If True, return the signature of every prefix ``path[..., :t+1, :]`` for
        ``t = 0..length-1``; the first row (a one-point path) is zero. iisignature's
        ``sig(path, depth, 2)`` equals ``signature(path, depth, stream=True)[..., 1:, :]``.

    Returns
    -------
    ndarray
        ``(siglen,)`` or ``(batch, siglen)``; with ``stream=True`` ``(length, siglen)`` or
        ``(batch, length, siglen)``, where ``siglen = dim + dim**2 + ... + dim**depth``.
        float32 if ``path`` is float32, else float64 (always accumulated in float64).

    Raises
    ------
    ValueError
        If ``path`` is not 2-D or 3-D, has zero length or dimension, contains NaN or Inf, or
        ``depth < 1``, or if the output would not fit in memory (checked before allocating).
    TypeError
        If ``path`` is not float32, float64 or integer (bool, complex, object, float16), or
        ``depth``/``stream`` are not an int/bool.

    Notes
    -----
    Chen's identity one segment at a time, level ``m`` by Horner's rule in ``O(dim**m)``
    operations. ``stream=False`` prepends segments from the last one
    (``S <- exp(delta) (x) S``: the new letter comes first, so the inner loops run over long
    contiguous blocks); ``stream=True`` appends them (``S <- S (x) exp(delta)``) to produce
    every prefix. The two orders agree up to rounding (~1e-15 relative). Paths are processed
    in parallel over the batch; each row depends only on its own path, not on the thread
    count. A one-point path has zero signature.
    The paper's bound: level ``k`` is at most ``||X||_{1-var}**k / k!`` in norm.
    """
    from nbssm._kernels import signature as _k

    depth = check_int(depth, "depth", 1)
    stream = check_bool(stream, "stream")
    arr = real_array(path, "path")
    if arr.ndim not in (2, 3):
        raise ValueError(f"path: expected shape (length, dim) or (batch, length, dim), got {arr.shape}")
    unbatched = arr.ndim == 2
    if unbatched:
        arr = arr[None]
    b, length, dim = arr.shape
    if length < 1:
        raise ValueError(f"path: expected at least one sample (length >= 1), got shape {np.shape(path)}")
    if dim < 1:
        raise ValueError(f"path: expected dim >= 1, got shape {np.shape(path)}")
    out_dtype = np.float32 if arr.dtype == np.float32 else np.float64
    siglen = signature_length(dim, depth)
    check_output_size("signature", (b, length, siglen) if stream else (b, siglen))
    check_output_size("path", arr.shape, what="a float64 copy")  # also catches zero-stride views
    check_finite(arr[0] if unbatched else arr, "path")
    x = np.ascontiguousarray(arr, dtype=np.float64)  # a copy whenever arr is not already so
    offsets = _offsets(dim, depth)
    if stream:
        out = np.empty((b, length, siglen))
        if b:
            _k.signature_stream(x, depth, offsets, out)
    else:
        out = np.empty((b, siglen))
        if b:
            _k.signature_batch(x, depth, offsets, out)
    if unbatched:
        out = out[0]
    return out.astype(out_dtype, copy=False)
