"""Diagonal SSM core and the three models, with their List and Array runners.

Spec: ``NN/Spec/Dynamics/StateSpace.lean`` (``DiagonalSSM``),
``NN/Spec/Models/S4.lean`` (``DiagonalS4Spec``), ``NN/Spec/Models/Mamba.lean``
(``MambaBlockSpec``, ``SelectiveMambaBlockSpec``); sections 0, 3 and 4 of the
spec document.

Conventions (section 0): indices are 0-based; weights are ``[in, out]`` and
applied on the left, ``x @ W``; every sum is the Lean left fold in the Lean
order and operand order; there is no broadcasting. Vectors are lists of
scalars, matrices lists of rows. All arithmetic goes through the context
``ctx`` (:mod:`nbssm.spec.context`): the same code runs on IEEE doubles and on
sympy symbols.

Every runner takes an initial state from the caller and returns
``(final state, [o1, ..., oT])``; the empty input gives ``(h0, [])``. The
output of token t is read from the *updated* state.

Parameter objects accept nested lists or numpy arrays (converted with
``tolist()``, so float64 arrays become Python floats) and check every field's
shape when built: a wrong shape raises :class:`ShapeError` naming the field,
the expected and the actual shape.

Runner inputs are checked the way Lean's types check them (a token or state of
the wrong length raises :class:`ShapeError`) and then converted to the
context's scalars (:func:`nbssm.spec.scan.as_scalars`): integers, numpy
numbers and integer arrays become ``float`` on the double contexts (never
integer arithmetic) and exact sympy numbers on the sympy contexts. Every
operation of a step combines a parameter with at least one converted input
(or a context constant), so integer parameters behave as their ``Float``
values too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .context import Context
from .scan import DiagonalTransition, as_scalars, diagonal_selective_scan, scan_array


class ShapeError(ValueError):
    """A parameter or argument of the wrong shape."""


# --------------------------------------------------------------------------- helpers
def _nested(value: Any) -> Any:
    """numpy arrays -> nested lists; lists/tuples copied to lists (recursively)."""
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    return value


def shape_of(value: Any, depth: int) -> tuple:
    """Shape of a nested list of the given depth; ``None`` entries mark ragged levels."""
    if depth == 0:
        return ()
    if not isinstance(value, list):
        return (None,)
    n = len(value)
    if depth == 1:
        bad = any(isinstance(v, list) for v in value)
        return (n,) if not bad else (n, "nested")
    inner = {shape_of(v, depth - 1) for v in value}
    if n == 0:
        # an empty outer level: inner dimensions are unobservable, take them as given
        return (0,)
    if len(inner) != 1:
        return (n, "ragged")
    return (n,) + inner.pop()


def check_shape(owner: str, field: str, value: Any, expected: tuple) -> list:
    """Convert ``value`` to nested lists and check it has shape ``expected``."""
    value = _nested(value)
    actual = shape_of(value, len(expected))
    ok = actual == expected or (len(actual) >= 1 and actual[0] == 0 and expected[0] == 0)
    if not ok:
        raise ShapeError(f"{owner}.{field}: expected shape {expected}, got {actual}")
    return value


def _arg_shape(value: Any, depth: int) -> tuple:
    """Shape of a nested sequence (lists, tuples or numpy arrays) to ``depth`` levels, without copying."""
    if depth == 0:
        return ()
    try:
        n = len(value)
    except TypeError:
        return (None,)
    if n == 0:
        return (0,)
    inner = {_arg_shape(v, depth - 1) for v in value}
    return (n,) + inner.pop() if len(inner) == 1 else (n, "ragged")


def check_run_inputs(owner: str, state: Any, state_shape: tuple, xs: Sequence[Any], input_dim: int,
                     history: Sequence[Any] | None = None, inner_dim: int | None = None) -> None:
    """Check a runner's arguments the way Lean's types do (a vector's length is part of its type).

    ``state`` must have shape ``state_shape``, every token of ``xs`` length
    ``input_dim`` and every entry of ``history`` length ``inner_dim``; a short
    token or state raises :class:`ShapeError` instead of silently giving a
    smaller state.
    """
    def same(actual: tuple, expected: tuple) -> bool:
        return actual == expected or (actual == (0,) and len(expected) >= 1 and expected[0] == 0)

    got = _arg_shape(state, len(state_shape))
    if not same(got, state_shape):
        raise ShapeError(f"{owner}: initial state: expected shape {state_shape}, got {got}")
    for t, x in enumerate(xs):
        got = _arg_shape(x, 1)
        if got != (input_dim,):
            raise ShapeError(f"{owner}: xs[{t}]: expected a token of length {input_dim}, got shape {got}")
    for k, v in enumerate(() if history is None else history):
        got = _arg_shape(v, 1)
        if got != (inner_dim,):
            raise ShapeError(f"{owner}: history[{k}]: expected an entry of length {inner_dim}, got shape {got}")


def check_ssm(owner: str, ssm: Any, dim: int) -> None:
    """Check that a model's ``ssm`` field is a :class:`DiagonalSSM` of dimension ``dim``."""
    if not isinstance(ssm, DiagonalSSM) or ssm.dim != dim:
        got = ssm.dim if isinstance(ssm, DiagonalSSM) else type(ssm).__name__
        raise ShapeError(f"{owner}.ssm: expected DiagonalSSM of dim {dim}, got {got}")


def vec_mat(ctx: Context, v: Sequence[Any], W: Sequence[Sequence[Any]], n_out: int) -> list:
    """``(v @ W)_j = ((0 + v_0*W[0][j]) + v_1*W[1][j]) + ...`` over increasing i.

    Spec: ``vecMat`` (section 0). ``n_out`` is the number of columns (needed
    when ``W`` has no rows).
    """
    out = []
    for j in range(n_out):
        acc = ctx.zero
        for i in range(len(v)):
            acc = ctx.add(acc, ctx.mul(v[i], W[i][j]))
        out.append(acc)
    return out


def hadamard(ctx: Context, a: Sequence[Any], b: Sequence[Any]) -> list:
    """Elementwise ``a ⊙ b``."""
    return [ctx.mul(x, y) for x, y in zip(a, b)]


def vec_add(ctx: Context, a: Sequence[Any], b: Sequence[Any]) -> list:
    """Elementwise ``a + b``."""
    return [ctx.add(x, y) for x, y in zip(a, b)]


def run_list_steps(step, h0: Any, xs: Sequence[Any]) -> tuple:
    """``runList`` for a model with ``step h x = (h', o)``.

    Spec: ``runList h0 [] = (h0, [])``;
    ``runList h0 (x :: xs) = let (h1, y) = step h0 x; (hN, ys) = runList h1 xs in (hN, y :: ys)``.
    The recursion evaluates the steps in list order; it is unrolled into a loop.
    """
    h = h0
    ys = []
    for x in xs:
        h, y = step(h, x)
        ys.append(y)
    return h, ys


# --------------------------------------------------------------------------- DiagonalSSM
@dataclass
class DiagonalSSM:
    """Diagonal SSM core: vectors ``A, B, C, D`` of length ``dim``; no discretization.

    Spec: ``DiagonalSSM dim`` (section 3).
    """

    dim: int
    A: Any
    B: Any
    C: Any
    D: Any

    def __post_init__(self) -> None:
        for name in ("A", "B", "C", "D"):
            setattr(self, name, check_shape("DiagonalSSM", name, getattr(self, name), (self.dim,)))

    def step(self, ctx: Context, h: list, x: list) -> list:
        """Spec: ``step h x = A ⊙ h + B ⊙ x``."""
        return vec_add(ctx, hadamard(ctx, self.A, h), hadamard(ctx, self.B, x))

    def readout(self, ctx: Context, h: list, x: list) -> list:
        """Spec: ``readout h x = C ⊙ h + D ⊙ x``."""
        return vec_add(ctx, hadamard(ctx, self.C, h), hadamard(ctx, self.D, x))

    def transition(self, ctx: Context, x: list) -> DiagonalTransition:
        """Spec: ``transition x = DiagonalTransition(A, B ⊙ x)``."""
        return DiagonalTransition(list(self.A), hadamard(ctx, self.B, x))

    def scan(self, ctx: Context, h0: list, xs: Sequence[list]) -> list:
        """Spec: ``scan h0 xs = diagonalSelectiveScan h0 (xs.map transition)``."""
        check_run_inputs("DiagonalSSM.scan", h0, (self.dim,), xs, self.dim)
        return diagonal_selective_scan(ctx, h0, [self.transition(ctx, x) for x in as_scalars(ctx, xs)])


# --------------------------------------------------------------------------- S4
@dataclass
class DiagonalS4Spec:
    """Diagonal S4 layer.

    Spec: ``DiagonalS4Spec inputDim stateDim outputDim`` (section 4.1). Fields
    ``in_proj [input_dim, state_dim]``, ``out_proj [state_dim, output_dim]``,
    ``ssm : DiagonalSSM state_dim``. State: a vector of length ``state_dim``.
    """

    input_dim: int
    state_dim: int
    output_dim: int
    in_proj: Any
    out_proj: Any
    ssm: DiagonalSSM

    def __post_init__(self) -> None:
        o = "DiagonalS4Spec"
        self.in_proj = check_shape(o, "in_proj", self.in_proj, (self.input_dim, self.state_dim))
        self.out_proj = check_shape(o, "out_proj", self.out_proj, (self.state_dim, self.output_dim))
        check_ssm(o, self.ssm, self.state_dim)

    def step(self, ctx: Context, h: list, x: list) -> tuple:
        """One token: ``s = x@inProj``; ``h' = A⊙h + B⊙s``; ``o = (C⊙h' + D⊙s)@outProj``."""
        s = vec_mat(ctx, x, self.in_proj, self.state_dim)
        h1 = self.ssm.step(ctx, h, s)
        o = vec_mat(ctx, self.ssm.readout(ctx, h1, s), self.out_proj, self.output_dim)
        return h1, o

    def run_list(self, ctx: Context, h0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``DiagonalS4Spec.runList`` (List family)."""
        check_run_inputs("DiagonalS4Spec.run_list", h0, (self.state_dim,), xs, self.input_dim)
        return run_list_steps(lambda h, x: self.step(ctx, h, x), as_scalars(ctx, h0), as_scalars(ctx, xs))

    def run_array(self, ctx: Context, h0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``DiagonalS4Spec.runArray = scanArray step h0 xs`` (Array family)."""
        check_run_inputs("DiagonalS4Spec.run_array", h0, (self.state_dim,), xs, self.input_dim)
        return scan_array(lambda h, x: self.step(ctx, h, x), as_scalars(ctx, h0), as_scalars(ctx, xs))


# --------------------------------------------------------------------------- compact Mamba
@dataclass
class MambaBlockSpec:
    """Compact (non-selective) Mamba block.

    Spec: ``MambaBlockSpec inputDim stateDim outputDim`` (section 4.2). Fields
    ``in_proj, gate_proj [input_dim, state_dim]``, ``out_proj [state_dim,
    output_dim]``, ``ssm``. The gate is ``sigmoid`` of the raw token's
    projection (not SiLU).
    """

    input_dim: int
    state_dim: int
    output_dim: int
    in_proj: Any
    gate_proj: Any
    out_proj: Any
    ssm: DiagonalSSM

    def __post_init__(self) -> None:
        o = "MambaBlockSpec"
        self.in_proj = check_shape(o, "in_proj", self.in_proj, (self.input_dim, self.state_dim))
        self.gate_proj = check_shape(o, "gate_proj", self.gate_proj, (self.input_dim, self.state_dim))
        self.out_proj = check_shape(o, "out_proj", self.out_proj, (self.state_dim, self.output_dim))
        check_ssm(o, self.ssm, self.state_dim)

    def step(self, ctx: Context, h: list, x: list) -> tuple:
        """``h' = A⊙h + B⊙s``; ``o = ((C⊙h' + D⊙s) ⊙ sigmoid(x@gateProj)) @ outProj``."""
        s = vec_mat(ctx, x, self.in_proj, self.state_dim)
        h1 = self.ssm.step(ctx, h, s)
        y = self.ssm.readout(ctx, h1, s)
        g = [ctx.sigmoid(v) for v in vec_mat(ctx, x, self.gate_proj, self.state_dim)]
        o = vec_mat(ctx, hadamard(ctx, y, g), self.out_proj, self.output_dim)
        return h1, o

    def run_list(self, ctx: Context, h0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``MambaBlockSpec.runList``."""
        check_run_inputs("MambaBlockSpec.run_list", h0, (self.state_dim,), xs, self.input_dim)
        return run_list_steps(lambda h, x: self.step(ctx, h, x), as_scalars(ctx, h0), as_scalars(ctx, xs))

    def run_array(self, ctx: Context, h0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``MambaBlockSpec.runArray = scanArray step h0 xs``."""
        check_run_inputs("MambaBlockSpec.run_array", h0, (self.state_dim,), xs, self.input_dim)
        return scan_array(lambda h, x: self.step(ctx, h, x), as_scalars(ctx, h0), as_scalars(ctx, xs))


# --------------------------------------------------------------------------- selective Mamba
def causal_conv_step(ctx: Context, kernel: Sequence[Sequence[Any]], bias: Sequence[Any], history: Sequence[Sequence[Any]]) -> list:
    """Depthwise causal convolution output for the newest token.

    ``c[d] = fold_{k=0..W-1}(acc + L[k][d] * K[k][d]; seed bias[d])`` where
    ``L = history`` is newest first (``L[0]`` is the current token's
    projection) and ``L[k]`` is the zero vector when ``k >= |L|``: a missing
    tap is multiplied and added, never skipped.

    Spec: the convolution inside ``SelectiveMambaBlockSpec`` (section 4.3).
    """
    width = len(kernel)
    out = []
    for d in range(len(bias)):
        acc = bias[d]
        for k in range(width):
            v = history[k][d] if k < len(history) else ctx.zero
            acc = ctx.add(acc, ctx.mul(v, kernel[k][d]))
        out.append(acc)
    return out


def selective_recurrence_step(ctx: Context, H: list, u: list, delta: list, A: list, Bt: list, Ct: list, d_skip: list) -> tuple:
    """The selective SSM update for one token, every channel ``d`` and state ``n``.

    ``H'[d][n] = exp(-(delta[d]*A[d][n])) * H[d][n] + (delta[d]*Bt[n]) * u[d]``;
    ``y[d] = fold_n(acc + H'[d][n]*Ct[n]; seed d_skip[d]*u[d])``.
    ``A`` holds **positive** rates (the spec's sign convention).

    Spec: the recurrence lines of ``SelectiveMambaBlockSpec``'s step (section 4.3).
    Returns ``(H', y)``.
    """
    H1 = []
    y = []
    for d in range(len(u)):
        row = []
        acc = ctx.mul(d_skip[d], u[d])
        for n in range(len(Bt)):
            decay = ctx.exp(ctx.neg(ctx.mul(delta[d], A[d][n])))
            hn = ctx.add(ctx.mul(decay, H[d][n]), ctx.mul(ctx.mul(delta[d], Bt[n]), u[d]))
            row.append(hn)
            acc = ctx.add(acc, ctx.mul(hn, Ct[n]))
        H1.append(row)
        y.append(acc)
    return H1, y


@dataclass
class SelectiveMambaBlockSpec:
    """Full selective Mamba block.

    Spec: ``SelectiveMambaBlockSpec inputDim innerDim stateDim outputDim convWidth``
    (section 4.3). Fields (11): ``x_proj, z_proj [input_dim, inner_dim]``,
    ``conv_kernel [conv_width, inner_dim]`` (tap 0 multiplies the current
    token), ``conv_bias [inner_dim]``, ``dt_proj [inner_dim, inner_dim]``,
    ``dt_bias [inner_dim]``, ``A [inner_dim, state_dim]`` (positive rates),
    ``b_proj, c_proj [inner_dim, state_dim]``, ``d_skip [inner_dim]``,
    ``out_proj [inner_dim, output_dim]``.

    State: ``H [inner_dim][state_dim]`` plus a convolution history, a list of
    projected tokens, newest first.
    """

    input_dim: int
    inner_dim: int
    state_dim: int
    output_dim: int
    conv_width: int
    x_proj: Any
    z_proj: Any
    conv_kernel: Any
    conv_bias: Any
    dt_proj: Any
    dt_bias: Any
    A: Any
    b_proj: Any
    c_proj: Any
    d_skip: Any
    out_proj: Any

    FIELDS = ("x_proj", "z_proj", "conv_kernel", "conv_bias", "dt_proj", "dt_bias", "A",
              "b_proj", "c_proj", "d_skip", "out_proj")

    def field_shapes(self) -> dict:
        i, e, n, o, w = self.input_dim, self.inner_dim, self.state_dim, self.output_dim, self.conv_width
        return {
            "x_proj": (i, e), "z_proj": (i, e), "conv_kernel": (w, e), "conv_bias": (e,),
            "dt_proj": (e, e), "dt_bias": (e,), "A": (e, n), "b_proj": (e, n), "c_proj": (e, n),
            "d_skip": (e,), "out_proj": (e, o),
        }

    def __post_init__(self) -> None:
        for name, shape in self.field_shapes().items():
            setattr(self, name, check_shape("SelectiveMambaBlockSpec", name, getattr(self, name), shape))

    # -- pieces of the step, as named in Lean -------------------------------------------
    def project_x(self, ctx: Context, x: list) -> list:
        """Spec: ``projectX``: ``p = x @ xProj``."""
        return vec_mat(ctx, x, self.x_proj, self.inner_dim)

    def project_z(self, ctx: Context, x: list) -> list:
        """Spec: ``projectZ``: ``z = x @ zProj``."""
        return vec_mat(ctx, x, self.z_proj, self.inner_dim)

    def step_with_history(self, ctx: Context, H: list, history: list, z: list) -> tuple:
        """Everything after the history update: conv, SiLU, Δ, B, C, recurrence, gate, out.

        Spec: ``stepWithHistory H history zPath``; returns ``(H', o)``.
        """
        c = causal_conv_step(ctx, self.conv_kernel, self.conv_bias, history)
        u = [ctx.silu(v) for v in c]
        dt_pre = vec_mat(ctx, u, self.dt_proj, self.inner_dim)
        delta = [ctx.softplus(ctx.add(dt_pre[d], self.dt_bias[d])) for d in range(self.inner_dim)]
        Bt = vec_mat(ctx, u, self.b_proj, self.state_dim)
        Ct = vec_mat(ctx, u, self.c_proj, self.state_dim)
        H1, y = selective_recurrence_step(ctx, H, u, delta, self.A, Bt, Ct, self.d_skip)
        gated = [ctx.mul(y[d], ctx.silu(z[d])) for d in range(self.inner_dim)]
        o = vec_mat(ctx, gated, self.out_proj, self.output_dim)
        return H1, o

    def step_list(self, ctx: Context, state: tuple, x: list) -> tuple:
        """List family step on ``(H, L)``: the history grows without bound."""
        H, L = state
        p = self.project_x(ctx, x)
        z = self.project_z(ctx, x)
        history = [p] + list(L)
        H1, o = self.step_with_history(ctx, H, history, z)
        return (H1, history), o

    def step_with_convolution_history(self, ctx: Context, state: tuple, x: list) -> tuple:
        """Array family step: ``L_t = take convWidth (p_t :: L_{t-1})``.

        Spec: ``stepWithConvolutionHistory`` (current revisions, truncating).
        """
        H, L = state
        p = self.project_x(ctx, x)
        z = self.project_z(ctx, x)
        history = ([p] + list(L))[: self.conv_width]
        H1, o = self.step_with_history(ctx, H, history, z)
        return (H1, history), o

    # -- runners -------------------------------------------------------------------------
    def run_list_aux(self, ctx: Context, H0: list, L0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``runListAux H0 L0 xs``: returns ``(final H, outputs)``; the history is dropped."""
        check_run_inputs("SelectiveMambaBlockSpec.run_list_aux", H0, (self.inner_dim, self.state_dim), xs,
                         self.input_dim, L0, self.inner_dim)
        H0, L0, xs = as_scalars(ctx, H0), as_scalars(ctx, L0), as_scalars(ctx, xs)
        (H, _L), ys = run_list_steps(lambda s, x: self.step_list(ctx, s, x), (H0, L0), xs)
        return H, ys

    def run_list(self, ctx: Context, H0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``runList H0 xs = runListAux H0 [] xs`` (zero left padding)."""
        return self.run_list_aux(ctx, H0, [], xs)

    def run_array_with_history(self, ctx: Context, H0: list, L0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``runArrayWithHistory``: ``scanArray stepWithConvolutionHistory (H0, L0) xs``,
        returning ``(final H, outputs)``."""
        check_run_inputs("SelectiveMambaBlockSpec.run_array_with_history", H0, (self.inner_dim, self.state_dim), xs,
                         self.input_dim, L0, self.inner_dim)
        H0, L0, xs = as_scalars(ctx, H0), as_scalars(ctx, L0), as_scalars(ctx, xs)
        (H, _L), ys = scan_array(lambda s, x: self.step_with_convolution_history(ctx, s, x), (H0, L0), xs)
        return H, ys

    def run_array(self, ctx: Context, H0: list, xs: Sequence[list]) -> tuple:
        """Spec: ``runArray H0 xs = runArrayWithHistory H0 #[] xs``."""
        return self.run_array_with_history(ctx, H0, [], xs)


__all__ = [
    "ShapeError",
    "vec_mat",
    "hadamard",
    "vec_add",
    "check_shape",
    "check_ssm",
    "check_run_inputs",
    "shape_of",
    "run_list_steps",
    "DiagonalSSM",
    "DiagonalS4Spec",
    "MambaBlockSpec",
    "SelectiveMambaBlockSpec",
    "causal_conv_step",
    "selective_recurrence_step",
]
