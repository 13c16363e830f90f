"""Backward kernels (VJPs): against the numpy reverse-mode references, directional central
differences, the spec symbolically (sympy), thread-count and chunk-length invariance, float32,
bad input."""

from __future__ import annotations

import numpy as np
import pytest

import nbssm.ops as O
from nbssm import cde
from nbssm import reference as R
from nbssm.tolerances import max_rel_err, tol

SEL_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _sel_inputs(shape, seed=0, extras=True, init=True, dtype=np.float64):
    kw = R.random_inputs("selective", shape, dtype=dtype, seed=seed, extras=extras, initial_state=init)
    b, l, d, n = shape
    rng = np.random.default_rng(seed + 100)
    gy = rng.standard_normal((b, l, d)).astype(dtype)
    gT = rng.standard_normal((b, d, n)).astype(dtype)
    return kw, gy, gT


def _loss_sel(kw, gy, gT):
    y, hT = R.selective_scan_ref(**kw, return_final_state=True)
    return float(np.sum(gy * y) + np.sum(gT * hT))


def _directional_check(loss, kw, grads, names, seed=0, eps=1e-6):
    """<grad, v> against (loss(x + eps v) - loss(x - eps v)) / (2 eps) for one random v per argument."""
    rng = np.random.default_rng(seed)
    for name in names:
        x = np.asarray(kw[name], dtype=np.float64)
        v = rng.standard_normal(x.shape)
        plus = loss({**kw, name: x + eps * v})
        minus = loss({**kw, name: x - eps * v})
        fd = (plus - minus) / (2 * eps)
        got = float(np.sum(np.asarray(grads[name]) * v))
        scale = max(abs(fd), float(np.sum(np.abs(np.asarray(grads[name]) * v))), 1.0)
        assert abs(got - fd) <= tol("vjp_finite_difference") * scale, (name, got, fd)


@pytest.mark.parametrize("shape,cl", [((2, 37, 3, 4), 8), ((2, 300, 70, 5), 128), ((1, 5, 32, 3), None),
                                      ((3, 129, 33, 2), 64), ((1, 1, 1, 1), None), ((1, 45, 65, 40), 64)])
@pytest.mark.parametrize("extras", [True, False])
def test_selective_vjp_matches_reference(shape, cl, extras):
    kw, gy, gT = _sel_inputs(shape, seed=sum(shape), extras=extras)
    g = O.selective_scan_vjp(gy, **kw, grad_final_state=gT, chunk_length=cl)
    r = R.selective_scan_vjp_ref(gy, **kw, grad_final_state=gT)
    for name in SEL_NAMES:
        if r[name] is None:
            assert getattr(g, name) is None, name
            continue
        got = getattr(g, name)
        assert got.shape == r[name].shape and got.dtype == np.float64, name
        assert max_rel_err(got, r[name]) <= tol("vjp_float64_vs_reference"), name


def test_selective_vjp_finite_differences_past_chunk_boundaries():
    kw, gy, gT = _sel_inputs((2, 300, 3, 4), seed=3)
    g = O.selective_scan_vjp(gy, **kw, grad_final_state=gT, chunk_length=128)
    _directional_check(lambda k: _loss_sel(k, gy, gT), kw, g._asdict(), SEL_NAMES)


def test_selective_vjp_2d_input_and_no_final_cotangent():
    kw, gy, _ = _sel_inputs((1, 9, 4, 3), seed=5)
    kw2 = {k: (v[0] if k in ("u", "delta", "B", "C", "z", "initial_state") else v) for k, v in kw.items()}
    g2 = O.selective_scan_vjp(gy[0], **kw2)
    g3 = O.selective_scan_vjp(gy, **kw)
    for name in SEL_NAMES:
        a, b = getattr(g2, name), getattr(g3, name)
        want = b[0] if name in ("u", "delta", "B", "C", "z", "initial_state") else b
        np.testing.assert_array_equal(a, want)


def test_selective_vjp_bitwise_independent_of_threads_and_chunk_length():
    numba = pytest.importorskip("numba")
    from nbssm import threads

    kw, gy, gT = _sel_inputs((2, 150, 70, 4), seed=7)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    with threads.threads(1):
        g1 = O.selective_scan_vjp(gy, **kw, grad_final_state=gT)
    with threads.threads(2):
        g2 = O.selective_scan_vjp(gy, **kw, grad_final_state=gT)
    g3 = O.selective_scan_vjp(gy, **kw, grad_final_state=gT, chunk_length=7)
    g4 = O.selective_scan_vjp(gy, **kw, grad_final_state=gT, chunk_length=1000)  # capped by the scratch
    for name in SEL_NAMES:
        np.testing.assert_array_equal(getattr(g1, name), getattr(g2, name), err_msg=name)
        np.testing.assert_array_equal(getattr(g1, name), getattr(g3, name), err_msg=name)
        np.testing.assert_array_equal(getattr(g1, name), getattr(g4, name), err_msg=name)


