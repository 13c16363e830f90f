"""nbssm.torch: autograd functions, mamba_ssm drop-ins and the transformers patch.

Runs when the extra is installed (``pip install 'nbssm[torch]' transformers``; CI installs it
in a separate step) and is skipped otherwise. Every fast path is compared with an
independent slower one: torch.autograd.gradcheck (central finite differences) for the
autograd functions, a plain-PyTorch ``selective_scan_ref`` and ``F.conv1d`` written here for
the drop-ins, and transformers' own CPU path for the patched ``MambaForCausalLM``. Random
weights only: nothing is downloaded.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

import tolerances as tl

torch = pytest.importorskip("torch", reason="nbssm.torch needs PyTorch (pip install 'nbssm[torch]')")
F = torch.nn.functional

import nbssm.torch as nt  # noqa: E402
from nbssm import ops  # noqa: E402
from nbssm.torch.functions import as_array  # noqa: E402

F64 = torch.float64


def rng_tensors(seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, grad=True):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_(grad)

    return randn


def selective_inputs(seed, b, l, d, n, dtype=F64, grad=True):
    """nbssm layout: u, delta (b, l, d) (delta before softplus), A < 0, B, C, D, z, bias, h0."""
    r = rng_tensors(seed, dtype)
    A = (-torch.exp(torch.randn(d, n, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype) * 0.5))
    return dict(u=r(b, l, d, grad=grad), delta=r(b, l, d, scale=0.5, grad=grad), A=A.requires_grad_(grad),
                B=r(b, l, n, grad=grad), C=r(b, l, n, grad=grad), D=r(d, grad=grad), z=r(b, l, d, grad=grad),
                delta_bias=r(d, scale=0.3, grad=grad), initial_state=r(b, d, n, scale=0.5, grad=grad))


# ---------------------------------------------------------------------------- plain PyTorch references

def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """mamba_ssm's layout: u, delta, z (b, d, l); B, C (b, n, l) or (b, 1, n, l); a time loop."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 4:
        B, C = B[:, 0], C[:, 0]
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(l):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


def causal_conv1d_ref(x, weight, bias=None, initial_states=None, activation=None):
    """causal_conv1d's layout: x (b, d, l), weight (d, w); left history (b, d, w-1) or zeros."""
    d, w = weight.shape
    if initial_states is None:
        initial_states = x.new_zeros(x.shape[0], d, w - 1)
    xx = torch.cat([initial_states, x], dim=-1)
    out = F.conv1d(xx, weight[:, None, :], bias, groups=d)
    return F.silu(out) if activation in ("silu", "swish") else out


def close(got, want, row):
    err = tl.max_rel_err(got.detach().numpy(), want.detach().numpy())
    assert err <= tl.tol(row), f"relative error {err:.3g} > {row} {tl.tol(row)}"


# ---------------------------------------------------------------------------- the package

def test_import_nbssm_does_not_import_torch():
    code = ("import sys, nbssm, nbssm.ops, nbssm.models, nbssm.lm; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import nbssm.torch; assert sys.modules['torch'].__file__ != nbssm.torch.__file__")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_is_pytorch_inside_the_bridge():
    import nbssm.torch.functions as fn

    assert fn.torch is torch and hasattr(torch, "autograd")
    assert "site-packages" in torch.__file__ or "nbssm" not in torch.__file__


def test_inputs_are_zero_copy_views_and_never_written():
    x = torch.randn(2, 5, 3, dtype=torch.float32)
    assert np.shares_memory(as_array(x, "x"), x.numpy())
    y = torch.randn(2, 5, 3, requires_grad=True)  # requires grad: still a view (detach)
    assert np.shares_memory(as_array(y, "y"), y.detach().numpy())
    kw = selective_inputs(0, 2, 9, 3, 4)
    saved = {k: v.detach().clone() for k, v in kw.items()}
    nt.selective_scan(**kw, delta_softplus=True).sum().backward()
    for k, v in kw.items():
        assert torch.equal(v.detach(), saved[k]), k


def test_matches_nbssm_ops_bitwise():
    kw = selective_inputs(1, 2, 11, 3, 4, grad=False)
    y, h = nt.selective_scan(**kw, delta_softplus=True, return_final_state=True)
    want_y, want_h = ops.selective_scan(**{k: v.numpy() for k, v in kw.items()}, delta_softplus=True,
                                        return_final_state=True)
    assert np.array_equal(y.numpy(), want_y) and np.array_equal(h.numpy(), want_h)
    assert y.dtype == F64 and h.shape == (2, 3, 4)


