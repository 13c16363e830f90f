"""Configuration, read once from environment variables (nowhere else).

NBSSM_CACHE: "0" disables Numba's on-disk cache for nbssm kernels (default on).
"""

import os


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off", "")


#: whether jitted kernels use Numba's on-disk cache (``cache=True``)
CACHE: bool = _flag("NBSSM_CACHE", True)
