"""Scores of explanations against exact object masks, and the classifier's faithfulness curves.

Localisation. For every test image an explanation selects a set of pixels g: SOP's top group
(its group of highest score for the class SOP predicts), or a method's top ``fraction`` of
pixels by |attribution| (ties broken in a seeded random order). Against the object mask o:

- purity |g ∩ o| / |g|: how much of the selection is object (1 - the share on background);
- coverage |g ∩ o| / |o|: how much of the object is selected;
- IoU |g ∩ o| / |g ∪ o|.

Pixels marked *ignore* (ImageNet-S id 1000) are left out of g and o. A ratio with an empty
denominator is NaN (the image is then left out of that mean).

Faithfulness. Insertion and deletion for a classifier, on the engine of
:mod:`cosmo_sop.faithfulness.engine` (its plans, streamed batches and substrates): for image n,
explained for class k_n, the pixels are ranked by importance and the curve is the model's
*probability of k_n* as the top pixels are inserted into the substrate (0: the training mean
colour, what SOP shows outside a group) or deleted from the image. Insertion: higher AUC is
better; deletion: lower AUC is better (the opposite orientation from the regression curves of
:mod:`cosmo_sop.faithfulness.curves`, which measure an error). With ``token_map`` the ranking
is by patches: every pixel takes its patch's mean importance and the curve's steps change whole
patches, the resolution at which SOP's groups are made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.attribution import group_pixel_importance
from cosmo_sop.faithfulness.engine import evaluate, rank_plan
from cosmo_sop.faithfulness.inputs import pixel_counts
from cosmo_sop.faithfulness.ranks import pixel_ranks, token_aggregate
from cosmo_sop.faithfulness.substrates import make_substrate

#: ``predict(x (R, C, H, W)) -> probabilities (R, K)`` of a classifier in eval mode.
Probabilities = Callable[[Tensor], Tensor]


def overlap(
    selected: np.ndarray | Tensor, objects: np.ndarray | Tensor, ignore: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Purity, coverage and IoU of selected pixels against object masks, per image.

    Parameters
    ----------
    selected, objects
        bool (N, H, W): the explanation's pixels, and the object's.
    ignore
        bool (N, H, W) pixels to leave out of both, or None.

    Returns
    -------
    dict
        ``purity``, ``coverage``, ``iou``: float64 (N,) in [0, 1], NaN where undefined (empty
        selection, empty object, empty union); and ``selected_fraction`` (N,), |g| / (H W)
        (ignored pixels included).
    """
    g = np.asarray(selected, dtype=bool)
    o = np.asarray(objects, dtype=bool)
    if g.shape != o.shape or g.ndim != 3:
        raise ValueError(f"selected {g.shape} and objects {o.shape} must both be (N, H, W)")
    selected_fraction = g.mean((1, 2), dtype=np.float64)  # before ignoring: the share shown
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        g, o = g & keep, o & keep
    both = (g & o).sum((1, 2)).astype(np.float64)
    size_g = g.sum((1, 2)).astype(np.float64)
    size_o = o.sum((1, 2)).astype(np.float64)
    union = (g | o).sum((1, 2)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "purity": np.where(size_g > 0, both / size_g, np.nan),
            "coverage": np.where(size_o > 0, both / size_o, np.nan),
            "iou": np.where(union > 0, both / union, np.nan),
            "selected_fraction": selected_fraction,
        }


def top_group(
    masks: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    valid: Tensor | np.ndarray,
    classes: Tensor | np.ndarray,
) -> np.ndarray:
    """Pixels of each image's group of highest score for its class, bool (N, H, W).

    Parameters
    ----------
    masks
        bool (N, m, H, W) groups (``Explanation.masks``).
    scores
        (N, m, K) group scores (``Explanation.scores``).
    valid
        bool (N, m) (``Explanation.valid``); invalid groups are never chosen.
    classes
        int (N,) the class explained for every image (e.g. SOP's predicted class).
    """
    masks = torch.as_tensor(masks)
    class_scores = _class_scores(scores, classes).masked_fill(
        ~torch.as_tensor(valid, dtype=torch.bool), -float("inf")
    )
    best = class_scores.argmax(1)  # ties: the lowest group index
    return masks[torch.arange(len(best)), best].cpu().numpy().astype(bool)


def sop_importance(
    masks: Tensor | np.ndarray, scores: Tensor | np.ndarray, classes: Tensor | np.ndarray
) -> Tensor:
    """SOP's pixel importance for each image's class: the summed scores of the groups holding
    each pixel, float64 (N, H, W) (see :func:`cosmo_sop.attribution.group_pixel_importance`)."""
    return group_pixel_importance(torch.as_tensor(masks), _class_scores(scores, classes))


