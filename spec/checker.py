"""Deprecated: the checker is the package :mod:`nbssm.spec.checks` (one module per theorem family).

This module stays one release as an alias of that package's public names.
"""

import warnings

from .checks import *  # noqa: F403 - the alias re-exports the package's public names
from .checks import __all__  # noqa: F401
from .checks.base import REGISTRY  # noqa: F401

warnings.warn("nbssm.spec.checker is deprecated; use nbssm.spec.checks", DeprecationWarning, stacklevel=2)
