"""The checkpoint-layout mixer and its conversion to ``SelectiveMambaBlockSpec`` (spec section 4.4).

1. Over the reals: the conversion applied to *symbolic* checkpoint weights gives a spec block
   whose runner (``run_list`` on the sympy context) equals, after ``expand``, the mixer's
   real-arithmetic formula written below from the checkpoint semantics (transformers'
   ``slow_forward``: x then z rows of in_proj, taps oldest first, low-rank Δ, ``A = -exp(A_log)``,
   ``D·u`` after the C-sum, gate ``silu(z)``).
2. In floats: ``nbssm.models.MambaMixer.forward`` (nbssm.ops kernels, BLAS projections) against the spec's
   double runner on the converted block, fresh and continued from a carried state.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from nbssm.models import MambaMixer, spec_fields
from nbssm.spec.context import DOUBLE, SYMPY
from nbssm.spec.models import SelectiveMambaBlockSpec
from tolerances import max_rel_err, tol


def _sym_array(name, shape):
    flat = [sympy.Symbol(f"{name}_{i}", real=True) for i in range(int(np.prod(shape)))]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


def _mixer_formula(p, xs, W, R, N):
    """The checkpoint mixer over the reals, token by token (zero left padding, zero state)."""
    sig = lambda v: 1 / (1 + sympy.exp(-v))
    E = p["A_log"].shape[0]
    window = [[sympy.Integer(0)] * E for _ in range(W)]  # oldest first
    h = [[sympy.Integer(0)] * N for _ in range(E)]
    outs = []
    for x in xs:
        xz = [sum(p["in_proj"][j, i] * x[i] for i in range(len(x))) for j in range(2 * E)]
        window = window[1:] + [xz[:E]]
        u = []
        for d in range(E):
            c = sum(window[k][d] * p["conv_weight"][d, k] for k in range(W)) + p["conv_bias"][d]
            u.append(c * sig(c))
        xdbl = [sum(p["x_proj"][j, e] * u[e] for e in range(E)) for j in range(R + 2 * N)]
        y = []
        for d in range(E):
            pre = sum(p["dt_proj_weight"][d, r] * xdbl[r] for r in range(R)) + p["dt_proj_bias"][d]
            delta = sympy.log(1 + sympy.exp(pre))
            for n in range(N):
                A = -sympy.exp(p["A_log"][d, n])
                h[d][n] = sympy.exp(delta * A) * h[d][n] + (delta * xdbl[R + n]) * u[d]
            yd = sum(h[d][n] * xdbl[R + N + n] for n in range(N)) + p["D"][d] * u[d]
            z = xz[E + d]
            y.append(yd * (z * sig(z)))
        outs.append([sum(p["out_proj"][o, d] * y[d] for d in range(E)) for o in range(p["out_proj"].shape[0])])
    return h, outs


def test_conversion_is_exact_over_the_reals():
    Dm, E, N, W, R, T = 2, 2, 1, 2, 1, 2
    shapes = {"in_proj": (2 * E, Dm), "conv_weight": (E, W), "conv_bias": (E,), "x_proj": (R + 2 * N, E),
              "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A_log": (E, N), "D": (E,), "out_proj": (Dm, E)}
    p = {k: _sym_array(k, s) for k, s in shapes.items()}
    xs = [[sympy.Symbol(f"x_{t}_{i}", real=True) for i in range(Dm)] for t in range(T)]
    fields = spec_fields(p, N, R, exp=np.vectorize(sympy.exp, otypes=[object]))
    spec = SelectiveMambaBlockSpec(input_dim=Dm, inner_dim=E, state_dim=N, output_dim=Dm, conv_width=W,
                                   **{k: v.tolist() for k, v in fields.items()})
    H0 = [[sympy.Integer(0)] * N for _ in range(E)]
    H_spec, ys_spec = spec.run_list(SYMPY, H0, xs)
    H_ref, ys_ref = _mixer_formula(p, xs, W, R, N)
    for t in range(T):
        for o in range(Dm):
            assert sympy.expand(ys_spec[t][o] - ys_ref[t][o]) == 0, (t, o)
    for d in range(E):
        for n in range(N):
            assert sympy.expand(H_spec[d][n] - H_ref[d][n]) == 0


def test_conversion_detects_a_wrong_tap_order():
    """Negative control: the same comparison with the taps not reversed is not an identity."""
    Dm, E, N, W, R = 1, 1, 1, 2, 1
    shapes = {"in_proj": (2 * E, Dm), "conv_weight": (E, W), "conv_bias": (E,), "x_proj": (R + 2 * N, E),
              "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A_log": (E, N), "D": (E,), "out_proj": (Dm, E)}
    p = {k: _sym_array(k, s) for k, s in shapes.items()}
    xs = [[sympy.Symbol(f"x_{t}", real=True)] for t in range(2)]
    fields = spec_fields(p, N, R, exp=np.vectorize(sympy.exp, otypes=[object]))
    fields["conv_kernel"] = p["conv_weight"].T  # the bug: taps oldest first
    spec = SelectiveMambaBlockSpec(input_dim=Dm, inner_dim=E, state_dim=N, output_dim=Dm, conv_width=W,
                                   **{k: v.tolist() for k, v in fields.items()})
    _, ys_spec = spec.run_list(SYMPY, [[sympy.Integer(0)]], xs)
    _, ys_ref = _mixer_formula(p, xs, W, R, N)
    assert sympy.expand(ys_spec[0][0] - ys_ref[0][0]) != 0


def _spec_outputs(spec, x, H0=None, L0=None):
    E, N = spec.inner_dim, spec.state_dim
    H0 = [[0.0] * N for _ in range(E)] if H0 is None else H0.tolist()
    H, ys = spec.run_list_aux(DOUBLE, H0, [] if L0 is None else L0, x.tolist())
    return np.array(H).reshape(E, N), np.array(ys).reshape(len(x), spec.output_dim)


@pytest.mark.parametrize("dims", [(4, 6, 3, 4, 2), (3, 5, 2, 2, 1), (5, 20, 4, 3, 2), (2, 3, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mixer_refines_spec_runner(dims, dtype):
    Dm, E, N, W, R = dims
    rng = np.random.default_rng(sum(dims))
    mixer = MambaMixer.random(Dm, E, N, W, R, seed=7, dtype=dtype)
    spec = MambaMixer.random(Dm, E, N, W, R, seed=7, dtype=np.float64).to_spec()
    x = rng.normal(0, 1, (2, 9, Dm))
    rtol = tol("lm_mixer_spec_float64" if dtype == np.float64 else "lm_mixer_spec_float32")
    out, state = mixer.forward(x.astype(dtype))
    h = state.ssm[0]
    assert out.dtype == dtype and out.shape == (2, 9, Dm)
    for b in range(2):
        H_spec, ys = _spec_outputs(spec, x[b])
        assert max_rel_err(out[b], ys) < rtol
        assert max_rel_err(h[b], H_spec) < rtol
    # continue from the carried state: the spec's runListAux with the history newest first
    split = 4
    _, s1 = mixer.forward(x[:, :split].astype(dtype))
    h1, hist1 = s1.layers[0]
    out2, _ = mixer.forward(x[:, split:].astype(dtype), s1)
    for b in range(2):
        L0 = [list(map(float, row)) for row in hist1[b][::-1]]
        _, ys = _spec_outputs(spec, x[b, split:], h1[b].astype(np.float64), L0)
        assert max_rel_err(out2[b], ys) < rtol


def test_mixer_validates_parameters():
    m = MambaMixer.random(4, 8, 2, 3, 1, seed=0)
    p = m.parameters()
    with pytest.raises(ValueError, match=r"x_proj: expected shape \(5, 8\)"):
        MambaMixer(**dict(p, x_proj=p["x_proj"][:-1]))
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        MambaMixer(**p, dtype=np.int32)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, length, 4\)"):
        m.forward(np.zeros((1, 3, 5), np.float32))
