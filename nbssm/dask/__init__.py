"""nbssm on Dask: the sequence operations, the language model and the path features on dask
arrays and bags, for batches and sequences larger than one machine (extra ``nbssm[dask]``).

* :func:`linear_scan`, :func:`selective_scan`, :func:`causal_conv1d`: dask arrays chunked
  along batch (bitwise the single-machine result) and along time (parallel in time; with
  ``combine="serial"`` bitwise equal to ``strategy="chunked"`` with the same chunk
  boundaries, see :func:`time_chunks`).
* :class:`ModelSource`, :func:`score`, :func:`score_long`, :func:`generate`: ``MambaLM``
  scoring (log-likelihood per document), a long sequence's state carried between time
  blocks, and batched greedy generation; the weights are loaded once per worker process.
* :func:`signature_features`, :func:`cde_features`: features of a dask array of paths.
* :func:`local_cluster`: a ``dask.distributed.LocalCluster`` with one Numba thread per
  worker thread.

Importing this package imports dask; nothing is compiled.
"""

from ._common import time_chunks
from ._scan import COMBINES, TREE_RTOL, causal_conv1d, linear_scan, selective_scan
from .cluster import local_cluster
from .features import cde_features, signature_features
from .lm import ModelSource, generate, score, score_long

__all__ = [
    "COMBINES", "ModelSource", "TREE_RTOL", "causal_conv1d", "cde_features", "generate", "linear_scan", "local_cluster",
    "score", "score_long", "selective_scan", "signature_features", "time_chunks",
]
