"""Ahead-of-time compilation of every kernel family: :func:`nbssm.warmup`.

This module sits above every layer (ops, models, the language model, linear
CDEs, signatures) because it calls each of them once; nothing imports it but
the package's lazy ``nbssm.warmup`` name. Its name is private so that ``import`` of it can never
shadow the function ``nbssm.warmup``.
"""

from __future__ import annotations

import time

import numpy as np

_DTYPES = (np.float32, np.float64)


def _selective_args(dt, batch: int, length: int, chans: int, nstate: int = 2):
    """``(u, A, B, kw)``: all-ones selective-scan inputs with every optional argument present
    (``u`` serves as ``delta``, ``z`` and a cotangent, ``B`` as ``C``)."""
    u = np.ones((batch, length, chans), dtype=dt)  # (b, l, d)
    Bm = np.ones((batch, length, nstate), dtype=dt)  # (b, l, n)
    kw = dict(D=np.ones(chans, dt), z=u, delta_bias=np.ones(chans, dt), delta_softplus=True)
    return u, -np.ones((chans, nstate), dtype=dt), Bm, kw


def _scans(dt) -> None:
    """Linear and selective scans (both strategies, both selective block widths) and the convolution."""
    import numba

    from . import ops

    threads = numba.get_num_threads()
    # every block width of the selective kernel: (threads, 64 channels) picks 64, (1, 32) picks 32
    for batch, chans in ((threads, 64), (1, 32)):
        u, A, Bm, kw = _selective_args(dt, batch, 2, chans)
        ops.selective_scan(u, u, A, Bm, Bm, **kw, strategy="sequential")
    a = np.full((1, 3, 2), 0.5, dtype=dt)  # (b, l, d)
    u, A, Bm, kw = _selective_args(dt, 1, 3, 2)
    for strategy in ("sequential", "chunked"):
        ops.linear_scan(a, a, strategy=strategy, chunk_length=2)
        ops.selective_scan(u, u, A, Bm, Bm, **kw, strategy=strategy, chunk_length=2)
    ops.causal_conv1d(a, np.ones((2, 3), dtype=dt), bias=np.ones(2, dt))


def _gradients(dt) -> None:
    """The backward kernels: the checkpointing forward and the selective scan's VJP with and
    without its checkpoints, the linear scan's and the convolution's VJPs.

    Compiled by :func:`warmup` run in a process of its own, they reach later processes from
    the cache; the process that compiles the selective VJP itself runs it about 1.5x slower
    than a process that loads it (``benchmarks/results/vjp.md``).
    """
    from . import ops

    u, A, Bm, kw = _selective_args(dt, 1, 3, ops.VJP_WIDTH)
    _, _, ck = ops.selective_scan_checkpointed(u, u, A, Bm, Bm, **kw)
    ops.selective_scan_vjp(u, u, u, A, Bm, Bm, **kw)
    ops.selective_scan_vjp(u, u, u, A, Bm, Bm, checkpoints=ck, **kw)
    a = np.full((1, 3, 2), 0.5, dtype=dt)  # (b, l, d)
    ops.linear_scan_vjp(a, a, a)
    ops.causal_conv1d_vjp(a, a, np.ones((2, 3), dtype=dt), bias=np.ones(2, dt))


def _models() -> None:
    """The runtime models' projection kernels and the language model's fused decode kernel."""
    from . import models
    from .lm import MambaLM

    models.warmup()
    lm = MambaLM.random(seed=0, dtype=np.float32, d_model=4, n_layer=1, vocab_size=8, d_state=2, d_conv=2)
    lm.forward(np.zeros((1, 2), dtype=np.int64))  # prefill: BLAS + ops
    lm.step(np.zeros(1, dtype=np.int64))  # decode: the fused kernel


