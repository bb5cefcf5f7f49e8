"""Trained models read back from their run folders: the backbone (or X-DNN) and SOP.

A run folder (written by :func:`cosmo_sop.training.train_backbone` or
:func:`~cosmo_sop.training.train_sop`) holds the weights and their sidecar, which names the
model's kind and configuration, its label scaler and the data it was trained on.
:func:`load_sop` gives a trained SOP model that predicts (Omega_m, sigma_8) of any map together
with the groups and weights that make up the prediction exactly::

    from cosmo_sop.models import load_sop

    sop = load_sop("results/noiseless/models/sop")
    parts = sop.explain(kappa)  # kappa: (C, H, W) or (N, C, H, W)
    parts.prediction  # (N, 2): Omega_m, sigma_8
    (parts.scores * parts.partial).sum(axis=1)  # the same numbers
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cosmo_sop.errors import InputError
from cosmo_sop.layout import SIDECAR, WEIGHTS
from cosmo_sop.models.architectures import backbone_from_config
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.weights import load_sidecar, load_weights
from cosmo_sop.storage import MAX_MAGNITUDE

if TYPE_CHECKING:
    from cosmo_sop.training.data import PatchData

#: Settings of the training data that a model must share with the data it is applied to.
_PROVENANCE_KEYS = ("noise_level", "noise", "patch_size", "bins", "pixel_scale_arcmin")


def _read_run(run_dir: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[dict[str, Any], dict]:
    weights = Path(run_dir) / WEIGHTS
    if not weights.is_file():
        raise InputError(weights, "no trained model here (train it first)")
    sidecar = load_sidecar(weights)
    kind = (sidecar.get("model_config") or {}).get("kind")
    if kind not in kinds:
        expected = " or ".join(kinds)
        raise InputError(
            weights.with_suffix(".json"), f"holds a {kind!r} model, expected {expected}"
        )
    return sidecar, load_weights(weights)


def load_backbone(run_dir: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A trained backbone (CNN, X-DNN or ViT) in eval mode, frozen, and its sidecar.

    Raises
    ------
    InputError
        If ``run_dir`` holds no trained model, or one of another kind.
    """
    sidecar, state = _read_run(run_dir, ("backbone", "xdnn"))
    where = Path(run_dir) / SIDECAR
    model = backbone_from_config(sidecar["model_config"]["backbone"], where)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), sidecar


def check_provenance(sidecar: dict[str, Any], data: PatchData, where: str | os.PathLike) -> None:
    """Refuse a model trained on another noise level, segmentation, patch geometry or bins.

    Raises
    ------
    InputError
        Naming ``where`` (the model), the store and the first setting that differs.
    """
    trained = sidecar["data"]["train"]
    now = data.provenance()
    keys = list(_PROVENANCE_KEYS)
    if trained.get("segmentation") is not None:
        keys.append("segmentation")
    for key in keys:
        if key in trained and trained.get(key) != now.get(key):
            raise InputError(
                where,
                f"was trained on data with {key} = {json.dumps(trained.get(key))}, but "
                f"{data.kappa_store} has {json.dumps(now.get(key))}; train a model for these data",
            )


@dataclass
class SOPExplanation:
    """SOP's prediction of (Omega_m, sigma_8) and its exact decomposition, in physical units.

    ``prediction == (scores * partial).sum(axis=1)`` holds exactly (up to float rounding):
    scores of each output sum to one over the groups, so the affine map from standardised to
    physical units passes through the sum.

    Attributes
    ----------
    prediction : ndarray, (N, 2)
        (Or logits (N, K) of a classifier, a model trained without a label scaler.)
    scores : ndarray, (N, m, 2)
        Group weights c_i >= 0 per output; most are exactly 0 (sparsemax).
    partial : ndarray, (N, m, 2)
        The backbone's prediction on each group's pixels alone (zero elsewhere).
    masks : ndarray of bool, (N, m, H, W)
    group_segments : list of list of ndarray
        Segment labels in each group (segment tokens), or None for patch tokens.
    valid : ndarray of bool, (N, m)
    names : tuple of str
        Output names, ``("Om", "s8")``.
    """

    prediction: np.ndarray
    scores: np.ndarray
    partial: np.ndarray
    masks: np.ndarray
    group_segments: list[list[np.ndarray]] | None
    valid: np.ndarray
    names: tuple[str, ...]


