"""Mamba-1 language models from local checkpoints, on CPU, without PyTorch.

Public names: :class:`MambaLM`, :class:`MambaMixer` (the model-layer block, from
:mod:`nbssm.models`), :class:`ModelState` (the one state type, from :mod:`nbssm.state`),
:class:`MambaLMConfig`, :func:`load_checkpoint`, :func:`sample_next`, and the errors
:class:`CheckpointError`, :class:`UnsupportedConfigError`, :class:`StateMismatchError`,
:class:`StateFileError`. ``MambaLMState`` is a deprecated alias of :class:`ModelState`.
Importing this package compiles nothing (the decode kernel compiles on first use).
"""

import warnings

from ..models import MambaMixer
from ..state import ModelState, StateFileError, StateMismatchError
from .config import MambaLMConfig, UnsupportedConfigError, parse_config
from .loading import CheckpointError, load_checkpoint
from .model import Generation, MambaLM
from .sampling import sample_next

__all__ = [
    "CheckpointError", "Generation", "MambaLM", "MambaLMConfig", "MambaMixer", "ModelState",
    "StateFileError", "StateMismatchError", "UnsupportedConfigError", "load_checkpoint", "parse_config",
    "sample_next",
]


def __getattr__(name: str):
    if name == "MambaLMState":
        warnings.warn("MambaLMState is deprecated; use nbssm.ModelState (the one state type)", DeprecationWarning,
                      stacklevel=2)
        return ModelState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
