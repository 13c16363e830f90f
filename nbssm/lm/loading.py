"""Reading Mamba-1 checkpoints from a local directory, without PyTorch and without unpickling.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or sharded
safetensors files listed in ``model.safetensors.index.json``. Tensor names may follow the
Hugging Face naming (``backbone.embeddings.weight``, ``backbone.layers.N.mixer.*``,
``backbone.norm_f.weight``, ``lm_head.weight``) or the original ``mamba_ssm`` naming
(``backbone.embedding.weight``, same otherwise). Tensors are read with the ``safetensors``
numpy API; float16 and bfloat16 tensors are converted to the model dtype on load
(bfloat16 needs ``ml_dtypes``, in the ``lm`` extra).

PyTorch pickles (``pytorch_model.bin``, ``*.pt``, ``*.pth``) are refused: unpickling runs
arbitrary code. The error says how to convert them.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import numpy as np

from .config import MambaLMConfig, read_config


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded (the message says why)."""


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "consolidated.pt")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_ALL_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}

CONVERT_HINT = (
    "convert it once, in an environment with PyTorch, e.g.\n"
    "    import torch; from safetensors.torch import save_file\n"
    "    sd = torch.load('pytorch_model.bin', map_location='cpu', weights_only=True)\n"
    "    save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\n"
    "or with transformers: MambaForCausalLM.from_pretrained(d).save_pretrained(d, safe_serialization=True)"
)


def read_safetensors_header(path: str) -> dict:
    """Read and validate a safetensors header, checking that the file is complete.

    Parameters
    ----------
    path : str
        A ``.safetensors`` file.

    Returns
    -------
    dict
        tensor name -> ``{"dtype": str, "shape": list, "data_offsets": [begin, end]}``
        (the ``__metadata__`` entry removed).

    Raises
    ------
    CheckpointError
        If the file is shorter than its header says (truncated), the header is not valid JSON,
        or an entry is malformed.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, not even the 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000 or 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (header length {n} bytes, file has {size} bytes)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    need = 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}: {entry!r}") from None
        width = _ALL_DTYPES.get(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        if width is None or not (0 <= begin <= end) or end - begin != count * width:
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}: {entry!r}")
        need = max(need, end)
    if need > data_len:
        raise CheckpointError(
            f"{path}: truncated file: its header needs {need} bytes of tensor data, the file holds {data_len} "
            f"({8 + n + need} bytes expected, {size} found); download or copy it again"
        )
    return header


def _refuse_pickles(directory: str) -> None:
    names = sorted(os.listdir(directory))
    pickles = [n for n in names if n in _PICKLE_NAMES or n.endswith(_PICKLE_SUFFIXES)]
    where = f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}"
    if pickles:
        raise CheckpointError(
            f"{where}; found PyTorch pickle file(s) {pickles}, which nbssm never loads: unpickling can run "
            f"arbitrary code, and reading them needs PyTorch. To use this checkpoint, {CONVERT_HINT}"
        )
    raise CheckpointError(f"{where} (files present: {names})")


def checkpoint_files(directory: str) -> list[tuple[str, list[str] | None]]:
    """The safetensors files of a checkpoint directory and, for shards, the names each must hold.

    Returns
    -------
    list of (path, names or None)
        One entry for a single file (names ``None``: every tensor of the file), or one per shard
        with the tensor names the index assigns to it.
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory (expected a Mamba checkpoint directory)")
    single = os.path.join(directory, SINGLE_FILE)
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(single):
        return [(single, None)]
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{index}: not a safetensors index (expected a JSON object with a 'weight_map')") from None
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or os.path.basename(shard) != shard:
                raise CheckpointError(f"{index}: tensor {name!r} maps to an invalid shard file name {shard!r}")
            shards.setdefault(shard, []).append(name)
        out = []
        for shard, names in sorted(shards.items()):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise CheckpointError(f"{index}: shard {shard!r} (holding {len(names)} tensors, e.g. {names[0]!r}) is missing")
            out.append((path, names))
        return out
    _refuse_pickles(directory)
    raise AssertionError("unreachable")


def _to_dtype(array: np.ndarray, dtype: np.dtype, name: str, path: str) -> np.ndarray:
    kind = str(array.dtype)
    if kind == "bfloat16":
        return array.astype(np.float32).astype(dtype, copy=False)
    if array.dtype in (np.float16, np.float32, np.float64):
        return array.astype(dtype, copy=False)
    raise CheckpointError(f"{path}: tensor {name!r} has dtype {kind}; expected float32, float16, bfloat16 or float64")


