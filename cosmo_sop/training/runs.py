"""Training the workflow's models: the CNN backbone, its X-DNN twin, and SOP.

The rules ``train_backbone``, ``train_xdnn`` and ``train_sop`` call :func:`train_backbone` and
:func:`train_sop`, which build the model from the config, train it with
:func:`cosmo_sop.training.loop.fit` and evaluate it on the test split. A trained model is a run
folder (:func:`cosmo_sop.layout.model_dir`)::

    model.safetensors   weights (SOP's include its frozen backbone)
    model.json          sidecar: model config, label scaler, training config, data provenance
    checkpoint.pt       resumable training state
    metrics.csv         one row per epoch
    test_metrics.json   written here: test-split MSE per parameter, and for SOP its group statistics
    test_predictions.npz  written here: the test split's predictions and targets

:func:`cosmo_sop.models.load_sop` and :func:`~cosmo_sop.models.load_backbone` read it back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop.errors import InputError
from cosmo_sop.layout import TEST_METRICS, TEST_PREDICTIONS, WEIGHTS
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.trained import check_provenance, load_backbone
from cosmo_sop.storage import atomic_path, write_json
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.data import SPLITS, PatchData
from cosmo_sop.training.evaluation import Predict, evaluate
from cosmo_sop.training.loop import derived_seed, fit

#: Purpose of the derived seed of model initialisation.
_INIT = 101


def predict_backbone(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``fit``'s prediction function of the backbone: the maps alone."""
    return model(batch["kappa"])


def predict_sop(model: SumOfParts, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``fit``'s prediction function of SOP: the maps and, for segment tokens, their segments."""
    return model(
        batch["kappa"], batch["segments"] if model.config["tokens"] == "segments" else None
    )


def fit_options(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options of :func:`cosmo_sop.training.loop.fit` from a validated config: its ``training``
    section, ``overrides`` (e.g. ``sop.training``) and the master ``seed``."""
    return {**config["training"], **(overrides or {}), "seed": config["seed"]}


def _seeded_init(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
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
    _require_splits(data)
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


def _require_splits(data: PatchData) -> None:
    """Refuse a store without train, val or test maps now, not once the training is done."""
    for split in SPLITS:
        data.indices(split)


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
        raise InputError(
            "config key 'sop.tokens'", "'segments' needs a segments store (--segments)"
        )
    data = PatchData(patches, segments if config["sop"]["tokens"] == "segments" else None)
    check_provenance(backbone_sidecar, data, Path(backbone_dir) / WEIGHTS)
    _require_splits(data)
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
    predict: Predict,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate ``model`` on the test split; write ``test_metrics.json`` and the predictions."""
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
    # Through a file object: np.savez would append .npz to the temporary name.
    with atomic_path(run_dir / TEST_PREDICTIONS) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            sample=result["sample"],
            predictions=result["predictions"],
            targets=result["targets"],
            names=np.asarray(result["names"]),
        )
    # Last: the workflow's declared output, so its presence means the run folder is complete.
    write_json(run_dir / TEST_METRICS, metrics)
    return metrics


@torch.inference_mode()
def group_statistics(
    model: SumOfParts, data: torch.utils.data.Dataset, batch_size: int
) -> dict[str, Any]:
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
