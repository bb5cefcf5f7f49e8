"""What the faithfulness metrics return, and their names in the faithfulness table.

:class:`Curve` (an insertion or deletion curve; two of them form a :class:`CurvePair`),
:class:`KeptFeatures` (the model fed only its top pixels) and :class:`Sparsity` (how much of a
map a group attribution uses) are the records that :func:`~cosmo_sop.faithfulness.metrics.faithfulness_metrics`
returns and :func:`~cosmo_sop.faithfulness.table.faithfulness_table` reads; the names below are
the rows of that table, each with the direction that is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# Metric names of the table, in table order, with the direction that is better.
INSERTION, DELETION = "Ins", "Del"
GROUPED_INSERTION, GROUPED_DELETION = "InsG", "DelG"
SPARSITY, N_GROUPS = "sparsity", "groups"
BETTER = {
    INSERTION: "lower",
    GROUPED_INSERTION: "lower",
    DELETION: "higher",
    GROUPED_DELETION: "higher",
    SPARSITY: "lower",
    N_GROUPS: "lower",
}


def kept_mse_name(keep_fraction: float) -> str:
    """Table name of the kept-features MSE, e.g. ``"MSE top-20%"`` for 0.2."""
    return f"MSE top-{100 * keep_fraction:g}%"


@dataclass(frozen=True)
class Curve:
    """An insertion or deletion curve of one output over N maps and S positions.

    Attributes
    ----------
    kind : str
        "insertion", "deletion", "grouped insertion" or "grouped deletion".
    output : int
        Output column scored.
    position : ndarray
        (S,), in [0, 1]: the fraction of pixels changed (pixel curves), or its map mean after
        each group step (grouped curves, whose maps' AUCs are taken over their own
        ``pixel_fraction``).
    curve : ndarray
        (S,), the normalised error averaged over maps (NaN-maps left out).
    per_map : ndarray
        (N, S), normalised error of every map; its NaN-aware map mean is ``curve``.
    auc : float
        Mean of ``map_auc`` over the maps kept: for pixel curves the trapezoid area under
        ``curve`` over ``position``.
    map_auc : ndarray
        (N,), trapezoid area under every map's curve over ``position`` (pixel curves) or over
        the map's ``pixel_fraction`` (grouped curves); NaN for left-out maps.
    error : ndarray
        (N, S), unnormalised error |f_o(x_k) - reference| (or squared), standardised units.
    scale : ndarray
        (N,), the error of the all-substrate input, e(0), used to normalise.
    prediction : ndarray
        (N, S), f_o of the perturbed inputs, standardised units.
    pixel_fraction : ndarray
        (N, S), fraction of the map's pixels changed at every position.
    better : str
        "lower" (insertion) or "higher" (deletion): which AUC means a more faithful ranking.
    substrate, error_kind, reference, normalise : str
        The settings used.
    """

    kind: str
    output: int
    position: np.ndarray
    curve: np.ndarray
    per_map: np.ndarray
    auc: float
    map_auc: np.ndarray
    error: np.ndarray
    scale: np.ndarray
    prediction: np.ndarray
    pixel_fraction: np.ndarray
    better: str
    substrate: str
    error_kind: str
    reference: str
    normalise: str


class CurvePair(NamedTuple):
    """Insertion and deletion curves computed together."""

    insertion: Curve
    deletion: Curve


@dataclass(frozen=True)
class KeptFeatures:
    """Model fed only its top pixels: MSE of one output against the label.

    Attributes
    ----------
    output : int
    keep_fraction : float
        Fraction of pixels requested; ``n_kept`` pixels per map were kept.
    n_kept : int
    prediction : ndarray
        (N,), standardised prediction on the kept pixels (substrate elsewhere).
    squared_error : ndarray
        (N,), (prediction - label)^2, standardised units.
    mse : float
        Mean of ``squared_error``; lower is better.
    substrate : str
    """

    output: int
    keep_fraction: float
    n_kept: int
    prediction: np.ndarray
    squared_error: np.ndarray
    mse: float
    substrate: str


@dataclass(frozen=True)
class Sparsity:
    """How much of a map a group attribution uses for one output.

    Attributes
    ----------
    pixel_fraction : ndarray
        (N,), fraction of pixels in the union of the groups with a score > 0.
    n_groups : ndarray
        int, (N,), number of valid, non-empty groups with a score > 0.
    mean_pixel_fraction, mean_n_groups : float
        Map means of the above.
    """

    pixel_fraction: np.ndarray
    n_groups: np.ndarray
    mean_pixel_fraction: float
    mean_n_groups: float
