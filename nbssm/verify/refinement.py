"""Refinement checks of the Numba kernels against the spec's double runners.

``nbssm verify`` lists these in its ledger (kind ``"beyond"``): on seeded
random inputs, edge sizes included, every kernel entry point is evaluated and
compared with

* the spec's double context runners (``nbssm.spec.scan.diagonal_selective_scan``,
  ``nbssm.spec.models.selective_recurrence_step``, ``causal_conv_step``):
  float64 must be **bitwise** equal (the kernels keep the spec's operation
  and fold order and call the same C library ``exp``/``log``);
* the generic chunked reference ``nbssm.spec.algorithms.chunked_diagonal_scan``
  (proved equal to the spec over the reals by the checker): the chunked
  float64 kernels must be bitwise equal to it on Python floats;
* the float64 kernels, for float32: within the ``float32_vs_float64``
  tolerance of ``tests/tolerances.py`` (1e-5 relative to the largest value).

A check is ``proved`` when every comparison holds, ``refuted`` with the largest
error and its location otherwise, ``unknown`` if the comparison could not be
made (an exception, reported in the detail).
"""

from __future__ import annotations

import math
import time

import numpy as np

from nbssm.spec.verdict import BEYOND, PROVED, REFUTED, UNKNOWN, CheckResult

#: float32 kernels vs float64 kernels; the "float32_vs_float64" row of tests/tolerances.py
FLOAT32_TOLERANCE = 1e-5


def _compare(got, want, tolerance):
    """``(ok, detail)``: bitwise when ``tolerance == 0``, else max error relative to max |want|."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    if want.size == 0:
        return True, "empty"
    if tolerance == 0:
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        if same.all():
            return True, "bitwise equal"
        idx = np.unravel_index(np.argmin(same), same.shape)
        err = float(np.nanmax(np.abs(got - want)))
        return False, f"not bitwise equal: max |diff| {err:.3e}; first at index {tuple(int(i) for i in idx)}: {got[idx]!r} vs {want[idx]!r}"
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    diff = np.abs(got - want)
    err = float(np.max(diff)) / scale
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    if err <= tolerance:
        return True, f"max relative error {err:.2e} <= {tolerance:.0e}"
    return False, f"max relative error {err:.3e} > {tolerance:.0e} at index {tuple(int(i) for i in idx)}"


def _selective_inputs(rng, batch, length, channels, nstate):
    f = lambda *s: rng.standard_normal(s)
    return dict(
        u=f(batch, length, channels),
        delta=rng.standard_normal((batch, length, channels)) * 0.5 - 1.0,
        A=-np.exp(rng.standard_normal((channels, nstate)) * 0.5),
        B=f(batch, length, nstate),
        C=f(batch, length, nstate),
        D=f(channels),
        z=f(batch, length, channels),
        delta_bias=rng.standard_normal(channels) * 0.1,
        delta_softplus=True,
        initial_state=f(batch, channels, nstate),
    )


def _spec_selective(kw):
    """The selective scan on the spec's double runner (``selective_recurrence_step``)."""
    from nbssm.spec.context import DOUBLE
    from nbssm.spec.models import selective_recurrence_step

    u, delta, A, B, C = kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"]
    batch, length, channels = u.shape
    nstate = A.shape[1]
    A_spec = (-A).tolist()  # the spec's positive rates; negation is exact
    ys = np.zeros((batch, length, channels))
    hs = np.zeros((batch, channels, nstate))
    for i in range(batch):
        H = kw["initial_state"][i].tolist()
        for t in range(length):
            dl = [DOUBLE.softplus(DOUBLE.add(float(delta[i, t, d]), float(kw["delta_bias"][d])))
                  for d in range(channels)]
            H, y = selective_recurrence_step(DOUBLE, H, u[i, t].tolist(), dl, A_spec, B[i, t].tolist(),
                                             C[i, t].tolist(), kw["D"].tolist())
            ys[i, t] = [DOUBLE.mul(y[d], DOUBLE.silu(float(kw["z"][i, t, d]))) for d in range(channels)]
        hs[i] = np.array(H).reshape(channels, nstate)
    return ys, hs


