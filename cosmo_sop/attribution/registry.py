"""Post-hoc attributions of a backbone's outputs to its input pixels: the baselines of SOP.

The Sum-of-Parts model explains itself; it is compared with post-hoc attributions of the
plain backbone (a :class:`~cosmo_sop.models.backbone.ConvRegressor` predicting standardised
(Omega_m, sigma_8); ``target`` 0 = Omega_m, 1 = sigma_8). Every method is one call,

    attribute(method, model, inputs, target, segments=None, **options) -> (B, C, H, W),

with the arithmetic done by captum: the gradient methods in :mod:`~cosmo_sop.attribution.gradients`,
the perturbation methods in :mod:`~cosmo_sop.attribution.perturbation`, the calling conventions
below in :mod:`~cosmo_sop.attribution.inputs`. The methods (:data:`METHODS`):

``integrated_gradients``
    Integrated Gradients from the all-zero map (kappa's mean, the "zero substrate" that SOP
    masks with). Complete: attributions sum to f(x) - f(0).
``gradient_shap``
    GradientSHAP (expected gradients): IG with random baselines and random points on the
    path. Baseline distribution per map: the zero map plus ``n_shuffled`` copies of the map
    with its pixel positions shuffled (one permutation for all bins, so each pixel keeps its
    tomographic values and the one-point PDF is kept, while the spatial structure is gone);
    or a fixed ``baselines`` tensor (N, C, H, W), e.g. training maps.
``kernel_shap``, ``lime``
    Perturbation methods over the watershed segments: a segment is switched off by setting
    all its pixels, in all bins, to zero; the coefficients of a weighted linear fit of the
    outputs on the on/off pattern are the segment attributions. Need ``segments``; their
    ``n_samples`` defaults to the config schema's ``evaluation.n_samples``.
``saliency``
    |d f / d x|: gradient magnitude, unsigned by construction.
``x_gradient``
    Input x gradient of an X-DNN (bias-free twin of the backbone), which is exact IG from
    zero for that network (:mod:`cosmo_sop.attribution.xgradient`). Note that it explains a
    *different model*, the X-DNN, which is the point of the X-DNN; pass that model.

Conventions: models are put in eval mode for the call (their mode is restored afterwards);
inputs are moved to the model's device and dtype and are never modified (they do not require
grad afterwards); results are detached, on the CPU, float32. Stochastic methods reseed
torch's and numpy's global generators (captum samples from both) with ``seed`` inside a
context that restores their state, and do so for every map, so a map's attribution depends
only on the map, the options and the seed, not on the other maps in the batch.

Pixel rankings: :func:`pixel_importance` reduces an attribution to one value per pixel position,
:func:`sop_attribution` and :func:`group_pixel_importance` give SOP's groups the same form.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cosmo_sop.attribution.gradients import (
    gradient_shap,
    integrated_gradients,
    saliency,
    x_gradient,
)
from cosmo_sop.attribution.inputs import (
    check_target,
    evaluating,
    finish,
    prepare_inputs,
    prepare_segments,
)
from cosmo_sop.attribution.perturbation import kernel_shap, lime
from cosmo_sop.errors import InputError

# -- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributionMethod:
    """One entry of :data:`METHODS`.

    Attributes
    ----------
    name
        Registry key.
    function
        ``function(model, inputs, target[, segments], **options) -> (B, C, H, W)``.
    needs_segments
        Whether ``segments`` is required.
    stochastic
        Whether the result depends on ``seed``.
    explains
        "backbone", or "xdnn" for a method that needs the X-DNN twin as ``model``.
    """

    name: str
    function: Callable[..., Tensor]
    needs_segments: bool = False
    stochastic: bool = False
    explains: str = "backbone"

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options with their defaults."""
        parameters = inspect.signature(self.function).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


#: Name of SOP's own attribution beside the baselines of :data:`METHODS`.
SOP = "sop"
#: The attribution methods by name.
METHODS: dict[str, AttributionMethod] = {
    method.name: method
    for method in (
        AttributionMethod("integrated_gradients", integrated_gradients),
        AttributionMethod("gradient_shap", gradient_shap, stochastic=True),
        AttributionMethod("kernel_shap", kernel_shap, needs_segments=True, stochastic=True),
        AttributionMethod("lime", lime, needs_segments=True, stochastic=True),
        AttributionMethod("saliency", saliency),
        AttributionMethod("x_gradient", x_gradient, explains="xdnn"),
    )
}