def test_bad_tensors_raise_clear_errors():
    kw = selective_inputs(2, 1, 4, 2, 3, grad=False)
    with pytest.raises(TypeError, match="u: expected a float32 or float64 tensor, got torch.float16"):
        nt.selective_scan(**{**kw, "u": kw["u"].half()})
    with pytest.raises(TypeError, match="delta: expected a float32 or float64 tensor, got torch.bfloat16"):
        nt.selective_scan(**{**kw, "delta": kw["delta"].bfloat16()})
    with pytest.raises(TypeError, match="x: expected a torch.Tensor, got ndarray"):
        nt.causal_conv1d(np.zeros((1, 3, 2)), torch.zeros(2, 4))
    meta = torch.empty(1, 4, 2, device="meta")
    with pytest.raises(ValueError, match="u: expected a CPU tensor, got a tensor on meta"):
        nt.selective_scan(**{**kw, "u": meta})
    with pytest.raises(ValueError, match="a: expected a CPU tensor"):
        nt.linear_scan(meta, meta)
    with pytest.raises(ValueError, match=r"B: expected shape"):  # nbssm's own shape check
        nt.selective_scan(**{**kw, "B": kw["B"][:, :, :2]})


# ---------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("length,extra", [
    (5, {}),
    (70, {}),  # past the backward's checkpoint chunks (VJP_CHUNK_LENGTH = 32)
    (40, {"strategy": "chunked", "chunk_length": 16}),  # the forward's chunked strategy
])
def test_gradcheck_selective_scan(length, extra):
    d, n = 2, 3
    kw = selective_inputs(3, 1 if length > 5 else 2, length, d, n)

    def f(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return nt.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                                 initial_state=initial_state, return_final_state=True, **extra)

    assert torch.autograd.gradcheck(f, tuple(kw.values()), fast_mode=length > 5)


def test_gradcheck_selective_scan_minimal_arguments_and_unbatched():
    kw = selective_inputs(4, 1, 6, 2, 2)
    f = lambda u, delta, A, B, C: nt.selective_scan(u, delta, A, B, C)
    assert torch.autograd.gradcheck(f, (kw["u"], kw["delta"].abs() + 0.1, kw["A"], kw["B"], kw["C"]))
    g = lambda u, delta, A, B, C: nt.selective_scan(u, delta, A, B, C, return_final_state=True)
    assert torch.autograd.gradcheck(g, (kw["u"][0], kw["delta"][0], kw["A"], kw["B"][0], kw["C"][0]))


@pytest.mark.parametrize("length", [2, 7, 70])
def test_gradcheck_causal_conv1d(length):
    r = rng_tensors(5)
    x, w, b, h0 = r(2, length, 3), r(3, 4), r(3), r(2, 3, 3)
    f = lambda x, w, b, h0: nt.causal_conv1d(x, w, b, initial_state=h0, return_final_state=True,
                                             activation="silu")
    assert torch.autograd.gradcheck(f, (x, w, b, h0), fast_mode=length > 7)
    g = lambda x, w: nt.causal_conv1d(x, w)
    assert torch.autograd.gradcheck(g, (x, w), fast_mode=length > 7)


@pytest.mark.parametrize("length", [6, 70])
def test_gradcheck_linear_scan(length):
    r = rng_tensors(6)
    a = torch.rand(2, length, 3, dtype=F64, generator=torch.Generator().manual_seed(7)).requires_grad_()
    b, h0 = r(2, length, 3), r(2, 3)
    f = lambda a, b, h0: nt.linear_scan(a, b, initial_state=h0, return_final_state=True)
    assert torch.autograd.gradcheck(f, (a, b, h0), fast_mode=length > 6)


def test_grad_dtypes_follow_the_inputs():
    # a float32 A with float64 sequences (transformers' float64 Mamba: A = -exp(A_log.float()))
    kw = selective_inputs(8, 1, 5, 2, 3)
    A32 = kw["A"].detach().float().requires_grad_()
    y = nt.selective_scan(kw["u"], kw["delta"], A32, kw["B"], kw["C"])
    y.sum().backward()
    assert y.dtype == F64 and A32.grad.dtype == torch.float32 and kw["u"].grad.dtype == F64


# ---------------------------------------------------------------------------- drop-ins

def mamba_layout(kw):
    t = lambda x: x.detach().transpose(1, 2).contiguous().requires_grad_()
    return dict(u=t(kw["u"]), delta=t(kw["delta"]), A=kw["A"].detach().clone().requires_grad_(),
                B=t(kw["B"]), C=t(kw["C"]), D=kw["D"].detach().clone().requires_grad_(), z=t(kw["z"]),
                delta_bias=kw["delta_bias"].detach().clone().requires_grad_())


