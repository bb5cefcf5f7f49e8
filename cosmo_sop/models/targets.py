"""What the networks regress, and the standardisation they predict it in.

Every network of cosmo-sop predicts the cosmological parameters named by :data:`TARGETS`, each
standardised with the mean and standard deviation of the *train* split (:class:`LabelScaler`).
The scaler is part of a trained model: its state is saved in the sidecar next to the weights,
and :class:`~cosmo_sop.models.trained.TrainedSOP` uses it to answer in physical units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cosmo_sop.errors import InputError

#: Coordinates along ``sample`` that the networks regress, in output order.
TARGETS: tuple[str, ...] = ("Om", "s8")


@dataclass(frozen=True)
class LabelScaler:
    """Standardisation of the regression targets: ``z = (y - mean) / std`` per output.

    Attributes
    ----------
    names
        Target names in output order, e.g. ``("Om", "s8")``.
    mean, std
        Per-output mean and standard deviation (physical units of each target), shape ``(n,)``.
    """

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, labels: np.ndarray, names: Sequence[str] = TARGETS) -> LabelScaler:
        """Fit the scaler to ``labels`` of shape ``(n_samples, n_outputs)``."""
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != len(names) or labels.shape[0] < 2:
            raise InputError(
                "labels", f"need >= 2 samples of {len(names)} targets, got shape {labels.shape}"
            )
        std = labels.std(axis=0)
        if not np.all(std > 0):
            flat = [n for n, s in zip(names, std, strict=True) if not s > 0]
            raise InputError("labels", f"target(s) {flat} are constant over the train split")
        return cls(tuple(names), labels.mean(axis=0), std)

    def transform(self, labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Physical units -> standardised, for numpy arrays or tensors of shape ``(..., n)``."""
        mean, std = self._as(labels)
        return (labels - mean) / std

    def inverse_transform(
        self, standardised: np.ndarray | torch.Tensor
    ) -> np.ndarray | torch.Tensor:
        """Standardised -> physical units, for numpy arrays or tensors of shape ``(..., n)``."""
        mean, std = self._as(standardised)
        return standardised * std + mean

    def _as(self, like: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        if isinstance(like, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.std, dtype=like.dtype, device=like.device),
            )
        return self.mean, self.std

    def state_dict(self) -> dict[str, list]:
        """JSON-serialisable state (lists of floats), for the sidecar of the trained weights."""
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, list]) -> LabelScaler:
        """Inverse of :meth:`state_dict`."""
        try:
            return cls(
                tuple(state["names"]),
                np.asarray(state["mean"], dtype=np.float64),
                np.asarray(state["std"], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("label_scaler", f"malformed label scaler state ({exc})") from None
