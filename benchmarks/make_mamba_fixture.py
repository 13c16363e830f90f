"""Produce the committed Mamba fixture ``tests/fixtures/mamba_tiny/`` with transformers.

Run by hand, once, in a scratch environment that has PyTorch and transformers (never in the
tests or CI, which read only the files written here)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 transformers safetensors numpy tokenizers
    /tmp/torchenv/bin/python benchmarks/make_mamba_fixture.py

What it writes (all small; no pickle anywhere):

``tied/`` and ``untied/``
    Two tiny ``MambaForCausalLM`` checkpoints saved with ``save_pretrained`` (``config.json`` +
    ``model.safetensors``): hidden 32, 2 layers, d_state 8, expand 2 (inner 64), conv 4,
    dt rank 4, vocab 96, with and without a tied LM head.  Parameters are rescaled so that
    every part of the mixer matters: ``A_log`` uniform on [0, 3], the dt bias set so that
    Δ is about 0.1 to 1, projections and convolution taps around N(0, 0.3²), a non-zero conv
    bias, D around N(1, 0.3²), norm weights around 1.
``tied/tokenizer.json``
    A character-level tokenizer (``tokenizers`` WordLevel) over the same 96 ids.
``*/expected.safetensors``
    Inputs and the reference outputs of transformers' pure-PyTorch path, computed in float64
    from the stored float32 weights (``*_f64``; transformers' float32 round trips, ``.float()``
    on A, D, B, the dt bias and the scan input, RMSNorm's cast and the float32 residual, are patched out so that it
    is float64 throughout) and in float32 (``*_f32``, unpatched):

    - ``prompts`` (3, 12) int64, ``prefill_logits_*`` (3, 12, 96): the full-sequence forward;
    - ``decode_tokens`` (3, 6) int64, ``decode_logits_*`` (3, 6, 96): six single-token steps
      with transformers' cache after the prefill (its ``selective_state_update`` path);
    - ``ragged_k`` (12,) int64 and ``ragged_last_logits_*`` (3, 96): each prompt cut to its own
      length (9, 6, 12) and run alone; the logits at its last token.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import MambaConfig, MambaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "mamba_tiny")
VOCAB = 96
RAGGED_LENGTHS = (9, 6, 12)


def make_model(tied: bool, seed: int) -> MambaForCausalLM:
    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        time_step_rank=4,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = MambaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed + 1)

    def normal(shape, mean=0.0, std=0.3):
        return mean + std * torch.randn(shape, generator=g)

    with torch.no_grad():
        model.backbone.embeddings.weight.copy_(normal(model.backbone.embeddings.weight.shape, std=0.15 if tied else 1.0))
        for layer in model.backbone.layers:
            m = layer.mixer
            layer.norm.weight.copy_(normal(layer.norm.weight.shape, mean=1.0, std=0.2))
            m.in_proj.weight.copy_(normal(m.in_proj.weight.shape))
            m.conv1d.weight.copy_(normal(m.conv1d.weight.shape, std=0.5))
            m.conv1d.bias.copy_(normal(m.conv1d.bias.shape))
            m.x_proj.weight.copy_(normal(m.x_proj.weight.shape))
            m.dt_proj.weight.copy_(normal(m.dt_proj.weight.shape, std=0.1))
            # softplus^{-1}(delta) for delta uniform on [0.1, 1]
            delta = 0.1 + 0.9 * torch.rand(m.dt_proj.bias.shape, generator=g)
            m.dt_proj.bias.copy_(torch.log(torch.expm1(delta)))
            m.A_log.copy_(3.0 * torch.rand(m.A_log.shape, generator=g))
            m.D.copy_(normal(m.D.shape, mean=1.0))
            m.out_proj.weight.copy_(normal(m.out_proj.weight.shape))
        model.backbone.norm_f.weight.copy_(normal(model.backbone.norm_f.weight.shape, mean=1.0, std=0.2))
        if not tied:
            model.lm_head.weight.copy_(normal(model.lm_head.weight.shape, std=0.15))
    return model


def _rms_norm_keep_dtype(self, hidden_states):
    # MambaRMSNorm.forward without its float32 round trip (float64 reference only)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def reference_outputs(model: MambaForCausalLM, dtype: torch.dtype, prompts, decode_tokens, ragged):
    m = model.to(dtype)
    from transformers.models.mamba import modeling_mamba

    saved = torch.Tensor.float, modeling_mamba.MambaRMSNorm.forward
    if dtype == torch.float64:
        # A genuine float64 reference: transformers' Mamba calls .float() on A, D, B, the dt
        # bias, the scan input and the logits, and RMSNorm rounds through float32; inside this
        # function those round trips are identities.
        torch.Tensor.float = lambda self, *args, **kwargs: self
        modeling_mamba.MambaRMSNorm.forward = _rms_norm_keep_dtype
        for layer in m.backbone.layers:
            layer.residual_in_fp32 = False  # would round the float64 residual to float32
    try:
        return _reference_outputs(m, prompts, decode_tokens, ragged)
    finally:
        torch.Tensor.float, modeling_mamba.MambaRMSNorm.forward = saved


def _reference_outputs(m, prompts, decode_tokens, ragged):
    out = {}
    with torch.no_grad():
        res = m(torch.as_tensor(prompts), use_cache=True)
        out["prefill_logits"] = res.logits.to(torch.float64).numpy()
        cache = res.cache_params
        steps = []
        for t in range(decode_tokens.shape[1]):
            step = m(torch.as_tensor(decode_tokens[:, t : t + 1]), cache_params=cache, use_cache=True)
            cache = step.cache_params
            steps.append(step.logits[:, 0].to(torch.float64).numpy())
        out["decode_logits"] = np.stack(steps, axis=1)
        last = []
        for i, n in enumerate(ragged):
            r = m(torch.as_tensor(prompts[i : i + 1, :n]))
            last.append(r.logits[0, -1].to(torch.float64).numpy())
        out["ragged_last_logits"] = np.stack(last)
    return out


def write_tokenizer(path: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'-\n()"
    tokens = ["<pad>", "<eos>", "<unk>"] + list(chars)
    tokens += [f"<extra_{i}>" for i in range(VOCAB - len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.save(path)
    assert tok.decode(tok.encode("Hello, world").ids) == "Hello, world"


def main() -> int:
    rng = np.random.default_rng(20261123)
    prompts = rng.integers(3, VOCAB, size=(3, 12)).astype(np.int64)
    decode_tokens = rng.integers(3, VOCAB, size=(3, 6)).astype(np.int64)
    for name, tied, seed in (("tied", True, 7), ("untied", False, 11)):
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model = make_model(tied, seed).to(torch.float32)
        model.save_pretrained(d, safe_serialization=True)
        expected = {
            "prompts": torch.as_tensor(prompts),
            "decode_tokens": torch.as_tensor(decode_tokens),
            "ragged_k": torch.as_tensor(np.array(RAGGED_LENGTHS, dtype=np.int64)),
        }
        for tag, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            ref = reference_outputs(make_model(tied, seed).to(torch.float32), dtype, prompts, decode_tokens, RAGGED_LENGTHS)
            for key, value in ref.items():
                expected[f"{key}_{tag}"] = torch.as_tensor(value)
        # float32 vs float64 reference: the float32 rounding floor the tests work above
        diff = np.abs(expected["prefill_logits_f32"].numpy() - expected["prefill_logits_f64"].numpy()).max()
        save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(d, "expected.safetensors"))
        meta = {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "f32_vs_f64_prefill_max_abs": float(diff),
            "logit_scale_max_abs": float(np.abs(expected["prefill_logits_f64"].numpy()).max()),
        }
        with open(os.path.join(d, "fixture_meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(name, meta)
    write_tokenizer(os.path.join(OUT, "tied", "tokenizer.json"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print("fixture bytes", total)
    assert total < 2_000_000
    return 0


if __name__ == "__main__":
    sys.exit(main())
