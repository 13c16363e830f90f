"""Symbolic machinery of the checker: DAG-safe comparison, symbol scans, witnesses, budgets.

sympy expressions built by the spec runners are DAGs: a state computed at
token ``t`` is shared by every later expression. sympy's own recursive
traversals (``==`` on distinct but equal trees, ``free_symbols``, ``srepr``,
``xreplace``) do not remember visited nodes and can take time exponential in
the depth of such a DAG. Every traversal here is iterative and memoised on
node identity, so it is linear in the number of distinct nodes.

Contents
--------
dag_equal        exact structural identity of two expressions (hash first, then
                 a memoised walk over pairs of nodes)
dag_symbols      the ``Symbol`` atoms reachable from an expression
dag_size         number of distinct nodes
NumericEvaluator evaluation at a point with mpmath (50 digits), memoised, with a
                 fixed interpretation of uninterpreted functions
Budget           a per-check wall-clock budget (cooperative checks plus SIGALRM)
Refuted / Unknown exceptions carrying a verdict's evidence
compare_structures  proved / refuted (with a numeric counterexample) / unknown
                 for two nested structures of expressions, by identity or expand
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import sympy
from sympy.core.cache import clear_cache
from sympy.core.function import AppliedUndef

__all__ = [
    "BudgetExceeded",
    "Budget",
    "Refuted",
    "Unknown",
    "dag_equal",
    "dag_symbols",
    "dag_size",
    "Occurrence",
    "flatten",
    "NumericEvaluator",
    "compare_structures",
    "independent",
    "fmt_num",
]


# --------------------------------------------------------------------------- verdict signals
class Refuted(Exception):
    """Raised inside a check with a concrete counterexample as message."""


class Unknown(Exception):
    """Raised inside a check when the method is inconclusive (message: why)."""


class BudgetExceeded(Exception):
    """The check's time budget ran out."""


#: longest interval armed on the SIGALRM timer (a longer budget is enforced by ``check()`` alone)
MAX_TIMER_S = 1e6


class Budget:
    """A wall-clock budget for one check.

    ``check()`` raises :class:`BudgetExceeded` once the budget is spent; inside
    ``with budget.alarm():`` a SIGALRM timer also interrupts long sympy calls
    (main thread of a Unix process only; elsewhere the cooperative checks
    alone apply). A budget of 0 s or less is spent before it starts; ``None``
    or ``math.inf`` means no limit (no timer is armed).

    Raises
    ------
    ValueError
        If ``seconds`` is NaN.
    """

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and math.isnan(seconds):
            raise ValueError(f"budget: expected a number of seconds or None, got {seconds!r}")
        self.seconds = None if seconds is not None and math.isinf(seconds) and seconds > 0 else seconds
        self.start = time.perf_counter()

    @property
    def deadline(self) -> float:
        return math.inf if self.seconds is None else self.start + self.seconds

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self) -> None:
        if self.remaining() <= 0.0:
            raise BudgetExceeded(f"time budget of {self.seconds:g} s exceeded")

    @contextmanager
    def alarm(self):
        self.check()
        use_signal = (
            self.seconds is not None
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )
        if not use_signal:
            yield
            return

        def handler(signum, frame):  # pragma: no cover - timing dependent
            if self.remaining() > 0:  # a budget longer than MAX_TIMER_S: re-arm for the rest
                signal.setitimer(signal.ITIMER_REAL, min(max(self.remaining(), 1e-4), MAX_TIMER_S))
                return
            raise BudgetExceeded(f"time budget of {self.seconds:g} s exceeded")

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, min(max(self.remaining(), 1e-4), MAX_TIMER_S))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- DAG traversals
def _is_basic(x: Any) -> bool:
    return isinstance(x, sympy.Basic)