def grads_of(fn, args: dict, names):
    out = fn(**args)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(99)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype)).sum() for o in outs)
    gs = torch.autograd.grad(loss, [args[k] for k in names])
    return outs, dict(zip(names, gs))


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("options", [
    dict(),
    dict(D=True, z=True, delta_bias=True, delta_softplus=True, return_last_state=True),
])
def test_selective_scan_fn_matches_the_torch_reference(groups, options):
    kw = mamba_layout(selective_inputs(9, 2, 75, 3, 4))
    args = {k: kw[k] for k in ("u", "delta", "A", "B", "C")}
    if not options.get("delta_softplus"):
        args["delta"] = (args["delta"].detach().abs() + 0.05).requires_grad_()
    for k in ("D", "z", "delta_bias"):
        if options.get(k):
            args[k] = kw[k]
    for k in ("delta_softplus", "return_last_state"):
        if k in options:
            args[k] = options[k]
    if groups:
        args["B"] = args["B"].detach()[:, None].clone().requires_grad_()
        args["C"] = args["C"].detach()[:, None].clone().requires_grad_()
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    got, g_got = grads_of(nt.selective_scan_fn, args, names)
    want, g_want = grads_of(selective_scan_ref, args, names)
    assert len(got) == len(want) == (2 if options.get("return_last_state") else 1)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        close(a, b, "float64_vs_oracle")
    for k in names:
        assert g_got[k].shape == args[k].shape, k
        close(g_got[k], g_want[k], "float64_vs_oracle")


def test_selective_scan_fn_float32_within_tolerance():
    kw = mamba_layout(selective_inputs(10, 2, 40, 33, 4))
    args = {k: v.detach().float().requires_grad_() for k, v in kw.items()}
    args["delta_softplus"] = True
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    got, g_got = grads_of(nt.selective_scan_fn, args, names)
    want, g_want = grads_of(selective_scan_ref, {k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                 for k, v in args.items()}, names)
    assert got[0].dtype == torch.float32
    close(got[0], want[0], "float32_vs_float64")
    for k in names:
        close(g_got[k], g_want[k], "torch_bridge_grad_float32")


def test_selective_scan_fn_refuses_what_it_cannot_do():
    kw = mamba_layout(selective_inputs(11, 1, 4, 2, 3, grad=False))
    two = kw["B"][:, None].repeat(1, 2, 1, 1)
    with pytest.raises(ValueError, match="B: expected .* one group .* got 2 groups"):
        nt.selective_scan_fn(kw["u"], kw["delta"], kw["A"], two, two)
    with pytest.raises(ValueError, match="B: expected an input-dependent"):
        nt.selective_scan_fn(kw["u"], kw["delta"], kw["A"], kw["A"], kw["C"])
    with pytest.raises(ValueError, match=r"u: expected shape \(batch, dim, length\)"):
        nt.selective_scan_fn(kw["u"][0], kw["delta"], kw["A"], kw["B"], kw["C"])
    with pytest.raises(TypeError, match="complex"):
        nt.selective_scan_fn(kw["u"], kw["delta"], kw["A"].to(torch.complex64), kw["B"], kw["C"])


def conv_ref_fn(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None):
    """causal_conv1d_fn's contract written with F.conv1d (the final states: the last w-1 inputs)."""
    out = causal_conv1d_ref(x, weight, bias, initial_states, activation)
    if not return_final_states:
        return out
    return out, torch.cat([initial_states, x], dim=-1)[:, :, -(weight.shape[1] - 1):]


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length", [2, 9])
def test_causal_conv1d_fn_matches_conv1d(activation, length):
    r = rng_tensors(12)
    x, w, b, h0 = r(2, 3, length), r(3, 4), r(3), r(2, 3, 3)
    for kw in (dict(), dict(bias=b, initial_states=h0, return_final_states=True)):
        args = dict(x=x, weight=w, **kw, activation=activation)
        names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
        got, g_got = grads_of(nt.causal_conv1d_fn, args, names)
        want, g_want = grads_of(conv_ref_fn, args, names)
        assert len(got) == len(want)
        close(got[0], want[0], "float64_vs_oracle")
        if kw:
            assert got[1].shape == (2, 3, 3) and torch.equal(got[1], want[1])
        for k in names:
            close(g_got[k], g_want[k], "float64_vs_oracle")


