"""``MambaLM`` jobs on dask: scoring, long sequences with a carried state, greedy generation.

The model never travels with the tasks: a :class:`ModelSource` (a small picklable recipe:
a checkpoint path, or the seed and dimensions of a random model) is loaded once per worker
process and kept there, so a graph of many tasks ships a few hundred bytes per task, and a
worker that is restarted after a fault reloads it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ._common import as_dask, blocks_of, require_dask

_MODELS: dict = {}
_LOCK = threading.Lock()
#: models kept per process (the least recently loaded is dropped first)
MAX_MODELS = 2


@dataclass(frozen=True)
class ModelSource:
    """How a worker obtains a ``MambaLM``: ``kind`` "pretrained" (``path``) or "random".

    Build with :meth:`pretrained` or :meth:`random`; :meth:`load` returns the process's
    cached model (loaded on first use). Hashable and tiny when pickled.
    """

    kind: str
    path: str = ""
    seed: int = 0
    dtype: str = "float32"
    dims: tuple = field(default_factory=tuple)

    @classmethod
    def pretrained(cls, path, dtype="float32") -> ModelSource:
        """A checkpoint directory (``MambaLM.from_pretrained``); it must exist on every worker."""
        return cls("pretrained", path=str(path), dtype=np.dtype(dtype).name)

    @classmethod
    def random(cls, seed: int = 0, dtype="float32", **dims) -> ModelSource:
        """``MambaLM.random(seed=seed, dtype=dtype, **dims)`` (e.g. ``d_model``, ``n_layer``,
        ``vocab_size``, ``d_state``)."""
        return cls("random", seed=int(seed), dtype=np.dtype(dtype).name, dims=tuple(sorted(dims.items())))

    def __post_init__(self) -> None:
        if self.kind not in ("pretrained", "random"):
            raise ValueError(f"kind: expected 'pretrained' or 'random', got {self.kind!r}")

    def build(self):
        """A new model (not cached)."""
        from ..lm import MambaLM

        dt = np.dtype(self.dtype)
        if self.kind == "pretrained":
            return MambaLM.from_pretrained(self.path, dtype=dt, tokenizer=False)
        return MambaLM.random(seed=self.seed, dtype=dt, **dict(self.dims))

    def load(self):
        """The model of this process (built on first use, then reused), and its lock."""
        with _LOCK:
            entry = _MODELS.get(self)
            if entry is None:
                entry = (self.build(), threading.Lock())
                _MODELS[self] = entry
                while len(_MODELS) > MAX_MODELS:
                    _MODELS.pop(next(iter(_MODELS)))
            return entry


def clear_models() -> None:
    """Drop this process's cached models (run it on the workers with ``client.run``)."""
    with _LOCK:
        _MODELS.clear()


def _model(source):
    if isinstance(source, ModelSource):
        return source.load()
    raise TypeError(f"model: expected a nbssm.dask.ModelSource, got {type(source).__name__}")


# --------------------------------------------------------------------------- numpy functions
def token_log_probs(logits, targets) -> np.ndarray:
    """``log softmax(logits)[target]`` per position, in float64.

    logits : (..., V); targets : (...) integer. Returns (...) float64.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim >= 2 and logits.shape[-2] > _ROWS:
        # a few positions at a time (bounds the float64 copy); every row is computed alone
        parts = [token_log_probs(logits[..., s:s + _ROWS, :], targets[..., s:s + _ROWS])
                 for s in range(0, logits.shape[-2], _ROWS)]
        return np.concatenate(parts, axis=-1)
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(x - m).sum(axis=-1))
    picked = np.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
    return picked - lse


#: positions per slice of :func:`token_log_probs`
_ROWS = 64


def log_likelihood(model, ids, batch_size: int | None = None) -> np.ndarray:
    """Log-likelihood of every document of ``ids`` under ``model`` (single machine).

    ``sum_{t=1}^{L-1} log p(ids[t] | ids[:t])``, the documents run ``batch_size`` at a time
    (all at once when None). This is what every block of :func:`score` computes.

    Parameters
    ----------
    model : MambaLM
    ids : (b, L) integer array, L >= 1
    batch_size : int, optional

    Returns
    -------
    (b,) float64
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (batch, length), got {ids.shape}")
    b = ids.shape[0]
    step = _batch_size(batch_size)
    step = max(b, 1) if step is None else step
    out = np.empty(b, dtype=np.float64)
    for s in range(0, b, step):
        part = ids[s:s + step]
        if part.shape[1] < 2:
            out[s:s + step] = 0.0
            continue
        # the head in tiles with a running log-sum-exp: never the (batch, length, vocab) logits
        out[s:s + step] = model.token_log_probs(part).sum(axis=1)
    return out


