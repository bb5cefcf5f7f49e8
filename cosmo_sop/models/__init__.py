"""Neural networks that map flat kappa patches to (Omega_m, sigma_8), and trained ones read back.

:class:`ConvRegressor` is the convolutional backbone (and, bias-free, its X-DNN twin
:func:`xdnn`); :class:`SumOfParts` wraps a frozen backbone into a self-attributing model whose
prediction is exactly a weighted sum over feature groups (its :class:`Explanation`). The
networks predict the :data:`TARGETS` standardised by a :class:`LabelScaler`. A trained model is
a run folder of weights and sidecar (:func:`save_weights`, :func:`load_weights`,
:func:`load_sidecar`); :func:`load_sop` reads a trained SOP model as a :class:`TrainedSOP`,
whose ``explain`` answers in physical units (:class:`SOPExplanation`), and
:func:`load_backbone` a trained backbone. Training lives in :mod:`cosmo_sop.training`, which
builds on this package (never the other way round).
"""

from cosmo_sop.models.backbone import ConvRegressor, InputScale, xdnn
from cosmo_sop.models.groups import GroupGenerator, Groups, GroupSelector
from cosmo_sop.models.sop import Explanation, SumOfParts
from cosmo_sop.models.targets import TARGETS, LabelScaler
from cosmo_sop.models.tokens import patch_token_map
from cosmo_sop.models.trained import (
    SOPExplanation,
    TrainedSOP,
    check_provenance,
    load_backbone,
    load_sop,
)
from cosmo_sop.models.weights import load_sidecar, load_weights, save_weights

__all__ = [
    "TARGETS",
    "ConvRegressor",
    "Explanation",
    "GroupGenerator",
    "GroupSelector",
    "Groups",
    "InputScale",
    "LabelScaler",
    "SOPExplanation",
    "SumOfParts",
    "TrainedSOP",
    "check_provenance",
    "load_backbone",
    "load_sidecar",
    "load_sop",
    "load_weights",
    "patch_token_map",
    "save_weights",
    "xdnn",
]
