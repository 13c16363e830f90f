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
* for float32: the float64 kernels, and (at real sizes) the spec adapters on
  the float32-rounded inputs, within the ``float32_vs_float64`` row of
  :mod:`nbssm.tolerances` (relative to the largest value).

The spec side is :mod:`nbssm.verify.spec_adapters` (the ops' keyword
arguments through the runners; shapes as the ops: ``(b, l, d)`` sequences,
``(d, n)`` rates, ``(b, l, n)`` projections, ``(b, d, n)`` selective states);
inputs are drawn by :func:`nbssm.reference.random_inputs`. The ``*_real_sizes``
rows run lengths past the selective kernel's 128-token tiles and several
chunks, channel counts not a multiple of the block widths (32/64 selective,
64 linear) and above one block, state sizes up to 64, with and without an
initial state.

A check is ``proved`` when every comparison holds, ``refuted`` with the largest
error and its location otherwise, ``unknown`` if the comparison could not be
made (an exception, reported in the detail).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from nbssm.reference import random_inputs
from nbssm.spec.context import DOUBLE
from nbssm.spec.verdict import BEYOND, PROVED, REFUTED, UNKNOWN, CheckResult
from nbssm.tolerances import tol
from nbssm.verify import spec_adapters as sa
from nbssm.verify._pairs import float64_pair

#: float32 kernels vs float64 (kernels or spec): the "float32_vs_float64" row of nbssm.tolerances
FLOAT32_TOLERANCE = tol("float32_vs_float64")


def _compare(got, want, tolerance):
    """``(ok, detail)``: bitwise when ``tolerance == 0``, else max error relative to max |want|."""
    got, want, verdict = float64_pair(got, want)
    if verdict is not None:
        return verdict
    if tolerance == 0:
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        if same.all():
            return True, "bitwise equal"
        idx = np.unravel_index(np.argmin(same), same.shape)
        err = float(np.nanmax(np.abs(got - want)))
        where = tuple(int(i) for i in idx)
        return False, (f"not bitwise equal: max |diff| {err:.3e}; first at index {where}: "
                       f"{got[idx]!r} vs {want[idx]!r}")
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    diff = np.abs(got - want)
    err = float(np.max(diff)) / scale
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    if err <= tolerance:
        return True, f"max relative error {err:.2e} <= {tolerance:.0e}"
    return False, f"max relative error {err:.3e} > {tolerance:.0e} at index {tuple(int(i) for i in idx)}"


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


#: real sizes: lengths past the 128-token tiles of the selective kernel, channel counts
#: above one block and not a multiple of the block widths, state sizes up to 64
#: (shape, chunk_length (None: ops.SELECTIVE_CHUNK_LENGTH), initial_state)
REAL_SELECTIVE = [((2, 300, 70, 4), 128, True), ((1, 260, 33, 64), 100, False), ((1, 1300, 33, 1), None, True)]
#: (shape, chunk_length (None: ops.LINEAR_CHUNK_LENGTH), initial_state); one channel runs 4 chunks in lockstep
#: chunk 70 over 1000 tokens: 15 chunks, the last group of the lockstep fix-up holds 3 chunks
#: and a short last one (the kernel's tail loop)
REAL_LINEAR = [((2, 1000, 70), 70, True), ((1, 9000, 1), None, False)]
REAL_FLOAT32 = (1, 300, 40, 16)