def _cde_and_signature() -> None:
    """Linear CDE kernels (dense and diagonal, every method) and signature kernels (both outputs)."""
    from importlib import import_module

    from . import _LAZY

    def public(name):
        # the function behind the lazy name (``nbssm.signature`` may be shadowed by its module)
        return getattr(import_module(_LAZY[name]), name)

    linear_cde_scan, diagonal_cde_scan, signature = (public(n) for n in
                                                     ("linear_cde_scan", "diagonal_cde_scan", "signature"))
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 2, 2)) * 0.1  # (dw, n, n)
    a = rng.standard_normal((2, 2)) * 0.1  # (dw, n)
    B = rng.standard_normal((2, 1))  # (n, dx)
    domega = rng.standard_normal((1, 3, 2))  # (b, T, dw)
    dxi = rng.standard_normal((1, 3, 1))  # (b, T, dx)
    z0 = np.zeros((1, 2))  # (b, n)
    for method in ("taylor", "euler"):
        linear_cde_scan(A, B, domega, dxi, z0, method=method, backend="numba", return_states=True)
    for method in ("exact", "euler"):
        diagonal_cde_scan(a, B, domega, dxi, z0, method=method, return_states=True)
    path = rng.standard_normal((3, 2))  # (length, dim)
    for stream in (False, True):
        signature(path, 2, stream=stream)


def warmup(verbose: bool = False, models: bool = True) -> dict:
    """Compile (or load from Numba's cache) every kernel nbssm has.

    Calls each public entry point once on tiny inputs, for every dtype its
    kernels are specialised on: the scans and the convolution (float32 and
    float64, both strategies, both selective block widths), the runtime
    models' projections (float32 and float64), the backward kernels (VJPs and the
    checkpointing forward, float32 and float64), the language model's prefill
    and fused decode step (float32), the linear CDE kernels and the signature
    kernels (float64, their only compute dtype). Afterwards no call of these
    entry points compiles anything.

    Parameters
    ----------
    verbose : bool
        Print the elapsed time after each family.
    models : bool
        Also compile the model-layer kernels (runtime models, language model,
        CDEs, signatures); ``False`` compiles the kernels of :mod:`nbssm.ops` only.

    Returns
    -------
    dict
        ``{"seconds": total wall time}``.
    """
    t0 = time.perf_counter()

    def done(what: str) -> None:
        if verbose:
            print(f"warmup {what}: {time.perf_counter() - t0:.2f} s")

    for dt in _DTYPES:
        _scans(dt)
        done(f"ops {np.dtype(dt).name}")
        _gradients(dt)
        done(f"gradients {np.dtype(dt).name}")
    if models:
        _models()
        done("models and language model")
        _cde_and_signature()
        done("linear CDEs and signatures")
    return {"seconds": time.perf_counter() - t0}


_DECODE_CHILD = r"""
import sys
import numpy as np
from nbssm.lm import MambaLM
weights = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
lm = MambaLM.random(seed=0, dtype=np.dtype(sys.argv[1]), weights=weights, d_model=4, n_layer=1, vocab_size=8,
                    d_state=2, d_conv=2)
lm.step(np.zeros(1, dtype=np.int64))
"""