def read_tensors(directory: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """Read every tensor of a checkpoint directory, converted to ``dtype``.

    Returns
    -------
    dict
        name (as stored) -> C-contiguous array of ``dtype``.
    """
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - the lm extra
        raise ImportError("reading checkpoints needs the 'safetensors' package: pip install 'nbssm[lm]'") from None
    dtype = np.dtype(dtype)
    tensors: dict[str, np.ndarray] = {}
    for path, names in checkpoint_files(directory):
        header = read_safetensors_header(path)
        for name, entry in header.items():
            if entry["dtype"] not in _FLOAT_DTYPES:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {entry['dtype']}; expected F32, F16, BF16 or F64"
                )
        if names is not None:
            absent = [n for n in names if n not in header]
            if absent:
                raise CheckpointError(f"{path}: the index lists tensors this shard does not hold: {absent[:5]}")
            extra = [n for n in header if n not in set(names)]
            if extra:
                raise CheckpointError(f"{path}: shard holds tensors the index does not list: {extra[:5]}")
        if any(entry["dtype"] == "BF16" for entry in header.values()):
            try:
                import ml_dtypes  # noqa: F401  (registers numpy's bfloat16)
            except ImportError:
                raise ImportError(f"{path} holds bfloat16 tensors; converting them needs 'ml_dtypes': pip install 'nbssm[lm]'") from None
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    if name in tensors:
                        raise CheckpointError(f"{path}: tensor {name!r} appears in more than one file")
                    array = f.get_tensor(name)
                    tensors[name] = np.ascontiguousarray(_to_dtype(array, dtype, name, path))
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error type
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None
    return tensors


def normalize_names(tensors: dict[str, np.ndarray], config: MambaLMConfig) -> dict[str, np.ndarray]:
    """Map the ``mamba_ssm`` naming onto the Hugging Face one (``backbone.embedding.`` ->
    ``backbone.embeddings.``); other names are kept."""
    out = {}
    for name, value in tensors.items():
        if name.startswith("backbone.embedding."):
            new = "backbone.embeddings." + name[len("backbone.embedding."):]
            if new in tensors:
                raise CheckpointError(f"checkpoint holds both {name!r} and {new!r}")
            name = new
        out[name] = value
    return out


def check_tensors(tensors: dict[str, np.ndarray], config: MambaLMConfig, directory: str = "checkpoint") -> dict[str, np.ndarray]:
    """Check names and shapes against the config; return the tensors the model uses.

    ``lm_head.weight`` is optional (and ignored, like transformers does) when the head is tied;
    its shape is still checked. ``conv1d.bias`` is required exactly when the config says
    ``conv_bias``.

    Raises
    ------
    CheckpointError
        Listing missing tensors, unexpected tensors, and tensors of the wrong shape (name,
        expected shape, found shape).
    """
    expected = config.tensor_shapes()
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = [n for n in expected if n not in tensors and n not in optional]
    unexpected = [n for n in tensors if n not in expected]
    wrong = [f"{n}: expected {expected[n]}, found {tuple(tensors[n].shape)}"
             for n in expected if n in tensors and tuple(tensors[n].shape) != expected[n]]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if unexpected:
        hint = ""
        if any(".conv1d.bias" in n for n in unexpected) and not config.conv_bias:
            hint = " (the config says use_conv_bias=false but the file has conv biases)"
        elif any(n.startswith(f"backbone.layers.{config.n_layer}.") for n in unexpected):
            hint = f" (more layers than the config's {config.n_layer})"
        problems.append(f"unexpected tensors ({len(unexpected)}): {_short(unexpected)}{hint}")
    if wrong:
        problems.append(f"tensors of the wrong shape ({len(wrong)}): {_short(wrong)}")
    if problems:
        raise CheckpointError(f"{directory}: checkpoint does not match its config.json: " + "; ".join(problems))
    used = {n: v for n, v in tensors.items() if not (n == "lm_head.weight" and config.tie_embeddings)}
    for name, value in used.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{directory}: tensor {name!r} holds NaN or Inf values")
    return used


def _short(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_checkpoint(directory: str, dtype=np.float32) -> tuple[MambaLMConfig, dict[str, np.ndarray]]:
    """Read ``config.json`` and the tensors of a checkpoint directory.

    Parameters
    ----------
    directory : str
        Checkpoint directory.
    dtype : numpy dtype
        float32 (default) or float64: the model's compute dtype; stored tensors are converted.

    Returns
    -------
    (MambaLMConfig, dict)
        The config and the checked tensors in the Hugging Face naming.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory (expected a Mamba checkpoint directory)")
    config = read_config(directory)
    checkpoint_files(directory)  # refuse pickles before anything else is read
    tensors = normalize_names(read_tensors(directory, dtype), config)
    return config, check_tensors(tensors, config, directory)