def refinement_checks(seed: int = 0) -> list[CheckResult]:
    """Run every kernel refinement check on seeded random inputs.

    Parameters
    ----------
    seed : int
        Seed of the random inputs (:func:`nbssm.reference.random_inputs`).

    Returns
    -------
    list of CheckResult
        Kind ``"beyond"``, one per (kernel, reference) pair.
    """
    from nbssm import ops

    draws = iter(range(10_000))

    def draw(kind, shape, dtype=np.float64, **options):
        return random_inputs(kind, shape, dtype, seed * 10_000 + next(draws), **options)

    results = []

    def selective_sequential():
        comps = []
        for shape in SELECTIVE_SHAPES:
            kw = draw("selective", shape)
            y, h = ops.selective_scan(**kw, return_final_state=True, strategy="sequential")
            y_ref, h_ref = sa.selective_scan_spec(**kw)
            comps.append((f"y {shape}", _compare(y, y_ref, 0)))
            comps.append((f"state {shape}", _compare(h, h_ref, 0)))
        return _all(comps)

    results.append(_run_check("selective_scan_sequential_refines_selective_recurrence_step",
                              {"shapes (b,l,d,n)": SELECTIVE_SHAPES, "dtype": "float64"}, selective_sequential))

    chunked_cases = [((2, 11, 17, 3), 4), ((1, 7, 5, 2), 1), ((1, 9, 16, 2), 3)]

    def selective_chunked():
        comps = []
        for shape, cl in chunked_cases:
            kw = draw("selective", shape)
            y = ops.selective_scan(**kw, strategy="chunked", chunk_length=cl)
            comps.append((f"{shape} chunk {cl}",
                          _compare(y, sa.selective_scan_chunked_reference(**kw, chunk_length=cl)[0], 0)))
        return _all(comps)

    results.append(_run_check("selective_scan_chunked_refines_chunked_diagonal_scan",
                              {"shapes (b,l,d,n)": [c[0] for c in chunked_cases],
                               "chunk_length": [c[1] for c in chunked_cases], "dtype": "float64"},
                              selective_chunked))

    def linear_both():
        comps = []
        for shape in LINEAR_SHAPES:
            kw = draw("linear", shape)
            seq = ops.linear_scan(**kw, strategy="sequential")
            ref = sa.linear_scan_spec(**kw)[0]
            for i in range(shape[0]):
                comps.append((f"sequential {shape}[{i}]", _compare(seq[i], ref[i], 0)))
            for cl in (1, 4):
                ch = ops.linear_scan(**kw, strategy="chunked", chunk_length=cl)
                ref_c = sa.linear_scan_chunked_reference(**kw, chunk_length=cl)[0]
                comps.append((f"chunked {cl} {shape}", _compare(ch, ref_c, 0)))
        return _all(comps)

    results.append(_run_check("linear_scan_refines_diagonal_selective_scan_and_chunked_reference",
                              {"shapes (b,l,d)": LINEAR_SHAPES, "chunk_length": [1, 4], "dtype": "float64"},
                              linear_both))

    conv_shapes = [(2, 7, 20, 4), (1, 3, 3, 1), (1, 2, 5, 3)]

    def conv():
        comps = []
        for shape in conv_shapes:
            kw = draw("conv", shape)
            out, new_hist = ops.causal_conv1d(**kw, return_final_state=True)
            ref, ref_hist = sa.causal_conv1d_spec(**kw)
            comps.append((f"step {shape}", _compare(out, ref, 0)))
            comps.append((f"step history {shape}", _compare(new_hist, ref_hist, 0)))
            s_out, s_hist = sa.causal_conv1d_streaming_reference(**kw, splits=(1,))
            comps.append((f"streaming {shape}", _compare(out, s_out, 0)))
            comps.append((f"history {shape}", _compare(new_hist, s_hist, 0)))
        return _all(comps)

    results.append(_run_check("causal_conv1d_refines_causal_conv_step_and_streaming_reference",
                              {"shapes (b,l,d,w)": conv_shapes, "dtype": "float64"}, conv))

    def float32():
        comps = []
        for strategy in ("sequential", "chunked"):
            kw = draw("selective", (2, 64, 24, 16))
            y64, h64 = ops.selective_scan(**kw, return_final_state=True, strategy=strategy, chunk_length=16)
            kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
            y32, h32 = ops.selective_scan(**kw32, return_final_state=True, strategy=strategy, chunk_length=16)
            comps.append((f"selective y {strategy}", _compare(y32, y64, FLOAT32_TOLERANCE)))
            comps.append((f"selective state {strategy}", _compare(h32, h64, FLOAT32_TOLERANCE)))
            lw = draw("linear", (1, 300, 3), initial_state=False)
            l64 = ops.linear_scan(**lw, strategy=strategy, chunk_length=16)
            l32 = ops.linear_scan(**{k: v.astype(np.float32) for k, v in lw.items()}, strategy=strategy,
                                  chunk_length=16)
            comps.append((f"linear {strategy}", _compare(l32, l64, FLOAT32_TOLERANCE)))
        return _all(comps)

    results.append(_run_check("float32_kernels_within_tolerance_of_float64",
                              {"selective (b,l,d,n)": (2, 64, 24, 16), "linear (b,l,d)": (1, 300, 3),
                               "tolerance": FLOAT32_TOLERANCE}, float32))

    def selective_real():
        comps = []
        for shape, cl, with_h0 in REAL_SELECTIVE:
            kw = draw("selective", shape, initial_state=with_h0)
            y, h = ops.selective_scan(**kw, return_final_state=True, strategy="sequential")
            y_ref, h_ref = sa.selective_scan_spec(**kw)
            comps.append((f"sequential y {shape}", _compare(y, y_ref, 0)))
            comps.append((f"sequential state {shape}", _compare(h, h_ref, 0)))
            cl_eff = ops.SELECTIVE_CHUNK_LENGTH if cl is None else cl
            y, h = ops.selective_scan(**kw, return_final_state=True, strategy="chunked", chunk_length=cl)
            y_ref, h_ref = sa.selective_scan_chunked_reference(**kw, chunk_length=cl_eff)
            comps.append((f"chunked {cl_eff} y {shape}", _compare(y, y_ref, 0)))
            comps.append((f"chunked {cl_eff} state {shape}", _compare(h, h_ref, 0)))
        return _all(comps)

    results.append(_run_check("selective_scan_refines_spec_and_chunked_reference_at_real_sizes",
                              {"shapes (b,l,d,n)": [c[0] for c in REAL_SELECTIVE],
                               "chunk_length": [c[1] or "SELECTIVE_CHUNK_LENGTH" for c in REAL_SELECTIVE],
                               "initial_state": [c[2] for c in REAL_SELECTIVE], "tile": 128,
                               "dtype": "float64"}, selective_real))

    def linear_real():
        comps = []
        for shape, cl, with_h0 in REAL_LINEAR:
            kw = draw("linear", shape, initial_state=with_h0)
            out, h = ops.linear_scan(**kw, return_final_state=True, strategy="sequential")
            ref, h_ref = sa.linear_scan_spec(**kw)
            comps.append((f"sequential {shape}", _compare(out, ref, 0)))
            comps.append((f"sequential state {shape}", _compare(h, h_ref, 0)))
            cl_eff = ops.LINEAR_CHUNK_LENGTH if cl is None else cl
            out, h = ops.linear_scan(**kw, return_final_state=True, strategy="chunked", chunk_length=cl)
            ref, h_ref = sa.linear_scan_chunked_reference(**kw, chunk_length=cl_eff)
            comps.append((f"chunked {cl_eff} {shape}", _compare(out, ref, 0)))
            comps.append((f"chunked {cl_eff} state {shape}", _compare(h, h_ref, 0)))
        return _all(comps)

    results.append(_run_check("linear_scan_refines_spec_and_chunked_reference_at_real_sizes",
                              {"shapes (b,l,d)": [c[0] for c in REAL_LINEAR],
                               "chunk_length": [c[1] or "LINEAR_CHUNK_LENGTH" for c in REAL_LINEAR],
                               "initial_state": [c[2] for c in REAL_LINEAR], "dtype": "float64"}, linear_real))

    def float32_real():
        comps = []
        # float32 draws, so that the spec sees exactly the kernel's inputs (widened to float64)
        kw32 = draw("selective", REAL_FLOAT32, np.float32)
        y_ref, h_ref = sa.selective_scan_spec(**kw32)
        for strategy in ("sequential", "chunked"):
            y32, h32 = ops.selective_scan(**kw32, return_final_state=True, strategy=strategy, chunk_length=128)
            comps.append((f"selective y {strategy}", _compare(y32, y_ref, FLOAT32_TOLERANCE)))
            comps.append((f"selective state {strategy}", _compare(h32, h_ref, FLOAT32_TOLERANCE)))
        lw = draw("linear", (1, 1000, 70), np.float32)
        l_ref = sa.linear_scan_spec(**lw)[0]
        for strategy in ("sequential", "chunked"):
            l32 = ops.linear_scan(**lw, strategy=strategy, chunk_length=60)
            comps.append((f"linear {strategy}", _compare(l32, l_ref, FLOAT32_TOLERANCE)))
        return _all(comps)

    results.append(_run_check("float32_kernels_within_tolerance_of_spec_at_real_sizes",
                              {"selective (b,l,d,n)": REAL_FLOAT32, "linear (b,l,d)": (1, 1000, 70),
                               "tolerance": FLOAT32_TOLERANCE}, float32_real))
    results.extend(_branch_and_extreme_checks())
    results.extend(_model_checks(seed))
    return results


