"""transformers integration: run ``MambaMixer`` on nbssm's kernels on CPU (inference and training).

Why a patch and not transformers' own kernel selection (transformers 5.x): ``modeling_mamba``
wraps its five kernels (``causal_conv1d_fn``, ``causal_conv1d_update``, ``selective_scan_fn``,
``selective_state_update``, ``mamba_inner_fn``) with ``use_kernel_func_from_hub_with_fallback``,
which picks, once, when ``modeling_mamba`` is first imported: (1) a Hugging Face Hub kernel
(only through the ``kernels`` package with ``use_kernels=True``, mapped per device to a
compiled kernel repository: CUDA/XPU builds of mamba-ssm), else (2) the importable packages
``mamba_ssm`` / ``causal_conv1d``, else (3) the pure-PyTorch loop. A local CPU implementation
could only enter through (2), by installing modules named ``mamba_ssm`` and ``causal_conv1d``
before transformers is imported: that would shadow the real CUDA packages for every model in
the process. So nbssm changes one model at a time instead: :func:`patch_mamba` switches the
class of each ``MambaMixer`` in a model to :class:`NbssmMambaMixer` (a subclass whose
``forward`` calls nbssm), and :func:`unpatch_mamba` switches it back. Parameters, buffers,
``state_dict`` and ``generate`` are untouched.

The patched forward follows ``MambaMixer.forward``'s pure-PyTorch path step by step (the
padding mask, ``in_proj``, the causal convolution with its activation, ``x_proj``,
``dt_proj``, the selective scan with ``D``, the gate and the softplus of ``delta + dt_bias``,
``out_proj``) and its use of the cache: prefill with a cache stores the convolution history
and the final scan state; one-token decoding reads and updates them in place (both on nbssm:
the convolution with its history as ``initial_state``, the scan with the cached state as
``initial_state``). Differences: ``delta`` is computed as ``dt_ts @ dt_proj.weight.T`` in
``(batch, length, dim)`` order (the same products, possibly summed in another order by BLAS);
in a float64 model the scan's ``B`` and input stay float64 where transformers rounds them to
float32 (it keeps ``A = -exp(A_log.float())``, ``D.float()`` and ``dt_bias.float()`` as
transformers does); half-precision models compute the convolution and scan in float32.
Tensors not on the CPU run the original forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nbssm.torch.functions import causal_conv1d, selective_scan

_PATCHED: dict[str, type] = {}


def _modeling():
    try:
        from transformers.models.mamba import modeling_mamba
    except ImportError as exc:  # pragma: no cover - exercised without transformers
        raise ImportError("nbssm.torch.patch_mamba needs transformers: pip install transformers") from exc
    return modeling_mamba


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _conv(mixer, x, weight, bias, initial_state=None):
    """The mixer's causal convolution and activation on nbssm, ``x (b, l, d)``."""
    if mixer.activation in ("silu", "swish"):
        return causal_conv1d(x, weight, bias, initial_state=initial_state, activation="silu")
    return mixer.act(causal_conv1d(x, weight, bias, initial_state=initial_state))


