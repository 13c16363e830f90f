"""Slow, obviously correct signature reference for the tests (pure Python, any scalar type).

A truncated signature is a dict ``word -> value`` over words (tuples of 0-based letters) of
length 1..depth; level 0 is the constant 1. A linear segment with increment ``delta`` has
``S^w = prod_j delta[w_j] / len(w)!``; Chen's identity ``(S (x) R)^w = sum_{w = uv} S^u R^v``
glues segments. Works on floats and on sympy expressions alike (no numpy arithmetic).
"""

from __future__ import annotations

import itertools
import math


def words(dim, depth):
    """All words of length 1..depth, level by level, lexicographic within a level."""
    out = []
    for k in range(1, depth + 1):
        out.extend(itertools.product(range(dim), repeat=k))
    return out


def segment_signature(delta, depth):
    """Signature of one linear segment with increment ``delta`` (a sequence of scalars)."""
    dim = len(delta)
    sig = {}
    for w in words(dim, depth):
        v = 1
        for c in w:
            v = v * delta[c]
        sig[w] = v / math.factorial(len(w))
    return sig


def chen(s, r, dim, depth):
    """Chen product ``s (x) r`` (both dicts with implicit level 0 = 1)."""
    out = {}
    for w in words(dim, depth):
        acc = s[w] + r[w]  # splits (w, ()) and ((), w)
        for cut in range(1, len(w)):
            acc = acc + s[w[:cut]] * r[w[cut:]]
        out[w] = acc
    return out


def signature_dict(path, depth):
    """Signature of a sampled path (list of points, each a sequence of scalars)."""
    dim = len(path[0])
    sig = {w: 0 for w in words(dim, depth)}
    for a, b in zip(path[:-1], path[1:]):
        delta = [b[i] - a[i] for i in range(dim)]
        sig = chen(sig, segment_signature(delta, depth), dim, depth)
    return sig


def signature_flat(path, depth):
    """The reference signature as a flat list in iisignature's order (levels 1..depth)."""
    path = [list(map(float, p)) for p in path]
    sig = signature_dict(path, depth)
    return [sig[w] for w in words(len(path[0]), depth)]