# --------------------------------------------------------------------------- activation branches

_LOG_DBL_MAX = math.log(sys.float_info.max)
#: branch points of the kernels' activations: 0 (branched forms), PyTorch's float32 softplus
#: threshold 20, 36.8 (where x + log1p(exp(-x)) rounds to x), float32 exp's range ends
#: (-86.64, 88.72), its flush to zero (-86.99) and argument clamp (-87.5, 89) and
#: log(DBL_MAX) = 709.78 (float64 exp overflows above it)
_THRESHOLDS = (0.0, 2.0, 20.0, 36.8, -86.64, -86.99, -87.5, 88.7228, 89.0, 709.0, _LOG_DBL_MAX)


def _activation_grid():
    """Arguments on both sides of every branch point, and a sweep of [-800, 800]."""
    pts = list(np.linspace(-800.0, 800.0, 161))
    for c in _THRESHOLDS:
        for s in (1.0, -1.0):
            pts += [c + s * e for e in (1e-9, 1e-3, 0.25, 1.0)]
            pts += [math.nextafter(c, s * math.inf), math.nextafter(math.nextafter(c, s * math.inf), s * math.inf)]
        pts += [c, -c]
    return np.array(sorted(set(pts)), dtype=np.float64)


def _softplus_expected(x):
    """The kernels' documented softplus: the spec's List family where it is finite, else the branched form."""
    from nbssm.spec.context import BRANCHED, DoubleContext

    branched = DoubleContext(softplus_form=BRANCHED)
    out = []
    for v in x:
        p = DOUBLE.softplus(float(v))
        out.append(p if math.isfinite(p) else branched.softplus(float(v)))
    return np.array(out)


