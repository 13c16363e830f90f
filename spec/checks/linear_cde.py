"""Checks of the linear-CDE specification for ``nbssm verify`` (kinds "beyond" and "control").

- ``linear_cde_prefix_causality`` (beyond): over sympy symbols, for the dense Taylor, dense
  Euler, dense exact (nilpotent) and diagonal exact steps, the state after step ``k`` contains
  no symbol of a later increment, and running only the first ``k`` steps gives the identical
  expression (appending steps never changes a prefix's states).
- ``linear_cde_lookahead_control`` (control): a deliberately broken runner whose step ``k``
  reads the average of increments ``k`` and ``k + 1`` (a centred gate); the same check must
  refute it and name the leaking symbol.
- ``diagonal_cde_increment_invariance`` (beyond): the homogeneous diagonal solution is
  ``exp(sum_i a_i (omega^i_T - omega^i_0)) Z_0``: it depends only on the increment of the
  gate, not on its shape (the paper's diagonal limitation), checked exactly in sympy.
- ``dense_cde_order_dependence_control`` (control): the same statement for dense (nilpotent,
  non-commuting) transitions must be refuted: swapping two steps changes the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..cde import LinearCDESpec
from ..context import SYMPY
from ..verdict import BEYOND, CONTROL, PROVED, REFUTED, UNKNOWN, CheckResult


def _symbols():
    import sympy as sp

    return sp


def _random_like_spec(sp, kind, n, dw, dx):
    """A spec with fully symbolic parameters (upper-triangular symbols for the nilpotent kind)."""
    if kind == "diagonal":
        trans = [[sp.Symbol(f"a{i}_{r}") for r in range(n)] for i in range(dw)]
    elif kind == "nilpotent":
        trans = [[[sp.Symbol(f"A{i}_{r}{c}") if c > r else sp.Integer(0) for c in range(n)] for r in range(n)]
                 for i in range(dw)]
    else:
        trans = [[[sp.Symbol(f"A{i}_{r}{c}") for c in range(n)] for r in range(n)] for i in range(dw)]
    B = [[sp.Symbol(f"B{r}_{j}") for j in range(dx)] for r in range(n)]
    return trans, B


def _causality_violations(run: Callable, z0, domegas, dxis, T) -> list:
    """Symbols of later increments found in earlier states, and prefix mismatches."""
    _, zs = run(z0, domegas, dxis)
    problems = []
    for k in range(1, T + 1):
        later = set()
        for j in range(k, T):
            later |= set(domegas[j]) | set(dxis[j])
        for r, e in enumerate(zs[k - 1]):
            leak = e.free_symbols & later
            if leak:
                problems.append(f"z_{k}[{r}] depends on later increment(s) {sorted(map(str, leak))}")
        _, zs_prefix = run(z0, domegas[:k], dxis[:k])
        if any(a != b for a, b in zip(zs_prefix[k - 1], zs[k - 1])):
            problems.append(f"z_{k} differs between the run of {k} steps and the run of {T} steps")
    return problems


def _setups(sp):
    # (label, kind, step, order, n, dw, dx, T)
    return [
        ("dense taylor p=2", "dense", "taylor", 2, 2, 2, 1, 3),
        ("dense euler", "dense", "euler", 0, 2, 2, 1, 3),
        ("dense exact (nilpotent)", "nilpotent", "exact", 0, 3, 2, 1, 3),
        ("diagonal exact", "diagonal", "exact", 0, 2, 2, 2, 3),
        ("diagonal euler", "diagonal", "euler", 0, 2, 2, 2, 3),
    ]


def _inputs(sp, n, dw, dx, T):
    z0 = [sp.Symbol(f"z0_{r}") for r in range(n)]
    domegas = [[sp.Symbol(f"dw{k}_{i}") for i in range(dw)] for k in range(T)]
    dxis = [[sp.Symbol(f"dx{k}_{j}") for j in range(dx)] for k in range(T)]
    return z0, domegas, dxis


def check_prefix_causality() -> CheckResult:
    sp = _symbols()
    t0 = time.perf_counter()
    problems = []
    dims = {}
    for label, kind, step, order, n, dw, dx, T in _setups(sp):
        trans, B = _random_like_spec(sp, kind, n, dw, dx)
        spec = LinearCDESpec(n, dw, dx, trans, B, diagonal=(kind == "diagonal"), step=step, order=order)
        z0, domegas, dxis = _inputs(sp, n, dw, dx, T)
        run = lambda z, a, b, spec=spec: spec.run_list(SYMPY, z, a, b)
        for p in _causality_violations(run, z0, domegas, dxis, T):
            problems.append(f"{label}: {p}")
        dims[label] = {"state_dim": n, "omega_dim": dw, "xi_dim": dx, "steps": T}
    verdict = REFUTED if problems else PROVED
    detail = ("; ".join(problems[:3]) if problems else
              "every state z_k is free of the symbols of increments k+1..T and equal (as an expression) "
              "to the state of the k-step run, for dense taylor/euler/exact and diagonal exact/euler")
    return CheckResult("linear_cde_prefix_causality", BEYOND, verdict, dims, time.perf_counter() - t0, detail)


def check_lookahead_control() -> CheckResult:
    """A centred-gate runner (step k sees increment k+1) must be refuted."""
    sp = _symbols()
    t0 = time.perf_counter()
    n, dw, dx, T = 2, 2, 1, 3
    trans, B = _random_like_spec(sp, "diagonal", n, dw, dx)
    spec = LinearCDESpec(n, dw, dx, trans, B, diagonal=True, step="exact")
    half = sp.Rational(1, 2)

    def broken_run(z, domegas, dxis):
        # step k uses (domega_k + domega_{k+1}) / 2: a non-causal centred gate
        zs = []
        for k in range(len(domegas)):
            nxt = domegas[k + 1] if k + 1 < len(domegas) else domegas[k]
            dwk = [half * (a + b) for a, b in zip(domegas[k], nxt)]
            z = spec.step_fn(SYMPY, z, dwk, dxis[k])
            zs.append(z)
        return z, zs

    z0, domegas, dxis = _inputs(sp, n, dw, dx, T)
    problems = _causality_violations(broken_run, z0, domegas, dxis, T)
    verdict = REFUTED if problems else PROVED
    detail = ("counterexample: " + problems[0]) if problems else "the broken runner passed the causality check"
    return CheckResult("linear_cde_lookahead_control", CONTROL, verdict,
                       {"state_dim": n, "omega_dim": dw, "xi_dim": dx, "steps": T}, time.perf_counter() - t0, detail)


def _homogeneous_final(sp, kind, n, dw, order_of_steps):
    trans, _ = _random_like_spec(sp, kind, n, dw, 1)
    B = [[sp.Integer(0)] for _ in range(n)]
    spec = LinearCDESpec(n, dw, 1, trans, B, diagonal=(kind == "diagonal"), step="exact")
    z0 = [sp.Symbol(f"z0_{r}") for r in range(n)]
    steps = [[sp.Symbol(f"dw{k}_{i}") for i in range(dw)] for k in range(len(order_of_steps))]
    domegas = [steps[k] for k in order_of_steps]
    zT, _ = spec.run_list(SYMPY, z0, domegas, [[sp.Integer(0)]] * len(domegas))
    return spec, z0, steps, zT


def check_diagonal_increment_invariance() -> CheckResult:
    sp = _symbols()
    t0 = time.perf_counter()
    n, dw, T = 2, 2, 3
    spec, z0, steps, zT = _homogeneous_final(sp, "diagonal", n, dw, list(range(T)))
    problems = []
    for r in range(n):
        total = sum((spec.transitions[i][r] * sum(steps[k][i] for k in range(T)) for i in range(dw)), sp.Integer(0))
        target = sp.exp(sp.expand(total)) * z0[r]
        # exact: combine the product of exponentials and expand the exponent
        diff = sp.powsimp(sp.expand(zT[r] * sp.exp(-sp.expand(total))), combine="exp")
        diff = sp.expand(diff.replace(sp.exp, lambda e: sp.exp(sp.expand(e))) - z0[r])
        if diff != 0:
            problems.append(f"z_T[{r}] = {zT[r]} is not {target}")
    verdict = REFUTED if problems else PROVED
    detail = problems[0] if problems else (
        "z_T[r] * exp(-sum_i a_i[r] (omega^i_T - omega^i_0)) expands to z0[r] exactly (powsimp + expand): "
        "the homogeneous diagonal solution depends only on the gate's increment")
    return CheckResult("diagonal_cde_increment_invariance", BEYOND, verdict,
                       {"state_dim": n, "omega_dim": dw, "steps": T}, time.perf_counter() - t0, detail)


def check_dense_order_dependence_control() -> CheckResult:
    """Dense (nilpotent, non-commuting) transitions: swapping two steps changes the state."""
    sp = _symbols()
    t0 = time.perf_counter()
    n, dw = 3, 2
    _, z0, steps, z_ab = _homogeneous_final(sp, "nilpotent", n, dw, [0, 1])
    _, _, _, z_ba = _homogeneous_final(sp, "nilpotent", n, dw, [1, 0])
    problems = []
    for r in range(n):
        d = sp.expand(z_ab[r] - z_ba[r])
        if d != 0:
            problems.append(f"z_T[{r}] changes when the two steps are swapped: difference {d}")
    verdict = REFUTED if problems else PROVED
    detail = ("counterexample: " + problems[0]) if problems else "dense states were invariant under reordering"
    return CheckResult("dense_cde_order_dependence_control", CONTROL, verdict,
                       {"state_dim": n, "omega_dim": dw, "steps": 2}, time.perf_counter() - t0, detail)


CHECKS = (
    check_prefix_causality,
    check_lookahead_control,
    check_diagonal_increment_invariance,
    check_dense_order_dependence_control,
)


def cde_checks(budget_s: float = 60.0) -> list:
    """Run every linear-CDE check; those not started within ``budget_s`` seconds are unknown."""
    start = time.perf_counter()
    out = []
    for fn in CHECKS:
        name = fn.__name__.replace("check_", "")
        if time.perf_counter() - start > budget_s:
            out.append(CheckResult(name, CONTROL if "control" in name else BEYOND, UNKNOWN, {}, 0.0,
                                   f"not run: budget of {budget_s} s exhausted"))
            continue
        try:
            out.append(fn())
        except Exception as exc:  # a crash is never a pass
            out.append(CheckResult(name, CONTROL if "control" in name else BEYOND, UNKNOWN, {}, 0.0,
                                   f"error: {type(exc).__name__}: {exc}"))
    return out
