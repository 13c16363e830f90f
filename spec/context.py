"""Scalar contexts: the Python counterpart of Lean's ``Context α``.

Spec: ``Context α`` (TorchLean), section 1 of the spec document.

Every spec runner takes a context object ``ctx`` and performs *all* scalar
arithmetic through it (``ctx.add``, ``ctx.mul``, ``ctx.exp``, ...). Runners
never look at the scalar type, so one code path evaluates

* on IEEE doubles (:data:`DOUBLE`, :data:`DOUBLE_ARRAY`): Lean's ``Float``,
  with the C library's behaviour on overflow (``exp(800) = inf``,
  ``log(0) = -inf``, ``1/0 = inf``): nothing raises;
* on sympy expressions (:data:`SYMPY`, :data:`SYMPY_ARRAY`): symbolic reals,
  for the checker.

Lean's context has no sigmoid, softplus or SiLU; they are defined on top of it
(section 1). Two forms exist, equal over the reals and different in the last
bit over IEEE doubles:

* plain (List family): ``sigmoid(x) = 1/(1+exp(-x))``,
  ``softplus(x) = log(1+exp(x))``;
* branched (Array family): ``sigmoid(x) = 1/(1+exp(-x))`` if ``x > 0`` else
  ``e/(1+e)`` with ``e = exp(x)``; ``softplus(x) = x + log(1+exp(-x))`` if
  ``x > 0`` else ``log(1+exp(x))``.

Each can be chosen on its own (:func:`make_context`), since one public copy
of the Lean code mixes plain sigmoid with branched softplus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

PLAIN = "plain"
BRANCHED = "branched"
FORMS = (PLAIN, BRANCHED)

_INF = math.inf
_NAN = math.nan


# --------------------------------------------------------------------------- IEEE double
# Python's math module calls the same C library as Lean's Float but raises where C
# returns inf/-inf/nan; these wrappers return what C returns.

def _c_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return _INF


def _c_log(x: float) -> float:
    if x > 0.0:
        return math.log(x)  # log(inf) = inf
    if x == 0.0:
        return -_INF
    return _NAN  # negative or nan


def _c_div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0.0:
            return _NAN
        return math.copysign(_INF, a) * math.copysign(1.0, b)


def _c_sqrt(x: float) -> float:
    if x >= 0.0 or x != x:
        return math.sqrt(x)
    return _NAN


def _c_unary(f: Callable[[float], float], overflow: float | None = None) -> Callable[[float], float]:
    def g(x: float) -> float:
        try:
            return f(x)
        except OverflowError:
            return math.copysign(_INF, x) if overflow is None else overflow
        except ValueError:  # sin/cos of +-inf
            return _NAN

    return g


class Context:
    """A scalar context (Lean ``Context α``) plus the activation forms built on it.

    Parameters
    ----------
    name : str
        Human-readable name, e.g. ``"double"``.
    sigmoid_form, softplus_form : {"plain", "branched"}
        Which form of sigmoid / softplus this context uses (section 1).

    Notes
    -----
    Subclasses provide the primitive operations. ``silu(x) = x * sigmoid(x)``
    (Lean ``swishSpec``) always uses this context's sigmoid.
    """

    name = "abstract"

    def __init__(self, sigmoid_form: str = PLAIN, softplus_form: str = PLAIN) -> None:
        if sigmoid_form not in FORMS:
            raise ValueError(f"sigmoid_form must be one of {FORMS}, got {sigmoid_form!r}")
        if softplus_form not in FORMS:
            raise ValueError(f"softplus_form must be one of {FORMS}, got {softplus_form!r}")
        self.sigmoid_form = sigmoid_form
        self.softplus_form = softplus_form

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigmoid={self.sigmoid_form}, softplus={self.softplus_form})"

    # ---- primitives (overridden) ----------------------------------------------------
    zero: Any
    one: Any

    def const(self, x: Any) -> Any:  # a literal of the context from a Python number
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def sub(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def mul(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def div(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def neg(self, a: Any) -> Any:
        raise NotImplementedError

    def exp(self, a: Any) -> Any:
        raise NotImplementedError

    def log(self, a: Any) -> Any:
        raise NotImplementedError

    def gt(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def ite(self, cond: Any, then: Callable[[], Any], other: Callable[[], Any]) -> Any:
        """``if cond then then() else other()``; branches are thunks, evaluated lazily."""
        raise NotImplementedError

    # ---- activations, defined on top of the context (section 1) ----------------------
    def sigmoid(self, x: Any) -> Any:
        one = self.one
        if self.sigmoid_form == PLAIN:
            return self.div(one, self.add(one, self.exp(self.neg(x))))

        def positive() -> Any:
            return self.div(one, self.add(one, self.exp(self.neg(x))))

        def other() -> Any:
            e = self.exp(x)
            return self.div(e, self.add(one, e))

        return self.ite(self.gt(x, self.zero), positive, other)

    def softplus(self, x: Any) -> Any:
        one = self.one
        if self.softplus_form == PLAIN:
            return self.log(self.add(one, self.exp(x)))

        def positive() -> Any:
            return self.add(x, self.log(self.add(one, self.exp(self.neg(x)))))

        def other() -> Any:
            return self.log(self.add(one, self.exp(x)))

        return self.ite(self.gt(x, self.zero), positive, other)

    def silu(self, x: Any) -> Any:
        """Lean ``swishSpec``: ``x * sigmoid(x)``."""
        return self.mul(x, self.sigmoid(x))


class DoubleContext(Context):
    """IEEE binary64, Lean's ``Float``: C-library semantics, never raises."""

    name = "double"
    zero = 0.0
    one = 1.0

    def const(self, x: Any) -> float:
        return float(x)

    @staticmethod
    def add(a: float, b: float) -> float:
        return a + b

    @staticmethod
    def sub(a: float, b: float) -> float:
        return a - b

    @staticmethod
    def mul(a: float, b: float) -> float:
        return a * b

    @staticmethod
    def div(a: float, b: float) -> float:
        return _c_div(a, b)

    @staticmethod
    def neg(a: float) -> float:
        return -a

    @staticmethod
    def exp(a: float) -> float:
        return _c_exp(a)

    @staticmethod
    def log(a: float) -> float:
        return _c_log(a)

    tanh = staticmethod(math.tanh)
    cosh = staticmethod(_c_unary(math.cosh, overflow=_INF))
    sinh = staticmethod(_c_unary(math.sinh))
    sqrt = staticmethod(_c_sqrt)
    abs = staticmethod(abs)
    cos = staticmethod(_c_unary(math.cos))
    sin = staticmethod(_c_unary(math.sin))
    pi = math.pi

    @staticmethod
    def gt(a: float, b: float) -> bool:
        return a > b  # IEEE: comparisons with nan are false

    @staticmethod
    def ite(cond: bool, then: Callable[[], float], other: Callable[[], float]) -> float:
        return then() if cond else other()


