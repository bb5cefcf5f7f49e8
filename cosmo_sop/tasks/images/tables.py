"""The image task's tables: per-image scores summarised with bootstrap intervals over images.

Every entry is a mean over test images with a 95 % percentile interval from
:mod:`cosmo_sop.statistics`, resampling images (each image is its own unit: the generated
images are independent draws; ImageNet-S images are distinct photographs). SOP is compared with
every baseline by the paired difference SOP − baseline on the same images, with the same
resamples; a difference is bold only where its interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cosmo_sop.statistics import Interval, bootstrap_mean, bootstrap_paired_difference

#: Display names of the explanations.
NAMES = {
    "sop_group": "SOP top group",
    "sop": "SOP top 20%",
    "integrated_gradients": "Integrated Gradients",
    "gradient_shap": "GradientSHAP",
    "kernel_shap": "KernelSHAP (patches)",
    "lime": "LIME (patches)",
    "saliency": "Saliency",
}
#: Localisation scores, in column order, and the faithfulness AUCs with their better direction.
LOCALISATION = ("purity", "coverage", "iou")
AUCS = {
    "insertion_pixels": "higher",
    "deletion_pixels": "lower",
    "insertion_patches": "higher",
    "deletion_patches": "lower",
}


def interval(values: np.ndarray, n_boot: int, seed: int) -> Interval:
    """Mean of per-image ``values`` (N,) with its image-bootstrap interval (NaN left out)."""
    return bootstrap_mean(values, np.arange(len(values)), n_boot, seed)


def difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> Interval:
    """Mean of the paired difference a − b over images, with its interval."""
    return bootstrap_paired_difference(a, b, np.arange(len(a)), n_boot, seed)


def cell(value: Interval, signed: bool = False) -> str:
    """``"0.512 [0.48, 0.54]"``; ``signed`` writes a + before positive estimates."""
    estimate, low, high = (float(v) for v in (value.estimate, value.low, value.high))
    if not np.isfinite(estimate):
        return "–"
    sign = "+" if signed and estimate > 0 else ""
    return f"{sign}{estimate:.3g} [{low:.3g}, {high:.3g}]"


def summary_of(value: Interval, name: str) -> dict[str, float]:
    """``{name: estimate, name_low: low, name_high: high}`` for the summary."""
    return {
        name: float(value.estimate),
        f"{name}_low": float(value.low),
        f"{name}_high": float(value.high),
    }


def accuracy_table(
    backbone_correct: np.ndarray, sop_correct: np.ndarray, n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Test accuracy of the backbone and SOP, and SOP − backbone; the table and its summary."""
    backbone = interval(backbone_correct, n_boot, seed)
    sop = interval(sop_correct, n_boot, seed)
    gap = difference(sop_correct, backbone_correct, n_boot, seed)
    table = {
        "title": "Test accuracy",
        "caption": (
            "Fraction of test images classified correctly, mean [95% CI] from a bootstrap over "
            "images; SOP − backbone is paired (same images), bold where its CI excludes 0."
        ),
        "columns": ["model", "accuracy"],
        "rows": [
            ["ViT backbone", cell(backbone)],
            ["SOP", cell(sop)],
            ["SOP − backbone", cell(gap, signed=True)],
        ],
        "bold": [[False, False], [False, False], [False, bool(gap.excludes_zero())]],
    }
    summary = {
        **summary_of(backbone, "backbone_accuracy"),
        **summary_of(sop, "sop_accuracy"),
        **summary_of(gap, "sop_minus_backbone_accuracy"),
    }
    return table, summary


