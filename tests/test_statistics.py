"""The cosmology bootstrap (cosmo_sop/statistics.py): seeded, resamples whole cosmologies."""

from __future__ import annotations

import numpy as np
import pytest

from cosmo_sop.errors import InputError
from cosmo_sop.statistics import (
    bca_interval,
    benjamini_hochberg,
    bootstrap_mean,
    bootstrap_paired_difference,
    bootstrap_ratio_of_means,
    holm,
    one_sided_p_value,
    percentile_interval,
    replicate_sums,
    resample_counts,
)


def _correlated(n_cosmo: int, per: int, seed: int, spread: float = 1.0, noise: float = 0.1):
    """Maps whose values share a cosmology offset (strongly correlated within a cosmology)."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, spread, n_cosmo)
    cosmo = np.repeat(np.arange(n_cosmo), per)
    return offsets[cosmo] + rng.normal(0.0, noise, cosmo.size), cosmo


def test_counts_are_seeded_and_sum_to_the_number_of_cosmologies():
    labels = np.array(["b", "a", "a", "c", "b"])
    one = resample_counts(labels, 50, seed=3)
    assert one.shape == (50, 3)
    assert np.all(one.sum(axis=1) == 3)
    np.testing.assert_array_equal(one, resample_counts(labels, 50, seed=3))
    assert not np.array_equal(one, resample_counts(labels, 50, seed=4))


def test_replicate_sums_match_a_loop():
    values = np.arange(10.0).reshape(5, 2)
    labels = np.array([0, 0, 1, 2, 2])
    counts = resample_counts(labels, 7, seed=0)
    sums = replicate_sums(values, labels, counts)
    per = np.stack([values[labels == c].sum(axis=0) for c in range(3)])
    np.testing.assert_allclose(sums, counts @ per)


def test_correlated_maps_widen_the_interval_against_a_per_map_bootstrap():
    values, cosmo = _correlated(12, 20, seed=1)
    by_cosmo = bootstrap_mean(values, cosmo, 2000, seed=0)
    by_map = bootstrap_mean(values, np.arange(values.size), 2000, seed=0)
    assert by_cosmo.n_cosmologies == 12 and int(by_cosmo.n_maps) == 240
    assert by_map.n_cosmologies == 240
    width_cosmo = float(by_cosmo.high - by_cosmo.low)
    width_map = float(by_map.high - by_map.low)
    assert width_cosmo > 3.0 * width_map  # ~sqrt(20) for a near-perfect within-cosmology corr.


def test_interval_covers_the_truth_on_planted_cases():
    truth = 0.5
    covered = 0
    trials = 40
    for trial in range(trials):
        values, cosmo = _correlated(15, 10, seed=100 + trial)
        values = values + truth
        ci = bootstrap_mean(values, cosmo, 1000, seed=trial)
        covered += int(ci.low <= truth <= ci.high)
    # Nominal 95%; a percentile bootstrap on 15 clusters under-covers a little.
    assert covered >= 0.8 * trials


def test_paired_difference_shares_resamples_and_cancels_the_cosmology_offset():
    base, cosmo = _correlated(10, 20, seed=2, spread=5.0, noise=0.1)
    a = base + 0.2
    diff = bootstrap_paired_difference(a, base, cosmo, 1000, seed=5)
    np.testing.assert_allclose(diff.estimate, 0.2)
    assert diff.excludes_zero()
    # Unpaired, the 0.2 shift is buried under the cosmology spread of 5.
    mean_a = bootstrap_mean(a, cosmo, 1000, seed=5)
    assert float(mean_a.low) < 0.2 < float(mean_a.high) or float(mean_a.high - mean_a.low) > 1


def test_ratio_of_means_and_nan_maps_left_out():
    num = np.array([1.0, 2.0, np.nan, 4.0])
    den = np.array([2.0, 2.0, 1.0, 4.0])
    cosmo = np.array([0, 1, 1, 2])
    ratio = bootstrap_ratio_of_means(num, den, cosmo, 200, seed=0)
    np.testing.assert_allclose(ratio.estimate, 7.0 / 8.0)
    assert int(ratio.n_maps) == 3
    assert ratio.low <= ratio.estimate <= ratio.high
    mean = bootstrap_mean(num, cosmo, 200, seed=0)
    np.testing.assert_allclose(mean.estimate, 7.0 / 3.0)
    assert int(mean.n_maps) == 3


def test_vectorised_columns_match_one_column_at_a_time():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 3, 2))
    cosmo = np.repeat(np.arange(6), 5)
    together = bootstrap_mean(values, cosmo, 300, seed=9)
    alone = bootstrap_mean(values[:, 1, 0], cosmo, 300, seed=9)
    assert together.low.shape == (3, 2)
    np.testing.assert_allclose(together.low[1, 0], alone.low)
    np.testing.assert_allclose(together.high[1, 0], alone.high)


def test_bad_arguments_are_refused():
    with pytest.raises(InputError):
        bootstrap_mean(np.zeros(3), np.zeros(2), 10, seed=0)
    with pytest.raises(InputError):
        bootstrap_mean(np.zeros(3), np.zeros(3), 0, seed=0)
    with pytest.raises(InputError):
        bootstrap_mean(np.zeros(0), np.zeros(0), 10, seed=0)


def test_paired_p_value_finds_a_shift_and_holds_its_size_on_null_draws():
    """Two-sided p of SOP − method: at its floor 2 / (B + 1) for a planted shift of the paired
    difference, and on null pairs (no difference) below 0.05 in about 5 % of 400 draws (20
    cosmologies: the percentile bootstrap is a little liberal with so few; bounds 1-10 %)."""
    n_boot = 500
    method, cosmo = _correlated(20, 3, seed=1)
    shifted = bootstrap_paired_difference(method + 0.05, method, cosmo, n_boot, seed=2)
    assert float(shifted.p_value) == pytest.approx(2 / (n_boot + 1))
    rng = np.random.default_rng(4)
    p_values, excludes_zero = [], []
    for seed in range(400):
        a = rng.normal(size=cosmo.size) + rng.normal(size=20)[cosmo]
        b = rng.normal(size=cosmo.size) + rng.normal(size=20)[cosmo]
        paired = bootstrap_paired_difference(a, b, cosmo, n_boot, seed)
        p_values.append(float(paired.p_value))
        excludes_zero.append(bool(paired.excludes_zero()))
    rejected = np.array(p_values) < 0.05
    assert 0.01 <= rejected.mean() <= 0.10, rejected.mean()
    # p and the interval of the same replicates agree but where zero sits at the interval's edge.
    assert np.mean(rejected == np.array(excludes_zero)) >= 0.97
    assert bootstrap_mean(method, cosmo, n_boot, seed=2).p_value is None  # only differences


def test_benjamini_hochberg_is_the_step_up_rule_and_keeps_nan():
    """Adjusted p_(i) = min over k >= i of p_(k) m / k, over the finite entries (m = 5)."""
    adjusted = benjamini_hochberg(np.array([[0.01, 0.04], [0.03, 0.5], [np.nan, 0.2]]))
    expected = [[0.05, 0.04 * 5 / 3], [0.04 * 5 / 3, 0.5], [np.nan, 0.2 * 5 / 4]]
    np.testing.assert_allclose(adjusted, expected, rtol=1e-12)


def test_holm_steps_down_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running max
    np.testing.assert_allclose(holm(p), [0.03, 0.06, np.nan, 0.06, 0.02])
    assert holm([0.9, 0.8])[0] == 1.0  # capped at 1
    assert holm([]).shape == (0,)


def test_one_sided_p_value_counts_the_wrong_side():
    replicates = np.array([-0.1, 0.2, 0.3, 0.0, np.nan, np.inf])  # 5 defined, 2 not above 0
    assert one_sided_p_value(replicates, 1) == pytest.approx(3 / 6)
    assert one_sided_p_value(replicates, -1) == pytest.approx(5 / 6)
    assert np.isnan(one_sided_p_value(np.array([np.nan]), 1))
    with pytest.raises(InputError, match="side"):
        one_sided_p_value(replicates, 0)


def test_bca_interval_corrects_a_biased_statistic_and_falls_back_to_percentiles():
    rng = np.random.default_rng(3)
    replicates = rng.lognormal(0.0, 0.5, size=(2000, 1))  # skewed, median 1
    # an estimate above the replicates' median: the levels move up, and so does the interval
    low, high = bca_interval(replicates, np.array([1.2]), rng.normal(1.2, 0.01, (40, 1)))
    plain_low, plain_high = percentile_interval(replicates)
    assert low[0] > plain_low[0] and high[0] > plain_high[0]
    # one block (no jackknife spread) or an infinite replicate: the percentile interval
    for jackknife in (np.ones((1, 1)), np.full((40, 1), np.inf)):
        low, high = bca_interval(replicates, np.array([1.2]), jackknife)
        np.testing.assert_array_equal([low, high], [plain_low, plain_high])
