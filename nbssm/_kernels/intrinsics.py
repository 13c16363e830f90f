"""LLVM intrinsics the kernels use, exposed to Numba (``numba.extending.intrinsic``).

No arithmetic of the algorithms lives here (that is :mod:`nbssm._kernels.fastmath`):

* memory hints: :func:`prefetch` (``llvm.prefetch``), :func:`store_nontemporal`
  (a store with ``!nontemporal`` metadata), :func:`store_line_nontemporal` (one aligned
  64-byte streaming vector store), :func:`copy_line` (one 64-byte vector copy),
  :func:`store_fence` (``sfence``);
* views: :func:`flat` (the 1-D view of a C-contiguous array, without Numba's reshape call);
* fixed-order sums as whole vectors: :func:`fold32_8` (32 lanes to 8) and
  :func:`tree8_rows` (eight 8-lane rows to eight sums), the additions of the lane
  loops they replace in the same order;
* scratch memory: :func:`stack_buffer` (an ``alloca``: memory that cannot
  alias any argument, so loops over it vectorise without overlap checks);
* code generation: :func:`constant` (a literal argument as an LLVM constant),
  :func:`fma32` (``llvm.fma.f32``, used by the float32 polynomials).

None of them changes a value: results are those of the plain Python
semantics (``fma32`` is one rounding of ``a * b + c``, by definition).
"""

from __future__ import annotations

import platform

from llvmlite import ir as _ir
from numba import types
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