def attribute(
    method: str,
    model: nn.Module,
    inputs: Tensor | np.ndarray,
    target: int,
    segments: Tensor | np.ndarray | None = None,
    **options: Any,
) -> Tensor:
    """Attribution of output ``target`` of ``model`` to every input element.

    Parameters
    ----------
    method
        A key of :data:`METHODS`.
    model
        The backbone (or, for "x_gradient", its X-DNN twin); put in eval mode for the call.
    inputs
        kappa patches, shape (B, C, H, W), physical units.
    target
        Output index: 0 = Omega_m, 1 = sigma_8 (standardised).
    segments
        Integer label maps (B, H, W); required by "kernel_shap" and "lime", ignored by the
        others (so one call pattern serves all methods).
    **options
        Keyword options of the method (see ``METHODS[method].options``).

    Returns
    -------
    Tensor
        float32 on the CPU, shape (B, C, H, W), in units of the (standardised) output per
        element. Summed over (C, H, W) it gives f(x) - f(0) for "integrated_gradients" and
        "x_gradient", approximately so for "kernel_shap" (and "gradient_shap", in expectation
        over its baselines); "saliency" is a gradient magnitude, not a share of the output.

    Raises
    ------
    InputError
        Unknown method or option, malformed inputs or segments, missing segments, bad target.
    """
    if method not in METHODS:
        raise InputError("attribution method", f"unknown method {method!r}; valid: {list(METHODS)}")
    entry = METHODS[method]
    where = f"attribution method {method!r}"
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise InputError(where, f"unknown option(s) {unknown}; accepted: {list(entry.options)}")
    if not isinstance(model, nn.Module):
        raise InputError(where, f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = prepare_inputs(model, inputs, where)
    target = check_target(model, target, where)
    arguments: tuple[Any, ...] = (model, inputs, target)
    if entry.needs_segments:
        arguments += (prepare_segments(segments, inputs, where),)
    with evaluating(model):
        return finish(entry.function(*arguments, **options))


# -- ranking pixels --------------------------------------------------------------------------


def pixel_importance(attribution: Tensor, absolute: bool = False) -> Tensor:
    """Importance of each pixel position (all bins together), for ranking pixels.

    The bins of a pixel are summed with their signs: insertion/deletion tests add or remove a
    pixel in all bins at once, and the effect of doing so is (to first order) the net sum.
    The signed value is the standard ranking for those tests: a pixel with a large negative
    attribution pulls the output down, and ranking by magnitude would mix it with pixels that
    push the output up, so the curves would not measure one direction. ``absolute`` ranks by
    the magnitude of the net contribution instead, |sum over bins|.

    Parameters
    ----------
    attribution
        Shape (B, C, H, W).
    absolute
        Return |sum over bins| instead of the signed sum.

    Returns
    -------
    Tensor
        Shape (B, H, W), same dtype and device as ``attribution``.
    """
    if not isinstance(attribution, Tensor) or attribution.ndim != 4:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(attribution)
        raise InputError("pixel_importance", f"attribution must have shape (B, C, H, W), got {got}")
    importance = attribution.sum(dim=1)
    return importance.abs() if absolute else importance


def sop_attribution(explanation: Any, output: int) -> Tensor:
    """SOP's own pixel importance for one output: sum over groups of score x group mask.

    Parameters
    ----------
    explanation
        A :class:`cosmo_sop.models.groups.Explanation` (``scores`` (B, m, n_out), ``masks``
        (B, m, H, W) bool).
    output
        Output index (0 = Omega_m, 1 = sigma_8).

    Returns
    -------
    Tensor
        float32 on the CPU, shape (B, H, W): the summed scores of the groups holding each pixel
        (0 for pixels in no group), so SOP can be ranked like the baselines.
    """
    scores, masks = explanation.scores, explanation.masks
    n_outputs = scores.shape[-1]
    is_int = isinstance(output, (int, np.integer)) and not isinstance(output, bool)
    if not is_int or not 0 <= output < n_outputs:
        raise InputError("sop_attribution", f"output must be in 0..{n_outputs - 1}, got {output!r}")
    return finish(group_pixel_importance(masks, scores[..., output].detach()))


def group_pixel_importance(masks: Tensor | np.ndarray, scores: Tensor | np.ndarray) -> Tensor:
    """Pixel map of a group attribution: the summed scores of the groups holding each pixel.

    For SOP with scores c_io this is the weight that output o gives a pixel, the natural map to
    rank pixels by in pixel insertion/deletion.

    Parameters
    ----------
    masks
        bool (N, m, H, W).
    scores
        (N, m) scores for one output (``Explanation.scores[..., o]``).

    Returns
    -------
    Tensor
        float64 (N, H, W).
    """
    masks = torch.as_tensor(masks)
    scores = torch.as_tensor(scores, device=masks.device)
    if masks.ndim != 4 or tuple(scores.shape) != tuple(masks.shape[:2]):
        raise ValueError(
            f"scores {tuple(scores.shape)} must be (N, m) for masks (N, m, H, W) = "
            f"{tuple(masks.shape)}"
        )
    return torch.einsum("bmhw,bm->bhw", masks.to(torch.float64), scores.to(torch.float64))
