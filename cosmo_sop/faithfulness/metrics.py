"""The kept-features MSE, the sparsity of group attributions, and all metrics in one stream.

- **Kept features** (``MSE top-20%``): the model fed only the top 20% of pixels (substrate
  elsewhere); mean squared error of output o to the label. Lower is better.
- **Sparsity**: for group attributions, the fraction of the map covered by the groups with a
  non-zero score, and how many such groups there are.

:func:`faithfulness_metrics` computes these with the insertion and deletion curves of
:mod:`~cosmo_sop.faithfulness.curves`, for several outputs, in one stream of model calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.config import defaults
from cosmo_sop.faithfulness.curves import DEFAULT_FRACTIONS, GroupCurves, PixelCurves
from cosmo_sop.faithfulness.engine import (
    Builder,
    ErrorKind,
    Normalise,
    Reference,
    Scoring,
    rank_plan,
    run_builders,
)
from cosmo_sop.faithfulness.inputs import (
    Predict,
    checked_fractions,
    checked_group_vector,
    checked_importance,
    checked_inputs,
    checked_labels,
    checked_masks,
    checked_tensor,
    output_index,
    pixel_counts,
)
from cosmo_sop.faithfulness.ranks import GroupReduce, group_scores_from_importance, pixel_ranks
from cosmo_sop.faithfulness.results import (
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    SPARSITY,
    Curve,
    KeptFeatures,
    Sparsity,
    kept_mse_name,
)
from cosmo_sop.faithfulness.substrates import SubstrateKind

#: Default output names, in the models' output order.
OUTPUT_NAMES = ("Om", "s8")
Metrics = dict[str, dict[str, Curve | KeptFeatures | Sparsity]]


class KeptBuilder:
    """Builder of the kept-features MSE of one output."""

    def __init__(
        self,
        importance: Tensor,
        output: int,
        keep_fraction: float,
        n_pixels: int,
        tie_seed: int | None = None,
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction!r}")
        self.output = output
        self.keep_fraction = float(keep_fraction)
        self.n_kept = int(pixel_counts(keep_fraction, n_pixels))
        ranks = pixel_ranks(importance, tie_seed)
        self.plans = [rank_plan(ranks, np.array([self.n_kept]), True)]

    def finish(self, scoring: Scoring, predictions: list[np.ndarray]) -> KeptFeatures:
        if scoring.labels is None:
            raise ValueError("the kept-features MSE needs labels (N, n_outputs)")
        prediction = predictions[0][:, 0, self.output]
        squared = (prediction - scoring.labels[:, self.output]) ** 2
        return KeptFeatures(
            output=self.output,
            keep_fraction=self.keep_fraction,
            n_kept=self.n_kept,
            prediction=prediction,
            squared_error=squared,
            mse=float(squared.mean()),
            substrate=scoring.substrate,
        )


def kept_features_mse(
    predict: Predict,
    x: Tensor | np.ndarray,
    importance: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    output: int,
    *,
    keep_fraction: float | None = None,
    substrate: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    max_batch: int = 256,
    progress: bool = True,
) -> KeptFeatures:
    """MSE of ``output`` against the label when the model sees only its top pixels.

    The top round(keep_fraction H W) pixels by ``importance`` keep their values (all bins), the
    rest take the substrate. Lower is better.

    Parameters
    ----------
    labels
        (N, n_outputs) standardised labels.
    keep_fraction
        Fraction of pixels kept, in (0, 1]; None: the config schema's
        ``evaluation.keep_fraction``.
    predict, x, importance, output, substrate, blur_sigma, max_batch, progress
        As in :func:`~cosmo_sop.faithfulness.curves.insertion_deletion`.
    """
    x = checked_inputs(x)
    output = output_index(output)
    if keep_fraction is None:
        keep_fraction = defaults("evaluation")["keep_fraction"]
    builder = KeptBuilder(
        checked_importance(importance, x), output, keep_fraction, x.shape[2] * x.shape[3]
    )
    (result,) = run_builders(
        predict,
        x,
        [builder],
        substrate=substrate,
        blur_sigma=blur_sigma,
        labels=checked_labels(labels, x.shape[0]),
        reference="prediction",
        error="squared",
        normalise="none",
        max_batch=max_batch,
        progress=progress,
    )
    return result


def sop_sparsity(
    masks: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
) -> Sparsity:
    """Fraction of the map, and number of groups, that a group attribution uses for one output.

    Parameters
    ----------
    masks
        bool (N, m, H, W), e.g. ``Explanation.masks``.
    scores
        (N, m) group scores for one output, e.g. ``Explanation.scores[..., o]``; a group is
        used when its score is > 0 (sparsemax gives exact zeros).
    valid
        bool (N, m) or None (all valid).
    """
    masks = checked_tensor("masks", masks, 4)
    masks = checked_masks(masks, masks[:, :1])  # only its own shape to match; checks the dtype
    scores = checked_group_vector("scores", scores, masks, torch.float64)
    used = (scores > 0) & masks.flatten(2).any(-1)
    if valid is not None:
        used &= checked_group_vector("valid", valid, masks, torch.bool)
    covered = (masks & used[:, :, None, None]).any(1)
    pixel_fraction = covered.flatten(1).to(torch.float64).mean(1).cpu().numpy()
    n_groups = used.sum(1).cpu().numpy()
    return Sparsity(pixel_fraction, n_groups, float(pixel_fraction.mean()), float(n_groups.mean()))


def faithfulness_metrics(
    predict: Predict,
    x: Tensor | np.ndarray,
    importance: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    outputs: Sequence[int] = (0, 1),
    output_names: Sequence[str] = OUTPUT_NAMES,
    masks: Tensor | np.ndarray | None = None,
    group_scores: Tensor | np.ndarray | None = None,
    valid: Tensor | np.ndarray | None = None,
    group_reduce: GroupReduce = "mean",
    keep_fraction: float | None = None,
    fractions: Sequence[float] | np.ndarray = DEFAULT_FRACTIONS,
    substrate: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    reference: Reference = "prediction",
    error: ErrorKind = "absolute",
    normalise: Normalise = "pooled",
    max_batch: int = 256,
    progress: bool = True,
    tie_seed: int | None = None,
) -> Metrics:
    """All faithfulness metrics of one attribution method, for several outputs, in one stream.

    Parameters
    ----------
    importance
        (N, n_outputs, H, W) pixel importance per output (index ``outputs`` into axis 1).
    labels
        (N, n_outputs) standardised labels.
    outputs, output_names
        Output columns to score and their names (keys of the result), e.g. (0, 1), ("Om", "s8").
    masks
        bool (N, m, H, W) groups for the grouped curves (the SOP groups, for every method);
        None skips grouped curves.
    group_scores
        (N, m, n_outputs) the method's own group scores (SOP's ``Explanation.scores``): they
        order the groups and give the sparsity. None: groups are ordered by
        :func:`~cosmo_sop.faithfulness.ranks.group_scores_from_importance` with ``group_reduce``, and no sparsity.
    valid
        bool (N, m) group validity (``Explanation.valid``).

    Other Parameters
    ----------------
    group_reduce
        As ``reduce`` in :func:`~cosmo_sop.faithfulness.ranks.group_scores_from_importance`.
    keep_fraction
        As in :func:`kept_features_mse` (None: the config schema's ``evaluation.keep_fraction``).
    fractions, substrate, blur_sigma, reference, error, normalise, max_batch, progress, tie_seed
        As in :func:`~cosmo_sop.faithfulness.curves.insertion_deletion`.

    Returns
    -------
    dict
        ``{output_name: {"Ins": Curve, "Del": Curve, "InsG": Curve, "DelG": Curve,
        kept_mse_name(keep_fraction): KeptFeatures, "sparsity": Sparsity}}`` (grouped entries
        only with ``masks``, sparsity only with ``group_scores``); ready for
        :func:`~cosmo_sop.faithfulness.table.faithfulness_table` and :func:`cosmo_sop.figures.faithfulness.plot_curves`.
    """
    x = checked_inputs(x)
    outputs = _checked_outputs(outputs, output_names)
    importance = _checked_importance_per_output(importance, x, outputs)
    fractions = checked_fractions(fractions)
    masks, valid, group_scores = _checked_groups(masks, valid, group_scores, x, outputs)
    if keep_fraction is None:
        keep_fraction = defaults("evaluation")["keep_fraction"]
    builders, keys = _builders(
        x,
        importance,
        outputs,
        output_names,
        fractions,
        keep_fraction,
        masks,
        valid,
        group_scores,
        group_reduce,
        tie_seed,
    )
    results = run_builders(
        predict,
        x,
        builders,
        substrate=substrate,
        blur_sigma=blur_sigma,
        labels=checked_labels(labels, x.shape[0]),
        reference=reference,
        error=error,
        normalise=normalise,
        max_batch=max_batch,
        progress=progress,
    )
    metrics: Metrics = {n: {} for n in output_names}
    for (name, metric_names), result in zip(keys, results, strict=True):
        values = result if isinstance(result, tuple) else (result,)
        metrics[name].update(zip(metric_names, values, strict=True))
    if group_scores is not None:
        for output, name in zip(outputs, output_names, strict=True):
            metrics[name][SPARSITY] = sop_sparsity(masks, group_scores[:, :, output], valid)
    return metrics


def _checked_outputs(outputs: Sequence[int], output_names: Sequence[str]) -> list[int]:
    outputs = [output_index(o) for o in outputs]
    if not outputs:
        raise ValueError("outputs must name at least one output column")
    if len(output_names) != len(outputs):
        raise ValueError(f"output_names {list(output_names)} must name every output {outputs}")
    return outputs


def _checked_importance_per_output(
    importance: Tensor | np.ndarray, x: Tensor, outputs: list[int]
) -> Tensor:
    """Importance (N, n_outputs, H, W) on x's device, checked against x and the outputs."""
    importance = checked_tensor("importance", importance, 4, x.device)
    same_maps = importance.shape[0] == x.shape[0] and importance.shape[2:] == x.shape[2:]
    if not (same_maps and importance.shape[1] > max(outputs)):
        raise ValueError(
            f"importance has shape {tuple(importance.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"and outputs {outputs} need (N, n_outputs > {max(outputs)}, H, W)"
        )
    return importance


def _checked_groups(
    masks: Tensor | np.ndarray | None,
    valid: Tensor | np.ndarray | None,
    group_scores: Tensor | np.ndarray | None,
    x: Tensor,
    outputs: list[int],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Masks (N, m, H, W) bool, validity (N, m) bool and float64 scores (N, m, n_outputs)."""
    if masks is not None:
        masks = checked_masks(masks, x)
        valid = checked_group_vector("valid", valid, masks, torch.bool)
    if group_scores is not None:
        if masks is None:
            raise ValueError("group_scores were given without the group masks")
        group_scores = checked_tensor("group_scores", group_scores, 3, x.device)
        if group_scores.shape[:2] != masks.shape[:2] or group_scores.shape[2] <= max(outputs):
            raise ValueError(
                f"group_scores has shape {tuple(group_scores.shape)} but masks "
                f"{tuple(masks.shape)} and outputs {outputs} need (N, m, n_outputs > "
                f"{max(outputs)})"
            )
        group_scores = group_scores.to(torch.float64)
    return masks, valid, group_scores


def _builders(
    x: Tensor,
    importance: Tensor,
    outputs: list[int],
    output_names: Sequence[str],
    fractions: np.ndarray,
    keep_fraction: float,
    masks: Tensor | None,
    valid: Tensor | None,
    group_scores: Tensor | None,
    group_reduce: GroupReduce,
    tie_seed: int | None,
) -> tuple[list[Builder], list[tuple[str, tuple[str, ...]]]]:
    """The builders of every output, with (output name, names of their results), in order."""
    n_pixels = x.shape[2] * x.shape[3]
    builders: list[Any] = []
    keys = []
    for output, name in zip(outputs, output_names, strict=True):
        pixel_importance = checked_importance(importance[:, output], x, f"importance[:, {output}]")
        builders.append(PixelCurves(pixel_importance, output, fractions, n_pixels, tie_seed))
        keys.append((name, (INSERTION, DELETION)))
        builders.append(KeptBuilder(pixel_importance, output, keep_fraction, n_pixels, tie_seed))
        keys.append((name, (kept_mse_name(keep_fraction),)))
        if masks is not None:
            if group_scores is None:
                order = group_scores_from_importance(pixel_importance, masks, group_reduce)
            else:
                order = group_scores[:, :, output]
            builders.append(GroupCurves(masks, order, valid, output))
            keys.append((name, (GROUPED_INSERTION, GROUPED_DELETION)))
    return builders, keys
