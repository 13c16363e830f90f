"""Argument checks shared by the paper layer (:mod:`nbssm.cde`, :mod:`nbssm.signatures`).

Messages follow the package format ``"<argument>: expected <what>, got <actual>"``:
``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong value or shape.
"""

from __future__ import annotations

import os

import numpy as np

#: largest number of elements an output may have (int64 indexing with headroom)
MAX_ELEMENTS = 2**62


def real_array(x, name: str) -> np.ndarray:
    """``x`` as an ndarray of float32 or float64 (integer dtypes are converted to float64).

    Never copies a float32/float64 array and never writes it. Raises ``TypeError`` for bool,
    complex, object, float16 or any other dtype, or input numpy cannot make an array of.
    Integer arrays too large to convert in memory raise ``ValueError`` first.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested sequences, unconvertible objects
        raise TypeError(f"{name}: expected a real array, got {type(x).__name__} ({exc})") from None
    dt = arr.dtype
    if dt.kind in "iu":
        check_output_size(name, arr.shape, what="a float64 copy")
        arr = arr.astype(np.float64)
    elif dt not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32, float64 or integer array, got dtype {dt}")
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """``ValueError`` naming the first NaN or Inf of ``arr`` (and its index)."""
    if arr.size and not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: expected finite values, got {arr[bad]} at index {bad}")


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


def _available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MAX_ELEMENTS


def check_output_size(name: str, shape: tuple, itemsize: int = 8, what: str = "an output") -> None:
    """Refuse an array of ``shape`` before allocating it if it cannot fit in available memory.

    Used for outputs and for the contiguous float64 copies of inputs (a broadcast view with
    zero strides can declare a size that only exists once materialised).
    """
    count = 1
    for s in shape:
        count *= int(s)
    nbytes = count * itemsize
    if count > MAX_ELEMENTS:
        raise ValueError(f"{name}: expected at most 2**62 elements, got shape {tuple(int(s) for s in shape)}")
    limit = _available_memory()
    if nbytes > limit:
        raise ValueError(
            f"{name}: expected {what} that fits in memory (<= {limit} bytes), "
            f"got shape {tuple(int(s) for s in shape)} ({nbytes} bytes)"
        )