class SympyContext(Context):
    """Symbolic reals (sympy). Branched activations become ``Piecewise``."""

    name = "sympy"

    def __init__(self, sigmoid_form: str = PLAIN, softplus_form: str = PLAIN) -> None:
        super().__init__(sigmoid_form, softplus_form)
        import sympy

        self._sp = sympy
        self.zero = sympy.Integer(0)
        self.one = sympy.Integer(1)
        self.pi = sympy.pi

    def const(self, x: Any) -> Any:
        return self._sp.sympify(x)

    @staticmethod
    def add(a: Any, b: Any) -> Any:
        return a + b

    @staticmethod
    def sub(a: Any, b: Any) -> Any:
        return a - b

    @staticmethod
    def mul(a: Any, b: Any) -> Any:
        return a * b

    @staticmethod
    def div(a: Any, b: Any) -> Any:
        return a / b

    @staticmethod
    def neg(a: Any) -> Any:
        return -a

    def exp(self, a: Any) -> Any:
        return self._sp.exp(a)

    def log(self, a: Any) -> Any:
        return self._sp.log(a)

    def tanh(self, a: Any) -> Any:
        return self._sp.tanh(a)

    def cosh(self, a: Any) -> Any:
        return self._sp.cosh(a)

    def sinh(self, a: Any) -> Any:
        return self._sp.sinh(a)

    def sqrt(self, a: Any) -> Any:
        return self._sp.sqrt(a)

    def abs(self, a: Any) -> Any:
        return self._sp.Abs(a)

    def cos(self, a: Any) -> Any:
        return self._sp.cos(a)

    def sin(self, a: Any) -> Any:
        return self._sp.sin(a)

    def gt(self, a: Any, b: Any) -> Any:
        return self._sp.Gt(a, b)

    def ite(self, cond: Any, then: Callable[[], Any], other: Callable[[], Any]) -> Any:
        sp = self._sp
        if cond is sp.true or cond is True:
            return then()
        if cond is sp.false or cond is False:
            return other()
        return sp.Piecewise((then(), cond), (other(), True))


def make_context(kind: str = "double", sigmoid: str = PLAIN, softplus: str = PLAIN) -> Context:
    """Build a context: ``kind`` in {"double", "sympy"}, forms in {"plain", "branched"}."""
    if kind == "double":
        return DoubleContext(sigmoid, softplus)
    if kind == "sympy":
        return SympyContext(sigmoid, softplus)
    raise ValueError(f"kind must be 'double' or 'sympy', got {kind!r}")


#: Lean ``Float`` with the List family's plain activations
DOUBLE = DoubleContext(PLAIN, PLAIN)
#: Lean ``Float`` with the Array family's branched activations
DOUBLE_ARRAY = DoubleContext(BRANCHED, BRANCHED)
#: symbolic reals, plain activations (the forms are equal over the reals)
SYMPY = SympyContext(PLAIN, PLAIN)
#: symbolic reals with the branched forms as ``Piecewise`` expressions
SYMPY_ARRAY = SympyContext(BRANCHED, BRANCHED)
