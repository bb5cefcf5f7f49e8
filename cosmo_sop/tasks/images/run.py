"""Task ``vit_images``: SOP around a ViT image classifier, scored against exact object masks.

:func:`run` makes the images (the generated shapes of :mod:`.synthetic`, or ImageNet-S folders
with ``vit_images.source: imagenet_s``), trains a :class:`~cosmo_sop.models.vit.VisionTransformer`
classifier from scratch with the project's trainer (cross-entropy; with random patches blanked
for a share ``training.mask_probability`` of the images, so that the backbone has seen partial
images like SOP's groups), wraps it in a Sum-of-Parts model whose tokens are the ViT's patches,
trains that, and scores on the test images: accuracy of both, how well SOP's top group and the
baselines' top pixels find the object (:mod:`.metrics`), and insertion/deletion on the
backbone. It writes into ``output_dir``::

    models/backbone/   the ViT (fit's run folder: checkpoint, metrics.csv, weights + sidecar)
    models/sop/        the SOP model
    examples.png       test images: object mask, SOP's top group, the best baseline's top pixels
    task_metrics.json  settings, summary numbers, tables (written last)

Rerunning with the same config resumes an interrupted training from its checkpoint (and
repeats the rest, which is fast); a changed config or data retrains from scratch.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop.config import defaults, task_config, with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.vit import VisionTransformer
from cosmo_sop.storage import write_json
from cosmo_sop.tasks.images import metrics as M
from cosmo_sop.tasks.images import tables as T
from cosmo_sop.tasks.images.data import ImageDataset, ImageSet, centred, channel_statistics
from cosmo_sop.tasks.images.explanations import baseline_importance, explain_sop
from cosmo_sop.tasks.images.figures import plot_examples
from cosmo_sop.tasks.images.imagenet_s import load_imagenet_s
from cosmo_sop.tasks.images.synthetic import generate
from cosmo_sop.training.loop import derived_seed, fit
from cosmo_sop.training.runs import sop_model_settings

TASK = "vit_images"
#: Config sections a ``vit_images`` key overrides.
SECTIONS = ("vit", "training", "sop", "evaluation")
#: The baselines that can explain a ViT (X-Gradient needs a bias-free twin, which a ViT lacks).
BASELINES = ("integrated_gradients", "gradient_shap", "kernel_shap", "lime", "saliency")
#: Purposes of derived seeds.
_DATA, _BACKBONE, _SOP, _SUBSET, _TIES, _BOOT = range(6)
FIGURE = "examples.png"


def settings_of(config: dict[str, Any] | None) -> dict[str, Any]:
    """The task's settings: its section with defaults, and the vit, training, sop and evaluation
    sections with the task's overrides merged in, each validated by the schema.

    Raises
    ------
    InputError
        Naming the config key of a bad value, an image size the ViT's patches do not tile, or a
        method that cannot explain a ViT.
    """
    config = dict(config or {})
    given = dict(config.get(TASK) or {})
    section = with_defaults(TASK, given, where=f"config key '{TASK}'")
    # The task's own overrides (its demo settings) stay under the ones a config gives, key by
    # key: vit_images.training: {epochs: 20} changes the epochs, not the augmentation too.
    schema = defaults(TASK)
    for name in SECTIONS:
        section[name] = task_config(
            {"seed": 0, name: schema[name], TASK: {name: given.get(name, {})}}, TASK, name
        )[name]
    base = {s: with_defaults(s, config.get(s), where=f"config key '{s}'") for s in SECTIONS}
    seed = int(config.get("seed", defaults("seed")))
    merged = task_config({"seed": seed, **base, TASK: section}, TASK, *SECTIONS)
    settings = {s: with_defaults(s, merged[s], where=f"config key '{TASK}.{s}'") for s in SECTIONS}
    settings["training"]["loss"] = "cross_entropy"
    size, patch = section["image_size"], settings["vit"]["patch_size"]
    if size % patch:
        raise InputError(
            f"config key '{TASK}.image_size'",
            f"{size} is not a multiple of the ViT's patch_size {patch}",
        )
    # SOP's tokens are the ViT's patches, whatever the sop section says.
    settings["sop"].update(tokens="patches", patch_tokens=size // patch)
    unusable = sorted(set(settings["evaluation"]["methods"]) - {"sop", *BASELINES})
    if unusable:
        raise InputError(
            f"config key '{TASK}.evaluation.methods'",
            f"{unusable} cannot explain a ViT (no bias-free twin); use {['sop', *BASELINES]}",
        )
    if section["source"] == "imagenet_s" and not section["root"]:
        raise InputError(f"config key '{TASK}.root'", "source 'imagenet_s' needs the folder")
    low, high = section["size_range"]
    if low > high:
        raise InputError(f"config key '{TASK}.size_range'", f"[{low}, {high}] is not increasing")
    return {"seed": seed, "task": section, **settings}


def run(config: dict[str, Any] | None, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the task and write its outputs into ``output_dir``; returns ``task_metrics.json``.

    Parameters
    ----------
    config
        A config: keys ``seed``, ``vit``, ``training``, ``sop``, ``evaluation`` and
        ``vit_images`` are read; absent ones take the schema's defaults.
    output_dir
        Folder of the models, the figure and ``task_metrics.json`` (created if needed).
    """
    start = time.perf_counter()
    cfg = settings_of(config)
    seed, task, evaluation = cfg["seed"], cfg["task"], cfg["evaluation"]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    splits = load_splits(task, seed)
    train = splits["train"]
    mean, std = channel_statistics(train.images)
    data = {
        name: ImageDataset(images, mean, _provenance(task, name, images, seed))
        for name, images in splits.items()
    }
    n_classes, size = len(train.class_names), train.image_size
    timings["data"] = time.perf_counter() - tick

    # -- backbone ---------------------------------------------------------------------------
    tick = time.perf_counter()
    backbone = _seeded(
        derived_seed(seed, _BACKBONE), lambda: VisionTransformer(3, n_classes, size, **cfg["vit"])
    )
    backbone.scale.set_(torch.from_numpy(std))
    training = dict(cfg["training"])
    if "mask_grid" not in task["training"]:
        training["mask_grid"] = backbone.grid  # the blanked cells are the ViT's patches
    fit(
        backbone,
        data["train"],
        data["val"],
        predict_images,
        {"seed": seed, **training},
        out / "models" / "backbone",
        model_config={"kind": "backbone", "backbone": backbone.config},
        restart_stale=True,
    )
    backbone.eval().requires_grad_(False)
    timings["backbone"] = time.perf_counter() - tick

    # -- SOP --------------------------------------------------------------------------------
    tick = time.perf_counter()
    sop_section = cfg["sop"]
    settings = sop_model_settings(sop_section)
    settings.pop("encoder_blocks")
    settings["task"] = "classification"
    sop = _seeded(
        derived_seed(seed, _SOP),
        lambda: SumOfParts.from_backbone(
            backbone, (3, size, size), sop_section["encoder_blocks"], **settings
        ),
    )
    sop_train = _subset(data["train"], sop_section["max_train_maps"], derived_seed(seed, _SUBSET))
    # SOP's groups are its own masks: no random masking on top of them.
    sop_training = {**training, **sop_section["training"], "mask_probability": 0.0}
    fit(
        sop,
        sop_train,
        data["val"],
        predict_images,
        {"seed": seed, **sop_training},
        out / "models" / "sop",
        model_config={"kind": "sop", "backbone": backbone.config, "sop": sop.config},
        restart_stale=True,
    )
    sop.eval()
    timings["sop"] = time.perf_counter() - tick

    # -- explanations -----------------------------------------------------------------------
    tick = time.perf_counter()
    test = splits["test"]
    device = next(sop.token_encoder.parameters()).device
    x = torch.from_numpy(centred(test.images, mean)).to(device)
    batch = int(cfg["training"]["eval_batch_size"])
    with torch.no_grad():
        backbone_logits = torch.cat([backbone(c) for c in x.split(batch)]).float().cpu().numpy()
    parts = explain_sop(sop, x, max(1, batch // max(1, sop_section["n_groups"])))
    backbone_class = backbone_logits.argmax(1)
    sop_class = parts["logits"].argmax(1)
    token_map = sop.token_map(x).cpu()
    tie_seed = derived_seed(seed, _TIES)
    fraction = float(evaluation["keep_fraction"])
    importance = {"sop": M.sop_importance(parts["masks"], parts["scores"], backbone_class)}
    baselines = [m for m in evaluation["methods"] if m != "sop"]
    for method in baselines:
        importance[method] = baseline_importance(
            method,
            backbone,
            x,
            backbone_class,
            token_map,
            _method_options(method, evaluation),
            evaluation["ranking"],
        )
    timings["attributions"] = time.perf_counter() - tick

    # -- scores -----------------------------------------------------------------------------
    tick = time.perf_counter()
    ignore = test.extra.get("ignore")
    selections = {
        "sop_group": M.top_group(parts["masks"], parts["scores"], parts["valid"], sop_class),
        "sop": M.top_fraction(
            M.sop_importance(parts["masks"], parts["scores"], sop_class), fraction, tie_seed
        ),
        **{m: M.top_fraction(importance[m], fraction, tie_seed) for m in baselines},
    }
    localisation = {k: M.overlap(v, test.masks, ignore) for k, v in selections.items()}
    # The same pixel rankings at the size of SOP's top group, image by image: IoU at equal size.
    group_size = selections["sop_group"].sum((1, 2))
    matched = {
        m: M.overlap(M.top_count(importance[m], group_size, tie_seed), test.masks, ignore)
        for m in baselines
    }

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        return backbone(images).softmax(-1)

    aucs = {}
    for method, values in importance.items():
        curves = {
            resolution: M.probability_curves(
                probabilities,
                x,
                values,
                backbone_class,
                n_fractions=evaluation["n_fractions"],
                token_map=token_map if resolution == "patches" else None,
                tie_seed=tie_seed,
                max_batch=batch,
            )
            for resolution in ("pixels", "patches")
        }
        aucs[method] = {
            f"{kind}_{resolution}": getattr(curve, f"{kind}_auc")
            for resolution, curve in curves.items()
            for kind in ("insertion", "deletion")
        }
    timings["scores"] = time.perf_counter() - tick

    n_boot, boot_seed = evaluation["n_boot"], derived_seed(seed, _BOOT)
    labels = test.labels
    backbone_correct = (backbone_class == labels).astype(np.float64)
    sop_correct = (sop_class == labels).astype(np.float64)
    accuracy, summary = T.accuracy_table(backbone_correct, sop_correct, n_boot, boot_seed)
    located, located_summary = T.localisation_table(
        localisation, matched, fraction, n_boot, boot_seed
    )
    faithful, faithful_summary = T.faithfulness_table(aucs, n_boot, boot_seed)
    compared, compared_summary = T.differences_table(
        localisation, matched, aucs, baselines, n_boot, boot_seed
    )
    summary |= located_summary | faithful_summary | compared_summary
    best = max(baselines, key=lambda m: np.nanmean(localisation[m]["iou"])) if baselines else None

    figures = []
    if task["figure_images"] > 0:
        plot_examples(
            out / FIGURE,
            test,
            selections["sop_group"],
            selections.get(best),
            T.NAMES.get(best, best),
            task["figure_images"],
        )
        figures.append(FIGURE)
    summary.update(
        n_test=len(test),
        n_train=len(train),
        n_classes=n_classes,
        object_fraction=float(test.masks.mean()),
        sop_group_fraction=float(np.mean(localisation["sop_group"]["selected_fraction"])),
        best_baseline=best,
        **{f"seconds_{k}": v for k, v in timings.items()},
    )
    result = {
        "task": TASK,
        "settings": cfg,
        "summary": summary,
        "tables": [accuracy, located, faithful, compared],
        "figures": figures,
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "task_metrics.json", result)
    return result


def predict_images(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``fit``'s prediction function of the backbone and of SOP: logits of the images."""
    return model(batch["images"])


def load_splits(task: dict[str, Any], seed: int) -> dict[str, ImageSet]:
    """The train, val and test images of the task's source.

    Synthetic: three independent draws (seeds derived from ``seed``). ImageNet-S: the train
    split without masks, a seeded share ``val_fraction`` of it held out for validation, and the
    test split with masks, of the same classes.
    """
    if task["source"] == "synthetic":
        sizes = {"train": task["n_train"], "val": task["n_val"], "test": task["n_test"]}
        return {
            name: generate(
                n,
                task["n_classes"],
                task["image_size"],
                derived_seed(seed, _DATA, index),
                size_range=tuple(task["size_range"]),
                distractors=task["distractors"],
            )
            for index, (name, n) in enumerate(sizes.items())
        }
    options = {"max_per_class": task["max_per_class"], "progress": True}
    pool = load_imagenet_s(
        task["root"],
        task["train_split"],
        task["image_size"],
        classes=task["classes"],
        with_masks=False,
        **options,
    )
    test = load_imagenet_s(
        task["root"], task["test_split"], task["image_size"], classes=pool.class_names, **options
    )
    order = np.random.default_rng(derived_seed(seed, _DATA)).permutation(len(pool))
    n_val = max(1, int(round(task["val_fraction"] * len(pool))))
    if n_val >= len(pool):
        raise InputError(Path(task["root"]) / task["train_split"], "too few images to hold out")
    return {
        "train": _take(pool, np.sort(order[n_val:])),
        "val": _take(pool, np.sort(order[:n_val])),
        "test": test,
    }


def _take(data: ImageSet, rows: np.ndarray) -> ImageSet:
    return ImageSet(
        images=data.images[rows],
        masks=data.masks[rows],
        labels=data.labels[rows],
        class_names=data.class_names,
        names=tuple(data.names[i] for i in rows),
        extra={k: v[rows] for k, v in data.extra.items()},
    )


def _provenance(task: dict[str, Any], split: str, data: ImageSet, seed: int) -> dict[str, Any]:
    """What a model was trained on, for its sidecar and checkpoint hash: a digest of the data."""
    digest = hashlib.sha1(np.ascontiguousarray(data.images).tobytes())
    digest.update(data.labels.tobytes())
    return {
        "task": TASK,
        "source": task["source"],
        "split": split,
        "n": len(data),
        "image_size": data.image_size,
        "classes": list(data.class_names),
        "seed": seed,
        "sha1": digest.hexdigest(),
    }


def _subset(data: ImageDataset, n: int | None, seed: int) -> torch.utils.data.Dataset:
    """A seeded random subset of at most ``n`` items (all when None), with its provenance."""
    if n is None or n >= len(data):
        return data
    rows = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
    subset = torch.utils.data.Subset(data, rows.tolist())
    subset.provenance = {**data.provenance, "n": int(n), "subset_seed": seed}
    return subset


def _method_options(method: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    options = dict(evaluation["method_options"].get(method, {}))
    if method in ("kernel_shap", "lime"):
        options.setdefault("n_samples", evaluation["n_samples"])
    return options


def _seeded(seed: int, build: Any) -> Any:
    # Initialise from the config seed without touching the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
