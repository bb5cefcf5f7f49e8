"""Task vit_images end to end: a tiny run() on generated shapes and on an ImageNet-S folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.workflow import tiny_task_settings
from PIL import Image

from cosmo_sop.errors import InputError
from cosmo_sop.tasks.images.run import run, settings_of

TINY = {
    "seed": 3,
    "training": {"progress": False, "threads": 1},
    "vit_images": tiny_task_settings()["vit_images"],
}


def _check_result(result: dict, out) -> None:
    saved = json.loads((out / "task_metrics.json").read_text())
    assert saved["task"] == result["task"] == "vit_images"
    assert set(saved) == {"task", "settings", "summary", "tables", "figures", "seconds"}
    for table in saved["tables"]:
        assert len(table["rows"]) == len(table["bold"])
        for row, bold in zip(table["rows"], table["bold"]):
            assert len(row) == len(bold) == len(table["columns"])
            assert all(isinstance(b, bool) for b in bold)
    assert saved["figures"] == ["examples.png"] and (out / "examples.png").stat().st_size > 0
    for model in ("backbone", "sop"):
        assert (out / "models" / model / "model.safetensors").is_file()
    summary = saved["summary"]
    assert 0 <= summary["backbone_accuracy"] <= 1 and 0 <= summary["sop_accuracy"] <= 1
    for name in ("sop_group", "sop", "integrated_gradients", "kernel_shap", "saliency"):
        assert 0 <= summary[f"{name}_iou"] <= 1
    assert summary["sop_group_iou_low"] <= summary["sop_group_iou"] <= summary["sop_group_iou_high"]
    assert summary["best_baseline"] in ("integrated_gradients", "kernel_shap", "saliency")
    assert "sop_minus_saliency_iou" in summary and "sop_insertion_pixels_auc" in summary
    assert 0 <= summary["saliency_iou_same_size"] <= 1 and "sop_minus_lime_iou" not in summary


def test_tiny_synthetic_run_writes_task_metrics_and_reruns_identically(tmp_path):
    out = tmp_path / "vit_images"
    result = run(TINY, out)
    _check_result(result, out)
    assert result["settings"]["sop"]["patch_tokens"] == 4  # forced: the ViT's patches
    # A rerun resumes both (finished) trainings from their checkpoints: the same numbers.
    again = run(TINY, out)
    same = {k: v for k, v in again["summary"].items() if not k.startswith("seconds")}
    assert same == {k: v for k, v in result["summary"].items() if not k.startswith("seconds")}


def _imagenet_s(root) -> None:
    """Two classes of bright discs on noise, in the ImageNet-S layout and mask format."""
    rng = np.random.default_rng(1)
    for split, n in (("train-semi", 10), ("validation", 4)):
        for label, cls in enumerate(("n01443537", "n01491361")):
            for folder in (split, f"{split}-segmentation"):
                (root / folder / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, size=(40, 48, 3), dtype=np.uint8)
                ids = np.zeros((40, 48), dtype=np.int64)
                y, x = rng.integers(12, 28), rng.integers(12, 36)
                ids[y - 8 : y + 8, x - 8 : x + 8] = 1 + label
                pixels[ids > 0, label] = 250
                Image.fromarray(pixels).save(root / split / cls / f"{cls}_{i}.JPEG")
                rgb = np.stack([ids % 256, ids // 256, 0 * ids], -1).astype(np.uint8)
                Image.fromarray(rgb).save(root / f"{split}-segmentation" / cls / f"{cls}_{i}.png")


def test_tiny_imagenet_s_run(tmp_path):
    _imagenet_s(tmp_path / "ImageNetS50")
    config = json.loads(json.dumps(TINY))
    config["vit_images"] |= {"source": "imagenet_s", "root": str(tmp_path / "ImageNetS50")}
    out = tmp_path / "out"
    result = run(config, out)
    _check_result(result, out)
    assert result["summary"]["n_test"] == 8 and result["summary"]["n_train"] == 18
    assert result["summary"]["n_classes"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"image_size": 36}, "not a multiple of the ViT's patch_size"),
        ({"evaluation": {"methods": ["sop", "x_gradient"]}}, "cannot explain a ViT"),
        ({"source": "imagenet_s"}, "needs the folder"),
        ({"size_range": [0.3, 0.2]}, "not increasing"),
        ({"n_classes": 9}, "vit_images"),
        ({"sop": {"keep_fraction": 2}}, "vit_images.sop"),
    ],
)
def test_bad_settings_are_refused_before_any_work(override, message):
    with pytest.raises(InputError, match=message):
        settings_of({"vit_images": override})


def test_task_overrides_merge_key_by_key():
    settings = settings_of({"vit_images": {"training": {"epochs": 2}}})
    assert settings["training"]["epochs"] == 2
    assert settings["training"]["augment"] is True  # the task's own default is kept
    assert settings["training"]["loss"] == "cross_entropy"
    assert settings["vit"]["patch_size"] == 8 and settings["sop"]["keep_fraction"] == 0.4
