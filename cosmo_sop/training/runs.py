"""Training the workflow's models: the CNN backbone, its X-DNN twin, the ViT, and SOP.

The rules ``train_backbone`` (backbone and xdnn), ``train_vit_maps_backbone`` and ``train_sop`` call :func:`train_backbone` and
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

Launched by ``torchrun`` (config key ``training.gpus`` above 1), every process trains (see
:mod:`cosmo_sop.training.distributed`); process 0 alone evaluates the test split and writes the
run folder while the others wait, and every process returns the test metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.faithfulness.ranks import contribution_sparsity, group_contributions
from cosmo_sop.faithfulness.substrates import substrate_prediction
from cosmo_sop.layout import TEST_METRICS, TEST_PREDICTIONS, WEIGHTS
from cosmo_sop.models.architectures import Architecture, build_backbone
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.trained import check_provenance, load_backbone
from cosmo_sop.storage import atomic_path, read_json, write_json
from cosmo_sop.training import distributed
from cosmo_sop.training.comparison import mse_ratio_to_backbone, read_test_predictions
from cosmo_sop.training.data import SPLITS, PatchData
from cosmo_sop.training.evaluation import Predict, evaluate
from cosmo_sop.training.floor import random_group_floor
from cosmo_sop.training.loop import derived_seed, fit

#: Purpose of the derived seed of model initialisation (public: the structures stage rebuilds
#: SOP at initialisation as a null model).
INIT_PURPOSE = 101
#: Purposes of derived seeds: the floor's random groups, the bootstrap.
_FLOOR, _BOOTSTRAP = 102, 103


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


def sop_model_settings(sop: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config's ``sop`` section that build the model (``SumOfParts.from_backbone``
    arguments, ``encoder_blocks`` included); the others say how to train and evaluate it."""
    return {k: v for k, v in sop.items() if k not in _SOP_RUN_KEYS}


#: Keys of the ``sop`` section about the run rather than the model.
_SOP_RUN_KEYS = ("training", "max_train_maps", "n_boot", "sweep_keep_fractions")


def untrained_sop(
    backbone: torch.nn.Module, input_shape: tuple[int, ...], config: dict[str, Any]
) -> SumOfParts:
    """The config's SOP around ``backbone`` for inputs (C, H, W), before training: initialised
    from the config seed, as :func:`train_sop` starts it."""
    settings = sop_model_settings(config["sop"])
    encoder_blocks = settings.pop("encoder_blocks")
    return _seeded_init(
        config["seed"],
        lambda: SumOfParts.from_backbone(backbone, input_shape, encoder_blocks, **settings),
    )


def ratio_bootstrap_seed(config: dict[str, Any]) -> int:
    """Seed of the cosmology bootstrap of SOP's MSE ratio to its backbone in the test metrics."""
    return derived_seed(config["seed"], _BOOTSTRAP)


def _seeded_init(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    # Initialise from the config seed without touching the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, INIT_PURPOSE))
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
    architecture: Architecture = "cnn",
    restart_stale: bool = False,
) -> dict[str, Any]:
    """Train the CNN backbone (or its X-DNN twin, or a ViT) on a patch store.

    Parameters
    ----------
    patches
        Patch store of one noise level (``kappa(sample, bin, y, x)`` with splits).
    run_dir
        Run folder; an interrupted run resumes from its checkpoint.
    config
        Validated workflow config (sections ``seed``, ``training``, and ``backbone`` for the
        CNN or ``vit`` for the ViT).
    bias_free
        Train the X-DNN: no biases, no BatchNorm, positively homogeneous (CNN only).
    architecture
        ``"cnn"`` or ``"vit"`` (:mod:`cosmo_sop.models.architectures`).
    restart_stale
        Discard a checkpoint of another config or data in ``run_dir`` instead of refusing it.

    Returns
    -------
    dict
        The test metrics, also written to ``run_dir/test_metrics.json``.
    """
    with distributed.session(config["training"]["device"]):
        return _train_backbone(patches, run_dir, config, bias_free, architecture, restart_stale)


def _train_backbone(
    patches: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    bias_free: bool,
    architecture: Architecture,
    restart_stale: bool,
) -> dict[str, Any]:
    data = PatchData(patches)
    _require_splits(data)
    scaler = data.scaler()
    n_bins, size = data.ds.sizes["bin"], data.ds.sizes["y"]
    n_outputs = len(scaler.names)
    if bias_free:
        if architecture != "cnn":
            raise ValueError(f"only the CNN has an X-DNN twin, not architecture {architecture!r}")
        settings = {k: v for k, v in config["backbone"].items() if k != "batchnorm"}
        build = lambda: ConvRegressor.xdnn(  # noqa: E731
            n_bins, n_outputs=n_outputs, input_size=size, **settings
        )
    else:
        section = config["backbone" if architecture == "cnn" else "vit"]
        build = lambda: build_backbone(architecture, n_bins, n_outputs, size, section)  # noqa: E731
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
    with distributed.session(config["training"]["device"]):
        return _train_sop(patches, segments, backbone_dir, run_dir, config, restart_stale)


