"""Deployment: kernels after fork (multiprocessing.Pool, default start method) and Ctrl-C.

Each case runs in a fresh interpreter, so that the OpenMP runtime state it depends on is
the one a user's script would have.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

POOL = textwrap.dedent(
    """
    import multiprocessing as mp, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from ops_inputs import conv_inputs, linear_inputs, selective_inputs
    import nbssm
    from nbssm.lm import MambaLM
    from nbssm._kernels import _jit

    def work(seed):
        kw = selective_inputs(seed, 2, 300, 40, 4, np.float32)
        a, b, h0 = linear_inputs(seed, 1, 300, 3)
        x, w, bias, hist = conv_inputs(seed, 2, 30, 40, 4)
        lm = MambaLM.random(d_model=16, n_layer=2, vocab_size=40, d_state=4, d_conv=4, seed=seed)
        ids = np.random.default_rng(seed).integers(0, 40, (2, 9))
        logits, state = lm.forward(ids)
        step_logits, _ = lm.step(ids[:, 0], state)
        return _jit.in_serial_fork(), [
            *nbssm.selective_scan(**kw, strategy="chunked", chunk_length=64, return_final_state=True),
            *nbssm.selective_scan(**kw, strategy="sequential", return_final_state=True),
            *nbssm.linear_scan(a, b, h0, strategy="chunked", chunk_length=7, return_final_state=True),
            nbssm.causal_conv1d(x, w, bias, hist),
            logits, step_logits,
        ]

    if __name__ == "__main__":
        assert mp.get_start_method() == {method!r}, mp.get_start_method()
        parent = [work(s) for s in (0, 1)]   # starts the threading layer in the parent
        with mp.Pool(2) as pool:
            children = pool.map(work, [0, 1])
        import numba
        for (p_serial, p), (c_serial, c) in zip(parent, children):
            assert not p_serial
            assert c_serial == (numba.threading_layer() == "omp"), (c_serial, numba.threading_layer())
            for u, v in zip(p, c):
                assert u.dtype == v.dtype and u.shape == v.shape
                assert np.array_equal(u.view(np.uint8), v.view(np.uint8)), "not bitwise identical"
        print("OK", numba.threading_layer(), children[0][0])
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="the default start method is fork on Linux only")
def test_pool_with_default_start_method_after_parallel_kernels(tmp_path):
    import multiprocessing as mp

    script = tmp_path / "pool.py"
    script.write_text(POOL.format(tests=str(TESTS), method=mp.get_start_method()))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK"), proc.stdout


def test_fork_switches_callers_of_parallel_kernels_too():
    """Any kernel whose code calls a parallel kernel is recompiled in the child as well."""
    from nbssm._kernels import _jit, decode  # noqa: F401  (registers the decode kernels)

    parallel = {id(d) for d, o, c in _jit.kernels() if o.get("parallel")}
    callers = [d for d, o, c in _jit.kernels()
               if any(id(d.py_func.__globals__.get(n)) in parallel for n in d.py_func.__code__.co_names)]
    assert any(d.py_func.__name__ == "decode_step" for d in callers)


INTERRUPT = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    import nbssm
    from ops_inputs import selective_inputs
    small = selective_inputs(3, 1, 50, 8, 4)
    expected = nbssm.selective_scan(**small)
    kw = selective_inputs(4, 4, 4000, 64, 16)
    nbssm.selective_scan(**kw)
    print("ready", flush=True)
    calls = 0
    try:
        while True:
            nbssm.selective_scan(**kw)
            calls += 1
    except KeyboardInterrupt:
        pass
    again = nbssm.selective_scan(**small)
    assert np.array_equal(again, expected)
    print("recovered", calls, flush=True)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_keyboard_interrupt_during_kernel_leaves_process_usable(tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT.format(tests=str(TESTS)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("recovered"), out + err
