"""Choosing the next token from logits: greedy, temperature and top-k sampling with a seed.

NaN/Inf policy: a row of logits holding NaN or ``+inf``, or holding no finite value, raises
:class:`NonFiniteLogitsError` (a ``ValueError``) naming the row; ``-inf`` entries are allowed
(they mark tokens that can never be chosen).
"""

from __future__ import annotations

import math
import numbers

import numpy as np


class NonFiniteLogitsError(ValueError):
    """Logits that cannot be sampled: NaN, ``+inf``, or a row with no finite value."""


def check_sampling_args(temperature: float = 0.0, top_k: int | None = None, seed=None,
                        where: str = "sample_next") -> tuple[float, int | None]:
    """Validate the sampling options before any work starts.

    Parameters
    ----------
    temperature : real number
        Finite and >= 0 (0 is greedy).
    top_k : int or None
        An integer >= 1 (numpy integers accepted; floats and bools are not), or None.
    seed : int, numpy.random.Generator or None
        A seed must be an integer >= 0.
    where : str
        Prefix of the error messages.

    Returns
    -------
    (float, int or None)
        ``temperature`` and ``top_k`` normalised.

    Raises
    ------
    TypeError
        A wrong type (a string, a bool, a float ``top_k``).
    ValueError
        A value out of range.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"{where}: temperature: expected a real number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{where}: temperature: expected a finite number >= 0, got {temperature!r}")
    if top_k is not None:
        if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, numbers.Integral):
            raise TypeError(f"{where}: top_k: expected a positive integer or None, got {top_k!r}")
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"{where}: top_k: expected a positive integer or None, got {top_k!r}")
    if seed is not None and not isinstance(seed, np.random.Generator):
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{where}: seed: expected an integer >= 0 or None, got {seed!r}")
        if seed < 0:
            raise ValueError(f"{where}: seed: expected an integer >= 0 or None, got {seed!r}")
    return temperature, top_k


def check_logits(logits, where: str = "sample_next") -> np.ndarray:
    """``logits`` as a (b, V) real array, or an error (see the module's NaN/Inf policy)."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{where}: logits: expected shape (batch, vocab) with vocab > 0, got {logits.shape}")
    if logits.dtype == bool or not (np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)):
        raise TypeError(f"{where}: logits: expected a real (float or integer) array, got dtype {logits.dtype}")
    if np.issubdtype(logits.dtype, np.floating):
        bad = np.isnan(logits) | (logits == np.inf)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise NonFiniteLogitsError(
                f"{where}: logits: expected finite values (or -inf), got {logits[row, col]} at row {row}, token {col} "
                "(the model's activations overflowed or its weights are not finite)")
        empty = ~np.isfinite(logits).any(axis=1)
        if empty.any():
            raise NonFiniteLogitsError(f"{where}: logits: row {int(np.argmax(empty))} is -inf everywhere (no token can be chosen)")
    return logits


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Pick one token per row.

    Parameters
    ----------
    logits : (b, V) real array
        Finite values, or ``-inf`` for tokens never to choose; NaN, ``+inf`` or a row without a
        finite value raise :class:`NonFiniteLogitsError`.
    temperature : float
        0 selects greedily (``argmax``; the lowest id among ties). Otherwise tokens are drawn
        from ``softmax(logits / temperature)``, restricted to the ``top_k`` largest logits when
        ``top_k`` is given (ties at the boundary: the lower ids are kept). Any finite
        temperature > 0 works (tiny ones behave like greedy, huge ones like uniform).
    top_k : int, optional
        At least 1 (values >= V keep every token).
    rng : numpy.random.Generator
        Required when ``temperature > 0``; the only source of randomness (one uniform per row,
        in row order), so a seeded generator reproduces a run.

    Returns
    -------
    (b,) int64 token ids.
    """
    temperature, top_k = check_sampling_args(temperature, top_k)
    logits = check_logits(logits)
    if temperature == 0:
        return np.argmax(logits, axis=1).astype(np.int64)
    if rng is None:
        raise ValueError("sample_next: sampling with temperature > 0 needs rng (a numpy Generator)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_next: rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    b, V = logits.shape
    x = logits.astype(np.float64)
    if top_k is not None and top_k < V:
        # stable order: largest first, ties by lower id
        order = np.argsort(-x, axis=1, kind="stable")[:, :top_k]
        masked = np.full_like(x, -np.inf)
        np.put_along_axis(masked, order, np.take_along_axis(x, order, axis=1), axis=1)
        x = masked
    # shift first (every entry <= 0 and finite or -inf), then scale: no overflow for any temperature
    with np.errstate(over="ignore", under="ignore"):
        scaled = (x - x.max(axis=1, keepdims=True)) / temperature
        p = np.exp(scaled)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(b) * cdf[:, -1]
    out = np.empty(b, dtype=np.int64)
    for i in range(b):
        out[i] = min(int(np.searchsorted(cdf[i], u[i], side="right")), V - 1)
        while p[i, out[i]] == 0:  # never land on a masked token through rounding
            out[i] -= 1
    return out
