"""Post-hoc attributions of a backbone's outputs to its input pixels: the baselines of SOP.

The Sum-of-Parts model explains itself; it is compared with post-hoc attributions of the
plain backbone (a :class:`~cosmo_sop.models.backbone.ConvRegressor` predicting standardised
(Omega_m, sigma_8); ``target`` 0 = Omega_m, 1 = sigma_8). Every method is one call,

    attribute(method, model, inputs, target, segments=None, **options) -> (B, C, H, W),

with the arithmetic done by captum. The methods (:data:`METHODS`):

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
    outputs on the on/off pattern are the segment attributions. Need ``segments``.
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
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum._utils.models import Model
from captum.attr import GradientShap, IntegratedGradients, KernelShap, Lime, Saliency
from captum.attr._core.lime import get_exp_kernel_similarity_function
from torch import Tensor, nn
from tqdm.auto import tqdm

from cosmo_sop.attribution.xgradient import XGradient
from cosmo_sop.errors import InputError
from cosmo_sop.faithfulness.curves import group_pixel_importance

# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore its train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global generators for the block, then restore them.

    captum's samplers draw from the global generators (``torch.randn``, ``torch.bernoulli``,
    ``np.random.choice``, ``np.random.uniform``) and take no generator argument, so the only
    way to make them reproducible is to seed the global state; it is put back afterwards so
    that the caller's random streams are not disturbed. ``seed=None`` uses the state as is.
    """
    if seed is None:
        yield
        return
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


def _progress(iterable: range, enabled: bool, name: str) -> Iterator[int]:
    return iter(tqdm(iterable, desc=name, unit="map", disable=not enabled, leave=False))


def _reference(model: nn.Module) -> Tensor | None:
    """A parameter or buffer of ``model``, to read its device and dtype; None if it has none."""
    return next(model.parameters(), next(model.buffers(), None))


def _prepare_inputs(model: nn.Module, inputs: Any, where: str) -> Tensor:
    """``inputs`` as a detached (B, C, H, W) float tensor on the model's device and dtype."""
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        got = (
            f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}"
            if isinstance(inputs, Tensor)
            else type(inputs).__name__
        )
        raise InputError(where, f"inputs must be a float tensor of shape (B, C, H, W), got {got}")
    if inputs.shape[0] == 0:
        raise InputError(where, "inputs hold no maps (batch size 0)")
    reference = _reference(model)
    if reference is not None:
        inputs = inputs.to(device=reference.device, dtype=reference.dtype)
    return inputs.detach()


def _check_target(model: nn.Module, target: Any, where: str) -> int:
    is_int = isinstance(target, (int, np.integer)) and not isinstance(target, bool)
    n_outputs = getattr(model, "n_outputs", None)
    if not is_int or target < 0 or (isinstance(n_outputs, int) and target >= n_outputs):
        valid = f"0..{n_outputs - 1}" if isinstance(n_outputs, int) else "a non-negative integer"
        raise InputError(where, f"target must be an output index in {valid}, got {target!r}")
    return int(target)


def _prepare_segments(segments: Any, inputs: Tensor, where: str) -> Tensor:
    """Label maps (B, H, W) relabelled 0..S_b-1 per map, int64, on the inputs' device.

    Labels need not be contiguous (a map may have lost a segment to a crop); relabelling
    makes every captum feature cover at least one pixel.
    """
    if segments is None:
        raise InputError(
            where, "needs segments: integer label maps of shape (B, H, W), one per input map"
        )
    if isinstance(segments, np.ndarray):
        segments = torch.from_numpy(segments)
    expected = (inputs.shape[0], *inputs.shape[2:])
    if not isinstance(segments, Tensor) or tuple(segments.shape) != expected:
        got = tuple(segments.shape) if isinstance(segments, Tensor) else type(segments).__name__
        raise InputError(where, f"segments must have shape (B, H, W) = {expected}, got {got}")
    if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
        raise InputError(where, f"segments must hold integer labels, got dtype {segments.dtype}")
    segments = segments.to(device=inputs.device, dtype=torch.int64)
    # Give every map its own label range, rank all labels at once, then restart each map at 0:
    # the labels of one map form a contiguous block of the ranks.
    shifted = segments - segments.min()
    keyed = shifted + torch.arange(len(segments), device=segments.device)[:, None, None] * (
        shifted.max() + 1
    )
    ranks = torch.unique(keyed, return_inverse=True)[1]
    return ranks - ranks.flatten(1).min(dim=1).values[:, None, None]


