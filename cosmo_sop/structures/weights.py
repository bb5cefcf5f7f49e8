"""Weigh the structure classes for Omega_m and sigma_8, with bootstrap intervals, and compare
with the SOP paper.

The weight of a group for an output is its SOP score c_i (>= 0, summing to one over the groups
of a map for every output). :func:`weight_table` gives, per definition and output, the mean
weight of the groups of that class, and the ratio of the means for Omega_m and sigma_8, with
bootstrap confidence intervals from resampling *maps* (groups of one map are correlated: their
weights sum to one), or blocks of maps such as those of one cosmology. By default zero-weight
groups count (``nonzero_only=False``): then the mean weight over all valid groups is the same for
every output, so the Om/s8 ratio of all groups is exactly 1 and a class's ratio measures how
much more of Om's weight than of s8's it receives. With ``nonzero_only=True`` the mean is over
the groups the selector used (weight > 0) for that output, as the SOP authors' code selects the
groups it shows (``get_masks_used`` in github.com/BrachioLab/sop, notebooks/demos); the ratio
then also reflects how many groups each output uses.

:func:`verdict` turns one class's ratio and interval into a record of whether it agrees with
the paper's finding (:data:`~cosmo_sop.structures.definitions.PAPER_FINDINGS`); the report
puts records into words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.statistics import bca_interval
from cosmo_sop.storage import finite_or_none
from cosmo_sop.structures.bootstrap import block_codes, bootstrap_sums, check_confidence, interval
from cosmo_sop.structures.definitions import OUTPUTS, PAPER_FINDINGS


def check_scores(
    scores: Any, valid: Any, n_outputs: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SOP scores (N, m, n_out) as float64 and the valid groups (N, m) as bool (default: all),
    refused unless finite, >= 0 and of matching shapes."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3:
        raise InputError("argument 'scores'", f"must have shape (N, m, n_out), got {scores.shape}")
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise InputError("argument 'scores'", "must be finite and >= 0 (SOP group scores)")
    if n_outputs is not None and scores.shape[-1] != n_outputs:
        raise InputError(
            "argument 'scores'", f"has {scores.shape[-1]} outputs, expected {n_outputs}"
        )
    valid = np.ones(scores.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != scores.shape[:2]:
        raise InputError(
            "argument 'valid'", f"must have shape {scores.shape[:2]}, got {valid.shape}"
        )
    return scores, valid


def membership_array(membership: xr.DataArray, shape: tuple[int, int]) -> np.ndarray:
    """bool (sample, group, definition) of a :func:`~cosmo_sop.structures.classes.classify` result,
    refused unless it covers ``shape`` (sample, group)."""
    if not isinstance(membership, xr.DataArray) or "definition" not in membership.dims:
        raise InputError("argument 'membership'", "must be the DataArray returned by classify")
    array = membership.transpose("sample", "group", "definition").values.astype(bool)
    if array.shape[:2] != shape:
        raise InputError(
            "argument 'membership'", f"covers {array.shape[:2]} (sample, group), the scores {shape}"
        )
    return array


def _mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Ratio of sums, NaN where nothing was counted (an empty class)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _ratio(means: np.ndarray) -> np.ndarray:
    """outputs[0] / outputs[1] of class means (..., O) -> (...)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return means[..., 0] / means[..., 1]


