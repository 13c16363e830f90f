"""Helpers shared by the dask entry points (imports dask lazily)."""

from __future__ import annotations

import numpy as np


def require_dask():
    """Import ``dask`` and ``dask.array`` or raise an ImportError naming the extra."""
    try:
        import dask  # noqa: F401
        import dask.array as da
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nbssm.dask needs dask: pip install 'nbssm[dask]'") from e
    return da


def as_dask(x, name: str, ndim: int | None = None):
    """``x`` as a dask array (a numpy array becomes one chunk)."""
    da = require_dask()
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if not isinstance(x, da.Array):
        x = np.asarray(x)
        x = da.from_array(x, chunks=x.shape) if x.ndim else da.from_array(x)
    if ndim is not None and x.ndim != ndim:
        hint = "; for a single sequence pass x[None]" if ndim == 3 and x.ndim == 2 else ""
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}{hint}")
    return x


def blocks_of(x):
    """``x.to_delayed()`` that keeps what the blocks stand on: the graph is not optimised, so
    the blocks of a persisted array stay ``distributed`` futures in every graph built on them
    (optimising culls the futures away, and once the caller drops the persisted array its
    blocks are released before the graph runs: "lost dependencies")."""
    return x.to_delayed(optimize_graph=False)


def small(x, name: str):
    """A small parameter (``A``, ``D``, a weight, a state) as a numpy array (computed if dask)."""
    da = require_dask()
    if x is None:
        return None
    if isinstance(x, da.Array):
        return np.asarray(x.compute())
    return np.asarray(x)


def time_chunks(length: int, n_blocks: int, chunk_length: int) -> tuple:
    """Time chunks for ``n_blocks`` blocks of whole kernel chunks.

    Every block but the last holds a multiple of ``chunk_length`` steps, so that
    the blocks start on the kernel's chunk boundaries (multiples of
    ``chunk_length`` from position 0): the requirement of the bitwise equality
    of the time-parallel scans with ``strategy="chunked"``.

    Parameters
    ----------
    length : int
        T >= 0.
    n_blocks : int
        Wanted number of blocks (fewer when there are fewer chunks).
    chunk_length : int
        The kernel's chunk length Lc >= 1.

    Returns
    -------
    tuple of int
        Block lengths summing to ``length`` (``(0,)`` for an empty sequence).
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length: expected an integer >= 1, got {chunk_length}")
    if n_blocks < 1:
        raise ValueError(f"n_blocks: expected an integer >= 1, got {n_blocks}")
    if length == 0:
        return (0,)
    n_chunks = -(-length // chunk_length)
    n_blocks = min(n_blocks, n_chunks)
    base, extra = divmod(n_chunks, n_blocks)
    per = [base + (1 if j < extra else 0) for j in range(n_blocks)]
    sizes = [p * chunk_length for p in per]
    sizes[-1] = length - sum(sizes[:-1])
    return tuple(sizes)
