"""nbssm: selective state-space models on multicore CPUs with Numba.

Importing nbssm compiles nothing: public names are resolved lazily on first
access, and kernels compile on first call (or ahead of time with
:func:`nbssm.warmup`), with Numba's on-disk cache enabled.

Public API
----------
Kernels (``nbssm.ops``): ``linear_scan``, ``selective_scan``, ``causal_conv1d``, ``warmup``.
Runtime models (``nbssm.models``): ``DiagonalS4``, ``CompactMamba``, ``SelectiveMamba``.
Language models (``nbssm.lm``): ``MambaLM``.
Paper objects: ``signature`` (``nbssm.signature``), linear CDE scans (``nbssm.cde``).
Memory: ``output_cache_info``, ``clear_output_cache``, ``set_output_cache_limit``
(large kernel outputs are recycled; see ``nbssm._memory``).
Specification mirror: ``nbssm.spec``.
"""

import os
from importlib import import_module

# OpenBLAS's worker threads spin for about 2**28 cycles after every matrix product, on the
# same cores that nbssm's Numba kernels need next: a scan right after a projection then runs
# 2x slower (measured: 38 ms vs 15 ms for one mamba-130m layer's scan on 2 cores). With a
# timeout of 2**4 cycles they sleep at once; BLAS speed itself is unchanged. OpenBLAS reads
# this when it is loaded (with numpy), so it takes effect when nbssm is imported before numpy
# (and always in the `nbssm` command); a value set by the user is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# NBSSM_NUM_THREADS sizes Numba's thread pool and, when threadpoolctl is not installed, the
# BLAS threads: both read these variables when they load, so this takes effect when nbssm is
# imported before numba and numpy (nbssm.threads applies it again, later); a value set by the
# user is kept. Values outside 1..CPUs are left alone here and refused by nbssm.threads.
_n = os.environ.get("NBSSM_NUM_THREADS", "").strip()
if _n.isdigit() and 1 <= int(_n) <= len(getattr(os, "sched_getaffinity", lambda _: range(os.cpu_count() or 1))(0)):
    for _name in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, _n)
    del _name
del _n

__version__ = "0.1.0"

# public name -> module that defines it (resolved lazily, PEP 562)
_LAZY = {
    "linear_scan": "nbssm.ops",
    "selective_scan": "nbssm.ops",
    "causal_conv1d": "nbssm.ops",
    "warmup": "nbssm.ops",
    "DiagonalS4": "nbssm.models",
    "CompactMamba": "nbssm.models",
    "SelectiveMamba": "nbssm.models",
    "ModelState": "nbssm.models",
    "MambaLM": "nbssm.lm",
    "signature": "nbssm.signature",
    "linear_cde_scan": "nbssm.cde",
    "diagonal_cde_scan": "nbssm.cde",
    "clear_output_cache": "nbssm._memory",
    "output_cache_info": "nbssm._memory",
    "set_output_cache_limit": "nbssm._memory",
    "threads": "nbssm.threads",
    "set_threads": "nbssm.threads",
    "get_threads": "nbssm.threads",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbssm' has no attribute {name!r}")
    value = import_module(module) if module == f"nbssm.{name}" else getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
