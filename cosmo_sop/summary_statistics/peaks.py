"""Peak and minimum counts of stacks of patches, histogrammed by height.

Local maxima (value strictly above its 8 neighbours) of the optionally Gaussian-smoothed map,
histogrammed by height in units of a *global* per-bin scale: the standard deviation of the
smoothed maps over the train split. A per-patch scale would divide out the amplitude of the
fluctuations, the main sigma_8 signal, so one fixed scale per bin is used, as survey peak-count
analyses count peaks in units of the (fixed) noise level. Local minima (void tracers) are
counted the same way. Pixels on the patch border, whose neighbourhood is incomplete, are
neither. The outermost height bins are open-ended.

The counts are one scipy filter and a histogram, written here rather than taken from a library
(lenstools would pull in a compiled stack for them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from cosmo_sop.kappa import smooth_maps


def snr_edges(cfg: Mapping[str, Any]) -> np.ndarray:
    """Height-bin edges of the peak histograms (units of the per-bin scale) from the options."""
    n = max(1, round((cfg["snr_max"] - cfg["snr_min"]) / cfg["snr_step"]))
    return np.linspace(cfg["snr_min"], cfg["snr_min"] + n * cfg["snr_step"], n + 1)


def _neighbourhood(ndim: int) -> np.ndarray:
    """3x3 footprint without its centre over the last two axes, singleton over the others."""
    footprint = np.ones((1,) * (ndim - 2) + (3, 3), dtype=bool)
    footprint[(0,) * (ndim - 2) + (1, 1)] = False
    return footprint


def local_extrema(maps: np.ndarray, kind: str = "max") -> np.ndarray:
    """Strict local maxima (or minima) over the 8 neighbours, per map of a stack.

    Parameters
    ----------
    maps
        Shape ``(..., H, W)``; the filter never mixes maps or tomographic bins.
    kind
        ``"max"`` or ``"min"``.

    Returns
    -------
    ndarray of bool, same shape
        True where the pixel is strictly above (below) all 8 neighbours. Border pixels, whose
        neighbourhood is incomplete, are never extrema; ties (plateaus) are not extrema.
    """
    maps = np.asarray(maps)
    footprint = _neighbourhood(maps.ndim)
    if kind == "max":
        extreme = maps > ndimage.maximum_filter(maps, footprint=footprint, mode="nearest")
    elif kind == "min":
        extreme = maps < ndimage.minimum_filter(maps, footprint=footprint, mode="nearest")
    else:
        raise ValueError(f"kind must be 'max' or 'min', got {kind!r}")
    extreme[..., 0, :] = extreme[..., -1, :] = False
    extreme[..., :, 0] = extreme[..., :, -1] = False
    return extreme


def peak_counts(
    patches: np.ndarray,
    edges: np.ndarray,
    scale: np.ndarray,
    *,
    smoothing_pixels: float = 0.0,
    kind: str = "max",
) -> np.ndarray:
    """Histograms of the heights of local maxima (or minima), per patch and tomographic bin.

    Parameters
    ----------
    patches
        Maps of shape ``(N, C, H, W)``.
    edges
        Height-bin edges in units of ``scale``, shape ``(K + 1,)``, increasing. The first and
        last bins are open-ended: they also count extrema below ``edges[0]`` / above ``edges[-1]``.
    scale
        Per-bin unit of height, shape ``(C,)`` (same units as the maps), e.g. the train-split
        standard deviation of the smoothed maps.
    smoothing_pixels
        Gaussian sigma, in pixels, of the smoothing applied before finding extrema.
    kind
        ``"max"`` (peaks) or ``"min"`` (minima).

    Returns
    -------
    ndarray, shape (N, C, K)
        Number of extrema in each height bin (float64).
    """
    patches = np.asarray(patches)
    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (N, C, H, W), got {patches.shape}")
    n, c = patches.shape[:2]
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (c,) or not np.all(scale > 0):
        raise ValueError(f"scale must be {c} positive numbers, got {scale}")
    edges = np.asarray(edges, dtype=np.float64)
    k = edges.size - 1
    smoothed = smooth_maps(patches, smoothing_pixels)
    where = local_extrema(smoothed, kind)
    sample, channel, y, x = np.nonzero(where)
    height = smoothed[sample, channel, y, x] / scale[channel]
    # Interior edges only: everything below edges[1] goes to bin 0, above edges[-2] to bin K-1.
    height_bin = np.searchsorted(edges[1:-1], height, side="right")
    flat = (sample * c + channel) * k + height_bin
    return np.bincount(flat, minlength=n * c * k).reshape(n, c, k).astype(np.float64)


# --------------------------------------------------------------------------------------------
