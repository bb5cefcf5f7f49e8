"""Insertion and deletion curves of a regression model's attribution, pixel by pixel or by groups.

An attribution ranks the pixels of a kappa patch (all tomographic bins of a pixel move together)
or, for Sum-of-Parts, its feature groups; the curves ask whether the model's prediction really
follows that ranking. Every curve perturbs the input towards or away from a *substrate* (what
"no information" means: 0, the mean of a convergence map, by default;
:mod:`~cosmo_sop.faithfulness.substrates`) and feeds the perturbed maps to the model, many per
call (:mod:`~cosmo_sop.faithfulness.engine`, which also says how curves are normalised). For one
output o (0 = Omega_m, 1 = sigma_8, standardised):

- **Insertion** (``Ins``): start from the substrate and insert the top-k pixels of x in
  decreasing importance, k = round(fraction * H * W). The error e(k) = |f_o(x_k) - f_o(x)| (or
  its square) to the full-input prediction falls from e(0) = |f_o(substrate) - f_o(x)| to
  e(all) = 0. A faithful ranking brings the prediction back with few pixels: **lower AUC is
  better**.
- **Deletion** (``Del``): start from x and replace the top-k pixels with the substrate. The
  error rises from 0 to e(0) above. A faithful ranking destroys the prediction with few pixels:
  **higher AUC is better**.
- **Grouped insertion / deletion** (``InsG`` / ``DelG``): the same with whole groups (possibly
  overlapping masks) changed one at a time, in the order of the method's group scores (SOP's
  own scores c_io, or a pixel method's mean importance inside each group). A running union
  changes each pixel once; invalid or empty groups are skipped (they go last and change
  nothing). A map's AUC is the area over the fraction of its pixels changed so far (from 0 to
  the share its groups cover), not over the step index. SOP's groups overlap heavily (a tiny
  trained SOP with m = 20 groups of 20 %: a covered pixel in 7 groups, all 20 covering 58 % of
  the map), and over step / m a group that repeats pixels already changed still took 1 / m of
  the axis: ranking well-supported, overlapping groups first lost to random orders that spread
  over the map, and the plateau once the union stops growing, the same for every order, made
  up most of the area. Over the pixels changed a repeated group adds no area, and pixels
  outside every group (never changed) add none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.faithfulness.engine import (
    ErrorKind,
    Normalise,
    Reference,
    Scoring,
    rank_plan,
    run_builders,
    union_plan,
)
from cosmo_sop.faithfulness.inputs import (
    Predict,
    checked_fractions,
    checked_group_vector,
    checked_importance,
    checked_inputs,
    checked_labels,
    checked_masks,
    output_index,
    pixel_counts,
)
from cosmo_sop.faithfulness.ranks import pixel_ranks
from cosmo_sop.faithfulness.results import CurvePair
from cosmo_sop.faithfulness.substrates import SubstrateKind

#: Fractions of pixels inserted or deleted: 0, 0.05, ..., 1.
DEFAULT_FRACTIONS = np.linspace(0.0, 1.0, 21)


class PixelCurves:
    """Builder of the pixel insertion and deletion curves of one output."""

    def __init__(
        self,
        importance: Tensor,
        output: int,
        fractions: np.ndarray,
        n_pixels: int,
        tie_seed: int | None = None,
    ) -> None:
        self.output = output
        self.fractions = fractions
        self.counts = pixel_counts(fractions, n_pixels)
        ranks = pixel_ranks(importance, tie_seed)
        self.plans = [rank_plan(ranks, self.counts, True), rank_plan(ranks, self.counts, False)]
        self.pixel_fraction = np.tile(self.counts / n_pixels, (importance.shape[0], 1))

    def finish(self, scoring: Scoring, predictions: list[np.ndarray]) -> CurvePair:
        inserted, deleted = predictions
        return CurvePair(
            scoring.curve("insertion", self.output, self.fractions, inserted, self.pixel_fraction),
            scoring.curve("deletion", self.output, self.fractions, deleted, self.pixel_fraction),
        )


class GroupCurves:
    """Builder of the grouped insertion and deletion curves of one output."""

    def __init__(self, masks: Tensor, scores: Tensor, valid: Tensor | None, output: int) -> None:
        usable = masks.flatten(2).any(-1)
        if valid is not None:
            usable = usable & valid
        if not torch.isfinite(scores[usable]).all():
            raise ValueError(
                "group scores contain NaN or infinite values for a valid, non-empty group"
            )
        # Invalid and empty groups go last and are masked out, so they change no pixel.
        key = scores.masked_fill(~usable, -float("inf"))
        order = torch.argsort(key, dim=1, descending=True, stable=True)
        n_maps, n_groups = masks.shape[:2]
        index = order[:, :, None, None].expand(-1, -1, *masks.shape[2:])
        ordered = masks.gather(1, index) & usable.gather(1, order)[:, :, None, None]
        union = masks.new_zeros((n_maps, n_groups + 1, *masks.shape[2:]))
        for step in range(n_groups):  # running union: a pixel in several groups changes once
            union[:, step + 1] = union[:, step] | ordered[:, step]
        self.union = union
        self.output = output
        self.pixel_fraction = union.flatten(2).to(torch.float64).mean(-1).cpu().numpy()
        # Each map's AUC runs over its own pixel fractions; the map mean places the mean curve.
        self.position = self.pixel_fraction.mean(0)
        self.plans = [union_plan(union, True), union_plan(union, False)]

    def finish(self, scoring: Scoring, predictions: list[np.ndarray]) -> CurvePair:
        inserted, deleted = predictions
        args = (self.output, self.position)
        fraction = self.pixel_fraction
        return CurvePair(
            scoring.curve("grouped insertion", *args, inserted, fraction, area_over=fraction),
            scoring.curve("grouped deletion", *args, deleted, fraction, area_over=fraction),
        )


def insertion_deletion(
    predict: Predict,
    x: Tensor | np.ndarray,
    importance: Tensor | np.ndarray,
    output: int,
    *,
    fractions: Sequence[float] | np.ndarray = DEFAULT_FRACTIONS,
    substrate: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    labels: Tensor | np.ndarray | None = None,
    reference: Reference = "prediction",
    error: ErrorKind = "absolute",
    normalise: Normalise = "pooled",
    max_batch: int = 256,
    progress: bool = True,
    tie_seed: int | None = None,
) -> CurvePair:
    """Pixel insertion and deletion curves of one output.

    Insertion: lower AUC is better; deletion: higher AUC is better (see the module docstring).

    Parameters
    ----------
    predict
        Model in eval mode, (R, C, H, W) -> (R, n_outputs) standardised.
    x
        Inputs (N, C, H, W).
    importance
        (N, H, W) pixel importance for ``output`` (reduce per-bin attributions first); larger is
        more important; ties as in :func:`~cosmo_sop.faithfulness.ranks.pixel_ranks` with
        ``tie_seed``.
    output
        Output column scored (0 = Omega_m, 1 = sigma_8).
    fractions
        Increasing fractions of pixels changed, in [0, 1]; k = round(fraction H W) pixels.
    substrate, blur_sigma
        Value of removed pixels; see :func:`~cosmo_sop.faithfulness.substrates.make_substrate`.
    labels
        (N, n_outputs) standardised labels; needed only for ``reference="label"``.
    reference
        Error measured to the full-input prediction ("prediction") or to the label ("label").
    error
        "absolute" or "squared" difference.
    normalise
        "pooled", "map" or "none"; see the module docstring.
    max_batch
        Most perturbed maps per model call.
    progress
        Show a tqdm bar over model calls.
    tie_seed
        Seed of the random order that breaks ties of ``importance``; None: row-major order.

    Returns
    -------
    CurvePair
        ``(insertion, deletion)`` :class:`Curve` objects.
    """
    x = checked_inputs(x)
    output = output_index(output)
    n_pixels = x.shape[2] * x.shape[3]
    builder = PixelCurves(
        checked_importance(importance, x), output, checked_fractions(fractions), n_pixels, tie_seed
    )
    (pair,) = run_builders(
        predict,
        x,
        [builder],
        substrate=substrate,
        blur_sigma=blur_sigma,
        labels=checked_labels(labels, x.shape[0]),
        reference=reference,
        error=error,
        normalise=normalise,
        max_batch=max_batch,
        progress=progress,
    )
    return pair


def grouped_insertion_deletion(
    predict: Predict,
    x: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    group_scores: Tensor | np.ndarray,
    output: int,
    *,
    valid: Tensor | np.ndarray | None = None,
    substrate: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    labels: Tensor | np.ndarray | None = None,
    reference: Reference = "prediction",
    error: ErrorKind = "absolute",
    normalise: Normalise = "pooled",
    max_batch: int = 256,
    progress: bool = True,
) -> CurvePair:
    """Grouped insertion and deletion curves of one output, one group per step.

    Groups are changed in decreasing ``group_scores`` (ties: lower group index first). Step s
    changes the union of the first s groups, so overlapping pixels change once. Invalid
    (``valid`` False) and empty groups change nothing and come last, so a map's curve is flat
    after its last usable group. ``Curve.pixel_fraction`` (N, m + 1) gives every map's fraction
    of pixels changed at every step, the axis of its AUC (see the module docstring);
    ``Curve.position`` is its map mean. Pixels outside every group never change, so the last
    step need not reach x (insertion) or the substrate (deletion).

    Parameters
    ----------
    masks
        bool (N, m, H, W) groups, e.g. ``Explanation.masks``.
    group_scores
        (N, m) order of the groups for ``output``: SOP's ``Explanation.scores[..., o]``, or
        :func:`~cosmo_sop.faithfulness.ranks.group_scores_from_importance` for a pixel attribution.
    valid
        bool (N, m), e.g. ``Explanation.valid``; None: all groups valid.

    Other Parameters
    ----------------
    predict, x, output, substrate, blur_sigma, labels, reference, error, normalise
        As in :func:`insertion_deletion`.
    max_batch, progress
        As in :func:`insertion_deletion`.

    Returns
    -------
    CurvePair
        ``(insertion, deletion)`` with S = m + 1 positions.
    """
    x = checked_inputs(x)
    output = output_index(output)
    masks = checked_masks(masks, x)
    scores = checked_group_vector("group_scores", group_scores, masks, torch.float64)
    builder = GroupCurves(
        masks, scores, checked_group_vector("valid", valid, masks, torch.bool), output
    )
    (pair,) = run_builders(
        predict,
        x,
        [builder],
        substrate=substrate,
        blur_sigma=blur_sigma,
        labels=checked_labels(labels, x.shape[0]),
        reference=reference,
        error=error,
        normalise=normalise,
        max_batch=max_batch,
        progress=progress,
    )
    return pair
