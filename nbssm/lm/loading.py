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

import math
import os
import re
import stat
import struct
import threading
import weakref
from collections.abc import Iterable
from contextlib import ExitStack

import numpy as np

from .config import MambaLMConfig, load_json_file, parse_json_bytes, read_config


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded (the message names the file and
    says why): a pickle, a missing/extra shard, a truncated or lying safetensors header, tensors
    that do not match ``config.json``, non-finite weights, a tied head that differs from the
    embedding."""


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Largest safetensors header accepted (the ``safetensors`` package's own limit).
MAX_HEADER_BYTES = 100_000_000
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "consolidated.pt")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_ALL_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_MAX_NDIM = 16
#: path -> the ``__metadata__`` of the last header read from it
_METADATA: dict[str, dict] = {}
#: header metadata marking a checkpoint written by ``MambaLM.save_quantized`` in int8
Q8_MARKER = ("nbssm_weights", "int8-q8_0")
_SCALE_SUFFIX = ".weight.scale"

CONVERT_HINT = (
    "convert it once, in an environment with PyTorch, e.g.\n"
    "    import torch; from safetensors.torch import save_file\n"
    "    sd = torch.load('pytorch_model.bin', map_location='cpu', weights_only=True)\n"
    "    save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\n"
    "or with transformers: MambaForCausalLM.from_pretrained(d).save_pretrained(d, safe_serialization=True)"
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_header(path: str) -> tuple[dict, int]:
    """(validated header, byte offset of the data buffer); see :func:`read_safetensors_header`.
    The ``__metadata__`` object, if any, is kept in :data:`_METADATA` under ``path``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: expected a regular safetensors file, got another kind of file")
    size = st.st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: truncated safetensors file ({size} bytes, not even the 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file (header length {n} bytes, file has {size} bytes)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes, read {len(raw)})")
    header = parse_json_bytes(raw, path, CheckpointError, "safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header: expected a JSON object, got {type(header).__name__}")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{path}: safetensors header: __metadata__ must be a JSON object, got {meta!r:.80}")
    _METADATA[path] = meta or {}
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        bad = f"{path}: malformed safetensors header entry for tensor {name!r}: {entry!r:.200}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(bad + " (expected an object with dtype, shape, data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ALL_DTYPES:
            raise CheckpointError(bad + f" (unknown dtype {dtype!r:.40})")
        if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
                or not all(_is_int(d) and d >= 0 for d in shape)):
            raise CheckpointError(bad + f" (shape: expected a list of at most {_MAX_NDIM} integers >= 0)")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(bad + " (data_offsets: expected [begin, end] with 0 <= begin <= end)")
        begin, end = offsets
        nbytes = math.prod(shape) * _ALL_DTYPES[dtype]
        if end - begin != nbytes:
            raise CheckpointError(
                bad + f" (shape {shape} of {dtype} needs {nbytes} bytes, data_offsets span {end - begin})")
        spans.append((begin, end, name))
    need = max((end for _, end, _ in spans), default=0)
    if need > data_len:
        raise CheckpointError(
            f"{path}: truncated file: its header needs {need} bytes of tensor data, the file holds {data_len} "
            f"({8 + n + need} bytes expected, {size} found); download or copy it again"
        )
    spans.sort()
    pos, prev = 0, None
    for begin, end, name in spans:
        if begin < pos:
            raise CheckpointError(f"{path}: safetensors header: tensor {name!r} overlaps tensor {prev!r} "
                                  f"(bytes {begin}..{end}, the previous one ends at {pos})")
        if begin > pos:
            raise CheckpointError(f"{path}: safetensors header: {begin - pos} bytes before tensor {name!r} "
                                  f"belong to no tensor (offsets must be contiguous)")
        pos, prev = end, name
    if pos != data_len:
        raise CheckpointError(f"{path}: safetensors header describes {pos} bytes of tensor data, "
                              f"the file holds {data_len} ({data_len - pos} bytes belong to no tensor)")
    return header, 8 + n


