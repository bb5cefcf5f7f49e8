"""Tests of the faithfulness metrics (cosmo_sop.faithfulness) on tiny linear models and maps."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from fixtures.models import tiny_backbone
from torch import nn

from cosmo_sop.attribution import group_pixel_importance
from cosmo_sop.faithfulness import (
    DEFAULT_FRACTIONS,
    Curve,
    faithfulness_metrics,
    faithfulness_table,
    group_scores_from_importance,
    grouped_insertion_deletion,
    insertion_deletion,
    kept_features_mse,
    kept_mse_name,
    make_substrate,
    pixel_ranks,
    sop_sparsity,
    write_table_csv,
)
from cosmo_sop.figures.faithfulness import plot_curves
from cosmo_sop.models.sop import SumOfParts

SIDE = 10  # 100 pixels per map
N_MAPS, N_BINS = 3, 2


class RegionSum(nn.Module):
    """f_o(x) = sum over bins and over the pixels of region o: linear, exactly known."""

    def __init__(self, regions: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("regions", regions.to(torch.float64))
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        # An elementwise product and a per-row sum, unlike a matrix product, round the same
        # way whatever the batch size, so chunked and unchunked runs can be compared exactly.
        return (x[:, None] * self.regions[None, :, None].to(x.dtype)).sum((2, 3, 4))


def region_model() -> tuple[RegionSum, torch.Tensor]:
    """Output 0 looks at rows 0-1 (exactly 20% of the map), output 1 at the left half."""
    regions = torch.zeros(2, SIDE, SIDE, dtype=torch.bool)
    regions[0, :2] = True
    regions[1, :, : SIDE // 2] = True
    return RegionSum(regions).eval(), regions


def positive_maps(seed: int = 0, n_maps: int = N_MAPS) -> torch.Tensor:
    """Strictly positive maps, so partial region sums grow monotonically."""
    rng = np.random.default_rng([seed, 1])
    return torch.from_numpy(rng.uniform(0.5, 1.5, (n_maps, N_BINS, SIDE, SIDE)))


def region_first(regions: torch.Tensor, output: int, n_maps: int = N_MAPS) -> torch.Tensor:
    """Importance 1 inside the output's region, 0 outside (ties broken by row-major order)."""
    return regions[output].to(torch.float64).expand(n_maps, SIDE, SIDE).clone()


def random_importance(seed: int, n_maps: int = N_MAPS) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([seed, 2]).random((n_maps, SIDE, SIDE)))


# -- pixel insertion and deletion -----------------------------------------------------------------


def test_ranks_follow_importance_with_row_major_tie_break():
    importance = torch.tensor([[[1.0, 3.0], [3.0, 2.0]]])
    assert pixel_ranks(importance).tolist() == [[[3, 0], [1, 2]]]


def test_endpoints_substrate_and_full_prediction_and_normalisation():
    model, regions = region_model()
    x = positive_maps()
    ins, dele = insertion_deletion(model, x, random_importance(0), 0, progress=False)
    full = model(x)[:, 0].numpy()
    # Insertion starts on the substrate (all zero: f = 0) and ends on x; deletion the reverse.
    np.testing.assert_array_equal(ins.prediction[:, 0], 0.0)
    np.testing.assert_allclose(ins.prediction[:, -1], full, rtol=1e-12)
    np.testing.assert_allclose(dele.prediction[:, 0], full, rtol=1e-12)
    np.testing.assert_array_equal(dele.prediction[:, -1], 0.0)
    np.testing.assert_allclose(ins.scale, full, rtol=1e-12)
    # Normalised: insertion 1 -> 0, deletion 0 -> 1 on average; per map too with "map".
    for normalise in ("pooled", "map"):
        ins, dele = insertion_deletion(
            model, x, random_importance(0), 0, normalise=normalise, progress=False
        )
        if normalise == "map":
            np.testing.assert_allclose(ins.per_map[:, [0, -1]], [[1, 0]] * N_MAPS, atol=1e-12)
            np.testing.assert_allclose(dele.per_map[:, [0, -1]], [[0, 1]] * N_MAPS, atol=1e-12)
        else:
            np.testing.assert_allclose(ins.per_map[:, 0], full / full.mean(), rtol=1e-12)
        np.testing.assert_allclose(ins.curve, ins.per_map.mean(0), rtol=1e-12)
        np.testing.assert_allclose(ins.curve[[0, -1]], [1, 0], atol=1e-12)
        np.testing.assert_allclose(dele.curve[[0, -1]], [0, 1], atol=1e-12)
    assert ins.better == "lower" and dele.better == "higher"
    assert ins.curve.shape == (21,) and ins.per_map.shape == (N_MAPS, 21)
    np.testing.assert_array_equal(ins.position, DEFAULT_FRACTIONS)
    np.testing.assert_allclose(ins.pixel_fraction[0], np.round(DEFAULT_FRACTIONS * 100) / 100)


