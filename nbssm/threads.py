"""How many threads nbssm's kernels and the BLAS library use.

One policy covers both: :func:`set_threads` (or the :func:`threads` context manager)
sets Numba's thread count for kernels called from the calling Python thread (Numba's
setting is per Python thread) and, when ``threadpoolctl`` is installed (the ``threads``
extra), the BLAS thread pools of the process. Without ``threadpoolctl`` the BLAS
threads follow ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS``,
which ``import nbssm`` sets from ``NBSSM_NUM_THREADS`` when nbssm is imported before
numpy (values already set by the user are kept).

The default is the number of CPUs this process may run on (``os.sched_getaffinity``,
as Numba counts them), or ``NBSSM_NUM_THREADS`` when set. Results are bitwise the same
for every thread count: the kernels split their work independently of it.

Examples
--------
>>> import nbssm
>>> with nbssm.threads.threads(1):
...     pass  # kernels and BLAS run on one thread here
"""

from __future__ import annotations

import contextlib
import operator
import os

import numba

from . import _config

__all__ = [
    "add_threads_argument",
    "apply_threads_argument",
    "default_threads",
    "get_threads",
    "max_threads",
    "set_threads",
    "threads",
]

_blas_limit = None  # threadpoolctl limiter currently applied by set_threads


def max_threads() -> int:
    """The most threads a kernel may use in this process (Numba's pool size)."""
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]  # set at runtime


_affinity = _config.affinity


def _check(n, name: str = "threads", top: int | None = None) -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"{name}: expected a whole number of threads, got {n!r}")
    n = operator.index(n)
    top = max_threads() if top is None else top
    if not 1 <= n <= top:
        raise ValueError(f"{name}: expected a number of threads between 1 and {top} "
                         f"(the CPUs this process may use), got {n}")
    return n


def default_threads() -> int:
    """``NBSSM_NUM_THREADS`` if set, else the CPUs this process may use (at most :func:`max_threads`)."""
    if _config.NUM_THREADS is not None:
        return min(_config.NUM_THREADS, max_threads())
    return min(_affinity(), max_threads())


def _set_blas(n: int) -> None:
    global _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _blas_limit = threadpool_limits(limits=n, user_api="blas")


def get_threads() -> int:
    """The number of threads kernels called from this Python thread use."""
    from numba.np.ufunc import parallel

    if not parallel._is_initialized:
        return default_threads() if _config.NUM_THREADS is not None else max_threads()
    return int(numba.get_num_threads())


def set_threads(n: int) -> int:
    """Use ``n`` threads for kernels (this Python thread) and BLAS (the process).

    Parameters
    ----------
    n : int
        Between 1 and :func:`max_threads`.

    Returns
    -------
    int
        The previous setting (from :func:`get_threads`).

    Raises
    ------
    TypeError
        ``n`` is not a whole number.
    ValueError
        ``n`` is outside ``1 .. max_threads()``.
    """
    n = _check(n)
    previous = get_threads()
    numba.set_num_threads(n)
    _set_blas(n)
    return previous


@contextlib.contextmanager
def threads(n: int):
    """Context manager: run the block with ``n`` threads, then restore the previous setting.

    The previous setting is restored also when the block raises.
    """
    previous = set_threads(n)
    try:
        yield n
    finally:
        set_threads(previous)


def _apply_environment() -> None:
    """Apply ``NBSSM_NUM_THREADS`` (called once, when the kernels are imported)."""
    if _config.NUM_THREADS is None:
        return
    n = _check(_config.NUM_THREADS, "NBSSM_NUM_THREADS", min(_affinity(), max_threads()))
    from numba.np.ufunc import parallel

    if not parallel._is_initialized:
        # process-wide (every Python thread): shrink the pool before it starts
        numba.config.NUMBA_NUM_THREADS = n  # type: ignore[attr-defined]
        parallel.NUM_THREADS = n
    else:
        numba.set_num_threads(n)
    _set_blas(n)


def _parse(text: str) -> int:
    import argparse

    try:
        return _check(int(text), "--threads")
    except (TypeError, ValueError) as exc:
        msg = str(exc) if "between" in str(exc) else f"--threads: expected a whole number of threads, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_threads_argument(parser) -> None:
    """Add ``--threads N`` to an :class:`argparse.ArgumentParser` (validated while parsing)."""
    parser.add_argument("--threads", type=_parse, default=None, metavar="N",
                        help=f"threads for kernels and BLAS (default: NBSSM_NUM_THREADS, else the CPUs this "
                             f"process may use, here {default_threads()})")


def apply_threads_argument(args) -> None:
    """Apply a parsed ``--threads`` (nothing when it was not given)."""
    n = getattr(args, "threads", None)
    if n is not None:
        set_threads(n)


class _CallableModule(type(os)):  # type: ignore[misc]  # the module type, made callable
    """``nbssm.threads(n)`` is the same as ``nbssm.threads.threads(n)``."""

    def __call__(self, n):
        return threads(n)


import sys as _sys  # noqa: E402 - the module object is made callable once it is complete

_sys.modules[__name__].__class__ = _CallableModule
