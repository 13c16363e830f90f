"""A local dask cluster sized for nbssm's kernels."""

from __future__ import annotations

import os

#: the variable dask's nannies set in every worker (``distributed.nanny.pre-spawn-environ``)
_TRIM = "MALLOC_TRIM_THRESHOLD_"


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, processes: bool = True,
                  trim_memory: bool = False, worker_saturation: float = float("inf"), **kwargs):
    """A ``dask.distributed.LocalCluster`` whose workers run Numba and BLAS on
    ``threads_per_worker`` threads each (no oversubscription of the cores).

    Parameters
    ----------
    n_workers, threads_per_worker : int
    processes : bool
        Worker processes (default) or threads of this process.
    trim_memory : bool
        Keep dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` in the worker processes
        (default False: the variable is left unset, unless this process's environment or
        ``env`` sets it). Setting it turns off glibc's adaptive ``mmap`` threshold, so every
        freed array over 128 KiB goes back to the operating system and the next one is
        page-faulted in again: the worker's kernels that allocate an output per call (a time
        block of a scan, a layer's activations) ran up to 2x slower with it (a 2^21-step
        block of ``linear_scan``: 15.6 ms with it, 6.0 ms without; ``benchmarks/dask_scaling.md``).
        Workers that must hand memory back to the system between tasks keep it with True.
    worker_saturation : float
        The scheduler's ``distributed.scheduler.worker-saturation`` (dask's default 1.1):
        how many root tasks a worker is sent per thread before the rest wait on the
        scheduler. With dask's default, a one-thread worker gets its next small task only
        after reporting the last one, a round trip per task (on a 2-core machine 26 trivial
        tasks took 211 ms, 55 ms with ``inf``, the default here: every ready task is sent
        at once). Lower it for graphs with many large root tasks that must not all be
        loaded at once.
    **kwargs
        Passed to ``LocalCluster`` (e.g. ``dashboard_address=None``, ``memory_limit``, ``env``).

    Returns
    -------
    distributed.LocalCluster
        Use ``distributed.Client(cluster)``; close both when done.
    """
    import dask
    from distributed import LocalCluster

    threads = str(int(threads_per_worker))
    env = {"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    env.update(kwargs.pop("env", {}))
    kwargs.setdefault("dashboard_address", None)
    if processes:
        kwargs["env"] = env
    overrides: dict[str, float | None] = {"distributed.scheduler.worker-saturation": float(worker_saturation)}
    if not trim_memory and _TRIM not in env and _TRIM not in os.environ:
        overrides[f"distributed.nanny.pre-spawn-environ.{_TRIM}"] = None
    with dask.config.set(overrides):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                            **kwargs)
