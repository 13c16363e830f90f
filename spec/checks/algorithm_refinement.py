"""Family ``algorithm_refinement``: the kernels' algorithms equal the spec (``proofs_notes/algorithm_refinement.md``).

Over the reals: the chunked parallel-in-time diagonal scan
(``spec.algorithms.chunked_diagonal_scan``) equals ``diagonalSelectiveScan``,
and the streaming causal convolution equals the spec's convolution inside
``runListAux``. Control: a chunked carry that uses the next chunk's summary.
"""

from __future__ import annotations

from .. import models as M
from .. import scan as S
from ..context import SYMPY
from ..symbolic import (
    EXPAND,
    IDENTITY,
    Budget,
    Refuted,
    Unknown,
    compare_structures,
    independent,
)
from ..verdict import BEYOND, CONTROL
from .base import Dims, register
from .common import patched, sides, stokens, svec, sym_H0, sym_L0, sym_selective, xs_ys

ALGO = "algorithm_refinement"
DT = S.DiagonalTransition


def _algorithms():
    try:
        from .. import algorithms
    except ImportError as e:  # pragma: no cover - depends on the kernels helper
        raise Unknown(f"spec.algorithms is missing ({e})")
    return algorithms


def _chunk_cases(d: Dims) -> list[tuple[int, int]]:
    total = max(d.n_xs + d.n_ys, 1)
    lengths = sorted({1, min(2, total), total})
    cases = []
    for T in lengths:
        for lc in sorted({1, 2, 3, T}):
            cases.append((T, lc))
    return cases


def _chunked_refinement(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    n = max(d.state_dim, 1)
    h0 = svec("h0", n)
    n_cases = 0
    for T, lc in _chunk_cases(d):
        a = stokens("a", T, n)
        b = stokens("b", T, n)
        budget.check()
        try:
            sides(lambda: alg.chunked_diagonal_scan(h0, a, b, lc),
                  lambda: S.diagonal_selective_scan(SYMPY, h0, [DT(a[t], b[t]) for t in range(T)]), EXPAND, budget)
        except Refuted as e:
            raise Refuted(f"T={T}, chunk_length={lc}: {e}")
        n_cases += 1
    return (f"chunked_diagonal_scan(h0, a, b, Lc) = diagonalSelectiveScan h0 [(a_t, b_t)] by expand for "
            f"{n_cases} (T, Lc) cases {_chunk_cases(d)}, stateDim {n}")


@register("chunked_diagonal_scan_refines_diagonalSelectiveScan", BEYOND, ALGO,
          "the chunked parallel-in-time scan (local summaries, serial carry, fix-up) equals diagonalSelectiveScan "
          "over the reals for several lengths and chunk lengths", EXPAND, mirrors="algorithms.chunked_diagonal_scan")
def chunked_diagonal_scan_refines(d: Dims, budget: Budget) -> str:
    return _chunked_refinement(d, budget)


def _record_spec_conv(m, H0, L0, xs) -> list:
    """Run the spec's ``runListAux`` and record the outputs of its causal convolution, token by token."""
    seen = []
    real = M.causal_conv_step

    def recording(ctx, kernel, bias, history):
        out = real(ctx, kernel, bias, history)
        seen.append(out)
        return out

    with patched(M, "causal_conv_step", recording):
        m.run_list_aux(SYMPY, H0, L0, xs)
    return seen


@register("streaming_causal_conv_refines_conv", BEYOND, ALGO,
          "the streaming convolution with a carried history of convWidth - 1 tokens equals the spec's causal "
          "convolution inside runListAux, for several splits into pieces, with zero or symbolic history", mirrors="algorithms.streaming_causal_conv")
def streaming_causal_conv_refines_conv(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    m = sym_selective(d)
    H0 = sym_H0(d)
    xs, ys = xs_ys(d, d.input_dim)
    tokens = xs + ys
    T = len(tokens)
    keep = max(d.conv_width - 1, 0)
    splits = {"one piece": [T], "token by token": [1] * T, "|xs| then |ys|": [d.n_xs, d.n_ys]}
    n_cases = 0
    for hist_label, L0 in (("empty history", []), ("symbolic history", sym_L0(d, keep))):
        spec_side = independent(lambda: _record_spec_conv(m, H0, L0, tokens))
        for split_label, sizes in splits.items():
            budget.check()

            def reference():
                proj = [m.project_x(SYMPY, x) for x in tokens]
                pieces, k = [], 0
                for sz in sizes:
                    pieces.append(proj[k:k + sz])
                    k += sz
                hist = L0[:keep] if L0 else [[SYMPY.zero] * d.inner_dim for _ in range(keep)]
                return alg.streaming_causal_conv(m.conv_kernel, m.conv_bias, hist, pieces)[0]

            ref = independent(reference)
            try:
                compare_structures(ref, spec_side, IDENTITY, budget)
            except Refuted as e:
                raise Refuted(f"{hist_label}, split {split_label}: {e}")
            n_cases += 1
    return (f"streaming_causal_conv outputs identical to the spec's causal convolution (recorded inside "
            f"runListAux) for {n_cases} cases (empty / symbolic history x {list(splits)}), {T} tokens")



@register("control_algorithm_chunked_carry_off_by_one_chunk", CONTROL, ALGO,
          "chunked scan whose carry uses the next chunk's summary (off by one chunk): must be refuted", EXPAND, mirrors="algorithms.chunked_diagonal_scan with a mutated chunk_summary")
def control_chunked_off_by_one(d: Dims, budget: Budget) -> str:
    alg = _algorithms()
    real = alg.chunk_summary

    def next_chunk_summary(a, b, start, stop):
        T = len(a)
        if stop < T:  # mutation: summarise the following chunk instead of this one
            return real(a, b, stop, min(stop + (stop - start), T))
        return real(a, b, start, stop)

    with patched(alg, "chunk_summary", next_chunk_summary):
        return _chunked_refinement(d, budget)