def test_selective_vjp_float32_within_tolerance():
    kw, gy, gT = _sel_inputs((2, 300, 40, 8), seed=11)
    r = O.selective_scan_vjp(gy, **kw, grad_final_state=gT)
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    g = O.selective_scan_vjp(gy.astype(np.float32), **kw32, grad_final_state=gT.astype(np.float32))
    for name in SEL_NAMES:
        assert getattr(g, name).dtype == np.float32
        assert max_rel_err(getattr(g, name), getattr(r, name)) <= tol("vjp_float32_vs_float64"), name


def test_selective_vjp_matches_sympy_derivative_of_spec_scan():
    """sympy ``diff`` of the spec's scan (``diagonal_selective_scan`` with the SYMPY context's
    exp, softplus and silu) contracted with the cotangents, at rational inputs, equals the
    kernel's VJP; a VJP missing the skip term ``D * grad_y`` in ``grad_u`` is refuted."""
    sp = pytest.importorskip("sympy")
    from nbssm.spec.context import SYMPY
    from nbssm.spec.scan import DiagonalTransition, diagonal_selective_scan

    L, Dn, N = 3, 2, 2
    rng = np.random.default_rng(0)

    def rat(shape, lo=-1.0, hi=1.0):
        return np.vectorize(lambda x: sp.Rational(int(round(x * 8)), 8))(rng.uniform(lo, hi, shape))

    vals = {"u": rat((L, Dn)), "delta": rat((L, Dn)), "A": rat((Dn, N), -1.5, -0.25), "B": rat((L, N)),
            "C": rat((L, N)), "D": rat((Dn,)), "z": rat((L, Dn)), "delta_bias": rat((Dn,), -0.25, 0.25),
            "initial_state": rat((Dn, N))}
    syms = {k: np.vectorize(lambda i, k=k: sp.Symbol(f"{k}{i}"))(np.arange(v.size)).reshape(v.shape)
            for k, v in vals.items()}
    gy = rat((L, Dn))
    gT = rat((Dn, N))
    s = syms
    loss = 0
    for d in range(Dn):
        dls = [SYMPY.softplus(SYMPY.add(s["delta"][t, d], s["delta_bias"][d])) for t in range(L)]
        trs = [DiagonalTransition([SYMPY.exp(SYMPY.mul(dls[t], s["A"][d, n])) for n in range(N)],
                                  [SYMPY.mul(SYMPY.mul(dls[t], s["B"][t, n]), s["u"][t, d]) for n in range(N)])
               for t in range(L)]
        hs = diagonal_selective_scan(SYMPY, list(s["initial_state"][d]), trs)
        for t in range(L):
            y = SYMPY.mul(s["D"][d], s["u"][t, d])
            for n in range(N):
                y = SYMPY.add(y, SYMPY.mul(hs[t][n], s["C"][t, n]))
            loss += gy[t, d] * SYMPY.mul(y, SYMPY.silu(s["z"][t, d]))
        loss += sum(gT[d, n] * hs[-1][n] for n in range(N))
    subs = {s[k].flat[i]: vals[k].flat[i] for k in vals for i in range(vals[k].size)}
    f = {k: np.asarray(v, dtype=np.float64) for k, v in vals.items()}
    g = O.selective_scan_vjp(np.asarray(gy, np.float64), **f, delta_softplus=True,
                             grad_final_state=np.asarray(gT, np.float64))
    want = {k: np.array([float(sp.diff(loss, s[k].flat[i]).subs(subs).evalf(30)) for i in range(s[k].size)])
            .reshape(s[k].shape) for k in vals}
    for k in vals:
        assert max_rel_err(getattr(g, k), want[k]) <= tol("vjp_vs_sympy"), k
    # negative control: drop the skip term from grad_u -> refuted
    mutant = getattr(g, "u") - np.asarray(gy, np.float64) * f["D"] * _silu(f["z"])
    assert max_rel_err(mutant, want["u"]) > 1e3 * tol("vjp_vs_sympy")


def _silu(x):
    return x / (1 + np.exp(-x))


# ---------------------------------------------------------------- linear scan, causal conv