def test_causal_conv1d_fn_refuses_what_it_cannot_do():
    x, w = torch.zeros(1, 2, 5), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="seq_idx"):
        nt.causal_conv1d_fn(x, w, seq_idx=torch.zeros(1, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="activation"):
        nt.causal_conv1d_fn(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"weight: expected shape \(dim, width\)"):
        nt.causal_conv1d_fn(x, w[:, None])
    out = torch.empty(1, 2, 3)
    _, fin = nt.causal_conv1d_fn(x + 1, w, return_final_states=True, final_states_out=out)
    assert fin is out and torch.equal(out, torch.ones(1, 2, 3))


# ---------------------------------------------------------------------------- transformers

def mamba_model(dtype, seed=0, vocab=61, layers=2):
    tr = pytest.importorskip("transformers", reason="the transformers patch needs transformers")
    torch.manual_seed(seed)
    cfg = tr.MambaConfig(vocab_size=vocab, hidden_size=64, state_size=8, num_hidden_layers=layers, conv_kernel=4,
                         expand=2, use_conv_bias=True, tie_word_embeddings=True)
    model = tr.MambaForCausalLM(cfg)
    with torch.no_grad():  # a random model whose scans do something: spread A and dt
        for layer in model.backbone.layers:
            m = layer.mixer
            m.A_log.copy_(torch.randn_like(m.A_log) * 0.5)
            m.D.copy_(torch.randn_like(m.D))
            m.dt_proj.bias.copy_(torch.randn_like(m.dt_proj.bias) * 0.5)
            m.conv1d.bias.copy_(torch.randn_like(m.conv1d.bias) * 0.2)
    return model.to(dtype)


class float64_reference:
    """transformers' Mamba in genuine float64: its .float() round trips and RMSNorm's float32
    round trip become identities (as in benchmarks/make_mamba_fixture.py)."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        from transformers.models.mamba import modeling_mamba as mm

        def rms(norm, h):
            return norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))

        self.saved = torch.Tensor.float, mm.MambaRMSNorm.forward
        torch.Tensor.float = lambda self, *a, **k: self
        mm.MambaRMSNorm.forward = rms
        for m in self.models:
            for layer in m.backbone.layers:
                layer.residual_in_fp32 = False
        return self

    def __exit__(self, *exc):
        from transformers.models.mamba import modeling_mamba as mm

        torch.Tensor.float, mm.MambaRMSNorm.forward = self.saved


def logits_and_grads(model, ids, mask=None):
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype,row", [(F64, "torch_bridge_float64"), (torch.float32, "torch_bridge_float32")])
def test_patched_mamba_matches_transformers(dtype, row):
    ref = mamba_model(dtype)
    ref.train()
    fast = nt.patch_mamba(copy.deepcopy(ref))
    assert all(type(layer.mixer).__name__ == "NbssmMambaMixer" for layer in fast.backbone.layers)
    ids = torch.randint(0, 61, (3, 70), generator=torch.Generator().manual_seed(1))
    if dtype == F64:
        with float64_reference(ref, fast):
            want, g_want = logits_and_grads(ref, ids)
            got, g_got = logits_and_grads(fast, ids)
    else:
        want, g_want = logits_and_grads(ref, ids)
        got, g_got = logits_and_grads(fast, ids)
    close(got, want, row)
    assert set(g_got) == set(g_want)
    for name in g_want:
        err = tl.max_rel_err(g_got[name].numpy(), g_want[name].numpy())
        assert err <= tl.tol(row), f"{name}: gradient relative error {err:.3g} > {tl.tol(row)}"
    nt.unpatch_mamba(fast)
    assert all(type(layer.mixer).__name__ == "MambaMixer" for layer in fast.backbone.layers)


def test_patched_mamba_with_padding_mask_and_cached_decoding():
    ref = mamba_model(F64, seed=3).eval()
    fast = nt.patch_mamba(copy.deepcopy(ref))
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    nxt = torch.randint(0, 61, (2, 4), generator=torch.Generator().manual_seed(3))
    with float64_reference(ref, fast), torch.no_grad():
        runs = []
        for m in (ref, fast):
            out = m(ids, attention_mask=mask, use_cache=True)
            cache, logits = out.cache, [out.logits]
            for t in range(nxt.shape[1]):
                out = m(nxt[:, t:t + 1], cache=cache, use_cache=True)
                cache = out.cache
                logits.append(out.logits)
            runs.append(torch.cat(logits, dim=1))
    close(runs[1], runs[0], "torch_bridge_float64")
    # decoding equals running the whole sequence (the cache carries the conv window and the state)
    with float64_reference(fast), torch.no_grad():
        whole = fast(torch.cat([ids[:1], nxt[:1]], dim=1)).logits
    close(runs[1][:1, 8:], whole[:, 8:], "torch_bridge_float64")


def test_patched_generate_and_errors():
    tr = pytest.importorskip("transformers")
    ref = mamba_model(torch.float32, seed=4).eval()
    fast = nt.patch_mamba(copy.deepcopy(ref))
    ids = torch.randint(0, 61, (1, 6), generator=torch.Generator().manual_seed(4))
    a = ref.generate(ids, max_new_tokens=5, do_sample=False)
    b = fast.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="MambaMixer"):
        nt.patch_mamba(torch.nn.Linear(2, 2))
    assert nt.patch_mamba(fast) is fast  # idempotent
    assert isinstance(fast.backbone.layers[0].mixer, tr.models.mamba.modeling_mamba.MambaMixer)
