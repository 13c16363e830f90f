"""Numba kernel of the depthwise causal convolution with a carried history.

Shapes: ``x, out (b, l, d)``; ``w_newest (W, d)`` (tap 0 multiplies the current
token: the spec's ``convKernel``); ``bias (d,)``; ``history (b, W-1, d)``, the
``W-1`` tokens before ``x[:, 0]``, oldest first.

Per output, exactly the spec's fold (``nbssm.spec.algorithms.causal_conv_step``)::

    acc = bias[d]
    for k in 0..W-1:  acc = acc + x[t-k, d] * w_newest[k, d]     (x[-m] = history[W-1-m])
    out = acc, or silu(acc) = acc * sigmoid(acc) when ``silu`` is set

Parallel over (batch, block of channels); the time loop is inside, so results
do not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from ._jit import njit, prange
from .fastmath import sigmoid_

#: channels per block
_CBLK = 64


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def causal_conv1d_kernel(x, w_newest, bias, has_bias, history, silu, out):
    """Depthwise causal convolution into ``out``; see the module docstring."""
    batch, length, channels = x.shape
    width = w_newest.shape[0]
    nhist = history.shape[1]  # == max(width - 1, 0)
    nblk = (channels + _CBLK - 1) // _CBLK
    xf = x.reshape(x.size)
    hf = history.reshape(history.size)
    of = out.reshape(out.size)
    for job in prange(batch * nblk):
        bi = job // nblk
        d0 = (job % nblk) * _CBLK
        nd = min(_CBLK, channels - d0)
        acc = np.empty(nd, dtype=x.dtype)
        for t in range(length):
            if has_bias:
                for j in range(nd):
                    acc[j] = bias[d0 + j]
            else:
                for j in range(nd):
                    acc[j] = 0
            for k in range(width):
                p = t - k
                # flat offsets as unsigned integers: contiguous vector loads over j
                if p >= 0:
                    row = np.uint64((bi * length + p) * channels + d0)
                    for j in range(nd):
                        acc[j] = acc[j] + xf[row + np.uint64(j)] * w_newest[k, d0 + j]
                else:
                    row = np.uint64((bi * nhist + nhist + p) * channels + d0)
                    for j in range(nd):
                        acc[j] = acc[j] + hf[row + np.uint64(j)] * w_newest[k, d0 + j]
            orow = np.uint64((bi * length + t) * channels + d0)
            if silu:
                for j in range(nd):
                    c = acc[j]
                    of[orow + np.uint64(j)] = c * sigmoid_(c)
            else:
                for j in range(nd):
                    of[orow + np.uint64(j)] = acc[j]
