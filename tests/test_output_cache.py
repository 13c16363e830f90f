"""The output cache (nbssm._memory): large kernel outputs are recycled, never while in use.

The cache only serves requests of at least ``MIN_BYTES`` (32 MiB); the tests
lower that threshold so that small, fast calls go through it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nbssm
from nbssm import _config, _memory
from ops_inputs import conv_inputs, linear_inputs, selective_inputs


@pytest.fixture
def small_cache(monkeypatch):
    """Every output goes through the cache, which starts empty with a 64 MiB budget."""
    monkeypatch.setattr(_memory, "MIN_BYTES", 0)
    old = _memory.set_output_cache_limit(64)
    _memory.clear_output_cache()
    yield
    _memory.clear_output_cache()
    _memory.set_output_cache_limit(old)


def _calls(seed):
    """(name, thunk) for each kernel, with fixed random inputs."""
    kw = selective_inputs(seed, 2, 40, 48, 4, np.float32)
    a, b, h0 = linear_inputs(seed + 1, 2, 60, 5, np.float32)
    x, w, bias, hist = conv_inputs(seed + 2, 2, 30, 40, 4, np.float32)
    return [
        ("selective_scan", lambda: nbssm.selective_scan(**kw)),
        ("linear_scan", lambda: nbssm.linear_scan(a, b, h0)),
        ("causal_conv1d", lambda: nbssm.causal_conv1d(x, w, bias, hist)),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_released_block_is_reused_with_identical_results(small_cache, which):
    name, call = _calls(10)[which]
    _memory.set_output_cache_limit(0)
    expected = call()
    assert expected.base is None  # disabled: a plain np.empty output
    _memory.set_output_cache_limit(64)
    first = call()
    np.testing.assert_array_equal(first, expected)
    address = first.ctypes.data
    assert _memory.output_cache_info()["blocks"] == 0
    del first
    info = _memory.output_cache_info()
    assert info["blocks"] == 1, name
    again = call()
    assert again.ctypes.data == address  # the released block came back
    assert _memory.output_cache_info()["hits"] == info["hits"] + 1
    assert again.flags.c_contiguous and again.flags.writeable and again.flags.aligned
    assert again.ctypes.data % _memory.ALIGN == 0
    np.testing.assert_array_equal(again, expected)


def test_a_live_result_is_never_overwritten(small_cache):
    calls = _calls(11)
    held = [call() for _, call in calls]
    copies = [h.copy() for h in held]
    view = held[0][:, ::3]  # a view alone keeps its block alive
    view_copy = view.copy()
    for _, call in _calls(12) * 2:
        out = call()
        for h in held:
            assert not np.shares_memory(out, h)
        del out
    for h, c in zip(held, copies):
        np.testing.assert_array_equal(h, c)
    del held[0]
    np.testing.assert_array_equal(view, view_copy)
    blocks = _memory.output_cache_info()["blocks"]
    for _, call in _calls(12):
        out = call()
        assert not np.shares_memory(out, view)
        del out
    assert _memory.output_cache_info()["blocks"] == blocks


def test_budget_evicts_oldest_blocks_first(small_cache):
    _memory.set_output_cache_limit(4)  # room for two 2 MiB blocks
    a0, a1, a2 = (_memory.empty((1000,), np.float64) for _ in range(3))
    addresses = [a0.ctypes.data, a1.ctypes.data, a2.ctypes.data]
    del a0  # released in this order: a0 is the oldest block in the cache
    del a1
    del a2
    info = _memory.output_cache_info()
    assert info["blocks"] == 2 and info["bytes"] == 2 * _memory.GRANULE
    # the newest released block is handed out first, then the next; the oldest was freed
    first = _memory.empty((1000,), np.float64)
    second = _memory.empty((1000,), np.float64)
    assert (first.ctypes.data, second.ctypes.data) == (addresses[2], addresses[1])
    misses = _memory.output_cache_info()["misses"]
    third = _memory.empty((1000,), np.float64)
    assert _memory.output_cache_info()["misses"] == misses + 1
    del first, second, third
    assert _memory.output_cache_info()["blocks"] == 2
    # shrinking the budget frees at once
    _memory.set_output_cache_limit(2)
    assert _memory.output_cache_info()["blocks"] == 1
    _memory.clear_output_cache()
    assert _memory.output_cache_info()["blocks"] == 0 and _memory.output_cache_info()["bytes"] == 0


def test_blocks_larger_than_the_budget_are_not_kept(small_cache):
    _memory.set_output_cache_limit(2)
    big = _memory.empty((3 << 20,), np.uint8)  # rounds up to 4 MiB
    assert big.shape == (3 << 20,) and big.dtype == np.uint8
    del big
    assert _memory.output_cache_info()["blocks"] == 0


def test_requests_below_the_threshold_bypass_the_cache(monkeypatch):
    monkeypatch.setattr(_memory, "MIN_BYTES", 1 << 20)
    small = _memory.empty((10, 10), np.float32)
    assert small.base is None and small.shape == (10, 10) and small.dtype == np.float32
    empty = _memory.empty((0, 5), np.float64)
    assert empty.shape == (0, 5)


def test_concurrent_calls_from_threads_match_serial_results(small_cache):
    calls = _calls(13)
    expected = [call() for _, call in calls]
    errors = []

    def worker():
        try:
            for _ in range(5):
                for (_, call), exp in zip(calls, expected):
                    out = call()
                    if not np.array_equal(out, exp):
                        errors.append("mismatch")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _memory.output_cache_info()["hits"] > 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8", None])
def test_set_output_cache_limit_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="megabytes"):
        _memory.set_output_cache_limit(bad)


def test_environment_budget_is_parsed(monkeypatch):
    monkeypatch.setenv("NBSSM_OUTPUT_CACHE_MB", "128")
    assert _config._mebibytes("NBSSM_OUTPUT_CACHE_MB", 512) == 128
    monkeypatch.setenv("NBSSM_OUTPUT_CACHE_MB", "")
    assert _config._mebibytes("NBSSM_OUTPUT_CACHE_MB", 512) == 512
    for bad in ("lots", "-3", "1.5"):
        monkeypatch.setenv("NBSSM_OUTPUT_CACHE_MB", bad)
        with pytest.raises(ValueError, match="NBSSM_OUTPUT_CACHE_MB"):
            _config._mebibytes("NBSSM_OUTPUT_CACHE_MB", 512)


@pytest.mark.parametrize("name", ["output_cache_info", "clear_output_cache", "set_output_cache_limit"])
def test_public_names_are_deprecated_aliases(name):
    assert name not in nbssm.__all__ and name not in dir(nbssm)
    with pytest.warns(DeprecationWarning, match=f"nbssm.{name} is deprecated"):
        fn = getattr(nbssm, name)
    assert fn is getattr(_memory, name)
