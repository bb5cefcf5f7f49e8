"""Classify Sum-of-Parts groups as voids and clusters by the kappa they cover.

Units: the sigma map
--------------------
Every threshold is in units of the standard deviation of one map, the *sigma map*
(:func:`sigma_map`): the bin-combined map that segmentation also uses
(:func:`cosmo_sop.kappa.detection_map`, the mean over bins of each bin's standardised map)
standardised once more per map, ``s = (d - mean(d)) / std(d)``, statistics over the patch. So
"mean above +2 sigma" means the group's mean of ``s`` exceeds 2: two standard deviations of that
map, whatever the lensing amplitude, the number of bins and their correlation (the mean of
correlated standardised bins has a standard deviation below one, hence the second
standardisation). Multiplying kappa by any positive constant changes nothing.

:func:`group_statistics` gives every group's mean and fractions beyond the thresholds on that
map, :func:`classify` its membership in every definition's class
(:mod:`cosmo_sop.structures.definitions`), :func:`group_labels` one label per group. The
structures and faithfulness steps smooth the bin-combined map as :func:`classification_smoothing`
says (by default as segmentation does), so classes are read on the map that was segmented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import detection_map, smooth_maps
from cosmo_sop.structures.definitions import (
    DEFAULT_DEFINITIONS,
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
)

#: Thresholds reported for every group whatever the definitions (the SOP paper's levels).
REPORTED_ABOVE: tuple[float, ...] = (3.0,)
REPORTED_BELOW: tuple[float, ...] = (0.0,)
#: Maps per batched matrix product in :func:`group_statistics` (bounds the float64 mask copy).
MAPS_PER_CHUNK = 64


def classification_smoothing(config: Mapping[str, Any] | None = None) -> float:
    """Gaussian sigma (pixels) of the sigma map on which groups and cells are classified.

    The one place the config key ``structures.smoothing_pixels`` is read: its value, or, when
    it is null, ``segmentation.smoothing_pixels``, so that voids and clusters are read on the
    map that was segmented (SOP's segment tokens are cut on that map).

    Parameters
    ----------
    config
        A (validated) config; a missing section, or None, takes the schema's defaults.

    Returns
    -------
    float
        The smoothing in pixels (>= 0), for :func:`sigma_map`.
    """
    config = config or {}

    def key(section: str) -> Any:
        given = config.get(section) or {}
        if "smoothing_pixels" in given:
            return given["smoothing_pixels"]
        return defaults(f"{section}.smoothing_pixels")

    value = key("structures")
    return float(key("segmentation") if value is None else value)


def sigma_map(kappa: np.ndarray | xr.DataArray, smoothing_pixels: float) -> np.ndarray:
    """The map in whose standard deviations all thresholds are expressed.

    Parameters
    ----------
    kappa
        Convergence patches, shape (N, C, H, W) (C tomographic bins; C = 1 is fine).
    smoothing_pixels
        Optional Gaussian smoothing (sigma in pixels) of the bin-combined map before the final
        standardisation; the workflow's steps pass :func:`classification_smoothing` (by default
        the segmentation's, to classify on the map that was segmented). 0: none.

    Returns
    -------
    ndarray
        float64, shape (N, H, W), zero mean and unit standard deviation per map (dimensionless,
        "sigma"); a constant map gives zeros.
    """
    kappa = np.asarray(kappa)
    if kappa.ndim != 4 or kappa.shape[-1] == 0 or kappa.shape[-2] == 0 or kappa.shape[1] == 0:
        raise InputError("argument 'kappa'", f"must have shape (N, C, H, W), got {kappa.shape}")
    if not np.issubdtype(kappa.dtype, np.number) or not np.isfinite(kappa).all():
        raise InputError("argument 'kappa'", "must be finite numbers")
    combined = smooth_maps(detection_map(kappa), float(smoothing_pixels))
    centred = combined - combined.mean(axis=(-2, -1), keepdims=True)
    std = centred.std(axis=(-2, -1), keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def fraction_levels(
    definitions: Iterable[StructureDefinition], direction: str, reported: Iterable[float]
) -> list[float]:
    """Sorted levels (sigma) at which fractions ``direction`` (above / below) are computed: those
    the fraction rules need and the ``reported`` ones."""
    wanted = {
        float(d.level)
        for d in definitions
        if d.statistic == "fraction" and d.direction == direction
    }
    return sorted(wanted | {float(level) for level in reported})


def pixel_columns(sigma: np.ndarray, above: Sequence[float], below: Sequence[float]) -> np.ndarray:
    """Per-pixel quantities summed over each region: sigma, then 1[sigma > a], 1[sigma < b]."""
    columns = [sigma]
    columns += [(sigma > level).astype(np.float64) for level in above]
    columns += [(sigma < level).astype(np.float64) for level in below]
    return np.stack(columns, axis=-1)


def statistics_dataset(
    sums: np.ndarray,
    pixels: np.ndarray,
    above: Sequence[float],
    below: Sequence[float],
    dims: tuple[str, ...],
) -> xr.Dataset:
    """Means and fractions from per-region sums (..., 1 + len(above) + len(below))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pixel = sums / pixels[..., None]  # NaN for empty regions
    n_above = len(above)
    return xr.Dataset(
        {
            "mean_sigma": (dims, per_pixel[..., 0]),
            "pixels": (dims, pixels.astype(np.int64)),
            "fraction_above": ((*dims, "above_sigma"), per_pixel[..., 1 : 1 + n_above]),
            "fraction_below": ((*dims, "below_sigma"), per_pixel[..., 1 + n_above :]),
        },
        coords={
            "above_sigma": np.asarray(above, dtype=np.float64),
            "below_sigma": np.asarray(below, dtype=np.float64),
        },
        attrs={"units": "sigma of the per-map standardised bin-combined map (see sigma_map)"},
    )


def _check_masks(masks: Any, sigma: np.ndarray, valid: Any) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[0] != sigma.shape[0] or masks.shape[2:] != sigma.shape[1:]:
        raise InputError(
            "argument 'masks'",
            f"must have shape (N, m, H, W) = ({sigma.shape[0]}, m, {sigma.shape[1]}, "
            f"{sigma.shape[2]}) to match the maps, got {masks.shape}",
        )
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise InputError("argument 'masks'", "must be boolean (or 0/1)")
        masks = masks.astype(bool)
    if valid is None:
        valid = masks.any(axis=(-2, -1))
    valid = np.asarray(valid)
    if valid.shape != masks.shape[:2]:
        raise InputError(
            "argument 'valid'", f"must have shape {masks.shape[:2]}, got {valid.shape}"
        )
    return masks, valid.astype(bool)


def group_statistics(
    sigma: np.ndarray,
    masks: np.ndarray | xr.DataArray,
    valid: np.ndarray | xr.DataArray | None = None,
    definitions: Sequence[StructureDefinition] = DEFAULT_DEFINITIONS,
) -> xr.Dataset:
    """Sigma-map statistics of every group of every map.

    Parameters
    ----------
    sigma
        Sigma maps (N, H, W) from :func:`sigma_map`.
    masks
        bool (N, m, H, W): pixels of each group (``Explanation.masks``).
    valid
        bool (N, m): groups that exist (``Explanation.valid``); default: non-empty masks.
    definitions
        The fractions these need are computed, besides those always reported (pixels above
        +3 sigma and below 0).

    Returns
    -------
    xarray.Dataset
        Dims (sample, group) and the threshold dims ``above_sigma``, ``below_sigma``:
        ``mean_sigma`` (mean of the group's pixels, sigma; NaN if empty), ``pixels`` (count),
        ``fraction_above`` (fraction of its pixels > each level), ``fraction_below`` (< each
        level), ``valid``. All groups of all maps come out of one batched matrix product of the
        masks with per-pixel columns; maps are taken in chunks only to bound memory.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim != 3:
        raise InputError("argument 'sigma'", f"must have shape (N, H, W), got {sigma.shape}")
    masks, valid = _check_masks(masks, sigma, valid)
    above = fraction_levels(definitions, "above", REPORTED_ABOVE)
    below = fraction_levels(definitions, "below", REPORTED_BELOW)
    n, m = masks.shape[:2]
    columns = pixel_columns(sigma.reshape(n, -1), above, below)  # (N, P, K)
    flat = masks.reshape(n, m, -1)
    sums = np.empty((n, m, columns.shape[-1]))
    for start in range(0, n, MAPS_PER_CHUNK):  # chunks of maps, not a loop over groups
        chunk = slice(start, start + MAPS_PER_CHUNK)
        np.matmul(flat[chunk].astype(np.float64), columns[chunk], out=sums[chunk])
    pixels = flat.sum(axis=-1)
    stats = statistics_dataset(sums, pixels, above, below, ("sample", "group"))
    stats["valid"] = (("sample", "group"), valid & (pixels > 0))
    return stats


def classify(
    stats: xr.Dataset, definitions: Sequence[StructureDefinition] = DEFAULT_DEFINITIONS
) -> xr.DataArray:
    """Membership of every region in every definition's class.

    Parameters
    ----------
    stats
        From :func:`group_statistics` or :func:`cell_statistics`.
    definitions
        One output column per definition.

    Returns
    -------
    xarray.DataArray
        bool, dims of ``stats`` plus ``definition`` (coordinate: names; ``kind`` and ``rule``
        as non-index coordinates).
    """
    definitions = tuple(definitions)
    if not definitions:
        raise InputError("argument 'definitions'", "needs at least one structure definition")
    names = [d.name for d in definitions]
    if len(set(names)) != len(names):
        raise InputError("argument 'definitions'", f"duplicate names in {names}")
    member = xr.concat([d.applies(stats) for d in definitions], dim="definition")
    return (
        member.transpose(..., "definition")
        .assign_coords(
            definition=names,
            kind=("definition", [d.kind for d in definitions]),
            rule=("definition", [d.rule for d in definitions]),
        )
        .rename("member")
    )


def group_labels(
    membership: xr.DataArray, void: str = PURITY_VOID, cluster: str = PURITY_CLUSTER
) -> np.ndarray:
    """``"void"``, ``"cluster"`` or ``""`` (neither, or both) for every region of ``membership``.

    Uses the definitions named ``void`` and ``cluster`` (by default the relaxed ones); the
    result has the dims of ``membership`` without ``definition``.
    """
    names = list(membership["definition"].values)
    for name in (void, cluster):
        if name not in names:
            raise InputError("argument 'void'/'cluster'", f"no definition {name!r} in {names}")
    is_void = membership.sel(definition=void).values
    is_cluster = membership.sel(definition=cluster).values
    labels = np.full(is_void.shape, "", dtype="<U7")
    labels[is_void & ~is_cluster] = "void"
    labels[is_cluster & ~is_void] = "cluster"
    return labels
