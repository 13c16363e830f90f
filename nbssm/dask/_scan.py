"""The sequence operations of :mod:`nbssm.ops` on dask arrays, chunked along batch and time.

Batch (and, for the linear scan, channel) chunks are independent: every block
calls the single-machine operation with the strategy and chunk length resolved
from the *whole* array's shape, so the result is bitwise the single-machine
result.

Time chunks are parallel in time. With ``strategy="chunked"`` and time blocks
that start on the kernel's chunk boundaries (every block but the last a
multiple of ``chunk_length``; :func:`nbssm.dask.time_chunks` makes such
chunks), the graph runs the three phases of
``nbssm.spec.algorithms.chunked_diagonal_scan`` across the blocks
(reference: ``nbssm.spec.distributed.distributed_diagonal_scan``):

1. every block but the last computes the summaries ``(P_k, Q_k)`` of its
   kernel chunks (in parallel, where its data lives;
   :mod:`nbssm._kernels.summary`, the kernels' phase 1);
2. ``combine="serial"`` (default): the state is carried through every block's
   chunk summaries, ``H <- P_k * H + Q_k`` in the kernel's order, when the graph is
   built with a ``distributed`` client as the default scheduler: by every block's own
   fix-up over the summaries before it when the inputs are persisted on the cluster
   (only the summaries travel; no task waits for a scheduler round trip after the last
   summary), by one task when the graph makes its inputs (a block where a summary
   cannot stand is carried by a task submitted next to that block's data), else (``combine="chain"``, also
   on request) by a chain of one small task per block, where the block lives; both
   apply the kernels' one rule
   (:func:`nbssm._kernels.chunking.carry_ok`, spec ``ieee_carry_ok``) choosing
   where a chunk is re-run from ``H`` one step at a time instead (overflowed,
   non-finite or huge values). The chain sends on only ``batch x channels (x
   state)`` numbers per block but costs a scheduler round trip per block (about
   10 ms on a loaded 2-core machine: 80 ms of a 2^24-step scan whose blocks take
   6 ms each); the single task costs one. The result is **bitwise equal** to
   ``nbssm.ops`` with ``strategy="chunked"`` on the whole sequence, extreme
   values included.
   ``combine="tree"``: block summaries (compositions of the chunk summaries)
   are combined by a tree of depth ``ceil(log2(blocks))`` (the spec's
   ``summarizeScalarAffine_append``), then applied to the initial state; this
   reassociates the products, so it equals the chunked result only up to
   rounding (float64: relative differences of a few ``1e-16`` per level,
   tested at ``1e-12``; float32 ``1e-5``) and only for finite, moderate values;
3. every block re-runs itself from its carried-in state (in parallel): the
   linear scan's blocks but the last run the kernel's carry and fix-up from
   their summaries (:func:`nbssm._kernels.summary.linear_block_fixup`; the
   block is read once more, as on one machine), the last block and the
   selective scan's blocks call the single-machine operation with
   ``initial_state``.

With ``strategy="sequential"`` over several time blocks each block starts
from the final state of the previous one (pieces equal the whole bit for bit;
parallel over batch chunks only).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from .. import _memory, ops
from .._kernels.summary import (
    linear_block_carry,
    linear_block_carry_try,
    linear_block_fixup,
    linear_chunk_summaries,
    selective_block_carry,
    selective_block_carry_try,
    selective_chunk_summaries,
)
from ._common import as_dask, blocks_of, require_dask, small

COMBINES = ("serial", "chain", "tree")
#: relative tolerance (to the largest magnitude) of ``combine="tree"`` against the chunked
#: single-machine scan, per dtype (tested for up to 16 blocks of contracting scans)
TREE_RTOL = {"float64": 1e-12, "float32": 1e-5}


# --------------------------------------------------------------------------- block tasks
def _float_dtype(*arrs):
    """The compute dtype of ``nbssm.ops``: float64 if any input is float64 or integer, else float32."""
    return _dtype_of(*arrs).type


def _linear_arrays(a, b):
    dt = _float_dtype(a, b)
    return np.ascontiguousarray(a, dtype=dt), np.ascontiguousarray(b, dtype=dt)


def _linear_summaries(a, b, chunk_length, last=False):
    """Summaries ``PQ (batch, n_chunks, 2, channels)`` (``P`` then ``Q``) of the kernel chunks
    of one time block (:func:`nbssm._kernels.summary.linear_chunk_summaries`): every chunk, or
    with ``last`` (the sequence's last block) every chunk but the last."""
    a, b = _linear_arrays(a, b)
    bat, length, ch = a.shape
    nch = max(length - 1, 0) // chunk_length if last else length // chunk_length
    PQ = np.empty((bat, nch, 2, ch), a.dtype)
    linear_chunk_summaries(a, b, chunk_length, PQ)
    return PQ


def _linear_carry(a, b, summaries, h, chunk_length):
    """The state after one time block from the state ``h`` entering it: the kernel's carry
    over the block's chunk summaries, with the kernels' rule (``carry_ok``) and re-runs."""
    a, b = _linear_arrays(a, b)
    out = np.array(h, dtype=a.dtype, copy=True, order="C")
    linear_block_carry(a, b, summaries, out, chunk_length)
    return out


def _linear_fixup(a, b, summaries, h, chunk_length, last=False):
    """Every state of one time block from the state ``h`` entering it and its chunk summaries
    (the kernel's carry and fix-up, without summarising the block again); with ``last``, the
    pair ``(states, final state)``."""
    a, b = _linear_arrays(a, b)
    out = _memory.empty(a.shape, a.dtype, min_bytes=_memory.WORKER_MIN_BYTES)
    h = np.ascontiguousarray(h, dtype=a.dtype)
    hT = np.empty_like(h)
    linear_block_fixup(a, b, summaries, h, out, hT, chunk_length)
    return (out, hT) if last else out


def _selective_arrays(u, delta, A, Bm, delta_bias):
    dt = _float_dtype(u, delta)
    bias = np.zeros(A.shape[0], dt) if delta_bias is None else np.ascontiguousarray(delta_bias, dtype=dt)
    return (np.ascontiguousarray(u, dtype=dt), np.ascontiguousarray(delta, dtype=dt),
            np.ascontiguousarray(A, dtype=dt), np.ascontiguousarray(Bm, dtype=dt), bias)


def _selective_summaries(u, delta, A, Bm, delta_bias, delta_softplus, chunk_length):
    """Summaries ``(P, Q)``, ``(batch, n_chunks, channels, state)`` each, of the kernel chunks
    of one time block (:func:`nbssm._kernels.summary.selective_chunk_summaries`)."""
    u, delta, A, Bm, bias = _selective_arrays(u, delta, A, Bm, delta_bias)
    bat, length, ch = u.shape
    n = A.shape[1]
    nch = length // chunk_length
    P = np.empty((bat, nch, ch, n), u.dtype)
    Q = np.empty((bat, nch, ch, n), u.dtype)
    selective_chunk_summaries(u, delta, A, Bm, bias, delta_bias is not None, bool(delta_softplus), chunk_length,
                              P, Q)
    return P, Q


def _selective_carry(u, delta, A, Bm, delta_bias, delta_softplus, summaries, h, chunk_length):
    """The state after one time block from ``h`` (the selective kernel's carry and re-runs)."""
    u, delta, A, Bm, bias = _selective_arrays(u, delta, A, Bm, delta_bias)
    out = np.array(h, dtype=u.dtype, copy=True, order="C")
    selective_block_carry(u, delta, A, Bm, bias, delta_bias is not None, bool(delta_softplus), summaries[0],
                          summaries[1], out, chunk_length)
    return out


def _block_summary(summaries):
    """The block's chunk summaries composed into one ``(P, Q)``, first chunk first
    (``compose(next, acc)``: ``(P_k * P, P_k * Q + Q_k)``); ``summaries``: the selective
    pair ``(P, Q)`` or the linear ``PQ`` array ``(batch, n_chunks, 2, channels)``."""
    if isinstance(summaries, np.ndarray):
        P, Q = summaries[:, :, 0], summaries[:, :, 1]
    else:
        P, Q = summaries[0], summaries[1]
    p, q = P[:, 0].copy(), Q[:, 0].copy()
    with np.errstate(all="ignore"):
        for k in range(1, P.shape[1]):
            p, q = P[:, k] * p, P[:, k] * q + Q[:, k]
    return p, q


def _compose(later, earlier):
    """``compose(later, earlier)``: first ``earlier`` then ``later``."""
    with np.errstate(all="ignore"):
        return later[0] * earlier[0], later[0] * earlier[1] + later[1]


def _apply(summary, h):
    with np.errstate(all="ignore"):
        return summary[0] * np.asarray(h, summary[0].dtype) + summary[1]


def _split(lo: int, hi: int) -> int:
    """Split point of ``[lo, hi)`` (``hi - lo >= 2``): the largest power of two below the
    length from ``lo``, so that prefixes ``[0, j)`` share their left subtrees."""
    p = 1
    while p * 2 < hi - lo:
        p *= 2
    return lo + p


def _tree_prefixes(delayed, block_summaries, combine=_compose):
    """Delayed summaries of the prefixes ``[0, j)`` for ``j = 1 .. len(block_summaries)``,
    combined by a tree of depth ``ceil(log2 j)`` with shared segments."""
    memo = {}

    def seg(lo, hi):
        if (lo, hi) not in memo:
            if hi - lo == 1:
                memo[(lo, hi)] = block_summaries[lo]
            else:
                mid = _split(lo, hi)
                memo[(lo, hi)] = delayed(combine, seg(mid, hi), seg(lo, mid))
        return memo[(lo, hi)]

    return [seg(0, j) for j in range(1, len(block_summaries) + 1)]


def _linear_block(a, b, h, strategy, chunk_length):
    return ops.linear_scan(a, b, initial_state=h, return_final_state=True, strategy=strategy,
                           chunk_length=chunk_length)


def _selective_block(u, delta, z, Bm, Cm, h, A, D, delta_bias, delta_softplus, strategy, chunk_length):
    return ops.selective_scan(u, delta, A, Bm, Cm, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                              initial_state=h, return_final_state=True, strategy=strategy,
                              chunk_length=chunk_length)


def _selective_summarize_args(*seqs, has_z, A, delta_bias, delta_softplus, chunk_length):
    u, delta, Bm = seqs[0], seqs[1], seqs[3 if has_z else 2]
    return _selective_summaries(u, delta, A, Bm, delta_bias, delta_softplus, chunk_length)


def _selective_carry_args(*args, has_z, A, delta_bias, delta_softplus, chunk_length):
    *seqs, summaries, h = args
    u, delta, Bm = seqs[0], seqs[1], seqs[3 if has_z else 2]
    return _selective_carry(u, delta, A, Bm, delta_bias, delta_softplus, summaries, h, chunk_length)


def _linear_carry_args(a, b, summaries, h, chunk_length):
    return _linear_carry(a, b, summaries, h, chunk_length)


def _linear_fixup_args(a, b, summaries, h, chunk_length, last=False):
    return _linear_fixup(a, b, summaries, h, chunk_length, last)


def _selective_run_args(*args, has_z, A, D, delta_bias, delta_softplus, strategy, chunk_length):
    if has_z:
        u, delta, z, Bm, Cm, h = args
    else:
        (u, delta, Bm, Cm, h), z = args, None
    return _selective_block(u, delta, z, Bm, Cm, h, A, D, delta_bias, delta_softplus, strategy, chunk_length)


def _linear_carry_try(summaries, h):
    """``(True, state after the block)`` from the summaries alone, or ``(False, None)`` when a
    chunk must be re-run from the block's data."""
    out = np.array(h, dtype=summaries.dtype, copy=True, order="C")
    return (True, out) if linear_block_carry_try(summaries, out) else (False, None)


def _selective_carry_try(summaries, h):
    P, Q = summaries
    out = np.array(h, dtype=P.dtype, copy=True, order="C")
    return (True, out) if selective_block_carry_try(P, Q, out) else (False, None)


def _hold(*inputs):
    """A time block's inputs as one tuple (references, no copies)."""
    return inputs


class _Star:
    """``fn(*held, *rest)``: a block function applied to a hold task's tuple of inputs."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, held, *rest, **kwargs):
        return self.fn(*held, *rest, **kwargs)

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("nbssm.dask._Star", tokenize(self.fn))


class _Keys:
    """The dask keys of one time block's inputs, carried as plain data (not dependencies)."""

    __slots__ = ("keys",)

    def __init__(self, keys):
        self.keys = list(keys)

    def __dask_tokenize__(self):
        return ("nbssm.dask._Keys", tuple(self.keys))


def _persisted(seqs) -> bool:
    """Whether every block of every array is a ``distributed`` future (``client.persist``):
    its key then stays in the cluster's memory while the graph holds the future."""
    try:
        from distributed import Future
    except ImportError:  # pragma: no cover
        return False
    for x in seqs:
        graph = x.__dask_graph__()
        for key in _flat_keys(x):
            if not isinstance(graph.get(key), Future):
                return False
    return True


def _flat_keys(x):
    from dask.core import flatten

    return list(flatten(x.__dask_keys__()))


def _on_distributed() -> bool:
    """Whether the default scheduler is a ``distributed`` client (graph-build time)."""
    try:
        from distributed import default_client

        default_client()
        return True
    except (ImportError, ValueError):
        return False


def _carry_from_data(carry, keys, summaries, h):
    """Phase 2 over one block that needs a re-run: ``carry`` submitted next to the block's
    inputs (held in the cluster's memory: the block's fix-up still needs them) from this task."""
    try:
        from distributed import Future, worker_client

        with worker_client() as client:
            futures: list[Any] = [Future(k, client) for k in keys.keys]
            return client.submit(carry, *futures, summaries, h, pure=False).result()
    except ValueError as exc:  # not inside a distributed worker
        raise RuntimeError(
            "nbssm.dask: a time block's carry must re-run chunks from the block's data (non-finite or "
            "huge values), which needs the distributed scheduler the graph was built for; build the graph "
            "without a distributed client to compute it with another scheduler") from exc


def _central_carry(try_carry, carry, h0, keys, *summaries):
    """Phase 2 in one task: the states entering every time block (and the final one), from the
    blocks' chunk summaries (a few numbers per chunk and lane) with the kernels' rule; a block
    whose summaries cannot stand (``try_carry`` fails) is carried by ``carry`` on its data."""
    states = [np.asarray(h0)]
    for j, sj in enumerate(summaries):
        ok, h = try_carry(sj, states[-1])
        if not ok:
            h = _carry_from_data(carry, keys[j], sj, states[-1])
        states.append(h)
    return states


def _carried(try_carry, carry, h0, keys, n_prior, fn, *args, **kwargs):
    """``fn(*rest, h)``, ``h`` the state entering this block: carried from ``h0`` over the
    ``n_prior`` earlier blocks' summaries (the last ``n_prior`` arguments) in this task, as
    :func:`_central_carry` does (the same operations in the same order: the same bits)."""
    cut = len(args) - n_prior
    h = _central_carry(try_carry, carry, h0, keys, *args[cut:])[-1]
    return fn(*args[:cut], h, **kwargs)


def _run_from(run_block, want_final, *args):
    """:func:`_run` with the entering state itself as the last argument."""
    return _run(run_block, want_final, *args, None)


def _gate(h, _after):
    """``h``, once ``_after`` exists (a dependency that orders the graph)."""
    return h


def _fixup_at(fixup, *args, last=False):
    """``fixup(*inputs, summaries, h)`` with ``h = entering[index]`` (or ``entering`` when
    ``index`` is None): the block's entering state taken where it is used (no task of its own)."""
    *inputs, summaries, entering, index = args
    return fixup(*inputs, summaries, entering if index is None else entering[index], last=last)


def _first(pair):
    return pair[0]


def _second(pair):
    return pair[1]


# --------------------------------------------------------------------------- graph
class _Graph:
    """``dask.delayed`` calls named from one token of the whole graph: deterministic keys (as
    ``pure=True`` gives) without tokenizing the arguments of every call (most of the time of
    building a graph of a few dozen tasks)."""

    def __init__(self, *parts):
        import dask
        from dask.base import tokenize

        self._delayed = dask.delayed
        self.token = tokenize(*parts)
        self._leaves: dict = {}
        self._n = 0

    def __call__(self, fn, *args, nout=None, key=None, **kwargs):
        from dask.utils import funcname

        leaf = self._leaves.get((id(fn), nout))
        if leaf is None:
            leaf = self._leaves[(id(fn), nout)] = (fn, self._delayed(fn, pure=True, nout=nout))
        self._n += 1
        if key is None:
            label = funcname(fn.fn if isinstance(fn, _Star) else fn).strip("_")
            key = f"{label}-{self.token}-{self._n}"
        return leaf[1](*args, dask_key_name=key, **kwargs)


def _check_time_blocks(time_chunks, chunk_length, name):
    for j, c in enumerate(time_chunks[:-1]):
        if c % chunk_length:
            raise ValueError(
                f"{name}: expected time chunks that are multiples of chunk_length={chunk_length} (all but the "
                f"last), got {time_chunks} (block {j} has {c} steps); rechunk with "
                f"nbssm.dask.time_chunks(length, n_blocks, chunk_length)")


def _run(run_block, want_final, *args):
    """``run_block(*inputs, state)`` where the last two arguments are the entering state (or
    a list of them) and its index (None: the state itself); the output only, unless
    ``want_final``."""
    *inputs, entering, index = args
    h = entering if index is None else entering[index]
    out, final = run_block(*inputs, h)
    return (out, final) if want_final else out


def _time_parallel(seqs, h0_blocks, summarize, carry, run_block, strategy, chunk_length, combine, name,
                   fixup=None, carry_try=None, name_prefix="nbssm-scan", final_ndim=1):
    """Shared graph of the time-parallel scans.

    ``seqs``: dask arrays whose blocks ``[i, j, 0]`` (batch chunk i, time block j) are the
    inputs of ``summarize``/``carry``/``run_block``; ``carry(*inputs, summaries, h)``: the
    state after the block from ``h``; ``fixup(*inputs, summaries, h)``, optional: the output
    of a block but the last from ``h`` and its summaries (``combine="serial"``; else
    ``run_block``); ``h0_blocks[i]``: the initial state of batch chunk i. Returns
    ``(results, finals, out_name, final_name)``: ``results[i][j]`` the delayed output blocks,
    keyed ``(out_name, i, j, 0)``, and ``finals[i]`` the final states, keyed
    ``(final_name, i, 0, ...)`` (``final_ndim`` zeros): the keys of dask arrays
    (:func:`_assemble`), so that no task only renames another.
    """
    import dask

    if combine not in COMBINES:
        raise ValueError(f"combine: expected one of {COMBINES}, got {combine!r}")
    nb, nt = seqs[0].numblocks[0], seqs[0].numblocks[1]
    blocks = [blocks_of(s) for s in seqs]
    chunked = strategy == "chunked"
    if chunked and nt > 1:
        _check_time_blocks(seqs[0].chunks[1], chunk_length, name)
    # the carry in one task where the graph runs on a distributed cluster (the chain's hops
    # between workers cost a scheduler round trip each); else a chain of small tasks
    central = carry_try if combine == "serial" and carry_try is not None and _on_distributed() else None
    if combine == "chain":
        combine = "serial"
    held = central is not None and chunked and nt > 1 and not _persisted(seqs)
    # the graph's shape is in the token (its keys name its tasks: the same inputs held by the
    # graph or persisted make different tasks)
    delayed = _Graph("nbssm.dask.time_parallel", name, [x.name for x in seqs], [np.asarray(h) for h in h0_blocks],
                     summarize, carry, run_block, fixup, strategy, chunk_length, combine, central is not None, held)
    if held:
        # the block functions take a hold task's tuple of inputs (below)
        summarize, carry, run_block = _Star(summarize), _Star(carry), _Star(run_block)
        fixup = None if fixup is None else _Star(fixup)
    out_name, final_name = f"{name_prefix}-{delayed.token}", f"{name_prefix}-final-{delayed.token}"
    results, finals = [], []
    for i in range(nb):
        args = [[blk[i, j, 0] for blk in blocks] for j in range(nt)]
        if held:
            # one task per block holding its inputs (a tuple of references): a key of this graph
            # that no optimisation fuses away, for the central carry's re-runs
            holds = [delayed(_hold, *args[j]) for j in range(nt)]
            args = [[h] for h in holds]
            input_keys = [[h.key] for h in holds]
        else:
            # inputs persisted on the cluster: their own keys stay in its memory
            input_keys = [[blk[i, j, 0].key for blk in blocks] for j in range(nt)]
        entering: list[tuple[Any, int | None]] = [(h0_blocks[i], None)]
        if not chunked:
            # sequential: each block from the final state of the previous one
            row = []
            for j in range(nt):
                pair = delayed(_run, run_block, True, *args[j], *entering[-1])
                entering.append((delayed(_second, pair), None))
                row.append(delayed(_first, pair, key=(out_name, i, j, 0)) if j < nt - 1 else pair)
            last = row[-1]
            row[-1] = delayed(_first, last, key=(out_name, i, nt - 1, 0))
            finals.append(delayed(_second, last, key=(final_name, i) + (0,) * final_ndim))
            results.append(row)
            continue
        # the summaries are the critical path (every later block waits for those before it):
        # a worker runs them before any fix-up that is ready beside them (dask's own order
        # would finish the early blocks' outputs first and leave the late summaries waiting)
        with dask.annotate(priority=1):
            sums = [delayed(summarize, *args[j]) for j in range(nt - 1)]
            if fixup is not None and combine == "serial" and nt > 1:
                # the last block's chunks but its last, summarised with the others
                sums.append(delayed(summarize, *args[nt - 1], last=True))
        # (central: combine="serial" on a distributed cluster)
        own = central is not None and nt > 1 and not held
        if own:
            # inputs persisted on the cluster: every block carries its own entering state over
            # the earlier blocks' summaries inside its fix-up (a few numbers per chunk and lane
            # travel to it; the carry is about 0.1 ms of a block's milliseconds). No central
            # task: a block waits only for the summaries before it, not for a round trip of the
            # scheduler after the last one. A block needing a re-run is carried next to its
            # data (alive: persisted), by every later block that needs it.
            keys = [_Keys(input_keys[j]) for j in range(nt - 1)]
        elif combine == "serial" and nt > 1 and central is not None:
            # one task carries the state over every block's summaries (only they travel: a few
            # numbers per chunk and lane); a block needing a re-run is carried next to its data,
            # its inputs found by the key of a task that holds them (alive until its fix-up)
            keys = [_Keys(input_keys[j]) for j in range(nt - 1)]
            states = delayed(_central_carry, central, carry, h0_blocks[i], keys, *sums[:nt - 1])
            entering += [(states, j) for j in range(1, nt)]
        elif combine == "serial" and nt > 1:
            # one small task per block, where the block lives (a re-run reads its data);
            # only the state (batch x channels (x state) numbers) moves between them
            h = h0_blocks[i]
            for j in range(nt - 1):
                h = delayed(carry, *args[j], sums[j], h)
                entering.append((h, None))
        elif nt > 1:
            bsum = [delayed(_block_summary, s) for s in sums]
            prefixes = _tree_prefixes(delayed, bsum)
            entering += [(delayed(_apply, p, h0_blocks[i]), None) for p in prefixes]
        row = []
        for j in range(nt):
            key = (out_name, i, j, 0) if j < nt - 1 else None
            if own and j > 0:
                if fixup is not None:
                    row.append(delayed(_carried, central, carry, h0_blocks[i], keys[:j], j, fixup, *args[j], sums[j],
                                       *sums[:j], last=j == nt - 1, key=key))
                else:
                    row.append(delayed(_carried, central, carry, h0_blocks[i], keys[:j], j,
                                       partial(_run_from, run_block, j == nt - 1), *args[j], *sums[:j], key=key))
            elif fixup is not None and combine == "serial" and nt > 1:
                ent, idx = entering[j]
                if idx is None and central is None:
                    # after the whole carry chain (its last state): the chain's small tasks then
                    # never wait behind a block's fix-up on a busy worker
                    ent = delayed(_gate, ent, entering[-1][0])
                row.append(delayed(_fixup_at, fixup, *args[j], sums[j], ent, idx, last=j == nt - 1, key=key))
            else:
                row.append(delayed(_run, run_block, j == nt - 1, *args[j], *entering[j], key=key))
        last = row[-1]
        row[-1] = delayed(_first, last, key=(out_name, i, nt - 1, 0))
        finals.append(delayed(_second, last, key=(final_name, i) + (0,) * final_ndim))
        results.append(row)
    return results, finals, out_name, final_name


def _array_graph(name, leaves):
    """A ``HighLevelGraph`` with the delayed ``leaves`` (keyed ``(name, ...)``, nothing depends
    on them) gathered in one layer ``name``: the graph of a dask array whose chunks are those
    tasks themselves, not renaming tasks after them."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    layers, deps, tasks, top = {}, {}, {}, set()
    for d in leaves:
        g = d.dask
        for lname, layer in g.layers.items():
            if lname == d.key:
                tasks[d.key] = layer[d.key]
                top |= set(g.dependencies.get(lname, ()))
            elif lname not in layers:
                layers[lname] = layer
                deps[lname] = set(g.dependencies.get(lname, ()))
    layers[name] = MaterializedLayer(tasks)
    deps[name] = top - set(tasks)
    return HighLevelGraph(layers, deps)


def _assemble(res, chunks, dtype, state_of_chunk, return_final_state):
    """The output (and final-state) dask arrays over the keys :func:`_time_parallel` gave."""
    da = require_dask()
    results, finals, out_name, final_name = res
    out = da.Array(_array_graph(out_name, [d for row in results for d in row]), out_name, chunks=chunks,
                   dtype=dtype)
    if not return_final_state:
        return out
    tail = state_of_chunk(1)[1:]
    final = da.Array(_array_graph(final_name, finals), final_name,
                     chunks=(tuple(chunks[0]),) + tuple((n,) for n in tail), dtype=dtype)
    return out, final


def _h0_blocks(initial_state, batch_chunks, shape_tail, dtype, name):
    """Per-batch-chunk initial states (numpy), zeros when omitted."""
    total = sum(batch_chunks)
    if initial_state is None:
        h0 = np.zeros((total,) + shape_tail, dtype=dtype)
    else:
        h0 = small(initial_state, name)
        if h0.shape != (total,) + shape_tail:
            raise ValueError(f"{name}: expected shape {(total,) + shape_tail}, got {h0.shape}")
        h0 = np.ascontiguousarray(h0, dtype=dtype)
    out, start = [], 0
    for c in batch_chunks:
        out.append(h0[start:start + c])
        start += c
    return out


def _dtype_of(*arrs):
    dts = [np.dtype(x.dtype) for x in arrs]
    if any(dt == np.float64 or np.issubdtype(dt, np.integer) for dt in dts):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def linear_scan(a, b, initial_state=None, return_final_state=False, strategy="auto", chunk_length=None,
                combine="serial"):
    """:func:`nbssm.ops.linear_scan` on dask arrays chunked along batch, time and channels.

    Parameters
    ----------
    a, b : dask or numpy arrays, shape (batch, length, channels)
        ``b`` is rechunked like ``a``.
    initial_state : array_like, shape (batch, channels), optional
    return_final_state : bool
    strategy : {"auto", "sequential", "chunked"}
        Resolved from the whole array's ``batch * channels`` (as ``nbssm.ops`` does), never
        from a block's.
    chunk_length : int, optional
        The kernel's chunk length (default ``nbssm.ops.LINEAR_CHUNK_LENGTH``). For the
        chunked strategy every time chunk but the last must be a multiple of it.
    combine : {"serial", "chain", "tree"}
        How the time blocks' summaries are combined (module docstring): "serial" and "chain"
        are bitwise equal to the single-machine chunked scan ("serial": one task on a
        distributed cluster, "chain": a task per block), "tree" has logarithmic depth and
        equals it up to rounding. A graph built for a distributed client with "serial" and
        computed by another scheduler raises ``RuntimeError`` if a block must be re-run
        from its data (non-finite or huge values); use "chain" there.

    Returns
    -------
    h : dask array, shape (batch, length, channels), chunked like ``a``
    final_state : dask array, shape (batch, channels)
        Only with ``return_final_state``.
    """
    a = as_dask(a, "a", 3)
    b = as_dask(b, "b", 3)
    if b.shape != a.shape:
        raise ValueError(f"b: expected shape {a.shape} (the shape of a), got {b.shape}")
    batch, length, channels = a.shape
    if strategy not in ops.STRATEGIES:
        raise ValueError(f"strategy: expected one of {ops.STRATEGIES}, got {strategy!r}")
    strat = ops.default_strategy("linear", batch, channels) if strategy == "auto" else strategy
    cl = ops.default_chunk_length("linear", batch, channels) if chunk_length is None else int(chunk_length)
    if cl < 1:
        raise ValueError(f"chunk_length: expected an integer >= 1, got {chunk_length}")
    dt = _dtype_of(a, b)
    b = b.rechunk(a.chunks)
    # channels are independent: one time-parallel graph per channel chunk
    outs, finals = [], []
    start = 0
    for k, cw in enumerate(a.chunks[2]):
        ak = a[:, :, start:start + cw]
        bk = b[:, :, start:start + cw]
        h0k = None if initial_state is None else small(initial_state, "initial_state")[:, start:start + cw]
        if initial_state is not None and small(initial_state, "initial_state").shape != (batch, channels):
            raise ValueError(f"initial_state: expected shape {(batch, channels)}, got "
                             f"{small(initial_state, 'initial_state').shape}")
        h0b = _h0_blocks(h0k, a.chunks[0], (cw,), dt, "initial_state")
        res = _time_parallel(
            [ak, bk], h0b, partial(_linear_summaries, chunk_length=cl), partial(_linear_carry_args, chunk_length=cl),
            partial(_linear_block, strategy=strat, chunk_length=cl), strat, cl, combine, "a",
            fixup=partial(_linear_fixup_args, chunk_length=cl), carry_try=_linear_carry_try,
            name_prefix="nbssm-linear-scan", final_ndim=1)
        o = _assemble(res, (a.chunks[0], a.chunks[1], (cw,)), dt, lambda nbat: (nbat, cw), True)
        outs.append(o[0])
        finals.append(o[1])
        start += cw
    da = require_dask()
    out = da.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]
    if not return_final_state:
        return out
    final = da.concatenate(finals, axis=1) if len(finals) > 1 else finals[0]
    return out, final


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                   return_final_state=False, strategy="auto", chunk_length=None, combine="serial"):
    """:func:`nbssm.ops.selective_scan` on dask arrays chunked along batch and time.

    Parameters
    ----------
    u, delta, z : dask or numpy arrays, shape (batch, length, channels)
        ``delta`` and ``z`` are rechunked like ``u``; channels are one chunk.
    A : array_like, shape (channels, state); D, delta_bias : (channels,)
        Small parameters, sent with the graph.
    B, C : dask or numpy arrays, shape (batch, length, state)
        Rechunked along batch and time like ``u``.
    initial_state : array_like, shape (batch, channels, state), optional
    strategy, chunk_length, combine
        As :func:`linear_scan` (defaults from ``nbssm.ops`` for the selective scan, from the
        whole array's shape). The bitwise equality of ``combine="serial"`` with the
        single-machine chunked scan holds for every input, non-finite values included (the
        carry applies the kernel's rule and re-runs, :mod:`nbssm._kernels.summary`).

    Returns
    -------
    y : dask array, shape (batch, length, channels)
    final_state : dask array, shape (batch, channels, state)
        Only with ``return_final_state``.
    """
    u = as_dask(u, "u", 3)
    batch, length, channels = u.shape
    u = u.rechunk({2: channels})
    delta = as_dask(delta, "delta", 3)
    if delta.shape != u.shape:
        raise ValueError(f"delta: expected shape {u.shape} (the shape of u), got {delta.shape}")
    A_ = small(A, "A")
    if A_ is None or A_.ndim != 2 or A_.shape[0] != channels:
        raise ValueError(f"A: expected shape ({channels}, state), got {None if A_ is None else A_.shape}")
    n = A_.shape[1]
    Bm = as_dask(B, "B", 3)
    Cm = as_dask(C, "C", 3)
    for arr, name in ((Bm, "B"), (Cm, "C")):
        if arr.shape != (batch, length, n):
            raise ValueError(f"{name}: expected shape {(batch, length, n)}, got {arr.shape}")
    if strategy not in ops.STRATEGIES:
        raise ValueError(f"strategy: expected one of {ops.STRATEGIES}, got {strategy!r}")
    strat = ops.default_strategy("selective", batch, channels) if strategy == "auto" else strategy
    cl = ops.default_chunk_length("selective", batch, channels) if chunk_length is None else int(chunk_length)
    if cl < 1:
        raise ValueError(f"chunk_length: expected an integer >= 1, got {chunk_length}")
    dt = _dtype_of(u, delta)
    delta = delta.rechunk(u.chunks)
    Bm = Bm.rechunk((u.chunks[0], u.chunks[1], (n,)))
    Cm = Cm.rechunk((u.chunks[0], u.chunks[1], (n,)))
    seqs = [u, delta]
    has_z = z is not None
    if has_z:
        z = as_dask(z, "z", 3)
        if z.shape != u.shape:
            raise ValueError(f"z: expected shape {u.shape} (the shape of u), got {z.shape}")
        seqs.append(z.rechunk(u.chunks))
    seqs += [Bm, Cm]
    D_ = small(D, "D")
    bias_ = small(delta_bias, "delta_bias")
    sp = bool(delta_softplus)
    h0b = _h0_blocks(initial_state, u.chunks[0], (channels, n), dt, "initial_state")

    summarize = partial(_selective_summarize_args, has_z=has_z, A=A_, delta_bias=bias_, delta_softplus=sp,
                        chunk_length=cl)
    carry = partial(_selective_carry_args, has_z=has_z, A=A_, delta_bias=bias_, delta_softplus=sp,
                    chunk_length=cl)
    run = partial(_selective_run_args, has_z=has_z, A=A_, D=D_, delta_bias=bias_, delta_softplus=sp,
                  strategy=strat, chunk_length=cl)

    res = _time_parallel(seqs, h0b, summarize, carry, run, strat, cl, combine, "u", carry_try=_selective_carry_try,
                         name_prefix="nbssm-selective-scan", final_ndim=2)
    return _assemble(res, u.chunks, dt, lambda nbat: (nbat, channels, n), return_final_state)


def _tail(x, keep):
    return np.ascontiguousarray(x[:, max(x.shape[1] - keep, 0):, :])


def _next_history(hist, tail, keep):
    both = np.concatenate([hist, tail.astype(hist.dtype)], axis=1)
    return np.ascontiguousarray(both[:, both.shape[1] - keep:, :])


def _conv_block(x, hist, weight, bias, activation):
    return ops.causal_conv1d(x, weight, bias, initial_state=hist, activation=activation)


def causal_conv1d(x, weight, bias=None, history=None, return_history=False, activation=None):
    """:func:`nbssm.ops.causal_conv1d` on a dask array chunked along batch, time and channels.

    Each time block receives the ``width - 1`` tokens before it (a chain of small tasks
    over the blocks' tails), so the result is bitwise the single-machine one.

    Parameters
    ----------
    x : dask or numpy array, shape (batch, length, channels)
    weight : array_like, shape (channels, width) or (channels, 1, width)
    bias : array_like, shape (channels,), optional
    history : array_like, shape (batch, width-1, channels), optional
    return_history : bool
    activation : {None, "silu"}

    Returns
    -------
    out : dask array, shape (batch, length, channels)
    history : dask array, shape (batch, width-1, channels)
        Only with ``return_history``.
    """
    import dask

    da = require_dask()
    x = as_dask(x, "x", 3)
    batch, length, channels = x.shape
    w = small(weight, "weight")
    if w is not None and w.ndim == 3 and w.shape[1] == 1:
        w = w[:, 0, :]
    if w is None or w.ndim != 2 or w.shape[0] != channels:
        raise ValueError(f"weight: expected shape ({channels}, width), got {None if w is None else w.shape}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    keep = max(w.shape[1] - 1, 0)
    dt = _dtype_of(x)
    bias_ = small(bias, "bias")
    h_all = (np.zeros((batch, keep, channels), dt) if history is None
             else np.ascontiguousarray(small(history, "history"), dtype=dt))
    if h_all.shape != (batch, keep, channels):
        raise ValueError(f"history: expected shape {(batch, keep, channels)}, got {h_all.shape}")
    blocks = blocks_of(x)
    nb, nt, nc = blocks.shape
    rows, hists = [], []
    b0 = 0
    for i in range(nb):
        row_blocks, c0 = [], 0
        hist_row = []
        for k in range(nc):
            cw = x.chunks[2][k]
            hist = h_all[b0:b0 + x.chunks[0][i], :, c0:c0 + cw]
            wk, bk = w[c0:c0 + cw], (None if bias_ is None else bias_[c0:c0 + cw])
            col = []
            for j in range(nt):
                out = dask.delayed(_conv_block, pure=True)(blocks[i, j, k], hist, wk, bk, activation)
                col.append(da.from_delayed(out, shape=(x.chunks[0][i], x.chunks[1][j], cw), dtype=dt))
                tail = dask.delayed(_tail, pure=True)(blocks[i, j, k], keep)
                hist = dask.delayed(_next_history, pure=True)(hist, tail, keep)
            row_blocks.append(col)
            hist_row.append(da.from_delayed(hist, shape=(x.chunks[0][i], keep, cw), dtype=dt)
                            if not isinstance(hist, np.ndarray) else da.from_array(hist))
            c0 += cw
        rows.append(row_blocks)
        hists.append(hist_row)
        b0 += x.chunks[0][i]
    # rows[i][k][j] -> block grid [i][j][k]
    grid = [[[rows[i][k][j] for k in range(nc)] for j in range(nt)] for i in range(nb)]
    out = da.block(grid)
    if not return_history:
        return out
    return out, da.block([[list(hists[i])] for i in range(nb)])