def _elementwise(got, want, tolerance, floor):
    """``|got - want| <= tolerance * |want| + floor`` everywhere (errors near 0 are not hidden by large values)."""
    got, want, verdict = float64_pair(got, want)
    if verdict is not None:
        return verdict
    bad = ~(np.abs(got - want) <= tolerance * np.abs(want) + floor)
    if bad.any():
        i = int(np.argmax(bad))
        return False, f"{int(bad.sum())} values off, e.g. at {i}: {got.flat[i]!r} vs {want.flat[i]!r}"
    return True, f"elementwise within {tolerance:.0e} (+{floor:.0e})"


def _branch_and_extreme_checks() -> list[CheckResult]:
    from nbssm import ops

    results = []
    grid = _activation_grid()

    def through_scan(dtype, delta, z, softplus):
        """One token per channel, ``A = 0``, ``B = C = u = 1``, no ``D``: ``y = softplus(delta) (* silu(z))``."""
        g = delta.size
        one = np.ones((1, 1, g), dtype)
        return ops.selective_scan(one, delta.reshape(1, 1, g).astype(dtype), np.zeros((g, 1), dtype),
                                  np.ones((1, 1, 1), dtype), np.ones((1, 1, 1), dtype),
                                  z=None if z is None else z.reshape(1, 1, g).astype(dtype),
                                  delta_softplus=softplus, strategy="sequential")[0, 0]

    def activations():
        comps = []
        sp = _softplus_expected(grid)
        silu = np.array([DOUBLE.silu(float(v)) for v in grid])
        comps.append(("float64 softplus", _compare(through_scan(np.float64, grid, None, True), sp, 0)))
        comps.append(("float64 silu gate", _compare(through_scan(np.float64, np.ones_like(grid), grid, False),
                                                    silu, 0)))
        g32 = grid.astype(np.float32).astype(np.float64)  # what the float32 kernel sees
        # float32 keeps the relative accuracy of tiny softplus values (a log1p correction), which the
        # List family's plain log(1 + exp(x)) rounds to 0 in double: compare with the accurate value
        comps.append(("float32 softplus", _elementwise(through_scan(np.float32, g32, None, True),
                                                       np.logaddexp(0.0, g32), FLOAT32_TOLERANCE, 1e-30)))
        comps.append(("float32 silu gate", _elementwise(
            through_scan(np.float32, np.ones_like(g32), g32, False),
            np.array([DOUBLE.silu(float(v)) for v in g32]), FLOAT32_TOLERANCE, 1e-30)))
        conv_x = grid.reshape(1, -1, 1)
        out = ops.causal_conv1d(conv_x, np.ones((1, 1)), activation="silu")
        comps.append(("float64 conv silu", _compare(out[0, :, 0], silu, 0)))
        return _all(comps)

    results.append(_run_check("kernel_activations_refine_spec_on_both_sides_of_every_branch",
                              {"arguments": int(grid.size), "branch points": list(_THRESHOLDS),
                               "float32 tolerance (elementwise)": FLOAT32_TOLERANCE}, activations))

    def extremes():
        comps = []
        lin, sel = _extreme_inputs()
        for cl in (16, 64):
            for kw, name, seq_ref, ch_ref in (
                    (lin, "linear", sa.linear_scan_spec, sa.linear_scan_chunked_reference),
                    (sel, "selective", sa.selective_scan_spec, sa.selective_scan_chunked_reference)):
                op = ops.linear_scan if name == "linear" else ops.selective_scan
                with np.errstate(all="ignore"):
                    y, h = op(**kw, return_final_state=True, strategy="chunked", chunk_length=cl)
                    y_ref, h_ref = ch_ref(**kw, chunk_length=cl)
                comps.append((f"{name} chunked {cl} y", _compare(y, y_ref, 0)))
                comps.append((f"{name} chunked {cl} state", _compare(h, h_ref, 0)))
        for kw, name, seq_ref in ((lin, "linear", sa.linear_scan_spec), (sel, "selective", sa.selective_scan_spec)):
            op = ops.linear_scan if name == "linear" else ops.selective_scan
            with np.errstate(all="ignore"):
                y, h = op(**kw, return_final_state=True, strategy="sequential")
                y_ref, h_ref = seq_ref(**kw)
            comps.append((f"{name} sequential y", _compare(y, y_ref, 0)))
            comps.append((f"{name} sequential state", _compare(h, h_ref, 0)))
        return _all(comps)

    results.append(_run_check("chunked_scans_refine_chunked_reference_where_the_carry_re_runs",
                              {"linear (b,l,d)": (1, 64, 6), "selective (b,l,d,n)": (1, 64, 33, 2),
                               "chunk_length": [16, 64],
                               "regimes": "underflowed product x huge state, overflowed product x 0, "
                                          "zero transitions, normal"}, extremes))
    return results