def dag_equal(a: Any, b: Any, seen: set | None = None) -> bool:
    """Exact structural identity of two sympy expressions (or Python numbers).

    Two nodes are identical when they are the same object, or have the same
    type, the same hash and pairwise identical arguments (atoms: sympy's
    ``==``). Pairs already visited are not visited again, so the walk is
    linear in the number of distinct node pairs even when the two sides are
    separately built DAGs sharing no object.
    ``seen`` may be shared between calls on DAGs that share nodes (it holds
    pairs already proved identical); after a ``False`` result it must be
    discarded, since it then also holds pairs that were not finished.
    """
    if not (_is_basic(a) and _is_basic(b)):
        if _is_basic(a) or _is_basic(b):
            return sympy.sympify(a) == sympy.sympify(b) if _plain_number(a) and _plain_number(b) else False
        return a == b
    if seen is None:
        seen = set()
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        key = (id(x), id(y))
        if key in seen:
            continue
        seen.add(key)
        if type(x) is not type(y) or hash(x) != hash(y):
            return False
        xa = x.args
        ya = y.args
        if not xa or not ya:
            if xa or ya or x != y:
                return False
            continue
        if len(xa) != len(ya):
            return False
        stack.extend(zip(xa, ya))
    return True


def _plain_number(x: Any) -> bool:
    return isinstance(x, (int, float)) or (_is_basic(x) and x.is_Number)


def _walk(roots: Iterable[Any]):
    """Distinct nodes reachable from ``roots`` (pre-order, iterative)."""
    seen: set[int] = set()
    stack = [r for r in roots if _is_basic(r)]
    while stack:
        x = stack.pop()
        i = id(x)
        if i in seen:
            continue
        seen.add(i)
        yield x
        stack.extend(x.args)


def dag_symbols(*roots: Any) -> set:
    """The ``Symbol`` atoms occurring in the expressions ``roots`` (memoised walk)."""
    return {x for x in _walk(roots) if isinstance(x, sympy.Symbol)}


class Occurrence:
    """Which expressions contain any of ``targets``: memoised over every DAG it is asked about.

    ``contains(expr)`` is answered by an iterative post-order walk that stores
    one boolean per node, so asking about all outputs of a run (which share
    their states) costs time linear in the size of the whole DAG.
    """

    def __init__(self, targets: Iterable[Any]) -> None:
        self.targets = set(targets)
        self.memo: dict[int, bool] = {}
        self._keep: list[Any] = []

    def contains(self, expr: Any) -> bool:
        if not _is_basic(expr):
            return False
        memo = self.memo
        stack = [(expr, False)]
        while stack:
            node, ready = stack.pop()
            i = id(node)
            if i in memo:
                continue
            if not node.args:
                memo[i] = node in self.targets
                self._keep.append(node)
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((a, False) for a in node.args if id(a) not in memo)
                continue
            memo[i] = any(memo[id(a)] for a in node.args)
            self._keep.append(node)
        return memo[id(expr)]


def dag_size(*roots: Any) -> int:
    """Number of distinct nodes of the DAG spanned by ``roots``."""
    return sum(1 for _ in _walk(roots))


