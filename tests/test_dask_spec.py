"""The generic reference of the distributed scan (nbssm.spec.distributed) and its checks."""

from __future__ import annotations

import numpy as np
import pytest

from nbssm.spec import distributed as dist
from nbssm.spec.algorithms import chunked_diagonal_scan
from nbssm.spec.context import DOUBLE


def test_distributed_checks_pass():
    results = dist.distributed_checks(budget_s=120)
    assert [r.name for r in results] == [
        "distributed_diagonal_scan_refines_diagonalSelectiveScan",
        "distributed_serial_combine_same_operations_as_chunked_scan",
        "distributed_tree_combine_with_swapped_compose",
    ]
    assert [r.verdict for r in results] == ["proved", "proved", "refuted"]
    assert all(r.passed for r in results)
    assert "differ" in results[2].detail  # the counterexample is reported


def _leaves(T, n):
    return ([dist.Op("leaf", f"h{i}") for i in range(n)],
            [[dist.Op("leaf", f"a{t}_{i}") for i in range(n)] for t in range(T)],
            [[dist.Op("leaf", f"b{t}_{i}") for i in range(n)] for t in range(T)])


def test_traces_tell_operation_orders_apart():
    """The trace check can fail: the tree combine, and a carry with commuted operands, differ."""
    h0, a, b = _leaves(8, 1)
    ref = chunked_diagonal_scan(h0, a, b, 2)
    serial = dist.distributed_diagonal_scan(dist.TRACE, h0, a, b, 2, (1, 1, 2), "serial")
    tree = dist.distributed_diagonal_scan(dist.TRACE, h0, a, b, 2, (1, 1, 2), "tree")
    assert all(dist.trace_equal(x[0], y[0]) for x, y in zip(serial, ref))
    assert not all(dist.trace_equal(x[0], y[0]) for x, y in zip(tree, ref))

    real_apply = dist.apply

    def commuted(ctx, s, h):
        return [ctx.add(ctx.mul(h[d], s[0][d]), s[1][d]) for d in range(len(h))]

    try:
        dist.apply = commuted
        mutated = dist.distributed_diagonal_scan(dist.TRACE, h0, a, b, 2, (1, 1, 2), "serial")
    finally:
        dist.apply = real_apply
    assert not all(dist.trace_equal(x[0], y[0]) for x, y in zip(mutated, ref))


@pytest.mark.parametrize("blocks", [(3,), (1, 2), (1, 1, 1), (2, 1)])
def test_serial_combine_bitwise_on_doubles(blocks):
    rng = np.random.default_rng(len(blocks))
    T, lc = 11, 4
    a = rng.uniform(0.5, 1.5, (T, 2)).tolist()
    b = rng.standard_normal((T, 2)).tolist()
    h0 = rng.standard_normal(2).tolist()
    got = dist.distributed_diagonal_scan(DOUBLE, h0, a, b, lc, blocks, "serial")
    assert got == chunked_diagonal_scan(h0, a, b, lc)


def test_bad_blocks_and_splits_raise():
    with pytest.raises(ValueError, match="block_chunks"):
        dist.block_ranges(3, (1, 1))
    with pytest.raises(ValueError, match="combine"):
        dist.distributed_diagonal_scan(DOUBLE, [0.0], [[1.0]], [[1.0]], 1, (1,), "pairwise")
    with pytest.raises(ValueError, match="strictly inside"):
        dist.tree_summary(DOUBLE, [([1.0], [0.0])] * 3, 0, 3, lambda lo, hi: lo)


def test_dask_tree_combine_is_the_reference_bit_for_bit():
    """nbssm.dask's combine="tree" computes the reference's tree (split "pow2") exactly."""
    pytest.importorskip("dask", reason="nbssm.dask needs dask (pip install 'nbssm[dask]')")
    da = pytest.importorskip("dask.array", reason="nbssm.dask needs dask (pip install 'nbssm[dask]')")
    import nbssm.dask as nd

    rng = np.random.default_rng(3)
    T, lc = 60, 4
    a = rng.uniform(0.9, 1.05, (1, T, 1))
    b = rng.standard_normal((1, T, 1))
    h0 = rng.standard_normal((1, 1))
    chunks = nd.time_chunks(T, 7, lc)
    blocks = tuple(c // lc if j < len(chunks) - 1 else -(-c // lc) for j, c in enumerate(chunks))
    want = dist.distributed_diagonal_scan(DOUBLE, h0[0].tolist(), a[0].tolist(), b[0].tolist(), lc, blocks,
                                          "tree", "pow2")
    got = nd.linear_scan(da.from_array(a, chunks=(1, chunks, 1)), da.from_array(b, chunks=(1, chunks, 1)),
                         initial_state=h0, strategy="chunked", chunk_length=lc, combine="tree")
    got = got.compute(scheduler="synchronous")
    assert got[0, :, 0].tolist() == [h[0] for h in want]


def test_serial_combine_with_the_ieee_rule_is_the_chunked_scan_on_extreme_doubles():
    """With the kernels' rule (``ieee_carry_ok``) the reference's serial combine is
    ``chunked_diagonal_scan`` with the same rule, bit for bit, on overflowing, underflowing,
    infinite and NaN values; without the rule (always the summary) it is not."""
    from nbssm.spec.algorithms import ieee_carry_ok

    inf = float("inf")
    T, lc = 12, 2
    a = [[1e200, 1e-200, 1.0]] * 4 + [[0.5, 1e-200, inf]] + [[1e-3, 2.0, 0.0]] * 7
    b = [[0.0, 1e300, 1.0]] * 3 + [[1.0, 1e300, 1.0]] * 9
    h0 = [0.0, inf, 1.0]
    blocks = (2, 3, 1)
    want = chunked_diagonal_scan(h0, a, b, lc, carry_ok=ieee_carry_ok)
    got = dist.distributed_diagonal_scan(DOUBLE, h0, a, b, lc, blocks, "serial", carry_ok=ieee_carry_ok)
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
    assert not np.isnan(np.array(want)[:, 0]).any()  # the overflowed product times 0 was re-run
    plain = dist.distributed_diagonal_scan(DOUBLE, h0, a, b, lc, blocks, "serial")
    assert not np.array_equal(np.array(plain), np.array(want), equal_nan=True)
    assert len(want) == T
