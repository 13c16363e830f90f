"""Fused single-token decode step of a whole Mamba-1 language model.

One call advances every sequence of a batch by one token through all layers: embedding,
per layer RMSNorm -> in_proj -> causal-conv update -> SiLU -> x_proj -> Δ (low rank) ->
selective-scan step -> D skip -> SiLU gate -> out_proj -> residual, then the final RMSNorm
and the LM head. Nothing is allocated per token (work buffers come from the caller) and no
Python runs between layers.

Decode is memory-bandwidth bound (every weight is read once per token), so the projections
are matrix-vector products over weights kept in the checkpoint's ``[out, in]`` row-major
layout: one output row is one contiguous dot product, done by one thread for every sequence
of the batch while the row sits in L1. The dot products may be reassociated by the compiler
(fastmath flags ``reassoc`` and ``contract`` only: NaN and Inf still propagate) so that they
vectorise; the order of a row's sum depends only on the compiled code, never on the thread
count or the batch size, so a sequence gets the same bits alone or in any batch.

Arguments come as three named tuples, :class:`DecodeWeights` (built once per model),
:class:`DecodeState` and :class:`DecodeWork`, so the signature does not depend on the number of
layers and compiles once per dtype. Why decode has its own kernel at all (and prefill does not
use it) is explained in :mod:`nbssm.lm.model`.

Glossary: ``b`` batch, ``Dm`` d_model, ``E`` d_inner, ``N`` d_state, ``W`` d_conv,
``R`` dt_rank, ``V`` vocabulary, ``L`` layers.

Spec: one step of ``SelectiveMambaBlockSpec`` per layer (section 4.3/4.4 of the spec
document), with the low-rank Δ projection kept and the reference's order of sums
(conv bias after the taps, ``D·u`` after the C-sum), as transformers' ``slow_forward`` does.
"""

from __future__ import annotations

import math
from collections import namedtuple

from .. import _config
from ._jit import njit, prange
from .fastmath import exp_, softplus_

_FASTMATH = {"reassoc", "contract"}

#: The model's weights, stacked over layers (read-only arrays, one dtype) and the RMSNorm eps.
#: embed, head (V, Dm); norm_w (L, Dm); in_proj (L, 2E, Dm); conv_w (L, E, W); conv_b (L, E);
#: x_proj (L, R+2N, E); dt_w (L, E, R); dt_b (L, E); A (L, E, N) = -exp(A_log); D (L, E);
#: out_proj (L, Dm, E); norm_f (Dm,); eps float.
DecodeWeights = namedtuple("DecodeWeights", "embed norm_w in_proj conv_w conv_b x_proj dt_w dt_b A D out_proj "
                                            "norm_f head eps")
#: The recurrent state, updated in place: conv (L, b, W-1, E) oldest first; ssm (L, b, E, N).
DecodeState = namedtuple("DecodeState", "conv ssm")
#: Work buffers for a batch of b (see :func:`decode_work_shapes`); logits (b, V) is the output.
DecodeWork = namedtuple("DecodeWork", "logits hidden hn xz u xdbl y part_x part_o")


@njit(cache=_config.CACHE, fastmath=_FASTMATH, inline="always")
def _dot(w, x, n):
    """``sum_i w[i] * x[i]`` for contiguous 1-D ``w``, ``x`` (reassociated: vectorises)."""
    acc = w.dtype.type(0.0)
    for i in range(n):
        acc += w[i] * x[i]
    return acc


@njit(cache=_config.CACHE)
def _exp(x):
    """exp of a float32 (vectorisable polynomial) or float64 (libm) scalar."""
    return exp_(x)


@njit(cache=_config.CACHE)
def _softplus(x):
    """softplus; float32: ``x`` itself above 20 (PyTorch's threshold)."""
    return softplus_(x)


@njit(cache=_config.CACHE, fastmath=_FASTMATH, inline="always")
def _rmsnorm_rows(x, weight, eps, out):
    """``out[b] = x[b] / sqrt(mean(x[b]^2) + eps) * weight`` for every row ``b``. (b, Dm)"""
    nb, n = x.shape
    for bb in range(nb):
        ss = x.dtype.type(0.0)
        for i in range(n):
            ss += x[bb, i] * x[bb, i]
        scale = x.dtype.type(1.0) / math.sqrt(ss / n + eps)
        for i in range(n):
            out[bb, i] = weight[i] * (x[bb, i] * scale)


#: channels per work chunk of the fused layer step. Chunk boundaries depend only on d_inner,
#: never on the thread count, so the partial sums (and the bits) do not either.
CHUNK = 128


