"""A bounded cache of large output buffers, reused instead of fresh pages.

Why: glibc serves every allocation above 32 MiB with a fresh ``mmap`` and
returns it to the OS on ``free``. A kernel that writes a 100 MB output into
fresh memory first takes a page fault per page, and the OS zeroes each page
before the kernel overwrites it: for ``selective_scan`` at (1, 16384, 1536, 16)
that is 6-8 ms of a 78 ms call (measured on 2 cores), a cost that smaller
outputs never pay because glibc recycles them from its heap. This module does
for large blocks what glibc does for small ones: when the last array using a
block goes away, the block is kept (up to a byte budget) and handed to the
next request of the same rounded size.

Semantics are those of ``np.empty``: the contents of a returned array are
undefined until written, every caller here writes all of it. A block returns
to the cache only when no array, view or buffer export refers to it any more
(CPython reference counting), so a result the caller still holds is never
reused. Returned arrays do not own their data (``arr.base`` is the block's
owner), so ``ndarray.resize`` refuses them; copies, views and pickling work as
usual.

Budget: ``NBSSM_OUTPUT_CACHE_MB`` (default 512 MiB, 0 disables); blocks
above the budget are freed at once, oldest first. :func:`clear_output_cache`
(``nbssm.clear_output_cache``) frees every kept block,
:func:`output_cache_info` reports what is kept and
:func:`set_output_cache_limit` changes the budget at run time.
"""

import os
import threading

import numpy as np

from . import _config

#: requests of at least this many bytes use the cache (below it glibc recycles freed heap)
MIN_BYTES = 32 << 20
#: the threshold for the time blocks of :mod:`nbssm.dask`'s scans: a worker process keeps
#: its results (persisted blocks) and frees them together, so glibc returns the freed heap
#: to the OS and every block of the next job would fault in and zero fresh pages
WORKER_MIN_BYTES = 1 << 20
#: cached blocks are rounded up to this granularity (the 2 MiB huge page), so that
#: requests of nearly the same size share blocks
GRANULE = 2 << 20
#: data start alignment (a cache line: row starts of power-of-two widths fill whole lines)
ALIGN = 64

_lock = threading.RLock()  # re-entrant: a block's release can run inside any allocation
_free = []  # (nbytes, raw uint8 array), oldest first
_stats = {"hits": 0, "misses": 0}
_budget = _config.OUTPUT_CACHE_MB << 20  # bytes


class _Owner:
    """Keeps a raw block alive for the arrays built on it; returns it on collection."""

    __slots__ = ("raw", "__array_interface__")

    def __init__(self, raw, shape, dtype):
        self.raw = raw
        self.__array_interface__ = {
            "shape": tuple(shape),
            "typestr": dtype.str,
            "data": (_aligned(raw), False),
            "strides": None,
            "version": 3,
        }

    def __del__(self):
        try:
            _release(self.raw)
        except Exception:  # at interpreter exit the module's globals may be gone: nothing to keep
            pass


def _aligned(raw):
    """The first cache-line-aligned address of ``raw`` (which has ALIGN spare bytes)."""
    return raw.ctypes.data + (-raw.ctypes.data) % ALIGN


def _evict():
    """Free the oldest kept blocks until the rest fit the budget (call with the lock held)."""
    total = sum(n for n, _ in _free)
    while _free and total > _budget:
        total -= _free.pop(0)[0]


def _release(raw):
    with _lock:
        size = raw.nbytes - ALIGN
        if size <= _budget:
            _free.append((size, raw))
            _evict()


def empty(shape, dtype, min_bytes=None):
    """``np.empty(shape, dtype)`` (C order), served from the cache for requests of at least
    ``min_bytes`` (default ``MIN_BYTES``)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < (MIN_BYTES if min_bytes is None else max(int(min_bytes), 1)) or _budget <= 0:
        return np.empty(shape, dtype)
    size = -(-nbytes // GRANULE) * GRANULE
    raw = None
    with _lock:
        for i in range(len(_free) - 1, -1, -1):  # newest first: its pages are the warmest
            if _free[i][0] == size:
                raw = _free.pop(i)[1]
                _stats["hits"] += 1
                break
        else:
            _stats["misses"] += 1
    if raw is None:
        raw = np.empty(size + ALIGN, np.uint8)
    return np.asarray(_Owner(raw, shape, dtype))


def empty_aligned(shape, dtype):
    """:func:`empty` whose data starts on a cache line (``ALIGN`` bytes) at any size (glibc
    aligns small blocks to 16 bytes only): for kernels that stream whole lines."""
    arr = empty(shape, dtype)
    if arr.ctypes.data % ALIGN == 0:
        return arr
    dtype = np.dtype(dtype)
    raw = np.empty(arr.nbytes + ALIGN, np.uint8)
    off = _aligned(raw) - raw.ctypes.data
    return raw[off:off + arr.nbytes].view(dtype).reshape(arr.shape)


def clear_output_cache():
    """Free every kept output block (the memory goes back to the OS)."""
    with _lock:
        _free.clear()


def output_cache_info():
    """``{"blocks", "bytes", "budget_bytes", "hits", "misses"}`` of the output cache."""
    with _lock:
        return {"blocks": len(_free), "bytes": sum(n for n, _ in _free), "budget_bytes": _budget, **_stats}


def set_output_cache_limit(megabytes):
    """Set the byte budget of the output cache in MiB (0 disables it); returns the old value."""
    global _budget
    if isinstance(megabytes, bool) or not isinstance(megabytes, (int, np.integer)) or megabytes < 0:
        raise ValueError(f"megabytes: expected an integer >= 0, got {megabytes!r}")
    with _lock:
        old = _budget >> 20
        _budget = int(megabytes) << 20
        _evict()
    return old


def _after_fork_in_child():
    # a lock held by another thread at fork time would never be released in the child
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
