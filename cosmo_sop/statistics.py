"""The cosmology bootstrap shared by every stage: percentile intervals that resample cosmologies.

The maps of one cosmology (patches of one simulation, its noise realisations) are correlated, so
a bootstrap that resamples single maps treats N correlated maps as N independent ones and gives
intervals that are too narrow. Every interval here resamples whole cosmologies with replacement:
a replicate is a vector of draw counts per cosmology (multinomial, C draws of C cosmologies), and
a replicate statistic is a weighted sum over cosmologies, so all replicates are one matrix
product (vectorised, no Python loop over replicates).

The same ``(cosmologies, n_boot, seed)`` gives the same draw-count matrix
(:func:`resample_counts`), so statistics bootstrapped with them (e.g. the mean of SOP and of a
baseline, and their paired difference) use the same resamples of cosmologies.

NaN values are left out: a mean is the sum of the finite values over their number, both summed
over the drawn cosmologies (a replicate that draws no finite value gives NaN, and the percentile
ignores it).

Public API: :class:`Interval`, :func:`resample_counts`, :func:`replicate_sums`,
:func:`bootstrap_mean`, :func:`bootstrap_paired_difference`, :func:`bootstrap_ratio_of_means`,
:func:`percentile_interval`, :func:`bca_interval`, :func:`bootstrap_p_value`,
:func:`one_sided_p_value`, :func:`benjamini_hochberg`, :func:`holm`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from cosmo_sop.errors import InputError

#: Two-sided level of every interval unless a caller asks for another.
CONFIDENCE = 0.95
#: Replicates per batch of the draw-count matrix (bounds its memory: batch x cosmologies).
REPLICATES_PER_BATCH = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval.

    Attributes
    ----------
    estimate, low, high
        Arrays of the statistic's shape (the trailing shape of the per-map values; 0-d for one
        column): the estimate on all maps and the interval bounds, in the values' units.
    n_maps
        Maps with a finite value, per column (same shape as ``estimate``).
    n_cosmologies
        Distinct cosmologies resampled (those with at least one map).
    n_boot, confidence
        Replicates drawn and the two-sided level of the interval.
    p_value
        For a paired difference (:func:`bootstrap_paired_difference`): the two-sided bootstrap
        p-value of a zero difference (:func:`bootstrap_p_value`), same shape; None otherwise.
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_maps: np.ndarray
    n_cosmologies: int
    n_boot: int
    confidence: float
    p_value: np.ndarray | None = None

    def excludes_zero(self) -> np.ndarray:
        """True where the whole interval lies on one side of zero (bool, statistic's shape)."""
        return (self.low > 0) | (self.high < 0)


def _codes(cosmologies: Any, n: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..C-1 of each map's cosmology and the number C of cosmologies."""
    labels = np.asarray(cosmologies)
    if labels.shape != (n,):
        raise InputError(
            "argument 'cosmologies'", f"must have one label per map ({n}), got {labels.shape}"
        )
    if n == 0:
        raise InputError("bootstrap", "no maps to resample")
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(n), len(uniques)


def _check(n_boot: int, confidence: float) -> tuple[int, float]:
    if int(n_boot) < 1:
        raise InputError("argument 'n_boot'", f"must be >= 1, got {n_boot}")
    if not 0.0 < float(confidence) < 1.0:
        raise InputError("argument 'confidence'", f"must be in (0, 1), got {confidence!r}")
    return int(n_boot), float(confidence)


def resample_counts(cosmologies: Any, n_boot: int, seed: int) -> np.ndarray:
    """Draw counts of each cosmology in each replicate: shape (n_boot, C), rows summing to C.

    Column c belongs to the c-th of the sorted distinct labels (``np.unique`` order). The same
    labels, ``n_boot`` and ``seed`` give the same matrix, whatever the statistic.
    """
    labels = np.asarray(cosmologies)
    if labels.ndim != 1:
        raise InputError("argument 'cosmologies'", f"must be 1-D, got shape {labels.shape}")
    _, n_cosmo = _codes(labels, labels.shape[0])
    n_boot, _ = _check(n_boot, CONFIDENCE)
    rng = np.random.default_rng(seed)
    uniform = np.full(n_cosmo, 1.0 / n_cosmo)
    out = np.empty((n_boot, n_cosmo), dtype=np.float64)
    # Batches only bound the memory of the multinomial draw; the stream of draws is the same.
    for start in range(0, n_boot, REPLICATES_PER_BATCH):
        stop = min(start + REPLICATES_PER_BATCH, n_boot)
        out[start:stop] = rng.multinomial(n_cosmo, uniform, size=stop - start)
    return out


def replicate_sums(values: Any, cosmologies: Any, counts: np.ndarray) -> np.ndarray:
    """Sums over the drawn maps of every replicate: ``counts @ per-cosmology sums``.

    Parameters
    ----------
    values
        Shape (N, ...): one row per map (NaN rows contribute nothing).
    cosmologies
        Shape (N,): each map's cosmology label.
    counts
        Shape (n_boot, C) from :func:`resample_counts` with the same labels.

    Returns
    -------
    ndarray
        Shape (n_boot, ...), float64.
    """
    values = np.asarray(values, dtype=np.float64)
    codes, n_cosmo = _codes(cosmologies, values.shape[0])
    flat = np.nan_to_num(values.reshape(values.shape[0], -1), nan=0.0)
    per_cosmo = np.zeros((n_cosmo, flat.shape[1]))
    np.add.at(per_cosmo, codes, flat)
    return (counts @ per_cosmo).reshape(counts.shape[0], *values.shape[1:])


def percentile_interval(
    replicates: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring replicates where the statistic is NaN."""
    tail = (1.0 - float(confidence)) / 2.0
    # "inverted_cdf" takes order statistics without interpolating between replicates.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        low, high = np.nanquantile(replicates, [tail, 1.0 - tail], axis=0, method="inverted_cdf")
    return np.asarray(low), np.asarray(high)


def bca_interval(
    replicates: np.ndarray,
    estimate: np.ndarray,
    jackknife: np.ndarray,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected and accelerated (BCa) bootstrap interval over axis 0 (Efron 1987;
    Davison & Hinkley 1997, sec. 5.3.2), for the cosmology bootstrap.

    The percentile interval of a ratio of means over a few dozen clusters under-covers (a
    skewed, biased statistic); BCa moves the percentile levels by the replicates' median bias
    ``z0`` and the acceleration ``a`` from the jackknife over the same blocks. Written out
    because :func:`scipy.stats.bootstrap` draws its own resamples of independent
    observations, while here the replicates must be the shared draws of whole cosmologies.

    Parameters
    ----------
    replicates
        (B, ...) bootstrap replicates; NaN ones are left out.
    estimate
        (...) the statistic on all data.
    jackknife
        (K, ...) the statistic with each of the K blocks left out.
    confidence
        Two-sided level.

    Returns
    -------
    low, high
        Arrays of the statistic's shape. Where ``z0`` or ``a`` is undefined (an infinite
        replicate or jackknife value, every replicate on one side, fewer than two blocks), the
        percentile interval (:func:`percentile_interval`).
    """
    from scipy.stats import norm

    replicates = np.asarray(replicates, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    jackknife = np.asarray(jackknife, dtype=np.float64)
    defined = ~np.isnan(replicates)
    n = defined.sum(axis=0)
    below = ((replicates < estimate) & defined).sum(axis=0)
    tied = ((replicates == estimate) & defined).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        z0 = norm.ppf((below + 0.5 * tied) / n)
        spread = np.nanmean(jackknife, axis=0) - jackknife
        acceleration = np.sum(spread**3, axis=0) / (6.0 * np.sum(spread**2, axis=0) ** 1.5)
    tail = (1.0 - float(confidence)) / 2.0
    z = norm.ppf([tail, 1.0 - tail]).reshape(2, *([1] * estimate.ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = norm.cdf(z0 + (z0 + z) / (1.0 - acceleration * (z0 + z)))  # (2, ...)
    usable = np.isfinite(levels).all(axis=0) & (jackknife.shape[0] >= 2)
    levels = np.where(usable, levels, np.array([tail, 1.0 - tail]).reshape(z.shape))
    low, high = np.full(estimate.shape, np.nan), np.full(estimate.shape, np.nan)
    flat = replicates.reshape(replicates.shape[0], -1)
    for j in np.flatnonzero(n.reshape(-1) > 0):  # one column per class: a handful
        column = flat[:, j][~np.isnan(flat[:, j])]
        lo, hi = (levels[k].reshape(-1)[j] for k in (0, 1))
        low.reshape(-1)[j], high.reshape(-1)[j] = np.quantile(
            column, [lo, hi], method="inverted_cdf"
        )
    return low, high


def bootstrap_p_value(replicates: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of a zero statistic, over axis 0 of its replicates.

    ``p = min(1, 2 min(1 + #{r <= 0}, 1 + #{r >= 0}) / (B + 1))`` over the B finite replicates
    (Davison & Hinkley 1997, ch. 4, doubled for two sides): p < 1 - confidence exactly where the
    percentile interval of the same replicates excludes zero, up to the ``+ 1``, which keeps p
    above zero with finitely many replicates. NaN where no replicate is finite.
    """
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = np.isfinite(replicates)
    n = finite.sum(axis=0)
    below = ((replicates <= 0) & finite).sum(axis=0)
    above = ((replicates >= 0) & finite).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2.0 * (1.0 + np.minimum(below, above)) / (n + 1.0))
    return np.where(n > 0, p, np.nan)


def one_sided_p_value(replicates: np.ndarray, side: int) -> np.ndarray:
    """One-sided bootstrap p-value, over axis 0, of the hypothesis that the statistic is not on
    ``side`` (+1: not above zero; -1: not below).

    ``p = (1 + #{side r <= 0}) / (B + 1)`` over the B replicates that are not NaN (an infinite
    replicate counts on its side): p < alpha exactly where the one-sided percentile bound at
    level 1 - alpha lies on ``side`` of zero, up to the ``+ 1``. NaN where no replicate is
    defined.
    """
    if side not in (1, -1):
        raise InputError("argument 'side'", f"must be +1 or -1, got {side!r}")
    replicates = np.asarray(replicates, dtype=np.float64)
    defined = ~np.isnan(replicates)
    n = defined.sum(axis=0)
    wrong_side = ((side * replicates <= 0) & defined).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, (1.0 + wrong_side) / (n + 1.0), np.nan)


def holm(p_values: Any) -> np.ndarray:
    """p-values adjusted for the family-wise error rate over all finite entries (any shape), by
    Holm's step-down rule (Holm 1979); NaN stays NaN. An entry is significant at level alpha
    where its adjusted p-value is below alpha.

    Written out because scipy has only false-discovery-rate adjustments and statsmodels is not
    a dependency: the k-th smallest of n p-values becomes ``max_{j <= k} min(1, (n - j + 1)
    p_(j))``.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    finite = np.isfinite(p_values)
    ordered = np.sort(p_values[finite])
    n = ordered.size
    if n:
        steps = np.maximum.accumulate(np.minimum(1.0, (n - np.arange(n)) * ordered))
        ranks = np.argsort(np.argsort(p_values[finite], kind="stable"), kind="stable")
        adjusted[finite] = steps[ranks]
    return adjusted


def benjamini_hochberg(p_values: Any) -> np.ndarray:
    """p-values adjusted for the false discovery rate over all finite entries (any shape),
    by :func:`scipy.stats.false_discovery_control` (Benjamini & Hochberg 1995); NaN stays NaN.
    An entry is significant at level alpha where its adjusted p-value is below alpha."""
    from scipy.stats import false_discovery_control

    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    finite = np.isfinite(p_values)
    if finite.any():
        adjusted[finite] = false_discovery_control(p_values[finite], method="bh")
    return adjusted


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator != 0, numerator / np.where(denominator != 0, denominator, 1), np.nan
        )


def _mean_replicates(
    values: np.ndarray, cosmologies: Any, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The replicates of the mean over maps, the estimate, the finite maps per column and the
    number of cosmologies."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values).astype(np.float64)
    values = np.where(finite > 0, values, np.nan)
    counts = resample_counts(cosmologies, n_boot, seed)
    replicates = _ratio(
        replicate_sums(values, cosmologies, counts), replicate_sums(finite, cosmologies, counts)
    )
    n_maps = finite.sum(axis=0)
    estimate = _ratio(np.nansum(values, axis=0), n_maps)
    return replicates, np.asarray(estimate), n_maps.astype(np.int64), counts.shape[1]


def _mean_interval(
    values: np.ndarray,
    cosmologies: Any,
    n_boot: int,
    seed: int,
    confidence: float,
    with_p_value: bool = False,
) -> Interval:
    n_boot, confidence = _check(n_boot, confidence)
    replicates, estimate, n_maps, n_cosmologies = _mean_replicates(
        values, cosmologies, n_boot, seed
    )
    low, high = percentile_interval(replicates, confidence)
    return Interval(
        estimate=estimate,
        low=low,
        high=high,
        n_maps=np.asarray(n_maps),
        n_cosmologies=n_cosmologies,
        n_boot=n_boot,
        confidence=confidence,
        p_value=bootstrap_p_value(replicates) if with_p_value else None,
    )


def bootstrap_mean(
    values: Any, cosmologies: Any, n_boot: int, seed: int, confidence: float = CONFIDENCE
) -> Interval:
    """Mean over maps of each column of ``values`` (N, ...) with its cosmology-bootstrap interval.

    Parameters
    ----------
    values
        Shape (N, ...), per-map scores in any unit (NaN = no score for that map).
    cosmologies
        Shape (N,), the cosmology label of each map; whole cosmologies are resampled.
    n_boot
        Replicates.
    seed
        Seed of the resampling (``np.random.default_rng``).
    confidence
        Two-sided level of the percentile interval.
    """
    return _mean_interval(values, cosmologies, n_boot, seed, confidence)


def bootstrap_paired_difference(
    a: Any,
    b: Any,
    cosmologies: Any,
    n_boot: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Mean over maps of ``a - b`` (paired: row i of both is the same map), with its interval
    and the two-sided bootstrap p-value of a zero difference (``p_value``).

    A map where either value is NaN is left out of the difference. The resamples are those of
    :func:`bootstrap_mean` with the same labels and seed, so the interval of a difference and
    those of the two means come from the same draws of cosmologies.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError("paired difference", f"shapes differ: {a.shape} vs {b.shape}")
    return _mean_interval(a - b, cosmologies, n_boot, seed, confidence, with_p_value=True)


def bootstrap_ratio_of_means(
    numerator: Any,
    denominator: Any,
    cosmologies: Any,
    n_boot: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> Interval:
    """``mean(numerator) / mean(denominator)`` over maps, with its cosmology-bootstrap interval.

    Both are (N, ...) per-map values of the same maps, e.g. a group class's weight sum and its
    group count per map, or SOP's and the backbone's squared errors. A map where either is NaN
    is left out of both. A replicate whose denominator sums to zero gives NaN and is ignored by
    the percentiles; ``n_maps`` counts the maps used.
    """
    n_boot, confidence = _check(n_boot, confidence)
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape:
        raise InputError("ratio of means", f"shapes differ: {num.shape} vs {den.shape}")
    keep = np.isfinite(num) & np.isfinite(den)
    num = np.where(keep, num, 0.0)
    den = np.where(keep, den, 0.0)
    counts = resample_counts(cosmologies, n_boot, seed)
    replicates = _ratio(
        replicate_sums(num, cosmologies, counts), replicate_sums(den, cosmologies, counts)
    )
    low, high = percentile_interval(replicates, confidence)
    return Interval(
        estimate=np.asarray(_ratio(num.sum(axis=0), den.sum(axis=0))),
        low=low,
        high=high,
        n_maps=np.asarray(keep.sum(axis=0).astype(np.int64)),
        n_cosmologies=counts.shape[1],
        n_boot=n_boot,
        confidence=confidence,
    )
