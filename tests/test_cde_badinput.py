"""Linear CDE scans under hostile input: sizes, dtypes and layouts, non-finite values, limits.

Each case gets a clear error naming the argument, or the documented behaviour; expected values
come from an independent numpy step (matrix powers), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbssm.cde import diagonal_cde_scan, increments, linear_cde_scan, taylor_error_bound
from tolerances import max_rel_err, tol

ARGS = ("A", "B", "domega", "dxi", "initial_state")


def _inputs(seed=0, b=2, T=4, n=3, dw=2, dx=2, scale=0.3):
    rng = np.random.default_rng(seed)
    return dict(A=rng.standard_normal((dw, n, n)) / math.sqrt(n), B=rng.standard_normal((n, dx)),
                domega=rng.standard_normal((b, T, dw)) * scale, dxi=rng.standard_normal((b, T, dx)) * scale,
                initial_state=rng.standard_normal((b, n)))


def _naive_taylor(A, B, domega, dxi, z0, order):
    """Independent dense Taylor scan: explicit matrix powers, one path at a time. (b, n)."""
    out = []
    for p in range(z0.shape[0]):
        z = z0[p].astype(float)
        for k in range(domega.shape[1]):
            M = np.tensordot(domega[p, k], A, axes=1)  # (n, n)
            v = B @ dxi[p, k]
            z = sum(np.linalg.matrix_power(M, j) @ (z / math.factorial(j) + v / math.factorial(j + 1))
                    for j in range(order + 1))
        out.append(z)
    return np.array(out).reshape(z0.shape)


def _naive_diagonal(a, B, domega, dxi, z0):
    out = np.array(z0, dtype=float)
    for k in range(domega.shape[1]):
        m = domega[:, k] @ a  # (b, n)
        v = dxi[:, k] @ B.T
        phi = np.where(m == 0, 1.0, np.expm1(m) / np.where(m == 0, 1.0, m))
        out = np.exp(m) * out + phi * v
    return out


def _dense(kw, **opt):
    return linear_cde_scan(kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], **opt)


def _diag(kw, **opt):
    return diagonal_cde_scan(kw["A"].diagonal(axis1=1, axis2=2), kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], **opt)


# ---------------------------------------------------------------- degenerate and extreme sizes
class TestSizes:
    @pytest.mark.parametrize("b, T, n, dw, dx", [(1, 1, 1, 1, 1), (2, 0, 3, 2, 2), (0, 4, 3, 2, 2), (3, 1, 4, 1, 1),
                                                  (2, 3, 3, 0, 2), (2, 3, 3, 2, 0), (2, 3, 0, 2, 2), (1, 40, 2, 3, 1)])
    @pytest.mark.parametrize("backend", ["numba", "blas"])
    def test_dense_against_naive(self, b, T, n, dw, dx, backend):
        kw = _inputs(1, b, T, n, dw, dx)
        final, states = _dense(kw, order=3, backend=backend, return_states=True)
        assert final.shape == (b, n) and states.shape == (b, T + 1, n)
        want = _naive_taylor(kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], 3)
        assert max_rel_err(final, want) <= tol("cde_kernel_vs_spec")
        np.testing.assert_array_equal(states[:, 0], kw["initial_state"])
        if T == 0:
            np.testing.assert_array_equal(final, kw["initial_state"])

    @pytest.mark.parametrize("b, T, n, dw, dx", [(1, 1, 1, 1, 1), (2, 0, 3, 2, 2), (0, 4, 3, 2, 2), (2, 3, 3, 0, 2),
                                                  (2, 3, 3, 2, 0), (2, 3, 0, 2, 2)])
    def test_diagonal_against_naive(self, b, T, n, dw, dx):
        kw = _inputs(2, b, T, n, dw, dx)
        final = _diag(kw)
        want = _naive_diagonal(kw["A"].diagonal(axis1=1, axis2=2), kw["B"], kw["domega"], kw["dxi"], kw["initial_state"])
        assert final.shape == (b, n)
        assert max_rel_err(final, want) <= tol("cde_kernel_vs_spec")

    def test_one_path_2d_gives_unbatched_results(self):
        kw = _inputs(3, b=1)
        one = {k: (v[0] if k in ("domega", "dxi", "initial_state") else v) for k, v in kw.items()}
        f, s = _dense(one, backend="numba", return_states=True)
        assert f.shape == (3,) and s.shape == (5, 3)
        np.testing.assert_array_equal(f, _dense(kw, backend="numba")[0])
        with pytest.raises(ValueError, match=r"initial_state: expected shape \(3,\)"):
            _dense(dict(one, initial_state=kw["initial_state"]))
        with pytest.raises(ValueError, match="dxi: expected shape"):
            _dense(dict(one, dxi=kw["dxi"]))

    def test_huge_declared_sizes_refused_before_allocating(self):
        kw = _inputs(4)
        # zero-stride views declare 2**40 steps without holding them
        big_w = np.broadcast_to(np.zeros((1, 1, 2)), (2, 2**40, 2))
        big_x = np.broadcast_to(np.zeros((1, 1, 2)), (2, 2**40, 2))
        for fn in (_dense, _diag):
            with pytest.raises(ValueError, match="^domega: expected a float64 copy that fits in memory"):
                fn(dict(kw, domega=big_w, dxi=big_x))

    def test_states_too_large_refused(self):
        # small inputs whose states (T+1, n) would need ~1.1 TB
        n, T = 2**10, 2**27
        w = np.broadcast_to(np.zeros(1), (T, 1))
        with pytest.raises(ValueError, match="^states: expected an output that fits in memory"):
            linear_cde_scan(np.zeros((1, n, n)), np.zeros((n, 1)), w, w, backend="numba", return_states=True)
        n, T = 2**17, 2**20
        w = np.zeros((T, 1))
        with pytest.raises(ValueError, match="^states: expected an output that fits in memory"):
            diagonal_cde_scan(np.zeros((1, n)), np.zeros((n, 1)), w, w, return_states=True)


# ---------------------------------------------------------------- dtypes and layouts
BAD_DTYPES = [np.bool_, np.complex128, np.float16, object, np.longdouble, "U3"]


class TestDtypesAndLayouts:
    @pytest.mark.parametrize("arg", ARGS)
    @pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
    def test_bad_dtype_names_the_argument(self, arg, dtype):
        kw = _inputs(5)
        kw[arg] = kw[arg].astype(dtype)
        for fn in (_dense, _diag):
            name = "a" if (arg == "A" and fn is _diag) else arg
            with pytest.raises(TypeError, match=f"^{name}: expected a float32, float64 or integer array, got dtype"):
                fn(kw)

    @pytest.mark.parametrize("arg", ARGS)
    def test_ragged_input_is_a_type_error(self, arg):
        kw = _inputs(6)
        kw[arg] = [[1.0, 2.0], [3.0]]
        with pytest.raises(TypeError, match=f"^{arg}: expected a real array"):
            _dense(kw)

    @pytest.mark.parametrize("layout", ["fortran", "reversed", "strided", "readonly"])
    @pytest.mark.parametrize("backend", ["numba", "blas"])
    def test_layouts_give_the_same_bits_and_inputs_stay(self, layout, backend):
        kw = _inputs(7, b=3, T=5)
        want = _dense(kw, backend=backend, return_states=True)
        want_d = _diag(kw, return_states=True)
        odd = {}
        for k, v in kw.items():
            if layout == "fortran":
                x = np.asfortranarray(v)
            elif layout == "reversed":
                x = np.ascontiguousarray(v[::-1])[::-1]  # negative strides, same values
            elif layout == "strided":
                x = np.repeat(v, 2, axis=-1)[..., ::2]
            else:
                x = v.copy()
                x.setflags(write=False)
            odd[k] = x
        before = {k: v.copy() for k, v in odd.items()}
        got = _dense(odd, backend=backend, return_states=True)
        got_d = _diag(odd, return_states=True)
        for g, w in zip(got + got_d, want + want_d):
            np.testing.assert_array_equal(g, w)
        for k in odd:
            np.testing.assert_array_equal(odd[k], before[k])

    @pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.uint64])
    def test_integers_are_float64(self, dtype):
        kw = {k: np.rint(v * 3).astype(dtype) if k != "A" else v for k, v in _inputs(8).items()}
        kw["domega"] = (kw["domega"] % 2).astype(dtype)  # small gates
        ref = {k: v.astype(np.float64) for k, v in kw.items()}
        np.testing.assert_array_equal(_dense(kw, backend="numba"), _dense(ref, backend="numba"))
        np.testing.assert_array_equal(_diag(kw), _diag(ref))
        assert _dense(kw, backend="numba").dtype == np.float64

    def test_unsigned_paths_give_signed_increments(self):
        path = np.array([[5], [3], [0]], dtype=np.uint8)
        np.testing.assert_array_equal(increments(path), [[-2.0], [-3.0]])
        assert increments(np.zeros((1, 2))).shape == (0, 2)
        with pytest.raises(TypeError, match="path: expected"):
            increments(np.zeros((3, 2), dtype=complex))
        with pytest.raises(ValueError, match="path: expected shape"):
            increments(np.zeros(3))

    def test_float32_gates_give_float32_outputs(self):
        kw = _inputs(9)
        kw["domega"] = kw["domega"].astype(np.float32)
        f, s = _dense(kw, backend="numba", return_states=True)
        assert f.dtype == s.dtype == np.float32
        assert _diag(kw).dtype == np.float32


# ---------------------------------------------------------------- NaN, Inf, subnormal
class TestNonFinite:
    @pytest.mark.parametrize("arg", ARGS)
    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_refused_in_every_argument(self, arg, value):
        kw = _inputs(10)
        x = kw[arg].copy()
        x.flat[x.size - 1] = value
        kw[arg] = x
        for fn in (_dense, _diag):  # the last entry of A is on the diagonal the diagonal scan reads
            name = "a" if (arg == "A" and fn is _diag) else arg
            with pytest.raises(ValueError, match=f"^{name}: expected finite values, got {value}"):
                fn(kw)

    @pytest.mark.parametrize("arg", ARGS)
    def test_subnormal_values_are_computed(self, arg):
        kw = _inputs(11)
        kw[arg] = kw[arg] * 1e-310  # subnormal magnitudes
        for backend in ("numba", "blas"):
            got = _dense(kw, order=2, backend=backend)
            want = _naive_taylor(kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], 2)
            assert np.isfinite(got).all()
            assert max_rel_err(got, want) <= tol("cde_kernel_vs_spec")
        want = _naive_diagonal(kw["A"].diagonal(axis1=1, axis2=2), kw["B"], kw["domega"], kw["dxi"], kw["initial_state"])
        assert max_rel_err(_diag(kw), want) <= tol("cde_kernel_vs_spec")

    def test_overflow_of_finite_inputs_propagates_as_documented(self):
        kw = _inputs(12, T=3)
        kw["domega"] = np.full_like(kw["domega"], 800.0)  # exp(m) overflows in the diagonal step
        kw["A"] = np.abs(kw["A"]) + 1.0
        with np.errstate(all="ignore"):
            got = _diag(kw)
        assert not np.isfinite(got).all()
        with np.errstate(all="ignore"):
            for backend in ("numba", "blas"):
                _dense(dict(kw, domega=np.full_like(kw["domega"], 1e200)), backend=backend)  # no crash


# ---------------------------------------------------------------- options and integer limits
class TestOptions:
    @pytest.mark.parametrize(
        "opt, exc, match",
        [
            (dict(order=0), ValueError, r"^order: expected an int in \[1, 150\], got 0"),
            (dict(order=151), ValueError, "^order: expected an int in"),
            (dict(order=2**63), ValueError, "^order: expected an int in"),
            (dict(order=-(2**63)), ValueError, "^order: expected an int in"),
            (dict(order=True), TypeError, "^order: expected an int, got bool"),
            (dict(order=2.0), TypeError, "^order: expected an int, got float"),
            (dict(block_size=0), ValueError, "^block_size: expected an int >= 1"),
            (dict(block_size=1.5), TypeError, "^block_size: expected an int"),
            (dict(method="rk4"), ValueError, "^method: expected 'taylor' or 'euler'"),
            (dict(backend="gpu"), ValueError, "^backend: expected"),
            (dict(compute_dtype="nonsense"), TypeError, "^compute_dtype: expected"),
            (dict(compute_dtype=np.float16), ValueError, "^compute_dtype: expected float32 or float64"),
            (dict(compute_dtype=np.float32, backend="numba"), ValueError, "^compute_dtype: expected float64"),
            (dict(return_states="yes"), TypeError, "^return_states: expected a bool"),
            (dict(return_states=1), TypeError, "^return_states: expected a bool"),
        ],
    )
    def test_dense_options(self, opt, exc, match):
        with pytest.raises(exc, match=match):
            _dense(_inputs(13), **opt)

    def test_largest_order_and_block_sizes_work(self):
        kw = _inputs(14, scale=0.05)
        want = _naive_taylor(kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], 30)
        for backend in ("numba", "blas"):
            assert max_rel_err(_dense(kw, order=150, backend=backend), want) <= tol("cde_kernel_vs_spec")
        np.testing.assert_array_equal(_dense(kw, backend="blas", block_size=2**62), _dense(kw, backend="blas"))

    @pytest.mark.parametrize("opt, match", [(dict(method="taylor"), "^method: expected 'exact' or 'euler'"),
                                            (dict(return_states=None), "^return_states: expected a bool")])
    def test_diagonal_options(self, opt, match):
        with pytest.raises((TypeError, ValueError), match=match):
            _diag(_inputs(15), **opt)

    def test_taylor_error_bound_limits(self):
        assert taylor_error_bound(0.1, 0.1, 1.0, 2) == pytest.approx((0.1**3 / 6 + 0.1**2 / 6 * 0.1) * math.exp(0.1))
        assert taylor_error_bound(1e300, 1.0, 1.0, 3) == math.inf
        assert taylor_error_bound(800.0, 0.0, 1.0, 1) == math.inf
        for bad in (math.nan, math.inf, -1.0):
            with pytest.raises(ValueError, match="^mu: expected a finite number >= 0"):
                taylor_error_bound(bad, 0.0, 1.0, 2)
        with pytest.raises(TypeError, match="^nu: expected a real number"):
            taylor_error_bound(0.1, "x", 1.0, 2)
        with pytest.raises(ValueError, match="^order: expected an int in"):
            taylor_error_bound(0.1, 0.1, 1.0, 10**6)