@njit(cache=_config.CACHE, parallel=True, fastmath=_FASTMATH)
def _layer_step(hidden, norm_w, eps, in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, A_neg, Dskip, out_proj,
                hist, ssm, hn, xz, u, xdbl, y, part_x, part_o):
    """Advance one layer by one token (in place on ``hidden``, ``hist``, ``ssm``).

    hidden (b, Dm) residual stream; hist (b, W-1, E) the previous W-1 conv inputs, oldest
    first; ssm (b, E, N). Work buffers: hn (b, Dm), xz (b, 2E), u (b, E), xdbl (b, R+2N),
    y (b, E), part_x (n_chunks, b, R+2N), part_o (n_chunks, b, Dm).

    Two parallel regions over fixed channel chunks: (1) in_proj rows of the chunk's x and z
    channels, conv update, SiLU, partial x_proj sums; (2) Δ, scan step, D skip, gate, partial
    out_proj sums. The partial sums are reduced serially in chunk order.
    """
    nb = hidden.shape[0]
    dm = hidden.shape[1]
    e_dim = conv_w.shape[0]
    width = conv_w.shape[1]
    n_state = A_neg.shape[1]
    rank = dt_w.shape[1]
    n_x = x_proj.shape[0]
    n_chunks = part_x.shape[0]
    one = hidden.dtype.type(1.0)
    zero = hidden.dtype.type(0.0)

    _rmsnorm_rows(hidden, norm_w, eps, hn)
    for c in prange(n_chunks):
        d0 = c * CHUNK
        d1 = min(d0 + CHUNK, e_dim)
        for bb in range(nb):
            # in_proj rows of this chunk (x part and z part)                 (b, 2E)
            for d in range(d0, d1):
                xz[bb, d] = _dot(in_proj[d], hn[bb], dm)
                xz[bb, e_dim + d] = _dot(in_proj[e_dim + d], hn[bb], dm)
            # causal conv update (taps oldest first, the last on the current token) + SiLU
            for d in range(d0, d1):
                x_new = xz[bb, d]
                acc = zero
                for k in range(width - 1):
                    acc += hist[bb, k, d] * conv_w[d, k]
                acc += x_new * conv_w[d, width - 1]
                acc += conv_b[d]
                for k in range(width - 2):
                    hist[bb, k, d] = hist[bb, k + 1, d]
                if width > 1:
                    hist[bb, width - 2, d] = x_new
                u[bb, d] = acc / (one + _exp(-acc))
            # partial x_proj over this chunk's channels                       (R+2N,)
            for j in range(n_x):
                part_x[c, bb, j] = _dot(x_proj[j, d0:d1], u[bb, d0:d1], d1 - d0)
    for bb in range(nb):
        for j in range(n_x):
            acc = zero
            for c in range(n_chunks):
                acc += part_x[c, bb, j]
            xdbl[bb, j] = acc
    for c in prange(n_chunks):
        d0 = c * CHUNK
        d1 = min(d0 + CHUNK, e_dim)
        for bb in range(nb):
            # Δ (low rank), the scan step, the D skip and the gate
            for d in range(d0, d1):
                s = zero
                for r in range(rank):
                    s += dt_w[d, r] * xdbl[bb, r]
                dt = _softplus(s + dt_b[d])
                ud = u[bb, d]
                acc = zero
                for n in range(n_state):
                    h = ssm[bb, d, n] * _exp(dt * A_neg[d, n]) + (dt * xdbl[bb, rank + n]) * ud
                    ssm[bb, d, n] = h
                    acc += h * xdbl[bb, rank + n_state + n]
                zz = xz[bb, e_dim + d]
                y[bb, d] = (acc + ud * Dskip[d]) * (zz / (one + _exp(-zz)))
            # partial out_proj over this chunk's channels                     (Dm,)
            for j in range(dm):
                part_o[c, bb, j] = _dot(out_proj[j, d0:d1], y[bb, d0:d1], d1 - d0)
    for bb in range(nb):
        for j in range(dm):
            acc = zero
            for c in range(n_chunks):
                acc += part_o[c, bb, j]
            hidden[bb, j] += acc


def decode_work_shapes(batch: int, d_model: int, d_inner: int, d_state: int, dt_rank: int, vocab_size: int) -> dict:
    """Shapes of the :class:`DecodeWork` buffers for a batch of ``batch`` sequences."""
    b, n_chunks = batch, -(-d_inner // CHUNK)
    return {"logits": (b, vocab_size), "hidden": (b, d_model), "hn": (b, d_model), "xz": (b, 2 * d_inner),
            "u": (b, d_inner), "xdbl": (b, dt_rank + 2 * d_state), "y": (b, d_inner),
            "part_x": (n_chunks, b, dt_rank + 2 * d_state), "part_o": (n_chunks, b, d_model)}


@njit(cache=_config.CACHE, parallel=True, fastmath=_FASTMATH)
def decode_step(tokens, weights, state, work):
    """One token for every sequence through the whole model; writes ``work.logits`` (b, V).

    Parameters
    ----------
    tokens : (b,) int64, each in [0, V)
    weights : DecodeWeights
    state : DecodeState
        Updated in place.
    work : DecodeWork
        Work buffers of the batch size (:func:`decode_work_shapes`); ``work.logits`` is the output.
    """
    w, s, k = weights, state, work
    nb = tokens.shape[0]
    n_layer = w.in_proj.shape[0]
    for bb in range(nb):
        k.hidden[bb, :] = w.embed[tokens[bb]]
    for layer in range(n_layer):
        _layer_step(k.hidden, w.norm_w[layer], w.eps, w.in_proj[layer], w.conv_w[layer], w.conv_b[layer],
                    w.x_proj[layer], w.dt_w[layer], w.dt_b[layer], w.A[layer], w.D[layer], w.out_proj[layer],
                    s.conv[layer], s.ssm[layer], k.hn, k.xz, k.u, k.xdbl, k.y, k.part_x, k.part_o)
    _rmsnorm_rows(k.hidden, w.norm_f, w.eps, k.hn)
    head = w.head
    hn = k.hn
    logits = k.logits
    n_vocab = head.shape[0]
    dm = head.shape[1]
    for j in prange(n_vocab):
        for bb in range(nb):
            logits[bb, j] = _dot(head[j], hn[bb], dm)
