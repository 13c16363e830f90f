"""nbssm.signatures.signature against a pure-Python Chen-product reference and a public library."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbssm.signatures import signature, signature_length, word_index
from signature_naive import signature_dict, signature_flat, words
from tolerances import max_rel_err, tol

PAPER_PATH = [[1, 1], [3, 4], [5, 2], [8, 6]]


def test_convention_on_the_papers_path():
    s = signature(np.array(PAPER_PATH, dtype=float), 2)
    assert s.tolist() == [7.0, 5.0, 24.5, 19.0, 16.0, 12.5]


def test_word_index_and_length():
    assert signature_length(2, 2) == 6
    assert signature_length(3, 4) == 3 + 9 + 27 + 81
    assert word_index((0, 1), 2) == 3  # S^{12} after S^1, S^2, S^11
    assert word_index((1, 0), 2) == 4
    assert word_index((0, 1, 2), 3) == 3 + 9 + 5
    ws = words(3, 3)
    assert [word_index(w, 3) for w in ws] == list(range(len(ws)))
    with pytest.raises(ValueError, match=r"word: expected an int in \[0, 2\], got 3"):
        word_index((0, 3), 3)
    with pytest.raises(ValueError, match="non-empty"):
        word_index((), 3)
    with pytest.raises(ValueError, match="depth"):
        signature_length(2, 0)


@settings(deadline=None, max_examples=40)
@given(dim=st.integers(1, 4), depth=st.integers(1, 5), length=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_matches_chen_reference(dim, depth, length, seed):
    if dim**depth > 300 and length > 12:  # keep the pure-Python reference cheap
        length = 12
    rng = np.random.default_rng(seed)
    path = rng.standard_normal((length, dim))
    got = signature(path, depth)
    want = np.array(signature_flat(path.tolist(), depth))
    assert got.shape == (signature_length(dim, depth),)
    if length == 1:
        assert not got.any()  # a one-point path has zero signature
    # Level k is a sum of products of k increments; its terms are bounded by (sum_t |dx_t|_1)^k / k!,
    # which is the scale of its rounding error even where the terms cancel to a tiny value.
    total = float(np.abs(np.diff(path, axis=0)).sum()) or 1.0
    start = 0
    for k in range(1, depth + 1):
        stop = start + dim**k
        scale = total**k / math.factorial(k)
        assert np.max(np.abs(got[start:stop] - want[start:stop])) <= tol("signature_vs_chen_reference") * scale
        start = stop


def test_stream_gives_every_prefix():
    rng = np.random.default_rng(3)
    path = rng.standard_normal((2, 9, 3))
    s = signature(path, 3, stream=True)
    assert s.shape == (2, 9, signature_length(3, 3))
    assert not s[:, 0].any()
    for b in range(2):
        for t in range(9):
            # stream prepends nothing: it appends segments (forward Chen), the plain signature
            # prepends them (backward): equal up to rounding
            assert max_rel_err(s[b, t], signature(path[b, : t + 1], 3)) <= tol("signature_vs_chen_reference")
    # unbatched stream
    np.testing.assert_array_equal(signature(path[1], 3, stream=True), s[1])


def test_batched_equals_unbatched_and_threads_do_not_matter():
    import numba

    rng = np.random.default_rng(4)
    path = rng.standard_normal((7, 20, 2))
    s = signature(path, 4)
    for b in range(7):
        np.testing.assert_array_equal(s[b], signature(path[b], 4))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(signature(path, 4), s)
    finally:
        numba.set_num_threads(old)


def test_level_bound_one_variation():
    """Level k has l1 norm at most ||X||_{1-var}^k / k! (l1 norms of increments)."""
    rng = np.random.default_rng(5)
    path = rng.standard_normal((30, 3))
    var = np.abs(np.diff(path, axis=0)).sum()
    s = signature(path, 5)
    for k in range(1, 6):
        off = signature_length(3, k - 1) if k > 1 else 0
        level = s[off: off + 3**k]
        assert np.abs(level).sum() <= var**k / math.factorial(k) * (1 + 1e-12)


def test_chen_identity_concatenation():
    """Signature of a concatenation is the Chen product of the pieces' signatures."""
    rng = np.random.default_rng(6)
    path = rng.standard_normal((15, 2))
    full = signature(path, 4)
    a, b = signature(path[:8], 4), signature(path[7:], 4)
    da = {w: a[word_index(w, 2)] for w in words(2, 4)}
    db = {w: b[word_index(w, 2)] for w in words(2, 4)}
    from signature_naive import chen

    prod = chen(da, db, 2, 4)
    want = np.array([prod[w] for w in words(2, 4)])
    assert max_rel_err(full, want) <= tol("signature_vs_chen_reference")


def test_dtypes_and_layouts():
    rng = np.random.default_rng(7)
    p64 = rng.standard_normal((3, 10, 2))
    s32 = signature(p64.astype(np.float32), 3)
    assert s32.dtype == np.float32
    ref32 = signature(p64.astype(np.float32).astype(np.float64), 3)
    assert max_rel_err(s32, ref32) <= tol("signature_float32_output")
    ints = np.array(PAPER_PATH)
    assert signature(ints, 2).dtype == np.float64
    np.testing.assert_array_equal(signature(ints, 2), signature(ints.astype(float), 2))
    # non-contiguous, read-only input, never modified
    big = np.asfortranarray(rng.standard_normal((3, 20, 4)))[:, ::2, 1:3]
    big.setflags(write=False)
    before = big.copy()
    out = signature(big, 3)
    np.testing.assert_array_equal(big, before)
    np.testing.assert_array_equal(out, signature(np.ascontiguousarray(big), 3))
    # empty batch
    assert signature(np.zeros((0, 5, 2)), 2).shape == (0, 6)


