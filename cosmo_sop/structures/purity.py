"""Purity: how cleanly the most important parts of a map fall into one structure class.

One rule for every method (:func:`method_purities`): a method's parts are the *cells* of its
top 20 % pixels (connected components, :func:`attribution_cells`; SOP's pixel importance is the
summed weight of the groups holding a pixel, :func:`sop_pixel_importance`), each classified by
the SOP authors' fraction rules (:data:`~cosmo_sop.structures.definitions.PURITY_VOID`,
:data:`~cosmo_sop.structures.definitions.PURITY_CLUSTER`), and the purity is the share of a
map's cells in the majority class among void and cluster (:func:`cell_purity`). SOP's *group*
purity (:func:`sop_purity`: the same share among its top groups) is kept beside it, for SOP
alone. :func:`purity_table` gives the mean over maps per method and output, with bootstrap
intervals.

Classes are defined by fractions, not means: with the paper's mean rules a 20 % group can
never be a cluster (mean > 2 sigma, see :mod:`~cosmo_sop.structures.definitions`) while a small
cell can, so purity would favour methods with small parts. Compare purities between methods,
and with random parts, not with 0 or 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.structures.bootstrap import bootstrap_sums, check_confidence, interval
from cosmo_sop.structures.cells import attribution_cells, cell_statistics, tie_generator
from cosmo_sop.structures.definitions import (
    DEFAULT_DEFINITIONS,
    OUTPUTS,
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
)
from cosmo_sop.structures.weights import check_scores, membership_array

#: Maps per chunk in :func:`cell_purity` (bounds the memory of ranking the pixels).
CELL_MAPS_PER_CHUNK = 256


def _pick(definitions: Sequence[StructureDefinition], name: str, kind: str) -> StructureDefinition:
    for d in definitions:
        if d.name == name:
            if d.kind != kind:
                raise InputError(
                    "argument 'void'/'cluster'", f"{name!r} is a {d.kind}, not a {kind}"
                )
            return d
    raise InputError(
        "argument 'void'/'cluster'",
        f"no definition named {name!r} among {[d.name for d in definitions]}",
    )


def top_groups(
    scores: np.ndarray | xr.DataArray,
    valid: np.ndarray | xr.DataArray | None = None,
    top_k: int | None = None,
) -> np.ndarray:
    """bool (N, m, n_out): each map's top groups for each output.

    ``top_k=None``: the valid groups with non-zero weight (the groups the model used). An
    integer: the ``top_k`` valid groups of highest weight (fewer if a map has fewer valid
    groups), ties broken by group index, zero weights included if needed to reach ``top_k``.
    """
    scores, valid = check_scores(scores, valid)
    if top_k is None:
        return valid[..., None] & (scores > 0)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError("argument 'top_k'", f"must be a positive integer or None, got {top_k!r}")
    key = np.where(valid[..., None], scores, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[1])[None, :, None], axis=1)
    return (rank < top_k) & valid[..., None]


def _majority_fraction(
    is_void: np.ndarray, is_cluster: np.ndarray, chosen: np.ndarray, axis: int
) -> np.ndarray:
    """Fraction of the chosen parts in the larger of the void and cluster classes.

    A part that meets both rules (possible only with overlapping custom thresholds) counts as
    neither. NaN where nothing is chosen.
    """
    voids = (chosen & is_void & ~is_cluster).sum(axis)
    clusters = (chosen & is_cluster & ~is_void).sum(axis)
    total = chosen.sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.maximum(voids, clusters) / total


def sop_purity(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    valid: np.ndarray | xr.DataArray | None = None,
    top_k: int | None = None,
    void: str = PURITY_VOID,
    cluster: str = PURITY_CLUSTER,
) -> np.ndarray:
    """Purity of each map's top SOP groups, per output.

    Each of a map's top groups (:func:`top_groups`) is a void (definition ``void``), a cluster
    (definition ``cluster``) or neither; the purity is the fraction of the top groups in the
    majority class among void and cluster: 1 when all are voids (or all clusters), 0.5 for half
    voids and half clusters, 0 when none is either. Random groups score about 0.5 with the
    default definitions (see the module notes), so read it relative to other methods.

    Returns
    -------
    ndarray
        float64 (N, n_out); NaN for a map without top groups.
    """
    scores, valid = check_scores(scores, valid)
    member = membership_array(membership, scores.shape[:2])
    names = list(membership["definition"].values)
    kinds = dict(zip(names, membership["kind"].values)) if "kind" in membership.coords else {}
    for name, kind in ((void, "void"), (cluster, "cluster")):
        if name not in names:
            raise InputError("argument 'void'/'cluster'", f"no definition {name!r} in {names}")
        if kinds and kinds[name] != kind:
            raise InputError(
                "argument 'void'/'cluster'", f"{name!r} is a {kinds[name]}, not a {kind}"
            )
    is_void = member[..., names.index(void)][..., None]
    is_cluster = member[..., names.index(cluster)][..., None]
    return _majority_fraction(is_void, is_cluster, top_groups(scores, valid, top_k), axis=1)


def cell_purity(
    sigma: np.ndarray,
    attributions: np.ndarray | xr.DataArray,
    definitions: Sequence[StructureDefinition] = DEFAULT_DEFINITIONS,
    top_fraction: float = 0.2,
    connectivity: int = 1,
    absolute: bool = True,
    min_cell_pixels: int = 1,
    void: str = PURITY_VOID,
    cluster: str = PURITY_CLUSTER,
    *,
    rng: np.random.Generator | int,
) -> np.ndarray:
    """Purity of a pixel attribution method, per map and output, from its cells.

    The cells (:func:`attribution_cells`) with at least ``min_cell_pixels`` pixels are
    classified like SOP groups (definitions ``void`` and ``cluster`` by their mean etc. in
    sigma); the purity is the fraction of a map's cells in the majority class among void and
    cluster (see :func:`sop_purity`). Every cell counts once, whatever its size, as every SOP
    group does.

    Parameters
    ----------
    sigma
        Sigma maps (N, H, W) from :func:`sigma_map`.
    attributions
        (N, n_out, H, W) or (N, n_out, C, H, W); read in chunks of maps, so a lazy (dask-backed)
        DataArray is never loaded whole.
    rng
        Breaks ties at the top-pixel cut (see :func:`attribution_cells`): an integer seed (the
        same keys for every method on these maps), or a Generator, drawn from chunk after chunk
        (the same keys as one call on all the maps, whatever the chunks).

    Returns
    -------
    ndarray
        float64 (N, n_out); NaN where a map has no cell.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim != 3:
        raise InputError("argument 'sigma'", f"must have shape (N, H, W), got {sigma.shape}")
    shape = tuple(attributions.shape)
    if len(shape) not in (4, 5) or shape[0] != sigma.shape[0] or shape[-2:] != sigma.shape[1:]:
        raise InputError(
            "argument 'attributions'",
            f"must have shape (N, n_out, [C,] H, W) "
            f"matching the sigma maps {sigma.shape}, got {shape}",
        )
    if (
        isinstance(min_cell_pixels, bool)
        or not isinstance(min_cell_pixels, (int, np.integer))
        or min_cell_pixels < 1
    ):
        raise InputError(
            "argument 'min_cell_pixels'", f"must be an integer >= 1, got {min_cell_pixels!r}"
        )
    chosen = (_pick(definitions, void, "void"), _pick(definitions, cluster, "cluster"))
    n, n_out = shape[:2]
    purity = np.empty((n, n_out))
    rng = tie_generator(rng)
    starts = range(0, n, CELL_MAPS_PER_CHUNK)
    # chunks of maps bound the memory of the pixel ranking (several int64 copies of the maps)
    for start in tqdm(starts, desc="cell purity", unit="chunk", disable=len(starts) < 2):
        block = slice(start, start + CELL_MAPS_PER_CHUNK)
        cells = attribution_cells(
            np.asarray(attributions[block]), top_fraction, connectivity, absolute, rng=rng
        )
        purity[block] = _cells_purity(sigma[block], cells, *chosen, int(min_cell_pixels))
    return purity


