"""The distributed (parallel-in-time, multi-machine) diagonal scan, written once.

``distributed_diagonal_scan`` is the algorithm that ``nbssm.dask`` runs when a
sequence is split into time blocks (each block a run of whole kernel chunks,
possibly on different machines). It is generic: every scalar operation goes
through the context ``ctx`` (``ctx.add``, ``ctx.mul``), so it evaluates on IEEE
doubles (``DOUBLE``), on sympy expressions (``SYMPY``) and on operation traces
(:class:`TraceContext`, which records every operation and its operands in
order, without any algebraic simplification).

Three phases over blocks ``j = 0 .. J-1`` of chunks (``chunk_bounds``):

1. every block but the last summarises its chunks: ``(P_k, Q_k)`` per chunk,
   the left fold of ``nbssm.spec.algorithms.chunk_summary`` (first transition
   first);
2. the combine, giving the state entering every block:

   * ``"serial"``: ``H <- P_k * H + Q_k`` over the chunk summaries, block after
     block: the kernels' serial carry, the same operations in the same order,
     so on doubles it equals ``chunked_diagonal_scan`` bit for bit (checked on
     traces by :func:`distributed_checks`);
   * ``"tree"``: each block's chunk summaries are composed into one block
     summary, the summaries of the prefixes ``[0, j)`` are combined along a
     binary tree (the split rule ``tree``: depth ``ceil(log2 J)`` for
     "pow2"/"balanced"), with ``compose(later, earlier)``
     (``summarizeScalarAffine_append``: the summary of ``xs ++ ys`` is
     ``compose(summary ys, summary xs)``), and applied to ``h0``. Equal over
     the reals, not bit for bit: the products are reassociated;
3. every block re-runs its own chunks from its entering state with the
   chunked scan (its own serial carry and fix-up).

Spec: ``diagonalSelectiveScan`` (the checks prove equality over the reals),
``summarizeScalarAffine_append``, ``diagonalSelectiveScan_append``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .algorithms import chunk_bounds, chunked_diagonal_scan
from .context import DOUBLE, SYMPY, Context
from .scan import DiagonalTransition, diagonal_selective_scan
from .symbolic import EXPAND, Budget, BudgetExceeded, Refuted, Unknown, compare_structures
from .verdict import BEYOND, CONTROL, PROVED, REFUTED, UNKNOWN, CheckResult

Vector = list
Summary = tuple  # (P, Q): lists of D scalars

COMBINES = ("serial", "tree")


# --------------------------------------------------------------------------- pieces
def ctx_chunk_summary(ctx: Context, a, b, start: int, stop: int) -> Summary:
    """``chunk_summary`` through ``ctx``: ``P = a_start``, ``Q = b_start``; then
    ``P = a_t * P``, ``Q = a_t * Q + b_t`` for ``t = start+1 .. stop-1``."""
    p = list(a[start])
    q = list(b[start])
    for t in range(start + 1, stop):
        for d in range(len(p)):
            p[d] = ctx.mul(a[t][d], p[d])
            q[d] = ctx.add(ctx.mul(a[t][d], q[d]), b[t][d])
    return p, q


def compose(ctx: Context, later: Summary, earlier: Summary) -> Summary:
    """First ``earlier``, then ``later``: ``(P_l * P_e, P_l * Q_e + Q_l)``.

    Spec: ``DiagonalTransition.compose later earlier``.
    """
    pl, ql = later
    pe, qe = earlier
    return ([ctx.mul(pl[d], pe[d]) for d in range(len(pl))],
            [ctx.add(ctx.mul(pl[d], qe[d]), ql[d]) for d in range(len(pl))])


def swapped_compose(ctx: Context, later: Summary, earlier: Summary) -> Summary:
    """The control: ``compose`` with its arguments swapped (wrong: affine maps do not commute)."""
    return compose(ctx, earlier, later)


def apply(ctx: Context, s: Summary, h: Vector) -> Vector:
    """``P * h + Q``. Spec: ``DiagonalTransition.apply``."""
    p, q = s
    return [ctx.add(ctx.mul(p[d], h[d]), q[d]) for d in range(len(h))]


def carry(ctx: Context, s: Summary, h: Vector, a, b, start: int, stop: int,
          carry_ok: Callable | None = None) -> Vector:
    """The state after chunk ``[start, stop)`` from ``h``: ``apply(s, h)``, except in the
    lanes where ``carry_ok(p, q, h, c)`` is false, which re-run the chunk's transitions
    from ``h`` one at a time (``chunked_diagonal_scan``'s carry; ``None``: always apply)."""
    nxt = apply(ctx, s, h)
    if carry_ok is not None:
        p, q = s
        for d in range(len(h)):
            if not carry_ok(p[d], q[d], h[d], nxt[d]):
                x = h[d]
                for t in range(start, stop):
                    x = ctx.add(ctx.mul(a[t][d], x), b[t][d])
                nxt[d] = x
    return nxt


def ctx_chunked_scan(ctx: Context, h0: Vector, a, b, chunk_length: int, carry_ok: Callable | None = None) -> list:
    """``chunked_diagonal_scan`` through ``ctx`` (phase 3 of every block)."""
    bounds = chunk_bounds(len(a), chunk_length)
    carried = [list(h0)]
    for start, stop in bounds[:-1]:
        carried.append(carry(ctx, ctx_chunk_summary(ctx, a, b, start, stop), carried[-1], a, b, start, stop,
                             carry_ok))
    out = []
    for k, (start, stop) in enumerate(bounds):
        h = carried[k]
        for t in range(start, stop):
            h = [ctx.add(ctx.mul(a[t][d], h[d]), b[t][d]) for d in range(len(h))]
            out.append(h)
    return out


SPLITS: dict[str, Callable[[int, int], int]] = {}


def _pow2(lo: int, hi: int) -> int:
    p = 1
    while p * 2 < hi - lo:
        p *= 2
    return lo + p


SPLITS["pow2"] = _pow2                               # what nbssm.dask builds
SPLITS["balanced"] = lambda lo, hi: (lo + hi) // 2
SPLITS["left"] = lambda lo, hi: hi - 1               # ((S0 . S1) . S2) ...: depth J - 1
SPLITS["right"] = lambda lo, hi: lo + 1              # S0 . (S1 . (S2 ...))


def tree_summary(ctx: Context, summaries: Sequence[Summary], lo: int, hi: int, split: Callable[[int, int], int],
                 combine: Callable = compose) -> Summary:
    """The summary of ``summaries[lo:hi]`` (``hi > lo``), combined along the tree that ``split`` cuts.

    Spec: ``summarizeScalarAffine_append``: summary(xs ++ ys) = compose(summary ys, summary xs).
    """
    if hi - lo == 1:
        return summaries[lo]
    mid = split(lo, hi)
    if not lo < mid < hi:
        raise ValueError(f"split({lo}, {hi}) must lie strictly inside, got {mid}")
    return combine(ctx, tree_summary(ctx, summaries, mid, hi, split, combine),
                   tree_summary(ctx, summaries, lo, mid, split, combine))


def block_ranges(n_chunks: int, block_chunks: Sequence[int]) -> list[tuple[int, int]]:
    """Chunk ranges ``[c0, c1)`` of the blocks; ``block_chunks`` (each >= 1) must sum to ``n_chunks``."""
    if any(c < 1 for c in block_chunks) or sum(block_chunks) != n_chunks:
        raise ValueError(f"block_chunks: expected positive counts summing to {n_chunks}, got {list(block_chunks)}")
    out, c = [], 0
    for n in block_chunks:
        out.append((c, c + n))
        c += n
    return out


def distributed_diagonal_scan(ctx: Context, h0: Vector, a, b, chunk_length: int, block_chunks: Sequence[int],
                              combine: str = "serial", tree: str = "pow2",
                              compose_fn: Callable = compose, carry_ok: Callable | None = None) -> list:
    """The time-parallel scan of ``nbssm.dask`` over time blocks of whole chunks.

    Parameters
    ----------
    ctx : Context
    h0 : list of D scalars
    a, b : lists over T (>= 1) of lists of D scalars
    chunk_length : int
        The kernels' chunk length Lc; chunk ``k`` is ``[k*Lc, min((k+1)*Lc, T))``.
    block_chunks : sequence of int
        Chunks per block, summing to the number of chunks.
    combine : {"serial", "tree"}
    tree : {"pow2", "balanced", "left", "right"}
        Tree shape of the "tree" combine.
    compose_fn : callable
        The combine of two summaries (``compose``; the control passes ``swapped_compose``).
    carry_ok : callable ``(p, q, h, c) -> bool``, optional
        The serial combine's rule (as ``chunked_diagonal_scan``'s): where it is false the
        chunk is re-run from the carried state. ``None``: always the summary (symbolic
        scalars); ``nbssm.dask`` runs the kernels' ``ieee_carry_ok``. It also rules
        every block's own chunked scan (phase 3); the tree combine itself has no re-run
        (it is exact over the reals only).

    Returns
    -------
    list over T of lists of D scalars: ``[h_1, ..., h_T]``.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine: expected one of {COMBINES}, got {combine!r}")
    bounds = chunk_bounds(len(a), chunk_length)
    blocks = block_ranges(len(bounds), block_chunks)
    # phase 1: chunk summaries of every block but the last
    sums = [[ctx_chunk_summary(ctx, a, b, *bounds[k]) for k in range(c0, c1)] for c0, c1 in blocks[:-1]]
    # phase 2: the state entering every block
    entering = [list(h0)]
    if combine == "serial":
        h = list(h0)
        for (c0, _), block in zip(blocks, sums):
            for k, s in enumerate(block, start=c0):
                h = carry(ctx, s, h, a, b, *bounds[k], carry_ok)
            entering.append(h)
    else:
        block_sums = []
        for block in sums:
            acc = block[0]
            for s in block[1:]:
                acc = compose(ctx, s, acc)
            block_sums.append(acc)
        split = SPLITS[tree]
        for j in range(1, len(blocks)):
            entering.append(apply(ctx, tree_summary(ctx, block_sums, 0, j, split, compose_fn), h0))
    # phase 3: every block from its entering state
    out = []
    for j, (c0, c1) in enumerate(blocks):
        start, stop = bounds[c0][0], bounds[c1 - 1][1]
        out.extend(ctx_chunked_scan(ctx, entering[j], a[start:stop], b[start:stop], chunk_length,
                                    carry_ok))
    return out


# --------------------------------------------------------------------------- operation traces
class Op:
    """A node of an operation trace: ``("leaf", name)`` or ``(op, left, right)`` with op in {"+", "*"}.

    No simplification and no commutation: two traces are equal exactly when the same
    operations are applied to the same operands in the same order (what makes two IEEE
    evaluations bitwise equal).
    """

    __slots__ = ("op", "left", "right", "_hash")

    def __init__(self, op: str, left: Any, right: Any = None) -> None:
        self.op, self.left, self.right = op, left, right
        self._hash = hash((op, id(left) if isinstance(left, Op) else left, id(right) if isinstance(right, Op) else right))

    def __add__(self, other: Op) -> Op:
        return Op("+", self, other)

    def __mul__(self, other: Op) -> Op:
        return Op("*", self, other)


def trace_equal(x: Any, y: Any, seen: set | None = None) -> bool:
    """Structural equality of two traces (iterative, memoised on node pairs)."""
    seen = set() if seen is None else seen
    stack = [(x, y)]
    while stack:
        p, q = stack.pop()
        if p is q or (id(p), id(q)) in seen:
            continue
        if not (isinstance(p, Op) and isinstance(q, Op)) or p.op != q.op:
            return False
        if p.op == "leaf":
            if p.left != q.left:
                return False
        else:
            stack.append((p.left, q.left))
            stack.append((p.right, q.right))
        seen.add((id(p), id(q)))
    return True


class TraceContext:
    """A scalar context building :class:`Op` traces (``add``, ``mul`` only)."""

    name = "trace"

    @staticmethod
    def add(a: Op, b: Op) -> Op:
        return Op("+", a, b)

    @staticmethod
    def mul(a: Op, b: Op) -> Op:
        return Op("*", a, b)


TRACE = TraceContext()


# --------------------------------------------------------------------------- checks
def _cases() -> list[tuple[int, int, tuple, str, str]]:
    """(T, Lc, block_chunks, combine, tree) instances of the statement."""
    cases = []
    for T, lc, blocks in ((4, 1, (2, 2)), (6, 2, (1, 1, 1)), (7, 2, (1, 2, 1)), (8, 1, (1, 1, 1, 1, 1, 1, 1, 1)),
                          (9, 3, (1, 2)), (5, 5, (1,))):
        cases.append((T, lc, blocks, "serial", "pow2"))
        for tree in ("pow2", "balanced", "left", "right"):
            if tree == "pow2" or len(blocks) >= 4:
                cases.append((T, lc, blocks, "tree", tree))
    return cases


def _symbols(T: int, n: int):
    import sympy

    h0 = [sympy.Symbol(f"h0_{i}") for i in range(n)]
    a = [[sympy.Symbol(f"a{t}_{i}") for i in range(n)] for t in range(T)]
    b = [[sympy.Symbol(f"b{t}_{i}") for i in range(n)] for t in range(T)]
    return h0, a, b


def _run(name: str, kind: str, dims: dict, body: Callable[[Budget], str], budget: Budget) -> CheckResult:
    t0 = time.perf_counter()
    try:
        detail = body(budget)
        verdict = PROVED
    except Refuted as e:
        verdict, detail = REFUTED, str(e)
    except (Unknown, BudgetExceeded) as e:
        verdict, detail = UNKNOWN, str(e)
    return CheckResult(name, kind, verdict, dims, time.perf_counter() - t0, detail)


def distributed_checks(budget_s: float | None = 60.0, state_dim: int = 2) -> list[CheckResult]:
    """The verify rows of the distributed scan.

    * ``distributed_diagonal_scan_refines_diagonalSelectiveScan`` (beyond): equal to the
      spec's ``diagonalSelectiveScan`` over the reals (sympy, expand), serial and tree
      combines, several block counts (1 to 8) and tree shapes (pow2, balanced, left, right);
    * ``distributed_serial_combine_same_operations_as_chunked_scan`` (beyond): the serial
      combine performs exactly the operations of ``chunked_diagonal_scan`` in the same
      order (operation traces, no algebra), hence bitwise equal on IEEE doubles;
    * ``distributed_tree_combine_with_swapped_compose`` (control): the tree combine with
      ``compose`` given its arguments swapped; must be refuted with a counterexample.

    Parameters
    ----------
    budget_s : float or None
        Wall-clock budget shared by the three checks (None: unlimited).
    state_dim : int
        Channels of the symbolic instances.

    Returns
    -------
    list of CheckResult
    """
    budget = Budget(budget_s)
    cases = _cases()
    dims = {"stateDim": state_dim, "cases": [f"T={T},Lc={lc},blocks={list(bl)},{c}/{tr}" for T, lc, bl, c, tr in cases]}

    def refines(bud: Budget) -> str:
        n_cases = 0
        for T, lc, blocks, comb, tree in cases:
            h0, a, b = _symbols(T, state_dim)
            lhs = distributed_diagonal_scan(SYMPY, h0, a, b, lc, blocks, comb, tree)
            rhs = diagonal_selective_scan(SYMPY, h0, [DiagonalTransition(a[t], b[t]) for t in range(T)])
            try:
                compare_structures(lhs, rhs, EXPAND, bud)
            except Refuted as e:
                raise Refuted(f"T={T}, Lc={lc}, blocks={list(blocks)}, {comb}/{tree}: {e}")
            n_cases += 1
        return (f"distributed_diagonal_scan(h0, a, b, Lc, blocks) = diagonalSelectiveScan h0 [(a_t, b_t)] by expand "
                f"for {n_cases} cases (block counts 1..8; serial; tree pow2/balanced/left/right), stateDim {state_dim}")

    def same_ops(bud: Budget) -> str:
        n_cases = 0
        for T, lc, blocks, comb, tree in cases:
            if comb != "serial":
                continue
            bud.check()
            h0 = [Op("leaf", f"h0_{i}") for i in range(state_dim)]
            a = [[Op("leaf", f"a{t}_{i}") for i in range(state_dim)] for t in range(T)]
            b = [[Op("leaf", f"b{t}_{i}") for i in range(state_dim)] for t in range(T)]
            lhs = distributed_diagonal_scan(TRACE, h0, a, b, lc, blocks, "serial")
            rhs = chunked_diagonal_scan(h0, a, b, lc)
            for t, (hl, hr) in enumerate(zip(lhs, rhs)):
                for d in range(state_dim):
                    if not trace_equal(hl[d], hr[d]):
                        raise Refuted(f"T={T}, Lc={lc}, blocks={list(blocks)}: h_{t + 1}[{d}] is computed by "
                                      "different operations")
            n_cases += 1
        # evidence that the tree combine cannot be: a double instance where it differs
        witness = _tree_rounding_witness()
        return (f"serial combine: identical operation traces to chunked_diagonal_scan for {n_cases} (T, Lc, blocks) "
                f"cases; the tree combine reassociates ({witness})")

    def control(bud: Budget) -> str:
        for T, lc, blocks, comb, tree in cases:
            if comb != "tree" or len(blocks) < 3:
                continue
            h0, a, b = _symbols(T, state_dim)
            lhs = distributed_diagonal_scan(SYMPY, h0, a, b, lc, blocks, "tree", tree, compose_fn=swapped_compose)
            rhs = diagonal_selective_scan(SYMPY, h0, [DiagonalTransition(a[t], b[t]) for t in range(T)])
            try:
                compare_structures(lhs, rhs, EXPAND, bud)
            except Refuted as e:
                raise Refuted(f"T={T}, Lc={lc}, blocks={list(blocks)}, tree/{tree}: {e}")
        return "the swapped combine agreed with diagonalSelectiveScan on every case"

    return [
        _run("distributed_diagonal_scan_refines_diagonalSelectiveScan", BEYOND, dims, refines, budget),
        _run("distributed_serial_combine_same_operations_as_chunked_scan", BEYOND,
             {"stateDim": state_dim, "cases": [c for c in dims["cases"] if "serial" in c]}, same_ops, budget),
        _run("distributed_tree_combine_with_swapped_compose", CONTROL, dims, control, budget),
    ]


def _tree_rounding_witness() -> str:
    """A double instance where the tree combine differs from the chunked scan in the last bits."""
    T, lc, blocks = 12, 2, (1, 1, 1, 1, 1, 1)
    a = [[0.9 + 0.01 * ((7 * t) % 10)] for t in range(T)]
    b = [[((-1) ** t) * (1.0 + 0.1 * t)] for t in range(T)]
    h0 = [0.3]
    tree = distributed_diagonal_scan(DOUBLE, h0, a, b, lc, blocks, "tree", "pow2")
    ref = chunked_diagonal_scan(h0, a, b, lc)
    for t, (x, y) in enumerate(zip(tree, ref)):
        if x[0] != y[0]:
            return f"doubles: h_{t + 1} = {x[0]!r} (tree) vs {y[0]!r} (chunked)"
    return "no double instance found"