def compile_decode_aside(dtype, weights: str | None = None):
    """Start compiling the fused decode step for ``dtype`` in a child process (into the shared cache).

    Numba compiles one function at a time per process; the decode step is independent of
    everything else a cold ``nbssm generate`` does, so on a machine with a free core the child
    fills the kernel cache with the decode step (the types of its arguments do not depend on
    the model's sizes, so a tiny random model compiles the same specialisation) while this
    process reads the checkpoint and compiles the prefill kernels (long prompts only). Returns
    the :class:`subprocess.Popen` (wait for it before the first decode step), or None when there
    is no kernel cache to share or only one CPU.

    Parameters
    ----------
    dtype : numpy dtype
        The compute dtype.
    weights : str, optional
        The storage format of the decode weights (:mod:`nbssm.lm.quant`); None: ``dtype``'s.
    """
    import os
    import subprocess
    import sys

    from ._kernels._jit import cache_directory
    from .threads import _affinity

    if cache_directory() is None or _affinity() < 2:
        return None
    try:
        return subprocess.Popen([sys.executable, "-c", _DECODE_CHILD, np.dtype(dtype).name, weights or "-"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    except OSError:
        return None


def stop_aside(aside) -> None:
    """Stop a child of :func:`compile_decode_aside` that is still running (None: nothing)."""
    if aside is not None and aside.poll() is None:
        aside.kill()
        aside.wait()


def warmup_generate(model, aside=None, prompt_length: int = 1, preload=None) -> None:
    """Compile (or load from the cache) exactly the kernels ``model.generate`` calls.

    One decode step of a tiny model of ``model``'s dtype and weight format (the decode
    kernel's specialisation does not depend on the sizes, so this costs a fraction of a step
    of ``model``), and, for a prompt longer than :data:`nbssm.lm.model.STEP_PREFILL_MAX_TOKENS`
    (prefilled by :meth:`MambaLM.forward`, not by the decode kernel), first a one-token forward
    of ``model`` itself (batch 1, the specialisations its shapes select); nothing else
    compiles. ``nbssm generate`` calls it before the prefill, so that the prefill time it
    reports excludes compiling and cache loading.

    Parameters
    ----------
    model : nbssm.lm.MambaLM
    aside : subprocess.Popen, optional
        A child compiling the decode step (:func:`compile_decode_aside`); waited for after
        the prefill kernels, so the decode step then loads from the cache.
    prompt_length : int
        The length of the prompt ``generate`` will be given.
    preload : threading.Thread, optional
        A thread of :func:`preload_decode`, joined before any kernel runs here (the tiny
        step then finds the decode kernel loaded).
    """
    from .lm.model import STEP_PREFILL_MAX_TOKENS

    ids = np.zeros((1, 1), dtype=np.int64)
    if preload is not None:
        # before any kernel runs here: two threads launching parallel kernels at once is not
        # safe on every threading layer (Numba's workqueue layer aborts)
        preload.join()
    try:
        if prompt_length > STEP_PREFILL_MAX_TOKENS:
            model.forward(ids, last_only=True)
    except BaseException:
        stop_aside(aside)
        raise
    if aside is not None:
        try:
            aside.wait(timeout=600)
        except Exception:  # noqa: BLE001  # a stuck child: compile here instead
            aside.kill()
            aside.wait()
    _tiny_step(model.dtype, model.weights)


def _tiny_step(dtype, weights) -> None:
    """One decode step of a tiny random model of ``dtype`` and weight format ``weights``.

    The decode kernel's argument types do not depend on the model's sizes: a tiny model of
    the same dtype and weight format selects the same specialisation as the real model, for a
    fraction of a step of it."""
    from .lm import MambaLM

    tiny = MambaLM.random(seed=0, dtype=dtype, weights=weights, d_model=4, n_layer=1, vocab_size=8, d_state=2,
                          d_conv=2)
    tiny.step(np.zeros(1, dtype=np.int64))


def preload_decode(dtype, weights: str | None = None):
    """Start loading the decode step of ``dtype`` and ``weights`` from the kernel cache in a
    background thread, and return the thread (pass it to :func:`warmup_generate`).

    A warm ``nbssm generate`` spends about 0.2 s loading the decode kernel and 0.3-0.8 s
    reading the checkpoint; the read waits on the disk and on the kernel filling fresh pages
    (no Python lock held), so the two overlap. A failure here is ignored: the step then
    loads or compiles in :func:`warmup_generate`, which raises what it raises.
    """
    import threading

    def load() -> None:
        try:
            _tiny_step(dtype, weights)
        except Exception:  # noqa: BLE001  # retried, and reported, by warmup_generate
            pass

    thread = threading.Thread(target=load, name="nbssm-preload-decode", daemon=True)
    thread.start()
    return thread