def _cells_purity(
    sigma: np.ndarray,
    cells: np.ndarray,
    void: StructureDefinition,
    cluster: StructureDefinition,
    min_cell_pixels: int,
) -> np.ndarray:
    """Majority-class fraction of the cells of each (map, output); see :func:`cell_purity`."""
    stats = cell_statistics(sigma, cells, (void, cluster))
    n, n_out = cells.shape[:2]
    kept = stats["pixels"].values >= min_cell_pixels
    owner = stats["sample"].values * n_out + stats["output"].values
    is_void = void.applies(stats).values & kept
    is_cluster = cluster.applies(stats).values & kept
    counts = [
        np.bincount(owner[selected], minlength=n * n_out)
        for selected in (is_void & ~is_cluster, is_cluster & ~is_void, kept)
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.maximum(counts[0], counts[1]) / counts[2]
    return purity.reshape(n, n_out)


def purity_table(
    purities: Mapping[str, np.ndarray],
    outputs: Sequence[str] = OUTPUTS,
    n_boot: int | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    blocks: np.ndarray | None = None,
) -> xr.Dataset:
    """Mean purity over maps per method and output, with bootstrap intervals (maps resampled).

    Parameters
    ----------
    purities
        Method name -> purity (N, n_out) from :func:`sop_purity` or :func:`cell_purity`; all on
        the same N maps (NaN maps are left out of that method's mean).
    n_boot, seed, confidence, blocks
        As in :func:`~cosmo_sop.structures.weight_table` (None: the config schema's
        ``structures.n_boot``); every method is resampled with the same draws (the seed
        fixes them), so differences between methods are paired.

    Returns
    -------
    xarray.Dataset
        Dims (method, output): ``purity``, ``ci_low``, ``ci_high``, ``n_maps`` (maps with a
        defined purity).
    """
    n_boot = defaults("structures.n_boot") if n_boot is None else n_boot
    confidence = check_confidence(confidence)
    if not purities:
        raise InputError("argument 'purities'", "needs at least one method")
    arrays = {}
    for name, value in purities.items():
        value = np.asarray(value, dtype=np.float64)
        if value.ndim != 2 or value.shape[1] != len(outputs):
            raise InputError(
                f"purity of method {name!r}",
                f"must have shape (N, {len(outputs)}), got {value.shape}",
            )
        arrays[name] = value
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) != 1:
        raise InputError("argument 'purities'", f"methods cover different maps: {sorted(shapes)}")
    stacked = np.stack(list(arrays.values()), axis=1)  # (N, M, O)
    defined = np.isfinite(stacked)
    per_map = np.stack([np.where(defined, stacked, 0.0), defined.astype(np.float64)], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = per_map[..., 0].sum(0) / per_map[..., 1].sum(0)
        replicates = bootstrap_sums(per_map, n_boot, seed, blocks)
        boot = replicates[..., 0] / replicates[..., 1]
    lo, hi = interval(boot, confidence)
    dims = ("method", "output")
    return xr.Dataset(
        {
            "purity": (dims, mean),
            "ci_low": (dims, lo),
            "ci_high": (dims, hi),
            "n_maps": (dims, defined.sum(0).astype(np.int64)),
        },
        coords={"method": list(arrays), "output": list(outputs)},
        attrs={"n_boot": int(n_boot), "seed": int(seed), "confidence": confidence},
    )


def sop_pixel_importance(
    masks: np.ndarray, scores: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """SOP's pixel importance (N, n_out, H, W): the summed weights of the valid groups holding
    each pixel (as :func:`cosmo_sop.attribution.group_pixel_importance`, without PyTorch)."""
    masks = np.asarray(masks, dtype=bool)
    scores, valid = check_scores(scores, valid)
    weights = np.where(valid[..., None], scores, 0.0)
    return np.einsum("nmhw,nmo->nohw", masks.astype(np.float64), weights)


def method_purities(
    sigma: np.ndarray,
    importance: Mapping[str, np.ndarray],
    definitions: Sequence[StructureDefinition] = DEFAULT_DEFINITIONS,
    top_fraction: float = 0.2,
    *,
    seed: int,
) -> dict[str, np.ndarray]:
    """Purity (N, n_out) of every method by one rule, SOP included.

    Every method's parts are the cells (:func:`attribution_cells`) of its top ``top_fraction``
    pixels by |importance| (SOP's importance: :func:`sop_pixel_importance`), classified by the
    purity definitions :data:`PURITY_VOID` and :data:`PURITY_CLUSTER` (the authors' fraction
    rules) and counted as in :func:`cell_purity`. SOP's own group purity (:func:`sop_purity`)
    counts whole groups instead, which compares SOP with itself only. Ties at the cut are
    broken by keys seeded by ``seed``, the same for every method (the purities are paired).
    """
    return {
        method: cell_purity(sigma, values, definitions, top_fraction, rng=seed)
        for method, values in importance.items()
    }
