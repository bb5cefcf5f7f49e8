"""Faithfulness of attributions of a regression model: insertion, deletion, kept features.

An attribution ranks the pixels of a kappa patch (all tomographic bins of a pixel move together)
or, for Sum-of-Parts, its feature groups. Faithfulness asks whether the model's prediction
really follows that ranking. Every metric here perturbs the input towards or away from a
*substrate* (what "no information" means: 0, the mean of a convergence map, by default) and
feeds the perturbed maps to the model, many per call.

Metrics, for one output o (0 = Omega_m, 1 = sigma_8, standardised):

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
  nothing). Steps 0..m are placed at positions step / m in [0, 1].
- **Kept features** (``MSE top-20%``): the model fed only the top 20% of pixels (substrate
  elsewhere); mean squared error of output o to the label. Lower is better.
- **Sparsity**: for group attributions, the fraction of the map covered by the groups with a
  non-zero score, and how many such groups there are.

Normalisation. Errors are divided by the error of the all-substrate input, e(0), so curves of
different methods and maps share one scale: insertion runs from 1 to 0 and deletion from 0 to 1
(with ``reference="prediction"``). ``normalise="pooled"`` (the default) divides the map-mean
error by the map-mean e(0); ``"map"`` divides every map by its own e(0) and then averages, which
weights maps equally but is unstable for maps whose prediction is close to the substrate's (a
standardised prediction near the training mean: e(0) -> 0, ratios unbounded; maps with
e(0) = 0 are left out). AUCs use the trapezoid rule over the positions.

Cost. Evaluating N maps at F fractions takes N F rows per curve, plus 2 N reference rows
(x and the substrate) shared by all curves of a call; rows of all curves are streamed through
the model in batches of ``max_batch``, so a full :func:`faithfulness_metrics` call costs
ceil(rows / max_batch) model calls. The perturbed maps are built per batch, never all at once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import xarray as xr
from scipy import ndimage
from torch import Tensor, nn
from tqdm.auto import tqdm

from cosmo_sop.storage import atomic_path

#: Model under test: inputs (R, C, H, W) -> standardised outputs (R, n_outputs).
Predict = Callable[[Tensor], Tensor]
SubstrateKind = Literal["zero", "mean", "blur"]
ErrorKind = Literal["absolute", "squared"]
Reference = Literal["prediction", "label"]
Normalise = Literal["pooled", "map", "none"]
GroupReduce = Literal["mean", "sum"]

#: Fractions of pixels inserted or deleted: 0, 0.05, ..., 1.
DEFAULT_FRACTIONS = np.linspace(0.0, 1.0, 21)
#: Default output names, in the models' output order.
OUTPUT_NAMES = ("Om", "s8")

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


# -- results --------------------------------------------------------------------------------------


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
        (S,), in [0, 1]: the fraction of pixels (pixel curves) or of group steps, step / m
        (grouped curves), changed. The AUC is taken over it.
    curve : ndarray
        (S,), the normalised error averaged over maps (NaN-maps left out).
    per_map : ndarray
        (N, S), normalised error of every map; its NaN-aware map mean is ``curve``.
    auc : float
        Trapezoid area under ``curve`` over ``position``.
    map_auc : ndarray
        (N,), area under every map's curve (for error bars); NaN for left-out maps.
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


# -- inputs ---------------------------------------------------------------------------------------


def _tensor(
    name: str, value: Tensor | np.ndarray, ndim: int, device: torch.device | None = None
) -> Tensor:
    try:
        tensor = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        kind = type(value).__name__
        raise ValueError(f"{name} must be an array or tensor, got {kind}") from error
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def _inputs(x: Tensor | np.ndarray) -> Tensor:
    x = _tensor("x", x, 4)
    if not x.dtype.is_floating_point:
        raise ValueError(f"x (N, C, H, W) must be floating point, got dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"x (N, C, H, W) must not be empty, got shape {tuple(x.shape)}")
    return x


def _importance(importance: Tensor | np.ndarray, x: Tensor, name: str = "importance") -> Tensor:
    """Pixel importance (N, H, W) as float64 on x's device, checked against x."""
    importance = _tensor(name, importance, 3, x.device)
    expected = (x.shape[0], *x.shape[2:])
    if tuple(importance.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(importance.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"needs (N, H, W) = {expected}"
        )
    if importance.dtype == torch.bool or importance.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {importance.dtype}")
    importance = importance.to(torch.float64)
    if not torch.isfinite(importance).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return importance


def _masks(masks: Tensor | np.ndarray, x: Tensor, name: str = "masks") -> Tensor:
    """Group masks (N, m, H, W) as bool on x's device, checked against x."""
    masks = _tensor(name, masks, 4, x.device)
    expected = (x.shape[0], masks.shape[1], *x.shape[2:])
    if tuple(masks.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(masks.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"needs (N, m, H, W) = {expected}"
        )
    if masks.dtype != torch.bool:
        binary = not (masks.dtype.is_floating_point or masks.is_complex())
        if not (binary and ((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"{name} must be bool (or integer 0/1), got dtype {masks.dtype}")
        masks = masks.bool()
    return masks


def _group_vector(
    name: str, value: Tensor | np.ndarray | None, masks: Tensor, dtype: torch.dtype
) -> Tensor | None:
    """(N, m) scores or validity matching the masks, or None."""
    if value is None:
        return None
    value = _tensor(name, value, 2, masks.device)
    if tuple(value.shape) != tuple(masks.shape[:2]):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but masks (N, m, H, W) = "
            f"{tuple(masks.shape)} needs (N, m) = {tuple(masks.shape[:2])}"
        )
    if dtype == torch.bool and value.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got dtype {value.dtype}")
    return value.to(dtype)


def _labels(labels: Tensor | np.ndarray | None, n_maps: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(torch.as_tensor(labels).detach().cpu(), dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] != n_maps:
        raise ValueError(
            f"labels must have shape (N, n_outputs) with N = {n_maps} maps, got {labels.shape}"
        )
    return labels


def _fractions(fractions: Sequence[float] | np.ndarray, name: str = "fractions") -> np.ndarray:
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size < 2:
        raise ValueError(f"{name} must be a 1-d sequence of at least 2 values, got {fractions!r}")
    if not (np.isfinite(fractions).all() and fractions.min() >= 0 and fractions.max() <= 1):
        raise ValueError(f"{name} must lie in [0, 1], got {fractions!r}")
    if np.any(np.diff(fractions) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {fractions!r}")
    return fractions


def _n_pixels(fraction: np.ndarray | float, n_pixels: int) -> np.ndarray:
    """Pixel counts round(fraction * n_pixels), halves rounded up (not to even)."""
    return np.floor(np.asarray(fraction) * n_pixels + 0.5).astype(np.int64)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_settings(
    error: str, reference: str, normalise: str, max_batch: int, labels: np.ndarray | None
) -> None:
    _check_choice("error", error, ("absolute", "squared"))
    _check_choice("reference", reference, ("prediction", "label"))
    _check_choice("normalise", normalise, ("pooled", "map", "none"))
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    if reference == "label" and labels is None:
        raise ValueError('reference="label" needs labels (N, n_outputs)')


def _check_predict(predict: Predict) -> None:
    # Dropout or BatchNorm in training mode would make every metric random.
    if isinstance(predict, nn.Module) and predict.training:
        raise ValueError("the model is in training mode; call model.eval() before scoring it")


# -- building blocks ------------------------------------------------------------------------------


def make_substrate(
    x: Tensor | np.ndarray, kind: SubstrateKind | Tensor = "zero", blur_sigma: float = 3.0
) -> Tensor:
    """The "no information" maps that perturbed pixels take, shape (N, C, H, W).

    Parameters
    ----------
    x
        Inputs (N, C, H, W).
    kind
        "zero": 0 everywhere (the mean of a convergence map, and what SOP puts outside a group);
        "mean": every map's own mean per bin; "blur": x smoothed by a Gaussian of
        ``blur_sigma`` pixels per bin (reflecting edges), which keeps the large scales.
        A tensor of x's shape is used as given.
    blur_sigma
        Gaussian standard deviation for "blur", in pixels.
    """
    x = _inputs(x)
    if isinstance(kind, (Tensor, np.ndarray)):
        substrate = torch.as_tensor(kind, device=x.device, dtype=x.dtype)
        if substrate.shape != x.shape:
            raise ValueError(
                f"substrate has shape {tuple(substrate.shape)}, x {tuple(x.shape)}; they must match"
            )
        return substrate
    _check_choice("substrate", kind, ("zero", "mean", "blur"))
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be > 0 pixels, got {blur_sigma!r}")
    blurred = ndimage.gaussian_filter(
        x.detach().cpu().numpy(), sigma=(0, 0, blur_sigma, blur_sigma), mode="reflect"
    )
    return torch.from_numpy(blurred).to(device=x.device, dtype=x.dtype)


def pixel_ranks(importance: Tensor | np.ndarray) -> Tensor:
    """Rank of every pixel by decreasing importance, 0 = most important; shape (N, H, W) int64.

    Ties go to the pixel that comes first in row-major order, so ranks are deterministic.
    """
    importance = torch.as_tensor(importance)
    if importance.ndim != 3:
        raise ValueError(f"importance must have shape (N, H, W), got {tuple(importance.shape)}")
    flat = importance.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions).view(importance.shape)


def group_scores_from_importance(
    importance: Tensor | np.ndarray, masks: Tensor | np.ndarray, reduce: GroupReduce = "mean"
) -> Tensor:
    """Score of every group under a pixel attribution: its mean (or summed) importance.

    Used to order the groups of a method that does not score groups itself.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance.
    masks
        bool (N, m, H, W) group masks.
    reduce
        "mean" (favours small, concentrated groups) or "sum" (favours large groups).

    Returns
    -------
    Tensor
        float64 (N, m); NaN for empty groups.
    """
    _check_choice("reduce", reduce, ("mean", "sum"))
    importance = torch.as_tensor(importance)
    masks = torch.as_tensor(masks, device=importance.device)
    matching = masks.ndim == 4 and (masks.shape[0], *masks.shape[2:]) == importance.shape
    if importance.ndim != 3 or not matching:
        raise ValueError(
            f"masks {tuple(masks.shape)} and importance {tuple(importance.shape)} must be "
            "(N, m, H, W) and (N, H, W)"
        )
    weights = masks.to(torch.float64)
    total = torch.einsum("bmhw,bhw->bm", weights, importance.to(torch.float64))
    if reduce == "sum":
        return total.masked_fill(~masks.flatten(2).any(-1), float("nan"))
    return total / weights.sum((2, 3))  # 0 / 0 = NaN for empty groups


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


# -- batched evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """N x S perturbed inputs: row (n, s) shows x where ``changed(n, s)`` is True (insertion)
    or the substrate there (deletion), and the other one elsewhere."""

    changed: Callable[[Tensor, Tensor], Tensor]  # (map index (R,), step (R,)) -> bool (R, H, W)
    n_steps: int
    insert: bool


def _reference_plan(height: int, width: int) -> _Plan:
    """Step 0: the substrate; step 1: x itself."""
    return _Plan(lambda maps, steps: (steps == 1)[:, None, None].expand(-1, height, width), 2, True)


def _rank_plan(ranks: Tensor, counts: np.ndarray, insert: bool) -> _Plan:
    """Step s changes the counts[s] top-ranked pixels of every map."""
    counts = torch.as_tensor(counts, device=ranks.device)
    return _Plan(lambda maps, steps: ranks[maps] < counts[steps, None, None], len(counts), insert)


def _union_plan(union: Tensor, insert: bool) -> _Plan:
    """Step s changes the pixels in union[:, s] (N, S, H, W)."""
    return _Plan(lambda maps, steps: union[maps, steps], union.shape[1], insert)


def _evaluate(
    predict: Predict,
    x: Tensor,
    substrate: Tensor,
    plans: Sequence[_Plan],
    max_batch: int,
    progress: bool,
    max_output: int,
) -> list[np.ndarray]:
    """Predictions on every row of every plan, as float64 arrays (N, S, n_outputs) per plan.

    The rows of all plans form one stream cut into batches of at most ``max_batch``, so a batch
    may mix plans; the perturbed maps of a batch are built in one vectorised step.
    """
    _check_predict(predict)
    n_maps = x.shape[0]
    sizes = [n_maps * plan.n_steps for plan in plans]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    results: list[np.ndarray | None] = [None] * len(plans)
    starts = range(0, total, max_batch)
    bar = tqdm(starts, desc="faithfulness", unit="batch", disable=not progress, leave=False)
    with torch.inference_mode():
        for start in bar:
            stop = min(start + max_batch, total)
            parts, spans = [], []
            for index, plan in enumerate(plans):
                low, high = max(start, offsets[index]), min(stop, offsets[index + 1])
                if low >= high:
                    continue
                rows = torch.arange(low - offsets[index], high - offsets[index], device=x.device)
                maps, steps = rows // plan.n_steps, rows % plan.n_steps
                changed = plan.changed(maps, steps)[:, None]  # (R, 1, H, W), all bins together
                shown, hidden = (x, substrate) if plan.insert else (substrate, x)
                parts.append(torch.where(changed, shown[maps], hidden[maps]))
                spans.append((index, low - offsets[index], high - offsets[index]))
            batch = parts[0] if len(parts) == 1 else torch.cat(parts)
            predicted = torch.as_tensor(predict(batch))
            expected_rows = predicted.ndim == 2 and predicted.shape[0] == batch.shape[0]
            if not (expected_rows and predicted.shape[1] > max_output):
                raise ValueError(
                    f"predict returned shape {tuple(predicted.shape)} for {batch.shape[0]} inputs; "
                    f"expected (inputs, n_outputs) with n_outputs > {max_output}, the output scored"
                )
            predicted = predicted.detach().to("cpu", torch.float64).numpy()
            row = 0
            for index, low, high in spans:
                if results[index] is None:
                    results[index] = np.empty((sizes[index], predicted.shape[1]))
                results[index][low:high] = predicted[row : row + high - low]
                row += high - low
    return [r.reshape(n_maps, plan.n_steps, -1) for r, plan in zip(results, plans)]


def _error(difference: np.ndarray, kind: ErrorKind) -> np.ndarray:
    return np.abs(difference) if kind == "absolute" else difference**2


@dataclass(frozen=True)
class _Scoring:
    """Settings and reference predictions shared by all curves of one evaluation."""

    reference_predictions: np.ndarray  # (N, 2, n_outputs): substrate, x
    labels: np.ndarray | None
    substrate: str
    error: ErrorKind
    reference: Reference
    normalise: Normalise

    def target(self, output: int) -> np.ndarray:
        """(N,) value the error is measured to."""
        if self.reference == "label":
            return self.labels[:, output]
        return self.reference_predictions[:, 1, output]

    def curve(
        self,
        kind: str,
        output: int,
        position: np.ndarray,
        predictions: np.ndarray,
        pixel_fraction: np.ndarray,
    ) -> Curve:
        """Score (N, S, n_outputs) predictions of perturbed inputs as a :class:`Curve`."""
        prediction = predictions[..., output]
        target = self.target(output)
        error = _error(prediction - target[:, None], self.error)
        scale = _error(self.reference_predictions[:, 0, output] - target, self.error)
        if self.normalise == "none":
            per_map = error.copy()
        elif self.normalise == "map":
            # Maps whose substrate prediction equals the reference cannot be normalised.
            with np.errstate(divide="ignore", invalid="ignore"):
                per_map = np.where(scale[:, None] > 0, error / scale[:, None], np.nan)
        else:
            pooled = scale.mean()
            per_map = error / pooled if pooled > 0 else np.full_like(error, np.nan)
        kept = ~np.isnan(per_map).any(axis=1)
        mean = per_map[kept].mean(axis=0) if kept.any() else np.full(position.shape, np.nan)
        return Curve(
            kind=kind,
            output=output,
            position=position,
            curve=mean,
            per_map=per_map,
            auc=float(np.trapezoid(mean, position)),
            map_auc=np.trapezoid(per_map, position, axis=1),
            error=error,
            scale=scale,
            prediction=prediction,
            pixel_fraction=pixel_fraction,
            better="lower" if "insertion" in kind else "higher",
            substrate=self.substrate,
            error_kind=self.error,
            reference=self.reference,
            normalise=self.normalise,
        )


def _substrate_name(substrate: SubstrateKind | Tensor) -> str:
    return "custom" if isinstance(substrate, (Tensor, np.ndarray)) else str(substrate)


# -- metric builders: plans before the model runs, results after ----------------------------------


class _PixelCurves:
    def __init__(
        self, importance: Tensor, output: int, fractions: np.ndarray, n_pixels: int
    ) -> None:
        self.output = output
        self.fractions = fractions
        self.counts = _n_pixels(fractions, n_pixels)
        ranks = pixel_ranks(importance)
        self.plans = [_rank_plan(ranks, self.counts, True), _rank_plan(ranks, self.counts, False)]
        self.pixel_fraction = np.tile(self.counts / n_pixels, (importance.shape[0], 1))

    def finish(self, scoring: _Scoring, predictions: list[np.ndarray]) -> CurvePair:
        inserted, deleted = predictions
        return CurvePair(
            scoring.curve("insertion", self.output, self.fractions, inserted, self.pixel_fraction),
            scoring.curve("deletion", self.output, self.fractions, deleted, self.pixel_fraction),
        )


class _GroupCurves:
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
        self.position = np.arange(n_groups + 1) / max(n_groups, 1)
        self.pixel_fraction = union.flatten(2).to(torch.float64).mean(-1).cpu().numpy()
        self.plans = [_union_plan(union, True), _union_plan(union, False)]

    def finish(self, scoring: _Scoring, predictions: list[np.ndarray]) -> CurvePair:
        inserted, deleted = predictions
        args = (self.output, self.position)
        return CurvePair(
            scoring.curve("grouped insertion", *args, inserted, self.pixel_fraction),
            scoring.curve("grouped deletion", *args, deleted, self.pixel_fraction),
        )


class _Kept:
    def __init__(
        self, importance: Tensor, output: int, keep_fraction: float, n_pixels: int
    ) -> None:
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction!r}")
        self.output = output
        self.keep_fraction = float(keep_fraction)
        self.n_kept = int(_n_pixels(keep_fraction, n_pixels))
        self.plans = [_rank_plan(pixel_ranks(importance), np.array([self.n_kept]), True)]

    def finish(self, scoring: _Scoring, predictions: list[np.ndarray]) -> KeptFeatures:
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


def _run(
    predict: Predict,
    x: Tensor,
    builders: Sequence[_PixelCurves | _GroupCurves | _Kept],
    *,
    substrate: SubstrateKind | Tensor,
    blur_sigma: float,
    labels: np.ndarray | None,
    reference: Reference,
    error: ErrorKind,
    normalise: Normalise,
    max_batch: int,
    progress: bool,
) -> list:
    """Evaluate every builder's plans in one stream, then let each builder score its rows."""
    _check_settings(error, reference, normalise, max_batch, labels)
    substrate_maps = make_substrate(x, substrate, blur_sigma)
    plans = [_reference_plan(*x.shape[2:])] + [plan for b in builders for plan in b.plans]
    max_output = max(b.output for b in builders)
    if labels is not None and labels.shape[1] <= max_output:
        raise ValueError(f"labels have {labels.shape[1]} outputs; output {max_output} is scored")
    predictions = _evaluate(predict, x, substrate_maps, plans, max_batch, progress, max_output)
    name = _substrate_name(substrate)
    scoring = _Scoring(predictions[0], labels, name, error, reference, normalise)
    results, start = [], 1
    for builder in builders:
        stop = start + len(builder.plans)
        results.append(builder.finish(scoring, predictions[start:stop]))
        start = stop
    return results


def _output_index(output: int) -> int:
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)) or output < 0:
        raise ValueError(f"output must be a non-negative integer, got {output!r}")
    return int(output)


# -- public metrics -------------------------------------------------------------------------------


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
        more important, ties go to the earlier pixel in row-major order.
    output
        Output column scored (0 = Omega_m, 1 = sigma_8).
    fractions
        Increasing fractions of pixels changed, in [0, 1]; k = round(fraction H W) pixels.
    substrate, blur_sigma
        Value of removed pixels; see :func:`make_substrate`.
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

    Returns
    -------
    CurvePair
        ``(insertion, deletion)`` :class:`Curve` objects.
    """
    x = _inputs(x)
    output = _output_index(output)
    n_pixels = x.shape[2] * x.shape[3]
    builder = _PixelCurves(_importance(importance, x), output, _fractions(fractions), n_pixels)
    (pair,) = _run(
        predict, x, [builder], substrate=substrate, blur_sigma=blur_sigma,
        labels=_labels(labels, x.shape[0]), reference=reference, error=error, normalise=normalise,
        max_batch=max_batch, progress=progress,
    )  # fmt: skip
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
    after its last usable group. ``Curve.position`` is step / m; ``Curve.pixel_fraction`` gives
    the fraction of pixels changed at every step. Pixels outside every group never change, so
    the last step need not reach x (insertion) or the substrate (deletion).

    Parameters
    ----------
    masks
        bool (N, m, H, W) groups, e.g. ``Explanation.masks``.
    group_scores
        (N, m) order of the groups for ``output``: SOP's ``Explanation.scores[..., o]``, or
        :func:`group_scores_from_importance` for a pixel attribution.
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
    x = _inputs(x)
    output = _output_index(output)
    masks = _masks(masks, x)
    scores = _group_vector("group_scores", group_scores, masks, torch.float64)
    builder = _GroupCurves(masks, scores, _group_vector("valid", valid, masks, torch.bool), output)
    (pair,) = _run(
        predict, x, [builder], substrate=substrate, blur_sigma=blur_sigma,
        labels=_labels(labels, x.shape[0]), reference=reference, error=error, normalise=normalise,
        max_batch=max_batch, progress=progress,
    )  # fmt: skip
    return pair


def kept_features_mse(
    predict: Predict,
    x: Tensor | np.ndarray,
    importance: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    output: int,
    *,
    keep_fraction: float = 0.2,
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
        Fraction of pixels kept, in (0, 1].
    predict, x, importance, output, substrate, blur_sigma, max_batch, progress
        As in :func:`insertion_deletion`.
    """
    x = _inputs(x)
    output = _output_index(output)
    builder = _Kept(_importance(importance, x), output, keep_fraction, x.shape[2] * x.shape[3])
    (result,) = _run(
        predict, x, [builder], substrate=substrate, blur_sigma=blur_sigma,
        labels=_labels(labels, x.shape[0]), reference="prediction", error="squared",
        normalise="none", max_batch=max_batch, progress=progress,
    )  # fmt: skip
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
    masks = _tensor("masks", masks, 4)
    masks = _masks(masks, masks[:, :1])  # only its own shape to match; checks the dtype
    scores = _group_vector("scores", scores, masks, torch.float64)
    used = (scores > 0) & masks.flatten(2).any(-1)
    if valid is not None:
        used &= _group_vector("valid", valid, masks, torch.bool)
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
    keep_fraction: float = 0.2,
    fractions: Sequence[float] | np.ndarray = DEFAULT_FRACTIONS,
    substrate: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    reference: Reference = "prediction",
    error: ErrorKind = "absolute",
    normalise: Normalise = "pooled",
    max_batch: int = 256,
    progress: bool = True,
) -> dict[str, dict[str, Curve | KeptFeatures | Sparsity]]:
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
        :func:`group_scores_from_importance` with ``group_reduce``, and no sparsity.
    valid
        bool (N, m) group validity (``Explanation.valid``).

    Other Parameters
    ----------------
    group_reduce
        As ``reduce`` in :func:`group_scores_from_importance`.
    keep_fraction
        As in :func:`kept_features_mse`.
    fractions, substrate, blur_sigma, reference, error, normalise, max_batch, progress
        As in :func:`insertion_deletion`.

    Returns
    -------
    dict
        ``{output_name: {"Ins": Curve, "Del": Curve, "InsG": Curve, "DelG": Curve,
        kept_mse_name(keep_fraction): KeptFeatures, "sparsity": Sparsity}}`` (grouped entries
        only with ``masks``, sparsity only with ``group_scores``); ready for
        :func:`faithfulness_table` and :func:`cosmo_sop.figures.faithfulness.plot_curves`.
    """
    x = _inputs(x)
    outputs = [_output_index(o) for o in outputs]
    if not outputs:
        raise ValueError("outputs must name at least one output column")
    if len(output_names) != len(outputs):
        raise ValueError(f"output_names {list(output_names)} must name every output {outputs}")
    importance = _tensor("importance", importance, 4, x.device)
    same_maps = importance.shape[0] == x.shape[0] and importance.shape[2:] == x.shape[2:]
    if not (same_maps and importance.shape[1] > max(outputs)):
        raise ValueError(
            f"importance has shape {tuple(importance.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"and outputs {outputs} need (N, n_outputs > {max(outputs)}, H, W)"
        )
    fractions = _fractions(fractions)
    n_pixels = x.shape[2] * x.shape[3]
    if masks is not None:
        masks = _masks(masks, x)
        valid = _group_vector("valid", valid, masks, torch.bool)
    if group_scores is not None:
        if masks is None:
            raise ValueError("group_scores were given without the group masks")
        group_scores = _tensor("group_scores", group_scores, 3, x.device)
        if group_scores.shape[:2] != masks.shape[:2] or group_scores.shape[2] <= max(outputs):
            raise ValueError(
                f"group_scores has shape {tuple(group_scores.shape)} but masks "
                f"{tuple(masks.shape)} and outputs {outputs} need (N, m, n_outputs > "
                f"{max(outputs)})"
            )
        group_scores = group_scores.to(torch.float64)

    builders, keys = [], []
    for output, name in zip(outputs, output_names):
        pixel_importance = _importance(importance[:, output], x, f"importance[:, {output}]")
        builders.append(_PixelCurves(pixel_importance, output, fractions, n_pixels))
        keys.append((name, (INSERTION, DELETION)))
        builders.append(_Kept(pixel_importance, output, keep_fraction, n_pixels))
        keys.append((name, (kept_mse_name(keep_fraction),)))
        if masks is not None:
            if group_scores is None:
                order = group_scores_from_importance(pixel_importance, masks, group_reduce)
            else:
                order = group_scores[:, :, output]
            builders.append(_GroupCurves(masks, order, valid, output))
            keys.append((name, (GROUPED_INSERTION, GROUPED_DELETION)))

    results = _run(
        predict, x, builders, substrate=substrate, blur_sigma=blur_sigma,
        labels=_labels(labels, x.shape[0]), reference=reference, error=error, normalise=normalise,
        max_batch=max_batch, progress=progress,
    )  # fmt: skip
    metrics: dict[str, dict[str, Curve | KeptFeatures | Sparsity]] = {n: {} for n in output_names}
    for (name, metric_names), result in zip(keys, results):
        values = result if isinstance(result, tuple) else (result,)
        metrics[name].update(zip(metric_names, values))
    if group_scores is not None:
        for output, name in zip(outputs, output_names):
            metrics[name][SPARSITY] = sop_sparsity(masks, group_scores[:, :, output], valid)
    return metrics


# -- table ----------------------------------------------------------------------------------------

Result = Curve | KeptFeatures | Sparsity | float


def _numbers(metric: str, value: Result) -> dict[str, float]:
    """Table entries of one result: a curve's AUC, an MSE, or the two sparsity numbers."""
    if isinstance(value, Curve):
        return {metric: value.auc}
    if isinstance(value, KeptFeatures):
        return {metric: value.mse}
    if isinstance(value, Sparsity):
        return {SPARSITY: value.mean_pixel_fraction, N_GROUPS: value.mean_n_groups}
    return {metric: float(value)}


def faithfulness_table(results: Mapping[str, Mapping[str, Mapping[str, Result]]]) -> xr.Dataset:
    """Tidy table of the metrics of several methods.

    Parameters
    ----------
    results
        ``{method: {output_name: {metric: result}}}``, e.g. ``{"SOP": faithfulness_metrics(...),
        "X-Gradient": faithfulness_metrics(...)}``. Curves give their AUC, :class:`KeptFeatures`
        its MSE, :class:`Sparsity` the rows "sparsity" (mean pixel fraction) and "groups"
        (mean number of groups); plain numbers are used as given.

    Returns
    -------
    xarray.Dataset
        One variable per output name, dims (metric, attribution) (not "method", which
        ``Dataset.sel`` reserves), NaN where a method lacks a metric; coordinate ``better``
        (metric) says whether "lower" or "higher" values are better.
    """
    methods = list(results)
    tables: dict[str, dict[str, dict[str, float]]] = {}
    better: dict[str, str] = {}
    for method, per_output in results.items():
        for output, metrics in per_output.items():
            for metric, value in metrics.items():
                for name, number in _numbers(metric, value).items():
                    tables.setdefault(output, {}).setdefault(name, {})[method] = number
                    is_curve = isinstance(value, Curve)
                    better[name] = value.better if is_curve else BETTER.get(name, "lower")
    # MSE first, then the table's canonical order, then anything else as first seen.
    canonical = [INSERTION, GROUPED_INSERTION, DELETION, GROUPED_DELETION, SPARSITY, N_GROUPS]
    mse = [m for m in better if m.startswith("MSE")]
    others = [m for m in better if m not in mse + canonical]
    metrics = mse + [m for m in canonical if m in better] + others
    data = {
        output: (("metric", "attribution"), np.array(
            [[table.get(m, {}).get(method, np.nan) for method in methods] for m in metrics],
            dtype=np.float64,
        ))  # fmt: skip
        for output, table in tables.items()
    }
    return xr.Dataset(
        data,
        coords={
            "metric": metrics,
            "attribution": methods,
            "better": ("metric", [better[m] for m in metrics]),
        },
        attrs={"description": "faithfulness metrics (cosmo_sop.faithfulness); see 'better'"},
    )


def write_table_csv(table: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a :func:`faithfulness_table` as CSV (output, metric, better, one column per method).

    Written atomically; returns ``path``.
    """
    path = Path(path)
    methods = [str(m) for m in table["attribution"].values]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["output", "metric", "better", *methods])
        for output in table.data_vars:
            for metric, better, row in zip(
                table["metric"].values, table["better"].values, table[output].values
            ):
                writer.writerow([output, metric, better, *(f"{v:.6g}" for v in row)])
    return path
