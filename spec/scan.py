"""The scan layer: affine transitions and their scans.

Spec: Lean namespace ``Spec``, file ``NN/Spec/Layers/SelectiveScan.lean``;
section 2 of the spec document.

Every function takes the scalar context ``ctx`` first and performs all
arithmetic through it. Vectors are Python lists of scalars. Recursive Lean
definitions are written as loops that evaluate the same operations in the same
order (Python's recursion limit would otherwise cap the length).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .context import Context, DoubleContext

Vector = list  # list of scalars


# --------------------------------------------------------------------------- inputs
def _is_symbolic(v: Any) -> bool:
    """A sympy object (or another context's term): left as it is."""
    return getattr(type(v), "is_Number", None) is not None


def _scalar(ctx: Context, v: Any) -> Any:
    if type(v) is float:
        return v if isinstance(ctx, DoubleContext) else ctx.const(v)
    if _is_symbolic(v):
        return v
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        raise TypeError(f"expected a real number, got a boolean {v!r} (Lean's Float has no booleans)")
    if isinstance(v, numbers.Real):
        return ctx.const(v)
    if isinstance(v, numbers.Complex):
        raise TypeError(f"expected a real number, got the complex number {v!r}")
    return v


def as_scalars(ctx: Context, value: Any) -> Any:
    """A runner's input (a number, or nested lists/tuples/numpy arrays of them) as the context's scalars.

    Lean's runners take ``Float`` (or real) entries, never integers: a Python ``int``, a numpy
    integer or float, or an integer numpy array becomes the context's scalar first
    (``ctx.const``): a Python ``float`` on the double contexts (``1 -> 1.0``; integers above
    2**53 round as ``float()`` rounds them), a sympy number on the sympy contexts (integers stay
    exact ``Integer``s, which the reals contain; floats become sympy ``Float``s of the same binary
    value). Entries that already are symbolic (sympy expressions, uninterpreted terms) are kept.
    Booleans and complex numbers raise ``TypeError``. Returns new lists; the input is not
    modified.
    """
    if isinstance(value, (list, tuple)):
        if isinstance(ctx, DoubleContext) and all(type(v) is float for v in value):
            return list(value)
        return [as_scalars(ctx, v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "shape") and not _is_symbolic(value):
        return as_scalars(ctx, value.tolist())
    return _scalar(ctx, value)


def _scalar_transitions(ctx: Context, trs: Sequence[Any]) -> list:
    return [ScalarAffineTransition(as_scalars(ctx, t.a), as_scalars(ctx, t.b)) for t in trs]


def _diagonal_transitions(ctx: Context, trs: Sequence[Any]) -> list:
    return [DiagonalTransition(as_scalars(ctx, t.a), as_scalars(ctx, t.b)) for t in trs]


# --------------------------------------------------------------------------- scalar affine
@dataclass(frozen=True)
class ScalarAffineTransition:
    """``(a, b)`` denotes the map ``h -> a*h + b``.

    Spec: ``Spec.ScalarAffineTransition``.
    """

    a: Any
    b: Any

    @staticmethod
    def id(ctx: Context) -> ScalarAffineTransition:
        """Spec: ``ScalarAffineTransition.id = (1, 0)``."""
        return ScalarAffineTransition(ctx.one, ctx.zero)

    def apply(self, ctx: Context, h: Any) -> Any:
        """Spec: ``apply (a, b) h = a*h + b``."""
        return ctx.add(ctx.mul(self.a, h), self.b)

    @staticmethod
    def compose(ctx: Context, t2: ScalarAffineTransition, t1: ScalarAffineTransition) -> ScalarAffineTransition:
        """First ``t1``, then ``t2``: ``(a2*a1, a2*b1 + b2)``.

        Spec: ``ScalarAffineTransition.compose t2 t1``.
        """
        return ScalarAffineTransition(ctx.mul(t2.a, t1.a), ctx.add(ctx.mul(t2.a, t1.b), t2.b))


def run_scalar_affine(ctx: Context, h0: Any, trs: Sequence[ScalarAffineTransition]) -> Any:
    """Final state after applying ``trs`` in order to ``h0`` (``h0`` for ``[]``).

    Spec: ``runScalarAffine`` (a left fold of ``apply``). Numeric inputs become the context's
    scalars first (:func:`as_scalars`).
    """
    h = as_scalars(ctx, h0)
    for t in _scalar_transitions(ctx, trs):
        h = t.apply(ctx, h)
    return h


def summarize_scalar_affine(ctx: Context, trs: Sequence[ScalarAffineTransition]) -> ScalarAffineTransition:
    """One transition equal to the whole list.

    Spec: ``summarizeScalarAffine [] = id``;
    ``summarizeScalarAffine (t :: rest) = compose (summarizeScalarAffine rest) t``.
    Evaluated from the end of the list, as the recursion does.
    """
    s = ScalarAffineTransition.id(ctx)
    for t in reversed(_scalar_transitions(ctx, trs)):
        s = ScalarAffineTransition.compose(ctx, s, t)
    return s


def _states_after(ctx: Context, h0: Any, trs: Sequence[Any]) -> list:
    """``[h1, ..., hT]`` with ``h_k = trs[k-1].apply(ctx, h_{k-1})``: the recursion that
    ``scalarAffineScan`` and ``diagonalSelectiveScan`` both unfold to."""
    out = []
    h = h0
    for t in trs:
        h = t.apply(ctx, h)
        out.append(h)
    return out


def scalar_affine_scan(ctx: Context, h0: Any, trs: Sequence[ScalarAffineTransition]) -> list:
    """States after each transition, ``[h1, ..., hT]`` (without ``h0``).

    Spec: ``scalarAffineScan``.
    """
    return _states_after(ctx, as_scalars(ctx, h0), _scalar_transitions(ctx, trs))


# --------------------------------------------------------------------------- diagonal
@dataclass(frozen=True)
class DiagonalTransition:
    """``(a, b)`` with vectors of length ``stateDim``: ``h -> a ⊙ h + b``.

    Spec: ``Spec.DiagonalTransition``.
    """

    a: Vector
    b: Vector

    def __post_init__(self) -> None:
        if len(self.a) != len(self.b):
            raise ValueError(
                f"DiagonalTransition: field 'b' must have shape ({len(self.a)},) like 'a', got ({len(self.b)},)"
            )

    @property
    def dim(self) -> int:
        return len(self.a)

    @staticmethod
    def id(ctx: Context, dim: int) -> DiagonalTransition:
        """Spec: ``DiagonalTransition.id``: ones and zeros."""
        return DiagonalTransition([ctx.one] * dim, [ctx.zero] * dim)

    def apply(self, ctx: Context, h: Vector) -> Vector:
        """Spec: ``(apply tr h)_i = a_i*h_i + b_i`` (lemma ``apply_vecGet``)."""
        if len(h) != len(self.a):
            raise ValueError(f"DiagonalTransition.apply: state 'h' must have shape ({len(self.a)},), got ({len(h)},)")
        return [ctx.add(ctx.mul(ai, hi), bi) for ai, hi, bi in zip(self.a, h, self.b)]

    @staticmethod
    def compose(ctx: Context, t2: DiagonalTransition, t1: DiagonalTransition) -> DiagonalTransition:
        """First ``t1``, then ``t2``, channelwise: ``(a2⊙a1, a2⊙b1 + b2)``.

        Spec: ``DiagonalTransition.compose t2 t1``.
        """
        if t1.dim != t2.dim:
            raise ValueError(f"DiagonalTransition.compose: dimensions differ ({t2.dim} vs {t1.dim})")
        a = [ctx.mul(a2, a1) for a2, a1 in zip(t2.a, t1.a)]
        b = [ctx.add(ctx.mul(a2, b1), b2) for a2, b1, b2 in zip(t2.a, t1.b, t2.b)]
        return DiagonalTransition(a, b)


def run_diagonal_transitions(ctx: Context, h0: Vector, trs: Sequence[DiagonalTransition]) -> Vector:
    """Final state. Spec: ``runDiagonalTransitions``."""
    h = as_scalars(ctx, h0)
    for t in _diagonal_transitions(ctx, trs):
        h = t.apply(ctx, h)
    return h


def diagonal_selective_scan(ctx: Context, h0: Vector, trs: Sequence[DiagonalTransition]) -> list:
    """States after each transition, ``[h1, ..., hT]`` (without ``h0``).

    Spec: ``diagonalSelectiveScan``. Numeric inputs become the context's scalars first
    (:func:`as_scalars`); a state of the wrong length raises ``ValueError``.
    """
    return _states_after(ctx, as_scalars(ctx, h0), _diagonal_transitions(ctx, trs))


# --------------------------------------------------------------------------- Array family
def scan_array(step: Callable[[Any, Any], tuple], s0: Any, xs: Sequence[Any]) -> tuple:
    """Generic left fold returning ``(final state, outputs)``, ``step s x = (s', o)``.

    Spec: ``Spec.scanArray`` (Array family). The step function carries its own
    context (it closes over it), as in Lean where it is a plain function.
    """
    s = s0
    outs = []
    for x in xs:
        s, o = step(s, x)
        outs.append(o)
    return s, outs


def scan_array_from(step: Callable[[Any, Any], tuple], s0: Any, initial_outputs: Sequence[Any], xs: Sequence[Any]) -> tuple:
    """``scanArray``'s fold seeded with earlier outputs: ``(final state, initial_outputs ++ outputs)``.

    Spec: ``Spec.scanArrayFrom`` (Array family); ``scanArray step s0 xs`` is the
    ``initial_outputs = #[]`` instance (lemma ``scanArrayFrom_eq``).
    """
    s = s0
    outs = list(initial_outputs)
    for x in xs:
        s, o = step(s, x)
        outs.append(o)
    return s, outs


__all__ = [
    "as_scalars",
    "ScalarAffineTransition",
    "DiagonalTransition",
    "run_scalar_affine",
    "summarize_scalar_affine",
    "scalar_affine_scan",
    "run_diagonal_transitions",
    "diagonal_selective_scan",
    "scan_array",
    "scan_array_from",
]