@pytest.mark.parametrize("shape", [(2, 50, 70), (1, 300, 3), (1, 0, 4)])
def test_linear_scan_vjp(shape):
    kw = R.random_inputs("linear", shape, seed=1)
    rng = np.random.default_rng(2)
    gy = rng.standard_normal(shape)
    gT = rng.standard_normal((shape[0], shape[2]))
    g = O.linear_scan_vjp(gy, **kw, grad_final_state=gT)
    r = R.linear_scan_vjp_ref(gy, **kw, grad_final_state=gT)
    for got, want in zip(g, r):
        assert max_rel_err(got, want) <= tol("vjp_float64_vs_reference")
    if shape[1]:
        def loss(k):
            h, hT = R.linear_scan_ref(**k, return_final_state=True)
            return float(np.sum(gy * h) + np.sum(gT * hT))
        _directional_check(loss, kw, g._asdict(), ("a", "b", "initial_state"))
    assert O.linear_scan_vjp(gy, kw["a"], kw["b"]).initial_state is None


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length,width", [(50, 4), (2, 4), (30, 1)])
def test_causal_conv1d_vjp(activation, length, width):
    kw = R.random_inputs("conv", (2, length, 70, width), seed=3)
    rng = np.random.default_rng(4)
    gy = rng.standard_normal((2, length, 70))
    gf = rng.standard_normal((2, width - 1, 70))
    g = O.causal_conv1d_vjp(gy, **kw, activation=activation, grad_final_state=gf)
    r = R.causal_conv1d_vjp_ref(gy, **kw, activation=activation, grad_final_state=gf)
    for got, want in zip(g, r):
        assert max_rel_err(got, want) <= tol("vjp_float64_vs_reference")

    def loss(k):
        y, fin = R.causal_conv1d_ref(**k, activation=activation, return_final_state=True)
        return float(np.sum(gy * y) + np.sum(gf * fin))

    _directional_check(loss, kw, g._asdict(), ("x", "weight", "bias", "initial_state"))
    g3 = O.causal_conv1d_vjp(gy, kw["x"], kw["weight"][:, None, :], activation=activation)
    assert g3.weight.shape == (70, 1, width) and g3.bias is None and g3.initial_state is None


# ---------------------------------------------------------------- linear CDEs


@pytest.mark.parametrize("kind,method", [("dense", "taylor"), ("dense", "euler"), ("diag", "exact"),
                                         ("diag", "euler")])
def test_cde_vjp_finite_differences(kind, method):
    rng = np.random.default_rng(5)
    b, T, dw, dx, n = 2, 7, 3, 2, 4
    A = rng.standard_normal((dw, n, n)) * 0.3 if kind == "dense" else rng.standard_normal((dw, n)) * 0.5
    kw = {"A": A, "B": rng.standard_normal((n, dx)), "domega": rng.standard_normal((b, T, dw)) * 0.5,
          "dxi": rng.standard_normal((b, T, dx)), "initial_state": rng.standard_normal((b, n))}
    kw["domega"][0, 0] = 0.0  # m = 0: phi1's series branch
    gf = rng.standard_normal((b, n))
    gs = rng.standard_normal((b, T + 1, n))
    opts = {"method": method} if kind == "diag" else {"method": method, "order": 4}
    scan = cde.diagonal_cde_scan if kind == "diag" else cde.linear_cde_scan
    vjp = cde.diagonal_cde_scan_vjp if kind == "diag" else cde.linear_cde_scan_vjp

    def loss(k):
        args = dict(k)
        fin, st = scan(args.pop("A"), args.pop("B"), args.pop("domega"), args.pop("dxi"),
                       args.pop("initial_state"), return_states=True, **opts)
        return float(np.sum(gf * fin) + np.sum(gs * st))

    g = vjp(gf, kw["A"], kw["B"], kw["domega"], kw["dxi"], kw["initial_state"], grad_states=gs, **opts)
    _directional_check(loss, kw, g._asdict(), tuple(kw))


# ---------------------------------------------------------------- bad input


def test_vjp_bad_input():
    kw, gy, gT = _sel_inputs((2, 6, 3, 4))
    with pytest.raises(ValueError, match="grad_y"):
        O.selective_scan_vjp(gy[:, :5], **kw)
    with pytest.raises(TypeError, match="grad_y"):
        O.selective_scan_vjp(None, **kw)
    with pytest.raises(ValueError, match="grad_final_state"):
        O.selective_scan_vjp(gy, **kw, grad_final_state=gT[:, :2])
    with pytest.raises(ValueError, match="chunk_length"):
        O.selective_scan_vjp(gy, **kw, chunk_length=0)
    lin = R.random_inputs("linear", (2, 6, 3))
    with pytest.raises(ValueError, match="grad_y"):
        O.linear_scan_vjp(np.ones((2, 6, 4)), **lin)
    conv = R.random_inputs("conv", (2, 6, 3, 4))
    with pytest.raises(ValueError, match="grad_y"):
        O.causal_conv1d_vjp(np.ones((2, 6)), **conv)
    with pytest.raises(ValueError, match="grad_final"):
        cde.diagonal_cde_scan_vjp(np.ones(3), np.ones((2, 4)), np.ones((4, 1)), np.ones((5, 2)), np.ones((5, 1)))


