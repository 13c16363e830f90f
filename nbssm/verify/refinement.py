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

import time

import numpy as np

from nbssm.reference import random_inputs
from nbssm.spec.verdict import BEYOND, PROVED, REFUTED, UNKNOWN, CheckResult
from nbssm.tolerances import tol
from nbssm.verify import spec_adapters as sa

#: float32 kernels vs float64 (kernels or spec): the "float32_vs_float64" row of nbssm.tolerances
FLOAT32_TOLERANCE = tol("float32_vs_float64")


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
REAL_LINEAR = [((2, 1000, 70), 60, True), ((1, 9000, 1), None, False)]
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
    return results
