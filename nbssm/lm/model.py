"""``MambaLM``: a Mamba-1 language model for CPU inference from numpy, built on the model layer.

Embedding -> ``n_layer`` x (RMSNorm -> :class:`~nbssm.models.MambaMixer` -> residual add) ->
RMSNorm -> LM head (tied to the embedding or not, as the config says), as in transformers'
``MambaForCausalLM`` and ``mamba_ssm``'s ``MambaLMHeadModel``. The blocks are model-layer
:class:`~nbssm.models.MambaMixer` objects (checkpoint layout, ``to_spec()``), holding read-only
views of the model's layer-stacked weights; the state is the one
:class:`~nbssm.state.ModelState` (a stack of per-layer states, fingerprinted with a digest of
every weight).

Why two paths run the same model (prefill and decode)
-----------------------------------------------------
This is the one place the split is explained; the code elsewhere points here.

- :meth:`MambaLM.forward` (prefill, any length) calls each block's
  :meth:`~nbssm.models.MambaMixer.mix`: the projections are numpy matrix products (BLAS) over
  all ``batch x length`` rows at once, and the sequence kernels are :mod:`nbssm.ops`
  (``causal_conv1d``, ``selective_scan``). A long prompt is compute bound and a blocked BLAS
  GEMM is the fastest way to do its projections; the ops kernels are parallel over channels.
- :meth:`MambaLM.step` (decode, one token per sequence) is one fused Numba kernel for the
  whole model (:mod:`nbssm._kernels.decode`). A single token is memory-bandwidth bound (every
  weight is read once per token) and dominated by per-call overhead: going through numpy and
  the ops for each of the ~10 operations of 24 layers costs more than the arithmetic. The
  kernel streams each weight row once in its checkpoint ``[out, in]`` layout, allocates
  nothing per token and is bitwise batch-invariant (a sequence gets the same bits alone or in
  any batch).

They agree within rounding (the projections sum in different orders); the tolerances are in
``tests/tolerances.py`` and the checks in ``tests/test_lm_model.py`` and
``tests/test_lm_fixture.py``.

Short prompts (:meth:`MambaLM.prefill`, hence :meth:`MambaLM.generate`): a prompt of at most
:data:`STEP_PREFILL_MAX_TOKENS` tokens is prefilled by the decode kernel, one token at a time,
instead of :meth:`MambaLM.forward`. Generation needs the decode kernel anyway, so a first
``generate`` on a short prompt compiles (or loads from the kernel cache) that one kernel and
not the prefill path's scan and convolution kernels as well (the largest part of a cold start),
and a few tokens cost about as much either way (each pass reads every weight once). The rule
depends only on the prompt lengths, never on what is compiled, so the same call gives the same
bits in every process; the result is the decode path's (within ``lm_decode_vs_prefill_abs`` of
:meth:`forward`, bitwise batch-invariant). :meth:`forward` always runs the prefill path.

Input shapes: token ids are ``(batch, length)``; a 1-D array of ids is one sequence (its
logits come back as ``(length, vocab)`` and its state has batch 1). :meth:`MambaLM.step` takes
``(batch,)`` ids, or one int for one sequence.

Threads: one model may be used from several Python threads at once. Decode work buffers are
kept per thread (and per batch size), the prefill scratch is per thread, weights are
read-only, and every call returns new arrays; a state is not shared unless the caller shares
it (``step(..., inplace=True)`` writes the state it is given).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np

from ..models import MambaMixer
from ..state import LazyDigest, ModelState, weights_digest
from .config import MambaLMConfig
from .sampling import check_sampling_args, sample_next

__all__ = ["STEP_PREFILL_MAX_TOKENS", "Generation", "MambaLM", "rms_norm"]

#: prompts of at most this many tokens are prefilled by the decode kernel, token by token (see
#: "Short prompts" above): up to this length the cold start of ``generate`` compiles one kernel
STEP_PREFILL_MAX_TOKENS = 8

#: default tile of :meth:`MambaLM.token_log_probs`: positions x vocabulary rows (a 2 MB float32
#: tile; 64 x 4096 tiles made the head's GEMM 1.5x slower on a 2-core EPYC, 256 x 2048 is as fast
#: as one whole GEMM)
TLP_ROWS = 256
TLP_VOCAB_TILE = 2048


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _tiled_log_probs(model, hn: np.ndarray, targets: np.ndarray, rows: int, vocab_tile: int) -> np.ndarray:
    """``log_softmax(hn @ head.T)[i, targets[i]]`` in float64, the head in tiles (see token_log_probs).

    Vocabulary tiles outside (each head slice read, or dequantized, once), positions inside.
    Per position a running maximum ``m`` (a logit, so exact in the model's dtype) and a float64
    sum ``s`` of ``exp(logit - m)``; the exponentials of a tile are taken in the model's dtype
    (``logit - m <= 0``, so each is in [0, 1] with its dtype's relative rounding) and summed
    in float64. The target's logit is picked before the tile is overwritten.
    """
    n = hn.shape[0]
    V = model.config.vocab_size
    m = np.full(n, -np.inf)
    s = np.zeros(n)
    picked = np.empty(n)
    buf = np.empty((min(rows, n), min(vocab_tile, V)), hn.dtype)
    for v0 in range(0, V, vocab_tile):
        v1 = min(v0 + vocab_tile, V)
        wt = model._head_tile(v0, v1).T                                        # (Dm, vt)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            t = buf[:r1 - r0, :v1 - v0]
            np.matmul(hn[r0:r1], wt, out=t)                                    # (r, vt) logits
            tg = targets[r0:r1]
            sel = np.nonzero((tg >= v0) & (tg < v1))[0]
            picked[r0 + sel] = t[sel, tg[sel] - v0]
            new = np.maximum(m[r0:r1], t.max(axis=1))
            t -= new.astype(t.dtype)[:, None]
            np.exp(t, out=t)
            s[r0:r1] = s[r0:r1] * np.exp(m[r0:r1] - new) + t.sum(axis=1, dtype=np.float64)
            m[r0:r1] = new
    return picked - (m + np.log(s))

_STACKED = {
    # stacked name -> checkpoint suffix of each layer's tensor
    "norm_w": "norm.weight",
    "in_proj": "mixer.in_proj.weight",
    "conv_w": "mixer.conv1d.weight",
    "conv_b": "mixer.conv1d.bias",
    "x_proj": "mixer.x_proj.weight",
    "dt_w": "mixer.dt_proj.weight",
    "dt_b": "mixer.dt_proj.bias",
    "A_log": "mixer.A_log",
    "D": "mixer.D",
    "out_proj": "mixer.out_proj.weight",
}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """``weight * (x / sqrt(mean(x**2, -1) + eps))`` over the last axis (a new array)."""
    r = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + x.dtype.type(eps))
    return weight * (x * r.astype(x.dtype, copy=False))


def _stack_rows(parts: list) -> np.ndarray:
    """``np.stack(parts)``, without the copy when ``parts`` are the consecutive rows of one
    buffer that :func:`nbssm.lm.loading.load_checkpoint` allocated for them (never a caller's
    own array: that one is copied, so later writes to it cannot change the model)."""
    from .loading import LAYER_BUFFERS

    first: np.ndarray = np.asarray(parts[0])
    found = first.base
    if not isinstance(found, np.ndarray) or LAYER_BUFFERS.get(id(found)) is not found:
        return np.ascontiguousarray(np.stack(parts))
    base = cast(np.ndarray, found)
    if base.flags.c_contiguous and base.flags.writeable and base.dtype == first.dtype \
            and base.shape == (len(parts),) + first.shape:
        start, step = base.__array_interface__["data"][0], base.strides[0]
        if all(isinstance(p, np.ndarray) and p.base is base and p.dtype == base.dtype and p.shape == base.shape[1:]
               and p.__array_interface__["data"][0] == start + i * step for i, p in enumerate(parts)):
            return base
    return np.ascontiguousarray(np.stack(parts))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _check_weights(weights, dtype: np.dtype) -> str:
    """The storage format name for ``weights=`` (None: the compute dtype)."""
    from .quant import FORMATS

    if weights is None:
        return dtype.name
    if not isinstance(weights, str) or weights not in FORMATS:
        raise ValueError(f"weights: expected one of {sorted(FORMATS)} or None, got {weights!r}")
    if weights in ("float32", "float64"):
        if weights != dtype.name:
            raise ValueError(f"weights={weights!r} needs dtype {weights}, got dtype {dtype.name}")
    elif dtype != np.float32:
        raise ValueError(f"weights={weights!r} needs the float32 compute dtype, got dtype {dtype.name}")
    return weights


def _check_scales(tensors: dict, scales: dict, error) -> None:
    """int8 tensors have their ``.scale`` companions, of shape (rows, ceil(n / 32)), finite and >= 0."""
    from .quant import QBLOCK

    for name, v in tensors.items():
        v = np.asarray(v)
        if v.dtype == np.int8 and name not in scales:
            raise error(f"tensor {name!r} is int8 but has no {name + '.scale'!r} (q8 scales)")
    for name, s in scales.items():
        v = tensors.get(name)
        if v is None or np.asarray(v).dtype != np.int8:
            raise error(f"tensor {name + '.scale'!r}: scales given for {name!r}, which is not an int8 tensor")
        shape = np.shape(v)
        want = shape[:-1] + (-(-shape[-1] // QBLOCK),)
        s = np.asarray(s)
        if s.shape != want:
            raise error(f"tensor {name + '.scale'!r}: expected shape {want} (one scale per {QBLOCK} inputs of "
                        f"each row of {shape}), found {s.shape}")
        if s.dtype.kind != "f" or not np.all(np.isfinite(s)) or np.any(s < 0):
            raise error(f"tensor {name + '.scale'!r}: scales must be finite floats >= 0")


class Generation:
    """An iterator over generated tokens, as they come.

    Yields an ``int`` per step for a single prompt, or a (b,) int64 array for a batch.
    After (or during) iteration, :attr:`state` is the model state after the prompt and every
    token yielded so far, :attr:`logits` the logits that predict the next one, and
    :attr:`tokens_per_second` the decode rate (prefill excluded).
    """

    def __init__(self, model: MambaLM, logits, state, steps, temperature, top_k, seed, eos_token_id, single):
        self.model = model
        self.logits = logits
        self.state = state
        self._steps = int(steps)
        self._temperature = float(temperature)
        self._top_k = top_k
        self._rng = np.random.default_rng(seed)
        self._eos = eos_token_id
        self._single = single
        self._finished = np.zeros(state.batch, dtype=bool)
        self.generated = 0
        self.decode_seconds = 0.0
        self._it = self._run()

    def __iter__(self) -> Generation:
        return self

    def __next__(self):
        return next(self._it)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of decode (per sequence), prefill excluded."""
        return self.generated / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def _run(self):
        for _ in range(self._steps):
            if self._eos is not None and self._finished.all():
                return
            t0 = time.perf_counter()
            tokens = sample_next(self.logits, self._temperature, self._top_k, self._rng)
            if self._eos is not None:
                tokens[self._finished] = self._eos
                self._finished |= tokens == self._eos
            self.logits, _ = self.model.step(tokens, self.state, inplace=True)
            self.decode_seconds += time.perf_counter() - t0
            self.generated += 1
            yield int(tokens[0]) if self._single else tokens.copy()


class MambaLM:
    """A Mamba-1 causal language model (float32 or float64) with explicit state.

    Parameters
    ----------
    config : MambaLMConfig
    tensors : dict
        Checkpoint tensors in the Hugging Face naming (see :mod:`nbssm.lm.loading`), checked
        against ``config``; they are copied into read-only layer-stacked arrays of ``dtype``.
    dtype : {numpy.float32, numpy.float64}

    Attributes
    ----------
    config : MambaLMConfig
    dtype : numpy.dtype
    blocks : tuple of MambaMixer
        The layers' mixers; their parameters are read-only views of the stacked weights.
    layers : list of MambaMixer
        The same blocks, as a list.
    norms : (L, Dm)
        The layers' RMSNorm weights.
    embed : (V, Dm); head : (V, Dm) (the same array as ``embed`` when tied); norm_f : (Dm,)
    fingerprint : tuple
        ``("MambaLM", dims, dtype, weights digest)``: what a state must carry to be used here.

    Notes
    -----
    Prefill and decode paths, thread safety, input shapes: see :mod:`nbssm.lm.model`.
    """

    kind = "MambaLM"

    def __init__(self, config: MambaLMConfig, tensors: dict, dtype=np.float32, weights: str | None = None) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        fmt = _check_weights(weights, dtype)
        self.config = config
        self.dtype = dtype
        self.weights = fmt
        c = config
        from .._kernels.decode import DecodeWeights, QMat
        from .loading import CheckpointError, check_tensors
        from .quant import dequantize, encode

        scales = {n[:-len(".scale")]: v for n, v in tensors.items() if n.endswith(".weight.scale")}
        tensors = check_tensors({n: v for n, v in tensors.items() if not n.endswith(".weight.scale")}, config,
                                "MambaLM")
        _check_scales(tensors, scales, CheckpointError)

        def floats(name):
            v = np.asarray(tensors[name])
            return dequantize(v, scales.get(name)) if v.dtype.kind in "iu" else v

        def stored(name):
            """(data, scale) of a big matrix in the storage format (kept as given when it already is)."""
            v = np.asarray(tensors[name])
            if fmt == "int8" and v.dtype == np.int8:
                return np.ascontiguousarray(v), np.ascontiguousarray(scales[name], dtype=np.float32)
            if (fmt, v.dtype) in (("bf16", np.uint16), ("fp16", np.int16)):
                return np.ascontiguousarray(v), np.zeros(v.shape[:-1] + (0,), np.float32)
            return encode(floats(name), fmt, name)

        def arr(x):
            return _readonly(np.array(x, dtype=dtype, order="C"))

        L = c.n_layer
        big = {"in_proj", "x_proj", "dt_w", "out_proj"}
        self.norm_f = arr(floats("backbone.norm_f.weight"))                   # (Dm,)
        q: dict = {"embed": stored("backbone.embeddings.weight")}            # (V, Dm)
        q["head"] = q["embed"] if c.tie_embeddings else stored("lm_head.weight")
        p = {}
        for key, suffix in _STACKED.items():
            names = [f"backbone.layers.{i}.{suffix}" for i in range(L)]
            if key == "conv_b" and not c.conv_bias:
                p[key] = _readonly(np.zeros((L, c.d_inner), dtype))
            elif key in big:
                parts = [stored(n) for n in names]
                q[key] = tuple(_readonly(_stack_rows([pt[j] for pt in parts])) for j in (0, 1))
            else:
                stacked = _stack_rows([floats(n) for n in names])
                if key == "conv_w":
                    stacked = stacked[:, :, 0, :]                              # (L, E, W)
                p[key] = _readonly(np.ascontiguousarray(stacked, dtype=dtype))
        q = {k: (_readonly(v[0]), _readonly(v[1])) for k, v in q.items()}
        self.eps = float(c.norm_eps)
        self._q = q
        self._stacked = p
        self.norms = p["norm_w"]
        self._floats = fmt == dtype.name  # the stored matrices are the compute dtype: prefill uses them as they are
        if self._floats:
            for key in big:
                p[key] = q[key][0]
            self._embed = q["embed"][0]
            self._head = q["head"][0]
            self._blocks: tuple | None = tuple(self._make_block(i) for i in range(L))
        else:
            self._blocks = None
        A = _readonly(np.ascontiguousarray(-np.exp(p["A_log"])))  # (L, E, N), as MambaMixer computes it
        self._decode_weights = DecodeWeights(QMat(*q["embed"]), p["norm_w"], QMat(*q["in_proj"]), p["conv_w"],
                                             p["conv_b"], QMat(*q["x_proj"]), QMat(*q["dt_w"]), p["dt_b"], A, p["D"],
                                             QMat(*q["out_proj"]), self.norm_f, QMat(*q["head"]), self.eps)
        self._local = threading.local()
        self._digest: LazyDigest | None = None
        self.tokenizer = None

    def _make_block(self, i: int) -> MambaMixer:
        """Layer ``i``'s mixer: views of the stacked weights, or (compressed formats) float32 copies."""
        p, q = self._stacked, self._q

        def mat(key):
            if self._floats:
                return q[key][0][i]
            from .quant import dequantize

            return dequantize(q[key][0][i], q[key][1][i])

        return MambaMixer(in_proj=mat("in_proj"), conv_weight=p["conv_w"][i], conv_bias=p["conv_b"][i],
                          x_proj=mat("x_proj"), dt_proj_weight=mat("dt_w"), dt_proj_bias=p["dt_b"][i],
                          A_log=p["A_log"][i], D=p["D"][i], out_proj=mat("out_proj"), dtype=self.dtype, copy=False)

    @property
    def blocks(self) -> tuple:
        """The layers' mixers (:class:`~nbssm.models.MambaMixer`); for compressed weight formats,
        float32 copies of the dequantized weights, made on each access."""
        if self._blocks is not None:
            return self._blocks
        return tuple(self._make_block(i) for i in range(self.config.n_layer))

    def _block(self, i: int) -> MambaMixer:
        return self._blocks[i] if self._blocks is not None else self._make_block(i)

    @property
    def embed(self) -> np.ndarray:
        """(V, Dm) the embedding (dequantized to float32, a new array, for compressed formats)."""
        if self._floats:
            return self._embed
        from .quant import dequantize

        return dequantize(*self._q["embed"])

    @property
    def head(self) -> np.ndarray:
        """(V, Dm) the LM head (the embedding when tied; dequantized for compressed formats)."""
        if self._floats:
            return self._head
        if self.config.tie_embeddings:
            return self.embed
        from .quant import dequantize

        return dequantize(*self._q["head"])

    def _embed_rows(self, ids: np.ndarray) -> np.ndarray:
        if self._floats:
            return self._embed[ids]
        from .quant import dequantize

        data, scale = self._q["embed"]
        return dequantize(data[ids], scale[ids])

    def _head_logits(self, hn: np.ndarray) -> np.ndarray:
        """``hn @ head.T`` (compressed formats: the head dequantized in slices of rows)."""
        if self._floats:
            return hn @ self._head.T
        from .quant import dequantize

        data, scale = self._q["head"]
        V = data.shape[0]
        out = np.empty(hn.shape[:-1] + (V,), self.dtype)
        step = 8192
        for v0 in range(0, V, step):
            out[..., v0:v0 + step] = hn @ dequantize(data[v0:v0 + step], scale[v0:v0 + step]).T
        return out

    def stored_weights(self) -> dict:
        """The decode matrices as stored: name -> ``(data, scale)`` (see :mod:`nbssm.lm.quant`)."""
        names = {"embed": "backbone.embeddings.weight", "head": "lm_head.weight", "in_proj": "mixer.in_proj.weight",
                 "x_proj": "mixer.x_proj.weight", "dt_w": "mixer.dt_proj.weight", "out_proj": "mixer.out_proj.weight"}
        out = {names[k]: v for k, v in self._q.items()}
        if self.config.tie_embeddings:
            del out["lm_head.weight"]
        return out

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (every stored array once; a tied head once)."""
        arrays = [a for pair in self.stored_weights().values() for a in pair]
        arrays += [self._stacked[k] for k in _STACKED if k not in ("in_proj", "x_proj", "dt_w", "out_proj")]
        return int(sum(a.nbytes for a in arrays) + self.norm_f.nbytes)

    @property
    def layers(self) -> list:
        """The blocks (:class:`~nbssm.models.MambaMixer`), as a list."""
        return list(self.blocks)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=np.float32, tokenizer: bool = True,
                        weights: str | None = None) -> MambaLM:
        """Load a local checkpoint directory (``config.json`` + safetensors, either naming).

        Parameters
        ----------
        path : str or PathLike
            The directory. Nothing is downloaded.
        dtype : {numpy.float32, numpy.float64}
            Compute dtype; float16/bfloat16 tensors are converted on load unless ``weights``
            keeps them.
        tokenizer : bool
            Attach ``path/tokenizer.json`` as :attr:`tokenizer` when it exists and the
            ``tokenizers`` package is installed (else :attr:`tokenizer` is None).
        weights : {None, "float32", "float64", "bf16", "fp16", "int8"}
            Storage format of the decode matrices (in_proj, x_proj, dt_proj, out_proj,
            embedding, LM head; see :mod:`nbssm.lm.quant`). None: the compute dtype, or int8 for
            a checkpoint written by :meth:`save_quantized` in int8. "bf16"/"fp16" keep tensors
            stored in that format as they are (others are rounded); "int8" quantizes on load
            (or keeps a saved int8 checkpoint). The compressed formats need dtype float32.

        Raises
        ------
        nbssm.lm.CheckpointError, nbssm.lm.UnsupportedConfigError, FileNotFoundError, ValueError
        """
        from .loading import kept_format, load_checkpoint

        _check_weights(weights, np.dtype(dtype))
        config, tensors = load_checkpoint(os.fspath(path), dtype, keep=kept_format(weights))
        if weights is None and any(np.asarray(v).dtype == np.int8 for v in tensors.values()):
            weights = "int8"
        model = cls(config, tensors, dtype, weights=weights)
        if tokenizer:
            from .tokenizer import load_tokenizer

            model.tokenizer = load_tokenizer(path)
        return model

    def save_quantized(self, path: str | os.PathLike) -> None:
        """Write this model as a checkpoint directory in its storage format (``config.json`` +
        ``model.safetensors``), for :meth:`from_pretrained`.

        float32/float64/bf16/fp16 are ordinary safetensors dtypes (F32/F64/BF16/F16); int8
        stores each matrix as I8 plus ``<name>.scale`` (F32, one per block of 32 inputs), with
        ``{"nbssm_weights": "int8-q8_0", "qblock": "32"}`` in the header metadata.
        """
        from .loading import write_checkpoint

        tensors: dict = {}
        stored = self.stored_weights()
        q_names = {"mixer.in_proj.weight", "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.out_proj.weight"}
        for name, (data, scale) in stored.items():
            if name in q_names:
                for i in range(self.config.n_layer):
                    tensors[f"backbone.layers.{i}.{name}"] = (data[i], scale[i])
            else:
                tensors[name] = (data, scale)
        tensors["backbone.norm_f.weight"] = (self.norm_f, None)
        for key, suffix in _STACKED.items():
            if key in ("in_proj", "x_proj", "dt_w", "out_proj") or (key == "conv_b" and not self.config.conv_bias):
                continue
            for i in range(self.config.n_layer):
                v = self._stacked[key][i]
                tensors[f"backbone.layers.{i}.{suffix}"] = (v[:, None, :] if key == "conv_w" else v, None)
        write_checkpoint(os.fspath(path), self.config, tensors, self.weights)

    @classmethod
    def random(cls, config: MambaLMConfig | None = None, seed: int = 0, dtype=np.float32, weights: str | None = None,
               **dims) -> MambaLM:
        """A model with random weights (seeded), e.g. for benchmarks.

        ``dims`` (``d_model``, ``n_layer``, ``vocab_size``, ...) build a :class:`MambaLMConfig`
        when ``config`` is None. Weights are drawn in float32 (then cast, or stored in the format
        ``weights``, as in :meth:`from_pretrained`), scaled like a trained model's so that
        activations stay O(1).
        """
        if config is None:
            config = MambaLMConfig(**dims)
        c = config
        rng = np.random.default_rng(seed)
        f32 = np.float32

        def normal(shape, std):
            out = rng.standard_normal(shape, dtype=f32)
            out *= f32(std)
            return out

        D, E, N, W, R, V = c.d_model, c.d_inner, c.d_state, c.d_conv, c.dt_rank, c.vocab_size
        t = {"backbone.embeddings.weight": normal((V, D), 0.1), "backbone.norm_f.weight": np.ones(D, f32)}
        if not c.tie_embeddings:
            t["lm_head.weight"] = normal((V, D), 0.1)
        for i in range(c.n_layer):
            p = f"backbone.layers.{i}."
            t[p + "norm.weight"] = np.ones(D, f32)
            t[p + "mixer.in_proj.weight"] = normal((2 * E, D), D ** -0.5)
            t[p + "mixer.conv1d.weight"] = normal((E, 1, W), W ** -0.5)
            if c.conv_bias:
                t[p + "mixer.conv1d.bias"] = normal((E,), 0.1)
            t[p + "mixer.x_proj.weight"] = normal((R + 2 * N, E), E ** -0.5)
            t[p + "mixer.dt_proj.weight"] = normal((E, R), R ** -0.5)
            delta = rng.uniform(1e-3, 0.1, E)
            t[p + "mixer.dt_proj.bias"] = np.log(np.expm1(delta)).astype(f32)
            t[p + "mixer.A_log"] = np.log(np.tile(np.arange(1, N + 1, dtype=f32), (E, 1)))
            t[p + "mixer.D"] = np.ones(E, f32)
            t[p + "mixer.out_proj.weight"] = normal((D, E), E ** -0.5 / np.sqrt(c.n_layer))
        return cls(config, t, dtype, weights=weights)

    # ------------------------------------------------------------------ state
    def parameters(self) -> dict:
        """Every weight array by name (read-only, the model's own; ``lm_head`` only when untied).

        Layer weights are stacked over layers, named by their checkpoint suffix
        (``norm.weight`` (L, Dm), ``mixer.in_proj.weight`` (L, 2E, Dm), ``mixer.conv1d.weight``
        (L, E, W), ...). For compressed weight formats the decode matrices are float32
        dequantized copies (the stored ones: :meth:`stored_weights`).
        """
        out = {"backbone.embeddings.weight": self.embed, "backbone.norm_f.weight": self.norm_f}
        if not self.config.tie_embeddings:
            out["lm_head.weight"] = self.head
        if self._floats:
            out.update({suffix: self._stacked[key] for key, suffix in _STACKED.items()})
            return out
        from .quant import dequantize

        for key, suffix in _STACKED.items():
            out[suffix] = dequantize(*self._q[key]) if key in self._q else self._stacked[key]
        return out

    @property
    def fingerprint(self) -> tuple:
        """``("MambaLM", ((dim, size), ...), dtype name, digest of every weight)``.

        The digest is a :class:`~nbssm.state.LazyDigest`: the states this model makes carry the
        same object, so checking them against this model hashes nothing; the BLAKE2b hash of
        the weights (for compressed formats: the stored arrays and their format) is computed
        once, the first time it meets another digest or is printed, saved or pickled. Until
        then a state keeps a reference to this model.
        """
        if self._digest is None:
            self._digest = LazyDigest(self._weights_digest)
        return (self.kind, tuple(self.config.dims().items()), self.dtype.name, self._digest)

    def _weights_digest(self) -> str:
        if self._floats:
            return weights_digest(self.parameters().values())
        arrays = [a for pair in self.stored_weights().values() for a in pair]
        arrays += [self._stacked[k] for k in _STACKED if k not in self._q] + [self.norm_f]
        arrays.append(np.frombuffer(self.weights.encode(), np.uint8))
        return weights_digest(arrays)

    def initial_state(self, batch: int = 1) -> ModelState:
        """A fresh (all-zero) state for ``batch`` sequences."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
            raise ValueError(f"batch: expected an integer >= 0, got {batch!r}")
        return ModelState.zeros(self.kind, self.config.dims(), self.dtype, int(batch), self.fingerprint[3])

    def init_state(self, batch: int = 1) -> ModelState:
        """Deprecated name of :meth:`initial_state`."""
        warnings.warn("MambaLM.init_state is deprecated; use initial_state", DeprecationWarning, stacklevel=2)
        return self.initial_state(batch)

    def load_state(self, path: str | os.PathLike) -> ModelState:
        """:meth:`ModelState.load` with this model's fingerprint checked."""
        return ModelState.load(path, model=self)

    def check_state(self, state: ModelState, batch: int | None = None, argument: str = "state") -> None:
        """Raise :class:`StateMismatchError` unless ``state`` belongs to this model (and batch)."""
        if not isinstance(state, ModelState):
            raise TypeError(f"{argument}: expected a ModelState (from MambaLM.initial_state or forward), "
                            f"got {type(state).__name__}")
        state.check(self.fingerprint, batch, argument)

    # ------------------------------------------------------------------ inputs
    def _ids(self, input_ids, argument: str = "input_ids") -> np.ndarray:
        ids = np.asarray(input_ids)
        if ids.dtype == object or not (np.issubdtype(ids.dtype, np.integer)):
            if ids.size == 0 and ids.dtype != object:
                ids = ids.astype(np.int64)
            else:
                raise TypeError(f"{argument} must be an integer array of token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
            raise ValueError(f"{argument}: token ids must lie in [0, {self.config.vocab_size}), found {bad.flat[0]}")
        return ids.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ running
    def forward(self, input_ids, initial_state: ModelState | None = None, last_only: bool = False, *,
                state: ModelState | None = None):
        """Run sequences (prefill), continuing from ``initial_state`` (a fresh state when None).

        Parameters
        ----------
        input_ids : (b, l) or (l,) integer array
            Token ids in [0, V). A 1-D input is one sequence.
        initial_state : ModelState, optional
            Not modified. Its batch must equal ``b``.
        last_only : bool
            Compute the logits of the last position only (what generation needs; the LM head
            dominates the cost of a long prefill otherwise).
        state : ModelState, optional
            Deprecated name of ``initial_state``.

        Returns
        -------
        logits : (b, l, V), (b, 1, V) with ``last_only`` ((l, V) / (1, V) for a 1-D input)
        final_state : ModelState
            A new state after the input.
        """
        if state is not None:
            warnings.warn("forward(state=...) is deprecated; use initial_state=", DeprecationWarning, stacklevel=2)
            initial_state = state
        ids = self._ids(input_ids)
        single = ids.ndim == 1
        if single:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length) or (length,), got {ids.shape}")
        b, l = ids.shape
        if initial_state is None:
            st = self.initial_state(b)
        else:
            self.check_state(initial_state, b, "initial_state")
            st = initial_state
        V = self.config.vocab_size
        if l == 0:
            logits = np.zeros((b, 0, V), self.dtype)
            return (logits[0] if single else logits), st.copy()
        hidden, conv, ssm = self._trunk(ids, st)                              # (b, l, Dm)
        if last_only:
            hidden = hidden[:, -1:]
        hn = rms_norm(hidden, self.norm_f, self.eps)
        logits = self._head_logits(hn)                                         # (b, l, V)
        new = ModelState(self.kind, st.dims, self.dtype, ssm, conv, st.positions + l, st.weights)
        return (logits[0] if single else logits), new

    __call__ = forward

    def _trunk(self, ids: np.ndarray, st: ModelState):
        """The residual stream after the last layer (before the final norm) and the new states."""
        assert st.conv is not None  # every layer of the LM has a convolution history
        conv = np.empty_like(st.conv)
        ssm = np.empty_like(st.ssm)
        hidden = self._embed_rows(ids)                                         # (b, l, Dm)
        for i in range(self.config.n_layer):
            block = self._block(i)  # compressed formats: dequantized to float32 copies, one layer at a time
            hn = rms_norm(hidden, self.norms[i], self.eps)                     # (b, l, Dm)
            out, conv[i], ssm[i] = block.mix(hn, st.conv[i], st.ssm[i])         # (b, l, Dm)
            hidden += out
        return hidden, conv, ssm

    def _head_tile(self, v0: int, v1: int) -> np.ndarray:
        """(v1 - v0, Dm) rows of the LM head (dequantized for compressed formats)."""
        if self._floats:
            return self._head[v0:v1]
        from .quant import dequantize

        data, scale = self._q["head"]
        return dequantize(data[v0:v1], scale[v0:v1])

    def token_log_probs(self, input_ids, *, rows: int = TLP_ROWS, vocab_tile: int = TLP_VOCAB_TILE) -> np.ndarray:
        """``log p(ids[t + 1] | ids[:t + 1])`` per position, in float64, without the full logits.

        The model runs to the final hidden states (as :meth:`forward`, from a fresh state); the LM
        head is then applied in tiles of ``vocab_tile`` vocabulary rows x ``rows`` positions, each
        tile folded into a running log-sum-exp per position (float64) and the target's logit picked
        from the tile that holds it. Memory is ``rows x vocab_tile`` floats instead of the
        ``(b, l, V)`` logits; the result equals ``log_softmax(forward(ids)[0])`` at the targets
        within the ``lm_score_vs_logits`` tolerance (the head GEMM runs on slices, the sums in
        another order). The tiles depend only on ``rows`` and ``vocab_tile``, never on threads.

        Parameters
        ----------
        input_ids : (b, l) or (l,) integer array, l >= 1
        rows, vocab_tile : int >= 1
            Positions and vocabulary rows per tile of the head.

        Returns
        -------
        (b, l - 1) float64 ((l - 1,) for a 1-D input)
        """
        rows = _positive_int(rows, "rows")
        vocab_tile = _positive_int(vocab_tile, "vocab_tile")
        ids = self._ids(input_ids)
        single = ids.ndim == 1
        if single:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape (batch, length >= 1) or (length >= 1,), got {ids.shape}")
        b, l = ids.shape
        out = np.empty((b, l - 1), np.float64)
        if l > 1 and b > 0:
            hidden, _, _ = self._trunk(ids[:, :-1], self.initial_state(b))     # (b, l-1, Dm)
            hn = rms_norm(hidden, self.norm_f, self.eps).reshape(b * (l - 1), -1)  # (n, Dm)
            out.reshape(-1)[:] = _tiled_log_probs(self, hn, ids[:, 1:].reshape(-1), rows, vocab_tile)
        return out[0] if single else out

    def _work(self, b: int):
        """This thread's decode work buffers for batch ``b`` (kept, one set per batch size)."""
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = {}
        work = cache.get(b)
        if work is None:
            from .._kernels.decode import DecodeWork, decode_work_shapes

            c = self.config
            shapes = decode_work_shapes(b, c.d_model, c.d_inner, c.d_state, c.dt_rank, c.vocab_size)
            work = DecodeWork(**{k: np.empty(v, self.dtype) for k, v in shapes.items()})
            cache[b] = work
        return work

    def step(self, token_ids, state: ModelState | None = None, inplace: bool = False):
        """Advance every sequence by one token (decode) with the fused kernel.

        Parameters
        ----------
        token_ids : (b,) integer array (or an int: one sequence)
        state : ModelState, optional
            Batch ``b``. Not modified unless ``inplace`` (then it is updated and returned).
        inplace : bool

        Returns
        -------
        logits : (b, V) new array ((V,) for an int token)
        state : ModelState
        """
        from .._kernels.decode import DecodeState, decode_step

        ids = self._ids(token_ids, "token_ids")
        single = ids.ndim == 0
        ids = np.ascontiguousarray(ids.reshape(-1)) if single else ids
        if ids.ndim != 1:
            raise ValueError(f"token_ids must have shape (batch,), got {ids.shape}")
        b = ids.shape[0]
        if state is None:
            state = self.initial_state(b)
        else:
            self.check_state(state, b)
            if not inplace:
                state = state.copy()
        if b == 0:
            return np.zeros((0, self.config.vocab_size), self.dtype), state
        for name in ("conv", "ssm"):
            a = getattr(state, name)
            if not (a.flags.c_contiguous and a.flags.writeable):
                setattr(state, name, np.array(a, order="C"))
        work = self._work(b)
        decode_step(np.ascontiguousarray(ids), self._decode_weights, DecodeState(state.conv, state.ssm), work)
        state.positions += 1
        out = work.logits.copy()
        return (out[0] if single else out), state

    def prefill(self, prompts: Sequence, state: ModelState | None = None):
        """Run prompts of possibly different lengths, then stack their states for batched decode.

        Prompts of different lengths are each run alone (so each row is bitwise what running it
        alone gives); prompts of one common length run as one batch (rows equal running alone
        up to the BLAS rounding of the projections, bitwise for short prompts). Prompts of at
        most :data:`STEP_PREFILL_MAX_TOKENS` tokens go through the decode kernel, token by token
        (see "Short prompts" in :mod:`nbssm.lm.model`), longer ones through :meth:`forward`. The
        decode that follows is bitwise batch-invariant either way.

        Parameters
        ----------
        prompts : sequence of 1-D integer arrays (or a (b, l) array), each non-empty
        state : ModelState, optional (batch ``len(prompts)``)

        Returns
        -------
        last_logits : (b, V) the logits after each prompt's last token
        state : ModelState (batch b)
        """
        if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
            prompts = list(prompts)
        prompts = [self._ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not prompts:
            raise ValueError("prompts must hold at least one prompt")
        for i, p in enumerate(prompts):
            if p.ndim != 1 or p.size == 0:
                raise ValueError(f"prompts[{i}] must be a non-empty 1-D array of token ids, got shape {p.shape}")
        if state is not None:
            self.check_state(state, len(prompts))
        lengths = {p.size for p in prompts}
        if len(lengths) == 1:
            ids = np.stack(prompts)                                          # (b, l)
            if ids.shape[1] <= STEP_PREFILL_MAX_TOKENS:
                return self._prefill_by_steps(ids, state)
            # one batched call; each row is still computed independently
            logits, new = self.forward(ids, state, last_only=True)
            return logits[:, -1], new
        outs, states = [], []
        for i, p in enumerate(prompts):  # ragged: each prompt alone, by its own length's path
            last, s = self.prefill([p], None if state is None else state.select([i]))
            outs.append(last[0])
            states.append(s)
        return np.stack(outs), ModelState.concatenate(states)

    def _prefill_by_steps(self, ids: np.ndarray, state: ModelState | None):
        """:meth:`prefill` of ``ids (b, l)``, ``l >= 1``, through the decode kernel, one :meth:`step`
        per token (see "Short prompts" in :mod:`nbssm.lm.model`); ``state`` is not modified.

        The rows advance as one batch: the decode kernel is bitwise batch-invariant, so each row
        is what running its prompt alone gives.
        """
        st = self.initial_state(ids.shape[0]) if state is None else state.copy()
        logits = None
        for t in range(ids.shape[1]):
            logits, st = self.step(np.ascontiguousarray(ids[:, t]), st, inplace=True)
        return logits, st

    def generate(self, prompt, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 seed: int | None = None, eos_token_id: int | None = None,
                 state: ModelState | None = None) -> Generation:
        """Generate tokens after a prompt (or a batch of prompts of any lengths), streaming.

        Parameters
        ----------
        prompt : 1-D integer array (one sequence), a (b, l) array, a list of 1-D arrays
            (different lengths allowed), or a ``str`` when a tokenizer is attached.
        max_new_tokens : int
        temperature, top_k, seed :
            See :func:`nbssm.lm.sampling.sample_next`; ``temperature=0`` is greedy.
        eos_token_id : int, optional
            A sequence that emits it is finished (it keeps reporting it); generation stops when
            every sequence is finished.
        state : ModelState, optional
            Continue from this state (not modified).

        Returns
        -------
        Generation
            An iterator yielding an ``int`` per step for a single prompt, a (b,) array for a
            batch, with ``.state``, ``.logits`` and ``.tokens_per_second``.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
        check_sampling_args(temperature, top_k, seed, where="generate")  # before the prefill's work
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer (tokenizer.json and the 'tokenizers' package); pass token ids")
            prompt = self.tokenizer.encode(prompt)
        single = False
        if isinstance(prompt, np.ndarray) and prompt.ndim == 1 or (
                isinstance(prompt, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in prompt)):
            single = True
            prompts = [np.asarray(prompt)]
        elif isinstance(prompt, np.ndarray) and prompt.ndim == 2:
            prompts = list(prompt)
        else:
            prompts = list(prompt)
        logits, new = self.prefill(prompts, state)
        return Generation(self, logits, new, max_new_tokens, temperature, top_k, seed, eos_token_id, single)
