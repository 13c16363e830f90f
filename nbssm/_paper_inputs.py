"""Argument checks shared by the paper layer (:mod:`nbssm.cde`, :mod:`nbssm.signatures`).

Messages follow the package format ``"<argument>: expected <what>, got <actual>"``:
``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong value or shape.
"""

from __future__ import annotations

import os

import numpy as np

#: largest number of elements an output may have (int64 indexing with headroom)
MAX_ELEMENTS = 2**62


def real_array(x, name: str, finite: bool = True) -> np.ndarray:
    """``x`` as an ndarray of float32, float64 or an integer dtype (integers -> float64).

    Never copies a float32/float64 array and never writes it. Raises ``TypeError`` for bool,
    complex, object, float16 or any other dtype (or input numpy cannot make an array of), and
    ``ValueError`` naming the first NaN or Inf when ``finite``.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested sequences, unconvertible objects
        raise TypeError(f"{name}: expected a real array, got {type(x).__name__} ({exc})") from None
    dt = arr.dtype
    if dt.kind in "iu":
        arr = arr.astype(np.float64)
    elif dt not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32, float64 or integer array, got dtype {dt}")
    if finite and arr.size and not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: expected finite values, got {arr[bad]} at index {bad}")
    return arr


def check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (bool and non-integers refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        want = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {want}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_ELEMENTS


def check_output_size(name: str, shape: tuple, itemsize: int = 8) -> None:
    """Refuse an output of ``shape`` before allocating it if it cannot fit in physical memory."""
    count = 1
    for s in shape:
        count *= int(s)
    nbytes = count * itemsize
    limit = _physical_memory()
    if count > MAX_ELEMENTS or nbytes > limit:
        raise ValueError(
            f"{name}: expected an output that fits in memory (<= {limit} bytes), "
            f"got shape {tuple(int(s) for s in shape)} ({nbytes} bytes)"
        )
