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
    """A checkpoint configuration that nbssm cannot run faithfully, or a ``config.json`` that is
    not valid (not JSON, too large, too deeply nested, a field of the wrong type or out of
    range). The message names the file and the field."""


#: Largest value accepted for any dimension (every dimension must also match the tensors).
MAX_DIM = 2**31 - 1
#: Largest ``config.json`` / ``model.safetensors.index.json`` read (real ones are a few KiB).
MAX_JSON_BYTES = 16 * 2**20


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
            if value > MAX_DIM:
                raise UnsupportedConfigError(f"config: {name} must be at most {MAX_DIM}, got {value!r}")
        norm_eps = self.norm_eps
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not (
                math.isfinite(norm_eps) and norm_eps >= 0):
            raise UnsupportedConfigError(f"config: norm_eps must be a finite number >= 0, got {norm_eps!r}")
        for name in ("conv_bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise UnsupportedConfigError(f"config: {name}: expected true or false, got {getattr(self, name)!r}")
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UnsupportedConfigError(f"config: {name}: expected an integer >= 0 or None, got {value!r}")

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


# ----------------------------------------------------------------------------- strict JSON
def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json_file(path: str, error: type = ValueError, limit: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """Parse a small JSON file strictly, raising ``error`` (naming ``path``) on any problem.

    Refused: a file that is not a regular file or is larger than ``limit`` bytes (checked
    before reading), invalid UTF-8, invalid JSON, ``NaN``/``Infinity`` constants, duplicate
    keys, nesting too deep for the parser, integers too long to convert.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: expected a regular file, got another kind of file")
    if st.st_size > limit:
        raise error(f"{path}: expected a {what} of at most {limit} bytes, got {st.st_size} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise error(f"{path}: expected a {what} of at most {limit} bytes, got more")
    return parse_json_bytes(raw, path, error, what)


def parse_json_bytes(raw: bytes, where: str, error: type = ValueError, what: str = "JSON") -> Any:
    """Strict JSON parsing of ``raw`` (see :func:`load_json_file`); errors name ``where``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: {what} is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where}: {what} is not valid JSON for nbssm (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, constants, over-long integers
        raise error(f"{where}: {what} is not valid JSON ({exc})") from None


# ----------------------------------------------------------------------------- typed fields
_MISSING = object()


def _field(cfg: dict, key: str, where: str, default: Any = _MISSING) -> Any:
    value = cfg.get(key, None)
    if value is None:
        if default is _MISSING:
            raise UnsupportedConfigError(f"{where}: missing required field {key!r}")
        return default
    return value


def _int(cfg: dict, key: str, where: str, default: Any = _MISSING, low: int = 1) -> int:
    value = _field(cfg, key, where, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected an integer, got {value!r}")
    if not low <= value <= MAX_DIM:
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected an integer in [{low}, {MAX_DIM}], got {value!r}")
    return value


def _bool(cfg: dict, key: str, where: str, default: bool) -> bool:
    value = _field(cfg, key, where, default)
    if not isinstance(value, bool):
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected true or false (a JSON boolean), got {value!r}")
    return value


def _str(cfg: dict, key: str, where: str, default: str) -> str:
    value = _field(cfg, key, where, default)
    if not isinstance(value, str):
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected a string, got {value!r}")
    return value


def _number(cfg: dict, key: str, where: str, default: float) -> float:
    value = _field(cfg, key, where, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _rank(cfg: dict, key: str, where: str, d_model: int) -> int:
    value = cfg.get(key, "auto")
    if value == "auto" or value is None:
        return math.ceil(d_model / 16)
    return _int(cfg, key, where)


def _inner(cfg: dict, key: str, where: str, d_model: int) -> int:
    expand = _field(cfg, key, where, 2)
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not (0 < expand <= MAX_DIM):
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected a positive number, got {expand!r}")
    d_inner = int(expand * d_model)
    if not 1 <= d_inner <= MAX_DIM:
        raise UnsupportedConfigError(
            f"{where}: field {key!r}: {key} x d_model = {d_inner} is outside [1, {MAX_DIM}]")
    return d_inner


def _special(cfg: dict, key: str, where: str) -> int | None:
    value = cfg.get(key)
    if isinstance(value, list):  # transformers allows a list of eos ids; keep the first
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise UnsupportedConfigError(f"{where}: field {key!r}: expected an integer or a list of integers, got {value!r}")
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DIM:
        raise UnsupportedConfigError(f"{where}: field {key!r}: expected an integer >= 0 or null, got {value!r}")
    return value


def parse_config(cfg: dict, where: str = "config.json") -> MambaLMConfig:
    """Parse a ``config.json`` dict (either dialect) into a :class:`MambaLMConfig`.

    Every field nbssm reads is type-checked strictly: booleans must be JSON booleans (the
    string ``"false"`` is refused, not read as true), integers must be JSON integers (not
    ``1e8``, not booleans) in ``[1, MAX_DIM]``, strings must be strings. A ``null`` value counts
    as absent. Fields nbssm does not read are ignored.

    Raises
    ------
    UnsupportedConfigError
        For Mamba-2, hybrid (attention or MLP) layers, projection biases, a non-SiLU activation,
        LayerNorm instead of RMSNorm, or a missing/ill-typed/out-of-range field. The message
        names ``where`` and the field.
    """
    if not isinstance(cfg, dict):
        raise UnsupportedConfigError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    if "d_model" in cfg:
        return _parse_mamba_ssm(cfg, where)
    model_type = _str(cfg, "model_type", where, "mamba")
    if model_type != "mamba":
        raise UnsupportedConfigError(
            f"{where}: model_type {model_type!r} is not supported; nbssm runs Mamba-1 checkpoints (model_type 'mamba')"
        )
    act = _str(cfg, "hidden_act", where, "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedConfigError(f"{where}: hidden_act {act!r} is not supported (only 'silu')")
    if _bool(cfg, "use_bias", where, False):
        raise UnsupportedConfigError(
            f"{where}: use_bias=true (biases on in_proj/out_proj) is not supported; "
            "the spec correspondence (SelectiveMambaBlockSpec) has no projection biases"
        )
    d_model = _int(cfg, "hidden_size", where)
    if cfg.get("intermediate_size") is not None:
        d_inner = _int(cfg, "intermediate_size", where)
    else:
        d_inner = _inner(cfg, "expand", where, d_model)
    return MambaLMConfig(
        d_model=d_model,
        n_layer=_int(cfg, "num_hidden_layers", where),
        vocab_size=_int(cfg, "vocab_size", where),
        d_state=_int(cfg, "state_size", where, 16, low=0),
        d_conv=_int(cfg, "conv_kernel", where, 4, low=0),
        d_inner=d_inner,
        dt_rank=_rank(cfg, "time_step_rank", where, d_model),
        conv_bias=_bool(cfg, "use_conv_bias", where, True),
        norm_eps=_number(cfg, "layer_norm_epsilon", where, 1e-5),
        tie_embeddings=_bool(cfg, "tie_word_embeddings", where, True),
        eos_token_id=_special(cfg, "eos_token_id", where),
        bos_token_id=_special(cfg, "bos_token_id", where),
        pad_token_id=_special(cfg, "pad_token_id", where),
        dialect="hf",
    )


def _parse_mamba_ssm(cfg: dict, where: str) -> MambaLMConfig:
    ssm = cfg.get("ssm_cfg")
    if ssm is None:
        ssm = {}
    if not isinstance(ssm, dict):
        raise UnsupportedConfigError(f"{where}: field 'ssm_cfg': expected a JSON object, got {ssm!r}")
    swhere = where + " ssm_cfg"
    layer = _str(ssm, "layer", swhere, "Mamba1")
    if layer != "Mamba1":
        raise UnsupportedConfigError(f"{where}: ssm_cfg.layer {layer!r} is not supported (only Mamba1)")
    attn = cfg.get("attn_layer_idx")
    if attn is not None and not isinstance(attn, list):
        raise UnsupportedConfigError(f"{where}: field 'attn_layer_idx': expected a list, got {attn!r}")
    if attn:
        raise UnsupportedConfigError(f"{where}: hybrid attention layers (attn_layer_idx) are not supported")
    if _int(cfg, "d_intermediate", where, 0, low=0):
        raise UnsupportedConfigError(f"{where}: MLP blocks (d_intermediate > 0) are not supported")
    if not _bool(cfg, "rms_norm", where, True):
        raise UnsupportedConfigError(f"{where}: rms_norm=false (LayerNorm) is not supported; only RMSNorm")
    if _bool(ssm, "bias", swhere, False):
        raise UnsupportedConfigError(
            f"{where}: ssm_cfg.bias=true (biases on in_proj/out_proj) is not supported; "
            "the spec correspondence (SelectiveMambaBlockSpec) has no projection biases"
        )
    d_model = _int(cfg, "d_model", where)
    vocab = _int(cfg, "vocab_size", where)
    mult = _int(cfg, "pad_vocab_size_multiple", where, 1, low=0) or 1
    if vocab % mult:
        vocab += mult - vocab % mult
    if vocab > MAX_DIM:
        raise UnsupportedConfigError(f"{where}: padded vocab_size {vocab} exceeds {MAX_DIM}")
    return MambaLMConfig(
        d_model=d_model,
        n_layer=_int(cfg, "n_layer", where),
        vocab_size=vocab,
        d_state=_int(ssm, "d_state", swhere, 16, low=0),
        d_conv=_int(ssm, "d_conv", swhere, 4, low=0),
        d_inner=_inner(ssm, "expand", swhere, d_model),
        dt_rank=_rank(ssm, "dt_rank", swhere, d_model),
        conv_bias=_bool(ssm, "conv_bias", swhere, True),
        norm_eps=_number(cfg, "norm_epsilon", where, 1e-5),
        tie_embeddings=_bool(cfg, "tie_embeddings", where, True),
        eos_token_id=_special(cfg, "eos_token_id", where),
        bos_token_id=_special(cfg, "bos_token_id", where),
        pad_token_id=_special(cfg, "pad_token_id", where),
        dialect="mamba_ssm",
    )


def read_config(directory: str) -> MambaLMConfig:
    """Read and parse ``directory/config.json`` (strictly; see :func:`parse_config`).

    Raises
    ------
    FileNotFoundError
        No ``config.json`` in ``directory``.
    UnsupportedConfigError
        Invalid JSON (or larger than ``MAX_JSON_BYTES``, nested too deeply), or a field nbssm
        refuses; the message names the file.
    """
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no config.json (expected a Mamba checkpoint directory)")
    cfg = load_json_file(path, UnsupportedConfigError, what="config.json")
    return parse_config(cfg, where=path)
