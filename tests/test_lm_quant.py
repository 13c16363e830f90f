"""Decode weights in bf16 / fp16 / int8 storage, and the batch-blocked decode projections.

Oracles: ``lm_naive`` (plain numpy, float64) on the dequantized stored weights; a float32
model built from those dequantized weights, which the kernel must match bit for bit (every
format's dequantization is exact in float32 and the fold order is the same); each sequence
run alone (batch blocks must not change its bits); one thread against two.
"""

from __future__ import annotations

import numpy as np
import pytest

from lm_naive import naive_model_logits
from nbssm.lm import CheckpointError, MambaLM, MambaLMConfig
from nbssm.lm.model import _STACKED
from nbssm.lm.quant import QBLOCK, dequantize, from_bf16, from_fp16, quantize_q8, to_bf16, to_fp16
from tolerances import tol

FORMATS = ("float32", "bf16", "fp16", "int8")
# d_model 40 (one full lane step of 32 plus a tail), d_inner 200 (two decode chunks, the second
# 72 wide: a partial int8 block), dt_rank 3 (all tail)
CFG = MambaLMConfig(d_model=40, n_layer=2, vocab_size=70, d_state=5, d_conv=4, d_inner=200, dt_rank=3)


def _model(weights="float32", seed=1, cfg=CFG):
    return MambaLM.random(cfg, seed=seed, weights=weights)


def _tensors(m: MambaLM) -> dict:
    """Checkpoint tensors (HF naming) of ``m``'s weights as float32 (dequantized)."""
    p = m.parameters()
    t = {"backbone.embeddings.weight": p["backbone.embeddings.weight"],
         "backbone.norm_f.weight": p["backbone.norm_f.weight"]}
    if not m.config.tie_embeddings:
        t["lm_head.weight"] = p["lm_head.weight"]
    for i in range(m.config.n_layer):
        for key, suffix in _STACKED.items():
            v = p[suffix][i]
            t[f"backbone.layers.{i}.{suffix}"] = v[:, None, :] if key == "conv_w" else v
    return t




def _decode(m: MambaLM, ids: np.ndarray):
    """Logits (steps, b, V) of decoding ``ids`` (b, steps) token by token, and the final state."""
    state = m.initial_state(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, state = m.step(ids[:, t], state, inplace=True)
        out.append(logits)
    return np.stack(out), state


# ----------------------------------------------------------------------------- formats
def test_q8_quantizer_error_bound():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 3 * QBLOCK + 5)).astype(np.float32) * rng.uniform(1e-3, 10, (7, 1)).astype(np.float32)
    w[2, :QBLOCK] = 0.0                                        # an all-zero block: scale 0
    w[3, 5] = 1e6                                              # one outlier
    q, s = quantize_q8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (7, 4)
    assert np.abs(q.astype(int)).max() <= 127
    ref = np.zeros_like(s)
    for k in range(4):
        ref[:, k] = np.abs(w[:, k * QBLOCK:(k + 1) * QBLOCK]).max(1) / np.float32(127)
    assert np.array_equal(s, ref)
    srep = np.repeat(s.astype(np.float64), QBLOCK, 1)[:, :w.shape[1]]
    err = np.abs(w.astype(np.float64) - dequantize(q, s).astype(np.float64))
    # half a step, plus the float32 roundings of w / s and of q * s
    assert np.all(err <= srep / 2 * (1 + 1e-5) + np.abs(w) * 2.0**-24)
    assert s[2, 0] == 0 and not q[2, :QBLOCK].any()


def test_half_formats_round_to_nearest():
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * 100
    b = from_bf16(to_bf16(x)).astype(np.float64)
    assert np.all(np.abs(b - x) <= np.abs(x) * 2.0**-8)        # half an ulp of 8 significant bits
    assert np.array_equal(from_bf16(to_bf16(b.astype(np.float32))), b.astype(np.float32))  # exact on bf16 values
    h = from_fp16(to_fp16(x))
    assert np.array_equal(h, x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16 range"):
        to_fp16(np.array([7e4], np.float32))


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_formats_equal_float32_model_of_dequantized_weights(fmt):
    """Bitwise: the kernel's in-register conversion is the dequantization, the fold order is shared."""
    mq = _model(fmt)
    mf = MambaLM(CFG, _tensors(mq))
    assert mq.weights == fmt and mf.weights == "float32"
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (3, 6))
    lq, sq = _decode(mq, ids)
    lf, sf = _decode(mf, ids)
    assert np.array_equal(lq, lf)
    assert np.array_equal(sq.ssm, sf.ssm) and np.array_equal(sq.conv, sf.conv)
    # prefill (float32 dequantized per layer) equals the float32 model's prefill
    pq, _ = mq.forward(ids)
    pf, _ = mf.forward(ids)
    assert np.array_equal(pq, pf)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_against_naive_reference(fmt):
    m = _model(fmt)
    ids = np.random.default_rng(3).integers(0, CFG.vocab_size, 9)
    want = naive_model_logits(m, ids)
    got, _ = _decode(m, ids[None])
    assert np.max(np.abs(got[:, 0] - want)) < tol("lm_decode_vs_prefill_abs")
    pre, _ = m.forward(ids)
    assert np.max(np.abs(pre - want)) < tol("lm_logits_float32_abs")


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_batched_decode_bitwise_per_sequence(fmt):
    """Batch 5 (register blocks 2 + 2 + 1) gives each sequence the bits it gets alone."""
    m = _model(fmt)
    ids = np.random.default_rng(4).integers(0, CFG.vocab_size, (5, 5))
    together, _ = _decode(m, ids)
    for i in range(5):
        alone, _ = _decode(m, ids[i:i + 1])
        assert np.array_equal(together[:, i], alone[:, 0])