def _extreme_inputs():
    """Inputs whose chunk summaries underflow (with a huge state: the carry must re-run the chunk),
    overflow (times a zero state) or vanish, next to ordinary channels."""
    rng = np.random.default_rng(7)
    L = 64
    # linear: channel regimes
    a = rng.uniform(0.5, 1.0, (1, L, 6))
    b = rng.standard_normal((1, L, 6))
    h0 = rng.standard_normal((1, 6))
    a[0, :, 0], b[0, :16, 0], h0[0, 0] = 4.2e-20, 0.0, 1e300        # underflowed product x huge state
    a[0, :16, 1], b[0, :, 1], h0[0, 1] = 1e25, 1e-300, 0.0          # overflowed product x zero state
    a[0, 16:32, 2] = 0.0                                           # zero transitions
    a[0, :, 3], h0[0, 3] = 4.2e-20, 1.0                            # underflowed product x moderate state
    lin = {"a": a, "b": b, "initial_state": h0}
    # selective: transition exp(delta * A), input (delta * B) * u; no softplus
    d, n = 33, 2
    u = rng.standard_normal((1, L, d))
    delta = rng.uniform(0.1, 1.0, (1, L, d))
    A = -rng.uniform(0.5, 1.5, (d, n))
    H0 = rng.standard_normal((1, d, n))
    delta[0, :, 0], A[0], u[0, :16, 0], H0[0, 0] = 44.6, -1.0, 0.0, 1e300
    delta[0, :16, 1], A[1], u[0, :, 1], H0[0, 1] = 57.6, 1.0, 1e-302, 0.0
    delta[0, :, 2], A[2], H0[0, 2] = 44.6, -1.0, 1.0
    sel = {"u": u, "delta": delta, "A": A, "B": rng.standard_normal((1, L, n)), "C": rng.standard_normal((1, L, n)),
           "D": rng.standard_normal(d), "z": rng.standard_normal((1, L, d)), "initial_state": H0}
    return lin, sel