def _class_sums(
    scores: np.ndarray, member: np.ndarray, valid: np.ndarray, nonzero_only: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: the weight sum and group count of every class and output (N, D, O), and the mean
    weight of all counted groups per output (O,), the reference."""
    counted = np.broadcast_to(member[..., None], (*member.shape, scores.shape[-1]))  # (N,m,D,O)
    if nonzero_only:
        counted = counted & (scores[:, :, None, :] > 0)
    weight_sum = np.einsum("nmdo,nmo->ndo", counted, scores)
    group_count = counted.sum(axis=1).astype(np.float64)  # (N, D, O)
    all_counted = valid[..., None] & ((scores > 0) if nonzero_only else np.ones_like(scores, bool))
    all_sum = np.einsum("nmo,nmo->no", all_counted, scores)
    all_count = all_counted.sum(axis=1).astype(np.float64)
    return weight_sum, group_count, _mean(all_sum.sum(0), all_count.sum(0))


def _bootstrap_intervals(
    weight_sum: np.ndarray,
    group_count: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float,
    blocks: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Percentile intervals of the class means (D, O) and BCa intervals of their ratio
    outputs[0]/outputs[1] (D,), from one set of bootstrap replicates of the per-map sums; ``dropped`` (D,): the
    share of replicates whose ratio is undefined (they drew no group of the class), which the
    percentiles leave out; ``ratio_replicates`` (B, D): the replicates themselves, for the
    paired tests of :mod:`~cosmo_sop.structures.findings`."""
    per_map = np.stack([weight_sum, group_count], axis=-1)  # (N, D, O, 2)
    replicates = bootstrap_sums(per_map, n_boot, seed, blocks)
    boot_mean = _mean(replicates[..., 0], replicates[..., 1])  # (B, D, O)
    boot_ratio = _ratio(boot_mean)
    lo, hi = interval(boot_mean, confidence)
    # the ratio, skewed and biased over few cosmologies: BCa, jackknifed over the same blocks
    per_block = _block_sums(per_map, blocks)
    total = per_block.sum(axis=0)
    estimate = _ratio(_mean(total[..., 0], total[..., 1]))
    left_out = total - per_block
    jackknife = _ratio(_mean(left_out[..., 0], left_out[..., 1]))
    ratio_lo, ratio_hi = bca_interval(boot_ratio, estimate, jackknife, confidence)
    return {
        "ci_low": lo,
        "ci_high": hi,
        "ratio_low": ratio_lo,
        "ratio_high": ratio_hi,
        "dropped": np.isnan(boot_ratio).mean(axis=0),
        "ratio_replicates": boot_ratio,
    }


def score_evenness(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """How evenly a selector spreads each map's weight, per output (O,): the entropy of the
    scores over a map's valid groups divided by its maximum, the log of their number, averaged
    over maps with two valid groups or more. 1: uniform scores (the selector at its uniform
    start); towards 0: all weight on one group. A ratio made by one output's uneven weights
    reads differently from one where both outputs moved."""
    c = np.where(valid[..., None], scores, 0.0)  # (N, m, O)
    total = c.sum(axis=1, keepdims=True)
    p = np.divide(c, total, out=np.zeros_like(c), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)  # (N, O)
    n_valid = valid.sum(axis=1)
    usable = n_valid >= 2
    if not usable.any():
        return np.full(scores.shape[-1], np.nan)
    return (entropy[usable] / np.log(n_valid[usable])[:, None]).mean(axis=0)


def _block_sums(per_map: np.ndarray, blocks: np.ndarray | None) -> np.ndarray:
    """Per-map values (N, ...) summed within each resampling block (K, ...)."""
    codes = block_codes(blocks, per_map.shape[0])
    per_block = np.zeros((codes.max() + 1, *per_map.shape[1:]))
    np.add.at(per_block, codes, per_map)
    return per_block


def _contributing_blocks(group_count: np.ndarray, blocks: np.ndarray | None) -> np.ndarray:
    """How many resampling blocks (cosmologies) hold at least one group of each class and
    output (D, O): the units a class's interval really rests on."""
    return (_block_sums(group_count, blocks) > 0).sum(axis=0).astype(np.int64)


def weight_table(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    valid: np.ndarray | xr.DataArray | None = None,
    outputs: Sequence[str] = OUTPUTS,
    nonzero_only: bool | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    blocks: np.ndarray | None = None,
) -> xr.Dataset:
    """Mean group weight per structure class and output, and the Om/s8 ratio, with bootstrap CIs.

    Parameters
    ----------
    scores
        SOP group scores c (N, m, n_out), >= 0, dimensionless.
    membership
        From :func:`~cosmo_sop.structures.classes.classify` on the same groups, dims
        (sample, group, definition).
    valid
        bool (N, m); invalid groups never count. Default: all.
    outputs
        Names of the outputs, in order; the ratio is ``outputs[0] / outputs[1]``.
    nonzero_only
        False: every valid group of the class counts, zero weights included (then the ratio over
        all groups is exactly 1; see the module docstring). True: only groups with weight > 0
        for that output. None: the config schema's ``structures.nonzero_only``.
    n_boot, seed, confidence
        Bootstrap replicates (None: the schema's ``structures.n_boot``), seed of
        ``np.random.default_rng``, two-sided level of the intervals (percentile for the
        means, BCa for the ratio: :func:`cosmo_sop.statistics.bca_interval`).
    blocks
        Optional resampling block per map (e.g. the cosmology); default: every map its own.

    Returns
    -------
    xarray.Dataset
        Dims (definition, output): ``mean_weight``, ``ci_low``, ``ci_high``, ``n_groups``,
        ``n_contributing`` (blocks, i.e. cosmologies by default, holding a group of the class);
        (definition): ``ratio`` (mean weight for outputs[0] / for outputs[1]), ``ratio_low``,
        ``ratio_high``, ``dropped_replicates`` (share of replicates without a group of the
        class, left out of the interval); (replicate, definition): ``ratio_replicates`` (the
        bootstrap replicates of the ratio, NaN where undefined: the same seed and blocks draw
        the same cosmologies in every table, so two tables' replicates pair up); (output):
        ``mean_weight_all`` (all valid groups, the
        reference), ``score_evenness`` (:func:`score_evenness`). Means are ratios of sums over
        maps (each group counts once); NaN for a class without groups.
        Attrs: n_maps, n_blocks, n_boot, seed, confidence, nonzero_only.
    """
    nonzero_only = defaults("structures.nonzero_only") if nonzero_only is None else nonzero_only
    n_boot = defaults("structures.n_boot") if n_boot is None else n_boot
    scores, valid = check_scores(scores, valid, len(outputs))
    confidence = check_confidence(confidence)
    if len(outputs) < 2:
        raise InputError("argument 'outputs'", "needs two outputs for the ratio (e.g. Om, s8)")
    member = membership_array(membership, scores.shape[:2]) & valid[..., None]  # (N, m, D)
    weight_sum, group_count, mean_all = _class_sums(scores, member, valid, nonzero_only)
    mean = _mean(weight_sum.sum(0), group_count.sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = mean[:, 0] / mean[:, 1]
    ci = _bootstrap_intervals(weight_sum, group_count, n_boot, seed, confidence, blocks)

    coords = {"definition": membership["definition"].values, "output": list(outputs)}
    for extra in ("kind", "rule"):
        if extra in membership.coords:
            coords[extra] = ("definition", membership[extra].values)
    by_class, by_definition = ("definition", "output"), ("definition",)
    return xr.Dataset(
        {
            "mean_weight": (by_class, mean),
            "ci_low": (by_class, ci["ci_low"]),
            "ci_high": (by_class, ci["ci_high"]),
            "n_groups": (by_class, group_count.sum(0).astype(np.int64)),
            "n_contributing": (by_class, _contributing_blocks(group_count, blocks)),
            "ratio": (by_definition, ratio),
            "ratio_low": (by_definition, ci["ratio_low"]),
            "ratio_high": (by_definition, ci["ratio_high"]),
            "dropped_replicates": (by_definition, ci["dropped"]),
            "ratio_replicates": (("replicate", "definition"), ci["ratio_replicates"]),
            "mean_weight_all": (("output",), mean_all),
            "score_evenness": (("output",), score_evenness(scores, valid)),
        },
        coords=coords,
        attrs=_table_attrs(
            scores.shape[0], blocks, n_boot, seed, confidence, nonzero_only, outputs
        ),
    )


def _table_attrs(
    n_maps: int,
    blocks: np.ndarray | None,
    n_boot: int,
    seed: int,
    confidence: float,
    nonzero_only: bool,
    outputs: Sequence[str],
) -> dict[str, Any]:
    """The settings a weight table was made with, and what its ratio means."""
    return {
        "n_maps": int(n_maps),
        "n_blocks": int(block_codes(blocks, n_maps).max() + 1),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "confidence": confidence,
        "nonzero_only": int(bool(nonzero_only)),
        "ratio": f"mean weight for {outputs[0]} / mean weight for {outputs[1]}",
    }


def class_weights(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    definition: str,
    output: int,
    valid: np.ndarray | xr.DataArray | None = None,
    nonzero_only: bool | None = None,
) -> np.ndarray:
    """The weights (scores for output index ``output``) of the valid groups of one class, 1-D.

    ``nonzero_only``: keep only weights > 0; None: the config schema's
    ``structures.nonzero_only``.
    """
    nonzero_only = defaults("structures.nonzero_only") if nonzero_only is None else nonzero_only
    scores, valid = check_scores(scores, valid)
    if definition not in membership["definition"].values:
        raise InputError(
            "argument 'definition'",
            f"{definition!r} not among {list(membership['definition'].values)}",
        )
    member = membership.sel(definition=definition).transpose("sample", "group").values & valid
    weights = scores[..., output][member]
    return weights[weights > 0] if nonzero_only else weights


# --------------------------------------------------------------------------------------------
# Verdicts: records, put into words by the report


#: Outcomes of :func:`verdict`.
Outcome = Literal[
    "agrees", "disagrees", "inconclusive", "no_groups", "too_few", "undefined", "no_expectation"
]
OUTCOMES: tuple[str, ...] = (
    "agrees",
    "disagrees",
    "inconclusive",
    "no_groups",
    "too_few",
    "undefined",
    "no_expectation",
)


def _outcome(
    n_groups: int,
    n_contributing: int,
    ratio: float,
    low: float,
    high: float,
    heavier: str | None,
    outputs: list[str],
) -> Outcome:
    if n_groups == 0:
        return "no_groups"
    if not np.isfinite(ratio):
        return "undefined"
    if not (low > 1.0 or high < 1.0):  # also when the interval is undefined (NaN)
        return "inconclusive"
    if n_contributing < 2:
        # all of the class's groups lie in one bootstrap block (cosmology): every resample
        # gives the same ratio, an interval of zero width that says nothing about the
        # uncertainty. (Across many blocks a zero width is a ratio that truly never varies.)
        return "inconclusive"
    if heavier not in outputs[:2]:
        return "no_expectation"
    observed = outputs[0] if low > 1.0 else outputs[1]
    return "agrees" if observed == heavier else "disagrees"


def verdict(table: xr.Dataset, definition: str, min_blocks: int | None = None) -> dict[str, Any]:
    """Whether one class agrees with the SOP paper, as a record.

    The paper finds voids weigh more for Omega_m (ratio Om/s8 > 1) and clusters more for
    sigma_8 (ratio < 1), see :data:`~cosmo_sop.structures.definitions.PAPER_FINDINGS`.
    Agreement or disagreement is declared only when the bootstrap interval of the ratio
    excludes 1; otherwise the result is inconclusive.

    Parameters
    ----------
    table
        From :func:`weight_table`.
    definition
        One of its definitions.
    min_blocks
        The fewest bootstrap blocks (cosmologies by default) that must hold the class's groups
        for a verdict; None: the schema's ``structures.min_blocks``.

    Returns
    -------
    dict
        ``definition``; ``kind`` and ``rule`` (None if the table does not record them);
        ``n_groups`` (the class's groups, the fewer of the two outputs'); ``n_contributing``
        (the blocks, cosmologies by default, that hold them, the fewer of the two outputs');
        ``dropped_replicates`` (the share of bootstrap replicates without a group of the class,
        left out of the interval); ``relative_weight`` (output ->
        the class's mean weight over the mean weight of all groups: 1 for a class weighed like
        the average group; with zero weights counted, the default, the ratio is the quotient of
        the two outputs' values, which say which output's weights make it); ``ratio``,
        ``ci_low``,
        ``ci_high`` (the weight ratio outputs[0] / outputs[1] and its interval, dimensionless;
        None where not finite); ``outcome``, checked in this order: ``"no_groups"`` (empty
        class), ``"too_few"`` (its groups in fewer than ``min_blocks`` blocks: a percentile
        bootstrap over so few under-covers), ``"undefined"`` (ratio not finite),
        ``"inconclusive"`` (the interval includes 1,
        is undefined, or every group of the class lies in one bootstrap block),
        ``"no_expectation"`` (the paper says nothing about this kind or these outputs),
        ``"agrees"`` or ``"disagrees"``; ``agrees`` (True / False for those two,
        otherwise None); ``expected_heavier`` (the output the paper finds heavier for this kind,
        None if it has no finding). The sample size and confidence level are the table's attrs.

    Raises
    ------
    InputError
        If ``definition`` is not in the table.
    """
    if definition not in table["definition"].values:
        raise InputError(
            "argument 'definition'", f"{definition!r} not among {list(table['definition'].values)}"
        )
    row = table.sel(definition=definition)
    kind = str(row["kind"].values) if "kind" in row.coords else None
    rule = str(row["rule"].values) if "rule" in row.coords else None
    n_groups = int(row["n_groups"].values.min())
    n_contributing = int(row["n_contributing"].values.min())
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = row["mean_weight"] / table["mean_weight_all"]
    relative_weight = {
        str(o): finite_or_none(relative.sel(output=o)) for o in relative["output"].values
    }
    ratio, low, high = (float(row[k]) for k in ("ratio", "ratio_low", "ratio_high"))
    heavier = PAPER_FINDINGS[kind]["heavier"] if kind in PAPER_FINDINGS else None
    outputs = [str(o) for o in table["output"].values]
    min_blocks = defaults("structures.min_blocks") if min_blocks is None else int(min_blocks)
    if 0 < n_contributing < min_blocks:
        outcome: Outcome = "too_few"
    else:
        outcome = _outcome(n_groups, n_contributing, ratio, low, high, heavier, outputs)
    return {
        "definition": str(definition),
        "kind": kind,
        "rule": rule,
        "n_groups": n_groups,
        "n_contributing": n_contributing,
        "dropped_replicates": finite_or_none(row["dropped_replicates"]),
        "relative_weight": relative_weight,
        "ratio": finite_or_none(ratio),
        "ci_low": finite_or_none(low),
        "ci_high": finite_or_none(high),
        "outcome": outcome,
        "agrees": {"agrees": True, "disagrees": False}.get(outcome),
        "expected_heavier": heavier,
    }


def verdicts(table: xr.Dataset, min_blocks: int | None = None) -> list[dict[str, Any]]:
    """:func:`verdict` of every definition of ``table``, in its order."""
    return [verdict(table, str(name), min_blocks) for name in table["definition"].values]