def read_safetensors_header(path: str) -> dict:
    """Read and validate a safetensors header without reading any tensor data.

    Checked, before anything is allocated beyond the header itself (whose length is bounded
    by the file size and ``MAX_HEADER_BYTES``): the header is strict JSON (no duplicate
    names); every entry has a known dtype, a shape of non-negative integers whose byte count
    equals its ``data_offsets`` span; the spans are contiguous, do not overlap and cover the
    data exactly as the file size says (a truncated file or trailing bytes are refused).

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
        Naming the file and the problem.
    """
    return _read_header(path)[0]


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

    ``model.safetensors`` wins when both it and an index exist. Shard names in the index must
    be plain file names in the directory (no path components: ``../x`` is refused). Files in
    the directory that the index does not name are ignored.

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
        doc = load_json_file(index, CheckpointError, what="safetensors index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{index}: not a safetensors index (expected a JSON object with a non-empty 'weight_map' object)")
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            if (not isinstance(shard, str) or not shard or os.path.basename(shard) != shard
                    or shard in (".", "..") or "\\" in shard or "\0" in shard):
                raise CheckpointError(f"{index}: tensor {name!r} maps to an invalid shard file name {shard!r:.100}")
            if shard.endswith(_PICKLE_SUFFIXES):
                raise CheckpointError(f"{index}: shard {shard!r} is a PyTorch pickle, which nbssm never loads; "
                                      f"{CONVERT_HINT}")
            shards.setdefault(shard, []).append(name)
        out: list[tuple[str, list[str] | None]] = []
        for shard, names in sorted(shards.items()):
            path = os.path.join(directory, shard)
            if not os.path.isfile(path):
                raise CheckpointError(f"{index}: shard {shard!r} (holding {len(names)} tensors, e.g. {names[0]!r}) is missing")
            out.append((path, names))
        return out
    _refuse_pickles(directory)
    raise AssertionError("unreachable")


def read_headers(directory: str) -> list[tuple[str, dict, int]]:
    """Validated headers of every safetensors file of ``directory`` (no tensor data read).

    Returns
    -------
    list of (path, header, data_start)
        Checked against the index (a shard holds exactly the names the index gives it) and
        across files (no tensor in two files).
    """
    out = []
    seen: dict[str, str] = {}
    for path, names in checkpoint_files(directory):
        header, start = _read_header(path)
        if names is not None:
            listed = set(names)
            absent = [n for n in names if n not in header]
            if absent:
                raise CheckpointError(f"{path}: the index lists tensors this shard does not hold: {absent[:5]}")
            extra = [n for n in header if n not in listed]
            if extra:
                raise CheckpointError(f"{path}: shard holds tensors the index does not list: {extra[:5]}")
        for name in header:
            if name in seen:
                raise CheckpointError(f"{path}: tensor {name!r} appears in more than one file (also in {seen[name]})")
            seen[name] = path
        out.append((path, header, start))
    return out


def _result_dtype(path: str, name: str, kind: str, dtype: np.dtype, keep: str | None) -> np.dtype:
    """The dtype :func:`_read_tensor` returns for a stored tensor (``kind`` checked by the caller)."""
    if kind == "I8" and _quantized(path):
        return np.dtype(np.int8)
    if name.endswith(_SCALE_SUFFIX):
        return np.dtype(np.float32)
    if kind == "BF16" and keep == "bf16":
        return np.dtype(np.uint16)
    if kind == "F16" and keep == "fp16":
        return np.dtype(np.int16)
    return dtype


