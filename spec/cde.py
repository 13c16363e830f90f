"""Linear controlled differential equations (linear CDEs): the executable specification.

Beyond Lean: TorchLean has no linear CDE; this is nbssm's own statement of the paper's model
("Theoretical Foundations of Deep Selective State-Space Models", Muca Cirone et al., NeurIPS
2024; ``paper/notes.md`` section 1), written in the same context-generic List style as
:mod:`nbssm.spec.models` so that it runs on IEEE doubles and on sympy symbols.

The state ``Z`` (length ``state_dim``) solves ``dZ = sum_i A_i Z domega^i + B dxi``. The gates
``omega`` (``omega_dim`` channels) and ``xi`` (``xi_dim`` channels) are given as per-step
increments ``(domega_k, dxi_k)``. With ``M_k = sum_i domega_k[i] A_i`` and ``v_k = B dxi_k``:

- ``euler``:  ``Z' = Z + M_k Z + v_k``;
- ``taylor`` (dense, order ``p``): ``Z' = sum_{j=0..p} M_k^j (Z / j! + v_k / (j+1)!)``, the
  order-``p`` truncation of the exact step, evaluated by Horner's rule
  ``R = Z/p! + v/(p+1)!``, ``R <- M R + Z/j! + v/(j+1)!`` for ``j = p-1, ..., 0``;
- ``exact``: ``Z' = exp(M_k) Z + phi1(M_k) v_k`` with ``phi1(M) = sum_j M^j/(j+1)!``.
  Diagonal kind: elementwise, ``exp(m) * z + phi1(m) * v`` with ``phi1(m) = (exp(m) - 1)/m``
  (1 at ``m = 0``). Dense kind: only for strictly upper-triangular ``A_i`` (checked), where
  ``M_k^n = 0`` and the Taylor series of order ``n - 1`` *is* the exact step.

Conventions: 0-based indices; matrices are lists of rows in the paper's orientation,
``(A_i Z)[r] = sum_c A_i[r][c] Z[c]`` as the left fold over increasing ``c``
(``vec_mat(Z, A_i^T)``); ``M_k[r][c] = ((0 + domega_k[0] A_0[r][c]) + domega_k[1] A_1[r][c]) + ...``;
``v_k[r] = sum_j B[r][j] dxi_k[j]`` as a left fold. Diagonal transitions are given by their
diagonals ``a_i`` (length ``state_dim``).

The runner mirrors Lean's ``runList``: ``run_list(ctx, z0, domegas, dxis)`` returns
``(z_T, [z_1, ..., z_T])``, the empty input gives ``(z0, [])``, and the output of step ``k`` is
the updated state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .context import Context
from .models import ShapeError, check_shape, run_list_steps, vec_mat
from .scan import as_scalars

STEPS = ("euler", "taylor", "exact")


def _transpose(M: Sequence[Sequence[Any]], n_rows: int, n_cols: int) -> list:
    return [[M[r][c] for r in range(n_rows)] for c in range(n_cols)]


def mat_vec(ctx: Context, M: Sequence[Sequence[Any]], z: Sequence[Any], n: int) -> list:
    """``(M z)[r] = ((0 + M[r][0] z[0])... )``: ``vec_mat(z, M^T)`` (left fold over columns)."""
    return vec_mat(ctx, z, _transpose(M, n, len(z)), n)


def _is_zero(x: Any) -> bool:
    return x == 0


@dataclass
class LinearCDESpec:
    """A linear CDE with dense or diagonal transitions.

    Spec: nbssm's own (kind "beyond"); the runtime kernels ``nbssm.cde.linear_cde_scan``
    (dense, ``taylor``/``euler``) and ``nbssm.cde.diagonal_cde_scan`` (diagonal,
    ``exact``/``euler``) refine :meth:`run_list`.

    Fields
    ------
    state_dim, omega_dim, xi_dim : int
    transitions : ``omega_dim`` matrices ``[state_dim, state_dim]`` (dense) or ``omega_dim``
        vectors ``[state_dim]`` (diagonal), i.e. shape ``[omega_dim, state_dim(, state_dim)]``
    input_matrix : ``[state_dim, xi_dim]`` (``B``)
    diagonal : bool
    step : "euler", "taylor" (dense only) or "exact"
    order : Taylor order ``p >= 1`` for ``taylor``; for dense ``exact`` it is set to
        ``max(state_dim - 1, 1)``
    """

    state_dim: int
    omega_dim: int
    xi_dim: int
    transitions: Any
    input_matrix: Any
    diagonal: bool = False
    step: str = "exact"
    order: int = 0

    def __post_init__(self) -> None:
        o = "LinearCDESpec"
        n = self.state_dim
        if self.step not in STEPS:
            raise ValueError(f"{o}.step must be one of {STEPS}, got {self.step!r}")
        shape = (self.omega_dim, n) if self.diagonal else (self.omega_dim, n, n)
        self.transitions = check_shape(o, "transitions", self.transitions, shape)
        self.input_matrix = check_shape(o, "input_matrix", self.input_matrix, (n, self.xi_dim))
        if self.step == "taylor":
            if self.diagonal:
                raise ValueError(f"{o}: step 'taylor' is for dense transitions; the diagonal kind has 'exact'")
            if int(self.order) < 1:
                raise ValueError(f"{o}.order must be >= 1 for step 'taylor', got {self.order}")
        if self.step == "exact" and not self.diagonal:
            for i, A in enumerate(self.transitions):
                for r in range(n):
                    for c in range(r + 1):
                        if not _is_zero(A[r][c]):
                            raise ValueError(
                                f"{o}: dense step 'exact' needs strictly upper-triangular transitions; "
                                f"transitions[{i}][{r}][{c}] = {A[r][c]!r}")
            self.order = max(n - 1, 1)

    # ---- pieces of a step --------------------------------------------------------------
    def transition_matrix(self, ctx: Context, domega: Sequence[Any]) -> list:
        """``M = sum_i domega[i] A_i`` (left fold over ``i``): ``[n, n]`` or, diagonal, ``[n]``."""
        n = self.state_dim
        if self.diagonal:
            out = []
            for r in range(n):
                acc = ctx.zero
                for i in range(self.omega_dim):
                    acc = ctx.add(acc, ctx.mul(domega[i], self.transitions[i][r]))
                out.append(acc)
            return out
        M = []
        for r in range(n):
            row = []
            for c in range(n):
                acc = ctx.zero
                for i in range(self.omega_dim):
                    acc = ctx.add(acc, ctx.mul(domega[i], self.transitions[i][r][c]))
                row.append(acc)
            M.append(row)
        return M

    def input_vector(self, ctx: Context, dxi: Sequence[Any]) -> list:
        """``v = B dxi`` (left fold over ``j``): ``[n]``."""
        return mat_vec(ctx, self.input_matrix, dxi, self.state_dim)

    def step_fn(self, ctx: Context, z: list, domega: Sequence[Any], dxi: Sequence[Any]) -> list:
        """One step from ``z`` with increments ``domega`` (``[omega_dim]``), ``dxi`` (``[xi_dim]``)."""
        n = self.state_dim
        if len(domega) != self.omega_dim or len(dxi) != self.xi_dim or len(z) != n:
            raise ShapeError(f"LinearCDESpec.step: expected z [{n}], domega [{self.omega_dim}], dxi [{self.xi_dim}], "
                             f"got [{len(z)}], [{len(domega)}], [{len(dxi)}]")
        M = self.transition_matrix(ctx, domega)
        v = self.input_vector(ctx, dxi)
        if self.step == "euler":
            Mz = [ctx.mul(M[r], z[r]) for r in range(n)] if self.diagonal else mat_vec(ctx, M, z, n)
            return [ctx.add(ctx.add(z[r], Mz[r]), v[r]) for r in range(n)]
        if self.diagonal:  # exact, elementwise
            out = []
            for r in range(n):
                m = M[r]
                e = ctx.exp(m)
                phi = ctx.ite(ctx.gt(ctx.abs(m), ctx.zero),
                              lambda e=e, m=m: ctx.div(ctx.sub(e, ctx.one), m),
                              lambda: ctx.one)
                out.append(ctx.add(ctx.mul(e, z[r]), ctx.mul(phi, v[r])))
            return out
        p = int(self.order)
        invfact = [ctx.div(ctx.one, ctx.const(math.factorial(j))) for j in range(p + 2)]
        R = [ctx.add(ctx.mul(z[r], invfact[p]), ctx.mul(v[r], invfact[p + 1])) for r in range(n)]
        for j in range(p - 1, -1, -1):
            MR = mat_vec(ctx, M, R, n)
            R = [ctx.add(ctx.add(MR[r], ctx.mul(z[r], invfact[j])), ctx.mul(v[r], invfact[j + 1])) for r in range(n)]
        return R

    # ---- runner ------------------------------------------------------------------------
    def run_list(self, ctx: Context, z0: Sequence[Any], domegas: Sequence[Sequence[Any]],
                 dxis: Sequence[Sequence[Any]]) -> tuple:
        """``runList``: ``(z_T, [z_1, ..., z_T])`` over the steps ``zip(domegas, dxis)``.

        Parameters
        ----------
        ctx : Context
        z0 : ``[state_dim]``
        domegas : ``[T, omega_dim]`` per-step increments of ``omega``
        dxis : ``[T, xi_dim]`` per-step increments of ``xi``

        Numbers become the context's scalars first (:func:`nbssm.spec.scan.as_scalars`:
        ``int`` -> ``float`` on the double contexts); a state or increment of the wrong
        length raises :class:`~nbssm.spec.models.ShapeError`.
        """
        domegas = [as_scalars(ctx, list(x)) for x in domegas]
        dxis = [as_scalars(ctx, list(x)) for x in dxis]
        if len(domegas) != len(dxis):
            raise ShapeError(f"LinearCDESpec.run_list: domegas has {len(domegas)} steps, dxis {len(dxis)}")

        def step(z, x):
            z1 = self.step_fn(ctx, z, x[0], x[1])
            return z1, z1

        return run_list_steps(step, as_scalars(ctx, list(z0)), list(zip(domegas, dxis)))
