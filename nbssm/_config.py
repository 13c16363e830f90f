"""Configuration, read once from environment variables (nowhere else).

NBSSM_CACHE: "0"/"false"/"no"/"off" disables the on-disk cache of compiled kernels,
"1"/"true"/"yes"/"on" enables it (default on; empty means the default). Any other value
is a ValueError.
NBSSM_CACHE_DIR: directory for the cache of compiled kernels (default: $NUMBA_CACHE_DIR/nbssm
if that is set, else the package's
``_kernels/__pycache__``, else ``$XDG_CACHE_HOME/nbssm`` or ``~/.cache/nbssm``, else a
private temporary directory, else no cache; see :mod:`nbssm._kernels._jit`). A path that
is not a writable directory falls back the same way, with one warning.
NBSSM_NUM_THREADS: threads used by kernels and BLAS (default: the CPUs this process may
run on, ``os.sched_getaffinity``); a whole number >= 1. See :mod:`nbssm.threads`.
NBSSM_OUTPUT_CACHE_MB: how many MiB of released large output buffers nbssm keeps for
reuse (default 512; 0 disables the output cache). See :mod:`nbssm._memory`.
OMP_WAIT_POLICY: set to ``PASSIVE`` when unset (a value set by the user is kept), before
Numba's OpenMP threading layer loads libgomp. With libgomp's default, a thread that reaches
the end of a parallel region spins for up to ~300000 iterations before sleeping; decode runs
three parallel regions per layer and token, so on a machine where another process holds a core
the spinning thread takes the CPU that the late thread needs, and 2 threads ran 4-30x slower
than 1 (decode of a mamba-130m-shaped model: 1.5 vs 5.4 tokens/s). Passive waiting (sleep at
once, woken by a futex) removes that; see ``benchmarks/results/contention.md``.
"""

import os

#: OpenMP wait policy for Numba's OpenMP threading layer (libgomp reads it when it is loaded,
#: at the first parallel kernel call; this module is imported before any kernel runs)
OMP_WAIT_POLICY: str = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def affinity() -> int:
    """The number of CPUs this process may run on (``os.sched_getaffinity``; the CPU count
    where that is missing). Here rather than in :mod:`nbssm.threads` so that code run before
    Numba is imported (the checkpoint read of ``nbssm generate``) can use it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}: expected one of {', '.join(_TRUE + _FALSE)}, got {raw!r}")


#: whether jitted kernels use the on-disk cache of compiled code
CACHE: bool = _flag("NBSSM_CACHE", True)

#: directory for the cache of compiled kernels ("" : the default search order)
CACHE_DIR: str = os.path.expanduser(os.environ.get("NBSSM_CACHE_DIR", "").strip())


def _whole(name: str, default, minimum: int, what: str):
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number of {what}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected a number of {what} >= {minimum}, got {value}")
    return value


def _mebibytes(name: str, default: int) -> int:
    return _whole(name, default, 0, "MiB")


#: MiB of released large output buffers kept for reuse (0: no output cache)
OUTPUT_CACHE_MB: int = _mebibytes("NBSSM_OUTPUT_CACHE_MB", 512)

#: threads for kernels and BLAS (None: the CPUs this process may use)
NUM_THREADS = _whole("NBSSM_NUM_THREADS", None, 1, "threads")