class TrainedSOP:
    """A trained SOP model with its label scaling and provenance; see :func:`load_sop`."""

    def __init__(
        self, model: SumOfParts, scaler: LabelScaler | None, sidecar: dict[str, Any]
    ) -> None:
        self.model = model.eval()
        self.scaler = scaler
        self.sidecar = sidecar

    @property
    def tokens(self) -> str:
        """``"patches"`` or ``"segments"``: what the model's groups are made of."""
        return self.model.config["tokens"]

    @torch.inference_mode()
    def explain(self, kappa: np.ndarray, segments: np.ndarray | None = None) -> SOPExplanation:
        """Predict (Omega_m, sigma_8) of maps and return the groups and weights behind it.

        Parameters
        ----------
        kappa
            Convergence patches, (C, H, W) or (N, C, H, W), physical units.
        segments
            Integer segment labels, (H, W) or (N, H, W); required for segment tokens.

        Raises
        ------
        InputError
            If ``kappa`` is not a (C, H, W) or (N, C, H, W) array of numbers, or holds NaN,
            infinity or values above :data:`cosmo_sop.storage.MAX_MAGNITUDE` in magnitude
            (which the attention's sparsemax cannot handle), or ``segments`` is not an
            integer array.
        """
        x = torch.as_tensor(_checked_maps(kappa))
        if x.ndim == 3:
            x = x[None]
        seg = None
        if segments is not None:
            seg = torch.as_tensor(_checked_segments(segments))
            seg = seg[None] if seg.ndim == 2 else seg
        elif self.tokens == "segments":
            raise ValueError("this SOP model groups watershed segments: pass segments=")
        parts = self.model.explain(x, seg)
        if self.scaler is None:  # a classifier (image, text task): logits as they are
            mean, std = np.zeros(self.model.n_outputs), np.ones(self.model.n_outputs)
            names = tuple(f"class {k}" for k in range(self.model.n_outputs))
        else:
            mean, std = (
                np.asarray(v, dtype=np.float64) for v in (self.scaler.mean, self.scaler.std)
            )
            names = tuple(self.scaler.names)
        partial = parts.partial.double().numpy() * std + mean
        valid = parts.valid.numpy()
        partial[~valid] = 0.0  # unfilled groups have zero score and contribute nothing
        group_segments = None
        if seg is not None and self.tokens == "segments":
            tokens = parts.tokens.numpy()
            group_segments = [[np.flatnonzero(t) for t in groups] for groups in tokens]
        return SOPExplanation(
            prediction=parts.prediction.double().numpy() * std + mean,
            scores=parts.scores.double().numpy(),
            partial=partial,
            masks=parts.masks.numpy(),
            group_segments=group_segments,
            valid=valid,
            names=names,
        )

    def predict(self, kappa: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) predictions of (Omega_m, sigma_8) in physical units."""
        return self.explain(kappa, segments).prediction


def _checked_maps(kappa: Any) -> np.ndarray:
    """``kappa`` as float32 after the checks of :meth:`TrainedSOP.explain`, named ``kappa``.

    A NaN or a huge pixel otherwise fails deep inside the attention (an index error in
    entmax) with nothing that points at the input; the stores get the same checks
    (:func:`cosmo_sop.storage.open_zarr`).
    """
    try:
        array = np.asarray(kappa, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError("kappa", f"not an array of numbers ({exc})") from None
    if array.ndim not in (3, 4) or array.size == 0:
        raise InputError(
            "kappa", f"expected maps of shape (C, H, W) or (N, C, H, W), got {array.shape}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InputError(
            "kappa",
            f"holds NaN or infinity in {int((~finite).sum())} pixel(s), first at index {first}",
        )
    peak = float(np.abs(array).max())
    if peak > MAX_MAGNITUDE:
        raise InputError(
            "kappa",
            f"holds values above {MAX_MAGNITUDE:g} in magnitude (up to {peak:.3g}); "
            "convergence maps are of order 0.01: is the map mis-scaled?",
        )
    return array.astype(np.float32)


def _checked_segments(segments: Any) -> np.ndarray:
    """``segments`` as int64, refusing what is not an array of whole numbers."""
    try:
        array = np.asarray(segments)
    except (TypeError, ValueError) as exc:
        raise InputError("segments", f"not an array of labels ({exc})") from None
    if array.dtype.kind == "f" and not (
        np.isfinite(array).all() and (array == np.round(array)).all()
    ):
        raise InputError("segments", "holds NaN, infinity or fractions; expected integer labels")
    if array.dtype.kind not in "iubf":
        raise InputError("segments", f"expected integer labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def load_sop(run_dir: str | os.PathLike) -> TrainedSOP:
    """Load a trained SOP model (folder written by ``cosmo-sop train-sop``).

    Raises
    ------
    InputError
        If ``run_dir`` holds no trained model, or one that is not SOP.
    """
    sidecar, state = _read_run(run_dir, ("sop",))
    where = Path(run_dir) / SIDECAR
    config = sidecar["model_config"]
    backbone = backbone_from_config(config["backbone"], where)
    model = SumOfParts.from_config(backbone, config["sop"], where)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # e.g. weights of an older cosmo-sop's SOP
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise InputError(
            Path(run_dir) / WEIGHTS,
            f"weights do not fit this cosmo-sop's SOP model ({first}); retrain it",
        ) from None
    state = sidecar.get("label_scaler")
    scaler = None if state is None else LabelScaler.from_state_dict(state)
    return TrainedSOP(model, scaler, sidecar)
