"""Tests of the Sum-of-Parts wrapper (cosmo_sop.models.sop) on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cosmo_sop.errors import InputError
from cosmo_sop.models import ConvRegressor, Explanation, SumOfParts
from cosmo_sop.models.tokens import (
    drop_duplicates,
    keep_top_tokens,
    n_kept_tokens,
    straight_through,
    suppress_overlaps,
)

SIDE = 24  # 24 -conv3-> 22 -pool-> 11 -conv3-> 9 -pool-> 4 -conv3-> 2 -pool-> 1
SHAPE = (2, SIDE, SIDE)


def make_backbone(seed: int = 0) -> ConvRegressor:
    torch.manual_seed(seed)
    return ConvRegressor(2, input_size=SIDE, widths=(4, 8, 8), kernel_size=3, hidden=(16, 8))


def make_sop(tokens: str = "patches", seed: int = 0, **settings) -> SumOfParts:
    defaults = dict(patch_tokens=6, n_heads=2, d_model=8, n_groups=5, keep_fraction=0.2)
    torch.manual_seed(seed + 1)
    return SumOfParts.from_backbone(
        make_backbone(seed), SHAPE, tokens=tokens, **{**defaults, **settings}
    )


def make_inputs(n_batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_batch, *SHAPE, generator=torch.Generator().manual_seed(seed))


def block_segments(n_segments: list[int]) -> torch.Tensor:
    """Label maps (B, SIDE, SIDE): 4 x 4-pixel blocks labelled block % S_b, so labels 0..S_b-1."""
    rows = torch.arange(SIDE)[:, None] // 4
    cols = torch.arange(SIDE)[None, :] // 4
    block = rows * (SIDE // 4) + cols
    return torch.stack([block % n for n in n_segments])


def explain(model: SumOfParts, tokens: str, n_batch: int = 3) -> tuple[torch.Tensor, Explanation]:
    x = make_inputs(n_batch)
    segments = block_segments([7, 15, 5][:n_batch]) if tokens == "segments" else None
    return x, model.explain(x, segments)


@pytest.mark.parametrize("tokens", ["patches", "segments"])
def test_prediction_is_the_sum_of_the_backbone_on_each_group(tokens):
    model = make_sop(tokens).eval()
    x, out = explain(model, tokens)
    assert out.masks.dtype == torch.bool and out.tokens.dtype == torch.bool
    assert torch.allclose(out.prediction, (out.scores * out.partial).sum(1), atol=1e-6)
    assert torch.equal(
        model(x, None if tokens == "patches" else block_segments([7, 15, 5])), out.prediction
    )
    # Faithfulness: each partial prediction is the plain backbone on x with that group only.
    with torch.no_grad():
        for b, i in out.valid.nonzero().tolist():
            alone = model.backbone(x[b : b + 1] * out.masks[b, i])
            assert torch.allclose(out.partial[b, i], alone[0], atol=1e-5)


@pytest.mark.parametrize("tokens", ["patches", "segments"])
def test_masks_are_the_union_of_their_tokens_and_reach_the_backbone_exactly(tokens):
    model = make_sop(tokens).eval()
    seen = []
    embed = model.backbone.embed
    model.backbone.embed = lambda z: seen.append(z.detach().clone()) or embed(z)
    x, out = explain(model, tokens)

    if tokens == "patches":  # cell of pixel (y, x) on a 6 x 6 grid over 24 pixels: 4 x 4 blocks
        cell = (torch.arange(SIDE)[:, None] // 4) * 6 + torch.arange(SIDE)[None, :] // 4
        token_map = cell.expand(3, SIDE, SIDE)
    else:
        token_map = block_segments([7, 15, 5])
    assert torch.equal(out.token_map, token_map)
    for b in range(3):
        for i in range(out.masks.shape[1]):
            members = out.tokens[b, i].nonzero().flatten()
            assert torch.equal(out.masks[b, i], torch.isin(token_map[b], members))

    rows = torch.cat(seen)
    sample, group = out.valid.nonzero(as_tuple=True)
    assert torch.equal(rows, x[sample] * out.masks[sample, group][:, None])
    assert torch.all(rows[~out.masks[sample, group][:, None].expand_as(rows)] == 0)


@pytest.mark.parametrize("attention", ["sparsemax", "softmax"])
def test_scores_are_sparse_weights_summing_to_one_per_output(attention):
    model = make_sop("segments", attention=attention, n_groups=8).eval()
    _, out = explain(model, "segments")
    assert out.scores.shape == out.partial.shape == (3, 8, 2)
    assert torch.all(out.scores >= 0)
    assert torch.allclose(out.scores.sum(1), torch.ones(3, 2), atol=1e-6)
    assert torch.all(out.scores[~out.valid] == 0) and torch.all(out.partial[~out.valid] == 0)


def test_each_group_keeps_the_ceiling_of_the_fraction_of_valid_tokens():
    # 0.2 * 15 is 3.0000000000000004 in floating point: the count must still be 3.
    expected = {36: 8, 15: 3, 7: 2, 5: 1, 1: 1, 196: 40}
    counts = n_kept_tokens(torch.tensor(list(expected)), 0.2)
    assert counts.tolist() == list(expected.values())

    _, out = explain(make_sop("patches").eval(), "patches")
    assert torch.all(out.tokens.sum(-1) == 8)  # 36 cells
    _, out = explain(make_sop("segments").eval(), "segments")
    n_kept = out.tokens.sum(-1)
    for b, n_valid in enumerate([7, 15, 5]):
        assert torch.all(n_kept[b][out.valid[b]] == expected[n_valid])


@pytest.mark.parametrize("tokens", ["patches", "segments"])
@pytest.mark.parametrize("attention", ["sparsemax", "softmax"])
def test_generator_and_selector_learn_while_the_backbone_stays_frozen(tokens, attention):
    # The paper's selector start, whose temperature gets a gradient at once (a uniform start's
    # only once its zero queries moved; see the uniform test below).
    model = make_sop(tokens, attention=attention, selector_init="backbone").train()
    assert not model.backbone.training and model.generator.training
    _, out = explain(model, tokens)
    (out.prediction**2).sum().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("backbone."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert any(n.startswith("token_encoder.") for n, _ in model.named_parameters())


@pytest.mark.parametrize("max_batch", [7, 64])
def test_one_batched_backbone_pass_per_group_and_nothing_more(max_batch):
    model = make_sop("patches", n_groups=4, max_backbone_batch=max_batch).eval()
    calls = []
    embed, forward = model.backbone.embed, model.backbone.forward
    model.backbone.embed = lambda z: calls.append(len(z)) or embed(z)
    model.backbone.forward = lambda z: pytest.fail("SOP must not call the backbone's forward")
    x = make_inputs(5)
    prediction = model(x)
    assert sum(calls) == 5 * 4
    assert len(calls) == math.ceil(5 * 4 / max_batch) and max(calls) <= max_batch
    model.backbone.embed, model.backbone.forward = embed, forward
    reference = make_sop("patches", n_groups=4, max_backbone_batch=1000).eval()(x)
    assert torch.allclose(prediction, reference, atol=1e-6)


def test_padded_segment_tokens_never_join_a_group():
    n_segments = [2, 9, 4]
    model = make_sop("segments", n_groups=6).eval()
    calls = []
    embed = model.backbone.embed
    model.backbone.embed = lambda z: calls.append(len(z)) or embed(z)
    out = model.explain(make_inputs(3), block_segments(n_segments))
    assert out.tokens.shape == (3, 6, 9)
    for b, n in enumerate(n_segments):
        assert not out.tokens[b, :, n:].any()
    # Two segments, one kept per group: at most two distinct groups, the rest left empty.
    assert out.valid[:, 0].all() and out.valid[0].sum() <= 2
    assert not out.masks[~out.valid].any() and not out.tokens[~out.valid].any()
    assert sum(calls) == int(out.valid.sum())  # empty groups cost no backbone pass
    # No two valid groups of an input are the same set of tokens.
    for b in range(3):
        sets = {tuple(row.tolist()) for row in out.tokens[b][out.valid[b]]}
        assert len(sets) == int(out.valid[b].sum())


def test_fewer_candidates_than_groups():
    model = make_sop("segments", n_heads=1, d_model=4, n_groups=5).eval()
    out = model.explain(make_inputs(2), block_segments([3, 2]))  # 3 and 2 candidates < 5
    assert out.valid.sum(1).le(torch.tensor([3, 2])).all() and out.valid[:, 0].all()
    assert torch.allclose(out.scores.sum(1), torch.ones(2, 2), atol=1e-6)


class TinyClassifier(nn.Module):
    """A backbone that is not a ConvRegressor: flatten -> linear embedding -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2 * SIDE * SIDE, 6), nn.Tanh())
        self.classifier = nn.Linear(6, 3)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