_KERNEL_FORMATS = {"float32": lambda w: (w, None), "bf16": lambda w: (to_bf16(w), None),
                   "fp16": lambda w: (to_fp16(w), None), "int8": quantize_q8}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows,n,c0", [(90, 805, 0), (7, 48, 0), (23, 96, 32), (5, 3, 0), (2, 0, 0)])
def test_register_blocked_rows_match_lane_loops_bitwise(fmt, rows, n, c0):
    """The IR dot products (2 x 2 register blocks, row blocks of ROW_BLOCK_BYTES, masked tail,
    lane tree in registers) give bit for bit what Numba's own scalar lane loops give, for every
    (row, sequence), whatever the batch and row counts (odd ones take the 1-row / 1-sequence
    blocks) and in both block sets (AVX-512's 2 x 4, AVX2's 1 x 2); and they agree with a
    float64 product. 805 x 4 bytes: 40 rows per 128 KiB row block, so 90 rows span three
    blocks (the prefetch of the next one included); n = 805 and 3 have tails, 0 is an empty
    sum."""
    from nbssm._kernels.decode import ROW_BLOCK_BYTES, _rows_lanes, _vrows

    assert ROW_BLOCK_BYTES // (805 * 4) == 40

    rng = np.random.default_rng(rows + n)
    w = (rng.standard_normal((rows, c0 + n)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    data, scale = _KERNEL_FORMATS[fmt](w)
    if scale is None:
        scale = np.zeros((rows, 0), np.float32)
    wf = dequantize(data, scale if fmt == "int8" else None) if fmt != "float32" else w
    for nb in (1, 2, 3, 5, 7, 8):
        x = rng.standard_normal((nb, c0 + n)).astype(np.float32)
        x[0, c0:c0 + 3] = -0.0                                  # signed zeros in the sums
        slow = np.full((nb, rows + 4), np.nan, np.float32)
        _rows_lanes(data, scale, 0, rows, c0, n, x, slow, 3)
        for wide in (True, False):                              # the AVX-512 and the AVX2 blocks
            fast = np.full((nb, rows + 4), np.nan, np.float32)
            _vrows(data, scale, 0, rows, c0, n, x, fast, 3, wide)
            assert np.array_equal(fast.view(np.uint32), slow.view(np.uint32)), (nb, fmt, wide)
            assert np.isnan(fast[:, :3]).all() and np.isnan(fast[:, rows + 3:]).all()   # nothing outside
        ref = x[:, c0:].astype(np.float64) @ wf[:, c0:].astype(np.float64).T
        bound = tol("decode_dot") * (np.abs(x[:, c0:]).astype(np.float64) @ np.abs(wf[:, c0:]).T + 1e-30)
        assert (np.abs(fast[:, 3:rows + 3] - ref) <= bound).all()


def test_thread_count_does_not_change_bits():
    import numba

    m = _model("bf16")
    ids = np.random.default_rng(5).integers(0, CFG.vocab_size, (3, 4))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = _decode(m, ids)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two, _ = _decode(m, ids)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "int8"])
def test_save_and_load_stored_format(tmp_path, fmt):
    m = _model(fmt)
    m.save_quantized(tmp_path)
    back = MambaLM.from_pretrained(tmp_path, weights=fmt, tokenizer=False)
    for name, (data, scale) in m.stored_weights().items():
        d2, s2 = back.stored_weights()[name]
        assert d2.dtype == data.dtype and np.array_equal(d2, data) and np.array_equal(s2, scale)
    ids = np.array([[1, 2, 3]])
    assert np.array_equal(_decode(m, ids)[0], _decode(back, ids)[0])
    # without weights=: a saved int8 checkpoint stays int8; 16-bit ones load as float32 (exactly)
    plain = MambaLM.from_pretrained(tmp_path, tokenizer=False)
    assert plain.weights == ("int8" if fmt == "int8" else "float32")
    assert np.array_equal(plain.embed, m.embed)


