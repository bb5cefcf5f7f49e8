"""Fair rankings of the faithfulness step: seeded tie-breaking, |attribution| ranking,
per-token aggregation, one sparsity definition, and the model that scores SOP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmo_sop.attribution import group_pixel_importance
from cosmo_sop.faithfulness.engine import Plan, evaluate, rank_plan
from cosmo_sop.faithfulness.ranks import (
    contribution_sparsity,
    group_contributions,
    group_scores_from_importance,
    mass_fraction,
    pixel_ranks,
    ranking_importance,
    tie_order,
    token_aggregate,
)
from cosmo_sop.faithfulness.substrates import substrate_prediction


def test_ties_are_broken_by_a_seeded_random_order_not_raster_order():
    importance = torch.zeros(2, 8, 8, dtype=torch.float64)
    importance[:, 7, 7] = 1.0  # one important pixel, 63 tied zero pixels (as SOP's zeros)
    ranks = pixel_ranks(importance, tie_seed=5)
    assert (ranks[:, 7, 7] == 0).all()  # the important pixel still comes first
    tied = ranks[0].flatten()[:-1]
    assert not torch.equal(tied, torch.arange(1, 64))  # not raster order
    # Deterministic for a seed, different for another; a map's order depends on it alone.
    torch.testing.assert_close(pixel_ranks(importance, tie_seed=5), ranks)
    assert not torch.equal(pixel_ranks(importance, tie_seed=6), ranks)
    torch.testing.assert_close(pixel_ranks(importance[:1], tie_seed=5), ranks[:1])
    # The raster rows are not inserted first: the top 8 tied pixels are spread over rows.
    first = torch.nonzero((ranks[0] >= 1) & (ranks[0] <= 8))[:, 0]
    assert len(set(first.tolist())) > 2
    # Without a seed the historical row-major order stays available.
    assert pixel_ranks(importance)[0].flatten()[:-1].tolist() == list(range(1, 64))


def test_tie_order_is_a_permutation_per_map():
    order = tie_order(3, 20, seed=1)
    for row in order:
        assert sorted(row.tolist()) == list(range(20))
    assert not torch.equal(order[0], order[1])


def test_absolute_ranking_does_not_insert_negative_evidence_last():
    # A planted attribution (1 map, 2 bins, 4 x 4): a strong negative pixel, weak positives.
    attribution = torch.full((1, 2, 4, 4), 0.05)
    attribution[0, :, 0, 0] = -2.0  # pulls the output down: the most important pixel
    attribution[0, :, 3, 3] = 0.5
    signed = pixel_ranks(ranking_importance(attribution, "signed"), tie_seed=0)
    absolute = pixel_ranks(ranking_importance(attribution, "absolute"), tie_seed=0)
    assert signed[0, 0, 0] == 15  # the signed ranking inserts it last
    assert absolute[0, 0, 0] == 0  # |.| inserts it first
    assert signed[0, 3, 3] == 0 and absolute[0, 3, 3] == 1
    # |attribution| summed over bins: bins of opposite sign do not cancel.
    mixed = torch.tensor([[[[1.0]], [[-1.0]]]])
    assert float(ranking_importance(mixed, "absolute")) == 2.0
    assert float(ranking_importance(mixed, "signed")) == 0.0
    with pytest.raises(ValueError, match="ranking"):
        ranking_importance(attribution, "square")


def test_token_aggregation_gives_every_pixel_its_tokens_value():
    importance = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)
    grid = torch.tensor([[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2)  # 2 x 2 cells of 2 x 2 pixels
    mean = token_aggregate(importance, grid, "mean")
    assert mean[0, 0, 0] == mean[0, 1, 1] == (0 + 1 + 4 + 5) / 4
    assert mean[0, 3, 3] == (10 + 11 + 14 + 15) / 4
    total = token_aggregate(importance, grid, "sum")
    assert total[0, 0, 1] == 10.0
    # Per-map label maps (segments) of different sizes.
    segments = torch.stack([grid, torch.zeros(4, 4, dtype=torch.int64)])
    both = token_aggregate(importance.expand(2, -1, -1), segments, "mean")
    assert torch.all(both[1] == 7.5)
    # A group made of whole tokens keeps its mean, so SOP's groups are ordered alike.
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :] = True
    masks[0, 1, 2:, 2:] = True
    torch.testing.assert_close(
        group_scores_from_importance(mean, masks), group_scores_from_importance(importance, masks)
    )


def test_sparsity_is_the_fraction_of_pixels_holding_the_mass():
    concentrated = torch.zeros(1, 10, 10, dtype=torch.float64)
    concentrated[0, 0, 0] = 9.0
    concentrated[0, 5, 5] = -1.0  # magnitude counts
    uniform = torch.ones(1, 10, 10, dtype=torch.float64)
    assert mass_fraction(concentrated, 0.9)[0] == pytest.approx(0.01)
    assert mass_fraction(uniform, 0.9)[0] == pytest.approx(0.90)
    assert mass_fraction(uniform, 1.0)[0] == pytest.approx(1.0)
    assert np.isnan(mass_fraction(torch.zeros(1, 3, 3), 0.9)[0])


def test_sops_sparsity_counts_contributions_not_the_offset_of_its_partial_predictions():
    """Two halves of a map, each weighted 0.5 for one output; the backbone gives 3 on the zero
    map (a standardised output need not be 0 there), 4 on the left half, 3 on the right. Only
    the left half moves the prediction: its contribution c (y - h(0)) is 0.5, the right's 0,
    and 90 % of the mass lies in 45 % of the pixels. |c y| (2 and 1.5) counted the offset 3 as
    importance of both halves: 89 %."""
    masks = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    masks[0, 0, :, :5] = True
    masks[0, 1, :, 5:] = True
    scores = torch.tensor([[[0.5], [0.5]]], dtype=torch.float64)
    partial = torch.tensor([[[4.0], [3.0]]], dtype=torch.float64)
    reference = torch.tensor([[3.0]], dtype=torch.float64)
    contributions = group_contributions(scores, partial, reference)
    np.testing.assert_allclose(contributions[0, :, 0], [0.5, 0.0])
    # Complete, as Integrated Gradients: they sum to f_SOP(x) - h(0) = 3.5 - 3.
    assert float(contributions.sum()) == pytest.approx((scores * partial).sum() - 3.0)
    sparsity = contribution_sparsity(masks, contributions, 0.9)
    assert sparsity.shape == (1, 1) and sparsity[0, 0] == pytest.approx(0.45)
    old = mass_fraction(group_pixel_importance(masks, (scores * partial)[..., 0].abs()), 0.9)
    assert old[0] == pytest.approx(0.89)
    # Invalid groups contribute nothing; a map without contributions has no sparsity.
    valid = torch.tensor([[False, True]])
    assert (group_contributions(scores, partial, reference, valid) == 0).all()
    zero = group_contributions(scores, partial, reference, valid)
    assert np.isnan(contribution_sparsity(masks, zero, 0.9)).all()
    with pytest.raises(ValueError, match="substrate_prediction"):
        group_contributions(scores, partial, reference[0])


def test_substrate_prediction_is_the_model_on_the_substrate():
    def model(batch):
        return torch.stack([batch.sum((1, 2, 3)) + 3.0, batch.mean((1, 2, 3))], 1)

    x = torch.rand(5, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_array_equal(substrate_prediction(model, x), [[3.0, 0.0]] * 5)
    means = substrate_prediction(model, x, "mean", max_batch=2)  # chunks of 2, 2 and 1 maps
    np.testing.assert_allclose(means[:, 0], x.sum((1, 2, 3)).numpy() + 3.0, rtol=1e-12)
    assert means.dtype == np.float64 and means.shape == (5, 2)


def test_a_model_that_needs_its_maps_gets_the_map_of_every_row():
    seen = []

    class Scorer:
        takes_maps = True

        def __call__(self, batch, maps):
            seen.append(maps.clone())
            return torch.stack([batch.sum((1, 2, 3)), maps.to(batch.dtype)], 1)

    x = torch.ones(3, 1, 2, 2)
    top_row = torch.tensor([[True, True], [False, False]])
    plan = Plan(lambda maps, steps: top_row.expand(len(maps), 2, 2), 2, True)
    references, (out,) = evaluate(Scorer(), x, torch.zeros_like(x), [plan], 4, False, 1)
    np.testing.assert_array_equal(out[:, :, 1], [[0, 0], [1, 1], [2, 2]])
    np.testing.assert_array_equal(out[:, :, 0], 2.0)  # the top row of ones inserted
    np.testing.assert_array_equal(references[:, :, 0], [[0.0, 4.0]] * 3)  # substrate, x
    # 6 reference rows (substrate and x of 3 maps), then the plan's 6: batches of 4 rows
    assert sum(len(m) for m in seen) == 12 and len(seen) == 3


@pytest.mark.parametrize("insert", [True, False])
def test_rows_that_change_no_pixel_or_all_take_the_reference_prediction(insert):
    calls = []

    def model(batch):
        calls.append(len(batch))
        return torch.stack([batch.sum((1, 2, 3)), batch.amax((1, 2, 3))], 1)

    x = torch.rand(3, 2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ranks = torch.arange(4).view(2, 2).expand(3, 2, 2)
    plan = rank_plan(ranks, np.array([0, 2, 4]), insert)  # nothing, the top 2 pixels, all
    references, (out,) = evaluate(model, x, torch.zeros_like(x), [plan], 64, False, 1)
    assert calls == [6 + 3]  # the 2 references of 3 maps, and only the middle step of each
    whole = x.sum((1, 2, 3)).numpy()
    np.testing.assert_array_equal(references[:, :, 0], np.stack([0 * whole, whole], 1))
    substrate_row, x_row = references[:, 0], references[:, 1]
    ends = (substrate_row, x_row) if insert else (x_row, substrate_row)
    np.testing.assert_array_equal(out[:, 0], ends[0])
    np.testing.assert_array_equal(out[:, 2], ends[1])
    top = x[:, :, 0].sum((1, 2)).numpy()  # ranks 0 and 1: the first row of pixels
    np.testing.assert_allclose(out[:, 1, 0], top if insert else whole - top)