def test_vjp_inputs_not_modified_and_nan_propagates():
    kw, gy, gT = _sel_inputs((1, 20, 33, 4), seed=9)
    copies = {k: np.copy(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    gyc = gy.copy()
    O.selective_scan_vjp(gy, **kw, grad_final_state=gT)
    for k, v in copies.items():
        np.testing.assert_array_equal(kw[k], v)
    np.testing.assert_array_equal(gy, gyc)
    kw["u"] = kw["u"].copy()
    kw["u"][0, 10, 5] = np.nan
    g = O.selective_scan_vjp(gy, **kw)
    assert np.isnan(g.u[0, 10, 5]) or np.isnan(g.delta[0, 10, 5])
    assert np.all(np.isfinite(g.u[0, 11:]))  # later times are unaffected (backward flows to the past)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels,nstate,extras", [(48, 16, True), (64, 4, False), (100, 4, True), (128, 8, True),
                                                    (96, 16, False)])
def test_streamed_and_plain_result_stores_give_the_same_bits(monkeypatch, dtype, channels, nstate, extras):
    """The backward streams ``gu, gdelta, gz`` (``nt``) and the ``B, C`` partials (``ntp``) as
    whole cache lines when every row starts one; rows that do not (forced here by misaligned
    outputs) take plain stores. Length 70: partial chunks and a partial last line."""
    import nbssm._memory as M

    kw, gy, gT = _sel_inputs((2, 70, channels, nstate), seed=5, extras=extras, dtype=dtype)
    seen = []
    kernel = O.selective_scan_vjp_kernel

    def spy(*args):
        seen.append(args[19:21])  # nt, ntp
        return kernel(*args)

    monkeypatch.setattr(O, "selective_scan_vjp_kernel", spy)
    streamed = O.selective_scan_vjp(gy, grad_final_state=gT, **kw)
    isz = np.dtype(dtype).itemsize

    def misaligned(shape, dt):
        n = int(np.prod(shape)) * np.dtype(dt).itemsize
        raw = np.empty(n + 128, np.uint8)
        off = (-raw.ctypes.data) % 64 + np.dtype(dt).itemsize
        return raw[off:off + n].view(dt).reshape(shape)

    monkeypatch.setattr(M, "empty_aligned", misaligned)
    plain = O.selective_scan_vjp(gy, grad_final_state=gT, **kw)
    assert seen == [((channels * isz) % 64 == 0, (nstate * isz) % 64 == 0), (False, False)]
    for name in SEL_NAMES:
        a, b = getattr(streamed, name), getattr(plain, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert np.array_equal(a, b), name
    if dtype == np.float64:  # and both are the gradients (the reference's reverse mode)
        ref = R.selective_scan_vjp_ref(gy, **kw, grad_final_state=gT)
        for name in SEL_NAMES:
            if ref[name] is not None:
                assert max_rel_err(getattr(streamed, name), ref[name]) <= tol("vjp_float64_vs_reference"), name


def test_empty_aligned_starts_every_array_on_a_cache_line():
    import nbssm._memory as M

    for shape in [(0,), (1,), (3, 5), (1, 70, 48), (2, 1000, 33)]:
        for dt in (np.float32, np.float64, np.uint8):
            arr = M.empty_aligned(shape, dt)
            assert arr.shape == shape and arr.dtype == dt and arr.flags.c_contiguous and arr.flags.writeable
            assert arr.size == 0 or arr.ctypes.data % M.ALIGN == 0


def test_output_cache_serves_small_blocks_on_request():
    # nbssm.dask's time blocks (below MIN_BYTES) are recycled when asked for with min_bytes
    import nbssm._memory as M

    shape = (1, (2 << 20) // 8, 1)  # 2 MiB of float64
    first = M.empty(shape, np.float64, min_bytes=M.WORKER_MIN_BYTES)
    ptr = first.ctypes.data
    hits = M.output_cache_info()["hits"]
    del first
    again = M.empty(shape, np.float64, min_bytes=M.WORKER_MIN_BYTES)
    assert again.ctypes.data == ptr and M.output_cache_info()["hits"] == hits + 1
    assert again.shape == shape and again.ctypes.data % M.ALIGN == 0
    plain = M.empty(shape, np.float64)  # below MIN_BYTES without the request: numpy's own
    assert plain.base is None
