"""Property tests of the selective-scan VJP: random shapes (lengths past several chunk
boundaries, channel counts around the 32-lane blocks), random flags, against the numpy
reverse-mode reference and directional central differences."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import nbssm.ops as O
from nbssm import reference as R
from nbssm.tolerances import max_rel_err, tol

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), length=st.integers(0, 40), channels=st.sampled_from([1, 3, 31, 32, 33, 65]),
       nstate=st.integers(1, 5), chunk=st.integers(1, 9), extras=st.booleans(), init=st.booleans(),
       seed=st.integers(0, 2**16))
def test_selective_vjp_vs_reference_and_fd(batch, length, channels, nstate, chunk, extras, init, seed):
    kw = R.random_inputs("selective", (batch, length, channels, nstate), seed=seed, extras=extras,
                         initial_state=init)
    rng = np.random.default_rng(seed + 1)
    gy = rng.standard_normal((batch, length, channels))
    gT = rng.standard_normal((batch, channels, nstate))
    g = O.selective_scan_vjp(gy, **kw, grad_final_state=gT, chunk_length=chunk)
    r = R.selective_scan_vjp_ref(gy, **kw, grad_final_state=gT)
    for name in NAMES:
        if r[name] is None:
            assert getattr(g, name) is None
            continue
        assert max_rel_err(getattr(g, name), r[name]) <= tol("vjp_float64_vs_reference"), name
    if length == 0 or channels > 33:
        return
    eps = 1e-6
    for name in NAMES:
        if r[name] is None:
            continue
        x = np.asarray(kw[name], np.float64)
        v = rng.standard_normal(x.shape)

        def loss(xx, name=name):
            y, hT = R.selective_scan_ref(**{**kw, name: xx}, return_final_state=True)
            return float(np.sum(gy * y) + np.sum(gT * hT))

        fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
        got = float(np.sum(getattr(g, name) * v))
        scale = max(abs(fd), float(np.sum(np.abs(getattr(g, name) * v))), 1.0)
        assert abs(got - fd) <= tol("vjp_finite_difference") * scale, name
