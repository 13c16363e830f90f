"""A local dask cluster sized for nbssm's kernels."""

from __future__ import annotations


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, processes: bool = True, **kwargs):
    """A ``dask.distributed.LocalCluster`` whose workers run Numba and BLAS on
    ``threads_per_worker`` threads each (no oversubscription of the cores).

    Parameters
    ----------
    n_workers, threads_per_worker : int
    processes : bool
        Worker processes (default) or threads of this process.
    **kwargs
        Passed to ``LocalCluster`` (e.g. ``dashboard_address=None``, ``memory_limit``).

    Returns
    -------
    distributed.LocalCluster
        Use ``distributed.Client(cluster)``; close both when done.
    """
    from distributed import LocalCluster

    threads = str(int(threads_per_worker))
    env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    env.update(kwargs.pop("env", {}))
    kwargs.setdefault("dashboard_address", None)
    if processes:
        kwargs["env"] = env
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes, **kwargs)
