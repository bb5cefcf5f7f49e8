"""Training and loading the workflow's models: the CNN backbone, its X-DNN twin, and SOP.

A trained model is a run folder written by :func:`cosmo_sop.training.fit`::

    model.safetensors   weights (SOP's include its frozen backbone)
    model.json          sidecar: model config, label scaler, training config, data provenance
    checkpoint.pt       resumable training state
    metrics.csv         one row per epoch
    test_metrics.json   written here: test-split MSE per parameter, and for SOP its group statistics

In Python, :func:`load_sop` gives a trained SOP model that predicts (Omega_m, sigma_8) of any
map together with the groups and weights that make up the prediction exactly::

    from cosmo_sop.training.runs import load_sop
    sop = load_sop("results/noiseless/models/sop")
    parts = sop.explain(kappa)                  # kappa: (C, H, W) or (N, C, H, W)
    parts.prediction                            # (N, 2): Omega_m, sigma_8
    (parts.scores * parts.partial).sum(axis=1)  # the same numbers
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop.errors import InputError
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.storage import atomic_path
from cosmo_sop.training.data import EpochBatchSampler, LabelScaler, PatchData, collate_batch
from cosmo_sop.training.fit import derived_seed, evaluate, fit, load_sidecar, load_weights

WEIGHTS = "model.safetensors"
TEST_METRICS = "test_metrics.json"
#: Keys of the ``training`` config section that are not options of :func:`fit`.
_NOT_FIT_OPTIONS = ("memory_budget_gib", "gpus")
#: Purpose of the derived seed of model initialisation.
_INIT = 101


def predict_backbone(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``fit``'s prediction function of the backbone: the maps alone."""
    return model(batch["kappa"])


