"""Deprecated location of the linear-CDE checks: use :mod:`nbssm.spec.checks.linear_cde`.

This name stays one release; it is the same module object as the new one.
"""

import sys

from .checks import linear_cde as _linear_cde

sys.modules[__name__] = _linear_cde
