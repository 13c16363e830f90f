"""Kernel benchmarks: a thin wrapper around ``nbssm bench``.

Run from the repository root, on a quiet machine::

    flock /tmp/nbssm-bench.lock python benchmarks/bench_kernels.py --out /tmp/bench

Writes ``kernels.json`` and ``kernels.md`` to ``--out`` (never into the source tree by default); see
:mod:`nbssm.bench` for what is measured and how.
"""

import argparse
import sys

from nbssm import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=bench.__doc__.splitlines()[0])
    bench.add_arguments(parser)
    sys.exit(bench.run(parser.parse_args()))
