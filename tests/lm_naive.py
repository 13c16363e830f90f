"""A slow, independent reference for the Mamba language model (tests only).

Plain numpy, token by token, written from transformers' ``MambaForCausalLM.slow_forward``
semantics and the checkpoint tensor names, sharing no code with ``nbssm.lm``. Every
intermediate has its shape in a comment. Used by ``tests/test_lm_*.py`` as the oracle for
models the committed fixture does not cover (random models, mutations, float64).
"""

from __future__ import annotations

import numpy as np


def _softplus(x):
    # PyTorch's softplus: x itself above 20
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def _silu(x):
    return x / (1 + np.exp(-x))


def naive_mixer(t: dict, prefix: str, x: np.ndarray, conv_hist=None, ssm=None):
    """One mixer over a sequence, token by token.

    t : checkpoint tensors (float64); x : (l, Dm); conv_hist : (W-1, E) oldest first; ssm : (E, N).
    Returns out (l, Dm), conv_hist, ssm.
    """
    w_in = t[prefix + "in_proj.weight"]                 # (2E, Dm)
    conv_w = t[prefix + "conv1d.weight"][:, 0, :]       # (E, W)
    E, W = conv_w.shape
    conv_b = t.get(prefix + "conv1d.bias", np.zeros(E))  # (E,)
    w_x = t[prefix + "x_proj.weight"]                   # (R+2N, E)
    w_dt = t[prefix + "dt_proj.weight"]                 # (E, R)
    b_dt = t[prefix + "dt_proj.bias"]                   # (E,)
    A = -np.exp(t[prefix + "A_log"])                    # (E, N)
    Dsk = t[prefix + "D"]                               # (E,)
    w_out = t[prefix + "out_proj.weight"]               # (Dm, E)
    N = A.shape[1]
    R = w_dt.shape[1]
    window = np.zeros((W, E)) if conv_hist is None else np.concatenate([conv_hist, np.zeros((1, E))])  # (W, E)
    h = np.zeros((E, N)) if ssm is None else ssm.copy()  # (E, N)
    outs = []
    for tok in x:
        xz = w_in @ tok                                  # (2E,)
        xi, z = xz[:E], xz[E:]
        window = np.concatenate([window[1:], xi[None]])  # (W, E), oldest first
        u = _silu((window * conv_w.T).sum(0) + conv_b)   # (E,)
        xdbl = w_x @ u                                   # (R+2N,)
        dt = _softplus(w_dt @ xdbl[:R] + b_dt)           # (E,)
        Bt, Ct = xdbl[R:R + N], xdbl[R + N:]             # (N,), (N,)
        h = np.exp(dt[:, None] * A) * h + (dt[:, None] * Bt[None]) * u[:, None]  # (E, N)
        y = h @ Ct + u * Dsk                              # (E,)
        y = y * _silu(z)
        outs.append(w_out @ y)                            # (Dm,)
    return np.array(outs), window[1:], h


def naive_lm(t: dict, n_layer: int, ids: np.ndarray, eps: float, tied: bool, state=None):
    """Logits (l, V) of one sequence and the final state [(conv_hist, ssm) per layer]."""
    emb = t["backbone.embeddings.weight"]                # (V, Dm)
    head = emb if tied else t["lm_head.weight"]          # (V, Dm)
    hidden = emb[np.asarray(ids)]                        # (l, Dm)
    new_state = []
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        var = np.mean(hidden ** 2, axis=-1, keepdims=True)
        hn = t[p + "norm.weight"] * (hidden / np.sqrt(var + eps))
        ch, s = (None, None) if state is None else state[i]
        out, ch, s = naive_mixer(t, p + "mixer.", hn, ch, s)
        hidden = hidden + out
        new_state.append((ch, s))
    var = np.mean(hidden ** 2, axis=-1, keepdims=True)
    hn = t["backbone.norm_f.weight"] * (hidden / np.sqrt(var + eps))
    return hn @ head.T, new_state


def load_fixture_tensors(directory: str) -> dict:
    """The fixture's tensors as float64 (read with safetensors, independently of nbssm)."""
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(f"{directory}/model.safetensors").items()}