def _batch_size(batch_size):
    """None or an integer >= 1 (ValueError for 0, negatives, bools, floats)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected None or an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _score_block(ids, source, batch_size):
    model, _ = _model(source)
    return log_likelihood(model, ids, batch_size)


def _score_docs(docs, source):
    model, _ = _model(source)
    return [float(log_likelihood(model, np.asarray(d)[None])[0]) for d in docs]


def _long_block(ids, carried, source, first):
    """One time block of a long sequence: per-token log-probs and the state after it."""
    model, _ = _model(source)
    state, last = carried
    logits, new = model.forward(ids[None], state)
    logits = logits[0]
    lp = token_log_probs(logits[:-1], ids[1:])
    if not first:
        lp = np.concatenate([token_log_probs(last[None], ids[:1]), lp])
    return lp, (new, logits[-1].copy())


def _generate_block(prompts, source, max_new_tokens):
    model, lock = _model(source)
    with lock:  # the decode buffers live on the model: one generation at a time per process
        gen = model.generate(np.asarray(prompts), max_new_tokens=max_new_tokens, temperature=0.0)
        steps = [np.asarray(t) for t in gen]
    if not steps:
        return np.zeros((prompts.shape[0], 0), np.int64)
    return np.stack(steps, axis=1).astype(np.int64)


def _generate_docs(docs, source, max_new_tokens):
    model, lock = _model(source)
    docs = [np.asarray(d) for d in docs]
    if not docs:
        return []
    with lock:
        gen = model.generate(docs, max_new_tokens=max_new_tokens, temperature=0.0)
        steps = [np.asarray(t) for t in gen]
    toks = np.stack(steps, axis=1) if steps else np.zeros((len(docs), 0), np.int64)
    return [row.astype(np.int64) for row in toks]


# --------------------------------------------------------------------------- dask entry points
def _is_bag(x) -> bool:
    try:
        import dask.bag as db
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, db.Bag)


def score(model: ModelSource, ids, batch_size: int | None = None):
    """Log-likelihood per document, ``sum_{t>=1} log p(x_t | x_<t)`` (float64).

    Parameters
    ----------
    model : ModelSource
        Loaded once per worker process.
    ids : dask array (n_docs, length) of token ids chunked along the documents, or a dask
        bag of 1-D token arrays (documents of any lengths, each run alone)
    batch_size : int, optional
        Documents per model call inside a block (the whole block when None); bounds the
        activations' memory (the LM head runs in tiles, so the logits are never held whole).

    Returns
    -------
    dask array (n_docs,) float64, or a dask bag of floats for a bag input.
        Each block equals :func:`log_likelihood` of the same documents on one machine, bit
        for bit, whatever the number of workers or the order tasks finish.
    """
    if _is_bag(ids):
        return ids.map_partitions(_score_docs, model)
    da = require_dask()
    _model_type_check(model)
    batch_size = _batch_size(batch_size)
    ids = as_dask(ids, "ids", 2)
    ids = ids.rechunk({1: ids.shape[1]})
    return da.map_blocks(_score_block, ids, model, batch_size, drop_axis=1, dtype=np.float64,
                         meta=np.empty((0,), np.float64))


def score_long(model: ModelSource, ids, return_state: bool = False):
    """Per-token log-probabilities of one long sequence split in time blocks, the model state
    carried from block to block.

    Parameters
    ----------
    model : ModelSource
    ids : dask array (length,) of token ids; its chunks are the time blocks
    return_state : bool
        Also return the ``MambaLMState`` after the sequence (a ``dask.delayed``).

    Returns
    -------
    dask array (length - 1,) float64
        ``log p(ids[t] | ids[:t])`` for ``t = 1 .. length-1``: bitwise equal to running the
        same blocks one after the other with ``MambaLM.forward(block, state)`` on one machine
        (and to one whole forward up to the BLAS rounding of the projections).
    state : dask.delayed MambaLMState
        Only with ``return_state``.
    """
    import dask

    da = require_dask()
    _model_type_check(model)
    ids = as_dask(ids, "ids", 1)
    blocks = blocks_of(ids)
    carried = (None, None)
    parts = []
    for j, blk in enumerate(blocks):
        res = dask.delayed(_long_block, pure=True, nout=2)(blk, carried, model, j == 0)
        n = ids.chunks[0][j] - (1 if j == 0 else 0)
        parts.append(da.from_delayed(res[0], shape=(n,), dtype=np.float64))
        carried = res[1]
    out = da.concatenate(parts) if parts else da.zeros((0,), dtype=np.float64)
    if return_state:
        return out, dask.delayed(lambda c: c[0], pure=True)(carried)
    return out


def generate(model: ModelSource, prompts, max_new_tokens: int = 32):
    """Batched greedy generation (``temperature=0``) over a dask array or bag of prompts.

    Parameters
    ----------
    model : ModelSource
    prompts : dask array (n, length) chunked along the prompts, or a dask bag of 1-D arrays
    max_new_tokens : int

    Returns
    -------
    dask array (n, max_new_tokens) int64, or a bag of 1-D int64 arrays.
        Each block equals ``MambaLM.generate`` on the same prompts on one machine.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0, got {max_new_tokens!r}")
    if _is_bag(prompts):
        return prompts.map_partitions(_generate_docs, model, int(max_new_tokens))
    da = require_dask()
    _model_type_check(model)
    prompts = as_dask(prompts, "prompts", 2)
    prompts = prompts.rechunk({1: prompts.shape[1]})
    return da.map_blocks(_generate_block, prompts, model, int(max_new_tokens), dtype=np.int64,
                         chunks=(prompts.chunks[0], (int(max_new_tokens),)),
                         meta=np.empty((0, 0), np.int64))


def _model_type_check(model):
    if not isinstance(model, ModelSource):
        raise TypeError(f"model: expected a nbssm.dask.ModelSource, got {type(model).__name__}")
