"""The language-model rows of ``nbssm verify`` (external group ``lm_checks``).

Every row runs the real code on tiny random weights and compares it with an independent
side; every row has a negative control (kind ``"control"``): the same comparison applied to a
deliberately broken variant, which must be refuted.

Rows (kind ``"beyond"``):

``lm_mixer_refines_SelectiveMambaBlockSpec_via_to_spec``
    :class:`nbssm.models.MambaMixer` (checkpoint layout, float64, both scan strategies, fresh
    and continued from a carried state) against the spec's double runner
    ``SelectiveMambaBlockSpec.run_list`` / ``run_list_aux`` on ``mixer.to_spec()``, within the
    ``lm_mixer_spec_float64`` row of :mod:`nbssm.tolerances`; a float32 mixer within
    ``lm_mixer_spec_float32``. Not bitwise, and that is expected: the mixer projects with BLAS
    (``numpy.matmul``, its own summation order, not ``vecMat``'s left fold) and keeps Δ low
    rank (``dt_proj.weight @ (x_proj.weight[:R] @ u)``), where the spec multiplies the rank
    out once (``dtProj = (dt_proj.weight @ x_proj.weight[:R]).T``, rounded) and folds
    ``u @ dtProj``: the same real number, a different float (measured ~1e-16 relative). The
    spec-layout twin ``mixer.to_selective()`` (row-wise fold kernel, sequential) is compared
    **bitwise** with the same runner, so the conversion itself is pinned exactly.
    Control: the spec block built with the convolution taps not reversed.
``lm_hf_checkpoint_untied_matches_reference``
    A Hugging Face dialect checkpoint (``config.json`` with ``hidden_size``, ...,
    ``backbone.embeddings.weight``, one ``model.safetensors``, F32, conv biases, untied
    ``lm_head.weight``) written to a temporary directory, loaded by
    :meth:`nbssm.lm.MambaLM.from_pretrained` (float64): prefill logits and state, and decode
    after prefill (the fused kernel), against :func:`nbssm.verify.lm_reference.reference_lm`
    fed the stored tensors, within ``lm_logits_float64_abs``.
    Control: the same model against the reference with the head tied.
``lm_mamba_ssm_checkpoint_tied_matches_reference``
    A mamba_ssm dialect checkpoint (``d_model``, ``n_layer``, ``ssm_cfg``,
    ``pad_vocab_size_multiple`` padding the vocabulary 10 -> 12, ``tie_embeddings``,
    ``backbone.embedding.weight``, no conv bias, two shards with an index, and a stored
    ``lm_head.weight`` equal to the embedding, as mamba_ssm saves tied models): as above.
    Control: the reference with an untied (different) head.
``lm_tied_checkpoint_storing_a_different_head_is_refused``
    The documented behaviour (:func:`nbssm.lm.loading.check_tensors`): a tied checkpoint whose
    stored ``lm_head.weight`` differs from the embedding is refused with a
    ``CheckpointError`` naming ``lm_head`` (both dialects, by ``from_pretrained`` and by the
    ``MambaLM`` constructor); were it loaded, its logits would have to be the embedding-head
    reference's. Control: a loader that silently uses the stored head.
``lm_bf16_fp16_checkpoints_converted_on_load``
    BF16 (Hugging Face dialect) and F16 (mamba_ssm dialect) checkpoints loaded as float64 and
    float32 models, against the reference fed the same rounded weights (bf16 rounded to
    nearest even here, independently of the loader): ``lm_logits_float64_abs`` /
    ``lm_logits_float32_abs``. Control: the reference fed the unrounded float32 weights (the
    rounding is 1e7 times the float64 tolerance, so a loader that mis-converts is seen).
``lm_decode_after_prefill_equals_prefill_of_longer_sequence``
    float64 and float32 models: prefill ``k`` tokens then decode the rest one by one gives the
    logits and final state (ssm, conv history, positions) of prefilling the whole sequence,
    for ``k`` on both sides of the convolution width; two prefill chunks equal one.
    ``lm_logits_float64_abs`` / ``lm_decode_vs_prefill_abs``. Control: a decode that drops
    the convolution state before each token.

Sizes: ``d_model`` 4 (5 for one mixer shape), ``d_inner`` 8 (33: above one 32-wide block,
not a multiple), ``d_state`` 3, ``d_conv`` 4, ``dt_rank`` 2, 2 layers, vocabulary 11/12,
batch 2, 9 tokens. What is not checked here: long sequences (the kernels' refinement rows
cover lengths past every tile), real checkpoints (``tests/test_lm_fixture.py`` compares with
transformers), sampling and the tokenizer.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from nbssm.spec.verdict import BEYOND, CONTROL, PROVED, REFUTED, UNKNOWN, CheckResult
from nbssm.tolerances import max_rel_err, tol

from ._pairs import float64_pair
from .lm_reference import reference_lm

#: the LM's dimensions in these rows
DIMS = {"d_model": 4, "n_layer": 2, "d_state": 3, "d_conv": 4, "d_inner": 8, "dt_rank": 2}
EPS = 1e-3          # RMSNorm epsilon (large enough that a dropped epsilon is visible)
HF_VOCAB = 11
SSM_VOCAB, SSM_PAD = 10, 4   # mamba_ssm pads the vocabulary to a multiple of 4: 12 rows
BATCH, LENGTH, SPLIT = 2, 9, 5
#: mixer shapes (d_model, d_inner, d_state, d_conv, dt_rank)
MIXER_SHAPES = [(4, 8, 3, 4, 2), (5, 33, 4, 3, 1), (3, 6, 2, 1, 3)]

F64_ABS = tol("lm_logits_float64_abs")
F32_ABS = tol("lm_logits_float32_abs")
DECODE_F32_ABS = tol("lm_decode_vs_prefill_abs")


# ----------------------------------------------------------------------------- comparisons
def _abs(got, want, tolerance: float) -> tuple[bool, str]:
    """``(ok, detail)``: shapes equal and ``max |got - want| <= tolerance`` (absolute)."""
    got, want, verdict = float64_pair(got, want)
    if verdict is not None:
        return verdict
    if not np.all(np.isfinite(got)):
        return False, "non-finite values"
    diff = np.abs(got - want)
    err = float(diff.max())
    if err <= tolerance:
        return True, f"max abs error {err:.2e} <= {tolerance:.0e}"
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    return False, f"max abs error {err:.3e} > {tolerance:.0e} at {idx}"


def _rel(got, want, tolerance: float) -> tuple[bool, str]:
    got, want, verdict = float64_pair(got, want)
    if verdict is not None:
        return verdict
    err = max_rel_err(got, want)
    if err <= tolerance and np.all(np.isfinite(got)):
        return True, f"max relative error {err:.2e} <= {tolerance:.0e}"
    return False, f"max relative error {err:.3e} > {tolerance:.0e}"


def _bitwise(got, want) -> tuple[bool, str]:
    got, want, verdict = float64_pair(got, want)
    if verdict is not None:
        return verdict
    if np.array_equal(got, want):
        return True, "bitwise equal"
    return False, f"not bitwise equal: max |diff| {float(np.max(np.abs(got - want))):.3e}"


def _all(comparisons: list) -> tuple[bool, str]:
    bad = [f"{label}: {detail}" for label, (ok, detail) in comparisons if not ok]
    if bad:
        return False, f"{len(bad)} of {len(comparisons)} comparisons fail; " + "; ".join(bad[:4])
    return True, f"{len(comparisons)} comparisons hold; e.g. {comparisons[0][0]}: {comparisons[0][1][1]}"


def _row(name: str, kind: str, dims: dict, body: Callable[[], tuple]) -> CheckResult:
    """Run ``body() -> (ok, detail)``: ok -> proved, not ok -> refuted, an exception -> unknown."""
    t0 = time.perf_counter()
    try:
        ok, detail = body()
        verdict = PROVED if ok else REFUTED
    except Exception as exc:  # noqa: BLE001 - an error is an unknown, never a pass
        verdict, detail = UNKNOWN, f"error: {type(exc).__name__}: {exc}"
    return CheckResult(name, kind, verdict, dims, time.perf_counter() - t0, detail)


# ----------------------------------------------------------------------------- checkpoints
def random_tensors(rng: np.random.Generator, vocab: int, tied: bool, conv_bias: bool,
                   store_head: bool = False) -> dict:
    """Checkpoint tensors (Hugging Face naming, float32) in the regime where every part matters.

    ``store_head`` with ``tied``: also store an ``lm_head.weight`` equal to the embedding.
    """
    D, L, N, W, E, R = (DIMS[k] for k in ("d_model", "n_layer", "d_state", "d_conv", "d_inner", "dt_rank"))

    def normal(shape, std, mean=0.0):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    t = {"backbone.embeddings.weight": normal((vocab, D), 0.7), "backbone.norm_f.weight": normal((D,), 0.2, 1.0)}
    if not tied:
        t["lm_head.weight"] = normal((vocab, D), 0.7)
    elif store_head:
        t["lm_head.weight"] = t["backbone.embeddings.weight"].copy()
    for i in range(L):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = normal((D,), 0.2, 1.0)
        t[p + "mixer.in_proj.weight"] = normal((2 * E, D), D ** -0.5)
        t[p + "mixer.conv1d.weight"] = normal((E, 1, W), 0.5)
        if conv_bias:
            t[p + "mixer.conv1d.bias"] = normal((E,), 0.2)
        t[p + "mixer.x_proj.weight"] = normal((R + 2 * N, E), E ** -0.5)
        t[p + "mixer.dt_proj.weight"] = normal((E, R), R ** -0.5)
        t[p + "mixer.dt_proj.bias"] = np.log(np.expm1(rng.uniform(0.05, 0.8, E))).astype(np.float32)
        t[p + "mixer.A_log"] = np.log(rng.uniform(0.3, 4.0, (E, N))).astype(np.float32)
        t[p + "mixer.D"] = normal((E,), 0.3, 1.0)
        t[p + "mixer.out_proj.weight"] = normal((D, E), E ** -0.5)
    return t


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even (finite values)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def _stored(a: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """``(raw little-endian array to write, its value as float64)`` for a storage dtype."""
    if storage == "F32":
        raw = np.ascontiguousarray(a, dtype="<f4")
        return raw, raw.astype(np.float64)
    if storage == "F16":
        raw = np.ascontiguousarray(a, dtype="<f2")
        return raw, raw.astype(np.float64)
    if storage == "BF16":
        raw = bf16_bits(a).astype("<u2")
        return raw, (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    raise ValueError(f"storage: expected F32, F16 or BF16, got {storage!r}")


def write_safetensors(path: str, arrays: dict) -> None:
    """Write ``{name: (dtype code, little-endian array)}`` as a safetensors file (written here,
    independently of the loader: 8-byte header length, JSON header, contiguous data)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (code, raw) in arrays.items():
        data = np.ascontiguousarray(raw).tobytes()
        header[name] = {"dtype": code, "shape": list(raw.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def config_json(dialect: str, vocab: int, tied: bool, conv_bias: bool) -> dict:
    """``config.json`` of the LM in one dialect ("hf" or "mamba_ssm")."""
    D, L, N, W, E, R = (DIMS[k] for k in ("d_model", "n_layer", "d_state", "d_conv", "d_inner", "dt_rank"))
    if dialect == "hf":
        return {"model_type": "mamba", "hidden_size": D, "num_hidden_layers": L, "vocab_size": vocab,
                "state_size": N, "conv_kernel": W, "expand": E // D, "intermediate_size": E,
                "time_step_rank": R, "use_conv_bias": conv_bias, "layer_norm_epsilon": EPS,
                "tie_word_embeddings": tied, "hidden_act": "silu", "use_bias": False}
    return {"d_model": D, "n_layer": L, "vocab_size": vocab, "pad_vocab_size_multiple": SSM_PAD,
            "ssm_cfg": {"layer": "Mamba1", "d_state": N, "d_conv": W, "expand": E // D, "dt_rank": R,
                        "conv_bias": conv_bias},
            "rms_norm": True, "norm_epsilon": EPS, "tie_embeddings": tied}


def write_checkpoint(directory: str, tensors: dict, config: dict, dialect: str, storage: str = "F32",
                     shards: int = 1) -> dict:
    """Write a checkpoint directory; return the stored values (Hugging Face naming, float64).

    The mamba_ssm dialect names the embedding ``backbone.embedding.weight``. With
    ``shards > 1`` the tensors are split over that many files listed in
    ``model.safetensors.index.json``.
    """
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    stored, arrays = {}, {}
    for name, value in tensors.items():
        raw, as64 = _stored(value, storage)
        stored[name] = as64
        if dialect == "mamba_ssm" and name == "backbone.embeddings.weight":
            name = "backbone.embedding.weight"
        arrays[name] = (storage, raw)
    names = list(arrays)
    if shards <= 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), arrays)
        return stored
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: arrays[n] for n in names[s::shards]}
        write_safetensors(os.path.join(directory, file), part)
        weight_map.update({n: file for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return stored


# ----------------------------------------------------------------------------- model vs reference
def _ids(rng: np.random.Generator, vocab: int) -> np.ndarray:
    return rng.integers(0, vocab, (BATCH, LENGTH))


def _state_arrays(ref_states: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch reference states -> (ssm (L, b, E, N), conv (L, b, W-1, E)) as ModelState holds them."""
    ssm = np.array([[s[i][0] for s in ref_states] for i in range(len(ref_states[0]))])
    conv = np.array([[s[i][1] for s in ref_states] for i in range(len(ref_states[0]))])
    return ssm, conv


def model_vs_reference(model, stored: dict, ids: np.ndarray, tolerance: float, tied: bool,
                       head: np.ndarray | None = None) -> list:
    """Prefill logits and state, and decode after ``SPLIT`` prefill tokens, against the reference.

    ``head`` replaces the reference's head (untied) when given (controls).
    """
    ref_t = dict(stored)
    if head is not None:
        ref_t["lm_head.weight"] = head
        tied = False
    refs = [reference_lm(ref_t, model.config.n_layer, model.config.norm_eps, tied, row) for row in ids]
    ref_logits = np.array([r[0] for r in refs])                               # (b, l, V)
    ref_ssm, ref_conv = _state_arrays([r[1] for r in refs])
    logits, state = model.forward(ids)
    comps = [("prefill logits", _abs(logits, ref_logits, tolerance)),
             ("prefill ssm state", _abs(state.ssm, ref_ssm, tolerance)),
             ("prefill conv history", _abs(state.conv, ref_conv, tolerance))]
    _, st = model.forward(ids[:, :SPLIT])
    decoded = []
    for t in range(SPLIT, ids.shape[1]):
        out, st = model.step(ids[:, t], st)
        decoded.append(out)
    comps += [(f"decode logits after {SPLIT} prefill tokens",
               _abs(np.stack(decoded, axis=1), ref_logits[:, SPLIT:], tolerance)),
              ("decode ssm state", _abs(st.ssm, ref_ssm, tolerance)),
              ("decode conv history", _abs(st.conv, ref_conv, tolerance))]
    return comps


def _load(directory: str, dtype):
    from nbssm.lm import MambaLM

    return MambaLM.from_pretrained(directory, dtype=dtype, tokenizer=False)


def _checkpoint_dims(dialect: str, storage: str, tied: bool, **extra) -> dict:
    return {**DIMS, "dialect": dialect, "storage": storage, "tied": tied, "batch": BATCH, "length": LENGTH,
            "prefill_then_decode": f"{SPLIT}+{LENGTH - SPLIT}", **extra}


# ----------------------------------------------------------------------------- mixer rows
def mixer_vs_spec(mixer, spec, rng: np.random.Generator, tolerance: float, check_selective: bool = True) -> list:
    """``MambaMixer.forward`` (fresh and continued) against ``spec.run_list`` / ``run_list_aux`` (double)."""
    from nbssm.spec.context import DOUBLE

    d = mixer.dims
    Dm, E, N = d["d_model"], d["d_inner"], d["d_state"]
    x = rng.normal(0.0, 1.0, (BATCH, LENGTH, Dm)).astype(mixer.dtype)
    x64 = x.astype(np.float64)
    zero = [[0.0] * N for _ in range(E)]
    comps = []
    refs = [spec.run_list(DOUBLE, zero, x64[b].tolist()) for b in range(BATCH)]
    y_ref = np.array([r[1] for r in refs]).reshape(BATCH, LENGTH, Dm)
    h_ref = np.array([r[0] for r in refs]).reshape(BATCH, E, N)
    for strategy in ("sequential", "chunked"):
        y, st = mixer.forward(x, strategy=strategy)
        comps.append((f"{strategy} outputs", _rel(y, y_ref, tolerance)))
        comps.append((f"{strategy} final state", _rel(st.ssm[0], h_ref, tolerance)))
    # continued from the carried state: the spec's runListAux with the history newest first
    _, s1 = mixer.forward(x[:, :SPLIT], strategy="sequential")
    y2, _ = mixer.forward(x[:, SPLIT:], s1, strategy="sequential")
    for b in range(BATCH):
        H1 = s1.ssm[0][b].astype(np.float64).tolist()
        L0 = s1.conv[0][b][::-1].astype(np.float64).tolist()
        _, ys = spec.run_list_aux(DOUBLE, H1, L0, x64[b, SPLIT:].tolist())
        comps.append((f"continued after {SPLIT} tokens [{b}]",
                      _rel(y2[b], np.array(ys).reshape(LENGTH - SPLIT, Dm), tolerance)))
    if check_selective:
        ys_sel, st_sel = mixer.to_selective(strategy="sequential").forward(x64)
        comps.append(("to_selective() outputs (bitwise)", _bitwise(ys_sel, y_ref)))
        comps.append(("to_selective() final state (bitwise)", _bitwise(st_sel.ssm[0], h_ref)))
    return comps


def _spec_taps_not_reversed(mixer):
    """Control: the spec block of ``mixer`` with the convolution taps left oldest first."""
    from nbssm.spec.models import SelectiveMambaBlockSpec

    spec = mixer.to_spec()
    fields = {k: getattr(spec, k) for k in SelectiveMambaBlockSpec.FIELDS}
    fields["conv_kernel"] = fields["conv_kernel"][::-1]
    return SelectiveMambaBlockSpec(spec.input_dim, spec.inner_dim, spec.state_dim, spec.output_dim,
                                   spec.conv_width, **fields)


# ----------------------------------------------------------------------------- mutants (controls)
def _dropping_conv_state_lm():
    from nbssm.lm import MambaLM

    class DroppingConvStateLM(MambaLM):
        """Control mutant: decode zeroes the convolution history before each token."""

        def step(self, token_ids, state=None, inplace=False):
            if state is not None:
                state = state.copy()
                state.conv = np.zeros_like(state.conv)
            return super().step(token_ids, state, inplace)

    return DroppingConvStateLM


def decode_vs_prefill(model, ids: np.ndarray, tolerance: float) -> list:
    """Prefill ``k`` then decode equals prefilling everything (logits, ssm, conv, positions); two
    prefill chunks equal one; ``last_only`` prefill gives the last position's logits and the same state."""
    full, st_full = model.forward(ids)
    W = model.config.d_conv
    comps = []
    for k in sorted({1, W - 1, W, W + 1, SPLIT}):
        pre, st = model.forward(ids[:, :k])
        last, st_last = model.forward(ids[:, :k], last_only=True)
        comps.append((f"k={k} last_only logits", _abs(last, pre[:, -1:], tolerance)))
        comps.append((f"k={k} last_only ssm", _abs(st_last.ssm, st.ssm, tolerance)))
        outs = []
        for t in range(k, ids.shape[1]):
            out, st = model.step(ids[:, t], st)
            outs.append(out)
        comps.append((f"k={k} decode logits", _abs(np.stack(outs, axis=1), full[:, k:], tolerance)))
        comps.append((f"k={k} ssm", _abs(st.ssm, st_full.ssm, tolerance)))
        comps.append((f"k={k} conv", _abs(st.conv, st_full.conv, tolerance)))
        same = bool(np.array_equal(st.positions, st_full.positions))
        comps.append((f"k={k} positions", (same, f"positions {st.positions.tolist()} vs "
                                                 f"{st_full.positions.tolist()}")))
        first, s1 = model.forward(ids[:, :k])
        rest, s2 = model.forward(ids[:, k:], s1)
        comps.append((f"k={k} two prefill chunks", _abs(np.concatenate([first, rest], axis=1), full, tolerance)))
    return comps


# ----------------------------------------------------------------------------- the group
def lm_checks(seed: int = 0) -> list[CheckResult]:
    """Run the language-model rows and their controls (see the module docstring).

    Parameters
    ----------
    seed : int
        Seed of the random weights and token ids.

    Returns
    -------
    list of CheckResult
        Kinds ``"beyond"`` and ``"control"``, in pairs (row, its control).
    """
    from nbssm.threads import threads

    # one thread: at these sizes a parallel launch costs ~100x the arithmetic on a loaded
    # machine, and the kernels' results do not depend on the thread count
    with threads(1):
        return _lm_checks(seed)


def _lm_checks(seed: int) -> list[CheckResult]:
    from nbssm.lm import CheckpointError, MambaLM, MambaLMConfig
    from nbssm.lm.loading import normalize_names, read_config, read_tensors
    from nbssm.models import MambaMixer

    base = np.random.SeedSequence([seed, 0x4C4D])
    rngs = iter(np.random.default_rng(s) for s in base.spawn(32))
    results: list[CheckResult] = []

    # ---- the mixer against the spec
    mixer_dims = {"shapes (d_model,d_inner,d_state,d_conv,dt_rank)": MIXER_SHAPES, "batch": BATCH,
                  "length": LENGTH, "tolerance": tol("lm_mixer_spec_float64")}

    def mixer_row():
        comps = []
        for shape in MIXER_SHAPES:
            m = MambaMixer.random(*shape, seed=next(rngs), dtype=np.float64)
            comps += [(f"{shape} {label}", c) for label, c in
                      mixer_vs_spec(m, m.to_spec(), next(rngs), tol("lm_mixer_spec_float64"))]
        m32 = MambaMixer.random(*MIXER_SHAPES[0], seed=next(rngs), dtype=np.float32)
        comps += [(f"float32 {MIXER_SHAPES[0]} {label}", c) for label, c in
                  mixer_vs_spec(m32, m32.to_spec(), next(rngs), tol("lm_mixer_spec_float32"), check_selective=False)]
        return _all(comps)

    results.append(_row("lm_mixer_refines_SelectiveMambaBlockSpec_via_to_spec", BEYOND, mixer_dims, mixer_row))

    def mixer_control():
        m = MambaMixer.random(*MIXER_SHAPES[0], seed=next(rngs), dtype=np.float64)
        return _all(mixer_vs_spec(m, _spec_taps_not_reversed(m), next(rngs), tol("lm_mixer_spec_float64"),
                                  check_selective=False))

    results.append(_row("control_lm_mixer_spec_conv_taps_not_reversed", CONTROL,
                        {"shape": MIXER_SHAPES[0]}, mixer_control))

    with tempfile.TemporaryDirectory(prefix="nbssm-verify-lm-") as tmp:
        # ---- Hugging Face dialect, untied head
        hf_rng = next(rngs)
        hf_dir = os.path.join(tmp, "hf_untied")
        hf_stored = write_checkpoint(hf_dir, random_tensors(hf_rng, HF_VOCAB, tied=False, conv_bias=True),
                                     config_json("hf", HF_VOCAB, tied=False, conv_bias=True), "hf")
        hf_ids = _ids(hf_rng, HF_VOCAB)

        def hf_row():
            model = _load(hf_dir, np.float64)
            return _all(model_vs_reference(model, hf_stored, hf_ids, F64_ABS, tied=False))

        results.append(_row("lm_hf_checkpoint_untied_matches_reference", BEYOND,
                            _checkpoint_dims("hf", "F32", False, vocab=HF_VOCAB), hf_row))

        def hf_control():
            model = _load(hf_dir, np.float64)
            return _all(model_vs_reference(model, hf_stored, hf_ids, F64_ABS, tied=True))

        results.append(_row("control_lm_untied_checkpoint_vs_reference_with_tied_head", CONTROL,
                            _checkpoint_dims("hf", "F32", False), hf_control))

        # ---- mamba_ssm dialect, tied head (stored copy equal to the embedding), two shards
        ssm_rng = next(rngs)
        padded = SSM_VOCAB + (-SSM_VOCAB % SSM_PAD)
        ssm_dir = os.path.join(tmp, "mamba_ssm_tied")
        ssm_stored = write_checkpoint(
            ssm_dir, random_tensors(ssm_rng, padded, tied=True, conv_bias=False, store_head=True),
            config_json("mamba_ssm", SSM_VOCAB, tied=True, conv_bias=False), "mamba_ssm", shards=2)
        ssm_ids = _ids(ssm_rng, SSM_VOCAB)

        def ssm_row():
            model = _load(ssm_dir, np.float64)
            comps = model_vs_reference(model, ssm_stored, ssm_ids, F64_ABS, tied=True)
            comps.append(("head is the embedding", (model.head is model.embed, "model.head is model.embed")))
            comps.append(("vocabulary padded", (model.config.vocab_size == padded,
                                                f"vocab_size {model.config.vocab_size}, expected {padded}")))
            return _all(comps)

        results.append(_row("lm_mamba_ssm_checkpoint_tied_matches_reference", BEYOND,
                            _checkpoint_dims("mamba_ssm", "F32", True, vocab=f"{SSM_VOCAB} padded to {padded}",
                                             shards=2, conv_bias=False), ssm_row))

        def ssm_control():
            model = _load(ssm_dir, np.float64)
            other = next(rngs).normal(0.0, 0.7, ssm_stored["backbone.embeddings.weight"].shape)
            return _all(model_vs_reference(model, ssm_stored, ssm_ids, F64_ABS, tied=True, head=other))

        results.append(_row("control_lm_tied_checkpoint_vs_reference_with_untied_head", CONTROL,
                            _checkpoint_dims("mamba_ssm", "F32", True), ssm_control))

        # ---- a tied checkpoint storing a different head: refused (documented behaviour)
        bad = {}
        for dialect, vocab in (("hf", HF_VOCAB), ("mamba_ssm", padded)):
            r = next(rngs)
            t = random_tensors(r, vocab, tied=True, conv_bias=True)
            t["lm_head.weight"] = (0.7 * r.standard_normal(t["backbone.embeddings.weight"].shape)).astype(np.float32)
            d = os.path.join(tmp, f"{dialect}_tied_other_head")
            raw_vocab = HF_VOCAB if dialect == "hf" else SSM_VOCAB
            stored = write_checkpoint(d, t, config_json(dialect, raw_vocab, tied=True, conv_bias=True), dialect)
            bad[dialect] = (d, stored, _ids(r, raw_vocab))

        def refusal(load: Callable[[str], object]) -> tuple[bool, str]:
            comps = []
            for dialect, (d, stored, ids) in bad.items():
                try:
                    model = load(d)
                except CheckpointError as exc:
                    ok = "lm_head" in str(exc)
                    comps.append((f"{dialect} refused", (ok, f"CheckpointError{' naming lm_head' if ok else ''}")))
                    continue
                # loaded: it must then at least use the embedding (what tied means)
                c = _all(model_vs_reference(model, stored, ids, F64_ABS, tied=True))
                comps.append((f"{dialect} loaded instead of refused",
                              (False, "the tied checkpoint with a different stored head was loaded"
                                      + ("" if c[0] else f" and does not use the embedding head ({c[1][:160]})"))))
            return _all(comps)

        def refused_row():
            ok, detail = refusal(lambda d: _load(d, np.float64))
            # the constructor refuses the same tensors too
            for dialect, (d, _, _) in bad.items():
                config = read_config(d)
                tensors = normalize_names(read_tensors(d, np.float64))
                try:
                    MambaLM(config, tensors, np.float64)
                except CheckpointError:
                    continue
                return False, f"{dialect}: MambaLM(config, tensors) accepted a tied head that differs"
            return ok, detail + "; MambaLM(config, tensors) refuses them too"

        results.append(_row("lm_tied_checkpoint_storing_a_different_head_is_refused", BEYOND,
                            {**DIMS, "dialects": ["hf", "mamba_ssm"], "tied": True}, refused_row))

        def silent_stored_head(d: str):
            config = read_config(d)
            tensors = normalize_names(read_tensors(d, np.float64))
            return MambaLM(replace(config, tie_embeddings=False), tensors, np.float64)  # mutation

        results.append(_row("control_lm_tied_checkpoint_loaded_with_the_stored_head", CONTROL,
                            {**DIMS, "dialects": ["hf", "mamba_ssm"], "tied": True},
                            lambda: refusal(silent_stored_head)))

        # ---- bf16 and fp16 stored weights, converted on load
        conv_rng = next(rngs)
        bf_t = random_tensors(conv_rng, HF_VOCAB, tied=False, conv_bias=True)
        bf_dir = os.path.join(tmp, "hf_bf16")
        bf_stored = write_checkpoint(bf_dir, bf_t, config_json("hf", HF_VOCAB, tied=False, conv_bias=True), "hf",
                                     storage="BF16")
        fp_dir = os.path.join(tmp, "mamba_ssm_fp16")
        fp_stored = write_checkpoint(fp_dir, random_tensors(conv_rng, padded, tied=True, conv_bias=True),
                                     config_json("mamba_ssm", SSM_VOCAB, tied=True, conv_bias=True), "mamba_ssm",
                                     storage="F16")
        conv_ids = _ids(conv_rng, SSM_VOCAB)

        def converted_row():
            comps = []
            for label, d, stored, tied in (("bf16 hf", bf_dir, bf_stored, False),
                                           ("fp16 mamba_ssm", fp_dir, fp_stored, True)):
                for dtype, tolerance in ((np.float64, F64_ABS), (np.float32, F32_ABS)):
                    model = _load(d, dtype)
                    name = np.dtype(dtype).name
                    comps.append((f"{label} -> {name} dtype", (model.dtype == dtype, f"model dtype {model.dtype}")))
                    comps += [(f"{label} -> {name} {k}", c) for k, c in
                              model_vs_reference(model, stored, conv_ids, tolerance, tied)]
            return _all(comps)

        results.append(_row("lm_bf16_fp16_checkpoints_converted_on_load", BEYOND,
                            {**DIMS, "checkpoints": ["hf BF16 untied", "mamba_ssm F16 tied"],
                             "model dtypes": ["float64", "float32"], "batch": BATCH, "length": LENGTH},
                            converted_row))

        def converted_control():
            model = _load(bf_dir, np.float64)
            unrounded = {k: v.astype(np.float64) for k, v in bf_t.items()}
            return _all(model_vs_reference(model, unrounded, conv_ids, F64_ABS, tied=False))

        results.append(_row("control_lm_bf16_reference_fed_unrounded_weights", CONTROL,
                            {**DIMS, "checkpoint": "hf BF16 untied"}, converted_control))

    # ---- decode after prefill = prefill of the longer sequence
    cfg = MambaLMConfig(d_model=DIMS["d_model"], n_layer=DIMS["n_layer"], vocab_size=HF_VOCAB,
                        d_state=DIMS["d_state"], d_conv=DIMS["d_conv"], d_inner=DIMS["d_inner"],
                        dt_rank=DIMS["dt_rank"], norm_eps=EPS, tie_embeddings=False)
    dec_rng = next(rngs)
    dec_tensors = random_tensors(dec_rng, HF_VOCAB, tied=False, conv_bias=True)
    dec_ids = _ids(dec_rng, HF_VOCAB)
    W = DIMS["d_conv"]
    dec_dims = {**DIMS, "batch": BATCH, "length": LENGTH, "prefill k": sorted({1, W - 1, W, W + 1, SPLIT}),
                "dtypes": ["float64", "float32"]}

    def decode_row():
        comps = []
        for dtype, tolerance in ((np.float64, F64_ABS), (np.float32, DECODE_F32_ABS)):
            model = MambaLM(cfg, dec_tensors, dtype)
            comps += [(f"{np.dtype(dtype).name} {k}", c) for k, c in decode_vs_prefill(model, dec_ids, tolerance)]
        return _all(comps)

    results.append(_row("lm_decode_after_prefill_equals_prefill_of_longer_sequence", BEYOND, dec_dims, decode_row))

    def decode_control():
        model = _dropping_conv_state_lm()(cfg, dec_tensors, np.float64)
        return _all(decode_vs_prefill(model, dec_ids, F64_ABS))

    results.append(_row("control_lm_decode_dropping_conv_state", CONTROL, dec_dims, decode_control))
    return results


#: the names of the group's rows, in order (for listings and the budget-0 path)
ROW_NAMES = (
    "lm_mixer_refines_SelectiveMambaBlockSpec_via_to_spec",
    "control_lm_mixer_spec_conv_taps_not_reversed",
    "lm_hf_checkpoint_untied_matches_reference",
    "control_lm_untied_checkpoint_vs_reference_with_tied_head",
    "lm_mamba_ssm_checkpoint_tied_matches_reference",
    "control_lm_tied_checkpoint_vs_reference_with_untied_head",
    "lm_tied_checkpoint_storing_a_different_head_is_refused",
    "control_lm_tied_checkpoint_loaded_with_the_stored_head",
    "lm_bf16_fp16_checkpoints_converted_on_load",
    "control_lm_bf16_reference_fed_unrounded_weights",
    "lm_decode_after_prefill_equals_prefill_of_longer_sequence",
    "control_lm_decode_dropping_conv_state",
)
