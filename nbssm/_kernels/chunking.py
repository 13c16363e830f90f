"""The rule of the chunked scans' carry: when the summary of a chunk may be used.

Spec: :func:`nbssm.spec.algorithms.ieee_carry_ok` (the same rule, on doubles).
"""

from __future__ import annotations

from .. import _config
from ._jit import njit


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def carry_ok(p, q, h, c, tiny, huge):
    """True when the carried state ``c = p * h + q`` may stand for re-running the chunk from ``h``.

    ``p, q``: the chunk's summary; ``h``: the state entering the chunk;
    ``tiny, huge``: the dtype's smallest normal and largest finite numbers.
    The summary is used when ``p`` is a normal finite number and ``q``, ``h``
    and ``c`` are finite; otherwise (a product of transitions that overflowed,
    underflowed or is 0, an infinite or NaN summary, state or result) the
    kernel re-runs the chunk's transitions one by one from ``h``, so that
    ``inf * 0`` or ``0 * inf`` never appears where the sequential scan has
    none. NaN fails every comparison, so it always re-runs.
    """
    ap = abs(p)
    ah = abs(h)
    # an underflowed product (|p| < tiny) times a moderate state contributes less than
    # tiny * 2**52 ~ 1e-292 in either order of evaluation: the summary stands for the re-run
    return ((ap >= tiny and ap <= huge) or (ap < tiny and ah <= 4503599627370496.0)) \
        and abs(q) <= huge and ah <= huge and abs(c) <= huge


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def summaries_carry(p, q, h, k0, tiny, huge):
    """``(state, k)``: ``h`` carried over the summaries ``p[k], q[k]`` (1-D, one lane) for
    ``k = k0, k0 + 1, ...`` while :func:`carry_ok` lets them stand; ``k`` is the first chunk that
    must be re-run from its data (``len(p)`` when none), ``state`` the state entering it."""
    nch = p.shape[0]
    for k in range(k0, nch):
        c = p[k] * h + q[k]
        if not carry_ok(p[k], q[k], h, c, tiny, huge):
            return h, k
        h = c
    return h, nch
