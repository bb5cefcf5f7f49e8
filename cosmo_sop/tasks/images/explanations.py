"""SOP's explanations of test images and the baselines' pixel importance, in batches.

The baselines (:mod:`cosmo_sop.attribution`) explain one output of a model per call, so the
images are explained class by class: each image for the class the backbone predicts. The
perturbation methods (KernelSHAP, LIME) switch the ViT's patches on and off, the features SOP
groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_sop.attribution import METHODS, attribute
from cosmo_sop.faithfulness.ranks import Ranking, ranking_importance
from cosmo_sop.models.sop import SumOfParts


def explain_sop(sop: SumOfParts, x: Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """SOP on every image, in batches, under ``no_grad``.

    Parameters
    ----------
    sop
        SOP in eval mode (patch tokens).
    x
        Centred images (N, C, H, W), on SOP's device.
    batch_size
        Images per call.

    Returns
    -------
    dict
        ``logits`` (N, K) float32, ``masks`` bool (N, m, H, W), ``scores`` (N, m, K) float32,
        ``partial`` (N, m, K) float32 (per-group logits), ``valid`` bool (N, m).
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("logits", "masks", "scores", "partial", "valid")
    }
    with torch.no_grad():
        for chunk in x.split(batch_size):
            explanation = sop.explain(chunk)
            parts["logits"].append(explanation.prediction.float().cpu().numpy())
            parts["masks"].append(explanation.masks.cpu().numpy())
            parts["scores"].append(explanation.scores.float().cpu().numpy())
            parts["partial"].append(explanation.partial.float().cpu().numpy())
            parts["valid"].append(explanation.valid.cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def baseline_importance(
    method: str,
    model: nn.Module,
    x: Tensor,
    classes: np.ndarray,
    token_map: Tensor,
    options: dict[str, Any],
    ranking: Ranking = "absolute",
) -> Tensor:
    """Pixel importance (N, H, W) float64 of one baseline, each image for its class.

    Parameters
    ----------
    method
        A key of :data:`cosmo_sop.attribution.METHODS` that explains the backbone itself.
    model
        The backbone (eval mode).
    x
        Centred images (N, C, H, W).
    classes
        int (N,) the class explained for each image.
    token_map
        int64 (N, H, W) patch index of every pixel: the segments of KernelSHAP and LIME.
    options
        Keyword options of the method.
    ranking
        "absolute": |attribution| summed over the colour channels; "signed": the signed sum.
    """
    out = torch.empty(x.shape[0], *x.shape[2:], dtype=torch.float64)
    needs_segments = METHODS[method].needs_segments
    for k in np.unique(classes):
        rows = torch.from_numpy(np.flatnonzero(classes == k))
        segments = token_map[rows] if needs_segments else None
        attribution = attribute(method, model, x[rows], int(k), segments, **options)
        out[rows] = ranking_importance(attribution, ranking)
    return out
