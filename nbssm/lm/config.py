"""Configuration of a Mamba-1 language model, parsed from a checkpoint's ``config.json``.

Two dialects are understood:

- Hugging Face ``transformers`` (``model_type: "mamba"``): ``hidden_size``,
  ``num_hidden_layers``, ``state_size``, ``expand``, ``conv_kernel``, ``time_step_rank``, ...
- the original ``mamba_ssm`` package: ``d_model``, ``n_layer``, ``ssm_cfg``,
  ``pad_vocab_size_multiple``, ``tie_embeddings``, ...

Glossary: ``d_model`` the residual width, ``d_inner`` (E) the mixer's inner width,
``d_state`` (N) the SSM state per channel, ``d_conv`` (W) the convolution width,
``dt_rank`` (R) the rank of the Δ projection.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any


class UnsupportedConfigError(ValueError):
    """A checkpoint configuration that nbssm cannot run faithfully."""


@dataclass(frozen=True)
class MambaLMConfig:
    """Dimensions and options of a Mamba-1 language model.

    Attributes
    ----------
    d_model, n_layer, vocab_size, d_state, d_conv, d_inner, dt_rank : int
        Dimensions (``vocab_size`` is the number of rows of the embedding, padding included).
    conv_bias : bool
        Whether the depthwise convolution has a bias (zeros are used when it has none).
    norm_eps : float
        RMSNorm epsilon (``layer_norm_epsilon`` / ``norm_epsilon``).
    tie_embeddings : bool
        Whether the LM head is the embedding matrix.
    eos_token_id, bos_token_id, pad_token_id : int or None
        Special tokens, as the config states them.
    dialect : {"hf", "mamba_ssm", "nbssm"}
        Which config/naming dialect the checkpoint uses.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    d_inner: int = 0
    dt_rank: int = 0
    conv_bias: bool = True
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    dialect: str = "nbssm"

    def __post_init__(self) -> None:
        # fill the derived defaults (frozen dataclass: use object.__setattr__)
        if self.d_inner == 0:
            object.__setattr__(self, "d_inner", 2 * self.d_model)
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "d_inner", "dt_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UnsupportedConfigError(f"config: {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps >= 0 and math.isfinite(self.norm_eps)):
            raise UnsupportedConfigError(f"config: norm_eps must be a finite number >= 0, got {self.norm_eps!r}")

    def dims(self) -> dict:
        """The dimensions as a dict (used in state fingerprints)."""
        return {k: getattr(self, k) for k in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "d_inner", "dt_rank")}

    def to_dict(self) -> dict:
        return asdict(self)

    def tensor_shapes(self) -> dict:
        """Expected tensor shapes in the Hugging Face naming (``lm_head.weight`` included)."""
        D, E, N, W, R, V = self.d_model, self.d_inner, self.d_state, self.d_conv, self.dt_rank, self.vocab_size
        shapes = {"backbone.embeddings.weight": (V, D), "backbone.norm_f.weight": (D,), "lm_head.weight": (V, D)}
        for i in range(self.n_layer):
            p = f"backbone.layers.{i}."
            shapes[p + "norm.weight"] = (D,)
            shapes[p + "mixer.in_proj.weight"] = (2 * E, D)
            shapes[p + "mixer.conv1d.weight"] = (E, 1, W)
            if self.conv_bias:
                shapes[p + "mixer.conv1d.bias"] = (E,)
            shapes[p + "mixer.x_proj.weight"] = (R + 2 * N, E)
            shapes[p + "mixer.dt_proj.weight"] = (E, R)
            shapes[p + "mixer.dt_proj.bias"] = (E,)
            shapes[p + "mixer.A_log"] = (E, N)
            shapes[p + "mixer.D"] = (E,)
            shapes[p + "mixer.out_proj.weight"] = (D, E)
        return shapes


