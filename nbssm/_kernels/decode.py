"""Fused single-token decode step of a whole Mamba-1 language model.

One call advances every sequence of a batch by one token through all layers: embedding,
per layer RMSNorm -> in_proj -> causal-conv update -> SiLU -> x_proj -> Δ (low rank) ->
selective-scan step -> D skip -> SiLU gate -> out_proj -> residual, then the final RMSNorm
and the LM head. Nothing is allocated per token (work buffers come from the caller) and no
Python runs between layers.

Decode is memory-bandwidth bound (every weight is read once per token), so the projections
are matrix-vector products over weights kept in the checkpoint's ``[out, in]`` row-major
layout, in one of several storage formats (:data:`QMat`: float32/float64, bfloat16 or IEEE
half bit patterns, or int8 with one float32 scale per 32 inputs of a row). Each weight is
converted to float in registers (exactly: a shift, ``vcvtph2ps``, ``float(q) * scale``), and
state and accumulation stay in the compute dtype. The loops are rows outer and sequences
inner (:func:`_rows`): a row segment is read from memory once for the whole batch, and each
weight vector is loaded and converted once per register block (:data:`BLOCK`).
For float32 compute whole dot products are written in LLVM IR (:func:`_make_vdots`: four
8-float vectors of accumulators per (row, sequence) in registers, 2 rows x 2 sequences per
register block, the lane tree folded in registers); Numba's own code for the same loop was
scalar (a constant 32-trip loop is unrolled before the loop vectoriser sees it, and Numba
turns the SLP vectoriser off) or, with an opaque trip count, kept the accumulators in memory.
Rows go in blocks of :data:`ROW_BLOCK_BYTES` that stay in L2 while each pair of sequences
passes over them.

The dot products fold in an order written out in the code, not left to the compiler (no
``reassoc`` flag): element ``i`` goes into lane ``i % LANES`` in order, then the lanes are summed
by a fixed tree. That order depends on nothing else: not the weight format (so a bf16 model
gives bit for bit what a float32 model of the dequantized weights gives), not the batch block
(a sequence gets the same bits alone or in any batch), not the thread count (a row is done by
one thread; partial sums over channel chunks of a fixed width are reduced in chunk order).

Arguments come as three named tuples, :class:`DecodeWeights` (built once per model),
:class:`DecodeState` and :class:`DecodeWork`, so the signature does not depend on the number of
layers and compiles once per dtype. Why decode has its own kernel at all (and prefill does not
use it) is explained in :mod:`nbssm.lm.model`.

Glossary: ``b`` batch, ``Dm`` d_model, ``E`` d_inner, ``N`` d_state, ``W`` d_conv,
``R`` dt_rank, ``V`` vocabulary, ``L`` layers.

Spec: one step of ``SelectiveMambaBlockSpec`` per layer (section 4.3/4.4 of the spec
document), with the low-rank Δ projection kept and the reference's order of sums
(conv bias after the taps, ``D·u`` after the C-sum), as transformers' ``slow_forward`` does.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from llvmlite import ir as _ir
from numba import carray, types
from numba.extending import intrinsic, overload

from .. import _config
from ._jit import compiled_features, njit, prange
from .fastmath import exp_, softplus_
from .intrinsics import stack_buffer

_FASTMATH = {"reassoc", "contract"}
#: the projections' dot products: no reassociation (their fold order is written out below, so
#: it is the same for every weight format, batch block and thread count); ``contract`` lets
#: ``acc + w * x`` be one fused multiply-add, the same instruction in every variant
_DOT_FASTMATH = {"contract"}

#: accumulator lanes of one dot product: element ``i`` of a row segment is added into lane
#: ``i % LANES`` (in order of ``i``), then the lanes are summed by a fixed pairwise tree
#: (:func:`_fold`). Four AVX2 vectors of float32: enough independent chains to hide the FMA latency.
LANES = 32
#: elements per int8 scale block along the input dimension (q8_0-like); equal to ``LANES``, so
#: one step of a dot product uses one scale
QBLOCK = 32
#: register block of the float32 dot products, rows x sequences: each weight vector is loaded
#: (and converted) once for ``BLOCK[1]`` sequences, each input vector once for ``BLOCK[0]`` rows
#: (16-float vectors, 2 per (row, sequence): 16 accumulators; the rest of a batch goes in
#: 2 x 2 and 1 x 1 blocks of 8-float vectors)
BLOCK = (2, 4)
#: the 2 x 4 blocks need AVX-512's 32 vector registers (16 accumulators of 16 floats); with
#: AVX2's 16 they would spill, so there the blocks are 1 row x 2 sequences (8 accumulators of 8
#: floats, the shape before the 2 x 4 blocks) and 1 x 1. Same bits either way.
WIDE = "avx512f" in compiled_features()

#: A projection matrix in its storage format. ``data`` (..., rows, n): float32/float64 values,
#: uint16 (bfloat16 bit patterns), int16 (IEEE half bit patterns) or int8 (quantized values);
#: ``scale`` (..., rows, ceil(n / QBLOCK)) float32 for int8 (``w = data * scale`` per block of
#: ``QBLOCK`` along ``n``), else (..., rows, 0) (unused).
QMat = namedtuple("QMat", "data scale")

#: The model's weights, stacked over layers, and the RMSNorm eps. QMat: embed, head (V, Dm);
#: in_proj (L, 2E, Dm); x_proj (L, R+2N, E); dt_w (L, E, R); out_proj (L, Dm, E). Arrays of the
#: compute dtype: norm_w (L, Dm); conv_w (L, E, W); conv_b (L, E); dt_b (L, E);
#: A (L, E, N) = -exp(A_log); D (L, E); norm_f (Dm,). eps float.
DecodeWeights = namedtuple("DecodeWeights", "embed norm_w in_proj conv_w conv_b x_proj dt_w dt_b A D out_proj "
                                            "norm_f head eps")
#: The recurrent state, updated in place: conv (L, b, W-1, E) oldest first; ssm (L, b, E, N).
DecodeState = namedtuple("DecodeState", "conv ssm")
#: Work buffers for a batch of b (see :func:`decode_work_shapes`); logits (b, V) is the output.
DecodeWork = namedtuple("DecodeWork", "logits hidden hn xz u xdbl dt y part_x out")


# ----------------------------------------------------------------------------- weight formats
@intrinsic
def bf16_to_f32(typingctx, bits):
    """float32 of a bfloat16 bit pattern (uint16): the pattern shifted into the upper half (exact)."""
    if bits != types.uint16:
        return None
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        i32 = _ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), i32(16))
        return builder.bitcast(wide, _ir.FloatType())

    return sig, codegen


@intrinsic
def f16_to_f32(typingctx, bits):
    """float32 of an IEEE half bit pattern (int16), exact (``fpext``: ``vcvtph2ps`` with F16C)."""
    if bits != types.int16:
        return None
    sig = types.float32(types.int16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

    return sig, codegen


@intrinsic
def _opaque(typingctx, n):
    """``n`` (int64) through an empty inline-asm statement: the same value, but LLVM cannot see it.

    The lane loops of the dot products run ``range(_opaque(LANES))``: with a trip count it does
    not know, LLVM keeps the loop and its loop vectoriser turns it into vector loads, conversions
    and FMAs; with the constant 32 it unrolls the loop fully first, and Numba leaves the SLP
    vectoriser (which would be needed then) off, so every lane was a scalar instruction.
    """
    if not isinstance(n, types.Integer):
        return None
    sig = types.int64(n)

    def codegen(context, builder, signature, args):
        i64 = _ir.IntType(64)
        v = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.asm(_ir.FunctionType(i64, [i64]), "", "=r,0", [v], side_effect=False)

    return sig, codegen


_VL = 8  # float32 lanes of one AVX2 vector: LANES = 4 vectors


def _make_vdots(nrow, nseq, vl=_VL):
    """An intrinsic ``vdots(data, scale, r, c0, n, x, b0, out, j)``: the dot products of rows
    ``r .. r + nrow - 1`` of a stored matrix with sequences ``b0 .. b0 + nseq - 1`` of ``x`` over
    columns ``c0 .. c0 + n - 1``, written to ``out[b0 + q, j + p]``, every one in the lane order.

    For each (row, sequence): element ``i`` (counted from ``c0``) goes into lane ``i % LANES`` in
    order of ``i`` (one ``contract`` multiply-add, the weight converted exactly as :func:`_wval`
    does), the lanes start at zero, and they are summed by :func:`_fold`'s tree, here on the
    four 8-float vectors of accumulators in registers. The full lane steps run over all
    ``nrow x nseq`` pairs at once (each weight vector loaded and converted once for ``nseq``
    sequences, each input vector loaded once for ``nrow`` rows). The tail (``n % LANES``
    elements) is copied into zero-padded scratch and added under a lane mask (a ``select``,
    so lanes past the tail keep their bits, signed zeros included). Every pair gets the same
    operations on the same lanes in the same order whatever ``nrow`` and ``nseq`` are, so the
    bits do not depend on the register block. Written in LLVM IR because Numba's own lane loop
    keeps the accumulators in memory. float32 compute, C-contiguous arrays only.
    """

    @intrinsic
    def vdots(typingctx, data, scale, r, c0, n, x, b0, out, j):
        ok = (isinstance(data, types.Array) and data.ndim == 2 and data.layout == "C"
              and data.dtype in (types.float32, types.uint16, types.int16, types.int8)
              and isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" and x.dtype == types.float32
              and isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.float32
              and all(isinstance(t, types.Integer) for t in (r, c0, n, b0, j)))
        if not ok:
            return None
        sig = types.void(data, scale, r, c0, n, x, b0, out, j)
        kind = data.dtype

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            dty, sty, rty, cty, nty, xty, bty, oty, jty = signature.args

            def as64(k, t):
                return context.cast(builder, args[k], t, types.int64)

            dar = context.make_array(dty)(context, builder, args[0])
            sar = context.make_array(sty)(context, builder, args[1])
            xar = context.make_array(xty)(context, builder, args[5])
            oar = context.make_array(oty)(context, builder, args[7])
            r_, c0_, n_, b0_, j_ = as64(2, rty), as64(3, cty), as64(4, nty), as64(6, bty), as64(8, jty)
            i8p = _ir.IntType(8).as_pointer()
            dstr = cgutils.unpack_tuple(builder, dar.strides, 2)
            xstr = cgutils.unpack_tuple(builder, xar.strides, 2)
            ostr = cgutils.unpack_tuple(builder, oar.strides, 2)
            sstr = cgutils.unpack_tuple(builder, sar.strides, 2)
            outer = [builder.bitcast(dar.data, i8p), dstr[0], builder.bitcast(sar.data, i8p), sstr[0], r_, c0_, n_,
                     builder.bitcast(xar.data, i8p), xstr[0], b0_, builder.bitcast(oar.data, i8p), ostr[0], ostr[1], j_]
            # the body is one function per module (internal, never inlined): the projections call
            # it from several places, and inlining a copy at each made the cold compile 2x longer
            mod = builder.module
            fname = f"nbssm_vdots_{kind}_{nrow}x{nseq}_{vl}"
            fn = mod.globals.get(fname)
            if fn is None:
                fnty = _ir.FunctionType(_ir.VoidType(), [a.type for a in outer])
                fn = _ir.Function(mod, fnty, name=fname)
                fn.linkage = "internal"
                fn.attributes.add("noinline")
                emit(_ir.IRBuilder(fn.append_basic_block("entry")), *fn.args)
            builder.call(fn, outer)
            return context.get_dummy_value()

        def emit(builder, dbase, dstr0, sbase, sstr0, r_, c0_, n_, xbase, xstr0, b0_, obase, ostr0, ostr1, j_):
            from numba.core import cgutils

            i32, i64, f32 = _ir.IntType(32), _ir.IntType(64), _ir.FloatType()
            vf = _ir.VectorType(f32, vl)
            flags = ("contract",)
            nv = LANES // vl
            isz = {types.float32: 4, types.uint16: 2, types.int16: 2, types.int8: 1}[kind]
            drows = [builder.gep(dbase, [builder.mul(builder.add(r_, i64(p)), dstr0)]) for p in range(nrow)]
            xrows = [builder.gep(xbase, [builder.mul(builder.add(b0_, i64(q)), xstr0)]) for q in range(nseq)]
            if kind == types.int8:
                srows = [builder.gep(sbase, [builder.mul(builder.add(r_, i64(p)), sstr0)]) for p in range(nrow)]

            def scale_at(p, i):  # the int8 scale of element i of row p
                sp = builder.gep(srows[p], [builder.mul(builder.lshr(i, i64(5)), i64(4))])
                return builder.load(builder.bitcast(sp, f32.as_pointer()), align=4)

            def splat(s):
                v = builder.insert_element(_ir.Constant(vf, None), s, i32(0))
                return builder.shuffle_vector(v, _ir.Constant(vf, None), _ir.Constant(_ir.VectorType(i32, vl),
                                                                                        [0] * vl))

            def wvec(p, i, s):  # weights i .. i + 7 of row p, converted
                wp = builder.gep(drows[p], [builder.mul(i, i64(isz))])
                if kind == types.float32:
                    return builder.load(builder.bitcast(wp, vf.as_pointer()), align=1)
                if kind == types.uint16:
                    vi16, vi32 = _ir.VectorType(_ir.IntType(16), vl), _ir.VectorType(i32, vl)
                    raw = builder.load(builder.bitcast(wp, vi16.as_pointer()), align=1)
                    return builder.bitcast(builder.shl(builder.zext(raw, vi32), _ir.Constant(vi32, [16] * vl)), vf)
                if kind == types.int16:
                    vi16 = _ir.VectorType(_ir.IntType(16), vl)
                    raw = builder.load(builder.bitcast(wp, vi16.as_pointer()), align=1)
                    return builder.fpext(builder.bitcast(raw, _ir.VectorType(_ir.HalfType(), vl)), vf)
                raw = builder.load(builder.bitcast(wp, _ir.VectorType(_ir.IntType(8), vl).as_pointer()), align=1)
                return builder.fmul(builder.sitofp(raw, vf), s)

            def wscalar(p, i):  # weight i of row p, converted
                wp = builder.gep(drows[p], [builder.mul(i, i64(isz))])
                if kind == types.float32:
                    return builder.load(builder.bitcast(wp, f32.as_pointer()), align=1)
                if kind == types.uint16:
                    raw = builder.load(builder.bitcast(wp, _ir.IntType(16).as_pointer()), align=1)
                    return builder.bitcast(builder.shl(builder.zext(raw, i32), i32(16)), f32)
                if kind == types.int16:
                    raw = builder.load(builder.bitcast(wp, _ir.IntType(16).as_pointer()), align=1)
                    return builder.fpext(builder.bitcast(raw, _ir.HalfType()), f32)
                raw = builder.load(builder.bitcast(wp, _ir.IntType(8).as_pointer()), align=1)
                return builder.fmul(builder.sitofp(raw, f32), scale_at(p, i))

            def xvec(q, i):
                xp = builder.gep(xrows[q], [builder.mul(i, i64(4))])
                return builder.load(builder.bitcast(xp, vf.as_pointer()), align=1)

            zero = _ir.Constant(vf, [0.0] * vl)
            slots = {}
            for p in range(nrow):
                for q in range(nseq):
                    for v in range(nv):
                        slot = cgutils.alloca_once(builder, vf)
                        builder.store(zero, slot)
                        slots[p, q, v] = slot
            nfull = builder.mul(builder.udiv(n_, i64(LANES)), i64(LANES))
            with cgutils.for_range_slice(builder, i64(0), nfull, i64(LANES), intp=i64) as (k, _):
                i0 = builder.add(c0_, k)
                svs = [splat(scale_at(p, i0)) if kind == types.int8 else None for p in range(nrow)]
                for v in range(nv):
                    iv = builder.add(i0, i64(v * vl))
                    ws = [wvec(p, iv, svs[p]) for p in range(nrow)]
                    xs = [xvec(q, iv) for q in range(nseq)]
                    for p in range(nrow):
                        for q in range(nseq):
                            slot = slots[p, q, v]
                            prod = builder.fmul(ws[p], xs[q], flags=flags)
                            builder.store(builder.fadd(builder.load(slot), prod, flags=flags), slot)
            tail = builder.sub(n_, nfull)
            with builder.if_then(builder.icmp_unsigned(">", tail, i64(0))):
                # zero-padded copies of the tail (converted weights), then one masked lane step
                wt = [cgutils.alloca_once(builder, _ir.ArrayType(f32, LANES)) for _ in range(nrow)]
                xt = [cgutils.alloca_once(builder, _ir.ArrayType(f32, LANES)) for _ in range(nseq)]
                for buf in wt + xt:
                    vp = builder.bitcast(buf, vf.as_pointer())
                    for v in range(nv):
                        builder.store(zero, builder.gep(vp, [i64(v)]), align=4)
                i0 = builder.add(c0_, nfull)
                with cgutils.for_range(builder, tail, intp=i64) as loop:
                    ii = builder.add(i0, loop.index)
                    for p in range(nrow):
                        builder.store(wscalar(p, ii), builder.gep(wt[p], [i64(0), loop.index]))
                    for q in range(nseq):
                        xp = builder.gep(xrows[q], [builder.mul(ii, i64(4))])
                        builder.store(builder.load(builder.bitcast(xp, f32.as_pointer()), align=4),
                                      builder.gep(xt[q], [i64(0), loop.index]))
                tail32 = builder.trunc(tail, i32)
                tsplat = builder.shuffle_vector(
                    builder.insert_element(_ir.Constant(_ir.VectorType(i32, vl), None), tail32, i32(0)),
                    _ir.Constant(_ir.VectorType(i32, vl), None), _ir.Constant(_ir.VectorType(i32, vl), [0] * vl))
                for v in range(nv):
                    lanes = _ir.Constant(_ir.VectorType(i32, vl), [v * vl + t for t in range(vl)])
                    mask = builder.icmp_unsigned("<", lanes, tsplat)
                    ws = [builder.load(builder.gep(builder.bitcast(wt[p], vf.as_pointer()), [i64(v)]), align=4)
                          for p in range(nrow)]
                    xs = [builder.load(builder.gep(builder.bitcast(xt[q], vf.as_pointer()), [i64(v)]), align=4)
                          for q in range(nseq)]
                    for p in range(nrow):
                        for q in range(nseq):
                            slot = slots[p, q, v]
                            old = builder.load(slot)
                            new = builder.fadd(old, builder.fmul(ws[p], xs[q], flags=flags), flags=flags)
                            builder.store(builder.select(mask, new, old), slot)
            # the fixed tree of _fold, on the vectors: lanes l += l + 16, l += l + 8, l += l + 4,
            # l += l + 2, then lane 0 + lane 1

            def half(vec, lo, width):
                idx = _ir.Constant(_ir.VectorType(i32, width), list(range(lo, lo + width)))
                return builder.shuffle_vector(vec, _ir.Constant(vec.type, None), idx)

            for p in range(nrow):
                for q in range(nseq):
                    a = [builder.load(slots[p, q, v]) for v in range(nv)]
                    if vl == 8:
                        s0 = builder.fadd(a[0], a[2])
                        s1 = builder.fadd(a[1], a[3])
                        t8 = builder.fadd(s0, s1)
                    else:  # vl 16: lanes l += l + 16, then l += l + 8 on the halves
                        s16 = builder.fadd(a[0], a[1])
                        t8 = builder.fadd(half(s16, 0, 8), half(s16, 8, 8))
                    t4 = builder.fadd(half(t8, 0, 4), half(t8, 4, 4))
                    t2 = builder.fadd(half(t4, 0, 2), half(t4, 2, 2))
                    res = builder.fadd(builder.extract_element(t2, i32(0)), builder.extract_element(t2, i32(1)))
                    orow = builder.mul(builder.add(b0_, i64(q)), ostr0)
                    ocol = builder.mul(builder.add(j_, i64(p)), ostr1)
                    op = builder.gep(obase, [builder.add(orow, ocol)])
                    builder.store(res, builder.bitcast(op, f32.as_pointer()), align=4)
            builder.ret_void()

        return sig, codegen

    return vdots


@intrinsic
def _prefetch_span_l2(typingctx, data, start, count):
    """Prefetch into L2 (``llvm.prefetch`` locality 2) one address per 64-byte line of
    ``data.flat[start : start + count]``. The loop lives in its own internal, never-inlined IR
    function: written as a Numba loop of prefetches at each of the projections'
    call sites, it made the cold compile of the decode kernel 2.5x longer (34 against 13 s)."""
    if not (isinstance(data, types.Array) and isinstance(start, types.Integer) and isinstance(count, types.Integer)):
        return None
    sig = types.void(data, start, count)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        i8p, i32, i64 = _ir.IntType(8).as_pointer(), _ir.IntType(32), _ir.IntType(64)
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        isz = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        st = context.cast(builder, args[1], signature.args[1], types.int64)
        ct = context.cast(builder, args[2], signature.args[2], types.int64)
        first = builder.gep(builder.bitcast(ary.data, i8p), [builder.mul(st, i64(isz))])
        mod = builder.module
        fn = mod.globals.get("nbssm_prefetch_span_l2")
        if fn is None:
            fn = _ir.Function(mod, _ir.FunctionType(_ir.VoidType(), [i8p, i64]), name="nbssm_prefetch_span_l2")
            fn.linkage = "internal"
            fn.attributes.add("noinline")
            b = _ir.IRBuilder(fn.append_basic_block("entry"))
            pf = mod.globals.get("llvm.prefetch.p0i8")
            if pf is None:
                pf = _ir.Function(mod, _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32]), name="llvm.prefetch.p0i8")
            with cgutils.for_range_slice(b, i64(0), fn.args[1], i64(64), intp=i64) as (k, _):
                b.call(pf, [b.gep(fn.args[0], [k]), i32(0), i32(2), i32(1)])
            b.ret_void()
        builder.call(fn, [first, builder.mul(ct, i64(isz))])
        return context.get_dummy_value()

    return sig, codegen


_vdots11 = _make_vdots(1, 1)
_vdots11w = _make_vdots(1, 1, 16)  # the same lanes and tree in 16-float vectors (AVX-512)
_vdots12 = _make_vdots(1, 2)
_vdots22 = _make_vdots(2, 2)
_vdots24 = _make_vdots(2, 4, 16)
_vdots14 = _make_vdots(1, 4, 16)


def _wval(w, r, i, s):
    """Weight ``(r, i)`` of a stored matrix ``w`` as a float (``s``: its int8 block scale)."""
    raise NotImplementedError


def _wscale(w, sc, r, blk):
    """The scale of block ``blk`` of row ``r`` (int8), else 1 (unused)."""
    raise NotImplementedError


@overload(_wval)
def _ov_wval(w, r, i, s):
    dt = w.dtype
    if dt in (types.float32, types.float64):
        return lambda w, r, i, s: w[r, i]
    if dt == types.uint16:
        return lambda w, r, i, s: bf16_to_f32(w[r, i])
    if dt == types.int16:
        return lambda w, r, i, s: f16_to_f32(w[r, i])
    if dt == types.int8:
        return lambda w, r, i, s: np.float32(w[r, i]) * s
    return None


@overload(_wscale)
def _ov_wscale(w, sc, r, blk):
    if w.dtype == types.int8:
        return lambda w, sc, r, blk: sc[r, blk]
    return lambda w, sc, r, blk: np.float32(1.0)


@njit(cache=_config.CACHE, fastmath=_DOT_FASTMATH)
def _fold(acc, q):
    """``sum(acc[q, :LANES])`` by a fixed pairwise tree (in place; LANES = 32)."""
    for l in range(16):
        acc[q, l] += acc[q, l + 16]
    for l in range(8):
        acc[q, l] += acc[q, l + 8]
    for l in range(4):
        acc[q, l] += acc[q, l + 4]
    for l in range(2):
        acc[q, l] += acc[q, l + 2]
    return acc[q, 0] + acc[q, 1]


# Indices below are unsigned (np.uint64): Numba then emits no negative-index wrap-around, the
# addresses of a lane step are visibly consecutive, and no array views (with their reference
# counts, atomic operations on a line shared by the threads) are made per row.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_ULANES = np.uint64(LANES)
_UQB = np.uint64(QBLOCK)


def _vsteps_ok(data, x):
    return (data.layout == "C" and x.layout == "C" and x.dtype == types.float32
            and data.dtype in (types.float32, types.uint16, types.int16, types.int8))


@njit(cache=_config.CACHE, fastmath=_DOT_FASTMATH)
def _dot1(data, scale, r, c0, n, x, b0):
    """``W[r, c0:c0+n] . x[b0, c0:c0+n]`` in the lane order (``c0`` a multiple of ``QBLOCK``)."""
    acc = carray(stack_buffer(LANES, x.dtype), (1, LANES))
    for l in range(_opaque(LANES)):
        acc[0, l] = 0.0
    ur, uc, ub = np.uint64(r), np.uint64(c0), np.uint64(b0)
    un = np.uint64(n)
    uk = _U0
    while uk < un:  # one lane step per block of LANES elements; the last may be partial
        i0 = uc + uk
        s = _wscale(data, scale, ur, i0 // _UQB)  # a step lies in one scale block (QBLOCK == LANES)
        for l in range(_opaque(min(LANES, n - int(uk)))):
            i = i0 + np.uint64(l)
            acc[0, l] += _wval(data, ur, i, s) * x[ub, i]
        uk += _ULANES
    return _fold(acc, 0)


@njit(cache=_config.CACHE, fastmath=_DOT_FASTMATH)
def _dot2(data, scale, r, c0, n, x, b0):
    """:func:`_dot1` for sequences ``b0`` and ``b0 + 1`` at once: each weight is loaded and
    converted once; each sequence's sum is bitwise the one :func:`_dot1` gives."""
    acc = carray(stack_buffer(2 * LANES, x.dtype), (2, LANES))
    for l in range(_opaque(LANES)):
        acc[0, l] = 0.0
        acc[1, l] = 0.0
    ur, uc, ub = np.uint64(r), np.uint64(c0), np.uint64(b0)
    ub1 = ub + _U1
    un = np.uint64(n)
    uk = _U0
    while uk < un:
        i0 = uc + uk
        s = _wscale(data, scale, ur, i0 // _UQB)
        for l in range(_opaque(min(LANES, n - int(uk)))):
            i = i0 + np.uint64(l)
            v = _wval(data, ur, i, s)
            acc[0, l] += v * x[ub, i]
            acc[1, l] += v * x[ub1, i]
        uk += _ULANES
    return _fold(acc, 0), _fold(acc, 1)


@njit(cache=_config.CACHE, fastmath=_DOT_FASTMATH)
def _rows_lanes(data, scale, r0, r1, c0, n, x, out, oc):
    """:func:`_rows` by Numba's own lane loops (:func:`_dot1`, :func:`_dot2`): the float64
    path, and for float32 the independent implementation the tests hold :func:`_vrows` to,
    bit for bit."""
    nb = x.shape[0]
    for r in range(r0, r1):
        j = oc + r - r0
        b0 = 0
        while b0 + 2 <= nb:
            v0, v1 = _dot2(data, scale, r, c0, n, x, b0)
            out[b0, j] = v0
            out[b0 + 1, j] = v1
            b0 += 2
        if b0 < nb:
            out[b0, j] = _dot1(data, scale, r, c0, n, x, b0)


#: bytes of weights per row block of :func:`_vrows`: read from L2 by every block of sequences
#: (with 4 or more sequences, fetched there while the previous row block computes). Measured,
#: batch 8 from memory: 128 KiB 12.5 ms, 64 KiB 13.9, 256 KiB 12.8, 32 KiB 14.9 for a 154 MB head
ROW_BLOCK_BYTES = 1 << 17


@njit(cache=_config.CACHE, fastmath=_DOT_FASTMATH)
def _vrows(data, scale, r0, r1, c0, n, x, out, oc, wide):
    """:func:`_rows` for float32 compute, in register blocks of 2 rows x 4 sequences (then 2 x 2,
    then 1 x 1; :func:`_make_vdots`). Rows in blocks of :data:`ROW_BLOCK_BYTES`, then blocks of
    sequences, then pairs of rows: the block's input rows stay in L1 while the rows pass.
    ``wide`` False (AVX2, :data:`WIDE`): 1 x 2 and 1 x 1 blocks only.
    An odd last sequence goes row by row (one weight stream: in a batch-1 decode, bound by
    memory, that measured 41 against 33-37 tokens/s for pairs of rows)."""
    nb = x.shape[0]
    rb = max(2, ROW_BLOCK_BYTES // max(1, n * data.itemsize))
    ncol = data.shape[1]
    for rr0 in range(r0, r1, rb):
        rr1 = min(rr0 + rb, r1)
        # while the blocks of 4 sequences compute on this row block, fetch the next one into L2,
        # spread evenly over their calls (the compute then hides the memory)
        nxt = min(rr1 + rb, data.shape[0]) if wide and nb >= 4 else rr1
        ncalls = max(1, (nb // 4) * ((rr1 - rr0) // 2))
        call = 0
        pr = rr1  # (past r1 too: the rows a static schedule gives this thread next)
        b0 = 0
        while b0 < nb:
            r = rr0
            if not wide and b0 + 2 <= nb:
                while r < rr1:
                    _vdots12(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                    r += 1
                b0 += 2
            elif b0 + 4 <= nb:
                while r + 2 <= rr1:
                    call += 1
                    until = rr1 + ((nxt - rr1) * call + ncalls - 1) // ncalls
                    while pr < until:
                        _prefetch_span_l2(data, pr * ncol + c0, n)
                        pr += 1
                    _vdots24(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                    r += 2
                if r < rr1:
                    _vdots14(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                b0 += 4
            elif b0 + 2 <= nb:
                while r + 2 <= rr1:
                    _vdots22(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                    r += 2
                if r < rr1:
                    _vdots12(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                b0 += 2
            elif wide:
                while r < rr1:
                    _vdots11w(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                    r += 1
                b0 += 1
            else:
                while r < rr1:
                    _vdots11(data, scale, r, c0, n, x, b0, out, oc + r - r0)
                    r += 1
                b0 += 1


def _rows(data, scale, r0, r1, c0, n, x, out, oc):
    """``out[bb, oc + r - r0] = W[r, c0:c0+n] . x[bb, c0:c0+n]`` for rows ``r0 <= r < r1``, all bb.

    ``W`` the 2-D :data:`QMat` ``(data, scale)``; ``c0`` a multiple of ``QBLOCK``. Every sum in
    the lane order (see the module docstring). :func:`_vrows` for float32 compute and
    C-contiguous arrays, else :func:`_rows_lanes`.
    """
    raise NotImplementedError


@overload(_rows, jit_options={"fastmath": _DOT_FASTMATH})
def _ov_rows(data, scale, r0, r1, c0, n, x, out, oc):
    if _vsteps_ok(data, x):
        return lambda data, scale, r0, r1, c0, n, x, out, oc: _vrows(data, scale, r0, r1, c0, n, x, out, oc, WIDE)
    return lambda data, scale, r0, r1, c0, n, x, out, oc: _rows_lanes(data, scale, r0, r1, c0, n, x, out, oc)


@njit(cache=_config.CACHE)
def _exp(x):
    """exp of a float32 (vectorisable polynomial) or float64 (libm) scalar."""
    return exp_(x)


@njit(cache=_config.CACHE)
def _softplus(x):
    """softplus; float32: ``x`` itself above 20 (PyTorch's threshold)."""
    return softplus_(x)


@njit(cache=_config.CACHE, fastmath=_FASTMATH, inline="always")
def _rmsnorm_rows(x, weight, eps, out):
    """``out[b] = x[b] / sqrt(mean(x[b]^2) + eps) * weight`` for every row ``b``. (b, Dm)"""
    nb, n = x.shape
    for bb in range(nb):
        ss = x.dtype.type(0.0)
        for i in range(n):
            ss += x[bb, i] * x[bb, i]
        scale = x.dtype.type(1.0) / math.sqrt(ss / n + eps)
        for i in range(n):
            out[bb, i] = weight[i] * (x[bb, i] * scale)


#: channels per work chunk of the fused layer step. Chunk boundaries depend only on d_inner,
#: never on the thread count, so the partial sums (and the bits) do not either.
CHUNK = 128
#: out_proj rows per parallel work item
OUT_ROWS = 64


@njit(cache=_config.CACHE, parallel=True, fastmath=_FASTMATH)
def _layer_step(hidden, norm_w, eps, in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, A_neg, Dskip, out_proj,
                hist, ssm, hn, xz, u, xdbl, dtv, y, part_x, out):
    """Advance one layer by one token (in place on ``hidden``, ``hist``, ``ssm``).

    hidden (b, Dm) residual stream; hist (b, W-1, E) the previous W-1 conv inputs, oldest
    first; ssm (b, E, N). ``in_proj``, ``x_proj``, ``dt_w``, ``out_proj``: 2-D :data:`QMat`.
    Work buffers: hn (b, Dm), xz (b, 2E), u (b, E), xdbl (b, R+2N), dtv (b, E), y (b, E),
    part_x (n_chunks, b, R+2N), out (b, Dm).

    Three parallel regions: (1) over fixed channel chunks, in_proj rows of the chunk's x and z
    channels, conv update, SiLU, partial x_proj sums (reduced serially in chunk order); (2) over
    the same chunks, the dt_proj rows, Δ, scan step, D skip, gate; (3) over blocks of
    :data:`OUT_ROWS` rows, out_proj over whole rows (partial sums over 128-channel chunks cost
    a lane fold and a call per 128 weights: about 4x the time of whole rows). Every projection
    loops rows outer and sequences inner (:func:`_rows`).
    """
    nb = hidden.shape[0]
    dm = hidden.shape[1]
    e_dim = conv_w.shape[0]
    width = conv_w.shape[1]
    n_state = A_neg.shape[1]
    rank = dt_w.data.shape[1]
    n_x = x_proj.data.shape[0]
    n_chunks = part_x.shape[0]
    ob = np.uint64(rank)
    oc = np.uint64(rank + n_state)
    one = hidden.dtype.type(1.0)
    zero = hidden.dtype.type(0.0)
    # the parallel regions take arrays, not named tuples
    ip_d, ip_s = in_proj.data, in_proj.scale
    xp_d, xp_s = x_proj.data, x_proj.scale
    dt_d, dt_s = dt_w.data, dt_w.scale
    op_d, op_s = out_proj.data, out_proj.scale

    _rmsnorm_rows(hidden, norm_w, eps, hn)
    for c in prange(n_chunks):
        d0 = c * CHUNK
        d1 = min(d0 + CHUNK, e_dim)
        # in_proj rows of this chunk (x part and z part)                     (b, 2E)
        _rows(ip_d, ip_s, d0, d1, 0, dm, hn, xz, d0)
        _rows(ip_d, ip_s, e_dim + d0, e_dim + d1, 0, dm, hn, xz, e_dim + d0)
        for bb in range(nb):
            # causal conv update (taps oldest first, the last on the current token) + SiLU
            for d in range(d0, d1):
                x_new = xz[bb, d]
                acc = zero
                for k in range(width - 1):
                    acc += hist[bb, k, d] * conv_w[d, k]
                acc += x_new * conv_w[d, width - 1]
                acc += conv_b[d]
                for k in range(width - 2):
                    hist[bb, k, d] = hist[bb, k + 1, d]
                if width > 1:
                    hist[bb, width - 2, d] = x_new
                u[bb, d] = acc / (one + _exp(-acc))
        # partial x_proj over this chunk's channels                           (b, R+2N)
        _rows(xp_d, xp_s, 0, n_x, d0, d1 - d0, u, part_x[c], 0)
    for bb in range(nb):
        for j in range(n_x):
            acc = zero
            for c in range(n_chunks):
                acc += part_x[c, bb, j]
            xdbl[bb, j] = acc
    for c in prange(n_chunks):
        d0 = c * CHUNK
        d1 = min(d0 + CHUNK, e_dim)
        # Δ before softplus (low rank): dt_proj rows of this chunk                 (b, E)
        _rows(dt_d, dt_s, d0, d1, 0, rank, xdbl, dtv, d0)
        for bb in range(nb):
            # the step sizes and the gates of the chunk's channels first, in place (loops over
            # channels: they vectorise; computed channel by channel inside the state loop they
            # were scalar code and a call per channel, a third of the step at batch 8)
            for d in range(d0, d1):
                dtv[bb, d] = softplus_(dtv[bb, d] + dt_b[d])
            for d in range(d0, d1):
                zz = xz[bb, e_dim + d]
                xz[bb, e_dim + d] = zz / (one + exp_(-zz))
            for d in range(d0, d1):
                # the scan step, the D skip and the gate
                dt = dtv[bb, d]
                ud = u[bb, d]
                acc = zero
                for n in range(n_state):
                    # unsigned offsets: no negative-index wrap-around selects (25% of the scan's time)
                    un = np.uint64(n)
                    h = ssm[bb, d, un] * _exp(dt * A_neg[d, un]) + (dt * xdbl[bb, ob + un]) * ud
                    ssm[bb, d, un] = h
                    acc += h * xdbl[bb, oc + un]
                y[bb, d] = (acc + ud * Dskip[d]) * xz[bb, e_dim + d]
    # out_proj over whole rows (every channel's y is needed), rows in blocks   (b, Dm)
    n_oblk = -(-dm // OUT_ROWS)
    for t in prange(n_oblk):
        r0 = t * OUT_ROWS
        _rows(op_d, op_s, r0, min(r0 + OUT_ROWS, dm), 0, e_dim, y, out, r0)
    for bb in range(nb):
        for j in range(dm):
            hidden[bb, j] += out[bb, j]


#: LM-head rows per parallel work item
HEAD_ROWS = 64


@njit(cache=_config.CACHE)
def _layer(m, layer):
    """The 2-D :data:`QMat` of one layer of a stacked one."""
    return QMat(m.data[layer], m.scale[layer])


def decode_work_shapes(batch: int, d_model: int, d_inner: int, d_state: int, dt_rank: int, vocab_size: int) -> dict:
    """Shapes of the :class:`DecodeWork` buffers for a batch of ``batch`` sequences."""
    b, n_chunks = batch, -(-d_inner // CHUNK)
    return {"logits": (b, vocab_size), "hidden": (b, d_model), "hn": (b, d_model), "xz": (b, 2 * d_inner),
            "u": (b, d_inner), "xdbl": (b, dt_rank + 2 * d_state), "dt": (b, d_inner), "y": (b, d_inner),
            "part_x": (n_chunks, b, dt_rank + 2 * d_state), "out": (b, d_model)}


@njit(cache=_config.CACHE, parallel=True, fastmath=_FASTMATH)
def decode_step(tokens, weights, state, work):
    """One token for every sequence through the whole model; writes ``work.logits`` (b, V).

    Parameters
    ----------
    tokens : (b,) int64, each in [0, V)
    weights : DecodeWeights
        Projections in any :data:`QMat` format; the other arrays of the compute dtype.
    state : DecodeState
        Updated in place.
    work : DecodeWork
        Work buffers of the batch size (:func:`decode_work_shapes`); ``work.logits`` is the output.
    """
    w, s, k = weights, state, work
    nb = tokens.shape[0]
    n_layer = w.in_proj.data.shape[0]
    embed = w.embed
    dm = k.hidden.shape[1]
    for bb in range(nb):
        tok = tokens[bb]
        for i in range(dm):
            k.hidden[bb, i] = _wval(embed.data, tok, i, _wscale(embed.data, embed.scale, tok, i // QBLOCK))
    for layer in range(n_layer):
        _layer_step(k.hidden, w.norm_w[layer], w.eps, _layer(w.in_proj, layer), w.conv_w[layer], w.conv_b[layer],
                    _layer(w.x_proj, layer), _layer(w.dt_w, layer), w.dt_b[layer], w.A[layer], w.D[layer],
                    _layer(w.out_proj, layer), s.conv[layer], s.ssm[layer], k.hn, k.xz, k.u, k.xdbl, k.dt, k.y,
                    k.part_x, k.out)
    _rmsnorm_rows(k.hidden, w.norm_f, w.eps, k.hn)
    hd, hs = w.head.data, w.head.scale
    hn = k.hn
    logits = k.logits
    n_vocab = hd.shape[0]
    n_blk = -(-n_vocab // HEAD_ROWS)
    for t in prange(n_blk):
        r0 = t * HEAD_ROWS
        _rows(hd, hs, r0, min(r0 + HEAD_ROWS, n_vocab), 0, dm, hn, logits, r0)
