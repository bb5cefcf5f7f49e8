"""What a faithfulness evaluation reads: the models under test and the maps, checked.

The backbone (and the X-DNN twin, for X-Gradient) must have been trained on the patch store the
explanations were made from, and the backbone must be the one the SOP model wraps (SOP reuses
its label scaler); the maps are a subset of the explained maps fixed by the seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from cosmo_sop.errors import InputError
from cosmo_sop.explain import kappa_rows
from cosmo_sop.faithfulness.options import Settings
from cosmo_sop.layout import SIDECAR, WEIGHTS
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.trained import check_provenance, load_backbone, load_sop
from cosmo_sop.training.data import PatchData


@dataclass(frozen=True)
class Models:
    """The models under test: the backbone with its label scaler, the X-DNN twin (None unless
    X-Gradient is evaluated) and the SOP model (None unless SOP is scored on itself)."""

    backbone: torch.nn.Module
    scaler: LabelScaler
    xdnn: torch.nn.Module | None
    sop: torch.nn.Module | None = None


class SOPScorer:
    """The SOP model as the model under test: ``SumOfParts.forward`` of the perturbed maps,
    with each row's segments in segments mode (the engine passes the map of every row)."""

    takes_maps = True

    def __init__(self, model: torch.nn.Module, segments: torch.Tensor | None) -> None:
        self.model = model.eval()
        self.segments = segments if getattr(model, "tokens", "patches") == "segments" else None

    def __call__(self, batch: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        segments = None if self.segments is None else self.segments[maps.cpu()]
        return self.model(batch, segments)


def load_models(
    backbone_dir: str | os.PathLike,
    xdnn_dir: str | os.PathLike | None,
    methods: Sequence[str],
    data: PatchData,
    explanations: xr.Dataset,
    explanations_store: str | os.PathLike,
    sop_dir: str | os.PathLike | None = None,
) -> Models:
    """The backbone, (for X-Gradient) the X-DNN and (with ``sop_dir``) the SOP model, checked
    against the data and the SOP model's label scaler."""
    backbone, scaler = _load_checked(backbone_dir, data, explanations, explanations_store)
    sop = None
    if sop_dir is not None:
        trained = load_sop(sop_dir)
        check_provenance(trained.sidecar, data, Path(sop_dir) / WEIGHTS)
        same = np.allclose(trained.scaler.mean, scaler.mean) and np.allclose(
            trained.scaler.std, scaler.std
        )
        if not same:
            raise InputError(Path(sop_dir) / WEIGHTS, "does not wrap the backbone given")
        sop = trained.model.eval()
    xdnn = None
    if "x_gradient" in methods:
        if xdnn_dir is None:
            raise InputError("argument 'xdnn_dir'", "x_gradient needs the X-DNN run folder")
        xdnn, _ = _load_checked(xdnn_dir, data, None, explanations_store, kinds=("xdnn",))
    outputs = [str(o) for o in explanations["output"].values]
    if list(scaler.names) != outputs:
        raise InputError(
            Path(backbone_dir) / SIDECAR,
            f"predicts {list(scaler.names)}, the explanations hold {outputs}",
        )
    return Models(backbone, scaler, xdnn, sop)


def _load_checked(
    run_dir: str | os.PathLike,
    data: PatchData,
    explanations: xr.Dataset | None,
    explanations_store: str | os.PathLike,
    kinds: tuple[str, ...] = ("backbone",),
) -> tuple[torch.nn.Module, LabelScaler]:
    """A trained backbone or X-DNN, refused if trained on other data than the patch store."""
    model, sidecar = load_backbone(run_dir)
    where = Path(run_dir) / WEIGHTS
    kind = sidecar["model_config"]["kind"]
    if kind not in kinds:
        raise InputError(where, f"holds a {kind!r} model, expected {' or '.join(kinds)}")
    check_provenance(sidecar, data, where)
    scaler = LabelScaler.from_state_dict(sidecar["label_scaler"])
    made_with = None if explanations is None else explanations.attrs.get("label_scaler")
    if made_with is not None:
        # SOP reuses its backbone's label scaler: a different one means another backbone.
        theirs = LabelScaler.from_state_dict(json.loads(made_with))
        if not (np.allclose(theirs.mean, scaler.mean) and np.allclose(theirs.std, scaler.std)):
            raise InputError(
                where,
                f"is not the backbone of the SOP model behind {explanations_store} "
                "(its label scaler differs)",
            )
    return model, scaler


@dataclass(frozen=True)
class Maps:
    """The maps evaluated, with SOP's explanation of each, in store order."""

    chosen: np.ndarray  # rows of the explanation store
    rows: np.ndarray  # rows of the patch store
    outputs: list[str]
    x: torch.Tensor  # (N, C, H, W) kappa
    segments: torch.Tensor | None  # (N, H, W) labels
    labels: np.ndarray  # (N, n_outputs) standardised
    masks: np.ndarray  # (N, m, H, W) bool
    scores: np.ndarray  # (N, m, n_outputs) float64
    valid: np.ndarray  # (N, m) bool


def chosen_maps(
    explanations: xr.Dataset, data: PatchData, scaler: LabelScaler, settings: Settings
) -> Maps:
    """A subset of ``n_maps`` explained maps fixed by the seed, kept in store order."""
    n_total = int(explanations.sizes["sample"])
    chosen = np.arange(n_total)
    if settings.n_maps < n_total:
        rng = np.random.default_rng([settings.seed, n_total])
        chosen = np.sort(rng.choice(n_total, settings.n_maps, replace=False))
    subset = explanations.isel(sample=chosen)
    rows = np.asarray(subset["store_index"].values)
    segments = None
    if data.seg_ds is not None:
        segments = torch.from_numpy(np.asarray(data.seg_ds["segments"].isel(sample=rows).values))
    return Maps(
        chosen=chosen,
        rows=rows,
        outputs=[str(o) for o in explanations["output"].values],
        x=torch.from_numpy(kappa_rows(data, rows)),
        segments=segments,
        labels=np.asarray(scaler.transform(np.asarray(subset["target"].values, np.float64))),
        masks=np.asarray(subset["masks"].values),
        scores=np.asarray(subset["scores"].values, dtype=np.float64),
        valid=np.asarray(subset["valid"].values),
    )
