"""A slow, independent reference for the Mamba language model (tests only).

Plain numpy, token by token, written from transformers' ``MambaForCausalLM.slow_forward``
semantics, sharing no code with ``nbssm``. It takes the one parameter layout of
``nbssm.models.MambaMixer`` (checkpoint orientation): per layer ``in_proj`` (2E, Dm),
``conv_weight`` (E, W), ``conv_bias`` (E,), ``x_proj`` (R+2N, E), ``dt_proj_weight`` (E, R),
``dt_proj_bias`` (E,), ``A_log`` (E, N), ``D`` (E,), ``out_proj`` (Dm, E).
:func:`checkpoint_params` reads that layout from checkpoint tensors. Every intermediate has its
shape in a comment. Used by ``tests/test_lm_*.py`` as the oracle for models the committed
fixture does not cover (random models, mutations, float64).
"""

from __future__ import annotations

import numpy as np


def _softplus(x):
    # PyTorch's softplus: x itself above 20
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def _silu(x):
    return x / (1 + np.exp(-x))


def naive_mixer(p: dict, x: np.ndarray, conv_hist=None, ssm=None):
    """One mixer over a sequence, token by token.

    p : the block's parameters (float64, layout above); x : (l, Dm);
    conv_hist : (W-1, E) oldest first; ssm : (E, N). Returns out (l, Dm), conv_hist, ssm.
    """
    w_in = p["in_proj"]                                 # (2E, Dm)
    conv_w = p["conv_weight"]                           # (E, W)
    E, W = conv_w.shape
    conv_b = p["conv_bias"]                             # (E,)
    w_x = p["x_proj"]                                   # (R+2N, E)
    w_dt = p["dt_proj_weight"]                          # (E, R)
    b_dt = p["dt_proj_bias"]                            # (E,)
    A = -np.exp(p["A_log"])                             # (E, N)
    Dsk = p["D"]                                        # (E,)
    w_out = p["out_proj"]                               # (Dm, E)
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


def naive_lm(lm: dict, ids: np.ndarray, eps: float, state=None):
    """Logits (l, V) of one sequence and the final state [(conv_hist, ssm) per layer].

    lm : ``embed`` (V, Dm), ``head`` (V, Dm), ``norm_f`` (Dm,), ``layers``: a list of
    ``(norm_weight (Dm,), mixer parameters)``.
    """
    hidden = lm["embed"][np.asarray(ids)]                # (l, Dm)
    new_state = []
    for i, (norm_w, p) in enumerate(lm["layers"]):
        var = np.mean(hidden ** 2, axis=-1, keepdims=True)
        hn = norm_w * (hidden / np.sqrt(var + eps))      # (l, Dm)
        ch, s = (None, None) if state is None else state[i]
        out, ch, s = naive_mixer(p, hn, ch, s)
        hidden = hidden + out
        new_state.append((ch, s))
    var = np.mean(hidden ** 2, axis=-1, keepdims=True)
    hn = lm["norm_f"] * (hidden / np.sqrt(var + eps))
    return hn @ lm["head"].T, new_state


def checkpoint_params(t: dict, n_layer: int, tied: bool) -> dict:
    """The :func:`naive_lm` parameters from checkpoint tensors (Hugging Face naming), as float64."""
    f = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    layers = []
    for i in range(n_layer):
        q = f"backbone.layers.{i}.mixer."
        E = f[q + "A_log"].shape[0]
        layers.append((f[f"backbone.layers.{i}.norm.weight"], {
            "in_proj": f[q + "in_proj.weight"], "conv_weight": f[q + "conv1d.weight"][:, 0, :],
            "conv_bias": f.get(q + "conv1d.bias", np.zeros(E)), "x_proj": f[q + "x_proj.weight"],
            "dt_proj_weight": f[q + "dt_proj.weight"], "dt_proj_bias": f[q + "dt_proj.bias"],
            "A_log": f[q + "A_log"], "D": f[q + "D"], "out_proj": f[q + "out_proj.weight"]}))
    emb = f["backbone.embeddings.weight"]
    return {"embed": emb, "head": emb if tied else f["lm_head.weight"], "norm_f": f["backbone.norm_f.weight"],
            "layers": layers}


def load_fixture_tensors(directory: str) -> dict:
    """The fixture's tensors as float64 (read with safetensors, independently of nbssm)."""
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(f"{directory}/model.safetensors").items()}


def naive_model_logits(m, ids: np.ndarray) -> np.ndarray:
    """:func:`naive_lm` on the weights of a ``MambaLM`` ``m`` (its arrays read as float64 in the
    one block layout): the logits of ``ids``."""
    f64 = np.float64
    lm = {"embed": m.embed.astype(f64), "head": m.head.astype(f64), "norm_f": m.norm_f.astype(f64),
          "layers": [(m.norms[i].astype(f64), {k: v.astype(f64) for k, v in blk.parameters().items()})
                     for i, blk in enumerate(m.blocks)]}
    return naive_lm(lm, ids, m.config.norm_eps)[0]
