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
    return ap >= tiny and ap <= huge and abs(q) <= huge and abs(h) <= huge and abs(c) <= huge
