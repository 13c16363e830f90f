"""nbssm.torch: nbssm's kernels as PyTorch autograd functions, mamba_ssm drop-ins, transformers.

Install with ``pip install 'nbssm[torch]'`` (PyTorch is never a dependency of nbssm itself:
``import nbssm`` does not import torch; this subpackage does).

Three layers, each usable alone:

* **Autograd functions in nbssm's layout** (:mod:`nbssm.torch.functions`):
  :func:`selective_scan`, :func:`causal_conv1d`, :func:`linear_scan` take and return CPU
  tensors (float32 or float64; sequences ``(batch, length, channels)``) with the arguments of
  :mod:`nbssm.ops`, and are differentiable in every tensor argument through the Numba
  backward kernels (:func:`nbssm.ops.selective_scan_vjp` and its siblings).
* **mamba_ssm / causal_conv1d drop-ins** (:mod:`nbssm.torch.dropin`):
  :func:`selective_scan_fn` (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``)
  and :func:`causal_conv1d_fn` (``causal_conv1d.causal_conv1d_fn``), the same names,
  signatures and ``(batch, channels, length)`` layout, on CPU tensors.
* **transformers** (:mod:`nbssm.torch.hf`): :func:`patch_mamba` makes every ``MambaMixer`` of a
  ``MambaForCausalLM`` / ``MambaModel`` run its convolution and selective scan on nbssm
  (prefill, training and cached decoding); :func:`unpatch_mamba` undoes it.

Tensors are handed to nbssm without a copy (``tensor.detach().numpy()``) when they are CPU
float32/float64 tensors; nbssm copies only what is not C-contiguous. Outputs are tensors
over nbssm's output arrays (``torch.from_numpy``, no copy). CUDA (or other device) tensors
and other dtypes raise ``ValueError`` / ``TypeError`` naming the argument.
"""

from __future__ import annotations

import os as _os

if __name__ != "nbssm.torch":  # pragma: no cover - only when nbssm/ itself is on sys.path
    raise ImportError(
        f"{_os.path.dirname(__file__)} was imported as the top-level module {__name__!r}: the directory "
        f"{_os.path.dirname(_os.path.dirname(__file__))} (nbssm's package directory) is on sys.path, so it "
        "shadows PyTorch. Run scripts from outside the nbssm package directory (or with python -m).")

try:
    import torch as _torch  # noqa: F401  (absolute: PyTorch itself)
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError("nbssm.torch needs PyTorch: pip install 'nbssm[torch]' "
                      "(or pip install torch)") from exc

from nbssm.torch.dropin import causal_conv1d_fn, selective_scan_fn
from nbssm.torch.functions import causal_conv1d, linear_scan, selective_scan
from nbssm.torch.hf import patch_mamba, unpatch_mamba

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "linear_scan",
    "selective_scan_fn",
    "causal_conv1d_fn",
    "patch_mamba",
    "unpatch_mamba",
]
