"""Voids and clusters: classify Sum-of-Parts groups by the kappa they cover, and weigh them.

The SOP paper (You et al. 2025, Sec. "cosmology") reads its CosmoGrid groups as voids and
clusters and finds that voids carry more of the weight for Omega_m and clusters more for sigma_8.
This module makes that reading reproducible, with any number of definitions in one run and
bootstrap uncertainties.

Units: the sigma map
--------------------
Every threshold is in units of the standard deviation of one map, the *sigma map*
(:func:`sigma_map`): the bin-combined map that segmentation also uses
(:func:`cosmo_sop.segmentation.detection_map`, the mean over bins of each bin's standardised map)
standardised once more per map, ``s = (d - mean(d)) / std(d)``, statistics over the patch. So
"mean above +2 sigma" means the group's mean of ``s`` exceeds 2: two standard deviations of that
map, whatever the lensing amplitude, the number of bins and their correlation (the mean of
correlated standardised bins has a standard deviation below one, hence the second
standardisation). Multiplying kappa by any positive constant changes nothing.

Definitions
-----------
A :class:`StructureDefinition` is a name, a kind (``void`` or ``cluster``) and one rule on the
group's pixels of the sigma map:

- ``mean_above: L`` (clusters) or ``mean_below: L`` (voids): the mean of the group's pixels is
  above / below L sigma;
- ``fraction_above: L`` with ``min_fraction: f`` (clusters) or ``fraction_below: L`` with
  ``min_fraction: f`` (voids): more than a fraction f of the group's pixels lie above / below
  L sigma.

All comparisons are strict. Clusters use ``*_above`` and voids ``*_below`` rules; anything else is
refused as a likely mistake. Config form (one dict per definition; see :func:`parse_definitions`)::

    - {name: void, kind: void, mean_below: 0.0}
    - {name: void_strict, kind: void, fraction_below: 0.0, min_fraction: 0.6}
    - {name: cluster, kind: cluster, mean_above: 2.0}
    - {name: cluster_3sigma, kind: cluster, mean_above: 3.0}
    - {name: cluster_strict, kind: cluster, fraction_above: 3.0, min_fraction: 0.1}

Weights
-------
The weight of a group for an output is its SOP score c_i (>= 0, summing to one over the groups
of a map for every output). :func:`weight_table` gives, per definition and output, the mean
weight of the groups of that class, and the ratio of the means for Omega_m and sigma_8, with
bootstrap confidence intervals from resampling *maps* (groups of one map are correlated: their
weights sum to one), or blocks of maps such as those of one cosmology. By default zero-weight groups
count (``nonzero_only=False``): then the mean weight over all valid groups is the same for
every output, so the Om/s8 ratio of all groups is exactly 1 and a class's ratio measures how
much more of Om's weight than of s8's it receives. With ``nonzero_only=True`` the mean is over
the groups the selector used (weight > 0) for that output, as the SOP authors' code selects the
groups it shows (``get_masks_used`` in github.com/BrachioLab/sop, notebooks/demos); the ratio
then also reflects how many groups each output uses.

Purity
------
How cleanly the most important parts of a map fall into one structure class: of a map's top
groups for an output (by default those with non-zero weight), the fraction that belongs to the
majority class among void and cluster (:func:`sop_purity`). For a pixel attribution method the
parts are *cells*: connected components of its top 20 % pixels (:func:`attribution_cells`),
classified by the same rules (:func:`cell_purity`).

Limits worth knowing
--------------------
- A group covering a fraction f of a map cannot average more than the map's top f pixels:
  about 1.5 sigma for f = 0.2 (SOP's default ``keep_fraction``) in the mock patches, noiseless
  or with stage-3 noise. Such groups are never clusters by ``mean > 2 sigma``; the weight table
  then reports an empty class and :func:`verdict` gives no verdict.
- The relaxed void rule (mean < 0) holds for about half of all *random* groups (the field is
  skewed: its median lies below its mean), so a purity near 0.5 is what chance gives; compare
  purities between methods, not with 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from scipy import ndimage
from tqdm.auto import tqdm

from cosmo_sop.errors import InputError
from cosmo_sop.segmentation import detection_map, smooth_maps

Kind = Literal["void", "cluster"]
Statistic = Literal["mean", "fraction"]

KINDS: tuple[str, ...] = ("void", "cluster")
#: The parameter names of the model outputs, in output order.
OUTPUTS: tuple[str, ...] = ("Om", "s8")
#: Thresholds reported for every group whatever the definitions (the SOP paper's levels).
REPORTED_ABOVE: tuple[float, ...] = (3.0,)
REPORTED_BELOW: tuple[float, ...] = (0.0,)
#: Maps per batched matrix product in :func:`group_statistics` (bounds the float64 mask copy).
MAPS_PER_CHUNK = 64
#: Maps per chunk in :func:`cell_purity` (bounds the memory of ranking the pixels).
CELL_MAPS_PER_CHUNK = 256
#: Bootstrap replicates per block of the resampling-count matrix (bounds its memory).
REPLICATES_PER_BLOCK = 200

_RULE_KEYS = ("mean_above", "mean_below", "fraction_above", "fraction_below")
_CONFIG_KEYS = frozenset(("name", "kind", "min_fraction", *_RULE_KEYS))


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class StructureDefinition:
    """One way of calling a group a void or a cluster.

    Attributes
    ----------
    name
        Identifier used as the coordinate of the ``definition`` dimension.
    kind
        ``"void"`` or ``"cluster"``.
    statistic
        ``"mean"``: the mean of the group's sigma-map pixels is compared with ``level``.
        ``"fraction"``: the fraction of its pixels beyond ``level`` is compared with
        ``min_fraction``.
    level
        Threshold in units of the map's standard deviation (sigma). Clusters: above it;
        voids: below it.
    min_fraction
        For ``statistic="fraction"``: the fraction of pixels beyond ``level`` must exceed this,
        in [0, 1). None for ``"mean"``.
    """

    name: str
    kind: Kind
    statistic: Statistic
    level: float
    min_fraction: float | None = None

    def __post_init__(self) -> None:
        where = f"structure definition {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise InputError(
                "structure definition", f"name must be a non-empty string, got {self.name!r}"
            )
        if self.kind not in KINDS:
            raise InputError(where, f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.statistic not in ("mean", "fraction"):
            raise InputError(
                where, f"statistic must be 'mean' or 'fraction', got {self.statistic!r}"
            )
        if not _is_finite_number(self.level):
            raise InputError(where, f"level must be a finite number of sigma, got {self.level!r}")
        if self.statistic == "fraction":
            f = self.min_fraction
            if not _is_finite_number(f) or not 0.0 <= f < 1.0:
                raise InputError(where, f"min_fraction must be a number in [0, 1), got {f!r}")
        elif self.min_fraction is not None:
            raise InputError(where, "min_fraction only goes with a fraction_above/below rule")
        # plain floats, so that definitions compare and serialise the same however they were given
        object.__setattr__(self, "level", float(self.level))
        if self.min_fraction is not None:
            object.__setattr__(self, "min_fraction", float(self.min_fraction))

    @property
    def direction(self) -> str:
        """``"above"`` for clusters, ``"below"`` for voids."""
        return "above" if self.kind == "cluster" else "below"

    @property
    def rule(self) -> str:
        """The rule in words, e.g. ``"mean > 2σ"`` or ``"> 60% of pixels < 0σ"``."""
        sign = ">" if self.direction == "above" else "<"
        if self.statistic == "mean":
            return f"mean {sign} {self.level:g}σ"
        return f"> {100 * self.min_fraction:g}% of pixels {sign} {self.level:g}σ"

    def to_config(self) -> dict[str, Any]:
        """The config dict that :func:`parse_definitions` turns back into this definition."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind,
                               f"{self.statistic}_{self.direction}": self.level}
        if self.statistic == "fraction":
            out["min_fraction"] = self.min_fraction
        return out

    def applies(self, stats: xr.Dataset) -> xr.DataArray:
        """Boolean membership of every region of ``stats`` (see :func:`group_statistics`).

        Empty regions (no pixel) and invalid groups are never members.
        """
        if self.statistic == "mean":
            mean = stats["mean_sigma"]
            member = mean > self.level if self.direction == "above" else mean < self.level
        else:
            fractions = stats[f"fraction_{self.direction}"]
            dim = f"{self.direction}_sigma"
            if self.level not in fractions[dim].values:
                raise InputError(
                    f"structure definition {self.name!r}",
                    f"the statistics hold no fraction {self.direction} {self.level:g} sigma; "
                    "compute them with this definition among `definitions`",
                )
            member = fractions.sel({dim: self.level}, drop=True) > self.min_fraction
        member = member & (stats["pixels"] > 0)
        if "valid" in stats:
            member = member & stats["valid"]
        return member


