"""``nbssm.warmup`` compiles every kernel family; ``nbssm.ops`` no longer carries it."""

from __future__ import annotations

import numpy as np

import nbssm


def _dispatchers():
    from nbssm._kernels import cde, conv, decode, dense, signature, vjp
    from nbssm._kernels.selective_scan import selective_scan_checkpoint_kernel
    from nbssm.ops import linear_scan_kernel, selective_scan_kernel

    return {
        "selective_scan_vjp_kernel": vjp.selective_scan_vjp_kernel,
        "selective_scan_checkpoint_kernel": selective_scan_checkpoint_kernel,
        "linear_scan_vjp_kernel": vjp.linear_scan_vjp_kernel,
        "causal_conv1d_vjp_kernel": vjp.causal_conv1d_vjp_kernel,
        "linear_scan_kernel": linear_scan_kernel,
        "selective_scan_kernel": selective_scan_kernel,
        "causal_conv1d_kernel": conv.causal_conv1d_kernel,
        "matmul_fold_parallel": dense._matmul_fold_parallel,
        "matmul_fold_serial": dense._matmul_fold_serial,
        "decode_step": decode.decode_step,
        "dense_cde_scan": cde.dense_cde_scan,
        "diagonal_cde_scan": cde.diagonal_cde_scan,
        "signature_batch": signature.signature_batch,
        "signature_stream": signature.signature_stream,
    }


def test_warmup_compiles_every_kernel_family():
    res = nbssm.warmup()
    assert res["seconds"] >= 0
    counts = {name: len(k.signatures) for name, k in _dispatchers().items()}
    assert all(c >= 1 for c in counts.values()), counts
    for name in ("linear_scan_kernel", "selective_scan_kernel", "causal_conv1d_kernel", "linear_scan_vjp_kernel",
                 "causal_conv1d_vjp_kernel", "selective_scan_checkpoint_kernel"):
        assert counts[name] >= 2, name  # float32 and float64
    assert counts["selective_scan_vjp_kernel"] >= 4, counts  # x (with, without checkpoints)
    # a second warmup and ordinary calls compile nothing new
    nbssm.warmup()
    rng = np.random.default_rng(0)
    u = rng.standard_normal((1, 5, 20)).astype(np.float32)
    nbssm.selective_scan(u, u, -np.ones((20, 3), np.float32), u[..., :3], u[..., :3])
    from importlib import import_module

    import_module(nbssm._LAZY["signature"]).signature(rng.standard_normal((4, 3)), 3)
    assert {name: len(k.signatures) for name, k in _dispatchers().items()} == counts


def test_ops_no_longer_reaches_up_to_warmup():
    from nbssm import ops

    assert not hasattr(ops, "warmup")  # ops sits below the models that warmup compiles


def test_warmup_stays_the_function_after_importing_its_module():
    import nbssm._warmup

    assert callable(nbssm.warmup) and nbssm.warmup is nbssm._warmup.warmup
