"""What every method ranks by, at the pixel and the token resolution.

- SOP ranks a pixel by the summed |weights| of the groups holding it
  (:func:`~cosmo_sop.attribution.registry.group_pixel_importance` of |c|): constant over SOP's
  tokens, so SOP has the token resolution only.
- A baseline ranks a pixel by its attribution reduced over bins
  (:func:`~cosmo_sop.faithfulness.ranks.ranking_importance`: |.| summed, or signed); its token
  variant gives every pixel of a token the token's mean (or sum) of that
  (:func:`~cosmo_sop.faithfulness.ranks.token_aggregate`), the tokens being the cells of SOP's
  patch grid or the watershed segments SOP groups (:func:`token_map`).

A baseline's sparsity is taken of its ranking map; SOP's of its groups' contributions
c_i (y_i - h(s)) (:func:`~cosmo_sop.faithfulness.ranks.group_contributions`), not of the
ranking map of its weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.attribution.registry import METHODS, attribute, group_pixel_importance
from cosmo_sop.attribution.replay import ReplayedOutputs
from cosmo_sop.faithfulness.loading import Maps, Models
from cosmo_sop.faithfulness.ranks import Ranking, ranking_importance
from cosmo_sop.models.tokens import patch_token_map


def token_map(explanations: xr.Dataset, maps: Maps) -> torch.Tensor | None:
    """The token of every pixel of every evaluated map, int64 (N, H, W).

    Patch tokens: the cells of SOP's grid (``sop_config.patch_tokens`` of the store); segment
    tokens: the maps' watershed segments (None without the segments store).
    """
    kind = str(explanations.attrs.get("tokens", "patches"))
    n_maps, _, height, width = maps.x.shape
    if kind == "segments":
        return None if maps.segments is None else maps.segments.to(torch.int64)
    grid = int(json.loads(explanations.attrs.get("sop_config", "{}")).get("patch_tokens", 14))
    return patch_token_map(height, width, grid).expand(n_maps, -1, -1)


def sop_importance(maps: Maps) -> np.ndarray:
    """SOP's ranking map (N, n_outputs, H, W) float64: summed |c| of the groups of a pixel."""
    weights = np.where(maps.valid[..., None], np.abs(maps.scores), 0.0)
    return np.stack(
        [
            group_pixel_importance(maps.masks, weights[..., o]).numpy()
            for o in range(len(maps.outputs))
        ],
        axis=1,
    )


def baseline_importance(
    method: str,
    maps: Maps,
    models: Models,
    options: Mapping[str, Any],
    ranking: Ranking,
    maps_per_call: int,
) -> np.ndarray:
    """A baseline's ranking map (N, n_outputs, H, W) float64 at the pixel resolution."""
    n_outputs = len(maps.outputs)
    model = models.xdnn if method == "x_gradient" else models.backbone
    replay = METHODS[method].needs_segments
    if replay:
        # KernelSHAP and LIME feed every output the same seeded perturbations: the second
        # output replays the backbone's outputs on the first's batches.
        model = ReplayedOutputs(model)
    x, segments = maps.x, maps.segments
    out = np.empty((x.shape[0], n_outputs, *x.shape[2:]), dtype=np.float64)
    starts = range(0, x.shape[0], maps_per_call)
    with tqdm(total=len(starts) * n_outputs, desc=method, unit="call") as bar:
        for start in starts:
            here = slice(start, start + maps_per_call)
            labels = None if segments is None else segments[here]
            for o in range(n_outputs):
                if replay:
                    model.rewind()
                attribution = attribute(method, model, x[here], o, labels, **options)
                out[here, o] = ranking_importance(attribution, ranking).numpy()
                bar.update()
            if replay:
                model.clear()
    return out
