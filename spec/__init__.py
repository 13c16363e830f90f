"""Executable mirror of TorchLean's diagonal SSM specification (installed as ``nbssm.spec``).

Modules
-------
context     scalar contexts (Lean ``Context α``): IEEE double and sympy; activation forms
scan        the scan layer (Lean ``Spec``): affine transitions, scans, ``scanArray``
models      ``DiagonalSSM``, ``DiagonalS4Spec``, ``MambaBlockSpec``, ``SelectiveMambaBlockSpec``
verdict     check results (proved / refuted / unknown)

The spec is pure Python, generic over the context, and deliberately slow and
obvious: it is the top rung of the ladder spec -> reference -> kernel.
"""

from .context import DOUBLE, DOUBLE_ARRAY, SYMPY, SYMPY_ARRAY, Context, make_context

__all__ = ["Context", "make_context", "DOUBLE", "DOUBLE_ARRAY", "SYMPY", "SYMPY_ARRAY"]
