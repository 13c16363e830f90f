"""The one place nbssm's kernels get their Numba decorators from.

Every kernel module imports ``njit`` and ``prange`` from here, never from numba
directly, so that caching policy (where compiled code is stored, whether it is
still valid) and the threading policy (what a parallel kernel does in a forked
child, how many threads it uses) are decided in one module.
"""

from numba import njit, prange

__all__ = ["njit", "prange"]