def _spread_over_segments(
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


def _switch_segments(curr_sample: Tensor, original_inputs: Tensor, **kwargs: Any) -> Tensor:
    """Map an on/off pattern over segments (1, S) to a perturbed input (1, C, H, W).

    Same result as captum's ``default_from_interp_rep_transform``, which indexes the pattern
    with the whole (1, C, H, W) int64 feature mask and dominated the run time (several ms per
    perturbed map); ``index_select`` on the flat mask is an order of magnitude faster.
    """
    feature_mask: Tensor = kwargs["feature_mask"]
    keep = curr_sample[0].index_select(0, feature_mask.reshape(-1)).view_as(original_inputs)
    keep = keep.to(original_inputs.dtype)
    return keep * original_inputs + (1 - keep) * kwargs["baselines"]


def _finish(attribution: Tensor) -> Tensor:
    return attribution.detach().to(device="cpu", dtype=torch.float32)


class WeightedLeastSquares(Model):
    """Weighted (ridge) linear regression with an unpenalised intercept, solved in closed form.

    The interpretable model of KernelSHAP (``alpha=0``: the Shapley-kernel weighted least
    squares of Lundberg & Lee 2017) and of LIME (``alpha > 0``: ridge, as in the reference
    ``lime`` package). Written here because captum's defaults for both are scikit-learn
    estimators and scikit-learn is not a dependency; the problem is one ``lstsq`` call, done in
    float64 with the minimum-norm solution when the design is rank deficient (fewer samples
    than segments).

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
        solution = torch.linalg.lstsq(design.cpu(), response.cpu(), driver="gelsy").solution
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


# -- the methods -----------------------------------------------------------------------------


def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    *,
    n_steps: int = 32,
    quadrature: str = "riemann_middle",
    internal_batch_size: int = 256,
) -> Tensor:
    """Integrated Gradients from the all-zero map.

    Parameters
    ----------
    n_steps
        Quadrature nodes on the path from 0 to x.
    quadrature
        captum's ``method``: "riemann_middle", "gausslegendre", "riemann_trapezoid", ...
        The midpoint rule is the default because the integrand, the gradient of a
        (Leaky)ReLU/max-pool network along the path, is piecewise constant with many kinks,
        where Gauss-Legendre's high order does not apply: with 32 nodes the completeness
        error (sum of attributions vs f(x) - f(0)) was ~1% for the midpoint rule and 2-3%
        for Gauss-Legendre on the default backbone.
    internal_batch_size
        Most path points per forward/backward pass (bounds memory).
    """
    explainer = IntegratedGradients(model)
    return explainer.attribute(
        inputs,
        baselines=0.0,
        target=target,
        n_steps=n_steps,
        method=quadrature,
        internal_batch_size=internal_batch_size,
    )


def gradient_shap(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    *,
    n_samples: int = 32,
    n_shuffled: int = 4,
    baselines: Tensor | None = None,
    stdevs: float = 0.0,
    seed: int | None = 0,
    progress: bool = False,
) -> Tensor:
    """GradientSHAP: expected (x - x') * grad f at random points between x' and x.

    Parameters
    ----------
    n_samples
        Random (baseline, path point) draws per map, evaluated in one forward/backward pass.
    n_shuffled
        Shuffled copies of each map joining the zero map in its baseline distribution (see the
        module docstring); ignored when ``baselines`` is given.
    baselines
        Fixed baseline distribution (N, C, H, W) shared by all maps, e.g. training maps.
    stdevs
        Standard deviation of Gaussian noise added to the inputs (captum's SmoothGrad
        option), in the units of kappa; 0 for plain GradientSHAP.
    seed
        Seed of the draws; the map's own draws are made with it whatever the batch.
    progress
        Show a progress bar over the maps.
    """
    explainer = GradientShap(model)
    _, n_channels, height, width = inputs.shape
    if baselines is not None:
        baselines = _prepare_inputs(model, baselines, "gradient_shap baselines")
        if tuple(baselines.shape[1:]) != (n_channels, height, width):
            raise InputError(
                "gradient_shap baselines",
                f"must have shape (N, {n_channels}, {height}, {width}), "
                f"got {tuple(baselines.shape)}",
            )
    elif n_shuffled < 0:
        raise InputError("gradient_shap", f"n_shuffled must be >= 0, got {n_shuffled}")
    attributions = []
    # One map at a time: the default baselines are built from the map itself, and captum draws
    # from a baseline distribution shared by the whole batch.
    for index in _progress(range(len(inputs)), progress, "gradient_shap"):
        x = inputs[index : index + 1]
        with _seeded(seed, inputs.device):
            references = baselines
            if references is None:
                order = torch.rand(n_shuffled, height * width, device=x.device).argsort(dim=1)
                flat = x.flatten(2).expand(n_shuffled, -1, -1)
                shuffled = flat.gather(2, order[:, None, :].expand(-1, n_channels, -1))
                references = torch.cat([torch.zeros_like(x), shuffled.view(-1, *x.shape[1:])])
            attributions.append(
                explainer.attribute(
                    x, baselines=references, n_samples=n_samples, stdevs=stdevs, target=target
                )
            )
    return torch.cat(attributions)


def _perturbation_method(
    name: str,
    explainer: KernelShap | Lime,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    n_samples: int,
    perturbations_per_eval: int,
    seed: int | None,
    spread: bool,
    progress: bool,
) -> Tensor:
    """KernelSHAP or LIME over segments, one map per captum call (an interpretable model each)."""
    if n_samples < 2 or perturbations_per_eval < 1:
        raise InputError(
            name,
            f"n_samples must be >= 2 and perturbations_per_eval >= 1, got {n_samples} and "
            f"{perturbations_per_eval}",
        )
    explainer.from_interp_rep_transform = _switch_segments
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
    for index in _progress(range(len(inputs)), progress, name):
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
            with _seeded(seed, inputs.device):
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
        attributions.append(_spread_over_segments(coefficients, labels, n_channels, spread))
    return torch.cat(attributions)


def kernel_shap(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    *,
    n_samples: int = 256,
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
        Perturbed maps per map (forward passes); should exceed the number of segments.
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
        "kernel_shap", explainer, inputs, target, segments, n_samples, perturbations_per_eval,
        seed, spread, progress,
    )  # fmt: skip


def lime(
    model: nn.Module,
    inputs: Tensor,
    target: int,
    segments: Tensor,
    *,
    n_samples: int = 256,
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
        "lime", explainer, inputs, target, segments, n_samples, perturbations_per_eval, seed,
        spread, progress,
    )  # fmt: skip


def saliency(model: nn.Module, inputs: Tensor, target: int) -> Tensor:
    """Absolute gradient |d f_target / d x| (Simonyan et al. 2014)."""
    # A leaf copy that requires grad (captum would otherwise switch it on, with a warning).
    return Saliency(model).attribute(inputs.detach().requires_grad_(True), target=target, abs=True)


def x_gradient(model: nn.Module, inputs: Tensor, target: int, *, check: str = "raise") -> Tensor:
    """Input x gradient of an X-DNN, equal to its Integrated Gradients from zero.

    Parameters
    ----------
    model
        The X-DNN (e.g. ``ConvRegressor.xdnn(...)`` trained like the backbone), not the backbone.
    check
        "raise", "warn" or "off": what to do if ``model`` is not built to be homogeneous.
    """
    try:
        explainer = XGradient(model, check=check)
    except ValueError as error:
        raise InputError("x_gradient", str(error)) from error
    return explainer.attribute(inputs, target=target)


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


#: The attribution methods by name.
#: Name of SOP's own attribution beside the baselines of :data:`METHODS`.
SOP = "sop"
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
    inputs = _prepare_inputs(model, inputs, where)
    target = _check_target(model, target, where)
    arguments: tuple[Any, ...] = (model, inputs, target)
    if entry.needs_segments:
        arguments += (_prepare_segments(segments, inputs, where),)
    with _evaluating(model):
        return _finish(entry.function(*arguments, **options))


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
        A :class:`cosmo_sop.models.sop.Explanation` (``scores`` (B, m, n_out), ``masks``
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
    return _finish(group_pixel_importance(masks, scores[..., output].detach()))
