"""nbssm.signature under hostile input: sizes, dtypes and layouts, non-finite values, limits.

Expected values come from the pure-Python Chen reference (tests/signature_naive.py) or from
closed forms (one segment, a 1-D path), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbssm.signatures import signature, signature_length, word_index
from signature_naive import segment_signature, signature_flat, words
from tolerances import max_rel_err, tol


class TestSizes:
    @pytest.mark.parametrize("dim", [1, 2, 3])
    @pytest.mark.parametrize("depth", [1, 2, 5])
    def test_one_point_is_zero_and_one_segment_is_the_exponential(self, dim, depth):
        rng = np.random.default_rng(dim * 10 + depth)
        assert not signature(rng.standard_normal((1, dim)), depth).any()
        assert signature(rng.standard_normal((4, 1, dim)), depth, stream=True).shape == (4, 1, signature_length(dim, depth))
        seg = rng.standard_normal((2, dim))
        want = segment_signature((seg[1] - seg[0]).tolist(), depth)
        got = signature(seg, depth)
        assert max_rel_err(got, np.array([want[w] for w in words(dim, depth)])) <= tol("signature_vs_chen_reference")

    def test_depth_one_is_the_total_increment_and_dim_one_is_closed_form(self):
        rng = np.random.default_rng(1)
        path = rng.standard_normal((30, 4))
        np.testing.assert_allclose(signature(path, 1), path[-1] - path[0], rtol=0, atol=1e-13)
        line = rng.standard_normal((25, 1))
        inc = float(line[-1, 0] - line[0, 0])
        want = np.array([inc**k / math.factorial(k) for k in range(1, 9)])
        assert max_rel_err(signature(line, 8), want) <= tol("signature_vs_chen_reference")

    @pytest.mark.parametrize("shape", [(0, 5, 2), (0, 1, 3)])
    @pytest.mark.parametrize("stream", [False, True])
    def test_empty_batch(self, shape, stream):
        out = signature(np.zeros(shape), 3, stream=stream)
        assert out.shape == ((0, shape[1], signature_length(shape[2], 3)) if stream else (0, signature_length(shape[2], 3)))

    @pytest.mark.parametrize("shape, match", [((0, 2), "length >= 1"), ((3, 0), "dim >= 1"), ((2, 0, 2), "length >= 1"),
                                              ((5,), "shape"), ((1, 2, 3, 4), "shape"), ((), "shape")])
    def test_degenerate_shapes_refused(self, shape, match):
        with pytest.raises(ValueError, match=f"^path: expected .*{match}"):
            signature(np.zeros(shape), 2)

    @pytest.mark.parametrize("dim, depth, match", [
        (10, 30, r"^depth: expected dim \+ \.\.\. \+ dim\*\*depth <= 2\*\*62"),  # 1e30 words: refused arithmetically
        (2, 10**18, "^depth: expected"),  # would take forever to even count
        (1, 2**62 + 1, "^depth: expected"),
        (2, 40, "^signature: expected an output that fits in memory"),  # 2.2e12 words: ~17 TB
        (1, 10**15, "^signature: expected an output that fits in memory"),
    ])
    def test_huge_declared_sizes_refused_before_allocating(self, dim, depth, match):
        with pytest.raises(ValueError, match=match):
            signature(np.zeros((3, dim)), depth)

    def test_huge_stream_and_zero_stride_paths_refused(self):
        with pytest.raises(ValueError, match="^signature: expected an output that fits in memory"):
            signature(np.zeros((2**20, 3)), 10, stream=True)  # 2**20 prefixes x 88572 words: 743 GB
        virtual = np.broadcast_to(np.zeros(2), (2**20, 2**20, 2))  # 16 TB once materialised
        with pytest.raises(ValueError, match="^path: expected a float64 copy that fits in memory"):
            signature(virtual, 1)
        with pytest.raises(ValueError, match="^path: expected a float64 copy that fits in memory"):
            signature(np.broadcast_to(np.int8(0), (2**21, 2**20, 2)), 1)  # integer: refused before converting

    def test_signature_length_and_word_index_limits(self):
        assert signature_length(1, 2**62) == 2**62
        assert signature_length(2, 61) == 2**62 - 2
        with pytest.raises(ValueError, match="^depth"):
            signature_length(2, 62)
        with pytest.raises(ValueError, match=r"^dim: expected an int >= 1, got 0"):
            signature_length(0, 2)
        with pytest.raises(TypeError, match="^depth: expected an int, got float"):
            signature_length(2, 2.0)
        assert word_index((1,) * 61, 2) == 2**62 - 3  # the last coordinate of depth 61
        with pytest.raises(ValueError, match=r"^word: expected an int in \[0, 1\], got -1"):
            word_index((0, -1), 2)
        with pytest.raises(TypeError, match="^word: expected an int, got bool"):
            word_index((True,), 2)
        with pytest.raises(TypeError, match="^word: expected an int, got float"):
            word_index((0.0,), 2)
        with pytest.raises(TypeError, match="^word: expected a sequence of ints"):
            word_index(3, 2)
        with pytest.raises(ValueError, match="^dim: expected an int >= 1"):
            word_index((0,), 0)


class TestDtypesAndLayouts:
    @pytest.mark.parametrize("dtype", [np.bool_, np.complex128, np.float16, object, np.longdouble, "U3", "datetime64[s]"],
                             ids=str)
    def test_bad_dtypes_refused(self, dtype):
        with pytest.raises(TypeError, match="^path: expected a float32, float64 or integer array, got dtype"):
            signature(np.zeros((3, 2)).astype(dtype), 2)

    def test_ragged_and_non_arrays_refused(self):
        with pytest.raises(TypeError, match="^path: expected a real array"):
            signature([[0.0, 1.0], [2.0]], 2)
        with pytest.raises(TypeError, match="^path: expected"):
            signature({"a": 1}, 2)

    @pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint64])
    def test_integer_paths_are_float64(self, dtype):
        path = np.array([[5, 1], [3, 4], [0, 2], [7, 7]], dtype=dtype)  # decreasing unsigned values
        got = signature(path, 3)
        assert got.dtype == np.float64
        want = np.array(signature_flat(path.astype(np.float64).tolist(), 3))
        assert max_rel_err(got, want) <= tol("signature_vs_chen_reference")

    def test_integer_limits(self):
        big = np.array([[0], [2**62]], dtype=np.int64)
        got = signature(big, 2)
        np.testing.assert_array_equal(got, [2.0**62, 2.0**123])
        top = np.array([[0], [np.iinfo(np.uint64).max]], dtype=np.uint64)
        assert signature(top, 1)[0] == float(np.iinfo(np.uint64).max)

    @pytest.mark.parametrize("layout", ["fortran", "reversed", "strided", "readonly"])
    @pytest.mark.parametrize("stream", [False, True])
    def test_layouts_give_the_same_bits_and_inputs_stay(self, layout, stream):
        rng = np.random.default_rng(5)
        path = rng.standard_normal((3, 12, 3))
        want = signature(path, 3, stream=stream)
        if layout == "fortran":
            odd = np.asfortranarray(path)
        elif layout == "reversed":
            odd = np.ascontiguousarray(path[::-1, ::-1])[::-1, ::-1]
        elif layout == "strided":
            odd = np.repeat(path, 2, axis=1)[:, ::2]
        else:
            odd = path.copy()
            odd.setflags(write=False)
        before = odd.copy()
        np.testing.assert_array_equal(signature(odd, 3, stream=stream), want)
        np.testing.assert_array_equal(odd, before)

    def test_float32_in_float32_out(self):
        path = np.random.default_rng(6).standard_normal((2, 9, 2)).astype(np.float32)
        got = signature(path, 3)
        assert got.dtype == np.float32
        assert max_rel_err(got, signature(path.astype(np.float64), 3)) <= tol("signature_float32_output")

    @pytest.mark.parametrize("depth, exc", [(True, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError),
                                            (0, ValueError), (-1, ValueError), (-(2**63), ValueError)])
    def test_bad_depth(self, depth, exc):
        with pytest.raises(exc, match="^depth: expected an int"):
            signature(np.zeros((3, 2)), depth)

    def test_numpy_integer_depth_and_bool_stream(self):
        path = np.random.default_rng(7).standard_normal((5, 2))
        np.testing.assert_array_equal(signature(path, np.int32(3)), signature(path, 3))
        np.testing.assert_array_equal(signature(path, 2, stream=np.bool_(True)), signature(path, 2, stream=True))
        for bad in ("yes", 1, None):
            with pytest.raises(TypeError, match="^stream: expected a bool"):
                signature(path, 2, stream=bad)


class TestNonFinite:
    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("where", [(0, 0, 0), (1, 3, 1), (2, 9, 2)])
    @pytest.mark.parametrize("stream", [False, True])
    def test_refused_naming_the_index(self, value, where, stream):
        path = np.zeros((3, 10, 3))
        path[where] = value
        with pytest.raises(ValueError, match=rf"^path: expected finite values, got {value} at index \({where[0]}, "):
            signature(path, 2, stream=stream)
        with pytest.raises(ValueError, match=rf"^path: expected finite values, got {value} at index \({where[1]}, "):
            signature(path[where[0]], 2, stream=stream)  # 2-D: the index within the path

    def test_subnormal_increments_are_computed(self):
        rng = np.random.default_rng(8)
        path = rng.standard_normal((10, 2)) * 1e-310
        got = signature(path, 2)
        want = np.array(signature_flat(path.tolist(), 2))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got[:2], want[:2], rtol=1e-12, atol=0)  # level 1 exact up to rounding
        assert np.all(np.abs(got[2:]) <= 1e-300)  # level 2 underflows to (near) zero

    def test_overflow_of_finite_paths_is_inf_as_documented(self):
        path = np.array([[0.0, 0.0], [1e200, 1.0]])
        with np.errstate(all="ignore"):
            got = signature(path, 2)
        assert got[0] == 1e200 and got[1] == 1.0
        assert got[2] == np.inf  # (1e200)**2 / 2
        assert got[5] == 0.5
