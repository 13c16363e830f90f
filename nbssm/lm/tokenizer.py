"""Optional tokenizer: ``tokenizer.json`` read with the ``tokenizers`` package when both exist."""

from __future__ import annotations

import os

import numpy as np


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer``: text <-> 1-D int64 token ids.

    Parameters
    ----------
    inner : tokenizers.Tokenizer
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (no special tokens added), (n,) int64."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode: text must be a str, got {type(text).__name__}")
        return np.asarray(self.inner.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        """Text of a sequence of token ids."""
        return self.inner.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)


def load_tokenizer(directory: str | os.PathLike):
    """``Tokenizer`` for ``directory/tokenizer.json``, or None when the file or the package is missing.

    Raises
    ------
    nbssm.lm.CheckpointError
        ``tokenizer.json`` exists but cannot be read (not a regular file, invalid JSON, not a
        tokenizer); the message names the file.
    """
    from .loading import CheckpointError

    path = os.path.join(os.fspath(directory), "tokenizer.json")
    if not os.path.isfile(path):
        return None
    try:
        from tokenizers import Tokenizer as _Inner
    except ImportError:
        return None
    try:
        return Tokenizer(_Inner.from_file(path))
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover
        raise
    except BaseException as exc:  # tokenizers raises plain Exceptions, and pyo3 panics are BaseExceptions
        raise CheckpointError(f"{path}: cannot read tokenizer ({type(exc).__name__}: {str(exc)[:300]})") from None
