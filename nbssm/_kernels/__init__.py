"""Numba kernels (importing this package applies NBSSM_NUM_THREADS; see :mod:`nbssm.threads`)."""

from .. import threads as _threads

_threads._apply_environment()
