"""Post-hoc attribution baselines (cosmo_sop.attribution) on a tiny backbone."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from fixtures.models import TINY_BACKBONE
from fixtures.models import tiny_backbone as backbone
from fixtures.models import tiny_xdnn as xdnn
from torch import nn

from cosmo_sop.attribution import (
    METHODS,
    WeightedLeastSquares,
    attribute,
    pixel_importance,
    sop_attribution,
    x_gradient,
)
from cosmo_sop.attribution.replay import ReplayedOutputs
from cosmo_sop.errors import InputError
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.sop import SumOfParts

SIDE = TINY_BACKBONE["input_size"]  # 16 -conv3-> 14 -pool-> 7 -conv3-> 5 -pool-> 2
CHANNELS = 2  # the channels of tiny_backbone and tiny_xdnn
BATCH = 3
#: Cheap settings for the sampling methods, so the whole file stays fast.
FAST = {
    "integrated_gradients": {"n_steps": 16},
    "gradient_shap": {"n_samples": 8},
    "kernel_shap": {"n_samples": 64},
    "lime": {"n_samples": 64},
}


def maps(seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANNELS, SIDE, SIDE, generator=generator)


def block_segments(block: int = 4, batch: int = BATCH) -> torch.Tensor:
    """Label maps (B, SIDE, SIDE) of square blocks of side ``block``, labels 0..S-1."""
    index = torch.arange(SIDE) // block
    labels = index[:, None] * (SIDE // block) + index[None, :]
    return labels.expand(batch, -1, -1).clone()


def per_segment(result: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Mean over each segment of bin 0 of an attribution (B, C, H, W): shape (B, S)."""
    labels = segments.flatten(1)
    n_segments = int(labels.max()) + 1
    values = result[:, 0].flatten(1)
    sums = values.new_zeros(len(values), n_segments).scatter_add_(1, labels, values)
    counts = torch.zeros_like(sums).scatter_add_(1, labels, torch.ones_like(values))
    return sums / counts


def model_for(method: str, seed: int = 0) -> ConvRegressor:
    return xdnn(seed) if METHODS[method].explains == "xdnn" else backbone(seed)


def output(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target]


class IgnoresRightHalf(nn.Module):
    """The backbone applied to the map with its right half zeroed: that half cannot matter."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.n_outputs = inner.n_outputs
        keep = torch.ones(1, 1, SIDE, SIDE)
        keep[..., SIDE // 2 :] = 0
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.keep)


class Linear(nn.Module):
    """f(x) = sum of weights * x per output: its Shapley values are known exactly."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weights = nn.Parameter(torch.randn(2, CHANNELS, SIDE, SIDE, generator=generator))
        self.n_outputs = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,ochw->bo", x, self.weights)


# -- every method ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_shape_dtype_and_side_effects(method):
    model = model_for(method).train()  # the call must switch to eval and back
    x = maps().double()  # inputs follow the model's dtype
    before = x.clone()
    state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    result = attribute(method, model, x, 1, block_segments(), **FAST.get(method, {}))
    assert result.shape == x.shape and result.dtype == torch.float32
    assert result.device.type == "cpu" and not result.requires_grad
    assert torch.isfinite(result).all() and result.abs().max() > 0
    assert torch.equal(x, before) and not x.requires_grad and x.grad is None
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    # captum's samplers draw from the global generators; their state is put back.
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


@pytest.mark.parametrize("method", [m for m, e in METHODS.items() if e.stochastic])
def test_reproducible_under_a_seed_and_independent_of_the_batch(method):
    model, x, segments = model_for(method), maps(), block_segments()
    options = FAST[method]
    first = attribute(method, model, x, 0, segments, seed=7, **options)
    torch.rand(5), np.random.rand(5)  # move the global streams: must not matter
    second = attribute(method, model, x, 0, segments, seed=7, **options)
    assert torch.equal(first, second)
    other = attribute(method, model, x, 0, segments, seed=8, **options)
    assert not torch.equal(first, other)
    # Each map is reseeded: its attribution does not depend on the other maps of the batch.
    alone = attribute(method, model, x[2:], 0, segments[2:], seed=7, **options)
    torch.testing.assert_close(alone, first[2:], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "gradient_shap"])
