"""Shared validation and layout helpers for arrays handed to the kernels.

Policy (used by :mod:`nbssm.ops` and reusable by the models):

* dtypes: float32 and float64 are computed in; integer arrays are converted
  to float64; bool, complex, object, float16 (and other floats) raise a
  ``TypeError`` naming the argument;
* layout: every array handed to a kernel is C-contiguous and aligned (copied
  if it is not: Fortran order, negative strides, slices), and is passed as a
  *read-only view*, so that Numba compiles exactly one specialisation per
  dtype whatever the caller's strides and flags, and so that kernels can
  never write an input;
* shapes: a wrong number of dimensions or a wrong size raises a
  ``ValueError`` naming the argument and the expected shape.

Nothing here checks values: NaN and Inf are allowed and propagate (see the
NaN policy in :mod:`nbssm.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(shape: Sequence) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def float_dtype_of(x, name: str) -> np.dtype:
    """The compute dtype an input array maps to: float32/float64 kept, integers -> float64.

    Raises
    ------
    TypeError
        For bool, complex, object, float16 or any other dtype.
    """
    dt = np.asarray(x).dtype if not hasattr(x, "dtype") else np.dtype(x.dtype)
    if dt in FLOAT_DTYPES:
        return dt
    if dt.kind in "iu":
        return np.dtype(np.float64)
    if dt == np.float16:
        raise TypeError(
            f"{name}: expected a float32, float64 or integer array, got dtype float16 "
            f"(convert explicitly, e.g. {name}.astype(np.float32))"
        )
    raise TypeError(f"{name}: expected a float32, float64 or integer array, got dtype {dt}")


def result_dtype(*pairs: tuple) -> np.dtype:
    """float64 if any of the ``(array, name)`` pairs maps to float64, else float32."""
    dts = [float_dtype_of(x, name) for x, name in pairs if x is not None]
    return np.dtype(np.float64) if any(d == np.float64 for d in dts) else np.dtype(np.float32)


def as_float_array(x, name: str, dtype, shape: Sequence | None = None, ndim: int | None = None) -> np.ndarray:
    """Validate ``x`` and return it as a C-contiguous, aligned, read-only array of ``dtype``.

    Parameters
    ----------
    x : array_like
        The argument.
    name : str
        Its name, for error messages.
    dtype : numpy dtype
        float32 or float64: the compute dtype (see :func:`result_dtype`).
    shape : sequence of (int or str or None), optional
        Expected shape; ``None`` or a string entry (a symbolic name like
        ``"length"``) accepts any size on that axis; strings appear in the
        error message.
    ndim : int, optional
        Expected number of dimensions (implied by ``shape``).

    Returns
    -------
    numpy.ndarray
        A read-only view (never the caller's array object, so its flags are
        untouched); a copy only when the dtype, the order or the alignment
        needed it. The caller's data is never written.
    """
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    arr = np.asarray(x)
    float_dtype_of(arr, name)  # raises for unsupported dtypes
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and arr.ndim != ndim:
        want = _describe(shape) if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape} ({arr.ndim} dimensions)")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, arr.shape)):
            if isinstance(want, (int, np.integer)) and int(want) != got:
                raise ValueError(f"{name}: expected shape {_describe(shape)}, got {arr.shape} (axis {axis})")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not arr.flags.aligned:
        arr = arr.copy()
    return readonly(arr)


def readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view of ``arr`` (the kernels' argument type for every input)."""
    view = arr.view()
    view.flags.writeable = False
    return view


def optional_float_array(x, name: str, dtype, shape: Sequence) -> tuple[np.ndarray, bool]:
    """Like :func:`as_float_array` for an optional argument.

    Returns ``(array, present)``; for ``None``, an empty read-only array with
    the right number of dimensions (so the kernel keeps one specialisation)
    and ``False``.
    """
    if x is None:
        return readonly(np.zeros((0,) * len(shape), dtype=dtype)), False
    return as_float_array(x, name, dtype, shape=shape), True


def check_int(value, name: str, minimum: int) -> int:
    """An integer ``>= minimum`` (bools and floats rejected) or a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_out(out, shape: tuple, dtype, inputs: dict):
    """Validate a caller's ``out`` array: exact shape and dtype, C-contiguous, aligned, writable,
    sharing no memory with any input. Returns it (never a copy)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out: expected dtype {np.dtype(dtype).name} (the compute dtype), got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.aligned):
        raise ValueError(f"out: expected a C-contiguous aligned array, got strides {out.strides}")
    if not out.flags.writeable:
        raise ValueError("out: expected a writable array, got a read-only one")
    for name, arr in inputs.items():
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr):
            raise ValueError(f"out: expected an array sharing no memory with the inputs, got one overlapping {name}")
    return out
