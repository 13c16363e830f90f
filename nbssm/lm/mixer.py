"""The checkpoint-layout Mamba-1 block, now :class:`nbssm.models.MambaMixer` (re-exported here).

The block, its parameter table, its conversion to ``SelectiveMambaBlockSpec``
(:func:`spec_fields`) and to :class:`~nbssm.models.SelectiveMamba` live in
:mod:`nbssm.models`; this module keeps the former import path.
"""

from __future__ import annotations

import numpy as np

from ..models import MambaMixer, spec_fields
from ..models import mixer_param_shapes as param_shapes

PARAM_NAMES = MambaMixer._PARAMS

__all__ = ["PARAM_NAMES", "MambaMixer", "param_shapes", "silu", "spec_fields"]


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` elementwise (a new array of x's dtype)."""
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))