def nbssm_mixer_forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
    """``MambaMixer.forward`` with the convolution and the selective scan on nbssm.

    Parameters and return value are those of ``MambaMixer.forward`` (``hidden_states (batch,
    length, hidden_size)``, ``cache`` a transformers ``Cache`` (or the deprecated
    ``cache_params=``), ``attention_mask (batch, length)``); the output is ``(batch, length,
    hidden_size)``.
    """
    if cache is None:
        cache = kwargs.pop("cache_params", None)
    mm = _modeling()
    if hidden_states.device.type != "cpu":
        return mm.MambaMixer.forward(self, hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    seq_len = hidden_states.shape[1]
    dtype = hidden_states.dtype
    cdt = _compute_dtype(dtype)
    idx = self.layer_idx
    conv_state = recurrent_state = None
    if cache is not None:
        conv_state = cache.get_conv_state(idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(idx, state_idx=0)

    # 1. input projection, split into the scan input and the gate, both (b, l, d)
    hidden_states = mm.apply_mask_to_padding_states(hidden_states, attention_mask)
    x, gate = self.in_proj(hidden_states).chunk(2, dim=-1)
    A = -torch.exp(self.A_log.float())
    weight = self.conv1d.weight.squeeze(1).to(cdt)
    bias = self.conv1d.bias.to(cdt) if self.conv1d.bias is not None else None

    # 2. causal convolution
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(idx):
        # one-token decoding: the cached window holds the last conv_kernel_size inputs
        hist = conv_state[:, :, 1:].transpose(1, 2).to(cdt, copy=True)
        new_window = torch.cat([conv_state[:, :, 1:], x.transpose(1, 2).to(conv_state.dtype)], dim=-1)
        x = _conv(self, x.to(cdt), weight, bias, initial_state=hist)
        conv_state.copy_(new_window)
    elif cache is not None:
        full = cache.update_conv_state(x.transpose(1, 2), idx, conv_kernel_size=self.conv_kernel_size)
        x = _conv(self, full.transpose(1, 2).to(cdt), weight, bias)[:, -seq_len:]
    else:
        x = _conv(self, x.to(cdt), weight, bias)

    # 3. selective scan
    x = mm.apply_mask_to_padding_states(x, attention_mask)
    time_step, B, C = torch.split(self.x_proj(x.to(dtype)),
                                  [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    delta = F.linear(time_step, self.dt_proj.weight)
    dt_bias = self.dt_proj.bias.float() if self.dt_proj.bias is not None else None
    args = (x, delta.to(cdt), A, B.to(cdt), C.to(cdt))
    kw = dict(D=self.D.float(), z=gate.to(cdt), delta_bias=dt_bias, delta_softplus=True, return_final_state=True)
    if recurrent_state is not None and seq_len == 1:
        y, final = selective_scan(*args, initial_state=recurrent_state.to(cdt, copy=True), **kw)
        with torch.no_grad():
            recurrent_state.copy_(final)
    else:
        y, final = selective_scan(*args, **kw)
        if cache is not None:
            cache.update_recurrent_state(final.detach(), idx)

    # 4. output projection
    return self.out_proj(y.to(dtype))


def _patched_class() -> type:
    """``NbssmMambaMixer``: transformers' ``MambaMixer`` with :func:`nbssm_mixer_forward`."""
    if "mixer" not in _PATCHED:
        mm = _modeling()
        cls = type("NbssmMambaMixer", (mm.MambaMixer,), {
            "forward": nbssm_mixer_forward,
            "__module__": __name__,
            "__doc__": "transformers' MambaMixer whose forward runs on nbssm's kernels (see nbssm.torch.hf).",
        })
        _PATCHED["mixer"] = cls
    return _PATCHED["mixer"]


def __getattr__(name: str):
    # NbssmMambaMixer is created on first use (importing nbssm.torch does not import transformers);
    # a module attribute so that pickled patched models load again
    if name == "NbssmMambaMixer":
        return _patched_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def patch_mamba(model):
    """Make every transformers ``MambaMixer`` in ``model`` run on nbssm (in place).

    Parameters
    ----------
    model : torch.nn.Module
        A ``MambaForCausalLM``, ``MambaModel``, ``MambaBlock``, ``MambaMixer`` or any module
        containing them. Mixers already patched are left as they are.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    ValueError
        If ``model`` contains no ``MambaMixer``.

    Notes
    -----
    Each mixer's class becomes ``nbssm.torch.hf.NbssmMambaMixer`` (a subclass of
    ``MambaMixer``, so ``isinstance`` checks still hold); its forward computes the
    convolution and the selective scan with nbssm's kernels, differentiably, and uses the
    cache as transformers does (prefill, one-token decoding, ``generate``). Only exact
    ``MambaMixer`` instances are patched (subclasses with other semantics, e.g. Falcon-Mamba's
    mixer, are not). Undo with :func:`unpatch_mamba`.
    """
    mm = _modeling()
    cls = _patched_class()
    found = 0
    for module in model.modules():
        if type(module) is mm.MambaMixer:
            module.__class__ = cls
            found += 1
        elif type(module) is cls:
            found += 1
    if not found:
        raise ValueError(f"model: expected a module containing transformers' MambaMixer, got "
                         f"{type(model).__name__} with none")
    return model


def unpatch_mamba(model):
    """Undo :func:`patch_mamba`: every ``NbssmMambaMixer`` in ``model`` becomes a ``MambaMixer`` again.

    Returns ``model``; a model with no patched mixer is returned unchanged.
    """
    mm = _modeling()
    cls = _patched_class()
    for module in model.modules():
        if type(module) is cls:
            module.__class__ = mm.MambaMixer
    return model
