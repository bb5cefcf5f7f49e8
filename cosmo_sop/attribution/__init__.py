"""Post-hoc attributions of the backbone's outputs to input pixels, the baselines of SOP.

One call serves every method, ``attribute(method, model, inputs, target, segments, **options)``
over the registry :data:`METHODS` (:mod:`~cosmo_sop.attribution.registry`): Integrated
Gradients, GradientSHAP and saliency (:mod:`~cosmo_sop.attribution.gradients`), KernelSHAP and
LIME over segments with their weighted least-squares fit
(:mod:`~cosmo_sop.attribution.perturbation`), and X-Gradient, the input x gradient that is
exact Integrated Gradients for a bias-free X-DNN (:mod:`~cosmo_sop.attribution.xgradient`).
:func:`pixel_importance`, :func:`sop_attribution` and :func:`group_pixel_importance` turn the
baselines' attributions and SOP's groups into pixel rankings for
:mod:`cosmo_sop.faithfulness`, which depends on this subpackage and never the other way round.
"""

from cosmo_sop.attribution.perturbation import WeightedLeastSquares
from cosmo_sop.attribution.registry import (
    METHODS,
    SOP,
    AttributionMethod,
    attribute,
    group_pixel_importance,
    pixel_importance,
    sop_attribution,
)
from cosmo_sop.attribution.xgradient import (
    HOMOGENEOUS_LEAVES,
    XGradient,
    homogeneity_violations,
    x_gradient,
)

__all__ = [
    "HOMOGENEOUS_LEAVES",
    "METHODS",
    "SOP",
    "AttributionMethod",
    "WeightedLeastSquares",
    "XGradient",
    "attribute",
    "group_pixel_importance",
    "homogeneity_violations",
    "pixel_importance",
    "sop_attribution",
    "x_gradient",
]