def _train_sop(
    patches: str | os.PathLike,
    segments: str | os.PathLike | None,
    backbone_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    restart_stale: bool,
) -> dict[str, Any]:
    backbone, backbone_sidecar = load_backbone(backbone_dir)
    if config["sop"]["tokens"] == "segments" and segments is None:
        raise InputError(
            "config key 'sop.tokens'", "'segments' needs a segments store (--segments)"
        )
    data = PatchData(patches, segments if config["sop"]["tokens"] == "segments" else None)
    check_provenance(backbone_sidecar, data, Path(backbone_dir) / WEIGHTS)
    _require_splits(data)
    scaler = LabelScaler.from_state_dict(backbone_sidecar["label_scaler"])

    input_shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    model = untrained_sop(backbone, input_shape, config)

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
    backbone_predictions = Path(backbone_dir) / TEST_PREDICTIONS
    return _write_test_metrics(
        model, data, scaler, predict_sop, run_dir, config, backbone_predictions
    )


def _write_test_metrics(
    model: torch.nn.Module,
    data: PatchData,
    scaler: LabelScaler,
    predict: Predict,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    backbone_predictions: Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the test split; write ``test_metrics.json`` and the predictions.

    For SOP, also its group statistics, the random-group floor and, from the backbone's
    ``backbone_predictions``, the MSE ratio to the backbone with cosmology-bootstrap CIs.

    In a parallel run, process 0 evaluates and writes while the others wait, then read them.
    """
    if distributed.current().main:
        metrics = _evaluate_test(
            model, data, scaler, predict, run_dir, config, backbone_predictions
        )
    distributed.barrier()
    return metrics if distributed.current().main else read_json(Path(run_dir) / TEST_METRICS)


def _evaluate_test(
    model: torch.nn.Module,
    data: PatchData,
    scaler: LabelScaler,
    predict: Predict,
    run_dir: str | os.PathLike,
    config: dict[str, Any],
    backbone_predictions: Path | None,
) -> dict[str, Any]:
    test = data.dataset("test", scaler, config["training"]["memory_budget_gib"])
    batch_size = config["training"]["eval_batch_size"]
    if isinstance(model, SumOfParts):
        # The schema's mass: train_sop does not read the evaluation section, whose changes must
        # not retrain SOP; the record names the mass used.
        predict = GroupStatistics(defaults("evaluation")["sparsity_mass"])
    result = evaluate(model, test, predict, batch_size=batch_size)
    metrics = {
        "n_test_maps": len(test),
        "mse_standardised": result["mse_standardised"],
        "mse": result["mse"],
        "noise_level": data.provenance().get("noise_level"),
    }
    if isinstance(model, SumOfParts):
        metrics["groups"] = predict.summary(model, result["names"])
        metrics["versus_backbone"] = mse_ratio_to_backbone(
            result,
            read_test_predictions(backbone_predictions),
            data.ds["cosmology"].values[result["sample"]],
            config["sop"]["n_boot"],
            ratio_bootstrap_seed(config),
            backbone_predictions,
        )
        metrics["floor"] = random_group_floor(
            model, test, batch_size, derived_seed(config["seed"], _FLOOR)
        )
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


class GroupStatistics:
    """SOP's prediction of a batch (a :data:`~cosmo_sop.training.evaluation.Predict`) that also
    sums its group statistics, so the test split's SOP pass serves both.

    Per output: groups with non-zero score per map, their mean size, and SOP's sparsity. Sizes
    are fractions of the map's pixels, averaged over the groups with non-zero score. Sparsity is
    the faithfulness table's (:func:`~cosmo_sop.faithfulness.ranks.contribution_sparsity`): the
    fraction of a map's pixels holding ``sparsity_mass`` of its attribution
    sum_i |c_i (y_i - h(0))| over the groups holding the pixel (standardised units, h(0) the
    backbone on the zero map SOP masks with), averaged over maps.
    """

    def __init__(self, sparsity_mass: float) -> None:
        self.sparsity_mass = sparsity_mass
        self.n_nonzero, self.size_sum, self.sparsity_sum, self.n_maps = 0.0, 0.0, 0.0, 0

    def __call__(self, model: SumOfParts, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kappa = batch["kappa"]
        parts = model.explain(kappa, batch["segments"] if model.tokens == "segments" else None)
        nonzero = parts.scores > 0  # (B, m, n_out)
        fraction = parts.masks.float().mean(dim=(2, 3))  # (B, m)
        self.n_nonzero = self.n_nonzero + nonzero.sum(dim=(0, 1)).double().cpu()
        size = (nonzero * fraction[..., None]).sum(dim=(0, 1)).double().cpu()
        self.size_sum = self.size_sum + size
        contributions = group_contributions(
            parts.scores.cpu(),
            parts.partial.cpu(),
            substrate_prediction(model.backbone, kappa),
            parts.valid.cpu(),
        )
        sparsity = contribution_sparsity(parts.masks.cpu(), contributions, self.sparsity_mass)
        self.sparsity_sum = self.sparsity_sum + torch.from_numpy(sparsity.sum(0))
        self.n_maps += kappa.shape[0]
        return parts.prediction

    def summary(self, model: SumOfParts, names: list[str]) -> dict[str, Any]:
        """The statistics of the maps predicted so far, per output name."""
        per_output = lambda total: dict(zip(names, total.tolist(), strict=True))  # noqa: E731
        return {
            "n_maps": self.n_maps,
            "n_groups": model.config["n_groups"],
            "tokens": model.config["tokens"],
            "keep_fraction": model.config["keep_fraction"],
            "nonzero_groups_per_map": per_output(self.n_nonzero / self.n_maps),
            "mean_group_size": per_output(self.size_sum / self.n_nonzero),
            "sparsity": per_output(self.sparsity_sum / self.n_maps),
            "sparsity_mass": self.sparsity_mass,
        }
