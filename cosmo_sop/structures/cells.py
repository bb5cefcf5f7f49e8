"""Cells of a pixel attribution: connected components of its top pixels, and their statistics.

A pixel attribution method (Integrated Gradients, SHAP, ...) gives every pixel an importance; to
compare it with SOP's groups, its most important pixels are cut into *cells*
(:func:`attribution_cells`), and each cell gets the same sigma-map statistics as a group
(:func:`cell_statistics`), so the definitions classify cells as they classify groups.

Ties at the cut are broken by a seeded random key per pixel, never by raster order: SOP's pixel
importance (the summed scores of the groups holding a pixel) is constant over large areas, and
raster order would fill the cut from the upper rows. The workflow's steps seed the key with
``derived_seed(seed, TIE_STREAM)`` (:func:`cosmo_sop.training.loop.derived_seed`), so reruns
cut the same cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from cosmo_sop.errors import InputError
from cosmo_sop.structures.classes import (
    REPORTED_ABOVE,
    REPORTED_BELOW,
    fraction_levels,
    pixel_columns,
    statistics_dataset,
)
from cosmo_sop.structures.definitions import (
    DEFAULT_DEFINITIONS,
    StructureDefinition,
    is_finite_number,
)

#: The seed stream of the tie-break keys of :func:`attribution_cells` (any value other than the
#: other streams of the config seed, e.g. ``cosmo_sop.structures.nulls.RANDOM_STREAM``).
TIE_STREAM = 812


def tie_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """The generator of tie-break keys: ``rng`` itself, or a new one seeded by the integer.

    Raises
    ------
    InputError
        For anything else (None included: an unseeded cut would differ between reruns).
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, (int, np.integer)) or rng < 0:
        raise InputError(
            "argument 'rng'", f"must be a numpy Generator or a seed (integer >= 0), got {rng!r}"
        )
    return np.random.default_rng(int(rng))


def _in_plane_structure(connectivity: int) -> np.ndarray:
    """3-D structuring element for a stack of maps that connects pixels within a map only."""
    if connectivity not in (1, 2):
        raise InputError(
            "argument 'connectivity'", f"must be 1 (4-neighbours) or 2 (8), got {connectivity!r}"
        )
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    return structure


def attribution_cells(
    attributions: np.ndarray | xr.DataArray,
    top_fraction: float = 0.2,
    connectivity: int = 1,
    absolute: bool = True,
    *,
    rng: np.random.Generator | int,
) -> np.ndarray:
    """Cells of a pixel attribution: connected components of its top pixels.

    Parameters
    ----------
    attributions
        Shape (N, n_out, H, W), or (N, n_out, C, H, W) per bin, then summed over bins (the
        attribution of a sky position).
    top_fraction
        Fraction of a map's pixels that are "top": the ``ceil(top_fraction H W)`` highest,
        ties broken by a random key per pixel (see ``rng``), and only pixels with attribution
        > 0 (a pixel the method gives nothing is not important).
    connectivity
        1: 4-neighbour cells (as the segments); 2: 8-neighbour.
    absolute
        Rank by |attribution| (default: a regression attribution's sign only says in which
        direction a pixel moves the prediction, not how much it matters).
    rng
        Draws the tie-break keys, one uniform float per pixel of every (map, output), in stack
        order (:func:`tie_generator`): an integer seed gives every call on maps of one shape
        the same keys (e.g. every method on the same maps); a Generator passed through calls
        on consecutive chunks of maps gives the keys of one call on all of them.

    Returns
    -------
    ndarray
        int64 labels (N, n_out, H, W): 0 off the top pixels, cells numbered 1, 2, ... through
        the whole stack (so every cell has its own label). One ``ndimage.label`` call on the
        stack, with a structuring element that never links two maps (``skimage.measure.label``
        has no such element, and a loop over maps would be slower for the same labels).
    """
    a = np.asarray(attributions, dtype=np.float64)
    if a.ndim == 5:
        a = a.sum(axis=2)
    if a.ndim != 4 or 0 in a.shape:
        raise InputError(
            "argument 'attributions'",
            f"must have shape (N, n_out, H, W) or (N, n_out, C, H, W), got {a.shape}",
        )
    if not np.isfinite(a).all():
        raise InputError("argument 'attributions'", "must be finite")
    if not is_finite_number(top_fraction) or not 0.0 < top_fraction <= 1.0:
        raise InputError("argument 'top_fraction'", f"must be in (0, 1], got {top_fraction!r}")
    structure = _in_plane_structure(connectivity)
    if absolute:
        a = np.abs(a)
    n, n_out, h, w = a.shape
    flat = a.reshape(n * n_out, h * w)
    n_top = math.ceil(top_fraction * h * w)
    key = tie_generator(rng).random(flat.shape)
    order = np.lexsort((key, -flat), axis=-1)  # by decreasing importance, then by key
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None, :], axis=-1)
    top = (rank < n_top) & (flat > 0)
    labels, _ = ndimage.label(top.reshape(n * n_out, h, w), structure=structure)
    return labels.reshape(n, n_out, h, w).astype(np.int64)


def cell_statistics(
    sigma: np.ndarray,
    cells: np.ndarray,
    definitions: Sequence[StructureDefinition] = DEFAULT_DEFINITIONS,
) -> xr.Dataset:
    """Sigma-map statistics of every cell of :func:`attribution_cells`.

    Returns
    -------
    xarray.Dataset
        Dim ``cell`` (one per label 1..n, in label order) with the variables of
        :func:`group_statistics` except ``valid``, and coordinates ``sample`` and ``output``
        (the map and output the cell belongs to). Sums per cell by ``np.bincount`` over the
        stack.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    cells = np.asarray(cells)
    if cells.ndim != 4 or cells.shape[0] != sigma.shape[0] or cells.shape[2:] != sigma.shape[1:]:
        raise InputError(
            "argument 'cells'",
            f"must have shape (N, n_out, H, W) matching the "
            f"sigma maps {sigma.shape}, got {cells.shape}",
        )
    above = fraction_levels(definitions, "above", REPORTED_ABOVE)
    below = fraction_levels(definitions, "below", REPORTED_BELOW)
    n, n_out = cells.shape[:2]
    labels = cells.ravel()
    n_cells = int(labels.max()) if labels.size else 0
    columns = pixel_columns(np.broadcast_to(sigma[:, None], cells.shape).ravel(), above, below)
    sums = np.stack(
        [np.bincount(labels, weights=c, minlength=n_cells + 1) for c in columns.T], axis=-1
    )[1:]
    pixels = np.bincount(labels, minlength=n_cells + 1)[1:]
    # Labels grow through the stack (each map's cells after the previous map's), so the map of
    # a cell is the first (map, output) slice whose running maximum label reaches it.
    by_slice = cells.reshape(n * n_out, -1)
    highest = by_slice.max(axis=-1)
    lowest = np.where(by_slice > 0, by_slice, np.iinfo(np.int64).max).min(axis=-1)
    reach = np.maximum.accumulate(highest)
    previous = np.concatenate([[0], reach[:-1]])
    if np.any((highest > 0) & (lowest != previous + 1)) or (cells < 0).any():
        raise InputError(
            "argument 'cells'",
            "labels must run 1, 2, ... map after map (as attribution_cells returns them)",
        )
    owner = np.searchsorted(reach, np.arange(1, n_cells + 1), side="left")
    stats = statistics_dataset(sums, pixels, above, below, ("cell",))
    return stats.assign_coords(sample=("cell", owner // n_out), output=("cell", owner % n_out))
