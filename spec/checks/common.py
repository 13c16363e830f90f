"""Symbolic instances and the shared deciders of the checker's families.

Symbols: every parameter, initial state and input of a statement is a
distinct sympy symbol (:func:`sym_s4`, :func:`sym_selective`, ...). Deciders:
:func:`prefix_causality` (no future symbol in a prefix output, and identity
with the short run), :func:`sides` (two sides built independently, compared
by identity or expand) and :func:`lengths_equal`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import sympy

from .. import models as M
from ..symbolic import (
    IDENTITY,
    Budget,
    NumericEvaluator,
    Occurrence,
    Refuted,
    Unknown,
    compare_structures,
    dag_symbols,
    flatten,
    fmt_num,
    independent,
)
from .base import Dims


# --------------------------------------------------------------------------- symbols
def sym(name: str, **assumptions) -> sympy.Symbol:
    return sympy.Symbol(name, **assumptions)


def svec(name: str, n: int) -> list:
    """``[name_0, ..., name_{n-1}]``."""
    return [sym(f"{name}_{i}") for i in range(n)]


def smat(name: str, rows: int, cols: int) -> list:
    """``[[name_0_0, ...], ...]`` of shape (rows, cols)."""
    return [[sym(f"{name}_{i}_{j}") for j in range(cols)] for i in range(rows)]


def stokens(name: str, n: int, dim: int, start: int = 0) -> list:
    """``n`` symbolic tokens ``name{t}_{i}`` of length ``dim``."""
    return [svec(f"{name}{t}", dim) for t in range(start, start + n)]


def sym_ssm(dim: int) -> M.DiagonalSSM:
    return M.DiagonalSSM(dim, svec("A", dim), svec("B", dim), svec("C", dim), svec("D", dim))


def sym_s4(d: Dims, cls=M.DiagonalS4Spec) -> M.DiagonalS4Spec:
    """A ``DiagonalS4Spec`` (or mutant subclass ``cls``) whose every parameter is a distinct symbol."""
    return cls(d.input_dim, d.state_dim, d.output_dim, smat("inProj", d.input_dim, d.state_dim),
               smat("outProj", d.state_dim, d.output_dim), sym_ssm(d.state_dim))


def sym_compact(d: Dims, cls=M.MambaBlockSpec) -> M.MambaBlockSpec:
    """A ``MambaBlockSpec`` whose every parameter is a distinct symbol."""
    return cls(d.input_dim, d.state_dim, d.output_dim, smat("inProj", d.input_dim, d.state_dim),
               smat("gateProj", d.input_dim, d.state_dim), smat("outProj", d.state_dim, d.output_dim),
               sym_ssm(d.state_dim))


def sym_selective(d: Dims, cls=M.SelectiveMambaBlockSpec) -> M.SelectiveMambaBlockSpec:
    """A ``SelectiveMambaBlockSpec`` whose every parameter (11 fields) is a distinct symbol."""
    i, e, n, o, w = d.input_dim, d.inner_dim, d.state_dim, d.output_dim, d.conv_width
    return cls(i, e, n, o, w, smat("xProj", i, e), smat("zProj", i, e), smat("convKernel", w, e),
               svec("convBias", e), smat("dtProj", e, e), svec("dtBias", e), smat("Arate", e, n),
               smat("bProj", e, n), smat("cProj", e, n), svec("dSkip", e), smat("outProj", e, o))


def sym_h0(d: Dims) -> list:
    """A symbolic S4 / compact-Mamba initial state, shape (state_dim,)."""
    return svec("h0", d.state_dim)


def sym_H0(d: Dims) -> list:
    """A symbolic selective initial state, shape (inner_dim, state_dim)."""
    return smat("H0", d.inner_dim, d.state_dim)


def sym_L0(d: Dims, n: int | None = None) -> list:
    """A symbolic initial convolution history (newest first), ``conv_width`` entries by default."""
    return stokens("L", d.conv_width if n is None else n, d.inner_dim)


def xs_ys(d: Dims, dim: int) -> tuple[list, list]:
    """Symbolic inputs ``xs`` (tokens ``x0..``) and future inputs ``ys`` (tokens ``y0..``)."""
    return stokens("x", d.n_xs, dim), stokens("y", d.n_ys, dim)


def all_symbols(structure: Any) -> set:
    return dag_symbols(*[leaf for _, leaf in flatten(structure)])


def model_params(m) -> set:
    """Every symbol among a model's parameter fields."""
    syms = set()
    for v in vars(m).values():
        if isinstance(v, (list, tuple)):
            syms |= all_symbols(v)
        elif isinstance(v, M.DiagonalSSM):
            syms |= all_symbols([v.A, v.B, v.C, v.D])
    return syms


