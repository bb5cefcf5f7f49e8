"""X-Gradient equals Integrated Gradients from zero for the X-DNN, and not for a biased net."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import IntegratedGradients
from fixtures.models import float64_model
from torch import nn

from cosmo_sop.attribution import XGradient, homogeneity_violations, x_gradient
from cosmo_sop.models.backbone import ConvRegressor

SIZE = 32
CHANNELS = 2
#: Captum builds its quadrature weights in float32, which bounds the agreement of a float64
#: IG with the exact value to ~1e-8 of the attribution scale.
IG_RTOL = 1e-6


def build(seed: int, **kwargs) -> ConvRegressor:
    return float64_model(seed, CHANNELS, input_size=SIZE, **kwargs)


def maps(seed: int, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANNELS, SIZE, SIZE, dtype=torch.float64, generator=generator)


def integrated_gradients(model, x, target, method):
    return IntegratedGradients(model).attribute(
        x, baselines=0.0, target=target, n_steps=200, method=method
    )


# Gauss-Legendre and midpoint nodes lie inside (0, 1). The trapezoid rule also evaluates the
# gradient at the baseline x = 0 itself, where every ReLU sits on its kink, and is off by
# O(1 / n_steps) there even for an exactly homogeneous network.
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
@pytest.mark.parametrize("target", [0, 1])
def test_equals_integrated_gradients_for_xdnn(target, method):
    model = build(0, bias=False)
    x = maps(1)
    xg = x_gradient(model, x, target)
    ig = integrated_gradients(model, x, target, method)
    assert xg.shape == x.shape and xg.dtype == x.dtype
    scale = xg.abs().max()
    assert scale > 0
    torch.testing.assert_close(xg, ig, rtol=0, atol=IG_RTOL * scale.item())


@pytest.mark.parametrize("target", [0, 1])
def test_completeness_for_xdnn(target):
    model = build(2, bias=False, negative_slope=0.0)
    x = maps(3, batch=4)
    xg = XGradient(model).attribute(x, target=target)
    with torch.no_grad():
        f_x = model(x)[:, target]
        f_0 = model(torch.zeros_like(x))[:, target]
    assert torch.equal(f_0, torch.zeros_like(f_0))
    torch.testing.assert_close(xg.sum(dim=(1, 2, 3)), f_x - f_0, rtol=1e-10, atol=0)


def test_batched_equals_one_sample_at_a_time():
    model = build(0, bias=False)
    x = maps(4, batch=3)
    together = x_gradient(model, x, 1)
    alone = torch.cat([x_gradient(model, x[i : i + 1], 1) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=0)


def test_leaves_the_inputs_alone():
    model = build(0, bias=False)
    x = maps(5)
    before = x.clone()
    attributions = x_gradient(model, x, 0)
    assert not x.requires_grad and x.grad is None and torch.equal(x, before)
    assert not attributions.requires_grad


def test_biased_network_breaks_the_equality():
    """Negative control: with biases input x gradient is not IG, and the comparison sees it."""
    model = build(0, bias=True)
    x = maps(1)
    xg = x_gradient(model, x, 0, check="off")
    ig = integrated_gradients(model, x, 0, "gausslegendre")
    assert (xg - ig).abs().max() > 0.05 * xg.abs().max()

    # IG stays (nearly) complete, f(x) - f(0); input x gradient misses the biases' share.
    with torch.no_grad():
        delta = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    ig_gap = (ig.sum(dim=(1, 2, 3)) - delta).abs().max()
    xg_gap = (xg.sum(dim=(1, 2, 3)) - delta).abs().max()
    assert xg_gap > 10 * ig_gap


def test_refuses_or_warns_on_models_that_are_not_homogeneous():
    biased = build(0)
    with pytest.raises(ValueError, match="head: has a bias"):
        XGradient(biased)
    with pytest.warns(UserWarning, match="not positively homogeneous"):
        XGradient(biased, check="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        XGradient(biased, check="off").attribute(maps(0, batch=1), target=0)

    with pytest.raises(ValueError, match="BatchNorm2d"):
        XGradient(build(0, bias=False, batchnorm=True))

    # Dropout is homogeneous only once frozen: refused in train mode, accepted in eval mode.
    dropout = build(0, bias=False, dropout=0.5).train()
    explainer = XGradient(dropout.eval())
    dropout.train()
    with pytest.raises(ValueError, match="dropout is active"):
        explainer.attribute(maps(0, batch=1), target=0)

    with pytest.raises(ValueError, match="check"):
        XGradient(dropout, check="maybe")


def test_homogeneity_violations():
    assert homogeneity_violations(build(0, bias=False)) == []
    assert homogeneity_violations(nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh())) == [
        "1: Tanh is not known to be homogeneous"
    ]
    assert homogeneity_violations(nn.Linear(3, 1)) == ["Linear: has a bias"]
