"""The state of a :class:`~nbssm.lm.MambaLM`: the one :class:`nbssm.state.ModelState`.

``MambaLMState`` is a deprecated alias of :class:`~nbssm.state.ModelState` (``kind
"MambaLM"``; ``ssm (n_layer, batch, d_inner, d_state)``, ``conv (n_layer, batch, d_conv - 1,
d_inner)``, ``positions (batch,)``).
"""

from __future__ import annotations

import warnings

from ..state import FORMAT, ModelState, StateFileError, StateMismatchError

STATE_FORMAT = FORMAT

__all__ = ["STATE_FORMAT", "ModelState", "StateFileError", "StateMismatchError"]


def __getattr__(name: str):
    if name == "MambaLMState":
        warnings.warn("MambaLMState is deprecated; use nbssm.ModelState (the one state type)", DeprecationWarning,
                      stacklevel=2)
        return ModelState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