def _reference_chunked_selective(kw, chunk_length):
    """``chunked_diagonal_scan`` on Python floats with the selective transitions, then the readout."""
    from nbssm.spec.algorithms import chunked_diagonal_scan
    from nbssm.spec.context import DOUBLE

    u, delta, A, B, C = kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"]
    batch, length, channels = u.shape
    nstate = A.shape[1]
    ys = np.zeros((batch, length, channels))
    for i in range(batch):
        a_seq, b_seq = [], []
        for t in range(length):
            dl = [DOUBLE.softplus(float(delta[i, t, d]) + float(kw["delta_bias"][d])) for d in range(channels)]
            a_seq.append([math.exp(dl[d] * float(A[d, n])) for d in range(channels) for n in range(nstate)])
            b_seq.append([(dl[d] * float(B[i, t, n])) * float(u[i, t, d])
                          for d in range(channels) for n in range(nstate)])
        states = chunked_diagonal_scan(kw["initial_state"][i].reshape(-1).tolist(), a_seq, b_seq, chunk_length)
        for t in range(length):
            for d in range(channels):
                acc = float(kw["D"][d]) * float(u[i, t, d])
                for n in range(nstate):
                    acc = acc + states[t][d * nstate + n] * float(C[i, t, n])
                ys[i, t, d] = acc * DOUBLE.silu(float(kw["z"][i, t, d]))
    return ys


def _run_check(name, dims, body):
    t0 = time.perf_counter()
    try:
        ok, detail = body()
        verdict = PROVED if ok else REFUTED
    except Exception as exc:  # noqa: BLE001 - reported as unknown, never a pass
        verdict, detail = UNKNOWN, f"{type(exc).__name__}: {exc}"
    return CheckResult(name=name, kind=BEYOND, verdict=verdict, dims=dims,
                       seconds=time.perf_counter() - t0, detail=detail)


def _all(comparisons):
    """Fold ``[(label, (ok, detail))]`` into one ``(ok, detail)``."""
    bad = [f"{label}: {detail}" for label, (ok, detail) in comparisons if not ok]
    if bad:
        return False, "; ".join(bad)
    return True, f"{len(comparisons)} comparisons; " + comparisons[0][1][1]


SELECTIVE_SHAPES = [(2, 9, 20, 4), (1, 1, 3, 2), (1, 6, 17, 1), (1, 3, 16, 0)]
LINEAR_SHAPES = [(2, 17, 5), (1, 1, 1), (1, 30, 70)]