def localisation_table(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    matched: Mapping[str, Mapping[str, np.ndarray]],
    top_fraction: float,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Purity, coverage and IoU of every explanation against the object masks.

    Parameters
    ----------
    scores
        ``{explanation: {"purity", "coverage", "iou", "selected_fraction": (N,)}}`` with
        ``"sop_group"`` first.
    matched
        ``{baseline: scores}`` of each baseline's top pixels at the size of SOP's top group.
    top_fraction
        The share of pixels the baselines (and "SOP top 20%") select, for the caption.
    """
    rows, bold, summary = [], [], {}
    for name, values in scores.items():
        entries = {key: interval(values[key], n_boot, seed) for key in LOCALISATION}
        size = float(np.nanmean(values["selected_fraction"]))
        same = interval(matched[name]["iou"], n_boot, seed) if name in matched else None
        rows.append(
            [
                NAMES.get(name, name),
                f"{size:.3g}",
                *(cell(entries[k]) for k in LOCALISATION),
                cell(same) if same is not None else "–",
            ]
        )
        bold.append([False] * (3 + len(LOCALISATION)))
        for key in LOCALISATION:
            summary.update(summary_of(entries[key], f"{name}_{key}"))
        if same is not None:
            summary.update(summary_of(same, f"{name}_iou_same_size"))
    table = {
        "title": "Does the explanation find the object?",
        "caption": (
            "Against the exact object masks of the test images: SOP's group of highest score for "
            f"its predicted class, and the top {top_fraction:.0%} pixels by |attribution| of SOP "
            "(summed group scores) and of each baseline (for the backbone's predicted class). "
            "Purity = |g∩o|/|g|, coverage = |g∩o|/|o|, IoU = |g∩o|/|g∪o|; mean [95% CI] over "
            "images. 'pixels' is the mean share of the image selected; the last column is a "
            "baseline's IoU with as many top pixels as SOP's top group has, image by image."
        ),
        "columns": ["explanation", "pixels", "purity", "coverage", "IoU", "IoU at SOP's size"],
        "rows": rows,
        "bold": bold,
    }
    return table, summary


def faithfulness_table(
    aucs: Mapping[str, Mapping[str, np.ndarray]], n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Insertion and deletion AUCs of every method, by pixels and by patches."""
    rows, bold, summary = [], [], {}
    for name, values in aucs.items():
        entries = {key: interval(values[key], n_boot, seed) for key in AUCS}
        rows.append([NAMES.get(name, name), *(cell(entries[k]) for k in AUCS)])
        bold.append([False] * (1 + len(AUCS)))
        for key in AUCS:
            summary.update(summary_of(entries[key], f"{name}_{key}_auc"))
    table = {
        "title": "Insertion and deletion on the backbone",
        "caption": (
            "Area under the backbone's probability of its predicted class as the most important "
            "pixels (or ViT patches) are inserted into the mean-colour image (higher is better) "
            "or deleted from the image (lower is better); mean [95% CI] over images."
        ),
        "columns": [
            "method",
            "insertion, pixels (↑)",
            "deletion, pixels (↓)",
            "insertion, patches (↑)",
            "deletion, patches (↓)",
        ],
        "rows": rows,
        "bold": bold,
    }
    return table, summary


def differences_table(
    localisation: Mapping[str, Mapping[str, np.ndarray]],
    matched: Mapping[str, Mapping[str, np.ndarray]],
    aucs: Mapping[str, Mapping[str, np.ndarray]],
    baselines: Sequence[str],
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """SOP − each baseline: purity, coverage and IoU of SOP's top group against the baseline's
    top pixels (and its IoU at equal size), and the AUCs of SOP's pixel ranking."""
    columns = [*LOCALISATION, "iou_same_size", *AUCS]
    rows, bold, summary = [], [], {}
    for name in baselines:
        group = localisation["sop_group"]
        entries = {
            key: difference(group[key], localisation[name][key], n_boot, seed)
            for key in LOCALISATION
        }
        entries["iou_same_size"] = difference(group["iou"], matched[name]["iou"], n_boot, seed)
        entries |= {
            key: difference(aucs["sop"][key], aucs[name][key], n_boot, seed) for key in AUCS
        }
        rows.append([NAMES.get(name, name), *(cell(entries[k], signed=True) for k in columns)])
        bold.append([False, *(bool(entries[k].excludes_zero()) for k in columns)])
        for key in columns:
            summary.update(summary_of(entries[key], f"sop_minus_{name}_{key}"))
    table = {
        "title": "SOP − each baseline",
        "caption": (
            "Paired differences over the same test images, mean [95% CI]; bold where the CI "
            "excludes 0. Purity, coverage and IoU: SOP's top group minus the baseline's top "
            "20%, and minus the baseline's top pixels at the group's size (positive favours "
            "SOP). AUCs: SOP's pixel ranking minus the baseline's (insertion: positive favours "
            "SOP; deletion: negative favours SOP)."
        ),
        "columns": [
            "baseline",
            "purity",
            "coverage",
            "IoU",
            "IoU, same size",
            "insertion, pixels",
            "deletion, pixels",
            "insertion, patches",
            "deletion, patches",
        ],
        "rows": rows,
        "bold": bold,
    }
    return table, summary
