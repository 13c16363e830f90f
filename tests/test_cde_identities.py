"""Identities of paper/notes.md section 3: the signature expansion of a linear CDE and the
diagonal case's dependence on increments only.

Z_T = sum_I A^I Z_0 S^I(omega) + sum_I sum_j A^I B e_j S^{(xi_j, I)}(P),  P = (omega, xi),
A^I = A_{i_k} ... A_{i_1} (the first letter acts first, so it stands rightmost).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nbssm.cde import diagonal_cde_scan, linear_cde_scan
from nbssm.signatures import signature, word_index
from nbssm.spec.cde import LinearCDESpec
from nbssm.spec.context import SYMPY
from signature_naive import signature_dict


def _word_matrix(A, word, reverse=False):
    """A^I = A_{i_k} ... A_{i_1}; with reverse=True the wrong order A_{i_1} ... A_{i_k}."""
    n = A.shape[1]
    M = np.eye(n)
    for c in word:
        M = (M @ A[c]) if reverse else (A[c] @ M)
    return M


def _expansion(A, B, omega_path, xi_path, z0, level, reverse=False):
    """Truncated signature expansion of Z_T (numeric); signatures from nbssm.signature."""
    dw = A.shape[0]
    dx = B.shape[1]
    P = np.concatenate([omega_path, xi_path], axis=1)  # (L, dw + dx)
    s_omega = signature(omega_path, level)
    s_P = signature(P, level + 1)
    z = z0.copy()  # empty word: A^() Z_0 S^() = Z_0
    for j in range(dx):  # empty I in the second sum: B e_j S^{(xi_j)}
        z = z + B[:, j] * s_P[word_index((dw + j,), dw + dx)]
    for k in range(1, level + 1):
        for word in itertools.product(range(dw), repeat=k):
            AI = _word_matrix(A, word, reverse)
            z = z + AI @ z0 * s_omega[word_index(word, dw)]
            for j in range(dx):
                z = z + AI @ B[:, j] * s_P[word_index((dw + j,) + word, dw + dx)]
    return z


def _setup(seed=0, n=3, dw=2, dx=1, T=3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((dw, n, n)) * 0.5
    B = rng.standard_normal((n, dx))
    omega = np.cumsum(rng.standard_normal((T + 1, dw)) * 0.15, axis=0)
    xi = np.cumsum(rng.standard_normal((T + 1, dx)) * 0.15, axis=0)
    z0 = rng.standard_normal(n)
    return A, B, omega, xi, z0


def test_signature_expansion_numeric_with_truncation_bound_and_word_order():
    A, B, omega, xi, z0 = _setup()
    dw = A.shape[0]
    # accurate exact steps: Taylor order 30 on the dense kernel (error ~1e-16 here)
    zT = linear_cde_scan(A, B, np.diff(omega, axis=0), np.diff(xi, axis=0), z0, order=30, backend="numba")
    level = 10
    approx = _expansion(A, B, omega, xi, z0, level)
    err = np.linalg.norm(approx - zT)
    # truncation bound: sum_{k > L} a^k L_P^k / k! * (||Z_0|| + max_j ||B e_j|| * L_P)
    a = max(np.linalg.norm(A[i], 2) for i in range(dw))
    LP = np.abs(np.diff(np.concatenate([omega, xi], axis=1), axis=0)).sum()
    C = np.linalg.norm(z0) + np.linalg.norm(B, axis=0).max() * LP
    bound = C * sum((a * LP) ** k / math.factorial(k) for k in range(level + 1, level + 40))
    assert err <= bound + 1e-12, (err, bound)
    assert err < 1e-6
    # the reversed word order (A_{i_1} ... A_{i_k}) must fail by far more than truncation allows
    wrong = _expansion(A, B, omega, xi, z0, level, reverse=True)
    assert np.linalg.norm(wrong - zT) > max(1000 * bound, 1e-3)
    # and a lower truncation level is measurably worse (the test can see truncation)
    assert np.linalg.norm(_expansion(A, B, omega, xi, z0, 3) - zT) > 100 * err


def test_signature_expansion_exact_with_nilpotent_transitions():
    """Strictly upper-triangular A_i: A^I = 0 for |I| >= n, the series is finite and exact."""
    sp = pytest.importorskip("sympy")
    n, dw, dx, T = 3, 2, 1, 2
    A = [[[sp.Symbol(f"A{i}_{r}{c}") if c > r else sp.Integer(0) for c in range(n)] for r in range(n)]
         for i in range(dw)]
    B = [[sp.Symbol(f"B{r}")] for r in range(n)]
    z0 = [sp.Symbol(f"z{r}") for r in range(n)]
    domegas = [[sp.Symbol(f"w{k}_{i}") for i in range(dw)] for k in range(T)]
    dxis = [[sp.Symbol(f"x{k}")] for k in range(T)]
    spec = LinearCDESpec(n, dw, dx, A, B, diagonal=False, step="exact")  # exact for nilpotent A
    zT, _ = spec.run_list(SYMPY, z0, domegas, dxis)

    # the joint path P = (omega, xi) starting at 0, symbolic signatures from the test reference
    pts = [[sp.Integer(0)] * (dw + dx)]
    for k in range(T):
        pts.append([pts[-1][i] + domegas[k][i] for i in range(dw)] + [pts[-1][dw] + dxis[k][0]])
    depth = n  # words I up to length n-1, plus one xi letter
    sig_P = signature_dict(pts, depth)
    Am = [sp.Matrix(a) for a in A]
    Bm = sp.Matrix(B)
    Z0 = sp.Matrix(z0)

    def expansion(reverse):
        total = Z0 + Bm[:, 0] * sig_P[(dw,)]
        for k in range(1, n):
            for word in itertools.product(range(dw), repeat=k):
                M = sp.eye(n)
                for c in word:
                    M = M * Am[c] if reverse else Am[c] * M
                total += M * Z0 * sig_P[word] + M * Bm[:, 0] * sig_P[(dw,) + word]
        return total

    good = expansion(False)
    for r in range(n):
        assert sp.expand(zT[r] - good[r]) == 0
    # A^I = 0 for |I| = n: the series really stops (checked, not assumed)
    for word in itertools.product(range(dw), repeat=n):
        M = sp.eye(n)
        for c in word:
            M = Am[c] * M
        assert M == sp.zeros(n, n)
    bad = expansion(True)
    assert any(sp.expand(zT[r] - bad[r]) != 0 for r in range(n))


def test_diagonal_depends_only_on_increments():
    """Two gate paths with equal endpoints give equal homogeneous diagonal states; not so dense."""
    rng = np.random.default_rng(1)
    n, dw, T = 8, 3, 12
    a = rng.standard_normal((dw, n))
    B = np.zeros((n, 1))
    z0 = rng.standard_normal(n)
    d1 = rng.standard_normal((T, dw)) * 0.3
    d2 = rng.standard_normal((T + 5, dw)) * 0.3
    d2[-1] += d1.sum(axis=0) - d2.sum(axis=0)  # same total increment, different shape and length
    z1 = diagonal_cde_scan(a, B, d1, np.zeros((T, 1)), z0)
    z2 = diagonal_cde_scan(a, B, d2, np.zeros((T + 5, 1)), z0)
    want = np.exp(a.T @ d1.sum(axis=0)) * z0  # exp(sum_i a_i (omega_T - omega_0)) Z_0
    np.testing.assert_allclose(z1, want, rtol=1e-12)
    np.testing.assert_allclose(z2, want, rtol=1e-12)
    # the dense case depends on the shape of omega: same endpoints, different states
    A = rng.standard_normal((dw, n, n)) / math.sqrt(n)
    y1 = linear_cde_scan(A, B, d1, np.zeros((T, 1)), z0, order=20, backend="numba")
    y2 = linear_cde_scan(A, B, d2, np.zeros((T + 5, 1)), z0, order=20, backend="numba")
    assert np.abs(y1 - y2).max() > 1e-2


def test_spec_checks_pass():
    from nbssm.spec.cde_checks import cde_checks

    results = cde_checks(budget_s=120)
    assert {r.name for r in results} == {
        "linear_cde_prefix_causality", "linear_cde_lookahead_control",
        "diagonal_cde_increment_invariance", "dense_cde_order_dependence_control"}
    for r in results:
        assert r.passed, (r.name, r.verdict, r.detail)
    assert {r.kind for r in results} == {"beyond", "control"}


def test_invariance_check_can_fail():
    """The symbolic invariance check refutes the diagonal Euler step (not exp): it is not vacuous."""
    sp = pytest.importorskip("sympy")
    from nbssm.spec import cde_checks

    n, dw = 1, 1
    a = sp.Symbol("a")
    spec = LinearCDESpec(n, dw, 1, [[a]], [[sp.Integer(0)]], diagonal=True, step="euler")
    w = [[sp.Symbol("w0")], [sp.Symbol("w1")]]
    zT, _ = spec.run_list(SYMPY, [sp.Symbol("z")], w, [[0], [0]])
    assert sp.expand(zT[0] * sp.exp(-a * (w[0][0] + w[1][0])) - sp.Symbol("z")) != 0
    assert cde_checks.check_diagonal_increment_invariance().passed
