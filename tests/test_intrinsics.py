"""The kernels' LLVM intrinsics (``nbssm._kernels.intrinsics``) against plain numpy / Python.

Each vector intrinsic replaces a lane loop whose operations and order it must keep: the sums
are compared bit for bit with the same additions written out in Python (float32 arithmetic
through numpy scalars, float64 through Python floats), on values whose sums round differently
in any other order.
"""

import numpy as np
import pytest
from numba import carray, njit

from nbssm._kernels.intrinsics import copy_line, flat, fold32_8, stack_buffer, tree8_rows

DTYPES = (np.float32, np.float64)


def _awkward(rng, n, dtype):
    """Values of mixed magnitudes and signs: a sum's bits depend on its order."""
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)
    return x.astype(dtype)


@njit
def _fold_all(src, dst):
    for r in range(src.size // 32):
        fold32_8(dst, r * 8, src, r * 32)


@njit
def _tree_all(src, dst):
    for r in range(src.size // 64):
        tree8_rows(dst, r * 8, src, r * 64)


@njit
def _copy_lines(src, soff, dst, doff, nlines):
    line = 64 // src.itemsize
    for k in range(nlines):
        copy_line(dst, doff + k * line, src, soff + k * line)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fold32_8_is_the_fixed_tree_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    src = _awkward(rng, 32 * 50, dtype)
    dst = np.full(8 * 50, np.nan, dtype)
    _fold_all(src, dst)
    s = src.reshape(50, 32)
    want = (s[:, 0:8] + s[:, 16:24]) + (s[:, 8:16] + s[:, 24:32])  # elementwise: one rounding per add
    assert np.array_equal(dst.reshape(50, 8), want)
    # and not merely some other order that happens to agree: a different tree differs somewhere
    other = (s[:, 0:8] + s[:, 8:16]) + (s[:, 16:24] + s[:, 24:32])
    assert not np.array_equal(want, other)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tree8_rows_is_the_fixed_tree_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    src = _awkward(rng, 64 * 40, dtype)
    dst = np.full(8 * 40, np.nan, dtype)
    _tree_all(src, dst)
    x = src.reshape(-1, 8)  # one row of 8 partials per output
    want = ((x[:, 0] + x[:, 4]) + (x[:, 2] + x[:, 6])) + ((x[:, 1] + x[:, 5]) + (x[:, 3] + x[:, 7]))
    assert np.array_equal(dst, want)
    other = ((x[:, 0] + x[:, 1]) + (x[:, 2] + x[:, 3])) + ((x[:, 4] + x[:, 5]) + (x[:, 6] + x[:, 7]))
    assert not np.array_equal(want, other)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soff", [0, 1, 3, 16])
def test_copy_line_copies_64_bytes_at_any_alignment(dtype, soff):
    rng = np.random.default_rng(2)
    src = _awkward(rng, 200, dtype)
    src[5] = -0.0
    src[7] = np.nan
    dst = np.full(200, 7.0, dtype)
    line = 64 // np.dtype(dtype).itemsize
    _copy_lines(src, soff, dst, 2, 3)
    got, want = dst[2:2 + 3 * line], src[soff:soff + 3 * line]
    assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()  # NaN and -0.0 bits too
    assert np.all(dst[:2] == 7.0) and np.all(dst[2 + 3 * line:] == 7.0)  # nothing outside written


@njit
def _flat_sum_and_write(a, out):
    x = flat(a)
    s = 0.0
    for i in range(x.size):
        s += x[i] * (i + 1)
    o = flat(out)
    for i in range(o.size):
        o[i] = i
    buf = carray(stack_buffer(6, np.float64), (2, 3))
    bf = flat(buf)
    for i in range(6):
        bf[i] = 10.0 * i
    return s, x.shape[0], buf[1, 2]


def test_flat_is_reshape_of_a_c_array():
    a = np.arange(24.0).reshape(2, 3, 4)
    ro = a.copy()
    ro.setflags(write=False)
    out = np.zeros((3, 5))
    for arr in (a, ro):
        s, n, last = _flat_sum_and_write(arr, out)
        assert s == float((a.ravel() * np.arange(1, 25)).sum())
        assert n == 24 and last == 50.0
    assert np.array_equal(out.ravel(), np.arange(15.0))  # a view: writes reach the array
    assert not ro.flags.writeable and np.array_equal(ro, a)  # read-only input untouched


def test_flat_refuses_a_non_contiguous_array():
    from numba.core.errors import TypingError

    with pytest.raises(TypingError):
        _flat_sum_and_write(np.arange(24.0).reshape(4, 6)[:, ::2], np.zeros(3))