def test_untied_head():
    cfg = MambaLMConfig(d_model=40, n_layer=1, vocab_size=70, d_state=5, d_inner=80, dt_rank=3, tie_embeddings=False)
    mq = _model("int8", cfg=cfg)
    mf = MambaLM(cfg, _tensors(mq))
    ids = np.array([[4, 5, 6]])
    assert np.array_equal(_decode(mq, ids)[0], _decode(mf, ids)[0])


# ----------------------------------------------------------------------------- bad input
def test_bad_weights_argument():
    with pytest.raises(ValueError, match="weights: expected one of"):
        _model("int4")
    with pytest.raises(ValueError, match="float32 compute dtype"):
        MambaLM.random(CFG, dtype=np.float64, weights="bf16")
    with pytest.raises(ValueError, match="needs dtype float64"):
        MambaLM.random(CFG, dtype=np.float32, weights="float64")


def test_int8_file_with_wrong_scale_shape(tmp_path):
    _model("int8").save_quantized(tmp_path)
    import json
    import struct

    path = tmp_path / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = "backbone.layers.0.mixer.in_proj.weight.scale"
    rows, nblk = header[name]["shape"]
    header[name]["shape"] = [rows * nblk, 1]                      # same bytes, wrong shape
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match="in_proj.weight.scale.*expected shape"):
        MambaLM.from_pretrained(tmp_path, tokenizer=False)


def test_scales_checked_in_memory():
    t = _tensors(_model())
    name = "backbone.layers.0.mixer.x_proj.weight"
    q, s = quantize_q8(t[name])
    t[name] = q
    with pytest.raises(CheckpointError, match="no .*scale"):
        MambaLM(CFG, t, weights="int8")
    t[name + ".scale"] = s[:, :-1]
    with pytest.raises(CheckpointError, match="expected shape"):
        MambaLM(CFG, t, weights="int8")
    s = s.copy()
    s[0, 0] = np.nan
    t[name + ".scale"] = s
    with pytest.raises(CheckpointError, match="finite"):
        MambaLM(CFG, t, weights="int8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_weights_refused(fmt):
    t = _tensors(_model())
    name = "backbone.layers.1.mixer.out_proj.weight"
    t[name] = t[name].copy()
    t[name][3, 4] = np.nan
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        MambaLM(CFG, t, weights=fmt)
    bits = to_bf16(_tensors(_model())[name])
    bits[0, 0] = 0x7FC0                                           # a bfloat16 NaN pattern
    t[name] = bits
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        MambaLM(CFG, t, weights=fmt)


# ----------------------------------------------------------------------------- accuracy figures
#: measured on this model (seed 0, 256 steps, int8/bf16 fed float32's greedy tokens; logits up
#: to |29|): bf16 max |err| 0.048 (relative to the largest logit 0.0017), int8 0.16 (0.0056);
#: greedy agreement 256/256 for both. Bounds: rows of nbssm/tolerances.py.
AGREE_SHAPE = MambaLMConfig(d_model=64, n_layer=4, vocab_size=256, d_state=8, d_conv=4)


def _rescaled(weights):
    """A random model whose embedding/head is scaled up (std 0.5) so that logits are spread
    (a unit-variance hidden state then gives logits of std ~4) and the greedy choice is not a near-tie."""
    base = MambaLM.random(AGREE_SHAPE, seed=0)
    t = _tensors(base)
    t["backbone.embeddings.weight"] = t["backbone.embeddings.weight"] * np.float32(5.0)
    return MambaLM(AGREE_SHAPE, t, weights=weights)


def accuracy_figures(steps=256):
    """(max abs logit error, relative, greedy agreement) of bf16 and int8 against float32."""
    ref = _rescaled("float32")
    toks = [1]
    state = ref.initial_state(1)
    ref_logits = []
    for _ in range(steps):
        logits, state = ref.step(np.array([toks[-1]]), state, inplace=True)
        ref_logits.append(logits[0])
        toks.append(int(np.argmax(logits[0])))
    ref_logits = np.array(ref_logits)
    out = {}
    for fmt in ("bf16", "int8"):
        m = _rescaled(fmt)
        got, _ = _decode(m, np.array([toks[:steps]]))
        got = got[:, 0]
        err = float(np.max(np.abs(got - ref_logits)))
        out[fmt] = (err, err / float(np.max(np.abs(ref_logits))),
                    float(np.mean(np.argmax(got, 1) == np.argmax(ref_logits, 1))))
    return out


def test_logit_error_and_greedy_agreement():
    figs = accuracy_figures()
    assert figs["bf16"][1] < tol("lm_bf16_vs_float32_rel")
    assert figs["int8"][1] < tol("lm_int8_vs_float32_rel")
    assert figs["bf16"][2] >= tol("lm_quant_greedy_agreement") and figs["int8"][2] >= tol("lm_quant_greedy_agreement")
