"""The files every experiment writes: ``results.json``, ``results.md`` and ``results.png``."""

from __future__ import annotations

import json
import os


def write_result_files(results, out_dir, markdown_table, plot) -> list[str]:
    """Write ``results`` as JSON, its ``markdown_table(results)`` and ``plot(results, path)``
    into ``out_dir`` (created if missing); return the three paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("results.json", "results.md", "results.png")]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=2)
    with open(paths[1], "w") as f:
        f.write(markdown_table(results))
    plot(results, paths[2])
    return paths