def refinement_checks(seed: int = 0) -> list[CheckResult]:
    """Run every kernel refinement check on seeded random inputs.

    Parameters
    ----------
    seed : int
        Seed of the random inputs.

    Returns
    -------
    list of CheckResult
        Kind ``"beyond"``, one per (kernel, reference) pair.
    """
    from nbssm import ops
    from nbssm.spec.algorithms import chunked_diagonal_scan, streaming_causal_conv
    from nbssm.spec.context import DOUBLE
    from nbssm.spec.models import causal_conv_step
    from nbssm.spec.scan import DiagonalTransition, diagonal_selective_scan

    rng = np.random.default_rng(seed)
    results = []

    def selective_sequential():
        comps = []
        for shape in SELECTIVE_SHAPES:
            kw = _selective_inputs(rng, *shape)
            y, h = ops.selective_scan(**kw, return_final_state=True, strategy="sequential")
            y_ref, h_ref = _spec_selective(kw)
            comps.append((f"y {shape}", _compare(y, y_ref, 0)))
            comps.append((f"state {shape}", _compare(h, h_ref, 0)))
        return _all(comps)

    results.append(_run_check("selective_scan_sequential_refines_selective_recurrence_step",
                              {"shapes (b,l,d,n)": SELECTIVE_SHAPES, "dtype": "float64"}, selective_sequential))

    def selective_chunked():
        comps = []
        for shape, cl in [((2, 11, 17, 3), 4), ((1, 7, 5, 2), 1), ((1, 9, 16, 2), 3)]:
            kw = _selective_inputs(rng, *shape)
            y = ops.selective_scan(**kw, strategy="chunked", chunk_length=cl)
            comps.append((f"{shape} chunk {cl}", _compare(y, _reference_chunked_selective(kw, cl), 0)))
        return _all(comps)

    results.append(_run_check("selective_scan_chunked_refines_chunked_diagonal_scan",
                              {"shapes (b,l,d,n)": [(2, 11, 17, 3), (1, 7, 5, 2), (1, 9, 16, 2)],
                               "chunk_length": [4, 1, 3], "dtype": "float64"}, selective_chunked))

    def linear_both():
        comps = []
        for shape in LINEAR_SHAPES:
            a = rng.uniform(-1, 1, shape)
            b = rng.standard_normal(shape)
            h0 = rng.standard_normal((shape[0], shape[2]))
            seq = ops.linear_scan(a, b, h0, strategy="sequential")
            for i in range(shape[0]):
                trs = [DiagonalTransition(a[i, t].tolist(), b[i, t].tolist()) for t in range(shape[1])]
                ref = np.array(diagonal_selective_scan(DOUBLE, h0[i].tolist(), trs))
                comps.append((f"sequential {shape}[{i}]", _compare(seq[i], ref, 0)))
                for cl in (1, 4):
                    ch = ops.linear_scan(a[i:i + 1], b[i:i + 1], h0[i:i + 1], strategy="chunked", chunk_length=cl)
                    ref_c = np.array(chunked_diagonal_scan(h0[i].tolist(), a[i].tolist(), b[i].tolist(), cl))
                    comps.append((f"chunked {cl} {shape}[{i}]", _compare(ch[0], ref_c, 0)))
        return _all(comps)

    results.append(_run_check("linear_scan_refines_diagonal_selective_scan_and_chunked_reference",
                              {"shapes (b,l,d)": LINEAR_SHAPES, "chunk_length": [1, 4], "dtype": "float64"},
                              linear_both))

    def conv():
        comps = []
        for batch, length, channels, width in [(2, 7, 20, 4), (1, 3, 3, 1), (1, 2, 5, 3)]:
            x = rng.standard_normal((batch, length, channels))
            w = rng.standard_normal((channels, width))
            bias = rng.standard_normal(channels)
            hist = rng.standard_normal((batch, max(width - 1, 0), channels))
            out, new_hist = ops.causal_conv1d(x, w, bias, hist, return_history=True)
            kernel = w[:, ::-1].T.tolist()  # newest first
            for i in range(batch):
                window = hist[i][::-1].tolist()
                ref = []
                for t in range(length):
                    window = [x[i, t].tolist()] + window
                    ref.append(causal_conv_step(DOUBLE, kernel, bias.tolist(), window))
                comps.append((f"step {i}", _compare(out[i], np.array(ref).reshape(length, channels), 0)))
                s_out, s_hist = streaming_causal_conv(kernel, bias.tolist(), hist[i][::-1].tolist(),
                                                      [x[i, :1].tolist(), x[i, 1:].tolist()])
                comps.append((f"streaming {i}", _compare(out[i], np.array(s_out).reshape(length, channels), 0)))
                comps.append((f"history {i}", _compare(new_hist[i][::-1].reshape(-1),
                                                       np.array(s_hist).reshape(-1), 0)))
        return _all(comps)

    results.append(_run_check("causal_conv1d_refines_causal_conv_step_and_streaming_reference",
                              {"shapes (b,l,d,w)": [(2, 7, 20, 4), (1, 3, 3, 1), (1, 2, 5, 3)], "dtype": "float64"},
                              conv))

    def float32():
        comps = []
        for strategy in ("sequential", "chunked"):
            kw = _selective_inputs(rng, 2, 64, 24, 16)
            y64, h64 = ops.selective_scan(**kw, return_final_state=True, strategy=strategy, chunk_length=16)
            kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
            y32, h32 = ops.selective_scan(**kw32, return_final_state=True, strategy=strategy, chunk_length=16)
            comps.append((f"selective y {strategy}", _compare(y32, y64, FLOAT32_TOLERANCE)))
            comps.append((f"selective state {strategy}", _compare(h32, h64, FLOAT32_TOLERANCE)))
            a = rng.uniform(-1, 1, (1, 300, 3))
            b = rng.standard_normal((1, 300, 3))
            l64 = ops.linear_scan(a, b, strategy=strategy, chunk_length=16)
            l32 = ops.linear_scan(a.astype(np.float32), b.astype(np.float32), strategy=strategy, chunk_length=16)
            comps.append((f"linear {strategy}", _compare(l32, l64, FLOAT32_TOLERANCE)))
        return _all(comps)

    results.append(_run_check("float32_kernels_within_tolerance_of_float64",
                              {"selective (b,l,d,n)": (2, 64, 24, 16), "linear (b,l,d)": (1, 300, 3),
                               "tolerance": FLOAT32_TOLERANCE}, float32))
    return results