def _read_tensor(f, path: str, start: int, name: str, entry: dict, dtype: np.dtype, keep: str | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Read one tensor (exactly its declared bytes); into ``out`` (a C-contiguous array of the
    result's shape and dtype, see :func:`_result_dtype`) when given, else a new array."""
    begin, end = entry["data_offsets"]
    f.seek(start + begin)
    kind = entry["dtype"]
    shape = entry["shape"]
    if kind not in _FLOAT_DTYPES and not (kind == "I8" and _quantized(path)):
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {kind}; expected F32, F16, BF16 or F64")
    want = _result_dtype(path, name, kind, dtype, keep)
    stored = np.dtype(np.int8) if kind == "I8" else np.dtype(_NUMPY_DTYPES[kind])
    if out is not None and stored.itemsize == want.itemsize and np.little_endian:
        # the result is the stored bytes (f32 -> f32, f64 -> f64, int8, bf16/f16 kept as bit
        # patterns; safetensors is little-endian): read them straight into ``out``
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]  # ndarray exports a buffer
        if got != end - begin:
            raise CheckpointError(f"{path}: truncated while reading tensor {name!r} (the file changed while loading?)")
        return out
    raw = f.read(end - begin)
    if len(raw) != end - begin:
        raise CheckpointError(f"{path}: truncated while reading tensor {name!r} (the file changed while loading?)")
    array = np.frombuffer(raw, dtype=stored)
    if kind == "I8":
        result = array.reshape(shape).copy()
    elif name.endswith(_SCALE_SUFFIX):
        result = array.astype(np.float32).reshape(shape)
    elif kind == "BF16" and keep == "bf16":  # kept as bit patterns (uint16)
        result = array.reshape(shape).copy()
    elif kind == "F16" and keep == "fp16":  # kept as bit patterns (int16)
        result = array.view(np.int16).reshape(shape).copy()
    else:
        if kind == "BF16":  # bfloat16 is the upper half of a float32: exact conversion
            array = (array.astype(np.uint32) << 16).view(np.float32)
        result = np.ascontiguousarray(array.reshape(shape).astype(dtype, copy=False))
    if out is not None:
        out[...] = result
        return out
    return result


#: the per-layer buffers this module allocated (id -> buffer, weakly held): ``MambaLM`` adopts
#: one as its stacked weights only when it is listed here, never a caller's own array
LAYER_BUFFERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

_LAYER_NAME = re.compile(r"^(.*layers\.)(\d+)(\..+)$")


def _layer_buffers(headers, dtype: np.dtype, wanted: set | None, keep: str | None) -> dict[str, np.ndarray]:
    """name -> a view ``buffer[i]`` of one (layers, *shape) buffer per per-layer tensor family.

    A family is every ``<prefix>layers.<i><suffix>`` for i = 0..n-1 with one shape and result
    dtype; reading its layers into consecutive rows of one buffer lets ``MambaLM`` use the
    buffer as its stacked weights without a second copy (``np.stack`` of 24 layers is a full
    extra pass over the weights at mamba-130m). Anything else is read on its own."""
    families: dict[tuple, dict[int, tuple]] = {}
    for path, header, _ in headers:
        for name, entry in header.items():
            m = _LAYER_NAME.match(name)
            if m is None or (wanted is not None and name not in wanted):
                continue
            kind = entry["dtype"]
            if kind not in _FLOAT_DTYPES and not (kind == "I8" and _quantized(path)):
                continue
            key = (m.group(1), m.group(3))
            want = _result_dtype(path, name, kind, dtype, keep)
            families.setdefault(key, {})[int(m.group(2))] = (name, tuple(entry["shape"]), want)
    views: dict[str, np.ndarray] = {}
    for members in families.values():
        n = len(members)
        first = members.get(0)
        if n < 2 or first is None or sorted(members) != list(range(n)) \
                or any(v[1:] != first[1:] for v in members.values()):
            continue
        buffer = np.empty((n,) + first[1], first[2])
        LAYER_BUFFERS[id(buffer)] = buffer
        for i, (name, _, _) in members.items():
            views[name] = buffer[i]
    return views


def _quantized(path: str) -> bool:
    """Whether the file carries the int8 marker of ``MambaLM.save_quantized``."""
    return _METADATA.get(path, {}).get(Q8_MARKER[0]) == Q8_MARKER[1]


def read_tensors(directory: str, dtype=np.float32, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the tensors of a checkpoint directory, converted to ``dtype``.

    Every header is validated first (see :func:`read_safetensors_header`); then only the
    tensors asked for are read, each exactly its declared byte count. float16 and bfloat16
    are converted exactly; integer and other dtypes are refused.

    Parameters
    ----------
    directory : str
    dtype : numpy dtype
    names : iterable of str, optional
        Stored names to read (default: all).

    Returns
    -------
    dict
        name (as stored) -> C-contiguous array of ``dtype``.
    """
    return _read_data(read_headers(directory), np.dtype(dtype), None if names is None else set(names))


#: threads reading a checkpoint of at least :data:`_PARALLEL_READ_BYTES` (at most the CPUs this
#: process may use)
_READ_THREADS = 2
_PARALLEL_READ_BYTES = 64 << 20


def _read_data(headers, dtype: np.dtype, wanted: set | None, keep: str | None = None) -> dict[str, np.ndarray]:
    for path, header, _start in headers:
        for name, entry in header.items():
            if entry["dtype"] == "I8" and _quantized(path):
                continue
            if entry["dtype"] not in _FLOAT_DTYPES and (wanted is None or name in wanted):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {entry['dtype']}; expected F32, F16, BF16 or F64"
                )
    rows = _layer_buffers(headers, dtype, wanted, keep)
    work = []
    for path, header, start in headers:
        for name in header:
            if wanted is None or name in wanted:
                begin, end = header[name]["data_offsets"]
                work.append((path, start, name, header[name], end - begin))
    total = sum(w[4] for w in work)
    parts = _READ_THREADS if total >= _PARALLEL_READ_BYTES else 1
    if parts > 1:
        from .._config import affinity

        parts = min(parts, affinity())
    # the tensors in ``parts`` groups of about equal bytes, each read by its own thread with its
    # own file handles: the copies out of the page cache and the first touch of the fresh
    # memory they go to (most of a warm load) run on every core, without the Python lock
    groups: list[list] = [[] for _ in range(parts)]
    sizes = [0] * parts
    for item in sorted(work, key=lambda w: -w[4]):
        k = sizes.index(min(sizes))
        groups[k].append(item)
        sizes[k] += item[4]

    def read_group(group) -> dict[str, np.ndarray]:
        got: dict[str, np.ndarray] = {}
        with ExitStack() as files:
            handles: dict = {}
            for path, start, name, entry, _ in group:
                try:
                    if path not in handles:
                        handles[path] = files.enter_context(open(path, "rb"))
                    got[name] = _read_tensor(handles[path], path, start, name, entry, dtype, keep, rows.get(name))
                except OSError as exc:
                    raise CheckpointError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from None
        return got

    if parts == 1:
        read = read_group(groups[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        read = {}
        with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="nbssm-read") as pool:
            for fut in [pool.submit(read_group, g) for g in groups]:
                read.update(fut.result())
    return {w[2]: read[w[2]] for w in work}  # the files' order, whichever thread read a tensor


def _normal_name(name: str) -> str:
    if name.startswith("backbone.embedding."):
        return "backbone.embeddings." + name[len("backbone.embedding."):]
    return name


def normalize_names(tensors: dict, config: MambaLMConfig | None = None) -> dict:
    """Map the ``mamba_ssm`` naming onto the Hugging Face one (``backbone.embedding.`` ->
    ``backbone.embeddings.``); other names are kept. Works on any name-keyed dict."""
    out = {}
    for name, value in tensors.items():
        new = _normal_name(name)
        if new != name and new in tensors:
            raise CheckpointError(f"checkpoint holds both {name!r} and {new!r}")
        out[new] = value
    return out


_LAYER = re.compile(r"backbone\.layers\.(\d+)\.")


def check_shapes(shapes: dict, config: MambaLMConfig, directory: str = "checkpoint") -> None:
    """Check tensor names and shapes (name -> shape tuple) against the config, without data.

    The number of layers is compared first, so that a config declaring more layers than the
    checkpoint holds fails at once (no per-layer table is built for it).

    Raises
    ------
    CheckpointError
        Listing missing tensors, unexpected tensors, and tensors of the wrong shape (name,
        expected shape, found shape).
    """
    layers = set()
    for name in shapes:
        m = _LAYER.match(name)
        if m and len(m.group(1)) <= 10:
            layers.add(int(m.group(1)))
    if config.n_layer > len(layers):
        raise CheckpointError(
            f"{directory}: checkpoint does not match its config.json: the config declares n_layer="
            f"{config.n_layer} (num_hidden_layers / n_layer) but the tensors hold {len(layers)} layer(s)")
    expected = config.tensor_shapes()
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = [n for n in expected if n not in shapes and n not in optional]
    unexpected = [n for n in shapes if n not in expected]
    wrong = [f"{n}: expected {expected[n]}, found {tuple(shapes[n])}"
             for n in expected if n in shapes and tuple(shapes[n]) != expected[n]]
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


def _tie_key(config: MambaLMConfig) -> str:
    return "tie_embeddings" if config.dialect == "mamba_ssm" else "tie_word_embeddings"


def check_tensors(tensors: dict[str, np.ndarray], config: MambaLMConfig, directory: str = "checkpoint") -> dict[str, np.ndarray]:
    """Check names, shapes and values against the config; return the tensors the model uses.

    ``lm_head.weight`` is optional when the head is tied. A tied checkpoint that stores an
    ``lm_head.weight`` is accepted only when that head equals the embedding exactly (as
    ``mamba_ssm`` saves tied models); a different stored head is refused, since the config
    says it is not used (set ``tie_word_embeddings`` / ``tie_embeddings`` to false to use it).
    ``conv1d.bias`` is required exactly when the config says ``conv_bias``. Every used tensor
    must be finite.

    Raises
    ------
    CheckpointError
        Listing missing tensors, unexpected tensors, and tensors of the wrong shape (name,
        expected shape, found shape); naming a non-finite tensor or a differing tied head.
    """
    check_shapes({n: tuple(np.shape(v)) for n, v in tensors.items()}, config, directory)
    used = {n: v for n, v in tensors.items() if not (n == "lm_head.weight" and config.tie_embeddings)}
    for name, value in used.items():
        if not _all_finite(np.asarray(value)):
            raise CheckpointError(f"{directory}: tensor {name!r} holds NaN or Inf values")
    if config.tie_embeddings and "lm_head.weight" in tensors:
        head, embed = np.asarray(tensors["lm_head.weight"]), np.asarray(used["backbone.embeddings.weight"])
        if not np.array_equal(head, embed):
            raise CheckpointError(
                f"{directory}: config.json says {_tie_key(config)}=true (the LM head is the embedding) but the "
                "checkpoint stores an lm_head.weight that differs from the embedding; set "
                f"{_tie_key(config)} to false to use the stored head, or remove lm_head.weight")
    return used


def _all_finite(a: np.ndarray) -> bool:
    """Finite values; uint16 / int16 arrays are bfloat16 / half bit patterns, int8 are quantized values."""
    if a.dtype == np.uint16:
        return not np.any((a & np.uint16(0x7F80)) == np.uint16(0x7F80))
    if a.dtype == np.int16:
        return not np.any((a.view(np.uint16) & np.uint16(0x7C00)) == np.uint16(0x7C00))
    if a.dtype == np.int8:
        return True
    # one pass without a temporary: a sum is finite only if every term is (NaN and Inf
    # propagate); an overflowing sum of finite values falls back to the exact test
    with np.errstate(over="ignore", invalid="ignore"):
        if a.size and np.isfinite(np.add.reduce(a.reshape(-1))):
            return True
    return bool(np.all(np.isfinite(a)))


def _short(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_checkpoint(directory: str, dtype=np.float32, keep: str | None = None) -> tuple[MambaLMConfig, dict[str, np.ndarray]]:
    """Read ``config.json`` and the tensors of a checkpoint directory.

    Order (each step refuses before the next allocates): the config is parsed strictly;
    pickles are refused; every safetensors header is validated against its file size and the
    index; names, shapes and dtypes are checked against the config (milliseconds, no tensor
    data read); then exactly the declared bytes of each tensor are read and checked for
    non-finite values and for a tied head that differs from the embedding.

    A checkpoint written by ``MambaLM.save_quantized`` in int8 (header metadata
    :data:`Q8_MARKER`) holds I8 matrices, each with a ``<name>.scale`` F32 tensor of shape
    (rows, ceil(n / 32)); they are returned as they are (int8 and float32).

    Parameters
    ----------
    directory : str
        Checkpoint directory.
    dtype : numpy dtype
        float32 (default) or float64: the model's compute dtype; stored tensors are converted.
    keep : {None, "bf16", "fp16"}
        Return BF16 (``"bf16"``) or F16 (``"fp16"``) tensors unconverted, as uint16 / int16 bit
        patterns (see :mod:`nbssm.lm.quant`).

    Returns
    -------
    (MambaLMConfig, dict)
        The config and the checked tensors in the Hugging Face naming.

    Raises
    ------
    CheckpointError, UnsupportedConfigError, FileNotFoundError
        Each naming the file.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory (expected a Mamba checkpoint directory)")
    if keep not in (None, "bf16", "fp16"):
        raise ValueError(f"keep: expected None, 'bf16' or 'fp16', got {keep!r}")
    dtype = np.dtype(dtype)
    done = _take_prefetched(directory, dtype, keep)
    if done is not None:
        return done
    return _load_checkpoint(directory, dtype, keep)


def _load_checkpoint(directory: str, dtype: np.dtype, keep: str | None) -> tuple[MambaLMConfig, dict[str, np.ndarray]]:
    config = read_config(directory)
    headers = read_headers(directory)  # refuses pickles before anything else is read
    entries = {}
    for path, header, _ in headers:
        for name, entry in header.items():
            entries[name] = (path, entry)
    all_shapes = normalize_names({n: tuple(e["shape"]) for n, (_, e) in entries.items()})
    shapes = {n: s for n, s in all_shapes.items() if not n.endswith(_SCALE_SUFFIX)}
    check_shapes(shapes, config, directory)
    for name, (path, entry) in entries.items():
        if entry["dtype"] == "I8" and _quantized(path):
            continue
        if entry["dtype"] not in _FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']}; expected F32, F16, BF16 or F64")
    _check_scale_shapes(entries, all_shapes, directory)
    tensors = normalize_names(_read_data(headers, dtype, None, keep))
    scales = {n: v for n, v in tensors.items() if n.endswith(_SCALE_SUFFIX)}
    for name, value in scales.items():
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise CheckpointError(f"{directory}: tensor {name!r}: int8 scales must be finite and >= 0")
    checked = check_tensors({n: v for n, v in tensors.items() if n not in scales}, config, directory)
    checked.update({n: v for n, v in scales.items() if n[:-len(".scale")] in checked})
    return config, checked


# --------------------------------------------------------------------------- prefetch
# `nbssm generate` starts the read of its checkpoint in a thread before it imports Numba and
# the kernels' modules (about 0.4 s), so that the copies out of the page cache and the first
# touch of the fresh memory (0.4-0.7 s for a mamba-130m checkpoint) run during the imports.

_prefetched: dict = {}  # (real path, dtype, keep) -> (files' signature, thread, result box)
_prefetch_lock = threading.Lock()


def _files_signature(directory: str) -> tuple:
    """(name, size, mtime_ns, inode) of every file of the directory, sorted."""
    out = []
    with os.scandir(directory) as entries:
        for e in entries:
            if e.is_file():
                st = e.stat()
                out.append((e.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(out))


def _prefetch_key(directory: str, dtype, keep) -> tuple:
    return (os.path.realpath(directory), np.dtype(dtype).str, keep)


def kept_format(weights: str | None) -> str | None:
    """The ``keep`` of :func:`load_checkpoint` for a model's decode ``weights`` format: the
    16-bit formats are kept as stored, every other format is converted on load."""
    return weights if weights in ("bf16", "fp16") else None


def prefetch_checkpoint(directory: str, dtype=np.float32, keep: str | None = None) -> bool:
    """Start :func:`load_checkpoint` ``(directory, dtype, keep)`` in a background thread.

    The next :func:`load_checkpoint` call with the same arguments waits for it and returns its
    result, provided the directory's files are unchanged (names, sizes, modification times,
    inodes as when the prefetch started); otherwise it reads again. The prefetch raises
    nothing: when it fails, the call that takes it reads again and raises that error itself.
    Returns whether a prefetch was started (not for a directory that cannot be listed, nor
    while one with the same arguments is pending).
    """
    directory = os.fspath(directory)
    try:
        key = _prefetch_key(directory, dtype, keep)
        signature = _files_signature(directory)
    except (OSError, TypeError, ValueError):
        return False
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = _load_checkpoint(directory, np.dtype(dtype), keep)
        except BaseException:  # noqa: BLE001 - the taker reads again and raises it itself
            pass

    thread = threading.Thread(target=run, name="nbssm-prefetch", daemon=True)
    with _prefetch_lock:
        if key in _prefetched:
            return False
        _prefetched[key] = (signature, thread, box)
    thread.start()
    return True


def _take_prefetched(directory: str, dtype: np.dtype, keep: str | None):
    """The result of a pending prefetch of these arguments (None: none, it failed, or the files changed)."""
    if not _prefetched:
        return None
    with _prefetch_lock:
        item = _prefetched.pop(_prefetch_key(directory, dtype, keep), None)
    if item is None:
        return None
    signature, thread, box = item
    thread.join()
    try:
        unchanged = _files_signature(directory) == signature
    except OSError:
        unchanged = False
    return box.get("result") if unchanged else None


def _check_scale_shapes(entries: dict, shapes: dict, directory: str) -> None:
    """Every I8 matrix has a ``.scale`` of shape (rows, ceil(n / 32)); every ``.scale`` has its matrix."""
    kinds = {_normal_name(n): e["dtype"] for n, (_, e) in entries.items()}
    for name, kind in kinds.items():
        if name.endswith(_SCALE_SUFFIX):
            base = name[:-len(".scale")]
            if kinds.get(base) != "I8":
                raise CheckpointError(f"{directory}: tensor {name!r} holds int8 scales but {base!r} is not an I8 tensor")
            if kind != "F32":
                raise CheckpointError(f"{directory}: tensor {name!r}: int8 scales must be F32, found {kind}")
            from .quant import QBLOCK  # here: float checkpoints are read without importing Numba

            rows_n = shapes[base]
            want = tuple(rows_n[:-1]) + (-(-rows_n[-1] // QBLOCK),) if rows_n else ()
            if tuple(shapes[name]) != want:
                raise CheckpointError(f"{directory}: tensor {name!r}: expected shape {want} (one scale per {QBLOCK} "
                                      f"inputs of each row of {tuple(rows_n)}), found {tuple(shapes[name])}")
        elif kind == "I8" and name + ".scale" not in kinds:
            raise CheckpointError(f"{directory}: tensor {name!r} is int8 but the checkpoint has no {name + '.scale'!r}")


_ST_DTYPE = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.uint16): "BF16",
             np.dtype(np.int16): "F16", np.dtype(np.int8): "I8"}


def write_checkpoint(directory: str, config: MambaLMConfig, tensors: dict, weights: str) -> None:
    """Write ``config.json`` (Hugging Face dialect) and ``model.safetensors`` to ``directory``.

    ``tensors``: name -> ``(data, scale)``; data float32/float64, uint16 (bf16 bits), int16
    (half bits) or int8 (then ``scale`` is written as ``<name>.scale``; else it is ignored).
    """
    import json

    os.makedirs(directory, exist_ok=True)
    c = config
    cfg = {"model_type": "mamba", "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
           "vocab_size": c.vocab_size, "state_size": c.d_state, "conv_kernel": c.d_conv,
           "intermediate_size": c.d_inner, "time_step_rank": c.dt_rank, "use_conv_bias": c.conv_bias,
           "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
           "eos_token_id": c.eos_token_id, "bos_token_id": c.bos_token_id, "pad_token_id": c.pad_token_id,
           "hidden_act": "silu", "use_bias": False, "nbssm_weights": weights}
    flat: list[tuple[str, np.ndarray]] = []
    for name, (data, scale) in tensors.items():
        data = np.ascontiguousarray(data)
        flat.append((name, data))
        if data.dtype == np.int8:
            flat.append((name + ".scale", np.ascontiguousarray(scale, dtype=np.float32)))
    header: dict = {"__metadata__": {"format": "pt", "qblock": "32"}}
    if weights == "int8":
        header["__metadata__"][Q8_MARKER[0]] = Q8_MARKER[1]
    offset = 0
    for name, a in flat:
        header[name] = {"dtype": _ST_DTYPE[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = os.path.join(directory, SINGLE_FILE)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, a in flat:
            f.write(memoryview(a).cast("B"))  # type: ignore[arg-type]
    os.replace(path + ".tmp", path)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
