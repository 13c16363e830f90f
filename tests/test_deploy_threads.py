"""Deployment: the thread setting (nbssm.threads), its validation, determinism and CLI hookup."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

import nbssm
from nbssm import threads as T
from ops_inputs import conv_inputs, linear_inputs, selective_inputs


def _results():
    kw = selective_inputs(30, 2, 150, 40, 4, np.float32)
    a, b, h0 = linear_inputs(31, 1, 200, 3)
    x, w, bias, hist = conv_inputs(32, 2, 30, 40, 4)
    return [
        *nbssm.selective_scan(**kw, strategy="chunked", chunk_length=32, return_final_state=True),
        *nbssm.selective_scan(**kw, strategy="sequential", return_final_state=True),
        *nbssm.linear_scan(a, b, h0, strategy="chunked", chunk_length=9, return_final_state=True),
        nbssm.causal_conv1d(x, w, bias, hist),
    ]


@pytest.mark.skipif(T.max_threads() < 2, reason="needs 2 Numba threads")
def test_bitwise_identical_on_1_and_2_threads():
    with nbssm.threads(1):
        assert nbssm.get_threads() == 1
        one = _results()
    with nbssm.threads(2):
        assert nbssm.get_threads() == 2
        two = _results()
    for u, v in zip(one, two):
        assert np.array_equal(u.view(np.uint8), v.view(np.uint8))


def test_context_manager_restores_on_exception():
    before = T.get_threads()
    with pytest.raises(RuntimeError, match="boom"), T.threads(1):
        assert T.get_threads() == 1
        raise RuntimeError("boom")
    assert T.get_threads() == before
    previous = T.set_threads(1)
    try:
        assert previous == before and T.get_threads() == 1
    finally:
        T.set_threads(previous)
    assert T.get_threads() == before


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-1, ValueError), ("x", TypeError), ("2", TypeError),
                                       (1.5, TypeError), (True, TypeError), (None, TypeError)])
def test_invalid_values_are_clear_errors(bad, error):
    before = T.get_threads()
    with pytest.raises(error, match="threads: expected"):
        T.set_threads(bad)
    with pytest.raises(error, match="threads: expected"), T.threads(bad):
        pass  # pragma: no cover
    assert T.get_threads() == before


def test_more_than_allowed_is_a_clear_error():
    with pytest.raises(ValueError, match=f"between 1 and {T.max_threads()}"):
        T.set_threads(T.max_threads() + 1)


def test_default_is_the_cpus_this_process_may_use():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if nbssm._config.NUM_THREADS is None:
        assert T.default_threads() == min(cpus, T.max_threads())


def test_cli_helpers():
    parser = argparse.ArgumentParser(prog="nbssm")
    T.add_threads_argument(parser)
    assert parser.parse_args([]).threads is None
    args = parser.parse_args(["--threads", "1"])
    before = T.get_threads()
    try:
        T.apply_threads_argument(args)
        assert T.get_threads() == 1
    finally:
        T.set_threads(before)
    T.apply_threads_argument(parser.parse_args([]))
    assert T.get_threads() == before
    for bad in ("0", "x", "-1", str(T.max_threads() + 1)):
        with pytest.raises(SystemExit):
            parser.parse_args(["--threads", bad])


def test_cli_error_message(capsys):
    parser = argparse.ArgumentParser(prog="nbssm")
    T.add_threads_argument(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "x"])
    assert "--threads: expected a whole number of threads, got 'x'" in capsys.readouterr().err


def test_blas_threads_follow_when_threadpoolctl_is_installed():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.dot(np.ones((64, 64)), np.ones((64, 64)))
    if not threadpoolctl.threadpool_info():
        pytest.skip("no BLAS thread pool found")
    with T.threads(1):
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300, check=False)


def test_environment_variable_sets_every_python_thread():
    code = ("import threading, nbssm, nbssm.ops; from nbssm import threads as T; seen = [];"
            "t = threading.Thread(target=lambda: seen.append(T.get_threads())); t.start(); t.join();"
            "import numba; print(T.get_threads(), numba.get_num_threads(), seen[0], __import__('os').environ['OPENBLAS_NUM_THREADS'])")
    proc = _run(code, NBSSM_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1", "1", "1"]


def test_environment_variable_out_of_range_is_a_clear_error():
    proc = _run("import nbssm; nbssm.causal_conv1d(__import__('numpy').ones((1, 3, 2)), __import__('numpy').ones((2, 2)))",
                NBSSM_NUM_THREADS="100000")
    assert proc.returncode != 0
    assert "NBSSM_NUM_THREADS: expected a number of threads between 1 and" in proc.stderr


def test_threads_before_a_nested_subcommand_is_kept():
    """``nbssm experiment --threads 1 NAME``: the nested parser's default does not undo it."""
    import importlib

    from nbssm.cli import build_subparser

    parser = build_subparser("experiment", importlib.import_module("nbssm.experiments.cli"))
    names = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    name = sorted(names)[0]
    assert parser.parse_args(["--threads", "1", name]).threads == 1
    assert parser.parse_args([name, "--threads", "2"]).threads == 2
    assert getattr(parser.parse_args([name]), "threads", None) is None
