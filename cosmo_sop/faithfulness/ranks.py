"""The order in which a faithfulness metric changes pixels or groups.

Pixels are ranked by decreasing importance with a deterministic tie-break; the groups of a
method that does not score groups itself are ordered by the importance inside them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.faithfulness.inputs import check_choice

GroupReduce = Literal["mean", "sum"]


def pixel_ranks(importance: Tensor | np.ndarray) -> Tensor:
    """Rank of every pixel by decreasing importance, 0 = most important; shape (N, H, W) int64.

    Ties go to the pixel that comes first in row-major order, so ranks are deterministic.
    """
    importance = torch.as_tensor(importance)
    if importance.ndim != 3:
        raise ValueError(f"importance must have shape (N, H, W), got {tuple(importance.shape)}")
    flat = importance.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions).view(importance.shape)


def group_scores_from_importance(
    importance: Tensor | np.ndarray, masks: Tensor | np.ndarray, reduce: GroupReduce = "mean"
) -> Tensor:
    """Score of every group under a pixel attribution: its mean (or summed) importance.

    Used to order the groups of a method that does not score groups itself.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance.
    masks
        bool (N, m, H, W) group masks.
    reduce
        "mean" (favours small, concentrated groups) or "sum" (favours large groups).

    Returns
    -------
    Tensor
        float64 (N, m); NaN for empty groups.
    """
    check_choice("reduce", reduce, ("mean", "sum"))
    importance = torch.as_tensor(importance)
    masks = torch.as_tensor(masks, device=importance.device)
    matching = masks.ndim == 4 and (masks.shape[0], *masks.shape[2:]) == importance.shape
    if importance.ndim != 3 or not matching:
        raise ValueError(
            f"masks {tuple(masks.shape)} and importance {tuple(importance.shape)} must be "
            "(N, m, H, W) and (N, H, W)"
        )
    weights = masks.to(torch.float64)
    total = torch.einsum("bmhw,bhw->bm", weights, importance.to(torch.float64))
    if reduce == "sum":
        return total.masked_fill(~masks.flatten(2).any(-1), float("nan"))
    return total / weights.sum((2, 3))  # 0 / 0 = NaN for empty groups
