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

import numpy as np

from ..models import MambaMixer
from ..state import ModelState, weights_digest
from .config import MambaLMConfig
from .sampling import check_sampling_args, sample_next

__all__ = ["Generation", "MambaLM", "rms_norm"]

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


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


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

    def __init__(self, config: MambaLMConfig, tensors: dict, dtype=np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        c = config
        from .loading import check_tensors

        tensors = check_tensors(tensors, config, "MambaLM")

        def arr(x):
            return _readonly(np.array(x, dtype=dtype, order="C"))

        self.embed = arr(tensors["backbone.embeddings.weight"])               # (V, Dm)
        self.norm_f = arr(tensors["backbone.norm_f.weight"])                   # (Dm,)
        self.head = self.embed if c.tie_embeddings else arr(tensors["lm_head.weight"])  # (V, Dm)
        L = c.n_layer
        p = {}
        for key, suffix in _STACKED.items():
            if key == "conv_b" and not c.conv_bias:
                p[key] = _readonly(np.zeros((L, c.d_inner), dtype))
                continue
            stacked = np.stack([np.asarray(tensors[f"backbone.layers.{i}.{suffix}"]) for i in range(L)])
            if key == "conv_w":
                stacked = stacked[:, :, 0, :]                                  # (L, E, W)
            p[key] = _readonly(np.ascontiguousarray(stacked, dtype=dtype))
        self.eps = float(c.norm_eps)
        self._stacked = p
        self.norms = p["norm_w"]
        self.blocks = tuple(
            MambaMixer(in_proj=p["in_proj"][i], conv_weight=p["conv_w"][i], conv_bias=p["conv_b"][i],
                       x_proj=p["x_proj"][i], dt_proj_weight=p["dt_w"][i], dt_proj_bias=p["dt_b"][i],
                       A_log=p["A_log"][i], D=p["D"][i], out_proj=p["out_proj"][i], dtype=dtype, copy=False)
            for i in range(L))
        A = _readonly(np.ascontiguousarray(np.stack([blk.A for blk in self.blocks])))  # (L, E, N)
        from .._kernels.decode import DecodeWeights

        self._decode_weights = DecodeWeights(self.embed, p["norm_w"], p["in_proj"], p["conv_w"], p["conv_b"],
                                             p["x_proj"], p["dt_w"], p["dt_b"], A, p["D"], p["out_proj"],
                                             self.norm_f, self.head, self.eps)
        self._local = threading.local()
        self._digest: str | None = None
        self.tokenizer = None

    @property
    def layers(self) -> list:
        """The blocks (:class:`~nbssm.models.MambaMixer`), as a list."""
        return list(self.blocks)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=np.float32, tokenizer: bool = True) -> MambaLM:
        """Load a local checkpoint directory (``config.json`` + safetensors, either naming).

        Parameters
        ----------
        path : str or PathLike
            The directory. Nothing is downloaded.
        dtype : {numpy.float32, numpy.float64}
            Compute dtype; float16/bfloat16 tensors are converted on load.
        tokenizer : bool
            Attach ``path/tokenizer.json`` as :attr:`tokenizer` when it exists and the
            ``tokenizers`` package is installed (else :attr:`tokenizer` is None).

        Raises
        ------
        nbssm.lm.CheckpointError, nbssm.lm.UnsupportedConfigError, FileNotFoundError
        """
        from .loading import load_checkpoint

        config, tensors = load_checkpoint(os.fspath(path), dtype)
        model = cls(config, tensors, dtype)
        if tokenizer:
            from .tokenizer import load_tokenizer

            model.tokenizer = load_tokenizer(path)
        return model

    @classmethod
    def random(cls, config: MambaLMConfig | None = None, seed: int = 0, dtype=np.float32, **dims) -> MambaLM:
        """A model with random weights (seeded), e.g. for benchmarks.

        ``dims`` (``d_model``, ``n_layer``, ``vocab_size``, ...) build a :class:`MambaLMConfig`
        when ``config`` is None. Weights are drawn in float32 (then cast), scaled like a trained
        model's so that activations stay O(1).
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
        return cls(config, t, dtype)

    # ------------------------------------------------------------------ state
    def parameters(self) -> dict:
        """Every weight array by name (read-only, the model's own; ``lm_head`` only when untied).

        Layer weights are stacked over layers, named by their checkpoint suffix
        (``norm.weight`` (L, Dm), ``mixer.in_proj.weight`` (L, 2E, Dm), ``mixer.conv1d.weight``
        (L, E, W), ...).
        """
        out = {"backbone.embeddings.weight": self.embed, "backbone.norm_f.weight": self.norm_f}
        if not self.config.tie_embeddings:
            out["lm_head.weight"] = self.head
        out.update({suffix: self._stacked[key] for key, suffix in _STACKED.items()})
        return out

    @property
    def fingerprint(self) -> tuple:
        """``("MambaLM", ((dim, size), ...), dtype name, digest of every weight)`` (computed once)."""
        if self._digest is None:
            self._digest = weights_digest(self.parameters().values())
        return (self.kind, tuple(self.config.dims().items()), self.dtype.name, self._digest)

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
        assert st.conv is not None  # every layer of the LM has a convolution history
        conv = np.empty_like(st.conv)
        ssm = np.empty_like(st.ssm)
        hidden = self.embed[ids]                                               # (b, l, Dm)
        for i, block in enumerate(self.blocks):
            hn = rms_norm(hidden, self.norms[i], self.eps)                     # (b, l, Dm)
            out, conv[i], ssm[i] = block.mix(hn, st.conv[i], st.ssm[i])         # (b, l, Dm)
            hidden += out
        if last_only:
            hidden = hidden[:, -1:]
        hn = rms_norm(hidden, self.norm_f, self.eps)
        logits = hn @ self.head.T                                              # (b, l, V)
        new = ModelState(self.kind, st.dims, self.dtype, ssm, conv, st.positions + l, st.weights)
        return (logits[0] if single else logits), new

    __call__ = forward

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
        up to the BLAS rounding of the projections). The decode that follows is bitwise
        batch-invariant either way.

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
        if len(lengths) == 1 and len(prompts) > 1:
            # one batched call; each row is still computed independently
            logits, new = self.forward(np.stack(prompts), state, last_only=True)
            return logits[:, -1], new
        outs, states = [], []
        for i, p in enumerate(prompts):
            s = None if state is None else state.select([i])
            logits, s = self.forward(p[None], s, last_only=True)
            outs.append(logits[0, -1])
            states.append(s)
        return np.stack(outs), ModelState.concatenate(states)

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
