"""``MambaLM``: a Mamba-1 language model for CPU inference from numpy.

Embedding -> ``n_layer`` x (RMSNorm -> mixer -> residual add) -> RMSNorm -> LM head (tied to
the embedding or not, as the config says), as in transformers' ``MambaForCausalLM`` and
``mamba_ssm``'s ``MambaLMHeadModel``.

Two paths run the same model:

- :meth:`MambaLM.forward` (prefill, any length): numpy matrix products (BLAS) for the
  projections and :mod:`nbssm.ops` (``causal_conv1d``, ``selective_scan``) for the sequence
  kernels;
- :meth:`MambaLM.step` (decode, one token per sequence): one fused Numba kernel for the whole
  model (:mod:`nbssm._kernels.decode`).

They agree within rounding (the projections sum in different orders); see
``tests/test_lm_model.py`` for the tolerances.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Sequence

import numpy as np

from .config import MambaLMConfig
from .mixer import MambaMixer
from .sampling import sample_next
from .state import MambaLMState, StateMismatchError

_STACKED = {
    # stacked name -> (checkpoint suffix, per-layer shape function)
    "norm_w": "norm.weight",
    "in_proj": "mixer.in_proj.weight",
    "conv_w": "mixer.conv1d.weight",
    "conv_b": "mixer.conv1d.bias",
    "x_proj": "mixer.x_proj.weight",
    "dt_w": "mixer.dt_proj.weight",
    "dt_b": "mixer.dt_proj.bias",
    "A_log": "mixer.A_log",
    "Dskip": "mixer.D",
    "out_proj": "mixer.out_proj.weight",
}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """``weight * (x / sqrt(mean(x², -1) + eps))`` over the last axis (a new array)."""
    r = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + x.dtype.type(eps))
    return weight * (x * r.astype(x.dtype, copy=False))


class Generation:
    """An iterator over generated tokens, as they come.

    Yields an ``int`` per step for a single prompt, or a (b,) int64 array for a batch.
    After (or during) iteration, :attr:`state` is the model state after the prompt and every
    token yielded so far, :attr:`logits` the logits that predict the next one, and
    :attr:`tokens_per_second` the decode rate (prefill excluded).
    """

    def __init__(self, model: "MambaLM", logits, state, steps, temperature, top_k, seed, eos_token_id, single):
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

    def __iter__(self) -> "Generation":
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
        Checkpoint tensors in the Hugging Face naming (see :mod:`nbssm.lm.loading`), already
        checked; they are copied into stacked per-layer arrays of ``dtype``.
    dtype : {numpy.float32, numpy.float64}

    Attributes
    ----------
    config : MambaLMConfig
    dtype : numpy.dtype
    layers : list of MambaMixer
        The mixers; their parameter arrays are views into the model's stacked arrays.
    embed : (V, Dm); head : (V, Dm) (the same array as ``embed`` when tied); norm_f : (Dm,)

    Notes
    -----
    Not thread-safe: decode work buffers are kept per batch size on the instance.
    """

    def __init__(self, config: MambaLMConfig, tensors: dict, dtype=np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"MambaLM: dtype must be float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        c = config
        from .loading import check_tensors

        tensors = check_tensors(tensors, config, "MambaLM")

        def arr(x):
            return np.array(x, dtype=dtype, order="C")

        self.embed = arr(tensors["backbone.embeddings.weight"])               # (V, Dm)
        self.norm_f = arr(tensors["backbone.norm_f.weight"])                   # (Dm,)
        self.head = self.embed if c.tie_embeddings else arr(tensors["lm_head.weight"])  # (V, Dm)
        L = c.n_layer
        self.p = {}
        for key, suffix in _STACKED.items():
            names = [f"backbone.layers.{i}.{suffix}" for i in range(L)]
            if key == "conv_b" and not c.conv_bias:
                self.p[key] = np.zeros((L, c.d_inner), dtype)
                continue
            stacked = np.stack([np.asarray(tensors[n]) for n in names]).astype(dtype)
            if key == "conv_w":
                stacked = stacked[:, :, 0, :]                                  # (L, E, W)
            self.p[key] = np.ascontiguousarray(stacked)
        self.p["A_neg"] = np.ascontiguousarray(-np.exp(self.p["A_log"]))       # (L, E, N)
        self.eps = float(c.norm_eps)
        self.layers = [self._mixer_view(i) for i in range(L)]
        self._fingerprint = self._make_fingerprint()
        self._work: dict[int, tuple] = {}
        self.tokenizer = None

    def _mixer_view(self, i: int) -> MambaMixer:
        m = MambaMixer.__new__(MambaMixer)
        c = self.config
        m.d_model, m.d_inner, m.d_state, m.d_conv, m.dt_rank = c.d_model, c.d_inner, c.d_state, c.d_conv, c.dt_rank
        m.dtype = self.dtype
        p = self.p
        m.in_proj, m.conv_weight, m.conv_bias = p["in_proj"][i], p["conv_w"][i], p["conv_b"][i]
        m.x_proj, m.dt_proj_weight, m.dt_proj_bias = p["x_proj"][i], p["dt_w"][i], p["dt_b"][i]
        m.A_log, m.D, m.out_proj, m.A_neg = p["A_log"][i], p["Dskip"][i], p["out_proj"][i], p["A_neg"][i]
        return m

    def _make_fingerprint(self) -> dict:
        h = hashlib.sha256()
        for a in (self.norm_f, self.p["norm_w"], self.p["A_log"], self.p["Dskip"], self.p["dt_b"], self.embed[:4], self.head[:4]):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        fp = self.config.dims()
        fp["dtype"] = self.dtype.name
        fp["weights"] = h.hexdigest()[:16]
        return fp

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=np.float32, tokenizer: bool = True) -> "MambaLM":
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

        config, tensors = load_checkpoint(path, dtype)
        model = cls(config, tensors, dtype)
        if tokenizer:
            from .tokenizer import load_tokenizer

            model.tokenizer = load_tokenizer(path)
        return model

    @classmethod
    def random(cls, config: MambaLMConfig | None = None, seed: int = 0, dtype=np.float32, **dims) -> "MambaLM":
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
    def init_state(self, batch: int = 1) -> MambaLMState:
        """A fresh (all-zero) state for ``batch`` sequences."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
            raise ValueError(f"MambaLM.init_state: batch must be an integer >= 0, got {batch!r}")
        c = self.config
        return MambaLMState(np.zeros((c.n_layer, batch, c.d_conv - 1, c.d_inner), self.dtype),
                            np.zeros((c.n_layer, batch, c.d_inner, c.d_state), self.dtype),
                            np.zeros(batch, np.int64), self._fingerprint)

    @property
    def fingerprint(self) -> dict:
        return dict(self._fingerprint)

    def check_state(self, state: MambaLMState, batch: int | None = None, argument: str = "state") -> None:
        """Raise :class:`StateMismatchError` unless ``state`` belongs to this model (and batch)."""
        if not isinstance(state, MambaLMState):
            raise TypeError(f"{argument} must be a MambaLMState, got {type(state).__name__}")
        if state.fingerprint != self._fingerprint:
            diff = {k: (state.fingerprint.get(k), v) for k, v in self._fingerprint.items() if state.fingerprint.get(k) != v}
            raise StateMismatchError(f"{argument} belongs to another model or dtype: (state, model) differ in {diff}")
        state._check_arrays(argument)
        if batch is not None and state.batch != batch:
            raise StateMismatchError(f"{argument} holds {state.batch} sequences, the input has {batch}")

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
    def forward(self, input_ids, state: MambaLMState | None = None, last_only: bool = False):
        """Run sequences (prefill), continuing from ``state`` (a fresh state when None).

        Parameters
        ----------
        input_ids : (b, l) or (l,) integer array
            Token ids in [0, V). A 1-D input is one sequence.
        state : MambaLMState, optional
            Not modified. Its batch must equal ``b``.
        last_only : bool
            Compute the logits of the last position only (what generation needs; the LM head
            dominates the cost of a long prefill otherwise).

        Returns
        -------
        logits : (b, l, V), (b, 1, V) with ``last_only`` ((l, V) / (1, V) for a 1-D input)
        state : MambaLMState
            A new state after the input.
        """
        ids = self._ids(input_ids)
        single = ids.ndim == 1
        if single:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length) or (length,), got {ids.shape}")
        b, l = ids.shape
        if state is None:
            state = self.init_state(b)
        else:
            self.check_state(state, b)
        new = state.copy()
        V = self.config.vocab_size
        if l == 0:
            logits = np.zeros((b, 0, V), self.dtype)
            return (logits[0] if single else logits), new
        hidden = self.embed[ids]                                               # (b, l, Dm)
        for i, mixer in enumerate(self.layers):
            hn = rms_norm(hidden, self.p["norm_w"][i], self.eps)               # (b, l, Dm)
            out, (hist, h) = mixer.forward(hn, state.conv[i], state.ssm[i])     # (b, l, Dm)
            hidden += out
            new.conv[i] = hist
            new.ssm[i] = h
        if last_only:
            hidden = hidden[:, -1:]
        hn = rms_norm(hidden, self.norm_f, self.eps)
        logits = hn @ self.head.T                                              # (b, l, V)
        new.position += l
        return (logits[0] if single else logits), new

    __call__ = forward

    def _buffers(self, b: int) -> tuple:
        work = self._work.get(b)
        if work is None:
            c, dt = self.config, self.dtype
            from nbssm._kernels.decode import CHUNK

            n_chunks = -(-c.d_inner // CHUNK)
            work = (np.empty((b, c.vocab_size), dt), np.empty((b, c.d_model), dt), np.empty((b, c.d_model), dt),
                    np.empty((b, 2 * c.d_inner), dt), np.empty((b, c.d_inner), dt),
                    np.empty((b, c.dt_rank + 2 * c.d_state), dt), np.empty((b, c.d_inner), dt),
                    np.empty((n_chunks, b, c.dt_rank + 2 * c.d_state), dt), np.empty((n_chunks, b, c.d_model), dt))
            self._work[b] = work
        return work

    def step(self, token_ids, state: MambaLMState | None = None, inplace: bool = False):
        """Advance every sequence by one token (decode) with the fused kernel.

        Parameters
        ----------
        token_ids : (b,) integer array (or an int: one sequence)
        state : MambaLMState, optional
            Batch ``b``. Not modified unless ``inplace`` (then it is updated and returned).
        inplace : bool

        Returns
        -------
        logits : (b, V) new array ((V,) for an int token)
        state : MambaLMState
        """
        from nbssm._kernels.decode import decode_step

        ids = self._ids(token_ids, "token_ids")
        single = ids.ndim == 0
        ids = np.ascontiguousarray(ids.reshape(-1)) if single else ids
        if ids.ndim != 1:
            raise ValueError(f"token_ids must have shape (batch,), got {ids.shape}")
        b = ids.shape[0]
        if state is None:
            state = self.init_state(b)
        else:
            self.check_state(state, b)
            if not inplace:
                state = state.copy()
        if b == 0:
            return np.zeros((0, self.config.vocab_size), self.dtype), state
        if not (state.conv.flags.c_contiguous and state.ssm.flags.c_contiguous and state.conv.flags.writeable
                and state.ssm.flags.writeable):
            state.conv = np.ascontiguousarray(state.conv).copy() if not state.conv.flags.writeable else np.ascontiguousarray(state.conv)
            state.ssm = np.ascontiguousarray(state.ssm).copy() if not state.ssm.flags.writeable else np.ascontiguousarray(state.ssm)
        p = self.p
        logits, hidden, hn, xz, u, xdbl, y, part_x, part_o = self._buffers(b)
        decode_step(np.ascontiguousarray(ids), self.embed, p["norm_w"], self.eps, p["in_proj"], p["conv_w"],
                    p["conv_b"], p["x_proj"], p["dt_w"], p["dt_b"], p["A_neg"], p["Dskip"], p["out_proj"],
                    self.norm_f, self.head, state.conv, state.ssm, logits, hidden, hn, xz, u, xdbl, y, part_x, part_o)
        state.position += 1
        out = logits.copy()
        return (out[0] if single else out), state

    def prefill(self, prompts: Sequence, state: MambaLMState | None = None):
        """Run prompts of possibly different lengths, then stack their states for batched decode.

        Prompts of different lengths are each run alone (so each row is bitwise what running it
        alone gives); prompts of one common length run as one batch (rows equal running alone
        up to the BLAS rounding of the projections). The decode that follows is bitwise
        batch-invariant either way.

        Parameters
        ----------
        prompts : sequence of 1-D integer arrays (or a (b, l) array), each non-empty
        state : MambaLMState, optional (batch ``len(prompts)``)

        Returns
        -------
        last_logits : (b, V) the logits after each prompt's last token
        state : MambaLMState (batch b)
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
        return np.stack(outs), MambaLMState.concatenate(states)

    def generate(self, prompt, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 seed: int | None = None, eos_token_id: int | None = None,
                 state: MambaLMState | None = None) -> Generation:
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
        state : MambaLMState, optional
            Continue from this state (not modified).

        Returns
        -------
        Generation
            An iterator yielding an ``int`` per step for a single prompt, a (b,) array for a
            batch, with ``.state``, ``.logits`` and ``.tokens_per_second``.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
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
