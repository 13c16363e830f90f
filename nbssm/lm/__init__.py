"""Mamba-1 language models from local checkpoints, on CPU, without PyTorch.

Public names: :class:`MambaLM`, :class:`MambaMixer` (the model-layer block, from
:mod:`nbssm.models`), :class:`ModelState` (the one state type, from :mod:`nbssm.state`),
:class:`MambaLMConfig`, :func:`load_checkpoint`, :func:`sample_next`, and the errors
:class:`CheckpointError`, :class:`UnsupportedConfigError`, :class:`StateMismatchError`,
:class:`StateFileError`. ``MambaLMState`` is a deprecated alias of :class:`ModelState`.
Importing this package compiles nothing (the decode kernel compiles on first use).
"""

import warnings
from importlib import import_module

# names resolved on first access, so that importing a submodule that needs only numpy (the
# checkpoint reader, the command line) does not import Numba: `nbssm generate` starts reading
# the checkpoint before the kernels' modules are imported
_LAZY = {
    "MambaMixer": "nbssm.models",
    "ModelState": "nbssm.state",
    "StateFileError": "nbssm.state",
    "StateMismatchError": "nbssm.state",
    "MambaLMConfig": "nbssm.lm.config",
    "UnsupportedConfigError": "nbssm.lm.config",
    "parse_config": "nbssm.lm.config",
    "CheckpointError": "nbssm.lm.loading",
    "load_checkpoint": "nbssm.lm.loading",
    "Generation": "nbssm.lm.model",
    "MambaLM": "nbssm.lm.model",
    "sample_next": "nbssm.lm.sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name == "MambaLMState":
        warnings.warn("MambaLMState is deprecated; use nbssm.ModelState (the one state type)", DeprecationWarning,
                      stacklevel=2)
        return __getattr__("ModelState")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
