"""The recurrent state of a Mamba language model: an explicit, copyable, saveable object."""

from __future__ import annotations

import json
import os

import numpy as np

STATE_FORMAT = "nbssm.MambaLMState/1"


class StateMismatchError(ValueError):
    """A state that does not belong to the model (dimensions, dtype, weights) or batch it is used with."""


class MambaLMState:
    """Everything the recurrence of a :class:`~nbssm.lm.MambaLM` needs to continue a batch.

    Attributes
    ----------
    conv : (L, b, W-1, E) array
        Per layer, the last ``W-1`` inputs of each sequence's causal convolution, oldest first
        (zeros before the first token: the reference's zero left padding).
    ssm : (L, b, E, N) array
        Per layer, the SSM state of each sequence.
    position : (b,) int64
        Number of tokens each sequence has consumed.
    fingerprint : dict
        The model's dimensions, dtype and a digest of its weights; checked whenever the state
        is used or loaded.

    Notes
    -----
    Model calls never write a state they are given (``step(..., inplace=True)`` is the
    documented exception used by ``generate``); use :meth:`copy` to keep a snapshot.
    """

    def __init__(self, conv: np.ndarray, ssm: np.ndarray, position: np.ndarray, fingerprint: dict) -> None:
        self.conv = conv
        self.ssm = ssm
        self.position = position
        self.fingerprint = dict(fingerprint)

    @property
    def batch(self) -> int:
        return self.ssm.shape[1]

    def copy(self) -> "MambaLMState":
        """A deep copy (independent arrays)."""
        return MambaLMState(self.conv.copy(), self.ssm.copy(), self.position.copy(), self.fingerprint)

    def select(self, rows) -> "MambaLMState":
        """The state of some sequences of the batch (a copy), e.g. ``state.select([0, 2])``."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < -self.batch or rows.max() >= self.batch):
            raise IndexError(f"MambaLMState.select: rows {rows.tolist()} out of range for batch {self.batch}")
        return MambaLMState(self.conv[:, rows].copy(), self.ssm[:, rows].copy(), self.position[rows].copy(), self.fingerprint)

    @staticmethod
    def concatenate(states: list["MambaLMState"]) -> "MambaLMState":
        """Stack the batches of several states of the same model."""
        if not states:
            raise ValueError("MambaLMState.concatenate: need at least one state")
        fp = states[0].fingerprint
        for s in states[1:]:
            if s.fingerprint != fp:
                raise StateMismatchError("MambaLMState.concatenate: states come from different models or dtypes")
        return MambaLMState(np.concatenate([s.conv for s in states], axis=1),
                            np.concatenate([s.ssm for s in states], axis=1),
                            np.concatenate([s.position for s in states]), fp)

    def __repr__(self) -> str:
        f = self.fingerprint
        return (f"MambaLMState(batch={self.batch}, position={self.position.tolist()}, "
                f"layers={f.get('n_layer')}, dtype={f.get('dtype')})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an ``.npz`` file (no pickled objects)."""
        meta = json.dumps({"format": STATE_FORMAT, "fingerprint": self.fingerprint}, sort_keys=True)
        np.savez(path, conv=self.conv, ssm=self.ssm, position=self.position, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "MambaLMState":
        """Read a state written by :meth:`save` (``allow_pickle=False``).

        Parameters
        ----------
        model : MambaLM, optional
            When given, the state's fingerprint (dimensions, dtype, weight digest) must match
            the model's, else :class:`StateMismatchError`.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                conv, ssm, position = f["conv"], f["ssm"], f["position"]
        except (KeyError, ValueError, OSError) as exc:
            raise StateMismatchError(f"{path}: not an nbssm MambaLM state file ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
            raise StateMismatchError(f"{path}: not an nbssm MambaLM state file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
        state = cls(conv, ssm, position.astype(np.int64), meta["fingerprint"])
        state._check_arrays(str(path))
        if model is not None:
            model.check_state(state)
        return state

    def _check_arrays(self, where: str) -> None:
        f = self.fingerprint
        try:
            L, E, N, W = f["n_layer"], f["d_inner"], f["d_state"], f["d_conv"]
            dtype = np.dtype(f["dtype"])
        except (KeyError, TypeError):
            raise StateMismatchError(f"{where}: state fingerprint is incomplete: {f}") from None
        b = self.ssm.shape[1] if self.ssm.ndim == 4 else -1
        if (self.ssm.shape != (L, b, E, N) or self.conv.shape != (L, b, W - 1, E) or self.position.shape != (b,)
                or self.ssm.dtype != dtype or self.conv.dtype != dtype):
            raise StateMismatchError(
                f"{where}: state arrays do not match their fingerprint: expected conv (L={L}, b, {W - 1}, {E}) and "
                f"ssm ({L}, b, {E}, {N}) of {dtype}, got conv {self.conv.shape} {self.conv.dtype}, "
                f"ssm {self.ssm.shape} {self.ssm.dtype}, position {self.position.shape}"
            )