def test_negative_control_ignored_half_gets_nothing(method):
    model = IgnoresRightHalf(backbone(3))
    result = attribute(method, model, maps(4), 0, **FAST.get(method, {}))
    right, left = result[..., SIDE // 2 :], result[..., : SIDE // 2]
    assert torch.equal(right, torch.zeros_like(right))  # the gradient there is exactly zero
    assert left.abs().mean() > 0


def test_kernel_shap_gives_ignored_segments_almost_nothing():
    # Quadrants: with 4 players, 400 draws from the Shapley kernel nearly enumerate the 14
    # coalitions, so the estimate is close to the exact values, which are 0 for a dummy player.
    # (With many segments and few draws, sampling noise leaks into dummy segments.)
    model = IgnoresRightHalf(backbone(3))
    segments = block_segments(SIDE // 2)
    result = attribute("kernel_shap", model, maps(4), 0, segments, n_samples=400)
    right, left = result[..., SIDE // 2 :], result[..., : SIDE // 2]
    assert right.abs().max() < 0.05 * left.abs().max()


# -- integrated gradients and x-gradient -------------------------------------------------------


@pytest.mark.parametrize("target", [0, 1])
def test_integrated_gradients_is_complete(target):
    model = backbone(5).double()
    x = maps(6).double()
    result = attribute("integrated_gradients", model, x, target, n_steps=256)
    difference = output(model, x, target) - output(model, torch.zeros_like(x), target)
    total = result.double().sum(dim=(1, 2, 3))
    assert difference.abs().min() > 1e-3  # a non-trivial check
    # The path gradient of a LeakyReLU/max-pool net jumps at many kinks, so the quadrature
    # converges only like 1 / n_steps: ~3e-3 relative at 256 midpoints here.
    torch.testing.assert_close(total, difference, rtol=1e-2, atol=1e-5)


def test_x_gradient_through_the_registry():
    model, x = xdnn(2), maps(3)
    result = attribute("x_gradient", model, x, 1)
    torch.testing.assert_close(result, x_gradient(model.eval(), x, 1), rtol=0, atol=0)
    torch.testing.assert_close(result.sum(dim=(1, 2, 3)), output(model, x, 1), rtol=1e-4, atol=1e-6)
    # The biased backbone is not an X-DNN: the registry says so instead of returning garbage.
    with pytest.raises(InputError, match="x_gradient.*bias"):
        attribute("x_gradient", backbone(), x, 1)


# -- kernel SHAP and LIME over segments --------------------------------------------------------


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_segment_methods_are_constant_on_segments(method):
    x, segments = maps(), block_segments()
    result = attribute(method, backbone(), x, 0, segments, **FAST[method])
    n_segments = int(segments.max()) + 1
    for b in range(BATCH):
        values = result[b].flatten(1)  # (C, H*W)
        labels = segments[b].flatten()
        for label in range(n_segments):
            inside = values[:, labels == label]
            assert torch.all(inside == inside[0, 0]), f"map {b}, segment {label} is not constant"
        assert len(torch.unique(values[0])) > 1


class CountingCalls(nn.Module):
    """``inner`` that counts the maps it is run on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.n_outputs, self.n_maps = inner, inner.n_outputs, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n_maps += len(x)
        return self.inner(x)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_the_second_output_replays_the_backbone_passes_of_the_first(method):
    """Same attributions bit for bit with and without the replay, from half the passes."""
    x, segments = maps(), block_segments()
    plain, counted = CountingCalls(backbone()), CountingCalls(backbone())
    replayed = ReplayedOutputs(counted)
    for target in (0, 1):
        replayed.rewind()
        ours = attribute(method, replayed, x, target, segments, **FAST[method])
        theirs = attribute(method, plain, x, target, segments, **FAST[method])
        assert torch.equal(ours, theirs)
    assert replayed.n_replayed > 0
    assert counted.n_maps == plain.n_maps // 2
    # A different batch after the rewind runs the model; gradients never take a recorded output.
    replayed.rewind()
    assert torch.equal(replayed(x + 1), plain.inner(x + 1))
    inputs = x.clone().requires_grad_(True)
    replayed(inputs).sum().backward()
    assert inputs.grad is not None


def test_kernel_shap_is_efficient_and_spread_conserves_the_total():
    model, x, segments = backbone(7), maps(8), block_segments()
    spread = attribute("kernel_shap", model, x, 1, segments, n_samples=128)
    painted = attribute("kernel_shap", model, x, 1, segments, n_samples=128, spread=False)
    # Painted: every element carries its segment's value; spread: that value / (C * pixels).
    pixels = torch.bincount(segments[0].flatten()).float()
    torch.testing.assert_close(spread, painted / (CHANNELS * pixels[segments])[:, None])
    segment_values = per_segment(painted, segments)
    difference = output(model, x, 1) - output(model, torch.zeros_like(x), 1)
    # The all-on and all-off coalitions carry a huge weight: efficiency holds to fit precision.
    torch.testing.assert_close(segment_values.sum(1), difference, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(spread.sum(dim=(1, 2, 3)), difference, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_exact_on_a_model_linear_in_the_segments(method):
    # For f linear in x, switching segments on and off is linear in the on/off pattern, so the
    # regression is exact and the segment value is sum over the segment of weight * x.
    model, x, segments = Linear(9), maps(10), block_segments()
    options = {"alpha": 0.0} if method == "lime" else {}
    result = attribute(method, model, x, 1, segments, n_samples=64, spread=False, **options)
    contributions = (model.weights[1].detach() * x).sum(1)  # (B, H, W)
    labels = segments.flatten(1)
    expected = torch.zeros(BATCH, 16).scatter_add_(1, labels, contributions.flatten(1))
    torch.testing.assert_close(per_segment(result, segments), expected, rtol=1e-4, atol=1e-5)


def test_kernel_shap_approaches_exact_shapley_values():
    # Four segments (quadrants): the exact Shapley values need all 16 coalitions.
    model, x, segments = backbone(11), maps(12, batch=1), block_segments(SIDE // 2, batch=1)
    n_segments = 4
    coalitions = torch.tensor(list(itertools.product([0, 1], repeat=n_segments)))
    keep = coalitions[:, segments[0]][:, None].float()  # (16, 1, H, W)
    value = dict(zip(map(tuple, coalitions.tolist()), output(model, keep * x, 0).tolist()))
    exact = torch.zeros(n_segments)
    for player in range(n_segments):
        for coalition, v in value.items():
            if coalition[player]:
                continue
            size = sum(coalition)
            weight = math.factorial(size) * math.factorial(n_segments - size - 1) / 24
            with_player = coalition[:player] + (1,) + coalition[player + 1 :]
            exact[player] += weight * (value[with_player] - v)
    result = attribute("kernel_shap", model, x, 0, segments, n_samples=400, spread=False)
    got = per_segment(result, segments)[0]
    assert exact.abs().max() > 1e-3
    torch.testing.assert_close(got, exact, rtol=0, atol=0.1 * exact.abs().max().item())


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_a_map_with_a_single_segment(method):
    # Map 0 is one segment, map 1 two halves; a lone segment takes the whole f(x) - f(0).
    model, x = backbone(16), maps(17, batch=2)
    segments = torch.zeros(2, SIDE, SIDE, dtype=torch.int64)
    segments[1, :, SIDE // 2 :] = 1
    result = attribute(method, model, x, 0, segments, n_samples=16)
    assert torch.all(result[0] == result[0, 0, 0, 0])
    if method == "kernel_shap":
        difference = output(model, x, 0) - output(model, torch.zeros_like(x), 0)
        torch.testing.assert_close(result.sum(dim=(1, 2, 3)), difference, rtol=1e-4, atol=1e-6)


def test_too_few_samples_for_the_fit_warns():
    with pytest.warns(UserWarning, match="n_samples=8 is below the 17 unknowns"):
        attribute("kernel_shap", backbone(), maps(), 0, block_segments(), n_samples=8)


def test_segment_labels_need_not_be_contiguous():
    model, x, segments = backbone(), maps(), block_segments()
    contiguous = attribute("kernel_shap", model, x, 0, segments, n_samples=64)
    sparse = attribute("kernel_shap", model, x, 0, (segments * 3 + 7).numpy(), n_samples=64)
    torch.testing.assert_close(sparse, contiguous, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:kernel_shap. n_samples=16 is below")
def test_kernel_shap_is_deterministic_when_its_fit_is_rank_deficient():
    # 16 samples for 16 segments + intercept: the fit is rank deficient, as in the tiny workflow
    # (12 segments, 16 samples). torch's CPU lstsq(driver="gelsy") reads an uninitialised pivot
    # array, so the same call gave different attributions depending on stale memory.
    model, x, segments = backbone(), maps(batch=24), block_segments(batch=24)
    first, second, third = (
        attribute("kernel_shap", model, x, 0, segments, n_samples=16, seed=0) for _ in range(3)
    )
    assert torch.equal(first, second) and torch.equal(first, third)


def test_weighted_least_squares_is_deterministic_and_minimum_norm():
    generator = torch.Generator().manual_seed(0)
    features = torch.randint(0, 2, (24, 40), generator=generator).to(torch.float64)
    outputs = torch.randn(24, generator=generator, dtype=torch.float64)
    weights = torch.rand(24, generator=generator, dtype=torch.float64) + 0.5
    fits = []
    for trial in range(8):
        # Freed integer buffers of the size of the pivot array that "gelsy" read uninitialised.
        junk = [torch.full((40 + k,), trial + 1, dtype=torch.int32) for k in range(8)]
        del junk
        model = WeightedLeastSquares(alpha=0.0)
        model.fit([(features, outputs, weights)])
        fits.append(model.representation()[0])
    assert all(torch.equal(fit, fits[0]) for fit in fits)
    root = weights.sqrt()[:, None]
    feature_mean = (weights[:, None] * features).sum(0) / weights.sum()
    output_mean = (weights * outputs).sum() / weights.sum()
    expected = torch.linalg.pinv(root * (features - feature_mean)) @ (
        root[:, 0] * (outputs - output_mean)
    )
    torch.testing.assert_close(fits[0], expected, rtol=0, atol=1e-10)


# -- errors ------------------------------------------------------------------------------------


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(InputError, match="'deeplift'.*integrated_gradients.*x_gradient"):
        attribute("deeplift", backbone(), maps(), 0)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_segment_methods_require_segments(method):
    with pytest.raises(InputError, match=f"{method}.*needs segments"):
        attribute(method, backbone(), maps(), 0)
    with pytest.raises(InputError, match="segments must have shape"):
        attribute(method, backbone(), maps(), 0, block_segments()[:, :8])
    with pytest.raises(InputError, match="integer labels"):
        attribute(method, backbone(), maps(), 0, block_segments().float())


def test_bad_options_and_targets():
    with pytest.raises(InputError, match=r"unknown option.*n_sample.*accepted.*n_samples"):
        attribute("kernel_shap", backbone(), maps(), 0, block_segments(), n_sample=10)
    with pytest.raises(InputError, match=r"target must be an output index in 0\.\.1"):
        attribute("saliency", backbone(), maps(), 2)
    with pytest.raises(InputError, match="shape \\(B, C, H, W\\)"):
        attribute("saliency", backbone(), maps()[0], 0)


# -- ranking pixels ----------------------------------------------------------------------------


def test_pixel_importance_sums_the_bins():
    attribution = maps(13)
    signed = pixel_importance(attribution)
    torch.testing.assert_close(signed, attribution[:, 0] + attribution[:, 1])
    torch.testing.assert_close(pixel_importance(attribution, absolute=True), signed.abs())
    with pytest.raises(InputError, match="pixel_importance"):
        pixel_importance(attribution[0])


def test_sop_attribution_is_the_score_weighted_sum_of_group_masks():
    with torch.random.fork_rng():
        torch.manual_seed(14)
        sop = SumOfParts.from_backbone(
            backbone(14),
            (CHANNELS, SIDE, SIDE),
            encoder_blocks=1,
            tokens="segments",
            n_heads=2,
            d_model=8,
            n_groups=4,
            keep_fraction=0.3,
        ).eval()
    segments = block_segments(4)
    with torch.no_grad():
        explanation = sop.explain(maps(15), segments)
    for out in (0, 1):
        result = sop_attribution(explanation, out)
        expected = torch.zeros(BATCH, SIDE, SIDE)
        for b in range(BATCH):
            for group in range(explanation.masks.shape[1]):
                score = float(explanation.scores[b, group, out])
                expected[b] += score * explanation.masks[b, group].float()
        assert result.shape == (BATCH, SIDE, SIDE) and result.dtype == torch.float32
        assert result.abs().max() > 0
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="output must be in 0..1"):
        sop_attribution(explanation, 2)
