"""Path features on dask arrays of paths: signatures and linear-CDE final states."""

from __future__ import annotations

import numpy as np

from ._common import as_dask, require_dask, small


def _signature_block(paths, depth):
    from nbssm import signature

    return signature(paths, depth)


def signature_features(paths, depth: int):
    """Truncated signatures of a dask array of paths (``nbssm.signature`` per block).

    Parameters
    ----------
    paths : dask or numpy array, shape (n_paths, length, dim), chunked along the paths
        (time and dim are made one chunk)
    depth : int

    Returns
    -------
    dask array (n_paths, dim + ... + dim**depth), float64 (float32 for float32 paths);
    each path's row is bitwise what ``nbssm.signature`` gives on one machine.
    """
    da = require_dask()
    paths = as_dask(paths, "paths", 3)
    n, length, dim = paths.shape
    paths = paths.rechunk({1: length, 2: dim})
    siglen = sum(dim ** k for k in range(1, int(depth) + 1))
    dt = np.float32 if paths.dtype == np.float32 else np.float64
    return da.map_blocks(_signature_block, paths, int(depth), drop_axis=2, dtype=dt,
                         chunks=(paths.chunks[0], (siglen,)), meta=np.empty((0, 0), dt))


def _cde_block(domega, dxi, z0, A, B, method, order):
    from nbssm.cde import linear_cde_scan

    return linear_cde_scan(A, B, domega, dxi, z0[:, 0, :], method=method, order=order, backend="numba")


def cde_features(A, B, domega, dxi, z0, method: str = "taylor", order: int = 3):
    """Final states of the dense linear CDE (``nbssm.cde.linear_cde_scan``, numba backend)
    for a dask array of paths.

    Parameters
    ----------
    A : (dw, n, n); B : (n, dx)
        Small parameters, sent with the graph.
    domega : dask array (n_paths, T, dw); dxi : (n_paths, T, dx)
        Gate increments, chunked along the paths.
    z0 : array_like (n_paths, n)
    method, order
        As ``linear_cde_scan``.

    Returns
    -------
    dask array (n_paths, n): each row bitwise what ``linear_cde_scan(..., backend="numba")``
    gives for that path on one machine (the numba backend runs one path per thread).
    """
    da = require_dask()
    A_, B_ = small(A, "A"), small(B, "B")
    domega = as_dask(domega, "domega", 3)
    n_paths, T, dw = domega.shape
    domega = domega.rechunk({1: T, 2: dw})
    dxi = as_dask(dxi, "dxi", 3).rechunk((domega.chunks[0], (T,), (dxi.shape[2],)))
    z0 = as_dask(z0, "z0", 2)
    nstate = A_.shape[1]
    z0 = z0.rechunk((domega.chunks[0], (nstate,)))
    dt = np.float32 if domega.dtype == np.float32 else np.float64
    return da.map_blocks(_cde_block, domega, dxi[:, :, :], z0[:, None, :], A_, B_, method, int(order),
                         drop_axis=1, dtype=dt, chunks=(domega.chunks[0], (nstate,)),
                         meta=np.empty((0, 0), dt))
