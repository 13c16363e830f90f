"""Mamba-1 language models from local checkpoints, on CPU, without PyTorch.

Public names: :class:`MambaLM`, :class:`MambaLMState`, :class:`MambaMixer`,
:class:`MambaLMConfig`, :func:`load_checkpoint`, :func:`sample_next`, and the errors
:class:`CheckpointError`, :class:`UnsupportedConfigError`, :class:`StateMismatchError`.
Importing this package compiles nothing (the decode kernel compiles on first use).
"""

from .config import MambaLMConfig, UnsupportedConfigError, parse_config
from .loading import CheckpointError, load_checkpoint
from .mixer import MambaMixer
from .model import Generation, MambaLM
from .sampling import sample_next
from .state import MambaLMState, StateMismatchError

__all__ = [
    "CheckpointError", "Generation", "MambaLM", "MambaLMConfig", "MambaLMState", "MambaMixer",
    "StateMismatchError", "UnsupportedConfigError", "load_checkpoint", "parse_config", "sample_next",
]
