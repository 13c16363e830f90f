"""One model used from several Python threads at once gives each thread its own results.

Oracle: the same calls run serially first (same process, same shapes), compared bit for bit:
every path is deterministic for a given batch shape, so any cross-talk between threads (a
shared work buffer, a shared scratch array) shows up as a difference.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nbssm.lm import MambaLM, MambaLMConfig
from nbssm.models import MambaMixer, SelectiveMamba

N_THREADS = 4
ROUNDS = 3


def _lm(dtype):
    # d_inner 200: two decode channel chunks, so the kernel's partial-sum buffers are exercised
    cfg = MambaLMConfig(d_model=24, n_layer=2, vocab_size=50, d_state=5, d_conv=4, d_inner=200, dt_rank=3)
    return MambaLM.random(cfg, seed=3, dtype=dtype)


def _run_threads(fn, n):
    """Run ``fn(i)`` in ``n`` threads released together; return the results, re-raise errors."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def work(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def _lm_session(model, i):
    """Prefill a thread-specific prompt, then decode greedily: every logits array produced."""
    rng = np.random.default_rng(100 + i)
    batch = 1 + i % 3  # threads use different batch sizes, and some share one
    ids = rng.integers(0, model.config.vocab_size, (batch, 5 + i))
    out = []
    for _ in range(ROUNDS):
        logits, state = model.forward(ids)
        out.append(logits)
        tok = logits[:, -1].argmax(-1)
        for _ in range(6):
            step_logits, state = model.step(tok, state)
            out.append(step_logits)
            tok = step_logits.argmax(-1)
        out.append(state.ssm.copy())
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_lm_from_several_threads_matches_serial(dtype):
    model = _lm(dtype)
    serial = [_lm_session(model, i) for i in range(N_THREADS)]
    threaded = _run_threads(lambda i: _lm_session(model, i), N_THREADS)
    for i in range(N_THREADS):
        assert len(threaded[i]) == len(serial[i])
        for a, b in zip(threaded[i], serial[i]):
            np.testing.assert_array_equal(a, b)


def test_generate_from_several_threads_matches_serial():
    model = _lm(np.float32)
    prompts = [np.array([1 + i, 2, 3 + 2 * i]) for i in range(N_THREADS)]
    serial = [list(model.generate(p, 8)) for p in prompts]
    threaded = _run_threads(lambda i: list(model.generate(prompts[i], 8)), N_THREADS)
    assert threaded == serial


@pytest.mark.parametrize("make", [
    lambda: SelectiveMamba.random(3, 20, 3, 4, 4, seed=5),
    lambda: MambaMixer.random(6, 12, 3, 4, 2, seed=5, dtype=np.float64),
], ids=["SelectiveMamba", "MambaMixer"])
def test_one_block_from_several_threads_matches_serial(make):
    model = make()
    d_in = model.dims.get("input_dim", model.dims.get("d_model"))

    def session(i):
        x = np.random.default_rng(i).standard_normal((1 + i % 2, 7 + i, d_in))
        y, s = model.forward(x)
        y2, s2 = model.forward(x, s)
        return [y, y2, s2.ssm]

    serial = [session(i) for i in range(N_THREADS)]
    threaded = _run_threads(session, N_THREADS)
    for a_list, b_list in zip(threaded, serial):
        for a, b in zip(a_list, b_list):
            np.testing.assert_array_equal(a, b)
