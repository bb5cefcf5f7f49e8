"""Null controls and findings, the authors' fraction rules at their thresholds, and the cosmology
bootstrap behind the weight ratios."""

from __future__ import annotations

import numpy as np
import pytest

from cosmo_sop.statistics import replicate_sums, resample_counts
from cosmo_sop.structures import (
    DEFAULT_DEFINITIONS,
    beyond,
    bootstrap_sums,
    classify,
    group_statistics,
    parse_definitions,
    weight_table,
    with_nulls,
)
from cosmo_sop.structures.nulls import random_groups, uniform_scores
from cosmo_sop.structures.weights import verdict

# ------------------------------------------------------------------------------------------
# the authors' fraction rules, exactly at their thresholds


def _planted(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One 20 x 20 sigma map per group: the group is the first 200 pixels (rows 0-9)."""
    sigma = np.zeros((len(values), 20, 20))
    masks = np.zeros((len(values), 1, 20, 20), bool)
    masks[:, 0, :10] = True
    for i, group in enumerate(values):
        sigma[i, :10] = group.reshape(10, 20)
        sigma[i, 10:] = -5.0  # outside the group: must not count
    return sigma, masks


def _group(n_special: int, special: float, rest: float) -> np.ndarray:
    return np.r_[np.full(n_special, special), np.full(200 - n_special, rest)]


def test_fraction_rules_classify_right_at_the_thresholds():
    by_name = {d.name: d for d in DEFAULT_DEFINITIONS}
    assert by_name["cluster_authors"].rule == "≥ 1.5% of pixels > 3σ"
    assert by_name["void_authors"].rule == "≥ 60% of pixels < 0σ"
    groups = [
        _group(3, 3.5, 0.5),  # 3 / 200 = 1.5 % above 3 sigma: a cluster (at least 1.5 %)
        _group(2, 3.5, 0.5),  # 1.0 %: not
        np.r_[np.full(2, 3.5), 3.0, np.full(197, 0.5)],  # the pixel at exactly 3 is not above
        _group(120, -0.5, 0.5),  # 120 / 200 = 60 % below 0: a void (at least 60 %)
        _group(119, -0.5, 0.5),  # 59.5 %: not
        np.r_[np.full(119, -0.5), 0.0, np.full(80, 0.5)],  # exactly 0 is not below
    ]
    sigma, masks = _planted(groups)
    stats = group_statistics(sigma, masks)
    np.testing.assert_array_equal(
        stats["fraction_above"].sel(above_sigma=3.0).values[:3, 0], [0.015, 0.01, 0.01]
    )
    member = classify(stats)
    cluster = member.sel(definition="cluster_authors").values[:, 0]
    void = member.sel(definition="void_authors").values[:, 0]
    np.testing.assert_array_equal(cluster, [True, False, False, False, False, False])
    np.testing.assert_array_equal(void, [False, False, False, True, False, False])
    # the paper's mean rule gives none of these 20 % groups the cluster class
    assert not member.sel(definition="cluster_paper").values.any()


def test_the_mean_of_a_group_is_bounded_by_the_two_sigma_rule():
    # the largest mean a group of a fraction p of a standardised map reaches: a two-valued map
    p = 0.2
    sigma = np.r_[np.full(20, 1.0), np.zeros(80)].reshape(1, 10, 10)
    sigma = (sigma - sigma.mean()) / sigma.std()
    masks = (sigma > 0)[:, None]
    stats = group_statistics(sigma, masks)
    bound = np.sqrt((1 - p) / p)
    assert float(stats["mean_sigma"].values[0, 0]) == pytest.approx(bound) == pytest.approx(2.0)
    # a Gaussian field's top 20 %: about 1.4 sigma
    field = np.random.default_rng(0).standard_normal((1, 200, 200))
    field = (field - field.mean()) / field.std()
    top = (field > np.quantile(field, 1 - p))[:, None]
    assert float(group_statistics(field, top)["mean_sigma"][0, 0]) == pytest.approx(1.40, abs=0.02)


# ------------------------------------------------------------------------------------------
# the cosmology bootstrap


def test_bootstrap_resamples_cosmologies_with_the_shared_draws():
    rng = np.random.default_rng(3)
    per_map = rng.random((12, 2))
    cosmologies = np.repeat(["c0", "c1", "c2", "c3"], 3)
    ours = bootstrap_sums(per_map, 300, 7, cosmologies)
    codes = np.unique(cosmologies, return_inverse=True)[1]
    shared = replicate_sums(per_map, codes, resample_counts(codes, 300, 7))
    np.testing.assert_array_equal(ours, shared)
    # every replicate draws 4 whole cosmologies: its sum is a sum of 4 cosmology sums
    totals = np.add.reduceat(per_map[:, 0], [0, 3, 6, 9])
    counts = resample_counts(codes, 300, 7)
    np.testing.assert_allclose(ours[:, 0], counts @ totals)
    scores = rng.random((12, 3, 2))
    member = classify(
        group_statistics(rng.standard_normal((12, 8, 8)), rng.random((12, 3, 8, 8)) < 0.5)
    )
    table = weight_table(scores, member, n_boot=50, blocks=cosmologies)
    assert table.attrs["n_blocks"] == 4 and table.attrs["n_maps"] == 12


# ------------------------------------------------------------------------------------------
# nulls and findings


def test_uniform_null_gives_the_planted_expectation():
    rng = np.random.default_rng(1)
    n, m = 30, 5
    valid = rng.random((n, m)) < 0.8
    valid[:, 0] = True
    scores = uniform_scores(valid, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    assert (scores[~valid] == 0).all()
    sigma = rng.standard_normal((n, 10, 10))
    masks = rng.random((n, m, 10, 10)) < 0.3
    membership = classify(group_statistics(sigma, masks, valid))
    cosmologies = np.arange(n) // 3
    table = weight_table(scores, membership, valid, n_boot=200, seed=0, blocks=cosmologies)
    for name in ("void_paper", "void_authors"):
        row = table.sel(definition=name)
        member = membership.sel(definition=name).values & valid
        assert member.any()
        # every member weighs 1 / (valid groups of its map), for both outputs: ratio exactly 1
        expected = (1.0 / valid.sum(axis=1, keepdims=True) * np.ones((n, m)))[member].mean()
        np.testing.assert_allclose(row["mean_weight"].values, expected, rtol=1e-12)
        assert float(row["ratio"]) == float(row["ratio_low"]) == float(row["ratio_high"]) == 1.0


def test_random_groups_have_the_sizes_and_only_valid_tokens():
    sizes = np.array([[3, 0, 5], [2, 2, 2]])
    token_valid = np.ones((2, 10), bool)
    token_valid[1, 6:] = False  # map 1 has 6 tokens (segments)
    drawn = random_groups(sizes, token_valid, np.random.default_rng(0))
    np.testing.assert_array_equal(drawn.sum(axis=-1), sizes)
    assert not drawn[1][:, 6:].any()
    again = random_groups(sizes, token_valid, np.random.default_rng(0))
    np.testing.assert_array_equal(drawn, again)
    other = random_groups(sizes, token_valid, np.random.default_rng(1))
    assert not np.array_equal(drawn, other)


def _table(ratio_scale: float, n: int = 60, seed: int = 0):
    """A weight table whose void class weighs ``ratio_scale`` times more for Om than for s8."""
    rng = np.random.default_rng(seed)
    definitions = parse_definitions(
        [
            {"name": "void_authors", "kind": "void", "mean_below": 0.0},
            {"name": "cluster_authors", "kind": "cluster", "mean_above": 0.0},
        ]
    )
    sigma = np.zeros((n, 4, 4))
    sigma[:, :2] = -1.0
    sigma[:, 2:] = 1.0
    masks = np.zeros((n, 2, 4, 4), bool)
    masks[:, 0, :2] = True  # a void
    masks[:, 1, 2:] = True  # a cluster
    membership = classify(group_statistics(sigma, masks, definitions=definitions), definitions)
    void_s8 = 0.3 + 0.05 * rng.random(n)
    void_om = np.clip(ratio_scale * void_s8 * (1 + 0.1 * rng.standard_normal(n)), 0, 1)
    scores = np.stack(
        [np.stack([void_om, 1 - void_om], -1), np.stack([void_s8, 1 - void_s8], -1)], -1
    )
    return weight_table(scores, membership, n_boot=300, seed=1, blocks=np.arange(n) // 4)


def test_finding_needs_every_null_interval_excluded():
    trained = _table(2.0)
    record = verdict(trained, "void_authors")
    assert record["outcome"] == "agrees"
    far, near = _table(1.2, seed=2), _table(1.95, seed=3)  # near: the intervals overlap
    result = with_nulls(record, trained, {"uniform": far})
    assert result["finding"] is True and result["nulls"]["uniform"]["excluded"] is True
    for key in ("definition", "ratio", "ci_low", "ci_high", "outcome", "agrees"):
        assert result[key] == record[key]  # the existing fields are kept
    result = with_nulls(record, trained, {"uniform": far, "initial": near})
    assert result["nulls"]["initial"]["excluded"] is False and result["finding"] is False
    assert result["nulls"]["initial"]["ci_low"] <= record["ci_high"]
    assert with_nulls(record, trained, {})["finding"] is None  # not assessed
    # an inconclusive verdict is never a finding, whatever the nulls
    flat = _table(1.0, seed=4)
    assert with_nulls(verdict(flat, "void_authors"), flat, {"uniform": far})["finding"] is False
    # A null further from 1 than SOP, disjoint from it but on the same side, is not beaten:
    # the ratio then owes nothing to training (stage3 of the demo: SOP 1.001, random 1.24).
    stronger = _table(4.0, seed=5)
    assert stronger.sel(definition="void_authors")["ratio_low"] > record["ci_high"]
    result = with_nulls(record, trained, {"random": stronger})
    assert result["nulls"]["random"]["excluded"] is False and result["finding"] is False
    # On the other side of 1, "beyond" means below.
    assert beyond(0.5, 0.7, 0.8, 0.9, side=-1) and not beyond(0.5, 0.7, 0.2, 0.4, side=-1)