# ----------------------------------------------------------------------------- memory hints
@intrinsic
def prefetch(typingctx, arr, offset):
    """``prefetch(arr, offset)``: hint the CPU to load ``arr.flat[offset]`` into cache.

    ``llvm.prefetch`` (read, high locality, data cache); never faults, so an
    out-of-range offset is harmless. Used to hide memory latency when a
    kernel walks a ``(b, l, d)`` array along ``l`` with a stride of ``d``.
    """
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None
    sig = types.void(arr, offset)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = _ir.IntType(8).as_pointer()
        i32 = _ir.IntType(32)
        fnty = _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32])
        mod = builder.module
        fn = mod.globals.get("llvm.prefetch.p0i8")
        if fn is None:
            fn = _ir.Function(mod, fnty, name="llvm.prefetch.p0i8")
        # (address, rw 0 = read, locality 3 = keep in all cache levels, cache type 1 = data)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_nontemporal(typingctx, arr, offset, value):
    """``arr.flat[offset] = value`` as a non-temporal (streaming) store.

    The line is written without being read into the cache first: output
    arrays that are written once and not read back by the kernel then cost
    one memory transfer instead of two. The value stored is exactly
    ``value`` (cast to the array's dtype), so results are unchanged; the
    parallel region's closing barrier (a locked instruction) orders these
    stores before any later read, and every worker that streams ends with
    :func:`store_fence`.
    """
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None
    sig = types.void(arr, offset, value)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        v = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        st = builder.store(v, ptr)
        st.set_metadata("nontemporal", builder.module.add_metadata([_ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


def _vec_ops(context, builder, signature, args):
    """(element type, element size, source pointer, destination pointer) of a
    ``(dst, dst_offset, src, src_offset)`` intrinsic's arguments."""
    elem = signature.args[0].dtype
    ety = context.get_value_type(elem)
    size = context.get_abi_sizeof(ety)
    d = context.make_array(signature.args[0])(context, builder, args[0])
    s = context.make_array(signature.args[2])(context, builder, args[2])
    return ety, size, builder.gep(s.data, [args[3]]), builder.gep(d.data, [args[1]])


def _lanes(builder, vec, idx):
    """The lanes ``idx`` of ``vec`` as a new vector (a ``shufflevector``)."""
    i32 = _ir.IntType(32)
    idx = list(idx)
    return builder.shuffle_vector(vec, vec, _ir.Constant(_ir.VectorType(i32, len(idx)), [i32(i) for i in idx]))


def _float_copy_args(dst, dst_offset, src, src_offset):
    return (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and isinstance(dst_offset, types.Integer) and isinstance(src_offset, types.Integer)
            and dst.dtype == src.dtype and isinstance(dst.dtype, types.Float))


@intrinsic
def store_line_nontemporal(typingctx, dst, dst_offset, src, src_offset):
    """Copy one 64-byte line: ``dst.flat[dst_offset : dst_offset + 64 // itemsize] =
    src.flat[src_offset : ...]``, as one aligned non-temporal vector store.

    The caller guarantees that ``dst.flat[dst_offset]`` starts a 64-byte line (the
    store is emitted with ``align 64``: a misaligned address faults) and that both
    ranges are in bounds; ``src`` (any alignment) has ``dst``'s dtype. Bits are copied
    unchanged. Unlike :func:`store_nontemporal` in a lane loop, which LLVM cannot
    vectorise without knowing the alignment (it then stores lane by lane), this is
    always one full-line streaming store. Order with :func:`store_fence`, as there.
    """
    if not _float_copy_args(dst, dst_offset, src, src_offset):
        return None
    sig = types.void(dst, dst_offset, src, src_offset)

    def codegen(context, builder, signature, args):
        ety, size, sptr, dptr = _vec_ops(context, builder, signature, args)
        vty = _ir.VectorType(ety, 64 // size).as_pointer()
        v = builder.load(builder.bitcast(sptr, vty), align=size)
        st = builder.store(v, builder.bitcast(dptr, vty), align=64)
        st.set_metadata("nontemporal", builder.module.add_metadata([_ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_line(typingctx, dst, dst_offset, src, src_offset):
    """Copy 64 bytes: ``dst.flat[dst_offset : dst_offset + 64 // itemsize] =
    src.flat[src_offset : ...]``, as one vector load and one vector store (any alignment).

    The caller guarantees both ranges are in bounds and the dtypes equal. Bits are copied
    unchanged. A lane loop that copies between two array arguments stays scalar once LLVM
    has unrolled it (the arrays may overlap, so the loads cannot be moved above the
    stores); this is always one full-width copy.
    """
    if not _float_copy_args(dst, dst_offset, src, src_offset):
        return None
    sig = types.void(dst, dst_offset, src, src_offset)

    def codegen(context, builder, signature, args):
        ety, size, sptr, dptr = _vec_ops(context, builder, signature, args)
        vty = _ir.VectorType(ety, 64 // size).as_pointer()
        builder.store(builder.load(builder.bitcast(sptr, vty), align=size), builder.bitcast(dptr, vty), align=size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fold32_8(typingctx, dst, dst_offset, src, src_offset):
    """``dst.flat[dst_offset + q] = (s[q] + s[q + 16]) + (s[q + 8] + s[q + 24])`` for
    ``q < 8``, ``s = src.flat[src_offset:]``: 32 lanes folded to 8 by a fixed tree.

    The same additions, in the same order, as the lane loop it replaces (so the same
    bits), written as whole-vector operations: LLVM's own vectorisation of that loop
    (after unrolling it) computed half of the lanes twice and blended them.
    """
    if not _float_copy_args(dst, dst_offset, src, src_offset):
        return None
    sig = types.void(dst, dst_offset, src, src_offset)

    def codegen(context, builder, signature, args):
        ety, size, sptr, dptr = _vec_ops(context, builder, signature, args)
        # loads of whole 64-byte lines, as the lane loop before stored them (a narrower
        # load of part of a wider store cannot take the stored value: it waits for the cache)
        per = 64 // size
        vty = _ir.VectorType(ety, per)
        i64 = _ir.IntType(64)
        v = [builder.load(builder.bitcast(builder.gep(sptr, [i64(k)]), vty.as_pointer()), align=size)
             for k in range(0, 32, per)]
        if per == 16:  # float32: lanes q of (v0 + v1) are s[q] + s[q + 16]; then halves added
            h = builder.fadd(v[0], v[1])
            r = builder.fadd(_lanes(builder, h, range(8)), _lanes(builder, h, range(8, 16)))
        else:  # float64: v[k] holds lanes 8k .. 8k+7
            r = builder.fadd(builder.fadd(v[0], v[2]), builder.fadd(v[1], v[3]))
        builder.store(r, builder.bitcast(dptr, _ir.VectorType(ety, 8).as_pointer()), align=size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tree8_rows(typingctx, dst, dst_offset, src, src_offset):
    """Eight rows of 8 lanes to eight sums: ``dst.flat[dst_offset + i] =
    ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))`` with ``xk = src.flat[src_offset +
    8 i + k]``, ``i < 8``.

    The same additions in the same order as the scalar expression per row (so the same
    bits), eight rows at a time: the 8 x 8 block is transposed with shuffles, then added
    as vectors.
    """
    if not _float_copy_args(dst, dst_offset, src, src_offset):
        return None
    sig = types.void(dst, dst_offset, src, src_offset)

    def codegen(context, builder, signature, args):
        ety, size, sptr, dptr = _vec_ops(context, builder, signature, args)
        v = builder.load(builder.bitcast(sptr, _ir.VectorType(ety, 64).as_pointer()), align=size)
        x = [_lanes(builder, v, range(k, 64, 8)) for k in range(8)]  # x[k]: lane k of each row
        add = builder.fadd
        r = add(add(add(x[0], x[4]), add(x[2], x[6])), add(add(x[1], x[5]), add(x[3], x[7])))
        builder.store(r, builder.bitcast(dptr, _ir.VectorType(ety, 8).as_pointer()), align=size)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def flat(typingctx, arr):
    """``arr.reshape(arr.size)`` for a C-contiguous array, without a call.

    Numba's ``reshape`` calls its C helper (about 20 ns) even when the answer is only a new
    shape, and the call also keeps LLVM from optimising the code around it: the backward's
    per-chunk helpers took 24 such views per block and chunk (1.3% of its samples in the
    helper itself, 15-20% of its time in all). The view shares ``arr``'s data and owner.
    """
    if not (isinstance(arr, types.Array) and arr.layout == "C"):
        return None
    ret = arr.copy(ndim=1, layout="C")
    sig = ret(arr)

    def codegen(context, builder, signature, args):
        from numba.core.imputils import impl_ret_borrowed
        from numba.np.arrayobj import populate_array

        src = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.make_array(signature.return_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(arr.dtype)))
        populate_array(out, data=src.data, shape=[src.nitems], strides=[itemsize], itemsize=src.itemsize,
                       meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, out._getvalue())

    return sig, codegen


@intrinsic
def store_fence(typingctx):
    """``sfence``: make this thread's earlier non-temporal stores globally visible.

    Called once at the end of a worker that used :func:`store_nontemporal`, so
    that the ordering does not rest on the parallel runtime's barrier alone.
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        if not _X86:  # elsewhere non-temporal stores are ordered by the runtime's barrier
            return context.get_dummy_value()
        fnty = _ir.FunctionType(_ir.VoidType(), [])
        mod = builder.module
        fn = mod.globals.get("llvm.x86.sse.sfence")
        if fn is None:
            fn = _ir.Function(mod, fnty, name="llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma.f32``), float32 only.

    Deterministic (the same instruction on every run); used by the float32
    polynomials, never by float64 code (which keeps the spec's separate roundings).
    """
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = _ir.FloatType()
        fnty = _ir.FunctionType(f32, [f32, f32, f32])
        mod = builder.module
        fn = mod.globals.get("llvm.fma.f32")
        if fn is None:
            fn = _ir.Function(mod, fnty, name="llvm.fma.f32")
        return builder.call(fn, list(args))

    return sig, codegen


@intrinsic
def constant(typingctx, value):
    """The value of a ``Literal[int]`` argument as an LLVM constant.

    Numba types an argument forced with ``numba.literally`` as a literal but
    still passes its value at run time; ``constant(W)`` emits the number
    itself, so LLVM sees fixed trip counts (and fully vectorises lane loops).
    """
    if not isinstance(value, types.IntegerLiteral):
        return None
    sig = types.intp(value)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, signature.args[0].literal_value)

    return sig, codegen


@intrinsic
def stack_buffer(typingctx, size, dtype):
    """Pointer to ``size`` elements of ``dtype`` on the stack of the calling function.

    Wrap with ``numba.carray(ptr, shape)``. The memory lives until the
    function that called ``stack_buffer`` returns (LLVM inserts stack
    save/restore when it inlines that function into a loop). Stack memory
    cannot alias any array argument, so LLVM vectorises loops over it
    without runtime overlap checks. Keep ``size`` small (a few KiB).
    """
    if not isinstance(size, types.Integer) or not isinstance(dtype, types.DTypeSpec):
        return None
    elem = dtype.dtype
    sig = types.CPointer(elem)(size, dtype)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(elem)
        ptr = builder.alloca(ty, size=args[0])
        ptr.align = 64
        return ptr

    return sig, codegen