def flatten(structure: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Leaves of a nested list/tuple structure with their index paths."""
    if isinstance(structure, (list, tuple)):
        out = []
        for i, s in enumerate(structure):
            out.extend(flatten(s, path + (i,)))
        return out
    return [(path, structure)]


def _shape_mismatch(lhs: Any, rhs: Any, path: tuple = ()) -> str | None:
    lseq = isinstance(lhs, (list, tuple))
    rseq = isinstance(rhs, (list, tuple))
    if lseq != rseq:
        return f"at {_fmt_path(path)} one side is a sequence and the other a scalar"
    if not lseq:
        return None
    if len(lhs) != len(rhs):
        return f"lengths differ at {_fmt_path(path)}: left side has {len(lhs)} entries, right side {len(rhs)}"
    for i, (l, r) in enumerate(zip(lhs, rhs)):
        m = _shape_mismatch(l, r, path + (i,))
        if m:
            return m
    return None


def _fmt_path(path: tuple) -> str:
    return "".join(f"[{i}]" for i in path) or "(root)"


# --------------------------------------------------------------------------- numeric witnesses
def fmt_num(v: Any, digits: int = 8) -> str:
    import mpmath

    if isinstance(v, mpmath.mpc):
        return mpmath.nstr(v, digits)
    if isinstance(v, bool):
        return str(v)
    try:
        return mpmath.nstr(mpmath.mpf(v), digits)
    except Exception:  # pragma: no cover
        return str(v)


class NumericEvaluator:
    """Evaluate expressions at one point with mpmath (``dps`` digits), memoised on nodes.

    Every symbol gets a value drawn from ``values`` or, when absent, a
    reproducible pseudo-random value in [-1, 1] from ``seed`` and the symbol's
    name (symbols with assumptions ``positive``/``nonnegative`` get |value|).
    An uninterpreted function ``F(a1..an)`` is read as the fixed polynomial
    ``c0 + sum_i c_i a_i + c_{n+1} a_1 ... a_n`` with coefficients drawn from the
    function's name, so statements about an arbitrary step function are
    tested on a concrete, non-linear one.
    """

    def __init__(self, seed: int = 0, values: dict | None = None, dps: int = 50) -> None:
        import mpmath

        self.mp = type(mpmath.mp)()  # a private mpmath context: the global precision is untouched
        self.mp.dps = dps
        self.mpmath = self.mp
        self.seed = seed
        self.values = dict(values or {})
        self.memo: dict[int, Any] = {}
        self._keep: list[Any] = []  # keep evaluated nodes alive so ids stay unique

    def symbol_value(self, s: sympy.Symbol) -> Any:
        if s in self.values:
            return self.mpmath.mpf(self.values[s])
        rng = random.Random(zlib.crc32(f"{self.seed}:{s.name}".encode()))
        k = rng.randint(-1000, 1000)
        if s.is_nonnegative or s.is_positive:
            k = abs(k) + (1 if s.is_positive else 0)
        self.values[s] = self.mpmath.mpf(k) / 1000  # k/1000, rounded at dps digits
        return self.values[s]

    def _function_coeffs(self, name: str, n: int) -> list:
        rng = random.Random(zlib.crc32(f"fn:{name}".encode()))
        return [self.mpmath.mpf(rng.randint(-900, 900) / 1000.0) for _ in range(n + 2)]

    def evaluate(self, expr: Any) -> Any:
        mp = self.mpmath
        if not _is_basic(expr):
            return mp.mpf(expr) if not isinstance(expr, bool) else expr
        memo = self.memo
        stack = [(expr, False)]
        while stack:
            node, ready = stack.pop()
            i = id(node)
            if i in memo:
                continue
            if not ready and node.args and not isinstance(node, sympy.Symbol):
                stack.append((node, True))
                stack.extend((a, False) for a in node.args if id(a) not in memo)
                continue
            self._keep.append(node)
            memo[i] = self._eval_node(node)
        return memo[id(expr)]

    def _eval_node(self, node: Any) -> Any:
        mp = self.mpmath
        memo = self.memo
        args = [memo[id(a)] for a in node.args] if node.args else []
        if isinstance(node, sympy.Symbol):
            return self.symbol_value(node)
        if node is sympy.true or node is sympy.S.true:
            return True
        if node is sympy.false or node is sympy.S.false:
            return False
        if node.is_Rational:
            return mp.mpf(node.p) / node.q
        if node.is_Float:
            return mp.mpf(str(node))
        if node.is_NumberSymbol or node is sympy.S.ImaginaryUnit:
            return mp.mpmathify(node.evalf(self.mp.dps + 10))
        if isinstance(node, sympy.Add):
            return mp.fsum(args)
        if isinstance(node, sympy.Mul):
            p = mp.mpf(1)
            for a in args:
                p *= a
            return p
        if isinstance(node, sympy.Pow):
            base, ex = args
            return mp.power(base, ex)
        if isinstance(node, sympy.exp):
            return mp.exp(args[0])
        if isinstance(node, sympy.log):
            return mp.log(args[0])
        if isinstance(node, sympy.Abs):
            return abs(args[0])
        if isinstance(node, sympy.Piecewise):
            for pair in node.args:
                val, cond = memo[id(pair)]
                if cond:
                    return val
            return mp.nan
        if isinstance(node, sympy.functions.elementary.piecewise.ExprCondPair):
            return (args[0], args[1])
        if isinstance(node, sympy.core.relational.Relational):
            l, r = args
            op = node.rel_op
            return {">": l > r, "<": l < r, ">=": l >= r, "<=": l <= r, "==": l == r, "!=": l != r}[op]
        if isinstance(node, sympy.And):
            return all(args)
        if isinstance(node, sympy.Or):
            return any(args)
        if isinstance(node, sympy.Not):
            return not args[0]
        if isinstance(node, AppliedUndef):
            c = self._function_coeffs(node.func.__name__, len(args))
            v = c[0]
            prod = mp.mpf(1)
            for k, a in enumerate(args):
                v += c[k + 1] * a
                prod *= a
            return v + c[-1] * prod
        fname = type(node).__name__.lower()
        f = getattr(mp, fname, None)
        if f is not None:
            return f(*args)
        raise Unknown(f"numeric evaluator cannot evaluate {type(node).__name__}")

    def close(self, a: Any, b: Any) -> bool:
        mp = self.mpmath
        if isinstance(a, bool) or isinstance(b, bool):
            return a == b
        if mp.isnan(a) or mp.isnan(b):
            return bool(mp.isnan(a) and mp.isnan(b))
        scale = 1 + abs(a) + abs(b)
        return abs(a - b) <= mp.mpf(10) ** (-(self.mp.dps - 10)) * scale


def _point_summary(ev: NumericEvaluator, exprs: Sequence[Any], limit: int = 6) -> str:
    syms = sorted(dag_symbols(*exprs), key=lambda s: s.name)
    shown = ", ".join(f"{s.name}={fmt_num(ev.symbol_value(s), 4)}" for s in syms[:limit])
    more = f", ... ({len(syms)} symbols, values reproducible from seed {ev.seed})" if len(syms) > limit else ""
    return shown + more


def numeric_witness(pairs: Sequence[tuple[tuple, Any, Any]], seeds: Sequence[int] = (0, 1, 2)) -> str | None:
    """Look for a point where some ``(path, lhs, rhs)`` pair differs numerically.

    Returns a counterexample text, or None when every pair agrees at every
    seed (to ``dps - 10`` digits).
    """
    for seed in seeds:
        ev = NumericEvaluator(seed=seed)
        for path, l, r in pairs:
            lv = ev.evaluate(l)
            rv = ev.evaluate(r)
            if not ev.close(lv, rv):
                return (
                    f"at {_fmt_path(path)} the two sides differ: left {fmt_num(lv)} vs right {fmt_num(rv)} "
                    f"at the point {_point_summary(ev, [l, r])}"
                )
    return None


# --------------------------------------------------------------------------- comparison
IDENTITY = "identity"
EXPAND = "expand"


def compare_structures(lhs: Any, rhs: Any, method: str, budget: Budget | None = None) -> str:
    """Decide ``lhs = rhs`` for two nested structures of sympy expressions.

    ``method`` is ``"identity"`` (exact structural identity, for structural
    statements) or ``"expand"`` (identity, else ``expand(l - r) == 0``, for
    algebraic statements). Returns the evidence text when proved; raises
    :class:`Refuted` with a counterexample (a shape difference, or a point
    where the sides differ numerically) or :class:`Unknown`.
    """
    mismatch = _shape_mismatch(lhs, rhs)
    if mismatch:
        raise Refuted(mismatch)
    lf = flatten(lhs)
    rf = flatten(rhs)
    failing = []
    n_expanded = 0
    seen: set = set()  # node pairs proved identical, shared across entries (they share sub-DAGs)
    for (path, l), (_, r) in zip(lf, rf):
        if budget is not None:
            budget.check()
        if dag_equal(l, r, seen):
            continue
        seen = set()
        if method == EXPAND:
            n_expanded += 1
            if sympy.expand(sympy.sympify(l) - sympy.sympify(r)) == 0:
                continue
        failing.append((path, l, r))
    if not failing:
        nodes = dag_size(*[l for _, l in lf])
        how = "exact structural identity" if n_expanded == 0 else f"identity, and expand(lhs - rhs) == 0 for {n_expanded} entries"
        return f"{len(lf)} entries equal by {how} (left DAG: {nodes} nodes)"
    witness = numeric_witness(failing)
    if witness:
        raise Refuted(witness)
    path = failing[0][0]
    raise Unknown(
        f"{len(failing)} entries not decided by {method} (first at {_fmt_path(path)}); "
        "they agree numerically at 3 random points (50 digits)"
    )


def independent(build: Callable[[], Any]) -> Any:
    """Build one side of a statement from a cleared sympy cache.

    sympy caches constructor calls, so a side built after another could
    receive the other side's objects. Clearing the cache before each side
    keeps the two sides independently constructed; the identity comparison
    then walks both DAGs.
    """
    clear_cache()
    return build()