# --------------------------------------------------------------------------- deciders
def _dependence_witness(expr: Any, s: sympy.Symbol, seed: int = 0) -> tuple[str, str, str, str] | None:
    """Numeric evidence that ``expr`` changes when only ``s`` changes (None if not seen)."""
    for sd in (seed, seed + 1, seed + 2):
        ev1 = NumericEvaluator(seed=sd)
        v1 = ev1.evaluate(expr)
        s1 = ev1.symbol_value(s)
        values = dict(ev1.values)
        values[s] = s1 + 1
        ev2 = NumericEvaluator(seed=sd, values=values)
        v2 = ev2.evaluate(expr)
        if not ev1.close(v1, v2):
            return fmt_num(s1, 4), fmt_num(s1 + 1, 4), fmt_num(v1), fmt_num(v2) + f" (seed {sd})"
    return None


def prefix_causality(run: Callable[[list], list], xs: list, ys: list, budget: Budget,
                     keep: int | None = None) -> str:
    """Decide ``take keep (run (xs ++ ys)) = run xs`` (``keep = |xs|`` by default).

    Parameters
    ----------
    run : callable
        ``run(tokens)`` returns the list of outputs, one vector (list of
        sympy expressions) per token.
    xs, ys : list of lists of sympy symbols
        Shapes (|xs|, input_dim) and (|ys|, input_dim); every component a
        distinct symbol.
    budget : Budget
    keep : int, optional
        Number of leading outputs compared (|xs| for the theorem; controls
        use |xs| + 1).

    Returns
    -------
    str
        The evidence, when proved: both (1) no symbol of ``ys`` occurs in
        the first ``keep`` outputs of the long run (a memoised walk over the
        DAG), and (2) those outputs are structurally identical to ``run xs``.
        The two runs are built from a cleared sympy cache each.

    Raises
    ------
    Refuted
        With the output and the future input it depends on (and two numeric
        evaluations differing only in that input), or the length mismatch,
        or a point where the outputs differ.
    Unknown
        Future symbols occur but no numeric dependence is seen, or the
        outputs are not identical yet agree numerically.
    """
    keep = len(xs) if keep is None else keep
    full = independent(lambda: run(xs + ys))
    budget.check()
    prefix = independent(lambda: run(xs))
    budget.check()
    head = full[:keep]
    future = all_symbols(ys)
    occurs = Occurrence(future)
    for t, out in enumerate(head):
        for j, e in enumerate(out):
            budget.check()
            if not occurs.contains(e):
                continue
            hit = sorted(dag_symbols(e) & future, key=lambda s: s.name)
            for s in hit:
                w = _dependence_witness(e, s)
                if w is not None:
                    a, b, va, vb = w
                    raise Refuted(
                        f"output {t} (component {j}) of run(xs ++ ys) depends on the future input {s.name}: "
                        f"with every other symbol fixed, {s.name}={a} gives {va} and {s.name}={b} gives {vb}"
                    )
            if hit:
                raise Unknown(f"output {t}[{j}] contains future symbols {[s.name for s in hit]} "
                              "but no numeric dependence was seen")
    evidence = compare_structures(head, prefix, IDENTITY, budget)
    return (f"no symbol of ys among the free symbols of the first {keep} outputs; take {keep} of "
            f"run(xs ++ ys) identical to run(xs): {evidence}")


def sides(lhs: Callable[[], Any], rhs: Callable[[], Any], method: str, budget: Budget) -> str:
    """Build both sides independently and compare them.

    Parameters
    ----------
    lhs, rhs : callable
        Zero-argument builders of the two sides (nested lists/tuples of
        sympy expressions or Python ints), each run from a cleared sympy
        cache so that no object is shared between the sides but the symbols.
    method : {"identity", "expand"}
    budget : Budget

    Returns
    -------
    str
        The evidence; raises :class:`Refuted` or :class:`Unknown` otherwise
        (see :func:`nbssm.spec.symbolic.compare_structures`).
    """
    left = independent(lhs)
    budget.check()
    right = independent(rhs)
    budget.check()
    return compare_structures(left, right, method, budget)


def lengths_equal(cases: Sequence[tuple[str, int, int]]) -> str:
    """Length statements: every ``(label, actual, expected)`` must agree."""
    for label, got, want in cases:
        if got != want:
            raise Refuted(f"{label}: length {got}, expected {want}")
    return f"{len(cases)} lengths equal ({', '.join(f'{l}={g}' for l, g, _ in cases)})"


@contextmanager
def patched(module, name: str, value):
    """Temporarily replace ``module.name`` (instrumentation or a mutation of a module-level function).

    Used only where the code under test is a module-level function that no
    subclass can override; the original is restored on exit.
    """
    if not hasattr(module, name):
        raise Unknown(f"cannot inject the mutation: {module.__name__}.{name} does not exist")
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield old
    finally:
        setattr(module, name, old)
