"""An independent numpy reference of the Mamba-1 language model, for ``nbssm verify``.

Written from the model's definition (transformers' ``MambaForCausalLM`` / mamba_ssm's
``MambaLMHeadModel``, the block as in spec section 4.4), one token at a time, in float64,
calling nothing of :mod:`nbssm.lm`, :mod:`nbssm.models` or :mod:`nbssm.ops`. It reads the
checkpoint tensors in the Hugging Face naming directly (``backbone.embeddings.weight``,
``backbone.layers.N.norm.weight``, ``backbone.layers.N.mixer.*``, ``backbone.norm_f.weight``,
``lm_head.weight``), so that the verify rows can feed it exactly the values a checkpoint
stores (after any bf16/fp16 rounding) and compare with what the loader and ``MambaLM`` make
of the same file.

Definition, per token ``t`` and layer (``Dm`` d_model, ``E`` d_inner, ``N`` d_state, ``W``
d_conv, ``R`` dt_rank)::

    hn = norm.weight * x / sqrt(mean(x**2) + eps)             # RMSNorm (Dm,)
    p, z = in_proj.weight[:E] @ hn, in_proj.weight[E:] @ hn    # (E,), (E,)
    L = [p, L_prev[0], ..., L_prev[W-2]]                       # history, newest first
    c = conv1d.bias + sum_k L[k] * conv1d.weight[:, 0, W-1-k]  # tap W-1 multiplies the newest
    u = c * sigmoid(c)                                         # SiLU
    dt_low, B, C = split(x_proj.weight @ u, [R, N, N])
    delta = softplus(dt_proj.weight @ dt_low + dt_proj.bias)   # (E,)
    H = exp(-delta[:, None] * exp(A_log)) * H + delta[:, None] * B[None, :] * u[:, None]
    y = (H @ C + D * u) * (z * sigmoid(z))
    x = x + out_proj.weight @ y                                # residual
    logits = head @ (norm_f.weight * x / sqrt(mean(x**2) + eps))

with ``head = embeddings`` when the head is tied. The state of a layer is ``(H (E, N),
history)``; :func:`reference_lm` returns the history oldest first ``(W-1, E)`` (the layout of
:class:`nbssm.state.ModelState`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_lm"]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


def _softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)  # log(1 + exp(v)) without overflow


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x) + eps))


def reference_lm(tensors: dict, n_layer: int, eps: float, tied: bool, ids, state: list | None = None):
    """Logits of one token sequence and the final per-layer state.

    Parameters
    ----------
    tensors : dict
        Checkpoint tensors in the Hugging Face naming (any float dtype; used as float64).
        ``conv1d.bias`` may be absent (zeros); ``lm_head.weight`` is read only when untied.
    n_layer : int
    eps : float
        RMSNorm epsilon.
    tied : bool
        Whether the head is the embedding matrix.
    ids : sequence of int, length l
    state : list of (H (E, N), history (W-1, E) oldest first), optional
        Per-layer state to continue from (zeros when None).

    Returns
    -------
    logits : ndarray, shape (l, V)
    state : list of (H, history oldest first) per layer
    """
    f = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    embed = f["backbone.embeddings.weight"]                               # (V, Dm)
    head = embed if tied else f["lm_head.weight"]                          # (V, Dm)
    layers = []
    for i in range(n_layer):
        q = f"backbone.layers.{i}.mixer."
        A_log = f[q + "A_log"]                                             # (E, N)
        E = A_log.shape[0]
        kernel = f[q + "conv1d.weight"][:, 0, :]                           # (E, W) oldest tap first
        layers.append({
            "norm": f[f"backbone.layers.{i}.norm.weight"],
            "in": f[q + "in_proj.weight"], "kernel": kernel,
            "bias": f.get(q + "conv1d.bias", np.zeros(E)),
            "x": f[q + "x_proj.weight"], "dt_w": f[q + "dt_proj.weight"], "dt_b": f[q + "dt_proj.bias"],
            "rate": np.exp(A_log), "D": f[q + "D"], "out": f[q + "out_proj.weight"],
        })
    hs, hists = [], []
    for i, lay in enumerate(layers):
        E, W = lay["kernel"].shape
        N = lay["rate"].shape[1]
        if state is None:
            hs.append(np.zeros((E, N)))
            hists.append([np.zeros(E) for _ in range(max(W - 1, 0))])      # newest first
        else:
            H0, hist0 = state[i]
            hs.append(np.array(H0, dtype=np.float64))
            hists.append([np.array(r, dtype=np.float64) for r in np.asarray(hist0)[::-1]])
    logits = []
    for tok in ids:
        x = embed[int(tok)].copy()                                         # (Dm,)
        for i, lay in enumerate(layers):
            E, W = lay["kernel"].shape
            N = lay["rate"].shape[1]
            R = lay["dt_w"].shape[1]
            hn = _rms(x, lay["norm"], eps)
            p = lay["in"][:E] @ hn                                         # (E,)
            z = lay["in"][E:] @ hn                                         # (E,)
            L = [p] + hists[i]                                             # newest first, W entries
            c = lay["bias"].copy()
            for k in range(W):
                c = c + L[k] * lay["kernel"][:, W - 1 - k]
            u = c * _sigmoid(c)                                            # (E,)
            xdbl = lay["x"] @ u                                            # (R + 2N,)
            delta = _softplus(lay["dt_w"] @ xdbl[:R] + lay["dt_b"])        # (E,)
            Bt, Ct = xdbl[R:R + N], xdbl[R + N:R + 2 * N]                 # (N,), (N,)
            H = np.exp(-delta[:, None] * lay["rate"]) * hs[i] + delta[:, None] * Bt[None, :] * u[:, None]
            hs[i] = H
            hists[i] = L[:max(W - 1, 0)]
            y = (H @ Ct + lay["D"] * u) * (z * _sigmoid(z))                # (E,)
            x = x + lay["out"] @ y
        logits.append(head @ _rms(x, f["backbone.norm_f.weight"], eps))
    V = head.shape[0]
    out_state = [(hs[i], np.array(hists[i][::-1]).reshape(len(hists[i]), hs[i].shape[0])) for i in range(n_layer)]
    return (np.array(logits).reshape(len(logits), V), out_state)