def test_classification_with_any_backbone_and_token_encoder():
    torch.manual_seed(3)
    backbone = TinyClassifier()
    encoder = nn.Conv2d(2, 5, kernel_size=4, stride=4)  # 6 x 6 feature map
    model = SumOfParts(
        backbone,
        encoder,
        SHAPE,
        output_layer=backbone.classifier,
        task="classification",
        patch_tokens=6,
        n_heads=2,
        d_model=8,
        n_groups=4,
        selector_init="backbone",
    ).eval()
    x = make_inputs(4)
    out = model.explain(x)
    assert out.prediction.shape == (4, 3) and out.scores.shape == (4, 4, 3)
    assert torch.allclose(out.probabilities.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out.probabilities, (out.scores * out.partial).sum(1).softmax(-1))
    with torch.no_grad():
        for b, i in out.valid.nonzero().tolist():
            logits = backbone(x[b : b + 1] * out.masks[b, i])
            assert torch.allclose(out.partial[b, i], logits[0], atol=1e-6)
    assert model.config["output_layer"] == "classifier"
    assert torch.equal(model.selector.queries, backbone.classifier.weight)
    assert model.selector.queries.data_ptr() != backbone.classifier.weight.data_ptr()


@pytest.mark.parametrize("tokens", ["patches", "segments"])
def test_explanations_are_deterministic_in_eval_mode(tokens):
    model = make_sop(tokens).eval()
    _, first = explain(model, tokens)
    _, second = explain(model, tokens)
    for field in ("prediction", "masks", "tokens", "scores", "partial", "valid"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


def test_config_rebuilds_the_model():
    model = make_sop("segments", attention="softmax", seed=4).eval()
    rebuilt = SumOfParts.from_config(make_backbone(4), model.config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x, segments = make_inputs(2), block_segments([7, 15])
    assert torch.equal(rebuilt(x, segments), model(x, segments))
    assert rebuilt.config == model.config
    with pytest.raises(InputError, match="unknown SumOfParts option"):
        SumOfParts.from_config(make_backbone(), {**model.config, "n_group": 3})
    with pytest.raises(InputError, match="n_groups"):
        SumOfParts.from_config(make_backbone(), {**model.config, "n_groups": 0})


def test_bad_inputs_are_reported():
    patches, segments = make_sop("patches"), make_sop("segments")
    x = make_inputs(2)
    with pytest.raises(ValueError, match="needs the segments"):
        segments(x)
    with pytest.raises(ValueError, match="patch tokens"):
        patches(x, block_segments([3, 3]))
    with pytest.raises(ValueError, match="segments must have shape"):
        segments(x, block_segments([3]))
    with pytest.raises(ValueError, match="integer labels"):
        segments(x, block_segments([3, 3]).float())
    with pytest.raises(ValueError, match="expects inputs"):
        patches(x[:, :1])
    with pytest.raises(ValueError, match="keep_fraction"):
        make_sop(keep_fraction=0.0)
    with pytest.raises(ValueError, match="divisible"):
        make_sop(d_model=7)


def test_straight_through_is_exact_forward_and_passes_gradients():
    soft = torch.tensor([0.1, 0.7, 0.3], requires_grad=True)
    hard = torch.tensor([0.0, 1.0, 1.0])
    out = straight_through(hard, soft)
    assert torch.equal(out, hard)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(soft.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_top_tokens_keep_the_best_set_with_ties_and_per_sample_counts():
    """The same token sets whether every sample keeps as many tokens (unsorted top-k) or each
    its own count (ranked), also among tied logits; a plain sort gives the reference."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (3, 5, 40), generator=generator).double()
    order = logits.argsort(dim=-1, descending=True, stable=True)
    for counts in ([7, 7, 7], [1, 7, 20]):
        n_keep = torch.tensor(counts)
        kept = keep_top_tokens(logits, n_keep)
        assert kept.sum(-1).tolist() == [[c] * 5 for c in counts]
        # Same set as the sorted reference up to ties: the kept values are the top values.
        top_values = (
            logits.gather(-1, order)
            .cumsum(-1)
            .gather(-1, (n_keep - 1).view(-1, 1, 1).expand(-1, 5, 1))
        )
        assert torch.equal((logits * kept).sum(-1, keepdim=True), top_values)
    equal = keep_top_tokens(logits, torch.tensor([7, 7, 7]))
    ranked = keep_top_tokens(torch.cat([logits, logits[:1]]), torch.tensor([7, 7, 7, 6]))[:3]
    assert torch.equal(equal, ranked)


def test_drop_duplicates_matches_pairwise_comparison():
    generator = torch.Generator().manual_seed(1)
    kept = torch.rand(3, 40, 130, generator=generator) < 0.5  # 130 tokens: several packed words
    kept[:, 10] = kept[:, 3]
    kept[:, 20] = kept[:, 3]
    kept[1, 7] = kept[1, 33]
    kept[2, 5, -1] = ~kept[2, 6, -1]  # differ only in the last token
    kept[2, 5, :-1] = kept[2, 6, :-1]
    score = torch.rand(3, 40, generator=generator)
    score[2, 20] = score[2, 3]  # tie: the lower index survives
    score[0, 8] = -math.inf
    expected = score.clone()
    for b in range(3):
        for i in range(40):
            for j in range(40):
                better = score[b, j] > score[b, i] or (score[b, j] == score[b, i] and j < i)
                if j != i and better and torch.equal(kept[b, i], kept[b, j]):
                    expected[b, i] = -math.inf
    assert torch.equal(drop_duplicates(kept, score), expected)
    # 2 copies of candidate 3 in each of 3 samples, 1 of 33 in sample 1, plus the given -inf.
    assert int((expected == -math.inf).sum()) == 2 * 3 + 1 + 1


def test_suppress_overlaps_matches_a_greedy_loop_over_pairs():
    generator = torch.Generator().manual_seed(2)
    kept = torch.rand(2, 30, 50, generator=generator) < 0.3
    kept[:, 4] = kept[:, 9]  # a duplicate, and a near-duplicate differing in one token
    kept[:, 11] = kept[:, 9]
    kept[:, 11, 0] = ~kept[:, 9, 0]
    score = torch.rand(2, 30, generator=generator)
    score[1, 5] = -math.inf
    chosen, valid = suppress_overlaps(kept, score, n_groups=12, max_overlap=0.4)

    def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a & b).sum()) / max(float((a | b).sum()), 1.0)

    for b in range(2):
        taken: list[int] = []
        for i in score[b].argsort(descending=True, stable=True).tolist():
            distinct = all(jaccard(kept[b, i], kept[b, j]) < 0.4 for j in taken)
            if math.isfinite(score[b, i]) and len(taken) < 12 and distinct:
                taken.append(i)
        assert chosen[b][valid[b]].tolist() == taken
        assert int(valid[b].sum()) == len(taken)


def test_overlap_suppression_makes_groups_distinct():
    model = make_sop("patches", n_groups=6, max_overlap=0.5).eval()
    _, out = explain(model, "patches")
    tokens = out.tokens[out.valid.all(1)]  # (b, m, T) of samples with every group filled
    shared = (tokens[:, :, None] & tokens[:, None]).sum(-1).float()
    union = (tokens[:, :, None] | tokens[:, None]).sum(-1).float()
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    assert torch.all((shared / union)[:, off_diagonal] < 0.5)


@pytest.mark.parametrize("normalisation", ["sparsemax", "entmax15", "softmax"])
def test_a_uniform_selector_averages_the_groups_until_it_learns(normalisation):
    model = make_sop(
        "segments", selector_init="uniform", selector_normalisation=normalisation, n_groups=6
    ).eval()
    x, out = explain(model, "segments")
    n_valid = out.valid.sum(1, keepdim=True)
    expected = out.valid[..., None] / n_valid[..., None]
    assert torch.allclose(out.scores, expected.expand_as(out.scores).float(), atol=1e-6)
    assert torch.allclose(out.prediction, out.partial.sum(1) / n_valid, atol=1e-6)
    # The queries still get a gradient from the uniform start (the temperature not yet).
    model.train()
    (model(x, block_segments([7, 15, 5])) ** 2).sum().backward()
    assert model.selector.queries.grad.abs().sum() > 0


def test_backbone_selector_starts_from_the_output_layer():
    model = make_sop("patches", selector_init="backbone")
    assert torch.equal(model.selector.queries, model.backbone.head.weight)


def test_training_samples_groups_and_evaluation_uses_all():
    model = make_sop("patches", n_groups=6, train_groups=2)
    calls = []
    embed = model.backbone.embed
    model.backbone.embed = lambda z: calls.append(len(z)) or embed(z)
    x = make_inputs(4)
    torch.manual_seed(0)
    first = model.train().explain(x)
    assert first.scores.shape[1] == 2 and sum(calls) == 4 * 2
    torch.manual_seed(0)
    again = model.explain(x)
    assert torch.equal(first.tokens, again.tokens)  # the trainer's seed fixes the draw
    full = model.eval().explain(x)
    assert full.scores.shape[1] == 6 and sum(calls) == 4 * 2 * 2 + 4 * 6
    # The sampled groups are among the m the generator chose.
    for b in range(4):
        for group in first.tokens[b]:
            assert any(torch.equal(group, other) for other in full.tokens[b])