def top_count(importance: Tensor | np.ndarray, counts: np.ndarray, tie_seed: int) -> np.ndarray:
    """The ``counts[n]`` most important pixels of image n, bool (N, H, W).

    For comparing a pixel attribution with a group at equal size (``counts`` = the group's
    pixels); ties as in :func:`top_fraction`.
    """
    ranks = pixel_ranks(torch.as_tensor(importance), tie_seed)
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.int64)
    return (ranks < counts[:, None, None]).cpu().numpy()


def top_fraction(importance: Tensor | np.ndarray, fraction: float, tie_seed: int) -> np.ndarray:
    """The round(fraction H W) most important pixels of each image, bool (N, H, W).

    Ties are broken by the seeded random pixel order of
    :func:`cosmo_sop.faithfulness.ranks.pixel_ranks`.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    importance = torch.as_tensor(importance)
    n_pixels = importance.shape[1] * importance.shape[2]
    ranks = pixel_ranks(importance, tie_seed)
    return (ranks < int(pixel_counts(fraction, n_pixels))).cpu().numpy()


@dataclass(frozen=True)
class ProbabilityCurves:
    """Insertion and deletion curves of one method: probability of the explained class.

    Attributes
    ----------
    position
        float64 (S,) fraction of pixels changed at each step, 0 to 1.
    insertion, deletion
        float64 (N, S) probability of each image's class, as the top pixels are inserted into
        the substrate / deleted from the image.
    insertion_auc, deletion_auc
        float64 (N,) trapezoid areas under them (insertion: higher is better; deletion: lower).
    """

    position: np.ndarray
    insertion: np.ndarray
    deletion: np.ndarray
    insertion_auc: np.ndarray
    deletion_auc: np.ndarray


def probability_curves(
    predict: Probabilities,
    x: Tensor,
    importance: Tensor | np.ndarray,
    classes: np.ndarray,
    *,
    n_fractions: int = 11,
    token_map: Tensor | np.ndarray | None = None,
    tie_seed: int = 0,
    max_batch: int = 256,
    progress: bool = False,
) -> ProbabilityCurves:
    """Insertion and deletion curves of a classifier for one pixel ranking (module docstring).

    Parameters
    ----------
    predict
        Probabilities of the classifier (eval mode), (R, C, H, W) -> (R, K).
    x
        Centred images (N, C, H, W); the substrate is 0.
    importance
        (N, H, W) pixel importance, larger first.
    classes
        int (N,) the class whose probability each image's curve follows.
    n_fractions
        Steps 0, 1 / (n - 1), ..., 1 of the pixels (of the patches, with ``token_map``).
    token_map
        int (H, W) or (N, H, W) patch index of every pixel: rank by patches, whole patches per
        step. None: by pixels.
    tie_seed
        Seed of the random order that breaks ties.
    max_batch, progress
        Most perturbed images per model call; a progress bar over calls.
    """
    n_maps, _, height, width = x.shape
    n_pixels = height * width
    importance = torch.as_tensor(importance, dtype=torch.float64)
    steps = np.linspace(0.0, 1.0, int(n_fractions))
    if token_map is None:
        counts = pixel_counts(steps, n_pixels)
    else:
        labels = torch.as_tensor(token_map, dtype=torch.int64)
        importance = token_aggregate(importance, labels, "mean")
        # Whole patches: the count of pixels of the first j patches (patches are equal squares).
        n_patches = int(labels.max()) + 1
        counts = pixel_counts(steps, n_patches) * (n_pixels // n_patches)
    ranks = pixel_ranks(importance, tie_seed)
    plans = [rank_plan(ranks, counts, True), rank_plan(ranks, counts, False)]
    substrate = make_substrate(x, "zero")
    _, (inserted, deleted) = evaluate(
        predict, x, substrate, plans, max_batch, progress, int(np.max(classes))
    )
    rows = np.arange(n_maps)
    insertion = inserted[rows, :, classes]
    deletion = deleted[rows, :, classes]
    position = counts / n_pixels
    return ProbabilityCurves(
        position=position,
        insertion=insertion,
        deletion=deletion,
        insertion_auc=np.trapezoid(insertion, position, axis=1),
        deletion_auc=np.trapezoid(deletion, position, axis=1),
    )


def _class_scores(scores: Tensor | np.ndarray, classes: Tensor | np.ndarray) -> Tensor:
    """Scores (N, m, K) at each image's class: (N, m)."""
    scores = torch.as_tensor(scores).detach()
    index = torch.as_tensor(classes, dtype=torch.int64, device=scores.device)
    if scores.ndim != 3 or index.shape != scores.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (N, m, K) for classes (N,)")
    return scores.gather(2, index[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]
