"""Random spec models and inputs for tests (seeded, plain Python floats).

Values are drawn so that nothing overflows at test sizes: weights ~ N(0, 0.5^2),
S4/compact diagonal multipliers in (-1, 1), selective rates A in (0.1, 2).
"""

from __future__ import annotations

from nbssm.spec.models import DiagonalS4Spec, DiagonalSSM, MambaBlockSpec, SelectiveMambaBlockSpec


def _mat(rng, r, c, scale=0.5):
    return (rng.standard_normal((r, c)) * scale).tolist()


def _vec(rng, n, scale=0.5):
    return (rng.standard_normal(n) * scale).tolist()


def random_ssm(rng, dim):
    return DiagonalSSM(dim, rng.uniform(-1, 1, dim).tolist(), _vec(rng, dim), _vec(rng, dim), _vec(rng, dim))


def random_s4(rng, input_dim, state_dim, output_dim):
    return DiagonalS4Spec(input_dim, state_dim, output_dim, _mat(rng, input_dim, state_dim),
                          _mat(rng, state_dim, output_dim), random_ssm(rng, state_dim))


def random_compact(rng, input_dim, state_dim, output_dim):
    return MambaBlockSpec(input_dim, state_dim, output_dim, _mat(rng, input_dim, state_dim),
                          _mat(rng, input_dim, state_dim), _mat(rng, state_dim, output_dim),
                          random_ssm(rng, state_dim))


def random_selective(rng, input_dim, inner_dim, state_dim, output_dim, conv_width):
    e, n = inner_dim, state_dim
    return SelectiveMambaBlockSpec(
        input_dim, e, n, output_dim, conv_width,
        x_proj=_mat(rng, input_dim, e), z_proj=_mat(rng, input_dim, e),
        conv_kernel=_mat(rng, conv_width, e), conv_bias=_vec(rng, e),
        dt_proj=_mat(rng, e, e), dt_bias=_vec(rng, e),
        A=rng.uniform(0.1, 2.0, (e, n)).tolist(), b_proj=_mat(rng, e, n), c_proj=_mat(rng, e, n),
        d_skip=_vec(rng, e), out_proj=_mat(rng, e, output_dim),
    )


def random_inputs(rng, length, dim, scale=1.0):
    return (rng.standard_normal((length, dim)) * scale).tolist()