#: Default definitions. The relaxed ones (``void``, ``cluster``) follow the SOP paper's rules
#: (mean below 0; mean above 2 sigma); ``void_strict`` is its strict void (more than 60 % of the
#: pixels below 0) and ``cluster_3sigma`` a higher threshold on the mean.
#:
#: ``cluster_strict`` asks that more than 10 % of the group's pixels lie above 3 sigma: the group
#: is built around halo cores, with about 10 times the share of such pixels in a whole map (0.9 %
#: of the pixels of noiseless mock patches, 0.4 % with stage-3 shape noise). A higher fraction,
#: e.g. one half, is reached only by regions of a few tens of pixels (in 500 noiseless mock
#: patches, by the most peaked 5x5-pixel cell of 1 % of the maps and by no watershed segment),
#: so it would leave the class empty for any group SOP or the segmentation produces.
#:
#: Note the size limit of all mean rules: a group covering a fraction f of a map cannot average
#: more than the mean of the map's top f pixels, about 1.5 sigma for f = 0.2 (SOP's default
#: ``keep_fraction``) and 2.2 to 2.5 sigma for f = 0.05 in the mock patches. Large groups are
#: therefore never ``cluster`` (mean > 2 sigma); the tables then say so rather than invent a
#: ratio. ``cluster_cores`` (at least 2 % of the pixels above 3 sigma, about twice a whole map's
#: share) is a cluster class that such groups can fall into.
DEFAULT_DEFINITIONS: tuple[StructureDefinition, ...] = (
    StructureDefinition("void", "void", "mean", 0.0),
    StructureDefinition("void_strict", "void", "fraction", 0.0, 0.6),
    StructureDefinition("cluster", "cluster", "mean", 2.0),
    StructureDefinition("cluster_strict", "cluster", "fraction", 3.0, 0.1),
    StructureDefinition("cluster_3sigma", "cluster", "mean", 3.0),
    StructureDefinition("cluster_cores", "cluster", "fraction", 3.0, 0.02),
)
#: Definitions used to call a part void / cluster / neither when computing purity.
PURITY_VOID = "void"
PURITY_CLUSTER = "cluster"