def predict_sop(model: SumOfParts, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``fit``'s prediction function of SOP: the maps and, for segment tokens, their segments."""
    return model(batch["kappa"], batch["segments"] if model.config["tokens"] == "segments" else None)


def fit_options(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options of :func:`cosmo_sop.training.fit` from a validated config."""
    options = {k: v for k, v in config["training"].items() if k not in _NOT_FIT_OPTIONS}
    return {**options, **(overrides or {}), "seed": config["seed"]}


def _seeded_init(seed: int, build):
    # Initialise from the config seed without touching the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, _INIT))
        return build()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_backbone(
    patches: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    *,
    bias_free: bool = False,
    restart_stale: bool = False,
) -> dict[str, Any]:
    """Train the CNN backbone (or, with ``bias_free``, its X-DNN twin) on a patch store.

    Parameters
    ----------
    patches
        Patch store of one noise level (``kappa(sample, bin, y, x)`` with splits).
    run_dir
        Run folder; an interrupted run resumes from its checkpoint.
    config
        Validated workflow config (sections ``seed``, ``backbone``, ``training``).
    bias_free
        Train the X-DNN: no biases, no BatchNorm, positively homogeneous.
    restart_stale
        Discard a checkpoint of another config or data in ``run_dir`` instead of refusing it.

    Returns
    -------
    dict
        The test metrics, also written to ``run_dir/test_metrics.json``.
    """
    data = PatchData(patches)
    scaler = data.scaler()
    n_bins, size = data.ds.sizes["bin"], data.ds.sizes["y"]
    architecture = dict(config["backbone"])
    if bias_free:
        architecture.pop("batchnorm")
        build = lambda: ConvRegressor.xdnn(n_bins, input_size=size, **architecture)  # noqa: E731
    else:
        build = lambda: ConvRegressor(n_bins, input_size=size, **architecture)  # noqa: E731
    model = _seeded_init(config["seed"], build)
    model.scale.set_(data.bin_std("train"))

    budget = config["training"]["memory_budget_gib"]
    fit(
        model,
        data.dataset("train", scaler, budget),
        data.dataset("val", scaler, budget),
        predict_backbone,
        fit_options(config),
        run_dir,
        model_config={"kind": "xdnn" if bias_free else "backbone", "backbone": model.config},
        restart_stale=restart_stale,
    )
    return _write_test_metrics(model, data, scaler, predict_backbone, run_dir, config)


def train_sop(
    patches: str | os.PathLike,
    segments: str | os.PathLike | None,
    backbone_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    *,
    restart_stale: bool = False,
) -> dict[str, Any]:
    """Train a Sum-of-Parts model around a trained, frozen backbone.

    The backbone's label scaler is reused, so SOP predicts in the backbone's units, and the
    backbone must have been trained on the same noise level and geometry (checked). The
    segments store is needed for segment tokens (config ``sop.tokens``) only.

    Returns
    -------
    dict
        The test metrics with SOP's group statistics, also written to
        ``run_dir/test_metrics.json``.
    """
    backbone, backbone_sidecar = load_backbone(backbone_dir)
    if config["sop"]["tokens"] == "segments" and segments is None:
        raise InputError("config key 'sop.tokens'", "'segments' needs a segments store (--segments)")
    data = PatchData(patches, segments if config["sop"]["tokens"] == "segments" else None)
    check_provenance(backbone_sidecar, data, Path(backbone_dir) / WEIGHTS)
    scaler = LabelScaler.from_state_dict(backbone_sidecar["label_scaler"])

    settings = {k: v for k, v in config["sop"].items() if k not in ("training", "max_train_maps")}
    encoder_blocks = settings.pop("encoder_blocks")
    input_shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    model = _seeded_init(
        config["seed"],
        lambda: SumOfParts.from_backbone(backbone, input_shape, encoder_blocks, **settings),
    )

    budget = config["training"]["memory_budget_gib"]
    train = data.dataset(
        "train", scaler, budget, max_samples=config["sop"]["max_train_maps"], seed=config["seed"]
    )
    fit(
        model,
        train,
        data.dataset("val", scaler, budget),
        predict_sop,
        # SOP's groups are its own masks: no random masking on top of them.
        fit_options(config, {**config["sop"]["training"], "mask_probability": 0.0}),
        run_dir,
        model_config={"kind": "sop", "backbone": backbone.config, "sop": model.config},
        restart_stale=restart_stale,
    )
    return _write_test_metrics(model, data, scaler, predict_sop, run_dir, config)


def _write_test_metrics(
    model: torch.nn.Module,
    data: PatchData,
    scaler: LabelScaler,
    predict,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
) -> dict[str, Any]:
    test = data.dataset("test", scaler, config["training"]["memory_budget_gib"])
    result = evaluate(model, test, predict, batch_size=config["training"]["eval_batch_size"])
    metrics = {
        "n_test_maps": len(test),
        "mse_standardised": result["mse_standardised"],
        "mse": result["mse"],
        "noise_level": data.provenance().get("noise_level"),
    }
    if isinstance(model, SumOfParts):
        metrics["groups"] = group_statistics(model, test, config["training"]["eval_batch_size"])
    run_dir = Path(run_dir)
    with atomic_path(run_dir / TEST_METRICS) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with atomic_path(run_dir / "test_predictions.npz") as tmp:
        with open(tmp, "wb") as f:  # np.savez would append .npz to the temporary name
            np.savez(
                f,
                sample=result["sample"],
                predictions=result["predictions"],
                targets=result["targets"],
                names=np.asarray(result["names"]),
            )
    return metrics


@torch.inference_mode()
def group_statistics(model: SumOfParts, data: torch.utils.data.Dataset, batch_size: int) -> dict[str, Any]:
    """Per output: mean number of groups with non-zero score per map, and their mean size.

    Sizes are fractions of the map's pixels, averaged over the groups with non-zero score.
    """
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=EpochBatchSampler(len(data), batch_size, shuffle=False),
        collate_fn=collate_batch,
    )
    n_nonzero, size_sum, n_maps = 0.0, 0.0, 0
    for batch in loader:
        kappa = batch["kappa"].to(device)
        segments = batch.get("segments")
        parts = model.explain(kappa, None if segments is None else segments.to(device))
        nonzero = parts.scores > 0  # (B, m, n_out)
        fraction = parts.masks.float().mean(dim=(2, 3))  # (B, m)
        n_nonzero = n_nonzero + nonzero.sum(dim=(0, 1)).double()
        size_sum = size_sum + (nonzero * fraction[..., None]).sum(dim=(0, 1)).double()
        n_maps += kappa.shape[0]
    names = list(data.scaler.names)
    return {
        "n_maps": n_maps,
        "n_groups": model.config["n_groups"],
        "nonzero_groups_per_map": dict(zip(names, (n_nonzero / n_maps).tolist(), strict=True)),
        "mean_group_size": dict(zip(names, (size_sum / n_nonzero).tolist(), strict=True)),
    }


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_run(run_dir: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[dict[str, Any], dict]:
    weights = Path(run_dir) / WEIGHTS
    if not weights.is_file():
        raise InputError(weights, "no trained model here (train it first)")
    sidecar = load_sidecar(weights)
    kind = (sidecar.get("model_config") or {}).get("kind")
    if kind not in kinds:
        raise InputError(weights.with_suffix(".json"), f"holds a {kind!r} model, expected {' or '.join(kinds)}")
    return sidecar, load_weights(weights)


def load_backbone(run_dir: str | os.PathLike) -> tuple[ConvRegressor, dict[str, Any]]:
    """A trained backbone (or X-DNN) in eval mode, frozen, and its sidecar."""
    sidecar, state = _read_run(run_dir, ("backbone", "xdnn"))
    where = Path(run_dir) / "model.json"
    model = ConvRegressor.from_config(sidecar["model_config"]["backbone"], where)
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
    keys = ["noise_level", "noise", "patch_size", "bins", "pixel_scale_arcmin"]
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

    def __init__(self, model: SumOfParts, scaler: LabelScaler, sidecar: dict[str, Any]) -> None:
        self.model = model.eval()
        self.scaler = scaler
        self.sidecar = sidecar

    @property
    def tokens(self) -> str:
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
        """
        x = torch.as_tensor(np.asarray(kappa, dtype=np.float32))
        single = x.ndim == 3
        if single:
            x = x[None]
        seg = None
        if segments is not None:
            seg = torch.as_tensor(np.asarray(segments, dtype=np.int64))
            seg = seg[None] if seg.ndim == 2 else seg
        elif self.tokens == "segments":
            raise ValueError("this SOP model groups watershed segments: pass segments=")
        parts = self.model.explain(x, seg)
        mean, std = (np.asarray(v, dtype=np.float64) for v in (self.scaler.mean, self.scaler.std))
        partial = parts.partial.double().numpy() * std + mean
        scores = parts.scores.double().numpy()
        valid = parts.valid.numpy()
        partial[~valid] = 0.0  # unfilled groups have zero score and contribute nothing
        group_segments = None
        if seg is not None and self.tokens == "segments":
            tokens = parts.tokens.numpy()
            group_segments = [[np.flatnonzero(t) for t in groups] for groups in tokens]
        return SOPExplanation(
            prediction=parts.prediction.double().numpy() * std + mean,
            scores=scores,
            partial=partial,
            masks=parts.masks.numpy(),
            group_segments=group_segments,
            valid=valid,
            names=tuple(self.scaler.names),
        )

    def predict(self, kappa: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) predictions of (Omega_m, sigma_8) in physical units."""
        return self.explain(kappa, segments).prediction


def load_sop(run_dir: str | os.PathLike) -> TrainedSOP:
    """Load a trained SOP model (folder written by ``cosmo-sop train-sop``)."""
    sidecar, state = _read_run(run_dir, ("sop",))
    where = Path(run_dir) / "model.json"
    config = sidecar["model_config"]
    backbone = ConvRegressor.from_config(config["backbone"], where)
    model = SumOfParts.from_config(backbone, config["sop"], where)
    model.load_state_dict(state)
    return TrainedSOP(model, LabelScaler.from_state_dict(sidecar["label_scaler"]), sidecar)
