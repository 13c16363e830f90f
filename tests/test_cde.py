"""Linear CDE kernels (nbssm.cde) against the spec runner and an accurate matrix exponential."""

from __future__ import annotations

import math

import numpy as np
import pytest

from naive import expm_reference
from nbssm.cde import diagonal_cde_scan, increments, linear_cde_scan, taylor_error_bound
from nbssm.spec.cde import LinearCDESpec
from nbssm.spec.context import DOUBLE
from tolerances import max_rel_err, tol


def _dense_inputs(seed, b=3, T=6, n=5, dw=3, dx=2, scale=0.3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((dw, n, n)) / math.sqrt(n)
    B = rng.standard_normal((n, dx))
    domega = rng.standard_normal((b, T, dw)) * scale
    dxi = rng.standard_normal((b, T, dx)) * scale
    z0 = rng.standard_normal((b, n))
    return A, B, domega, dxi, z0


def _spec_states(spec, domega, dxi, z0):
    """Spec run_list per path: (b, T+1, n) with the initial state first."""
    out = []
    for p in range(z0.shape[0]):
        _, zs = spec.run_list(DOUBLE, z0[p].tolist(), domega[p].tolist(), dxi[p].tolist())
        out.append([z0[p].tolist()] + zs)
    return np.array(out)


@pytest.mark.parametrize("backend", ["numba", "blas"])
@pytest.mark.parametrize("method, order", [("taylor", 1), ("taylor", 2), ("taylor", 4), ("euler", 1)])
def test_dense_refines_spec(backend, method, order):
    A, B, domega, dxi, z0 = _dense_inputs(order)
    n, dw, dx = A.shape[1], A.shape[0], B.shape[1]
    spec = LinearCDESpec(n, dw, dx, A, B, diagonal=False, step=method, order=order if method == "taylor" else 0)
    want = _spec_states(spec, domega, dxi, z0)
    final, states = linear_cde_scan(A, B, domega, dxi, z0, method=method, order=order, backend=backend,
                                    return_states=True, block_size=2)
    assert max_rel_err(states, want) <= tol("cde_kernel_vs_spec")
    np.testing.assert_array_equal(final, states[:, -1])
    if backend == "numba":  # same folds as the spec: bitwise
        np.testing.assert_array_equal(states, want)


@pytest.mark.parametrize("method", ["exact", "euler"])
def test_diagonal_refines_spec(method):
    rng = np.random.default_rng(11)
    b, T, n, dw, dx = 3, 7, 6, 3, 2
    a = rng.standard_normal((dw, n))
    B = rng.standard_normal((n, dx))
    domega = rng.standard_normal((b, T, dw)) * 0.4
    dxi = rng.standard_normal((b, T, dx)) * 0.4
    z0 = rng.standard_normal((b, n))
    domega[0, 2] = 0.0  # m = 0 exercises phi1(0) = 1
    spec = LinearCDESpec(n, dw, dx, a, B, diagonal=True, step=method)
    want = _spec_states(spec, domega, dxi, z0)
    final, states = diagonal_cde_scan(a, B, domega, dxi, z0, method=method, return_states=True)
    assert max_rel_err(states, want) <= tol("cde_kernel_vs_spec")
    np.testing.assert_array_equal(final, states[:, -1])


def _exact_reference(A, B, domega, dxi, z0):
    """Exact steps via the augmented matrix exp([[M, v], [0, 0]]) = [[e^M, phi1(M) v], [0, 1]]."""
    b, T, _ = domega.shape
    n = A.shape[1]
    out = np.empty((b, n))
    for p in range(b):
        z = z0[p].copy()
        for k in range(T):
            M = np.tensordot(domega[p, k], A, axes=1)
            aug = np.zeros((n + 1, n + 1))
            aug[:n, :n] = M
            aug[:n, n] = B @ dxi[p, k]
            E = expm_reference(aug)
            z = E[:n, :n] @ z + E[:n, n]
        out[p] = z
    return out


def test_taylor_error_against_exact_and_bound():
    A, B, domega, dxi, z0 = _dense_inputs(5, b=4, T=10, n=6, scale=0.05)
    exact = _exact_reference(A, B, domega, dxi, z0)
    errs = []
    for p_order in (1, 2, 3, 4, 6):
        got = linear_cde_scan(A, B, domega, dxi, z0, order=p_order, backend="numba")
        err = np.abs(got - exact).max()
        errs.append(err)
        # global bound: per-step bounds (2-norms) summed, amplified by exp(sum of ||M_k||)
        bound = 0.0
        for q in range(z0.shape[0]):
            mus = [np.linalg.norm(np.tensordot(domega[q, k], A, axes=1), 2) for k in range(domega.shape[1])]
            amp = math.exp(sum(mus))
            znorm = np.linalg.norm(z0[q]) * amp + sum(np.linalg.norm(B @ dxi[q, k]) for k in range(domega.shape[1])) * amp
            step = sum(taylor_error_bound(mus[k], np.linalg.norm(B @ dxi[q, k]), znorm, p_order)
                       for k in range(domega.shape[1]))
            bound = max(bound, step * amp)
        assert err <= bound, (p_order, err, bound)
    assert errs == sorted(errs, reverse=True)  # higher order, smaller error
    assert errs[-1] < 1e-9
    # Euler is first order: its error is not smaller than Taylor order 1's by much, and > order 2
    eul = np.abs(linear_cde_scan(A, B, domega, dxi, z0, method="euler", backend="numba") - exact).max()
    assert eul > errs[1]


def test_float32_blas_and_block_size():
    A, B, domega, dxi, z0 = _dense_inputs(8, b=70, T=30, n=40, scale=0.05)
    ref = linear_cde_scan(A, B, domega, dxi, z0, order=2, backend="numba")
    for bs in (1, 16, 70, 1000):
        got = linear_cde_scan(A, B, domega, dxi, z0, order=2, backend="blas", block_size=bs)
        assert max_rel_err(got, ref) <= tol("cde_kernel_vs_spec")
    got32 = linear_cde_scan(A, B, domega, dxi, z0, order=2, backend="blas", compute_dtype=np.float32)
    assert got32.dtype == np.float64
    assert max_rel_err(got32, ref) <= tol("cde_blas_float32")
    # float32 inputs give float32 outputs
    out = linear_cde_scan(A, B, domega.astype(np.float32), dxi, z0, order=2, backend="numba")
    assert out.dtype == np.float32


def test_shapes_unbatched_and_empty():
    A, B, domega, dxi, z0 = _dense_inputs(9, b=2, T=4)
    f = linear_cde_scan(A, B, domega[1], dxi[1], z0[1], backend="numba")
    np.testing.assert_array_equal(f, linear_cde_scan(A, B, domega, dxi, z0, backend="numba")[1])
    f, s = linear_cde_scan(A, B, domega[:, :0], dxi[:, :0], z0, return_states=True)
    np.testing.assert_array_equal(f, z0)
    assert s.shape == (2, 1, 5)
    assert linear_cde_scan(A, B, domega[:0], dxi[:0], z0[:0]).shape == (0, 5)
    a = A[:, 0]
    fd, sd = diagonal_cde_scan(a, B, domega[0], dxi[0], z0[0], return_states=True)
    assert fd.shape == (5,) and sd.shape == (5, 5)
    np.testing.assert_array_equal(increments(np.arange(6.0).reshape(3, 2)), np.full((2, 2), 2.0))


def test_inputs_never_modified_and_any_layout():
    A, B, domega, dxi, z0 = _dense_inputs(10, b=3, T=5)
    args = [np.asfortranarray(x) for x in (A, B, domega, dxi, z0)]
    for x in args:
        x.setflags(write=False)
    before = [x.copy() for x in args]
    for backend in ("numba", "blas"):
        got = linear_cde_scan(*args, backend=backend)
        np.testing.assert_allclose(got, linear_cde_scan(A, B, domega, dxi, z0, backend="numba"), rtol=0, atol=1e-12)
    diagonal_cde_scan(args[0][:, 0], *args[1:])
    for x, y in zip(args, before):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(A=np.zeros((3, 5, 4))), "A: expected shape"),
        (dict(B=np.zeros((4, 2))), "B: expected shape"),
        (dict(domega=np.zeros((3, 6, 2))), "domega: expected shape"),
        (dict(dxi=np.zeros((3, 5, 2))), "dxi: expected shape"),
        (dict(z0=np.zeros((3, 4))), "initial_state: expected shape"),
        (dict(z0=np.full((3, 5), np.nan)), "initial_state: expected finite values"),
        (dict(domega=np.full((3, 6, 3), np.inf)), "domega: expected finite values, got inf"),
        (dict(B=np.zeros((5, 2), dtype=complex)), "B: expected a float32, float64 or integer array, got dtype complex128"),
    ],
)
def test_bad_input(change, match):
    A, B, domega, dxi, z0 = _dense_inputs(12)
    kw = dict(A=A, B=B, domega=domega, dxi=dxi, z0=z0)
    kw.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        linear_cde_scan(kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["z0"])