def parse_definitions(
    items: Sequence[Mapping[str, Any]] | None,
    where: str = "config key 'structures.definitions'",
) -> tuple[StructureDefinition, ...]:
    """Structure definitions from their config form; None gives :data:`DEFAULT_DEFINITIONS`.

    Each item is a mapping with ``name``, ``kind`` (``void`` | ``cluster``) and exactly one rule
    key: ``mean_above`` / ``fraction_above`` for clusters, ``mean_below`` / ``fraction_below``
    for voids (a level in sigma); a fraction rule also needs ``min_fraction`` in [0, 1).
    Names must be unique.

    Raises
    ------
    InputError
        Naming ``where`` and the item, for any malformed item.
    """
    if items is None:
        return DEFAULT_DEFINITIONS
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence) or not items:
        raise InputError(where, f"must be a non-empty list of definitions, got {items!r}")
    definitions = []
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise InputError(at, f"must be a mapping, got {item!r}")
        unknown = sorted(set(item) - _CONFIG_KEYS)
        if unknown:
            raise InputError(at, f"unknown key(s) {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
        for key in ("name", "kind"):
            if key not in item:
                raise InputError(at, f"missing key {key!r}")
        rules = [key for key in _RULE_KEYS if key in item]
        if len(rules) != 1:
            raise InputError(at, f"needs exactly one of {list(_RULE_KEYS)}, got {rules or 'none'}")
        statistic, direction = rules[0].split("_")
        kind = item["kind"]
        if kind in KINDS and direction != ("above" if kind == "cluster" else "below"):
            wanted = "mean_above or fraction_above" if kind == "cluster" else \
                "mean_below or fraction_below"
            raise InputError(at, f"a {kind} is defined by {wanted}, not {rules[0]}")
        if statistic == "fraction" and "min_fraction" not in item:
            raise InputError(
                at, f"{rules[0]} needs min_fraction (the fraction of pixels to exceed)"
            )
        try:
            definition = StructureDefinition(
                name=item["name"], kind=kind, statistic=statistic, level=item[rules[0]],
                min_fraction=item.get("min_fraction"),
            )
        except InputError as exc:
            raise InputError(at, exc.problem) from None
        definitions.append(definition)
    names = [d.name for d in definitions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(where, f"duplicate definition name(s) {duplicates}")
    return tuple(definitions)


# --------------------------------------------------------------------------------------------
# Per-region statistics on the sigma map


def sigma_map(kappa: np.ndarray | xr.DataArray, smoothing_pixels: float = 0.0) -> np.ndarray:
    """The map in whose standard deviations all thresholds are expressed.

    Parameters
    ----------
    kappa
        Convergence patches, shape (N, C, H, W) (C tomographic bins; C = 1 is fine).
    smoothing_pixels
        Optional Gaussian smoothing (sigma in pixels) of the bin-combined map before the final
        standardisation, e.g. the segmentation's ``smoothing_pixels`` to classify on the map
        that was segmented. 0 (default): none.

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


def _levels(definitions: Iterable[StructureDefinition], direction: str,
            reported: Iterable[float]) -> list[float]:
    wanted = {float(d.level) for d in definitions
              if d.statistic == "fraction" and d.direction == direction}
    return sorted(wanted | {float(level) for level in reported})


def _pixel_columns(sigma: np.ndarray, above: Sequence[float], below: Sequence[float]) -> np.ndarray:
    """Per-pixel quantities summed over each region: sigma, then 1[sigma > a], 1[sigma < b]."""
    columns = [sigma]
    columns += [(sigma > level).astype(np.float64) for level in above]
    columns += [(sigma < level).astype(np.float64) for level in below]
    return np.stack(columns, axis=-1)


def _statistics_dataset(
    sums: np.ndarray, pixels: np.ndarray, above: Sequence[float], below: Sequence[float],
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
            "fraction_above": ((*dims, "above_sigma"), per_pixel[..., 1:1 + n_above]),
            "fraction_below": ((*dims, "below_sigma"), per_pixel[..., 1 + n_above:]),
        },
        coords={"above_sigma": np.asarray(above, dtype=np.float64),
                "below_sigma": np.asarray(below, dtype=np.float64)},
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
    above = _levels(definitions, "above", REPORTED_ABOVE)
    below = _levels(definitions, "below", REPORTED_BELOW)
    n, m = masks.shape[:2]
    columns = _pixel_columns(sigma.reshape(n, -1), above, below)  # (N, P, K)
    flat = masks.reshape(n, m, -1)
    sums = np.empty((n, m, columns.shape[-1]))
    for start in range(0, n, MAPS_PER_CHUNK):  # chunks of maps, not a loop over groups
        chunk = slice(start, start + MAPS_PER_CHUNK)
        np.matmul(flat[chunk].astype(np.float64), columns[chunk], out=sums[chunk])
    pixels = flat.sum(axis=-1)
    stats = _statistics_dataset(sums, pixels, above, below, ("sample", "group"))
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
    return member.transpose(..., "definition").assign_coords(
        definition=names,
        kind=("definition", [d.kind for d in definitions]),
        rule=("definition", [d.rule for d in definitions]),
    ).rename("member")


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


# --------------------------------------------------------------------------------------------
# Weights per class, with bootstrap over maps


def _check_scores(
    scores: Any, valid: Any, n_outputs: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise InputError("argument 'scores'", f"must have shape (N, m, n_out), got {scores.shape}")
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise InputError("argument 'scores'", "must be finite and >= 0 (SOP group scores)")
    if n_outputs is not None and scores.shape[-1] != n_outputs:
        raise InputError("argument 'scores'",
                         f"has {scores.shape[-1]} outputs, expected {n_outputs}")
    valid = np.ones(scores.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != scores.shape[:2]:
        raise InputError(
            "argument 'valid'", f"must have shape {scores.shape[:2]}, got {valid.shape}"
        )
    return scores, valid


def _membership_array(membership: xr.DataArray, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(membership, xr.DataArray) or "definition" not in membership.dims:
        raise InputError("argument 'membership'", "must be the DataArray returned by classify")
    array = membership.transpose("sample", "group", "definition").values.astype(bool)
    if array.shape[:2] != shape:
        raise InputError("argument 'membership'",
                         f"covers {array.shape[:2]} (sample, group), the scores {shape}")
    return array


def _block_codes(blocks: Any, n: int) -> np.ndarray:
    """Integer codes 0..B-1 of the resampling block of every map (default: each map its own)."""
    if blocks is None:
        return np.arange(n)
    blocks = np.asarray(blocks)
    if blocks.shape != (n,):
        raise InputError(
            "argument 'blocks'", f"must have one entry per map ({n}), got {blocks.shape}"
        )
    return np.unique(blocks, return_inverse=True)[1].reshape(n)


def bootstrap_sums(
    per_map: np.ndarray, n_boot: int, seed: int, blocks: Any = None
) -> np.ndarray:
    """Bootstrap replicates of column sums over maps, resampling maps (or blocks) with replacement.

    Parameters
    ----------
    per_map
        Shape (N, ...): one row per map, e.g. the sum and the count of a class's weights.
    n_boot
        Number of replicates.
    seed
        Seed of ``np.random.default_rng``; the same seed gives the same replicates.
    blocks
        Optional label per map (N,), e.g. the cosmology: whole blocks are resampled (a block
        bootstrap), so correlated maps (patches of one simulation) stay together.

    Returns
    -------
    ndarray
        Shape (n_boot, ...): for each replicate, the sum over the drawn maps.
    """
    per_map = np.asarray(per_map, dtype=np.float64)
    n = per_map.shape[0]
    if n == 0:
        raise InputError("bootstrap", "no maps to resample")
    if int(n_boot) < 1:
        raise InputError("argument 'n_boot'", f"must be >= 1, got {n_boot}")
    codes = _block_codes(blocks, n)
    n_blocks = int(codes.max()) + 1
    per_block = np.zeros((n_blocks, per_map[0].size))
    np.add.at(per_block, codes, per_map.reshape(n, -1))
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_boot), per_block.shape[1]))
    # Each replicate is a vector of draw counts per block (multinomial), so the sums of many
    # replicates are one matrix product; replicates go in batches only to bound memory.
    for start in range(0, int(n_boot), REPLICATES_PER_BLOCK):
        stop = min(start + REPLICATES_PER_BLOCK, int(n_boot))
        counts = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=stop - start)
        out[start:stop] = counts @ per_block
    return out.reshape(int(n_boot), *per_map.shape[1:])


def _interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring replicates where the statistic is undefined."""
    tail = (1.0 - confidence) / 2.0
    # "inverted_cdf" takes order statistics without interpolating, so an infinite ratio (a
    # replicate without weight for the denominator) stays a plain large value.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # empty class: NaN
        lo, hi = np.nanquantile(replicates, [tail, 1.0 - tail], axis=0, method="inverted_cdf")
    return lo, hi


def _check_confidence(confidence: float) -> float:
    if not _is_finite_number(confidence) or not 0.0 < confidence < 1.0:
        raise InputError("argument 'confidence'", f"must be in (0, 1), got {confidence!r}")
    return float(confidence)


def weight_table(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    valid: np.ndarray | xr.DataArray | None = None,
    outputs: Sequence[str] = OUTPUTS,
    nonzero_only: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    blocks: np.ndarray | None = None,
) -> xr.Dataset:
    """Mean group weight per structure class and output, and the Om/s8 ratio, with bootstrap CIs.

    Parameters
    ----------
    scores
        SOP group scores c (N, m, n_out), >= 0.
    membership
        From :func:`classify` on the same groups, dims (sample, group, definition).
    valid
        bool (N, m); invalid groups never count. Default: all.
    outputs
        Names of the outputs, in order; the ratio is ``outputs[0] / outputs[1]``.
    nonzero_only
        False (default): every valid group of the class counts, zero weights included (then the
        ratio over all groups is exactly 1; see the module docstring). True: only groups with
        weight > 0 for that output.
    n_boot, seed, confidence
        Bootstrap replicates, seed of ``np.random.default_rng``, two-sided level of the
        percentile intervals.
    blocks
        Optional resampling block per map (e.g. the cosmology); default: every map its own.

    Returns
    -------
    xarray.Dataset
        Dims (definition, output): ``mean_weight``, ``ci_low``, ``ci_high``, ``n_groups``.
        Dims (definition): ``ratio`` (mean weight for outputs[0] / for outputs[1]),
        ``ratio_low``, ``ratio_high``. Dims (output): ``mean_weight_all`` (all valid groups,
        the reference). Means are ratios of sums over maps (each group counts once); a class
        without groups gives NaN. Attrs record n_maps, n_blocks, n_boot, seed, confidence,
        nonzero_only.
    """
    scores, valid = _check_scores(scores, valid, len(outputs))
    confidence = _check_confidence(confidence)
    if len(outputs) < 2:
        raise InputError("argument 'outputs'", "needs two outputs for the ratio (e.g. Om, s8)")
    member = _membership_array(membership, scores.shape[:2]) & valid[..., None]  # (N, m, D)
    counted = np.broadcast_to(member[..., None], (*member.shape, scores.shape[-1]))  # (N,m,D,O)
    if nonzero_only:
        counted = counted & (scores[:, :, None, :] > 0)
    weight_sum = np.einsum("nmdo,nmo->ndo", counted, scores)
    group_count = counted.sum(axis=1).astype(np.float64)  # (N, D, O)
    all_counted = valid[..., None] & ((scores > 0) if nonzero_only else np.ones_like(scores, bool))
    all_sum = np.einsum("nmo,nmo->no", all_counted, scores)
    all_count = all_counted.sum(axis=1).astype(np.float64)

    def means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts

    mean = means(weight_sum.sum(0), group_count.sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = mean[:, 0] / mean[:, 1]
    per_map = np.stack([weight_sum, group_count], axis=-1)  # (N, D, O, 2)
    replicates = bootstrap_sums(per_map, n_boot, seed, blocks)
    boot_mean = means(replicates[..., 0], replicates[..., 1])  # (B, D, O)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_ratio = boot_mean[..., 0] / boot_mean[..., 1]
    lo, hi = _interval(boot_mean, confidence)
    ratio_lo, ratio_hi = _interval(boot_ratio, confidence)

    definitions = membership["definition"].values
    coords = {"definition": definitions, "output": list(outputs)}
    for extra in ("kind", "rule"):
        if extra in membership.coords:
            coords[extra] = ("definition", membership[extra].values)
    return xr.Dataset(
        {
            "mean_weight": (("definition", "output"), mean),
            "ci_low": (("definition", "output"), lo),
            "ci_high": (("definition", "output"), hi),
            "n_groups": (("definition", "output"), group_count.sum(0).astype(np.int64)),
            "ratio": (("definition",), ratio),
            "ratio_low": (("definition",), ratio_lo),
            "ratio_high": (("definition",), ratio_hi),
            "mean_weight_all": (("output",), means(all_sum.sum(0), all_count.sum(0))),
        },
        coords=coords,
        attrs={
            "n_maps": int(scores.shape[0]),
            "n_blocks": int(_block_codes(blocks, scores.shape[0]).max() + 1),
            "n_boot": int(n_boot), "seed": int(seed), "confidence": confidence,
            "nonzero_only": int(bool(nonzero_only)),
            "ratio": f"mean weight for {outputs[0]} / mean weight for {outputs[1]}",
        },
    )


def class_weights(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    definition: str,
    output: int,
    valid: np.ndarray | xr.DataArray | None = None,
    nonzero_only: bool = False,
) -> np.ndarray:
    """The weights (scores for output index ``output``) of the valid groups of one class, 1-D."""
    scores, valid = _check_scores(scores, valid)
    if definition not in membership["definition"].values:
        raise InputError("argument 'definition'",
                         f"{definition!r} not among {list(membership['definition'].values)}")
    member = membership.sel(definition=definition).transpose("sample", "group").values & valid
    weights = scores[..., output][member]
    return weights[weights > 0] if nonzero_only else weights


#: What the SOP paper finds, per kind: the sign of log(Om/s8 weight ratio).
_PAPER = {"void": (1, "voids weigh more for Om"), "cluster": (-1, "clusters weigh more for s8")}


def verdict(table: xr.Dataset, definition: str) -> str:
    """One sentence on whether one class agrees with the SOP paper, with numbers.

    The paper finds voids weigh more for Omega_m (ratio Om/s8 > 1) and clusters more for
    sigma_8 (ratio < 1). Agreement or disagreement is declared only when the bootstrap interval
    of the ratio excludes 1; otherwise the result is inconclusive.
    """
    if definition not in table["definition"].values:
        raise InputError("argument 'definition'",
                         f"{definition!r} not among {list(table['definition'].values)}")
    row = table.sel(definition=definition)
    kind = str(row["kind"].values) if "kind" in row.coords else ""
    rule = str(row["rule"].values) if "rule" in row.coords else "rule not recorded"
    outputs = list(table["output"].values)
    level = f"{100 * table.attrs['confidence']:g}% CI"
    n_maps, n_blocks = table.attrs["n_maps"], table.attrs["n_blocks"]
    sample = f"{n_maps} maps" if n_blocks == n_maps else f"{n_maps} maps in {n_blocks} blocks"
    groups = int(row["n_groups"].values.min())
    head = f"{kind}s '{definition}' ({rule})" if kind else f"'{definition}' ({rule})"
    r, lo, hi = (float(row[k]) for k in ("ratio", "ratio_low", "ratio_high"))
    if groups == 0:
        return f"{head}: no groups in this class ({sample}) — no verdict"
    if not np.isfinite(r):
        return (f"{head}: ratio undefined, zero mean weight for {outputs[1]} ({sample}, "
                f"{groups} groups) — no verdict")
    numbers = (f"{head}: {outputs[0]}/{outputs[1]} weight ratio {r:.3g} [{lo:.3g}, {hi:.3g}] "
               f"({level}, {sample}, {groups} groups)")
    if not (lo > 1.0 or hi < 1.0):  # also when the interval is undefined (NaN)
        return f"{numbers} — inconclusive (CI includes 1)"
    if kind not in _PAPER:
        return f"{numbers} — no paper expectation for kind {kind!r}"
    sign, finding = _PAPER[kind]
    observed = 1 if lo > 1.0 else -1
    if observed == sign:
        return f"{numbers} — agrees with the paper ({finding})"
    return f"{numbers} — disagrees with the paper (which finds {finding})"


def verdicts(table: xr.Dataset) -> dict[str, str]:
    """:func:`verdict` of every definition of ``table``, by name."""
    return {str(name): verdict(table, str(name)) for name in table["definition"].values}


# --------------------------------------------------------------------------------------------
# Purity


def _pick(definitions: Sequence[StructureDefinition], name: str, kind: str) -> StructureDefinition:
    for d in definitions:
        if d.name == name:
            if d.kind != kind:
                raise InputError(
                    "argument 'void'/'cluster'", f"{name!r} is a {d.kind}, not a {kind}"
                )
            return d
    raise InputError("argument 'void'/'cluster'",
                     f"no definition named {name!r} among {[d.name for d in definitions]}")


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
    scores, valid = _check_scores(scores, valid)
    if top_k is None:
        return valid[..., None] & (scores > 0)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError("argument 'top_k'", f"must be a positive integer or None, got {top_k!r}")
    key = np.where(valid[..., None], scores, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[1])[None, :, None], axis=1)
    return (rank < top_k) & valid[..., None]


def _majority_fraction(is_void: np.ndarray, is_cluster: np.ndarray, chosen: np.ndarray,
                       axis: int) -> np.ndarray:
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
    scores, valid = _check_scores(scores, valid)
    member = _membership_array(membership, scores.shape[:2])
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
) -> np.ndarray:
    """Cells of a pixel attribution: connected components of its top pixels.

    Parameters
    ----------
    attributions
        Shape (N, n_out, H, W), or (N, n_out, C, H, W) per bin, then summed over bins (the
        attribution of a sky position).
    top_fraction
        Fraction of a map's pixels that are "top": the ``ceil(top_fraction H W)`` highest,
        ties broken in raster order, and only pixels with attribution > 0 (a pixel the method
        gives nothing is not important).
    connectivity
        1: 4-neighbour cells (as the segments); 2: 8-neighbour.
    absolute
        Rank by |attribution| (default: a regression attribution's sign only says in which
        direction a pixel moves the prediction, not how much it matters).

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
        raise InputError("argument 'attributions'",
                         f"must have shape (N, n_out, H, W) or (N, n_out, C, H, W), got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError("argument 'attributions'", "must be finite")
    if not _is_finite_number(top_fraction) or not 0.0 < top_fraction <= 1.0:
        raise InputError("argument 'top_fraction'", f"must be in (0, 1], got {top_fraction!r}")
    structure = _in_plane_structure(connectivity)
    if absolute:
        a = np.abs(a)
    n, n_out, h, w = a.shape
    flat = a.reshape(n * n_out, h * w)
    n_top = math.ceil(top_fraction * h * w)
    order = np.argsort(-flat, axis=-1, kind="stable")
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
        raise InputError("argument 'cells'", f"must have shape (N, n_out, H, W) matching the "
                         f"sigma maps {sigma.shape}, got {cells.shape}")
    above = _levels(definitions, "above", REPORTED_ABOVE)
    below = _levels(definitions, "below", REPORTED_BELOW)
    n, n_out = cells.shape[:2]
    labels = cells.ravel()
    n_cells = int(labels.max()) if labels.size else 0
    columns = _pixel_columns(np.broadcast_to(sigma[:, None], cells.shape).ravel(), above, below)
    sums = np.stack([np.bincount(labels, weights=c, minlength=n_cells + 1) for c in columns.T],
                    axis=-1)[1:]
    pixels = np.bincount(labels, minlength=n_cells + 1)[1:]
    # Labels grow through the stack (each map's cells after the previous map's), so the map of
    # a cell is the first (map, output) slice whose running maximum label reaches it.
    by_slice = cells.reshape(n * n_out, -1)
    highest = by_slice.max(axis=-1)
    lowest = np.where(by_slice > 0, by_slice, np.iinfo(np.int64).max).min(axis=-1)
    reach = np.maximum.accumulate(highest)
    previous = np.concatenate([[0], reach[:-1]])
    if np.any((highest > 0) & (lowest != previous + 1)) or (cells < 0).any():
        raise InputError("argument 'cells'", "labels must run 1, 2, ... map after map "
                         "(as attribution_cells returns them)")
    owner = np.searchsorted(reach, np.arange(1, n_cells + 1), side="left")
    stats = _statistics_dataset(sums, pixels, above, below, ("cell",))
    return stats.assign_coords(sample=("cell", owner // n_out), output=("cell", owner % n_out))


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
        raise InputError("argument 'attributions'", f"must have shape (N, n_out, [C,] H, W) "
                         f"matching the sigma maps {sigma.shape}, got {shape}")
    if isinstance(min_cell_pixels, bool) or not isinstance(min_cell_pixels, (int, np.integer)) \
            or min_cell_pixels < 1:
        raise InputError(
            "argument 'min_cell_pixels'", f"must be an integer >= 1, got {min_cell_pixels!r}"
        )
    chosen = (_pick(definitions, void, "void"), _pick(definitions, cluster, "cluster"))
    n, n_out = shape[:2]
    purity = np.empty((n, n_out))
    starts = range(0, n, CELL_MAPS_PER_CHUNK)
    # chunks of maps bound the memory of the pixel ranking (several int64 copies of the maps)
    for start in tqdm(starts, desc="cell purity", unit="chunk", disable=len(starts) < 2):
        block = slice(start, start + CELL_MAPS_PER_CHUNK)
        cells = attribution_cells(np.asarray(attributions[block]), top_fraction, connectivity,
                                  absolute)
        purity[block] = _cells_purity(sigma[block], cells, *chosen, int(min_cell_pixels))
    return purity


def _cells_purity(sigma: np.ndarray, cells: np.ndarray, void: StructureDefinition,
                  cluster: StructureDefinition, min_cell_pixels: int) -> np.ndarray:
    """Majority-class fraction of the cells of each (map, output); see :func:`cell_purity`."""
    stats = cell_statistics(sigma, cells, (void, cluster))
    n, n_out = cells.shape[:2]
    kept = stats["pixels"].values >= min_cell_pixels
    owner = stats["sample"].values * n_out + stats["output"].values
    is_void = void.applies(stats).values & kept
    is_cluster = cluster.applies(stats).values & kept
    counts = [np.bincount(owner[selected], minlength=n * n_out)
              for selected in (is_void & ~is_cluster, is_cluster & ~is_void, kept)]
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.maximum(counts[0], counts[1]) / counts[2]
    return purity.reshape(n, n_out)


def purity_table(
    purities: Mapping[str, np.ndarray],
    outputs: Sequence[str] = OUTPUTS,
    n_boot: int = 1000,
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
        As in :func:`weight_table`; every method is resampled with the same draws (the seed
        fixes them), so differences between methods are paired.

    Returns
    -------
    xarray.Dataset
        Dims (method, output): ``purity``, ``ci_low``, ``ci_high``, ``n_maps`` (maps with a
        defined purity).
    """
    confidence = _check_confidence(confidence)
    if not purities:
        raise InputError("argument 'purities'", "needs at least one method")
    arrays = {}
    for name, value in purities.items():
        value = np.asarray(value, dtype=np.float64)
        if value.ndim != 2 or value.shape[1] != len(outputs):
            raise InputError(f"purity of method {name!r}",
                             f"must have shape (N, {len(outputs)}), got {value.shape}")
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
    lo, hi = _interval(boot, confidence)
    dims = ("method", "output")
    return xr.Dataset(
        {"purity": (dims, mean), "ci_low": (dims, lo), "ci_high": (dims, hi),
         "n_maps": (dims, defined.sum(0).astype(np.int64))},
        coords={"method": list(arrays), "output": list(outputs)},
        attrs={"n_boot": int(n_boot), "seed": int(seed), "confidence": confidence},
    )
