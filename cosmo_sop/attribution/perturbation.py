"""Perturbation methods over segments: KernelSHAP and LIME, and their weighted linear fit.

A segment (a watershed region of the map) is switched off by setting all its pixels, in all
bins, to zero, kappa's mean; captum draws on/off patterns over the segments of one map, feeds
the perturbed maps to the backbone, and the coefficients of a weighted linear fit of the
outputs on the patterns are the segment attributions, spread over the segment's pixels. The fit
is :class:`WeightedLeastSquares`, solved in closed form (captum's default estimators need
scikit-learn, which is not a dependency).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from captum._utils.models import Model
from captum.attr import KernelShap, Lime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from torch import Tensor, nn

from cosmo_sop.attribution.inputs import over_maps, seeded
from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError


def spread_over_segments(
    coefficients: Tensor, segments: Tensor, n_channels: int, spread: bool
) -> Tensor:
    """Paint segment coefficients (S,) onto a (1, C, H, W) attribution.

    ``spread`` divides each coefficient evenly among the C x n_pixels elements of its segment,
    so that the attribution sums to the sum of the coefficients, like a pixel-level method;
    otherwise every element carries its segment's whole coefficient (captum's convention).
    """
    values = coefficients.to(torch.float64)
    if spread:
        sizes = torch.bincount(segments.flatten(), minlength=len(values)).to(values)
        values = values / (sizes * n_channels)
    return values[segments].expand(n_channels, -1, -1)[None]


def switch_segments(curr_sample: Tensor, original_inputs: Tensor, **kwargs: Any) -> Tensor:
    """Map an on/off pattern over segments (1, S) to a perturbed input (1, C, H, W).

    Same result as captum's ``default_from_interp_rep_transform``, which indexes the pattern
    with the whole (1, C, H, W) int64 feature mask and dominated the run time (several ms per
    perturbed map); ``index_select`` on the flat mask is an order of magnitude faster.
    """
    feature_mask: Tensor = kwargs["feature_mask"]
    keep = curr_sample[0].index_select(0, feature_mask.reshape(-1)).view_as(original_inputs)
    keep = keep.to(original_inputs.dtype)
    return keep * original_inputs + (1 - keep) * kwargs["baselines"]


class WeightedLeastSquares(Model):
    """Weighted (ridge) linear regression with an unpenalised intercept, solved in closed form.

    The interpretable model of KernelSHAP (``alpha=0``: the Shapley-kernel weighted least
    squares of Lundberg & Lee 2017) and of LIME (``alpha > 0``: ridge, as in the reference
    ``lime`` package). Written here because captum's defaults for both are scikit-learn
    estimators and scikit-learn is not a dependency; the problem is one ``lstsq`` call, done in
    float64 with the minimum-norm solution when the design is rank deficient (fewer samples
    than segments, or repeated coalitions).

    Parameters
    ----------
    alpha
        Ridge penalty on the coefficients (not on the intercept), >= 0.
    """

    def __init__(self, alpha: float = 0.0) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.coefficients: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data: torch.utils.data.DataLoader, **kwargs: object) -> dict[str, float]:
        """Fit to the (features, outputs, weights) batches of ``train_data``."""
        features, outputs, weights = (
            torch.cat(parts).to(torch.float64) for parts in zip(*train_data, strict=True)
        )
        outputs = outputs.reshape(len(outputs))
        weights = weights.reshape(len(weights))
        # Centre on the weighted means, which takes the (unpenalised) intercept out.
        feature_mean = (weights[:, None] * features).sum(0) / weights.sum()
        output_mean = (weights * outputs).sum() / weights.sum()
        root = weights.sqrt()[:, None]
        design = root * (features - feature_mean)
        response = root * (outputs - output_mean)[:, None]
        if self.alpha > 0:
            n_features = features.shape[1]
            penalty = torch.eye(n_features, dtype=design.dtype) * self.alpha**0.5
            design = torch.cat([design, penalty])
            response = torch.cat([response, response.new_zeros(n_features, 1)])
        # SVD-based "gelsd", not "gelsy": torch's CPU gelsy passes LAPACK an uninitialised
        # pivot array (JPVT, read on entry: non-zero marks a column to pivot first), so its
        # answer depended on stale memory, and for a rank-deficient design (KernelSHAP's
        # heavy all-on/all-off rows, few samples) even its rank and solution did; see
        # pytorch/pytorch#71222 and #187411.
        solution = torch.linalg.lstsq(design.cpu(), response.cpu(), driver="gelsd").solution
        self.coefficients = solution[:, 0].to(features.device)
        self.intercept = output_mean - feature_mean @ self.coefficients
        return {}

    def representation(self) -> Tensor:
        """Fitted coefficients, shape (1, n_features)."""
        if self.coefficients is None:
            raise RuntimeError("WeightedLeastSquares has not been fitted")
        return self.coefficients[None]

    def __call__(self, x: Tensor) -> Tensor:
        """Predictions of the fitted model for features ``x`` (N, n_features)."""
        return x.to(torch.float64) @ self.representation().T + self.intercept


def _perturbation_method(
    name: str,
    explainer: KernelShap | Lime,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    n_samples: int | None,
    perturbations_per_eval: int,
    seed: int | None,
    spread: bool,
    progress: bool,
) -> Tensor:
    """KernelSHAP or LIME over segments, one map per captum call (an interpretable model each)."""
    if n_samples is None:
        n_samples = defaults("evaluation")["n_samples"]
    if n_samples < 2 or perturbations_per_eval < 1:
        raise InputError(
            name,
            f"n_samples must be >= 2 and perturbations_per_eval >= 1, got {n_samples} and "
            f"{perturbations_per_eval}",
        )
    explainer.from_interp_rep_transform = switch_segments
    n_unknowns = int(segments.flatten(1).max(dim=1).values.max()) + 2  # segments + intercept
    if n_samples < n_unknowns:
        warnings.warn(
            f"{name}: n_samples={n_samples} is below the {n_unknowns} unknowns of the linear "
            "fit (segments + intercept); the minimum-norm solution is returned",
            UserWarning,
            stacklevel=4,
        )
    n_channels = inputs.shape[1]
    attributions = []
    for index in over_maps(range(len(inputs)), progress, name):
        x = inputs[index : index + 1]
        labels = segments[index]
        if isinstance(explainer, KernelShap) and labels.max() == 0:
            # One player takes the whole f(x) - f(0) (captum's coalition sampler needs two).
            with torch.no_grad():
                ends = explainer.forward_func(torch.cat([x, torch.zeros_like(x)]))[:, target]
            coefficients = (ends[0] - ends[1]).reshape(1)
        else:
            # All bins of a segment move together: the mask repeats the label map over bins.
            feature_mask = labels.expand(1, n_channels, -1, -1).contiguous()
            with seeded(seed, inputs.device):
                coefficients = explainer.attribute(
                    x,
                    baselines=0.0,
                    target=target,
                    feature_mask=feature_mask,
                    n_samples=n_samples,
                    perturbations_per_eval=perturbations_per_eval,
                    return_input_shape=False,
                )
        coefficients = coefficients.flatten()
        attributions.append(spread_over_segments(coefficients, labels, n_channels, spread))
    return torch.cat(attributions)


def kernel_shap(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    *,
    n_samples: int | None = None,
    perturbations_per_eval: int = 256,
    seed: int | None = 0,
    spread: bool = True,
    progress: bool = False,
) -> Tensor:
    """KernelSHAP over segments, zero map as the "absent" value.

    Coalitions are drawn from the Shapley kernel (captum), the all-on and all-off patterns
    always included with a large weight, so the segment values sum to f(x) - f(0) up to the
    fit's residual; the fit is :class:`WeightedLeastSquares` with ``alpha=0``.

    Parameters
    ----------
    n_samples
        Perturbed maps per map (forward passes); should exceed the number of segments. None:
        the config schema's ``evaluation.n_samples``.
    perturbations_per_eval
        Perturbed maps per backbone call (bounds memory).
    seed
        Seed of the coalition draws, reused for every map.
    spread
        Divide each segment's value evenly over its pixels and bins (attribution sums to the
        segment values' sum); False paints the whole value on every element (captum style).
    progress
        Show a progress bar over the maps.
    """
    explainer = KernelShap(model)
    explainer.interpretable_model = WeightedLeastSquares(alpha=0.0)
    return _perturbation_method(
        "kernel_shap",
        explainer,
        inputs,
        target,
        segments,
        n_samples,
        perturbations_per_eval,
        seed,
        spread,
        progress,
    )


def lime(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    *,
    n_samples: int | None = None,
    perturbations_per_eval: int = 256,
    alpha: float = 1.0,
    kernel_width: float = 1.0,
    seed: int | None = 0,
    spread: bool = True,
    progress: bool = False,
) -> Tensor:
    """LIME over segments, zero map as the "absent" value.

    Each segment is kept with probability 1/2 (captum), samples are weighted by an exponential
    kernel of the cosine distance between the perturbed and the original map (captum's
    default), and a ridge regression (:class:`WeightedLeastSquares`) gives the coefficients.

    Parameters
    ----------
    n_samples, perturbations_per_eval, seed, spread, progress
        As in :func:`kernel_shap`.
    alpha
        Ridge penalty (1.0 is the reference ``lime`` package's default).
    kernel_width
        Width of the similarity kernel exp(-d^2 / (2 width^2)) on the cosine distance d.
    """
    if not kernel_width > 0:
        raise InputError("lime", f"kernel_width must be > 0, got {kernel_width!r}")
    if not alpha >= 0:
        raise InputError("lime", f"alpha must be >= 0, got {alpha!r}")
    explainer = Lime(
        model,
        interpretable_model=WeightedLeastSquares(alpha=alpha),
        similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width),
    )
    return _perturbation_method(
        "lime",
        explainer,
        inputs,
        target,
        segments,
        n_samples,
        perturbations_per_eval,
        seed,
        spread,
        progress,
    )