def test_bad_options():
    A, B, domega, dxi, z0 = _dense_inputs(13)
    with pytest.raises(ValueError, match="method"):
        linear_cde_scan(A, B, domega, dxi, z0, method="rk4")
    with pytest.raises(ValueError, match="order"):
        linear_cde_scan(A, B, domega, dxi, z0, order=0)
    with pytest.raises(ValueError, match="backend"):
        linear_cde_scan(A, B, domega, dxi, z0, backend="gpu")
    with pytest.raises(ValueError, match="compute_dtype"):
        linear_cde_scan(A, B, domega, dxi, z0, backend="numba", compute_dtype=np.float32)
    with pytest.raises(ValueError, match="a: expected shape"):
        diagonal_cde_scan(A, B, domega, dxi, z0)
    with pytest.raises(ValueError, match="method"):
        diagonal_cde_scan(A[:, 0], B, domega, dxi, z0, method="taylor")


def test_spec_rejects_bad_fields():
    from nbssm.spec.models import ShapeError

    with pytest.raises(ShapeError, match="transitions"):
        LinearCDESpec(2, 1, 1, [[[0.0, 1.0]]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="strictly upper-triangular"):
        LinearCDESpec(2, 1, 1, [[[1.0, 1.0], [0.0, 0.0]]], [[1.0], [1.0]], step="exact")
    with pytest.raises(ValueError, match="order"):
        LinearCDESpec(2, 1, 1, [[[1.0, 1.0], [0.0, 0.0]]], [[1.0], [1.0]], step="taylor", order=0)
    with pytest.raises(ValueError, match="dense"):
        LinearCDESpec(2, 1, 1, [[1.0, 1.0]], [[1.0], [1.0]], diagonal=True, step="taylor", order=2)
    spec = LinearCDESpec(2, 1, 1, [[1.0, 1.0]], [[1.0], [1.0]], diagonal=True)
    assert spec.run_list(DOUBLE, [1.0, 2.0], [], []) == ([1.0, 2.0], [])


@pytest.mark.parametrize("split", [0, 1, 3, 6])
@pytest.mark.parametrize(
    "kind, backend, method",
    [("dense", "numba", "taylor"), ("dense", "numba", "euler"), ("dense", "blas", "taylor"),
     ("diagonal", None, "exact"), ("diagonal", None, "euler")],
)
def test_scan_is_iterated_pieces(kind, backend, method, split):
    """T steps == T1 steps, then T - T1 steps from the first piece's final state."""
    A, B, domega, dxi, z0 = _dense_inputs(20 + split, b=3, T=6)
    if kind == "dense":
        def run(dw, dx, h):
            return linear_cde_scan(A, B, dw, dx, h, method=method, order=3, backend=backend, return_states=True)
    else:
        def run(dw, dx, h):
            return diagonal_cde_scan(A[:, 0], B, dw, dx, h, method=method, return_states=True)
    whole_final, whole_states = run(domega, dxi, z0)
    h1, s1 = run(domega[:, :split], dxi[:, :split], z0)
    h2, s2 = run(domega[:, split:], dxi[:, split:], h1)
    pieces = np.concatenate([s1, s2[:, 1:]], axis=1)
    if backend == "blas":  # GEMM blocking may differ with the number of steps
        assert max_rel_err(h2, whole_final) <= tol("cde_kernel_vs_spec")
        assert max_rel_err(pieces, whole_states) <= tol("cde_kernel_vs_spec")
    else:
        np.testing.assert_array_equal(h2, whole_final)
        np.testing.assert_array_equal(pieces, whole_states)
    # unbatched path 1 equals row 1 of the batch, bitwise
    one = run(domega[1], dxi[1], z0[1])
    if backend != "blas":
        np.testing.assert_array_equal(one[0], whole_final[1])
        np.testing.assert_array_equal(one[1], whole_states[1])


def test_initial_state_defaults_to_zeros_and_z0_is_deprecated():
    A, B, domega, dxi, z0 = _dense_inputs(30, b=2, T=4)
    zeros = np.zeros_like(z0)
    np.testing.assert_array_equal(linear_cde_scan(A, B, domega, dxi, backend="numba"),
                                  linear_cde_scan(A, B, domega, dxi, zeros, backend="numba"))
    np.testing.assert_array_equal(diagonal_cde_scan(A[:, 0], B, domega[0], dxi[0]),
                                  diagonal_cde_scan(A[:, 0], B, domega[0], dxi[0], zeros[0]))
    want = linear_cde_scan(A, B, domega, dxi, initial_state=z0, backend="numba")
    with pytest.warns(DeprecationWarning, match="initial_state"):
        got = linear_cde_scan(A, B, domega, dxi, z0=z0, backend="numba")
    np.testing.assert_array_equal(got, want)
    with pytest.warns(DeprecationWarning, match="initial_state"):
        got = diagonal_cde_scan(A[:, 0], B, domega, dxi, z0=z0)
    np.testing.assert_array_equal(got, diagonal_cde_scan(A[:, 0], B, domega, dxi, initial_state=z0))
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="got both"):
        linear_cde_scan(A, B, domega, dxi, z0, z0=z0)
