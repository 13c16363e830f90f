"""Choosing the next token from logits: greedy, temperature and top-k sampling with a seed."""

from __future__ import annotations

import numpy as np


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Pick one token per row.

    Parameters
    ----------
    logits : (b, V) float array
    temperature : float
        0 selects greedily (``argmax``; the lowest id among ties). Otherwise tokens are drawn
        from ``softmax(logits / temperature)``, restricted to the ``top_k`` largest logits when
        ``top_k`` is given (ties at the boundary: the lower ids are kept).
    top_k : int, optional
        At least 1.
    rng : numpy.random.Generator
        Required when ``temperature > 0``; the only source of randomness (one uniform per row,
        in row order), so a seeded generator reproduces a run.

    Returns
    -------
    (b,) int64 token ids.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"sample_next: logits must have shape (batch, vocab) with vocab > 0, got {logits.shape}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"sample_next: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"sample_next: top_k must be a positive integer or None, got {top_k!r}")
    if temperature == 0:
        return np.argmax(logits, axis=1).astype(np.int64)
    if rng is None:
        raise ValueError("sample_next: sampling with temperature > 0 needs rng (a numpy Generator)")
    b, V = logits.shape
    scaled = logits.astype(np.float64) / float(temperature)
    if top_k is not None and top_k < V:
        k = int(top_k)
        # stable order: largest first, ties by lower id
        order = np.argsort(-scaled, axis=1, kind="stable")[:, :k]
        mask = np.full_like(scaled, -np.inf)
        np.put_along_axis(mask, order, np.take_along_axis(scaled, order, axis=1), axis=1)
        scaled = mask
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    p = np.exp(scaled)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(b) * cdf[:, -1]
    out = np.empty(b, dtype=np.int64)
    for i in range(b):
        out[i] = min(int(np.searchsorted(cdf[i], u[i], side="right")), V - 1)
        while p[i, out[i]] == 0:  # never land on a masked token through rounding
            out[i] -= 1
    return out
