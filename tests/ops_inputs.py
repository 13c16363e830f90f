"""Seeded random inputs for the kernel tests, as tuples: wrappers of :func:`nbssm.reference.random_inputs`."""

from __future__ import annotations

import numpy as np

from nbssm.reference import random_inputs


def selective_inputs(seed, batch, length, channels, nstate, dtype=np.float64, *, extras=True):
    """Keyword arguments of ``selective_scan`` (with ``initial_state`` when ``extras``)."""
    return random_inputs("selective", (batch, length, channels, nstate), dtype, seed, extras=extras,
                         initial_state=extras)


def linear_inputs(seed, batch, length, channels, dtype=np.float64, with_state=True):
    """``(a, b, initial_state or None)``."""
    kw = random_inputs("linear", (batch, length, channels), dtype, seed, initial_state=with_state)
    return kw["a"], kw["b"], kw.get("initial_state")


def conv_inputs(seed, batch, length, channels, width, dtype=np.float64):
    """``(x, weight (d, w), bias (d,), initial_state (b, w-1, d))``."""
    kw = random_inputs("conv", (batch, length, channels, width), dtype, seed)
    return kw["x"], kw["weight"], kw["bias"], kw["initial_state"]