def _get_int(cfg: dict, key: str, default: Any = None, where: str = "config.json") -> int:
    value = cfg.get(key, default)
    if value is None:
        raise UnsupportedConfigError(f"{where}: missing required field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedConfigError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return value


def _special(cfg: dict, key: str) -> int | None:
    value = cfg.get(key)
    if isinstance(value, list):  # transformers allows a list of eos ids; keep the first
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_config(cfg: dict, where: str = "config.json") -> MambaLMConfig:
    """Parse a ``config.json`` dict (either dialect) into a :class:`MambaLMConfig`.

    Raises
    ------
    UnsupportedConfigError
        For Mamba-2, hybrid (attention or MLP) layers, projection biases, a non-SiLU activation,
        LayerNorm instead of RMSNorm, or a missing/ill-typed dimension. The message says which field.
    """
    if not isinstance(cfg, dict):
        raise UnsupportedConfigError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    if "d_model" in cfg:
        return _parse_mamba_ssm(cfg, where)
    model_type = cfg.get("model_type", "mamba")
    if model_type != "mamba":
        raise UnsupportedConfigError(
            f"{where}: model_type {model_type!r} is not supported; nbssm runs Mamba-1 checkpoints (model_type 'mamba')"
        )
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedConfigError(f"{where}: hidden_act {act!r} is not supported (only 'silu')")
    if cfg.get("use_bias", False):
        raise UnsupportedConfigError(
            f"{where}: use_bias=true (biases on in_proj/out_proj) is not supported; "
            "the spec correspondence (SelectiveMambaBlockSpec) has no projection biases"
        )
    d_model = _get_int(cfg, "hidden_size", where=where)
    expand = cfg.get("expand", 2)
    d_inner = cfg.get("intermediate_size")
    if d_inner is None:
        d_inner = int(expand * d_model)
    rank = cfg.get("time_step_rank", "auto")
    if rank == "auto":
        rank = math.ceil(d_model / 16)
    cfg2 = {"intermediate_size": d_inner, "time_step_rank": rank}
    return MambaLMConfig(
        d_model=d_model,
        n_layer=_get_int(cfg, "num_hidden_layers", where=where),
        vocab_size=_get_int(cfg, "vocab_size", where=where),
        d_state=_get_int(cfg, "state_size", 16, where),
        d_conv=_get_int(cfg, "conv_kernel", 4, where),
        d_inner=_get_int(cfg2, "intermediate_size", where=where),
        dt_rank=_get_int(cfg2, "time_step_rank", where=where),
        conv_bias=bool(cfg.get("use_conv_bias", True)),
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        eos_token_id=_special(cfg, "eos_token_id"),
        bos_token_id=_special(cfg, "bos_token_id"),
        pad_token_id=_special(cfg, "pad_token_id"),
        dialect="hf",
    )


def _parse_mamba_ssm(cfg: dict, where: str) -> MambaLMConfig:
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise UnsupportedConfigError(f"{where}: ssm_cfg must be an object, got {ssm!r}")
    layer = ssm.get("layer", "Mamba1")
    if layer != "Mamba1":
        raise UnsupportedConfigError(f"{where}: ssm_cfg.layer {layer!r} is not supported (only Mamba1)")
    if cfg.get("attn_layer_idx"):
        raise UnsupportedConfigError(f"{where}: hybrid attention layers (attn_layer_idx) are not supported")
    if cfg.get("d_intermediate", 0):
        raise UnsupportedConfigError(f"{where}: MLP blocks (d_intermediate > 0) are not supported")
    if not cfg.get("rms_norm", True):
        raise UnsupportedConfigError(f"{where}: rms_norm=false (LayerNorm) is not supported; only RMSNorm")
    if ssm.get("bias", False):
        raise UnsupportedConfigError(
            f"{where}: ssm_cfg.bias=true (biases on in_proj/out_proj) is not supported; "
            "the spec correspondence (SelectiveMambaBlockSpec) has no projection biases"
        )
    d_model = _get_int(cfg, "d_model", where=where)
    vocab = _get_int(cfg, "vocab_size", where=where)
    mult = cfg.get("pad_vocab_size_multiple", 1) or 1
    if vocab % mult:
        vocab += mult - vocab % mult
    expand = ssm.get("expand", 2)
    rank = ssm.get("dt_rank", "auto")
    if rank == "auto":
        rank = math.ceil(d_model / 16)
    cfg2 = {"d_inner": int(expand * d_model), "dt_rank": rank}
    return MambaLMConfig(
        d_model=d_model,
        n_layer=_get_int(cfg, "n_layer", where=where),
        vocab_size=vocab,
        d_state=_get_int(ssm, "d_state", 16, where + " ssm_cfg"),
        d_conv=_get_int(ssm, "d_conv", 4, where + " ssm_cfg"),
        d_inner=_get_int(cfg2, "d_inner", where=where),
        dt_rank=_get_int(cfg2, "dt_rank", where=where + " ssm_cfg"),
        conv_bias=bool(ssm.get("conv_bias", True)),
        norm_eps=float(cfg.get("norm_epsilon", 1e-5)),
        tie_embeddings=bool(cfg.get("tie_embeddings", True)),
        eos_token_id=_special(cfg, "eos_token_id"),
        bos_token_id=_special(cfg, "bos_token_id"),
        pad_token_id=_special(cfg, "pad_token_id"),
        dialect="mamba_ssm",
    )


def read_config(directory: str) -> MambaLMConfig:
    """Read and parse ``directory/config.json``."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no config.json (expected a Mamba checkpoint directory)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnsupportedConfigError(f"{path}: not valid JSON ({exc})") from None
    return parse_config(cfg, where=path)
