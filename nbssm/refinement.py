"""Deprecated location of the kernel refinement checks: use :mod:`nbssm.verify.refinement`.

This name stays one release; it is the same module object as the new one.
"""

import sys
import warnings

from nbssm.verify import refinement as _refinement

warnings.warn("nbssm.refinement is deprecated; use nbssm.verify.refinement", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _refinement
