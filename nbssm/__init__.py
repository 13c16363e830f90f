"""nbssm: selective state-space models on multicore CPUs with Numba.

Importing nbssm compiles nothing: public names are resolved lazily on first
access, and kernels compile on first call (or ahead of time with
:func:`nbssm.warmup`), with Numba's on-disk cache enabled.

Public API
----------
Kernels (``nbssm.ops``): ``linear_scan``, ``selective_scan``, ``causal_conv1d``;
``warmup`` compiles every kernel ahead of time.
Runtime models (``nbssm.models``): ``DiagonalS4``, ``CompactMamba``, ``SelectiveMamba``.
Language models (``nbssm.lm``): ``MambaLM``.
Paper objects: ``signature`` (module ``nbssm.signatures``), linear CDE scans (``nbssm.cde``).
Numpy references of the kernels: ``nbssm.reference``; the tolerance table: ``nbssm.tolerances``.
Specification mirror: ``nbssm.spec``.
Threads: ``threads`` (context manager), ``set_threads``, ``get_threads``.

Glossary (the names every public function uses; mamba_ssm's vocabulary)
-----------------------------------------------------------------------
``b`` batch, ``l`` length, ``d`` channels (``d_inner`` in a Mamba block, ``d_model`` outside
it), ``n`` state size (``d_state``), ``w`` convolution width, ``r`` ``dt_rank``.
Sequences are ``(b, l, d)``; a 2-D ``(l, d)`` array is one sequence, with 2-D outputs and
unbatched states.

``u``: the scan input. ``delta``: the step size, ``softplus(delta + delta_bias)`` when
``delta_softplus``. ``A``: the diagonal transition as used in ``exp(delta * A)``, negative
for decay (a checkpoint's ``-exp(A_log)``; the Lean spec stores the positive rates ``-A``).
``B``, ``C``: input and readout, ``(b, l, n)`` for the selective scan. ``D``: the skip
connection ``D * u``. ``z``: the gate, ``y * silu(z)``. Convolution weights are ``(d, w)``,
oldest tap first. ``initial_state=`` / ``return_final_state=``: the state carried in and out
of every sequence operation (the convolution's state is its history ``(b, w-1, d)``);
``model.initial_state(batch)`` is a model's zero state (:class:`nbssm.ModelState`).

Errors read ``"<argument or file>: expected <what>, got <actual>"`` (``TypeError`` for types
and dtypes, ``ValueError`` for values and shapes); inputs are never modified.
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
    "selective_scan_checkpointed": "nbssm.ops",
    "selective_scan_vjp": "nbssm.ops",
    "linear_scan_vjp": "nbssm.ops",
    "causal_conv1d_vjp": "nbssm.ops",
    "warmup": "nbssm._warmup",
    "DiagonalS4": "nbssm.models",
    "CompactMamba": "nbssm.models",
    "SelectiveMamba": "nbssm.models",
    "ModelState": "nbssm.models",
    "MambaLM": "nbssm.lm",
    "signature": "nbssm.signatures",
    "linear_cde_scan": "nbssm.cde",
    "diagonal_cde_scan": "nbssm.cde",
    "threads": "nbssm.threads",
    "set_threads": "nbssm.threads",
    "get_threads": "nbssm.threads",
    "MambaMixer": "nbssm.models",
    "StateMismatchError": "nbssm.state",
    "StateFileError": "nbssm.state",
}

# deprecated public names: name -> (module, replacement named in the warning)
_DEPRECATED = {
    "clear_output_cache": ("nbssm._memory", "the ops' out= argument or NBSSM_OUTPUT_CACHE_MB"),
    "output_cache_info": ("nbssm._memory", "the ops' out= argument or NBSSM_OUTPUT_CACHE_MB"),
    "set_output_cache_limit": ("nbssm._memory", "the ops' out= argument or NBSSM_OUTPUT_CACHE_MB"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def _deprecated_module(old: str, new: str, names: tuple) -> None:
    """Register ``old`` in ``sys.modules`` as a deprecated lazy alias of module ``new``.

    ``nbssm.signature`` is the function; its module is ``nbssm.signatures``. A module
    registered under the old dotted name keeps ``from nbssm.signature import word_index``
    working for one release without a file ``nbssm/signature.py``, whose import would rebind
    the package attribute ``nbssm.signature`` to the module.
    """
    import sys
    import types
    import warnings

    alias = types.ModuleType(old, f"Deprecated alias of :mod:`{new}`.")

    def forward(attr):
        if attr not in names:  # tools probing modules get a plain AttributeError, no warning
            raise AttributeError(f"module {old!r} has no attribute {attr!r}")
        warnings.warn(f"module {old} is deprecated, import from {new}", DeprecationWarning, stacklevel=2)
        return getattr(import_module(new), attr)

    alias.__getattr__ = forward
    alias.__all__ = list(names)
    sys.modules.setdefault(old, alias)


_deprecated_module("nbssm.signature", "nbssm.signatures", ("signature", "signature_length", "word_index"))


def __getattr__(name):
    if name in _DEPRECATED:
        import warnings

        module, instead = _DEPRECATED[name]
        warnings.warn(f"nbssm.{name} is deprecated (the output cache is private); use {instead}",
                      DeprecationWarning, stacklevel=2)
        return getattr(import_module(module), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbssm' has no attribute {name!r}")
    value = import_module(module) if module == f"nbssm.{name}" else getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
