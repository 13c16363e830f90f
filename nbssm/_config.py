"""Configuration, read once from environment variables (nowhere else).

NBSSM_CACHE: "0" disables Numba's on-disk cache for nbssm kernels (default on).
NBSSM_OUTPUT_CACHE_MB: how many MiB of released large output buffers nbssm keeps for
reuse (default 512; 0 disables the output cache). See :mod:`nbssm._memory`.
"""

import os


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off", "")


#: whether jitted kernels use Numba's on-disk cache (``cache=True``)
CACHE: bool = _flag("NBSSM_CACHE", True)


def _mebibytes(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number of MiB, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: expected a number of MiB >= 0, got {value}")
    return value


#: MiB of released large output buffers kept for reuse (0: no output cache)
OUTPUT_CACHE_MB: int = _mebibytes("NBSSM_OUTPUT_CACHE_MB", 512)
