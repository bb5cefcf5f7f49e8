"""Voids and clusters: sigma units, classification under every definition, the config parser,
weights with bootstrap intervals, the paper verdict, purity of groups and of attribution cells,
vectorised results against brute-force loops, and the figures."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as skimage_label

from cosmo_sop.errors import InputError
from cosmo_sop.figures.structures import plot_groups, plot_weight_histograms
from cosmo_sop.structures import (
    DEFAULT_DEFINITIONS,
    PAPER_FINDINGS,
    attribution_cells,
    bootstrap_sums,
    cell_purity,
    cell_statistics,
    class_weights,
    classify,
    group_labels,
    group_statistics,
    parse_definitions,
    purity_table,
    sigma_map,
    sop_purity,
    top_groups,
    verdict,
    verdicts,
    weight_table,
)

SIZE = 40
BIN_AMPLITUDES = (0.004, 0.01, 0.03)  # very different lensing amplitudes per bin


def disk(centre: tuple[int, int], radius: float, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


VOID = disk((10, 10), 3)
PEAK = disk((28, 28), 3)
PLATEAU = np.zeros((SIZE, SIZE), bool)
PLATEAU[2:8, 25:37] = True  # mildly over-dense: neither void nor cluster


def planted_maps(n_maps: int = 3, seed: int = 0) -> np.ndarray:
    """kappa (n, 3 bins, SIZE, SIZE): weak noise, a deep void, a high peak, a mild plateau."""
    rng = np.random.default_rng(seed)
    base = 0.05 * rng.standard_normal((n_maps, 1, SIZE, SIZE))
    base[..., VOID] = -1.0
    base[..., PEAK] = 1.0
    base[..., PLATEAU] = 0.15
    bins = base + 0.02 * rng.standard_normal((n_maps, len(BIN_AMPLITUDES), SIZE, SIZE))
    return bins * np.asarray(BIN_AMPLITUDES)[None, :, None, None]


def planted_masks(n_maps: int) -> np.ndarray:
    """Groups exactly on the void, the peak and the plateau, plus one empty (unfilled) group."""
    groups = np.stack([VOID, PEAK, PLATEAU, np.zeros_like(VOID)])
    return np.broadcast_to(groups, (n_maps, *groups.shape)).copy()


# ------------------------------------------------------------------------------------------
# sigma units and classification


def test_sigma_map_is_standardised_bin_combination():
    kappa = planted_maps()
    sigma = sigma_map(kappa, 0.0)
    assert sigma.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(sigma.mean(axis=(1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(sigma.std(axis=(1, 2)), 1, rtol=1e-12)
    # every bin weighs equally: the strongest bin alone would give a different map
    alone = sigma_map(kappa[:, 2:], 0.0)
    assert not np.allclose(sigma, alone)
    assert np.all(sigma_map(np.zeros((2, 1, 5, 5)), 0.0) == 0)  # constant map: zeros, not NaN
    smoothed = sigma_map(kappa, smoothing_pixels=1.0)  # the map as segmented, still in sigma
    np.testing.assert_allclose(smoothed.std(axis=(1, 2)), 1, rtol=1e-12)
    assert np.abs(np.diff(smoothed, axis=-1)).mean() < np.abs(np.diff(sigma, axis=-1)).mean()


def test_classification_smoothing_follows_segmentation_unless_set():
    from cosmo_sop.config import defaults, validate_config
    from cosmo_sop.structures import classification_smoothing

    # null (the default): the segmentation's smoothing, the map that was segmented
    assert defaults("structures.smoothing_pixels") is None
    segmented = defaults("segmentation.smoothing_pixels")
    assert classification_smoothing(validate_config({})) == segmented
    assert classification_smoothing() == classification_smoothing({}) == segmented
    config = validate_config({"segmentation": {"smoothing_pixels": 2.5}})
    assert classification_smoothing(config) == 2.5
    # set: its own value, whatever the segmentation's (0: the unsmoothed map)
    for own in (0.0, 3):
        config = validate_config(
            {"segmentation": {"smoothing_pixels": 2.5}, "structures": {"smoothing_pixels": own}}
        )
        assert classification_smoothing(config) == float(own)
    with pytest.raises(InputError, match="smoothing_pixels"):
        validate_config({"structures": {"smoothing_pixels": -1.0}})


def test_planted_void_and_peak_are_classified_under_every_definition():
    kappa = planted_maps()
    stats = group_statistics(sigma_map(kappa, 0.0), planted_masks(3))
    member = classify(stats)
    assert member.dims == ("sample", "group", "definition")
    expected = {  # groups: void, peak, plateau, empty
        "void_paper": [1, 0, 0, 0],
        "void_authors": [1, 0, 0, 0],
        "cluster_paper": [0, 1, 0, 0],
        "cluster_authors": [0, 1, 0, 0],
    }
    for name, groups in expected.items():
        np.testing.assert_array_equal(
            member.sel(definition=name).values,
            np.tile(np.asarray(groups, bool), (3, 1)),
            err_msg=name,
        )
    # the statistics behind it, in sigma of each map
    means = stats["mean_sigma"].values
    assert (means[:, 0] < -3).all() and (means[:, 1] > 3).all()
    np.testing.assert_allclose(stats["fraction_below"].sel(below_sigma=0.0).values[:, 0], 1.0)
    np.testing.assert_allclose(stats["fraction_above"].sel(above_sigma=3.0).values[:, 1], 1.0)
    assert (stats["pixels"].values == [[VOID.sum(), PEAK.sum(), PLATEAU.sum(), 0]]).all()
    assert not stats["valid"].values[:, 3].any() and np.isnan(means[:, 3]).all()
    np.testing.assert_array_equal(group_labels(member)[0], ["void", "cluster", "", ""])


def test_scale_invariance():
    kappa = planted_maps(seed=3)
    masks = np.random.default_rng(1).random((3, 6, SIZE, SIZE)) < 0.3
    a = group_statistics(sigma_map(kappa, 0.0), masks)
    b = group_statistics(sigma_map(7.0 * kappa, 0.0), masks)
    for name in ("mean_sigma", "fraction_above", "fraction_below"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-10, atol=1e-12)
    assert (classify(a) == classify(b)).all()


def test_threshold_list_gives_one_column_per_definition():
    config = [
        {"name": "cluster_1sigma", "kind": "cluster", "mean_above": 1.0},
        {"name": "cluster_4sigma", "kind": "cluster", "mean_above": 4.0},
        {"name": "void_half", "kind": "void", "fraction_below": -0.5, "min_fraction": 0.5},
    ]
    definitions = parse_definitions(config)
    stats = group_statistics(
        sigma_map(planted_maps(), 0.0), planted_masks(3), definitions=definitions
    )
    member = classify(stats, definitions)
    assert member.shape == (3, 4, 3)
    assert list(member["definition"].values) == [c["name"] for c in config]
    assert list(member["kind"].values) == ["cluster", "cluster", "void"]
    assert list(member["rule"].values) == ["mean > 1σ", "mean > 4σ", "≥ 50% of pixels < -0.5σ"]
    assert -0.5 in stats["below_sigma"].values and 0.0 in stats["below_sigma"].values
    assert [d.to_config() for d in definitions] == config
    assert parse_definitions(None) == DEFAULT_DEFINITIONS
    assert parse_definitions([d.to_config() for d in DEFAULT_DEFINITIONS]) == DEFAULT_DEFINITIONS


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"name": "a", "kind": "void", "mean_above": 1.0}], "mean_below or fraction_below"),
        ([{"name": "a", "kind": "halo", "mean_above": 1.0}], "kind must be one of"),
        ([{"name": "a", "kind": "void"}], "exactly one of"),
        ([{"name": "a", "kind": "void", "mean_below": 0, "fraction_below": 0}], "exactly one of"),
        ([{"name": "a", "kind": "void", "fraction_below": 0.0}], "needs min_fraction"),
        ([{"name": "a", "kind": "void", "fraction_below": 0.0, "min_fraction": 1.5}], "(0, 1)"),
        ([{"name": "a", "kind": "void", "fraction_below": 0.0, "min_fraction": 0}], "(0, 1)"),
        ([{"name": "a", "kind": "void", "mean_below": 0.0, "min_fraction": 0.5}], "only goes"),
        ([{"name": "a", "kind": "cluster", "mean_above": "2"}], "finite number"),
        ([{"name": "a", "kind": "cluster", "mean_above": 2, "colour": "red"}], "unknown key"),
        ([{"kind": "cluster", "mean_above": 2}], "missing key 'name'"),
        ([{"name": "a", "kind": "void", "mean_below": 0}] * 2, "duplicate"),
        ([], "non-empty list"),
        ({"name": "a"}, "non-empty list"),
    ],
)
def test_bad_definitions_are_refused_with_the_config_key(items, message):
    with pytest.raises(InputError, match="structures.definitions") as info:
        parse_definitions(items)
    assert message in str(info.value)


def test_bad_arrays_raise_input_error():
    sigma = sigma_map(planted_maps(), 0.0)
    with pytest.raises(InputError, match="masks"):
        group_statistics(sigma, planted_masks(3)[:, :, :-1])
    with pytest.raises(InputError, match="masks"):
        group_statistics(sigma, planted_masks(3).astype(float) * 2)
    with pytest.raises(InputError, match="valid"):
        group_statistics(sigma, planted_masks(3), valid=np.ones((3, 2), bool))
    with pytest.raises(InputError, match="kappa"):
        sigma_map(np.full((1, 1, 4, 4), np.nan), 0.0)
    member = classify(group_statistics(sigma, planted_masks(3)))
    with pytest.raises(InputError, match="scores"):
        weight_table(-np.ones((3, 4, 2)), member)
    with pytest.raises(InputError, match="membership"):
        weight_table(np.ones((3, 5, 2)), member)


# ------------------------------------------------------------------------------------------
# weights, bootstrap, verdict


def membership_for(void: np.ndarray, cluster: np.ndarray):
    """A classify()-style DataArray from explicit (N, m) void and cluster memberships."""
    n, m = void.shape
    masks = np.zeros((n, m, SIZE, SIZE), bool)
    masks[void] = VOID
    masks[cluster] = PEAK
    masks[~void & ~cluster] = PLATEAU
    return classify(group_statistics(sigma_map(planted_maps(n), 0.0), masks))


def test_bootstrap_ci_covers_the_true_mean_and_is_deterministic():
    # 4 groups per map, group 0 a void; scores ~ Dirichlet(alpha): E[c_0] = alpha_0 / sum(alpha)
    n, m = 60, 4
    void = np.zeros((n, m), bool)
    void[:, 0] = True
    member = membership_for(void, np.zeros((n, m), bool))
    alpha = np.array([3.0, 1.0, 1.0, 1.0])
    truth = alpha[0] / alpha.sum()
    rng = np.random.default_rng(42)
    covered = 0
    for trial in range(40):
        scores = rng.dirichlet(alpha, size=(n, 2)).transpose(0, 2, 1)
        table = weight_table(scores, member, n_boot=400, seed=trial)
        row = table.sel(definition="void_paper", output="Om")
        covered += bool(row["ci_low"] <= truth <= row["ci_high"])
    assert covered >= 34  # nominal 95 %: 38 of 40 expected
    again = weight_table(scores, member, n_boot=400, seed=39)
    assert again.identical(table)
    other = weight_table(scores, member, n_boot=400, seed=7)
    assert not np.allclose(
        other["ci_low"].sel(definition="void_paper"), table["ci_low"].sel(definition="void_paper")
    )
    # zero weights included: all groups weigh 1/m for every output, so their ratio is exactly 1
    np.testing.assert_allclose(table["mean_weight_all"].values, 1 / m)


def test_bootstrap_sums_resample_whole_blocks():
    per_map = np.arange(6.0)[:, None]
    blocks = np.array(["a", "a", "b", "b", "c", "c"])
    sums = bootstrap_sums(per_map, n_boot=300, seed=0, blocks=blocks)[:, 0]
    # every replicate draws 3 whole blocks out of {1, 5, 9}
    possible = {a + b + c for a in (1, 5, 9) for b in (1, 5, 9) for c in (1, 5, 9)}
    assert set(np.unique(sums)) <= possible and len(np.unique(sums)) > 3
    np.testing.assert_array_equal(sums, bootstrap_sums(per_map, 300, 0, blocks)[:, 0])
    scores, member = weighted_case(0.6, 0.3, n=12)
    table = weight_table(scores, member, n_boot=50, blocks=np.arange(12) // 3)
    assert table.attrs["n_blocks"] == 4
    # the verdict's sample: 12 maps in 4 blocks, 12 groups, 95 % intervals
    assert table.attrs["n_maps"] == 12 and table.attrs["confidence"] == 0.95
    assert verdict(table, "void_paper")["n_groups"] == 12


def weighted_case(om_void: float, s8_void: float, n: int = 80, seed: int = 0):
    """Scores where a map's void group (group 0) and cluster group (group 1) get the given
    expected shares for Om and s8 (with scatter); groups 2, 3 take the rest."""
    rng = np.random.default_rng(seed)
    void = np.zeros((n, 4), bool)
    void[:, 0] = True
    cluster = np.zeros((n, 4), bool)
    cluster[:, 1] = True
    scores = np.empty((n, 4, 2))
    for o, share in enumerate((om_void, s8_void)):
        c0 = np.clip(share + 0.05 * rng.standard_normal(n), 0.01, 0.9)
        c1 = np.clip(0.9 - c0 - 0.05 * rng.random(n), 0.0, None)  # the cluster takes the opposite
        rest = 1 - c0 - c1
        scores[:, :, o] = np.stack([c0, c1, rest / 2, rest / 2], axis=1)
    return scores, membership_for(void, cluster)


def test_verdicts_agree_disagree_inconclusive():
    assert PAPER_FINDINGS["void"] == {"heavier": "Om", "text": "voids weigh more for Om"}
    assert PAPER_FINDINGS["cluster"] == {"heavier": "s8", "text": "clusters weigh more for s8"}
    agree = weight_table(*weighted_case(0.6, 0.3), n_boot=300)
    record = verdict(agree, "void_paper")
    ratio = float(agree["ratio"].sel(definition="void_paper"))
    assert ratio > 1.5 and record["ratio"] == ratio
    assert record["ci_low"] == float(agree["ratio_low"].sel(definition="void_paper")) > 1.0
    assert record["ci_high"] == float(agree["ratio_high"].sel(definition="void_paper"))
    assert (record["definition"], record["kind"], record["rule"]) == (
        "void_paper",
        "void",
        "mean < 0σ",
    )
    assert record["n_groups"] == 80 and agree.attrs["n_maps"] == agree.attrs["n_blocks"] == 80
    assert agree.attrs["confidence"] == 0.95 and list(agree["output"].values) == ["Om", "s8"]
    assert record["outcome"] == "agrees" and record["agrees"] is True
    assert record["expected_heavier"] == "Om"
    by_name = {r["definition"]: r for r in verdicts(agree)}
    assert [r["definition"] for r in verdicts(agree)] == list(agree["definition"].values)
    assert by_name["void_paper"] == record
    cluster = by_name["cluster_paper"]
    assert cluster["outcome"] == "agrees" and cluster["agrees"] is True
    assert cluster["expected_heavier"] == "s8" and cluster["ci_high"] < 1.0

    disagree = weight_table(*weighted_case(0.3, 0.6), n_boot=300)
    record = verdict(disagree, "void_paper")
    assert record["outcome"] == "disagrees" and record["agrees"] is False
    assert record["expected_heavier"] == "Om" and record["ci_high"] < 1.0
    assert verdict(disagree, "cluster_paper")["outcome"] == "disagrees"
    assert verdict(disagree, "cluster_paper")["agrees"] is False

    same = weight_table(*weighted_case(0.45, 0.45, n=20), n_boot=300)
    row = same.sel(definition="void_paper")
    assert row["ratio_low"] < 1 < row["ratio_high"]
    record = verdict(same, "void_paper")
    assert record["outcome"] == "inconclusive" and record["agrees"] is None
    assert record["ci_low"] < 1.0 < record["ci_high"]

    # a class nobody belongs to gets no verdict, not a number
    scores, _ = weighted_case(0.6, 0.3, n=10)
    void = np.zeros((10, 4), bool)
    void[:, 0] = True
    voids_only = weight_table(scores, membership_for(void, np.zeros_like(void)), n_boot=50)
    record = verdict(voids_only, "cluster_paper")
    assert record["outcome"] == "no_groups" and record["agrees"] is None
    assert record["n_groups"] == 0 and record["ratio"] is None and voids_only.attrs["n_maps"] == 10
    assert np.isnan(voids_only["mean_weight"].sel(definition="cluster_paper")).all()
    with pytest.raises(InputError, match="not among"):
        verdict(agree, "filament")


def test_verdict_undefined_ratio_and_kinds_without_expectation():
    scores, member = weighted_case(0.6, 0.3, n=20)
    scores[:, 0, 1] = 0.0  # the void gets no weight for s8: the Om/s8 ratio is infinite
    table = weight_table(scores, member, n_boot=50)
    record = verdict(table, "void_paper")
    assert record["outcome"] == "undefined" and record["agrees"] is None
    assert record["ratio"] is None and record["n_groups"] == 20
    # a kind the paper says nothing about: numbers, but no expectation
    agree = weight_table(*weighted_case(0.6, 0.3), n_boot=300)
    kinds = ["filament" if k == "void" else k for k in agree["kind"].values]
    record = verdict(agree.assign_coords(kind=("definition", kinds)), "void_paper")
    assert record["outcome"] == "no_expectation" and record["agrees"] is None
    assert record["expected_heavier"] is None and record["ci_low"] > 1.0


def test_nonzero_only_and_class_weights():
    scores, member = weighted_case(0.6, 0.3, n=10)
    scores[:, 2:, 0] = 0.0  # Om uses only the void and the cluster
    scores[:, :, 0] /= scores[:, :, 0].sum(1, keepdims=True)
    w_all = class_weights(scores, member, "void_paper", 0)
    assert w_all.shape == (10,)
    neither = (
        ~member.sel(definition="void_paper").values & ~member.sel(definition="cluster_paper").values
    )
    assert (scores[..., 0][neither] == 0).all()
    full = weight_table(scores, member, n_boot=50)
    used = weight_table(scores, member, nonzero_only=True, n_boot=50)
    assert full.attrs["nonzero_only"] == 0 and used.attrs["nonzero_only"] == 1
    np.testing.assert_allclose(full["mean_weight_all"], [0.25, 0.25])
    np.testing.assert_allclose(used["mean_weight_all"].sel(output="Om"), 0.5)  # 2 groups used
    assert (used["n_groups"].sel(definition="void_paper") == 10).all()


# ------------------------------------------------------------------------------------------
# purity


def test_sop_purity_all_voids_half_half_and_top_k():
    n, m = 2, 6
    void = np.zeros((n, m), bool)
    cluster = np.zeros((n, m), bool)
    void[0, :3] = True  # map 0: top groups 0-2 all voids
    void[1, [0, 1]] = True  # map 1: two voids, two clusters on top
    cluster[1, [2, 3]] = True
    member = membership_for(void, cluster)
    scores = np.zeros((n, m, 2))
    scores[0, :3] = [[0.5, 0.2], [0.3, 0.3], [0.2, 0.5]]
    scores[1, :4] = 0.25
    purity = sop_purity(scores, member)
    np.testing.assert_allclose(purity, [[1.0, 1.0], [0.5, 0.5]])
    # top-2 of map 1 by weight, ties broken by group index: groups 0, 1 (voids) -> 1
    np.testing.assert_allclose(sop_purity(scores, member, top_k=2)[1], [1.0, 1.0])
    # top-5 of map 0 adds two zero-weight 'neither' groups: 3 voids of 5
    np.testing.assert_allclose(sop_purity(scores, member, top_k=5)[0], [0.6, 0.6])
    table = purity_table({"sop": purity}, n_boot=100)
    np.testing.assert_allclose(table["purity"].sel(method="sop"), 0.75)
    assert (table["n_maps"] == 2).all()


def test_cell_purity_of_attribution_on_the_void_and_on_both():
    kappa = planted_maps(2)
    sigma = sigma_map(kappa, 0.0)
    on_void = np.zeros((2, 2, SIZE, SIZE))
    on_void[:, :, VOID] = 1.0
    np.testing.assert_allclose(cell_purity(sigma, on_void, rng=0), 1.0)
    cells = attribution_cells(on_void, rng=0)
    assert cells.max() == 4 and (cells > 0).sum() == 4 * VOID.sum()  # one cell per map and output
    on_both = np.zeros((2, 2, SIZE, SIZE))
    on_both[:, :, VOID] = 1.0
    on_both[:, :, PEAK] = -2.0  # ranked by magnitude: the peak counts too
    np.testing.assert_allclose(cell_purity(sigma, on_both, rng=0), 0.5)
    np.testing.assert_allclose(cell_purity(sigma, on_both, absolute=False, rng=0), 1.0)  # void
    # per-bin attributions are summed over bins first
    per_bin = np.repeat(on_void[:, :, None] / 3, 3, axis=2)
    np.testing.assert_allclose(cell_purity(sigma, per_bin, rng=0), 1.0)


def test_cells_never_span_two_maps():
    attributions = np.zeros((2, 1, 6, 6))
    attributions[:, :, 2:4, 2:4] = 1.0  # the same pixels in both maps
    cells = attribution_cells(attributions, top_fraction=0.2, rng=0)
    assert set(np.unique(cells[0])) == {0, 1} and set(np.unique(cells[1])) == {0, 2}
    stats = cell_statistics(np.zeros((2, 6, 6)), cells)
    assert list(stats["sample"].values) == [0, 1] and list(stats["pixels"].values) == [4, 4]


def test_tied_pixels_are_cut_at_random_not_in_raster_order():
    """All-equal importances (SOP's pixel importance is constant over its groups): the top
    20 % are spread over the rows, not the upper rows raster order would take."""
    n_maps, size = 300, 20
    flat = np.ones((n_maps, 2, size, size))
    cells = attribution_cells(flat, top_fraction=0.2, rng=7)
    chosen = cells > 0
    assert (chosen.sum(axis=(2, 3)) == 80).all()
    rows = np.nonzero(chosen)[2]
    # raster order would give a mean row of 1.5; a uniform draw (size - 1) / 2 = 9.5, with a
    # standard error of about 0.03 over these 48000 pixels
    assert abs(rows.mean() - (size - 1) / 2) < 0.2
    per_row = chosen.mean(axis=(0, 1, 3))  # every row holds about 20 % of its pixels
    assert per_row.min() > 0.17 and per_row.max() < 0.23
    # deterministic under the seed (an int or a Generator seeded by it), different across seeds
    np.testing.assert_array_equal(attribution_cells(flat, top_fraction=0.2, rng=7), cells)
    generator = np.random.default_rng(7)
    np.testing.assert_array_equal(attribution_cells(flat, top_fraction=0.2, rng=generator), cells)
    assert ((attribution_cells(flat, top_fraction=0.2, rng=8) > 0) != chosen).any()
    with pytest.raises(InputError, match="'rng'"):
        attribution_cells(flat, rng=None)


def test_ties_break_only_at_the_cut_and_untied_cuts_are_unchanged():
    rng = np.random.default_rng(3)
    size = 10  # 20 top pixels of 100
    # untied: the same top pixels under any seed, those of a plain sort
    untied = rng.standard_normal((4, 2, size, size))
    expected = np.zeros(untied.shape, bool).reshape(8, -1)
    order = np.argsort(-np.abs(untied).reshape(8, -1), axis=-1, kind="stable")[:, :20]
    np.put_along_axis(expected, order, True, axis=-1)
    for seed in (0, 1, 2):
        chosen = attribution_cells(untied, top_fraction=0.2, rng=seed) > 0
        np.testing.assert_array_equal(chosen.reshape(8, -1), expected)
    # SOP-like levels: 12 pixels above the cut are always in, 8 of the 50 tied at the cut are
    # drawn, the rest never
    levels = np.zeros((50, 1, size, size))
    levels[:, :, :2, :6] = 3.0  # 12 pixels
    levels[:, :, 5:, :] = 1.0  # 50 pixels tied at the cut
    chosen = attribution_cells(levels, top_fraction=0.2, rng=0) > 0
    assert chosen[:, :, :2, :6].all() and not chosen[:, :, 2:5].any()
    assert (chosen[:, :, 5:].sum(axis=(2, 3)) == 8).all()
    assert len({c.tobytes() for c in chosen[:, 0, 5:]}) > 40  # a fresh draw per map


def test_cell_purity_ties_do_not_depend_on_the_chunks(monkeypatch):
    """A seed or a Generator passed through chunks cuts as one call on all the maps."""
    import cosmo_sop.structures.purity as purity_module

    rng = np.random.default_rng(4)
    sigma = sigma_map(rng.standard_normal((10, 1, 12, 12)), 0.0)
    tied = np.round(rng.random((10, 2, 12, 12)), 1)  # 11 levels: many ties at the cut
    whole = cell_purity(sigma, tied, rng=5)
    monkeypatch.setattr(purity_module, "CELL_MAPS_PER_CHUNK", 3)
    np.testing.assert_array_equal(cell_purity(sigma, tied, rng=5), whole)
    generator = np.random.default_rng(5)  # through two calls on consecutive maps
    halves = [cell_purity(sigma[p], tied[p], rng=generator) for p in (slice(0, 4), slice(4, 10))]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


# ------------------------------------------------------------------------------------------
# vectorised results equal brute-force loops


def test_vectorised_statistics_equal_loops():
    rng = np.random.default_rng(5)
    n, m, size = 3, 5, 12
    kappa = rng.standard_normal((n, 2, size, size))
    masks = rng.random((n, m, size, size)) < 0.3
    masks[1, 2] = False
    sigma = sigma_map(kappa, 0.0)
    stats = group_statistics(sigma, masks)
    for i in range(n):
        for g in range(m):
            pixels = sigma[i][masks[i, g]]
            assert stats["pixels"].values[i, g] == pixels.size
            if pixels.size == 0:
                assert np.isnan(stats["mean_sigma"].values[i, g])
                continue
            np.testing.assert_allclose(stats["mean_sigma"].values[i, g], pixels.mean(), rtol=1e-12)
            np.testing.assert_allclose(
                stats["fraction_above"].sel(above_sigma=3.0).values[i, g], np.mean(pixels > 3.0)
            )
            np.testing.assert_allclose(
                stats["fraction_below"].sel(below_sigma=0.0).values[i, g], np.mean(pixels < 0.0)
            )

    # cells: per-map skimage labelling of the top 20 % pixels, by brute force
    attributions = rng.standard_normal((n, 2, size, size))
    cells = attribution_cells(attributions, top_fraction=0.2, rng=0)
    stats = cell_statistics(sigma, cells)
    n_top = int(np.ceil(0.2 * size * size))
    expected_means = []
    for i in range(n):
        for o in range(2):
            a = np.abs(attributions[i, o]).ravel()
            top = np.zeros(a.size, bool)
            top[np.argsort(-a, kind="stable")[:n_top]] = True
            assert (top.reshape(size, size) == (cells[i, o] > 0)).all()
            pieces = skimage_label(top.reshape(size, size), connectivity=1)
            assert pieces.max() == len(np.unique(cells[i, o])) - 1
            expected_means += [sigma[i][pieces == c].mean() for c in range(1, pieces.max() + 1)]
    # cells come out map by map in raster order of their first pixel, as skimage numbers them
    np.testing.assert_allclose(stats["mean_sigma"].values, expected_means, rtol=1e-12)
    purity = cell_purity(sigma, attributions, rng=0)
    for i in range(n):
        for o in range(2):
            chosen = stats["sample"].values * 2 + stats["output"].values == i * 2 + o
            # the authors' fraction rules: >= 60 % of the pixels below 0, >= 1.5 % above 3 sigma
            below = stats["fraction_below"].sel(below_sigma=0.0).values[chosen]
            above = stats["fraction_above"].sel(above_sigma=3.0).values[chosen]
            voids, clusters = np.sum(below >= 0.6), np.sum(above >= 0.015)
            both = np.sum((below >= 0.6) & (above >= 0.015))  # counts as neither
            np.testing.assert_allclose(
                purity[i, o], max(voids - both, clusters - both) / below.size
            )


def test_vectorised_weights_and_top_groups_equal_loops():
    rng = np.random.default_rng(9)
    n, m = 6, 5
    void = rng.random((n, m)) < 0.4
    cluster = ~void & (rng.random((n, m)) < 0.5)
    member = membership_for(void, cluster)
    scores = rng.dirichlet(np.ones(m), size=(n, 2)).transpose(0, 2, 1)
    scores[scores < 0.15] = 0.0
    valid = rng.random((n, m)) < 0.9
    table = weight_table(scores, member, valid=valid, n_boot=20)
    for name in ("void_paper", "cluster_paper"):
        d = member.sel(definition=name).values
        for o, output in enumerate(("Om", "s8")):
            weights = [
                scores[i, g, o] for i in range(n) for g in range(m) if d[i, g] and valid[i, g]
            ]
            np.testing.assert_allclose(
                table["mean_weight"].sel(definition=name, output=output), np.mean(weights)
            )
            np.testing.assert_array_equal(
                np.sort(class_weights(scores, member, name, o, valid)), np.sort(weights)
            )
    top = top_groups(scores, valid, top_k=2)
    for i in range(n):
        for o in range(2):
            candidates = [g for g in range(m) if valid[i, g]]
            best = sorted(candidates, key=lambda g: (-scores[i, g, o], g))[:2]
            assert set(np.flatnonzero(top[i, :, o])) == set(best)


# ------------------------------------------------------------------------------------------
# figures


def test_figures_are_written_atomically(tmp_path):
    scores, member = weighted_case(0.6, 0.3, n=12)
    out = plot_weight_histograms(scores, member, tmp_path / "weights.png")
    assert out.stat().st_size > 10_000 and (tmp_path / "weights.pdf").stat().st_size > 1_000
    kappa = planted_maps(1)[0]
    masks = planted_masks(1)[0]
    labels = group_labels(classify(group_statistics(sigma_map(kappa[None], 0.0), masks[None])))[0]
    group_scores = np.array([[0.7, 0.2], [0.1, 0.7], [0.2, 0.1], [0.0, 0.0]])
    out = plot_groups(
        kappa,
        masks,
        group_scores,
        labels,
        tmp_path / "groups.png",
        pixel_scale_arcmin=13.7,
        smoothing_pixels=0.0,
    )
    assert out.stat().st_size > 10_000 and (tmp_path / "groups.pdf").exists()
    with pytest.raises(InputError, match="labels"):
        plot_groups(
            kappa,
            masks,
            group_scores,
            ["void", "halo", "", ""],
            tmp_path / "bad.png",
            smoothing_pixels=0.0,
        )
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*tmp*"))


def test_a_zero_width_interval_is_never_a_verdict():
    """All of a class's groups in one cosmology: every bootstrap resample that holds them
    gives the same ratio, a zero-width interval that excludes 1 without any uncertainty
    having been estimated (seen on the halo mock's stage-3 level: 2 cluster groups)."""
    from cosmo_sop.structures.weights import _outcome

    assert _outcome(2, 1, 0.568, 0.568, 0.568, "s8", ["Om", "s8"]) == "inconclusive"
    assert _outcome(40, 12, 0.568, 0.5, 0.6, "s8", ["Om", "s8"]) == "agrees"
    # the same weights in every map of 12 cosmologies: a ratio that never varies is a verdict
    assert _outcome(40, 12, 0.568, 0.568, 0.568, "s8", ["Om", "s8"]) == "agrees"


def test_a_verdict_records_its_contributing_cosmologies_and_dropped_resamples():
    """Voids only in the maps of 3 of 6 cosmologies: the void class rests on 3 cosmologies, and
    the resamples that draw none of them (undefined ratio) are left out of its interval; the
    record and the report's sentence say both. The share equals the resamples' own count."""
    from cosmo_sop.report.verdicts import verdict_sentence
    from cosmo_sop.statistics import resample_counts

    scores, member = weighted_case(0.6, 0.3, n=24)
    blocks = np.arange(24) // 4  # 6 cosmologies of 4 maps
    void = member.sel(definition="void_paper").values
    member.loc[{"definition": "void_paper"}] = void & (blocks < 3)[:, None]
    table = weight_table(scores, member, n_boot=2000, seed=3, blocks=blocks)
    record = verdict(table, "void_paper")
    assert record["n_contributing"] == 3 and record["n_groups"] == 12
    counts = resample_counts(blocks, 2000, 3)  # the weight table's resamples: same labels, seed
    expected = np.mean(counts[:, :3].sum(axis=1) == 0)
    assert 0 < expected < 0.05
    assert record["dropped_replicates"] == pytest.approx(expected)
    assert verdict(table, "cluster_paper")["dropped_replicates"] == 0.0  # clusters everywhere
    settings = {"outputs": ["Om", "s8"], "confidence": 0.95, "n_maps": 24, "n_blocks": 6}
    sentence = verdict_sentence(record, {**settings, "bootstrap_blocks": "cosmology"})
    assert f"12 groups in 3 cosmologies, {100 * expected:.2g} % of resamples" in sentence


def test_score_evenness_and_relative_weights_say_which_output_makes_the_ratio():
    """Evenness is 1 for uniform scores and 0 for all weight on one group (invalid groups left
    out); a class's relative weights (its mean over the mean of all groups) per output divide
    into its ratio, so they show which output's weights make it."""
    from cosmo_sop.report.verdicts import selector_note, verdict_sentence
    from cosmo_sop.structures.records import weights_json
    from cosmo_sop.structures.weights import score_evenness

    valid = np.ones((3, 4), bool)
    valid[:, 3] = False
    uniform = np.where(valid[..., None], 1 / 3, 0.0) * np.ones((3, 4, 2))
    one_hot = np.zeros((3, 4, 2))
    one_hot[:, 0] = 1.0
    np.testing.assert_allclose(score_evenness(uniform, valid), [1.0, 1.0])
    np.testing.assert_allclose(score_evenness(one_hot, valid), [0.0, 0.0])

    table = weight_table(*weighted_case(0.6, 0.3), n_boot=100)
    record = verdict(table, "void_paper")
    relative = record["relative_weight"]
    assert relative["Om"] == pytest.approx(0.6 * 4, rel=0.05)  # 0.6 against 1/4 on average
    assert relative["Om"] / relative["s8"] == pytest.approx(record["ratio"])
    settings = {"outputs": ["Om", "s8"], "confidence": 0.95, "n_maps": 80, "n_blocks": 80}
    sentence = verdict_sentence(record, settings)
    assert f"; {relative['Om']:.3g}× the average group's weight for Om, " in sentence
    evenness = table["score_evenness"].values
    assert ((evenness > 0) & (evenness < 1)).all()
    note = selector_note({"weights": weights_json(table)})
    assert f"is Om {evenness[0]:.3g}, s8 {evenness[1]:.3g}" in note
    assert selector_note({"weights": {}}) is None  # verdicts.json of an older run


def test_the_mean_bound_is_each_groups_own():
    """sqrt((1 - p) / p) sigma: 2 for a fifth of the pixels; 40 tokens of a 14 x 14 grid over
    66 pixels hold 16.9-23.0 % of them, bounding the mean at 2.22-1.83 sigma (issue 24); the
    report says the range of the run's own groups."""
    from cosmo_sop.report.verdicts import group_pixels_note
    from cosmo_sop.structures.definitions import mean_bound
    from cosmo_sop.structures.records import group_pixel_fractions

    np.testing.assert_allclose(mean_bound([0.2, 0.169, 0.23]), [2.0, 2.217, 1.830], atol=1e-3)
    masks = np.zeros((20, 2, SIZE, SIZE), bool)
    masks[:, 0, :8] = True  # 20 % of the pixels
    masks[:, 1, :10] = True  # 25 %
    stats = group_statistics(sigma_map(planted_maps(20), 0.0), masks)
    shares = group_pixel_fractions(stats, SIZE * SIZE)
    assert shares["p05"] == pytest.approx(0.2) and shares["p95"] == pytest.approx(0.25)
    assert shares["bound_high"] == pytest.approx(2.0) and shares["bound_low"] == pytest.approx(
        3**0.5
    )
    note = group_pixels_note({"group_pixels": shares})
    assert "hold 20–25 % of a map's pixels" in note and "at most 1.73σ–2σ" in note
    assert group_pixels_note({}) is None  # verdicts.json of an older run


def test_a_class_in_fewer_cosmologies_than_min_blocks_gets_no_verdict():
    """Voids in the maps of 3 of 6 cosmologies: with the default (10) or 4 blocks needed the
    verdict is too_few, never a finding, and the report says why; with 3 it is a verdict."""
    from cosmo_sop.report.verdicts import verdict_sentence

    scores, member = weighted_case(0.6, 0.3, n=24)
    blocks = np.arange(24) // 4
    void = member.sel(definition="void_paper").values
    member.loc[{"definition": "void_paper"}] = void & (blocks < 3)[:, None]
    table = weight_table(scores, member, n_boot=500, blocks=blocks)
    assert verdict(table, "void_paper")["outcome"] == "too_few"  # the schema's 10
    assert verdict(table, "void_paper", min_blocks=4)["outcome"] == "too_few"
    assert verdict(table, "void_paper", min_blocks=3)["outcome"] == "agrees"
    assert [v["outcome"] for v in verdicts(table, min_blocks=6)][:2] == ["too_few", "agrees"]
    settings = {"outputs": ["Om", "s8"], "confidence": 0.95, "n_maps": 24, "n_blocks": 6}
    settings |= {"bootstrap_blocks": "cosmology", "min_blocks": 10}
    sentence = verdict_sentence(verdict(table, "void_paper"), settings)
    assert "12 groups in 3 cosmologies" in sentence
    assert sentence.endswith("a verdict needs at least 10 — no verdict")
