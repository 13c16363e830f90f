"""The start every comparison of a verify row shares."""

from __future__ import annotations

import numpy as np


def float64_pair(got, want):
    """``(got, want, verdict)``: both as float64 arrays, and ``verdict`` an ``(ok, detail)`` pair
    that settles the comparison before any value is looked at (shapes differ: fails; nothing
    to compare: passes), else None."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return got, want, (False, f"shape {got.shape} != {want.shape}")
    if want.size == 0:
        return got, want, (True, "empty")
    return got, want, None
