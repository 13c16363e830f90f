"""Seeded random inputs for the kernel tests (shared by tests/test_ops_*.py)."""

from __future__ import annotations

import numpy as np


def selective_inputs(seed, batch, length, channels, nstate, dtype=np.float64, *, extras=True):
    """Random arguments of ``selective_scan`` in a realistic range.

    A = -exp(N(0, 0.5)) (negative, as in Mamba), delta ~ N(-1, 0.5) before softplus
    (exp of that without ``extras``, where no softplus is applied),
    everything else standard normal. Returns a dict of keyword arguments.
    """
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    kw = dict(
        u=f(batch, length, channels),
        delta=(rng.standard_normal((batch, length, channels)) * 0.5 - 1.0).astype(dtype),
        A=(-np.exp(rng.standard_normal((channels, nstate)) * 0.5)).astype(dtype),
        B=f(batch, length, nstate),
        C=f(batch, length, nstate),
    )
    if not extras:  # no softplus: the step must already be positive (a contracting recurrence)
        kw["delta"] = np.exp(kw["delta"].astype(np.float64)).astype(dtype)
    if extras:
        kw.update(
            D=f(channels),
            z=f(batch, length, channels),
            delta_bias=(rng.standard_normal(channels) * 0.1).astype(dtype),
            delta_softplus=True,
            initial_state=f(batch, channels, nstate),
        )
    return kw


def linear_inputs(seed, batch, length, channels, dtype=np.float64, with_state=True):
    """Random ``a`` in (-1, 1), ``b`` standard normal, optional initial state."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, (batch, length, channels)).astype(dtype)
    b = rng.standard_normal((batch, length, channels)).astype(dtype)
    h0 = rng.standard_normal((batch, channels)).astype(dtype) if with_state else None
    return a, b, h0


def conv_inputs(seed, batch, length, channels, width, dtype=np.float64):
    """Random ``x (b, l, d)``, ``weight (d, w)``, ``bias (d,)``, ``history (b, w-1, d)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, channels)).astype(dtype)
    w = rng.standard_normal((channels, width)).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    hist = rng.standard_normal((batch, max(width - 1, 0), channels)).astype(dtype)
    return x, w, bias, hist