def test_insertion_curve_matches_partial_region_sums():
    """Ranking region 0 first inserts its pixels in row-major order: an exact cumulative sum."""
    model, regions = region_model()
    x = positive_maps()
    ins, dele = insertion_deletion(
        model, x, region_first(regions, 0), 0, normalise="none", progress=False
    )
    pixel_values = x.sum(1).flatten(1).numpy()  # (N, P), all bins of a pixel together
    in_region = np.flatnonzero(regions[0].flatten().numpy())  # row-major order
    partial_sums = np.concatenate([np.zeros((N_MAPS, 1)), pixel_values[:, in_region].cumsum(1)], 1)
    full = partial_sums[:, -1]
    counts = np.round(DEFAULT_FRACTIONS * 100).astype(int)
    inserted = partial_sums[:, np.minimum(counts, in_region.size)]
    np.testing.assert_allclose(ins.error, np.abs(inserted - full[:, None]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        dele.error, np.abs(full[:, None] - (full[:, None] - inserted)), rtol=1e-12, atol=1e-12
    )


def test_good_ranking_beats_random_and_reversed():
    model, regions = region_model()
    x = positive_maps()
    good = region_first(regions, 1)
    rankings = {"good": good, "random": random_importance(3), "reversed": -good}
    result = {
        name: insertion_deletion(model, x, imp, 1, progress=False) for name, imp in rankings.items()
    }
    ins = {name: pair.insertion.auc for name, pair in result.items()}
    dele = {name: pair.deletion.auc for name, pair in result.items()}
    # Insertion: lower is better; deletion: higher is better.
    assert ins["good"] < ins["random"] < ins["reversed"]
    assert dele["good"] > dele["random"] > dele["reversed"]
    # The region is half the map: the good ranking recovers f(x) by fraction 0.5.
    assert np.all(result["good"].insertion.curve[DEFAULT_FRACTIONS >= 0.5] < 1e-12)
    good_curve = result["good"].insertion.curve
    assert ins["good"] == pytest.approx(np.trapezoid(good_curve, DEFAULT_FRACTIONS))


def test_mean_and_blur_substrates():
    model, regions = region_model()
    x = positive_maps()
    ins, _ = insertion_deletion(model, x, random_importance(1), 0, substrate="mean", progress=False)
    bin_means = x.mean((2, 3)).sum(1).numpy()  # summed over bins, per pixel
    expected = bin_means * regions[0].sum().item()
    np.testing.assert_allclose(ins.prediction[:, 0], expected, rtol=1e-12)

    constant = torch.full((1, N_BINS, SIDE, SIDE), 0.7, dtype=torch.float64)
    np.testing.assert_allclose(make_substrate(constant, "blur", 2.0).numpy(), 0.7, rtol=1e-12)
    blurred = make_substrate(x, "blur", 2.0)
    assert blurred.shape == x.shape and blurred.dtype == x.dtype
    assert torch.all(blurred.std((2, 3)) < 0.5 * x.std((2, 3)))
    # Bins are smoothed separately, never mixed.
    lone = torch.zeros(1, N_BINS, SIDE, SIDE, dtype=torch.float64)
    lone[0, 0, 5, 5] = 1.0
    assert make_substrate(lone, "blur", 1.0)[0, 1].abs().max() == 0
    with pytest.raises(ValueError, match="substrate must be one of"):
        make_substrate(x, "noise")


def test_label_reference_squared_error_and_degenerate_map():
    model, regions = region_model()
    x = positive_maps()
    labels = model(x).numpy() + 0.5
    ins, _ = insertion_deletion(
        model,
        x,
        random_importance(2),
        0,
        labels=labels,
        reference="label",
        error="squared",
        normalise="none",
        progress=False,
    )
    np.testing.assert_allclose(ins.error, (ins.prediction - labels[:, :1]) ** 2, rtol=1e-12)
    # A map whose prediction equals the substrate's cannot be normalised per map: left out.
    x_degenerate = x.clone()
    x_degenerate[1] = 0.0
    ins, _ = insertion_deletion(
        model, x_degenerate, random_importance(2), 0, normalise="map", progress=False
    )
    assert np.isnan(ins.per_map[1]).all() and np.isnan(ins.map_auc[1])
    np.testing.assert_allclose(ins.curve, ins.per_map[[0, 2]].mean(0))
    with pytest.raises(ValueError, match='reference="label" needs labels'):
        insertion_deletion(model, x, random_importance(2), 0, reference="label", progress=False)


def test_chunking_is_identical_to_one_batch_and_counts_calls():
    model, regions = region_model()
    x = positive_maps()
    fractions = np.linspace(0, 1, 11)
    reference = insertion_deletion(
        model, x, random_importance(4), 0, fractions=fractions, max_batch=10_000, progress=False
    )
    assert model.calls == 1
    # The reference rows (substrate, x), then both curves but their ends: a curve's first and
    # last rows show the substrate or x and take the reference rows' predictions.
    rows = N_MAPS * (2 + 2 * (len(fractions) - 2))
    assert model.rows == rows
    stream = N_MAPS * (2 + 2 * len(fractions))
    for max_batch in (1, 7):
        model.calls = model.rows = 0
        pair = insertion_deletion(
            model,
            x,
            random_importance(4),
            0,
            fractions=fractions,
            max_batch=max_batch,
            progress=False,
        )
        assert model.rows == rows
        # a call per batch of the stream, but for batches of ends only
        assert math.ceil(rows / max_batch) <= model.calls <= math.ceil(stream / max_batch)
        for got, want in zip(pair, reference):
            np.testing.assert_array_equal(got.prediction, want.prediction)
            np.testing.assert_array_equal(got.per_map, want.per_map)


def test_conv_regressor_chunking_and_determinism():
    model = tiny_backbone(0, N_BINS).eval()
    x = torch.randn(4, N_BINS, 16, 16, generator=torch.Generator().manual_seed(1))
    importance = x.abs().sum(1)
    big = insertion_deletion(model, x, importance, 1, max_batch=4096, progress=False)
    small = insertion_deletion(model, x, importance, 1, max_batch=50, progress=False)
    again = insertion_deletion(model, x, importance, 1, max_batch=50, progress=False)
    for b, s, a in zip(big, small, again):
        np.testing.assert_allclose(s.prediction, b.prediction, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(s.prediction, a.prediction)
        assert s.auc == a.auc
    with torch.no_grad():
        full = model(x)[:, 1].double().numpy()
    np.testing.assert_allclose(big.insertion.prediction[:, -1], full, rtol=1e-5, atol=1e-6)


# -- kept features --------------------------------------------------------------------------------


def test_kept_features_mse_zero_for_perfect_ranking():
    model, regions = region_model()
    x = positive_maps()
    labels = model(x).detach().numpy()
    perfect = kept_features_mse(model, x, region_first(regions, 0), labels, 0, progress=False)
    assert perfect.n_kept == 20 and perfect.mse == 0.0
    reversed_ = kept_features_mse(model, x, -region_first(regions, 0), labels, 0, progress=False)
    np.testing.assert_allclose(reversed_.squared_error, labels[:, 0] ** 2)  # nothing of R kept
    half = kept_features_mse(
        model, x, region_first(regions, 0), labels, 0, keep_fraction=0.1, progress=False
    )
    assert half.n_kept == 10 and 0 < half.mse < reversed_.mse
    with pytest.raises(ValueError, match="keep_fraction"):
        kept_features_mse(model, x, region_first(regions, 0), labels, 0, keep_fraction=0.0)


# -- grouped curves -------------------------------------------------------------------------------


def overlapping_groups() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four groups per map: g0 rows 0-3, g1 rows 2-5 (overlap rows 2-3), g2 invalid, g3 empty."""
    masks = torch.zeros(N_MAPS, 4, SIDE, SIDE, dtype=torch.bool)
    masks[:, 0, 0:4] = True
    masks[:, 1, 2:6] = True
    masks[:, 2, 6:] = True
    scores = torch.tensor([0.3, 0.5, 0.9, 0.8]).expand(N_MAPS, 4)  # invalid and empty rank high
    valid = torch.tensor([True, True, False, True]).expand(N_MAPS, 4)
    return masks, scores, valid


def test_grouped_curves_change_each_pixel_once_and_skip_invalid_groups():
    model, regions = region_model()
    x = positive_maps()
    masks, scores, valid = overlapping_groups()
    ins, dele = grouped_insertion_deletion(
        model, x, masks, scores, 1, valid=valid, normalise="none", progress=False
    )
    # Order g1, g0, then the skipped groups: the union grows 0 -> 40 -> 60 pixels and stays.
    np.testing.assert_allclose(ins.pixel_fraction, [[0, 0.4, 0.6, 0.6, 0.6]] * N_MAPS)
    np.testing.assert_allclose(ins.position, [0, 0.4, 0.6, 0.6, 0.6])
    # The AUC runs over the pixels changed: the skipped groups add no area.
    np.testing.assert_allclose(ins.map_auc, np.trapezoid(ins.per_map, ins.pixel_fraction, axis=1))
    assert ins.auc == pytest.approx(ins.map_auc.mean())
    pixels = x.sum(1).numpy() * regions[1].numpy()  # what output 1 sees
    after_g1 = pixels[:, 2:6].sum((1, 2))
    after_both = pixels[:, 0:6].sum((1, 2))
    expected = np.stack([np.zeros(N_MAPS), after_g1, after_both, after_both, after_both], 1)
    np.testing.assert_allclose(ins.prediction, expected, rtol=1e-12)
    full = pixels.sum((1, 2))
    np.testing.assert_allclose(dele.prediction, full[:, None] - expected, rtol=1e-12)
    # Without the validity flags the invalid group (score 0.9) would go first.
    ins_all, _ = grouped_insertion_deletion(model, x, masks, scores, 1, progress=False)
    np.testing.assert_allclose(ins_all.pixel_fraction[0], [0, 0.4, 0.8, 1.0, 1.0])


def test_grouped_curves_rank_a_good_group_order_above_random_despite_repeated_groups():
    """Six copies of a group holding 60 % of what output 1 sees, one group with the other 40 %
    (as large a share per pixel), one group outside: ranked by each group's own effect, the
    copies come first and the rest of the region only at step 7. Over the pixels changed that
    order is the best there is; over the step index (the old axis) the five repeated copies
    each took 1 / m of it at the error left, and the good order lost to random orders and even
    to its reverse."""
    model, _ = region_model()
    x = positive_maps()
    masks = torch.zeros(N_MAPS, 8, SIDE, SIDE, dtype=torch.bool)
    masks[:, :6, :, 0:3] = True
    masks[:, 6, :, 3:5] = True
    masks[:, 7, :, 5:] = True
    good = torch.arange(8, 0, -1, dtype=torch.float64).expand(N_MAPS, 8)
    orders = {"good": good, "reversed": -good}
    for seed in range(10):
        orders[f"random {seed}"] = torch.rand(
            N_MAPS, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
    curves = {
        name: grouped_insertion_deletion(model, x, masks, order, 1, progress=False)
        for name, order in orders.items()
    }
    ins = {name: pair.insertion.auc for name, pair in curves.items()}
    dele = {name: pair.deletion.auc for name, pair in curves.items()}
    random_ins = np.mean([v for k, v in ins.items() if k.startswith("random")])
    random_del = np.mean([v for k, v in dele.items() if k.startswith("random")])
    assert ins["good"] < random_ins - 0.1 and random_ins < ins["reversed"] - 0.1
    assert dele["good"] > random_del + 0.1 and random_del > dele["reversed"] + 0.1
    # Over the step index the good order would have lost (0.37 against 0.28 and 0.26); over the
    # pixels changed it scores 0.25 against 0.40 and 0.75.
    steps = np.arange(9) / 8
    by_step = {k: np.trapezoid(c.insertion.curve, steps) for k, c in curves.items()}
    by_step_random = np.mean([v for k, v in by_step.items() if k.startswith("random")])
    assert by_step["good"] > by_step_random and by_step["good"] > by_step["reversed"]


def test_group_scores_from_importance_orders_like_a_pixel_method():
    masks, _, _ = overlapping_groups()
    importance = torch.zeros(N_MAPS, SIDE, SIDE, dtype=torch.float64)
    importance[:, 0] = 4.0  # only row 0, inside g0
    mean = group_scores_from_importance(importance, masks, "mean")
    np.testing.assert_allclose(mean[0, :3], [1.0, 0.0, 0.0])
    assert torch.isnan(mean[:, 3]).all()  # empty group
    total = group_scores_from_importance(importance, masks, "sum")
    np.testing.assert_allclose(total[0, :3], [40.0, 0.0, 0.0])


def test_sparsity_counts_nonzero_groups_and_their_union():
    masks, _, valid = overlapping_groups()
    scores = torch.tensor([[0.4, 0.6, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    result = sop_sparsity(masks, scores, valid)
    np.testing.assert_allclose(result.pixel_fraction, [0.6, 0.4, 0.4])  # g2 invalid in map 3
    np.testing.assert_array_equal(result.n_groups, [2, 1, 1])
    assert result.mean_pixel_fraction == pytest.approx(1.4 / 3)
    assert result.mean_n_groups == pytest.approx(4 / 3)
    np.testing.assert_allclose(sop_sparsity(masks, scores).pixel_fraction, [0.6, 0.4, 0.8])
    weights = group_pixel_importance(masks, scores)
    assert weights[0, 2, 0] == pytest.approx(1.0) and weights[0, 0, 0] == pytest.approx(0.4)


# -- input checks ---------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_shapes():
    model, regions = region_model()
    x = positive_maps()
    with pytest.raises(ValueError, match=r"importance has shape \(3, 9, 10\).*\(3, 10, 10\)"):
        insertion_deletion(model, x, torch.zeros(3, 9, 10), 0, progress=False)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        insertion_deletion(model, x[0], torch.zeros(3, 10, 10), 0, progress=False)
    with pytest.raises(ValueError, match="floating point"):
        insertion_deletion(model, x.long(), torch.zeros(3, 10, 10), 0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        insertion_deletion(model, x, torch.full((3, 10, 10), float("nan")), 0, progress=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        insertion_deletion(model, x, random_importance(0), 0, fractions=[0, 0.5, 0.4])
    with pytest.raises(ValueError, match=r"n_outputs > 2"):
        insertion_deletion(model, x, random_importance(0), 2, progress=False)
    with pytest.raises(ValueError, match="training mode"):
        insertion_deletion(model.train(), x, random_importance(0), 0, progress=False)
    model.eval()
    masks, scores, valid = overlapping_groups()
    with pytest.raises(ValueError, match=r"masks has shape \(3, 4, 10, 9\)"):
        grouped_insertion_deletion(model, x, masks[..., :9], scores, 0, progress=False)
    with pytest.raises(ValueError, match=r"group_scores has shape \(3, 3\).*\(3, 4\)"):
        grouped_insertion_deletion(model, x, masks, scores[:, :3], 0, progress=False)
    with pytest.raises(ValueError, match="must be bool"):
        grouped_insertion_deletion(model, x, masks.float() * 0.5, scores, 0, progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        grouped_insertion_deletion(model, x, masks, scores * float("nan"), 0, progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(N, n_outputs\)"):
        kept_features_mse(model, x, random_importance(0), np.zeros((2, 2)), 0, progress=False)


# -- everything together: SOP, table, CSV, figure --------------------------------------------------


def tiny_sop() -> SumOfParts:
    backbone = tiny_backbone(0, N_BINS)
    torch.manual_seed(1)
    return SumOfParts.from_backbone(
        backbone,
        (N_BINS, 16, 16),
        encoder_blocks=1,
        patch_tokens=4,
        n_heads=2,
        d_model=8,
        n_groups=5,
        keep_fraction=0.25,
    ).eval()


def test_sop_metrics_table_csv_and_figure(tmp_path):
    sop = tiny_sop()
    x = torch.randn(4, N_BINS, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        explanation = sop.explain(x)
    labels = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    groups = dict(masks=explanation.masks, valid=explanation.valid)
    sop_importance = torch.stack(
        [group_pixel_importance(explanation.masks, explanation.scores[..., o]) for o in (0, 1)], 1
    )
    abs_importance = x.abs().sum(1, keepdim=True).repeat(1, 2, 1, 1)
    results = {
        "SOP": faithfulness_metrics(
            sop.backbone,
            x,
            sop_importance,
            labels,
            **groups,
            group_scores=explanation.scores,
            progress=False,
        ),
        "|x|": faithfulness_metrics(
            sop.backbone, x, abs_importance, labels, **groups, progress=False
        ),
    }
    sop_om = results["SOP"]["Om"]
    assert set(sop_om) == {"Ins", "Del", "InsG", "DelG", "MSE top-20%", "sparsity"}
    assert "sparsity" not in results["|x|"]["s8"]
    # Grouped insertion of SOP's best group alone is exactly SOP's partial prediction for it.
    order = torch.argsort(explanation.scores[..., 0], dim=1, descending=True, stable=True)
    first = explanation.partial[..., 0].gather(1, order[:, :1])[:, 0].numpy()
    np.testing.assert_allclose(sop_om["InsG"].prediction[:, 1], first, rtol=1e-5, atol=1e-6)
    assert isinstance(sop_om["InsG"], Curve) and sop_om["InsG"].per_map.shape == (4, 6)

    table = faithfulness_table(results)
    assert list(table.data_vars) == ["Om", "s8"]
    assert list(table["metric"].values) == [
        kept_mse_name(0.2),
        "Ins",
        "InsG",
        "Del",
        "DelG",
        "sparsity",
        "groups",
    ]
    assert list(table["better"].values) == ["lower"] * 3 + ["higher"] * 2 + ["lower"] * 2
    assert table["Om"].sel(metric="Ins", attribution="SOP") == pytest.approx(sop_om["Ins"].auc)
    assert np.isnan(table["s8"].sel(metric="sparsity", attribution="|x|"))

    written = write_table_csv(table, tmp_path / "faithfulness.csv")
    with open(written, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14 and rows[1]["metric"] == "Ins" and rows[1]["better"] == "lower"
    assert float(rows[1]["SOP"]) == pytest.approx(sop_om["Ins"].auc, rel=1e-5)

    png = plot_curves(results, tmp_path / "fig" / "faithfulness.png")
    assert png.stat().st_size > 10_000 and png.with_suffix(".pdf").is_file()
    assert not list(png.parent.glob(".*"))  # no temporary files left


def test_faithfulness_metrics_equals_separate_calls_in_fewer_model_calls():
    model, regions = region_model()
    x = positive_maps()
    labels = model(x).detach().numpy()
    importance = torch.stack([region_first(regions, 0), random_importance(5)], 1)
    masks, scores, valid = overlapping_groups()
    model.calls = 0
    together = faithfulness_metrics(
        model, x, importance, labels, masks=masks, valid=valid, max_batch=32, progress=False
    )
    rows = N_MAPS * (2 + 2 * (2 * 21 + 1 + 2 * 5))
    assert model.calls == math.ceil(rows / 32)
    s8 = grouped_insertion_deletion(
        model,
        x,
        masks,
        group_scores_from_importance(importance[:, 1], masks),
        1,
        valid=valid,
        progress=False,
    )
    np.testing.assert_array_equal(together["s8"]["DelG"].per_map, s8.deletion.per_map)
    om = insertion_deletion(model, x, importance[:, 0], 0, progress=False)
    np.testing.assert_array_equal(together["Om"]["Ins"].curve, om.insertion.curve)
    assert together["Om"]["MSE top-20%"].mse == 0.0


def test_the_summary_calls_significant_only_after_benjamini_hochberg():
    """SOP against one method on 40 metrics of 60 maps (20 cosmologies): one metric with a
    planted difference, 39 without. Unadjusted, some of the 39 fall below p = 0.05; after the
    Benjamini-Hochberg adjustment over the table none does, and the planted one still does
    (4000 replicates: the smallest p-value, 2 / 4001, times 40 comparisons is below 0.05); the
    CSV's ``significant`` is the adjusted p-value below 0.05."""
    from cosmo_sop.faithfulness.summary import Entry, summarise, summary_dataset, summary_rows

    rng = np.random.default_rng(13)
    n_metrics, cosmologies = 40, np.repeat(np.arange(20), 3)
    scores = (
        rng.normal(size=(60, 2, n_metrics, 1)) + rng.normal(size=(20, 1, n_metrics, 1))[cosmologies]
    )
    scores[:, 0, 0] = scores[:, 1, 0] + 0.5 + 0.1 * rng.normal(size=(60, 1))  # planted
    entries = [Entry("sop", "token", "backbone"), Entry("saliency", "pixel", "backbone")]
    summary = summarise(scores, entries, cosmologies, 4000, seed=0)
    raw, adjusted = summary["diff_p"][1, :, 0], summary["diff_p_adjusted"][1, :, 0]
    assert np.isnan(summary["diff_p"][0]).all()  # SOP against itself: no comparison
    assert raw[0] < 0.01 and adjusted[0] < 0.05
    assert (raw[1:] < 0.05).sum() >= 1 and not (adjusted[1:] < 0.05).any()
    table = summary_dataset(summary, entries, [f"m{i}" for i in range(n_metrics)], ["Om"])
    flagged = [row[4] for row in summary_rows(table) if row[-1] == "true"]
    assert flagged == ["m0"]