@pytest.mark.parametrize(
    "path, depth, exc, match",
    [
        (np.zeros(5), 2, ValueError, "shape"),
        (np.zeros((1, 2, 3, 4)), 2, ValueError, "shape"),
        (np.zeros((0, 2)), 2, ValueError, "length"),
        (np.zeros((3, 0)), 2, ValueError, "dim"),
        (np.array([[0.0, 1.0], [np.nan, 1.0]]), 2, ValueError, r"path: expected finite values, got nan at index \(1, 0\)"),
        (np.array([[0.0, 1.0], [np.inf, 1.0]]), 2, ValueError, "path: expected finite values, got inf"),
        (np.zeros((3, 2)), 0, ValueError, "depth"),
        (np.zeros((3, 2)), True, TypeError, "depth"),
        (np.zeros((3, 2)), 2.0, TypeError, "depth"),
        (np.zeros((3, 2), dtype=complex), 2, TypeError, "path: expected a float32, float64 or integer array"),
        (np.array([["a", "b"]]), 2, TypeError, "path: expected a float32, float64 or integer array"),
    ],
)
def test_bad_input(path, depth, exc, match):
    with pytest.raises(exc, match=match):
        signature(path, depth)


def _library():
    """A public signature library: iisignature if importable, else esig (test extra)."""
    try:
        import iisignature

        return "iisignature", lambda p, m: iisignature.sig(p, m)
    except ImportError:
        esig = pytest.importorskip("esig")
        # esig 1.0 (roughpy backend) raises on exactly 50 samples; the tests avoid that length
        return "esig", lambda p, m: np.asarray(esig.stream2sig(p, m))[1:]  # drop level 0


@pytest.mark.parametrize("dim, depth, length", [(1, 3, 5), (2, 5, 30), (3, 4, 49), (4, 3, 17), (2, 1, 2)])
def test_matches_public_library(dim, depth, length):
    name, lib = _library()
    rng = np.random.default_rng(dim * 100 + depth)
    path = rng.standard_normal((length, dim))
    got = signature(path, depth)
    want = lib(path, depth)
    assert got.shape == want.shape, name
    assert max_rel_err(got, want) <= tol("signature_vs_library"), name


@settings(deadline=None, max_examples=40)
@given(dim=st.integers(1, 4), depth=st.integers(1, 5), length=st.integers(2, 49), seed=st.integers(0, 2**31 - 1))
def test_matches_public_library_hypothesis(dim, depth, length, seed):
    name, lib = _library()
    path = np.random.default_rng(seed).standard_normal((length, dim))
    assert max_rel_err(signature(path, depth), lib(path, depth)) <= tol("signature_vs_library"), name


def test_library_convention_on_the_papers_path():
    name, lib = _library()
    want = lib(np.array(PAPER_PATH, dtype=float), 2)
    np.testing.assert_allclose(want, [7, 5, 24.5, 19, 16, 12.5])
    np.testing.assert_allclose(signature(np.array(PAPER_PATH, dtype=float), 2), want, rtol=1e-14)


def test_reference_is_generic_over_sympy():
    """The test reference itself reproduces the paper's convention symbolically."""
    sp = pytest.importorskip("sympy")
    x = sp.symbols("x0:2")
    sig = signature_dict([[0, 0], [x[0], x[1]]], 2)
    assert sp.simplify(sig[(0, 1)] - x[0] * x[1] / 2) == 0


_IMPORT_ORDERS = [
    "import nbssm",
    "from nbssm import signature",
    "import nbssm.signatures",
    "from nbssm.signatures import signature, word_index",
    "import nbssm.signature",
    "import nbssm.signatures; from nbssm import signature",
    "from nbssm.signatures import word_index; import nbssm.cde; import nbssm.experiments.signature_tasks",
    "import nbssm.signature as s; import nbssm.signatures as m; assert s is m.signature",
]


@pytest.mark.parametrize("imports", _IMPORT_ORDERS)
def test_nbssm_signature_is_the_function_in_every_import_order(imports):
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('ignore', DeprecationWarning)\n"
        f"{imports}\n"
        "import types, nbssm, nbssm.signatures as m\n"
        "assert not isinstance(nbssm.signature, types.ModuleType), nbssm.signature\n"
        "assert nbssm.signature is m.signature\n"
        "from nbssm import signature as f\n"
        "assert f is m.signature\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_old_module_path_is_a_deprecated_alias():
    import nbssm
    import nbssm.signatures as m

    with pytest.warns(DeprecationWarning, match="nbssm.signatures"):
        from nbssm.signature import word_index as old_word_index
    assert old_word_index is m.word_index
    assert nbssm.signature is m.signature


@pytest.mark.parametrize("stream", [False, True])
def test_batch_rows_equal_single_paths_bitwise(stream):
    rng = np.random.default_rng(8)
    paths = rng.standard_normal((37, 11, 3))  # more paths than one parallel task holds
    batch = signature(paths, 4, stream=stream)
    for p in (0, 15, 16, 36):
        np.testing.assert_array_equal(batch[p], signature(paths[p], 4, stream=stream))
