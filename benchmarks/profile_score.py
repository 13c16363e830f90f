"""Profile one ``nbssm.dask`` scoring task (4 prompts x 512 tokens, mamba-130m-shaped random
model, ``batch_size=2``, one thread) and check whether two plain processes scale.

``--mode task``: CPU time (``time.process_time``) of the model trunk, of the tiled head +
log-sum-exp (:meth:`MambaLM.token_log_probs`), and of the old path (``forward`` -> full
``(batch, length, vocab)`` logits -> ``nbssm.dask.lm.token_log_probs``), interleaved rounds.
``--mode pair``: one task alone, then two plain processes (no dask) running one task each at
once: wall and CPU time per process; efficiency = alone / together.

    flock /tmp/nbssm-bench.lock python benchmarks/profile_score.py --mode pair
"""

from __future__ import annotations

import os

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

DIMS = dict(d_model=768, n_layer=24, vocab_size=50280, d_state=16)


def _setup(dims):
    from nbssm.lm import MambaLM

    model = MambaLM.random(seed=0, dtype=np.float32, **dims)
    ids = np.random.default_rng(1).integers(0, dims["vocab_size"], (4, 512))
    model.token_log_probs(ids[:1, :16])  # compile
    return model, ids


def _cpu(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _task(model, ids, path="tiled"):
    from nbssm.dask.lm import token_log_probs

    total = 0.0
    for s in range(0, ids.shape[0], 2):
        part = ids[s:s + 2]
        if path == "tiled":
            total += float(model.token_log_probs(part).sum())
        else:
            logits, _ = model.forward(part)
            total += float(token_log_probs(logits[:, :-1], part[:, 1:]).sum())
    return total


def mode_task(dims, rounds):
    model, ids = _setup(dims)
    rows = []
    for _ in range(rounds):
        part = ids[:2]
        st = model.initial_state(2)
        _, trunk, _ = _cpu(lambda: model._trunk(part[:, :-1], st))
        _, new, _ = _cpu(lambda: _task(model, ids, "tiled"))
        _, old, _ = _cpu(lambda: _task(model, ids, "full"))
        rows.append(dict(trunk_per_call_s=trunk, task_tiled_s=new, task_full_logits_s=old,
                         head_lse_per_call_s=new / 2 - trunk))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mode_one(dims):
    model, ids = _setup(dims)
    _, cpu, wall = _cpu(lambda: _task(model, ids, os.environ.get("PROFILE_PATH", "tiled")))
    print(json.dumps(dict(cpu_s=cpu, wall_s=wall)), flush=True)


def mode_pair(dims, path):
    env = dict(os.environ, PROFILE_PATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", "one", "--small" if dims != DIMS else "--full"]

    def run(n):
        ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        return [json.loads([ln for ln in p.communicate()[0].splitlines() if ln.startswith("{")][-1]) for p in ps]

    alone = run(1)[0]
    both = run(2)
    res = dict(path=path, alone=alone, together=both,
               wall_efficiency=alone["wall_s"] / max(b["wall_s"] for b in both),
               cpu_efficiency=alone["cpu_s"] / np.mean([b["cpu_s"] for b in both]))
    print(json.dumps(res), flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("task", "pair", "one"), default="task")
    ap.add_argument("--path", choices=("tiled", "full"), default="tiled", help="--mode pair: the scoring path")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="a tiny model (smoke run)")
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dims = dict(d_model=64, n_layer=2, vocab_size=1000, d_state=16) if args.small else DIMS
    print(f"load average {os.getloadavg()}", flush=True)
    if args.mode == "task":
        mode_task(dims, args.rounds)
    elif args.mode == "pair":
        mode_pair(dims, args.path)
    else:
        mode_one(dims)
    print(f"load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