# --------------------------------------------------------------------------- models, projections, CDE, signature


def _spec_run(spec, xs, h0):
    h, ys = spec.run_list(DOUBLE, h0, xs)
    return np.array(h, dtype=np.float64), np.array(ys, dtype=np.float64).reshape(len(xs), spec.output_dim)


def _model_checks(seed: int) -> list[CheckResult]:
    from nbssm.models import CompactMamba, DiagonalS4, SelectiveMamba

    results = []
    rng = np.random.default_rng(seed + 11)
    cases = [
        ("DiagonalS4", DiagonalS4.random(13, 530, 3, seed=seed + 1), 4, 3),   # projections past the 8 x 512 tiles
        ("CompactMamba", CompactMamba.random(5, 7, 3, seed=seed + 2), 30, 2),
        ("SelectiveMamba", SelectiveMamba.random(4, 40, 3, 2, conv_width=4, seed=seed + 3), 30, 2),
    ]

    def body():
        comps = []
        for name, model, length, batch in cases:
            spec = model.to_spec()
            x = rng.standard_normal((batch, length, spec.input_dim))
            h0: list = ([[0.0] * spec.state_dim for _ in range(spec.inner_dim)] if hasattr(spec, "inner_dim")
                        else [0.0] * spec.state_dim)
            refs = [_spec_run(spec, x[i].tolist(), h0) for i in range(batch)]
            y, st = model.forward(x, strategy="sequential")
            for i, (h_ref, y_ref) in enumerate(refs):
                comps.append((f"{name} y[{i}]", _compare(y[i], y_ref, 0)))
                comps.append((f"{name} state[{i}]", _compare(st.layers[0].ssm[i], h_ref.reshape(st.layers[0].ssm[i].shape), 0)))
            k = length // 3
            y1, st1 = model.forward(x[:, :k], strategy="sequential")
            y2, st2 = model.forward(x[:, k:], initial_state=st1, strategy="sequential")
            comps.append((f"{name} continued at {k}", _compare(np.concatenate([y1, y2], axis=1), y, 0)))
            comps.append((f"{name} continued state", _compare(st2.layers[0].ssm, st.layers[0].ssm, 0)))
            yc, _ = model.forward(x, strategy="chunked", chunk_length=4)
            comps.append((f"{name} chunked", _compare(yc, y, tol("model_float64"))))
        return _all(comps)

    results.append(_run_check("runtime_models_refine_spec_run_list",
                              {"models": [(c[0], c[1].dims) for c in cases], "lengths": [c[2] for c in cases],
                               "dtype": "float64", "continuation": "at length // 3",
                               "chunked tolerance": tol("model_float64")}, body))

    def cde():
        from nbssm.cde import linear_cde_scan
        from nbssm.spec.cde import LinearCDESpec

        comps = []
        n, dw, dx, T = 5, 3, 2, 12
        A = rng.standard_normal((dw, n, n)) * 0.3
        B = rng.standard_normal((n, dx))
        dom = rng.standard_normal((2, T, dw)) * 0.2
        dxi = rng.standard_normal((2, T, dx)) * 0.2
        z0 = rng.standard_normal((2, n))
        for method, step, order in (("taylor", "taylor", 3), ("taylor", "taylor", 1), ("euler", "euler", 0)):
            spec = LinearCDESpec(n, dw, dx, A.tolist(), B.tolist(), step=step, order=order)
            opts = {"order": order} if method == "taylor" else {}
            final, states = linear_cde_scan(A, B, dom, dxi, z0, method=method, backend="numba", return_states=True,
                                            **opts)
            for i in range(2):
                zT, zs = spec.run_list(DOUBLE, z0[i].tolist(), dom[i].tolist(), dxi[i].tolist())
                comps.append((f"{method} {order} states[{i}]", _compare(states[i, 1:], np.array(zs),
                                                                       tol("float64_vs_oracle"))))
                comps.append((f"{method} {order} final[{i}]", _compare(final[i], np.array(zT),
                                                                      tol("float64_vs_oracle"))))
        return _all(comps)

    results.append(_run_check("dense_cde_kernel_refines_linear_cde_spec",
                              {"(n, dw, dx, T)": (5, 3, 2, 12), "methods": ["taylor 3", "taylor 1", "euler"],
                               "backend": "numba", "tolerance": tol("float64_vs_oracle")}, cde))

    def signature():
        from nbssm.signatures import signature as sig

        comps = []
        depth, d = 4, 3
        path = rng.standard_normal((2, 9, d)) * 0.5
        got = sig(path, depth)
        for i in range(2):
            want, bounds = _chen_signature(path[i], depth)
            off = 0
            for k in range(1, depth + 1):
                size = d ** k
                err = float(np.max(np.abs(got[i, off:off + size] - want[k - 1])))
                limit = tol("signature_vs_chen_reference") * bounds[k - 1]
                comps.append((f"path {i} level {k}", (err <= limit, f"max error {err:.2e} <= {limit:.2e}")
                              if err <= limit else (False, f"level {k}: max error {err:.3e} > {limit:.3e}")))
                off += size
        return _all(comps)

    results.append(_run_check("signature_kernel_refines_chen_product",
                              {"paths (b,l,d)": (2, 9, 3), "depth": 4,
                               "tolerance per level": tol("signature_vs_chen_reference")}, signature))
    return results


def _chen_signature(path, depth):
    """Levels ``1..depth`` of the signature by Chen's identity, one segment at a time, with dense
    tensors: ``S <- S (x) exp(delta)``, ``exp(delta)_k = delta^{(x)k} / k!``. Also the bound
    ``(sum_t |delta_t|_1)^k / k!`` of every level's terms."""
    d = path.shape[1]
    levels = [np.zeros((d,) * k) for k in range(1, depth + 1)]
    total = 0.0
    for t in range(1, path.shape[0]):
        delta = path[t] - path[t - 1]
        total += float(np.sum(np.abs(delta)))
        powers = [np.ones(())]
        for k in range(1, depth + 1):
            powers.append(np.multiply.outer(powers[-1], delta) / k)
        new = []
        for m in range(1, depth + 1):
            acc = powers[m].copy()
            for j in range(1, m):
                acc = acc + np.multiply.outer(levels[j - 1], powers[m - j])
            new.append(acc + levels[m - 1])
        levels = new
    return [lv.reshape(-1) for lv in levels], [total ** k / math.factorial(k) for k in range(1, depth + 1)]
