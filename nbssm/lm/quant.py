"""Storage formats of the decode weights: float32, bfloat16, float16 and q8_0-like int8.

The big matrices of a :class:`~nbssm.lm.MambaLM` (in_proj, x_proj, dt_proj, out_proj, the
embedding and the LM head) can be kept in one of these formats; the decode kernel
(:mod:`nbssm._kernels.decode`) converts each weight to float32 inside its dot products, and
state and accumulation stay float32. Every format is defined by its dequantization, which is
exact in float32 arithmetic, so a model in any format computes exactly what a float32 model
built from :func:`dequantize` of its weights computes:

``"bf16"``
    bfloat16 bit patterns in ``uint16``: ``float32 = bits << 16`` (exact). Made from float32 by
    round-to-nearest-even (:func:`to_bf16`); a bf16 checkpoint is kept as stored.
``"fp16"``
    IEEE half bit patterns in ``int16`` (exact conversion; ``vcvtph2ps`` on x86 with F16C).
    Made from float32 by ``numpy.float16`` rounding; a value beyond the half range is refused.
``"int8"``
    For each row and each block of ``QBLOCK = 32`` consecutive inputs (the last block of a row
    may be shorter): ``scale = max|w| / 127`` (float32) and ``q = round(w / scale)`` to the
    nearest integer (ties to even), in [-127, 127]; ``w ~ float32(q) * scale`` (one float32
    rounding). The error per weight is at most ``scale / 2`` plus that rounding. An all-zero
    block has scale 0.
"""

from __future__ import annotations

import numpy as np

from .._kernels.decode import QBLOCK

__all__ = ["FORMATS", "QBLOCK", "dequantize", "encode", "from_bf16", "from_fp16", "quantize_q8", "to_bf16",
           "to_fp16"]

#: the storage formats of the decode weights, by name, with their data dtype
FORMATS: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "bf16": np.dtype(np.uint16),
           "fp16": np.dtype(np.int16), "int8": np.dtype(np.int8)}


def to_bf16(a: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of finite float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_fp16(a: np.ndarray, name: str = "weights") -> np.ndarray:
    """IEEE half bit patterns (int16) of float32 values; refuses values beyond the half range."""
    a = np.asarray(a, dtype=np.float32)
    big = np.abs(a) > np.float32(65504.0)
    if big.any():
        raise ValueError(f"{name}: value {a[big].flat[0]!r} is beyond the float16 range (|w| <= 65504); "
                         "use weights='bf16' or 'int8'")
    return np.ascontiguousarray(a.astype(np.float16)).view(np.int16)


def from_fp16(bits: np.ndarray) -> np.ndarray:
    """float32 values of IEEE half bit patterns (exact)."""
    return np.asarray(bits, dtype=np.int16).view(np.float16).astype(np.float32)


def quantize_q8(a: np.ndarray, block: int = QBLOCK) -> tuple[np.ndarray, np.ndarray]:
    """q8_0-like quantization along the last axis: ``(q int8 (..., n), scale float32 (..., ceil(n/block)))``.

    ``scale = max|w| / 127`` per block, ``q = rint(w / scale)`` (0 where the scale is 0).
    """
    a = np.asarray(a, dtype=np.float32)
    n = a.shape[-1]
    nblk = -(-n // block)
    pad = nblk * block - n
    ap = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]) if pad else a
    blocks = ap.reshape(a.shape[:-1] + (nblk, block))
    scale = (np.max(np.abs(blocks), axis=-1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.rint(blocks / safe[..., None])
    q = np.clip(q, -127, 127).astype(np.int8).reshape(a.shape[:-1] + (nblk * block,))[..., :n]
    return np.ascontiguousarray(q), np.ascontiguousarray(scale)


def dequantize(data: np.ndarray, scale: np.ndarray | None = None, block: int = QBLOCK) -> np.ndarray:
    """float32 values of stored weights of any format (by the data dtype), exactly as the kernel computes them."""
    data = np.asarray(data)
    if data.dtype == np.uint16:
        return from_bf16(data)
    if data.dtype == np.int16:
        return from_fp16(data)
    if data.dtype == np.int8:
        if scale is None:
            raise ValueError("int8 weights need their scales")
        s = np.repeat(np.asarray(scale, dtype=np.float32), block, axis=-1)[..., :data.shape[-1]]
        return data.astype(np.float32) * s
    return np.array(data, dtype=data.dtype)


def encode(a: np.ndarray, fmt: str, name: str = "weights") -> tuple[np.ndarray, np.ndarray]:
    """``(data, scale)`` of float values ``a`` (..., rows, n) in storage format ``fmt``.

    ``scale`` is (..., rows, ceil(n / QBLOCK)) for int8, else (..., rows, 0).
    """
    if fmt == "int8":
        return quantize_q8(a)
    empty = np.zeros(np.shape(a)[:-1] + (0,), np.float32)
    if fmt == "bf16":
        return to_bf16(a), empty
    if fmt == "fp16":
        return to_fp16(a, name), empty
    if fmt in ("float32", "float64"):
        return np.ascontiguousarray(a, dtype=FORMATS[fmt]), empty
    raise ValueError(f"weights: expected one of {sorted(FORMATS)}, got {fmt!r}")
