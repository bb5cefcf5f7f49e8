"""The CNN backbone and its bias-free X-DNN twin."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.models import float64_model as build
from safetensors.torch import load_file, save_file
from torch import nn

from cosmo_sop.errors import InputError
from cosmo_sop.models import ConvRegressor, xdnn
from cosmo_sop.models.backbone import block_output_sizes


def maps(seed: int, batch: int, channels: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, dtype=torch.float64, generator=generator)


def test_sop_paper_geometry():
    """66 x 66 -> 31 -> 14 -> 5 after the three blocks, so 48 * 5 * 5 = 1200 flat features."""
    model = ConvRegressor(4)
    assert model.feature_sides == [31, 14, 5]
    assert model.mlp[1].in_features == 1200
    assert [m.out_features for m in model.mlp if isinstance(m, nn.Linear)] == [128, 64, 32]
    assert (model.head.in_features, model.head.out_features) == (32, 2)


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("size", [66, 32])
def test_shapes(channels, size):
    model = build(0, channels, input_size=size)
    x = maps(1, 3, channels, size)
    assert model(x).shape == (3, 2)
    assert model.embed(x).shape == (3, model.embed_dim) == (3, 32)
    for n_blocks in range(len(model.blocks) + 1):
        assert model.features(x, n_blocks).shape == (3, *model.feature_shape(n_blocks))
    # The flattened size is derived, not assumed: it matches what the trunk produces.
    assert model.mlp[1].in_features == model.features(x)[0].numel()
    assert torch.equal(model.features(x, 0), x)
    # features() convolves in channels-last layout, the bare trunk in the input's: equal up to
    # float rounding.
    torch.testing.assert_close(model.trunk(x), model.features(x))


@pytest.mark.parametrize("negative_slope", [0.01, 0.0])
def test_inference_pools_before_the_activation_without_changing_a_bit(negative_slope):
    """Without gradients the blocks pool first (a quarter of the activations to compute): the
    values equal the usual order's exactly, also on masked maps full of tied zeros. With
    gradients the usual order runs, so training and gradient attributions are unchanged."""
    torch.manual_seed(0)
    model = ConvRegressor(4, negative_slope=negative_slope).eval()
    keep = torch.rand(16, 1, 6, 6) < 0.5
    x = 0.01 * torch.randn(16, 4, 66, 66) * keep.repeat_interleave(11, 2).repeat_interleave(11, 3)

    def usual_order(inputs):
        h = model.scale(inputs.contiguous(memory_format=torch.channels_last))
        for block in model.blocks:
            h = block.pool(block.act(block.conv(h)))
        return model.head(model.mlp(h))

    with torch.inference_mode():
        assert torch.equal(model(x), usual_order(x))
    gradients = []
    for forward in (model, usual_order):
        inputs = x.clone().requires_grad_(True)
        forward(inputs).square().sum().backward()
        gradients.append(inputs.grad)
    assert torch.equal(*gradients)


def test_embed_then_head_is_forward():
    model = build(0, 2, input_size=32, dropout=0.3)
    x = maps(1, 5, 2, 32)
    torch.testing.assert_close(model.head(model.embed(x)), model(x), rtol=0, atol=0)


def test_empty_hidden_embeds_flat_trunk_output():
    model = build(0, 1, input_size=32, hidden=())
    x = maps(1, 2, 1, 32)
    assert model.embed_dim == 48 * 1 * 1
    torch.testing.assert_close(model.embed(x), model.features(x).flatten(1))


def test_batchnorm_model_trains_and_evaluates():
    model = build(0, 2, input_size=32, batchnorm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    model.train()
    loss = model(maps(1, 4, 2, 32)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_input_shape_names_expected_shape():
    model = ConvRegressor(4)
    with pytest.raises(ValueError, match=r"\(4, 66, 66\).*\(2, 1, 66, 66\)"):
        model(torch.zeros(2, 1, 66, 66))
    with pytest.raises(ValueError, match=r"\(4, 66, 66\)"):
        model(torch.zeros(4, 66, 66))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 4, 66, 66, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_blocks"):
        model.features(torch.zeros(1, 4, 66, 66), n_blocks=4)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="too small"):
        ConvRegressor(1, input_size=16)  # 16 -> 6 -> 1 -> nothing
    with pytest.raises(ValueError, match="in_channels"):
        ConvRegressor(0)
    with pytest.raises(ValueError, match="widths"):
        ConvRegressor(1, widths=())
    with pytest.raises(ValueError, match="dropout"):
        ConvRegressor(1, dropout=1.0)
    with pytest.raises(ValueError, match="negative_slope"):
        ConvRegressor(1, negative_slope=float("nan"))


def test_block_output_sizes():
    assert block_output_sizes(66, 3, 4) == [31, 14, 5]
    assert block_output_sizes(32, 3, 4) == [14, 5, 1]
    assert block_output_sizes(64, 2, 3) == [31, 14]


def test_config_rebuilds_saved_model(tmp_path):
    model = build(0, 3, input_size=32, widths=(8, 12), hidden=(16,), negative_slope=0.2)
    path = tmp_path / "model.safetensors"
    # Checkpoints keep the config as JSON metadata next to the weights; the state dict has
    # no shared tensors (trunk is a view, not a second registration), so safetensors accepts it.
    save_file(model.state_dict(), path, metadata={"config": json.dumps(model.config)})
    assert not any(key.startswith("trunk") for key in model.state_dict())

    config = json.loads(json.dumps(model.config))
    rebuilt = ConvRegressor.from_config(config).double().eval()
    rebuilt.load_state_dict(load_file(path))
    assert rebuilt.config == model.config
    x = maps(1, 2, 3, 32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_from_config_reports_bad_config():
    with pytest.raises(InputError, match=r"run/model.safetensors: unknown .*'depth'"):
        ConvRegressor.from_config({"in_channels": 4, "depth": 3}, where="run/model.safetensors")
    with pytest.raises(InputError, match="in_channels"):
        ConvRegressor.from_config({"n_outputs": 2})
    with pytest.raises(InputError, match="too small"):
        ConvRegressor.from_config({"in_channels": 4, "input_size": 8})


def test_xdnn_has_no_bias_and_no_batchnorm():
    model = ConvRegressor.xdnn(4, dropout=0.1)
    names = [name for name, _ in model.named_parameters()]
    assert names and not any("bias" in name for name in names)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.bias_free and model.config["bias"] is False
    assert xdnn(4).config == ConvRegressor(4, bias=False).config

    assert not ConvRegressor(4).bias_free
    assert not ConvRegressor(4, bias=False, batchnorm=True).bias_free


def test_xdnn_refuses_bias_and_batchnorm():
    with pytest.raises(ValueError, match="batchnorm"):
        ConvRegressor.xdnn(4, batchnorm=True)
    with pytest.raises(ValueError, match="bias"):
        xdnn(4, bias=True)


@pytest.mark.parametrize("negative_slope", [0.01, 0.0])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_xdnn_is_positively_homogeneous(scale, negative_slope):
    model = build(0, 2, input_size=32, negative_slope=negative_slope, dropout=0.2, factory=xdnn)
    x = maps(1, 4, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(scale * x), scale * model(x), rtol=1e-12, atol=0)
        assert torch.equal(model(torch.zeros_like(x)), torch.zeros(4, 2, dtype=torch.float64))


def test_biased_model_is_not_homogeneous():
    """Negative control: the same check fails on the ordinary network."""
    model = build(0, 2, input_size=32)
    x = maps(1, 4, 2, 32)
    with torch.no_grad():
        gap = (model(3.0 * x) - 3.0 * model(x)).abs().max()
        assert gap > 1e-3 * model(x).abs().max()
