"""The batched engine behind every faithfulness metric: plans, one stream of rows, scoring.

A metric is a *builder*: before the model runs it states its *plans* (N x S perturbed inputs,
each row showing x or the substrate pixel by pixel); :func:`run_builders` streams the rows of
all plans of all builders, plus 2 N reference rows (the substrate and x, shared by all curves
of a call), through the model in batches of ``max_batch`` and then lets every builder score its
rows. A full :func:`~cosmo_sop.faithfulness.metrics.faithfulness_metrics` call over N maps at F
fractions thus costs ceil(rows / max_batch) model calls, with N F rows per curve; the perturbed
maps are built per batch, never all at once.

Normalisation. Errors are divided by the error of the all-substrate input, e(0), so curves of
different methods and maps share one scale: insertion runs from 1 to 0 and deletion from 0 to 1
(with ``reference="prediction"``). ``normalise="pooled"`` (the default) divides the map-mean
error by the map-mean e(0); ``"map"`` divides every map by its own e(0) and then averages, which
weights maps equally but is unstable for maps whose prediction is close to the substrate's (a
standardised prediction near the training mean: e(0) -> 0, ratios unbounded; maps with
e(0) = 0 are left out). A map's AUC uses the trapezoid rule over the positions, or over the
map's own axis where a curve has one (the grouped curves: each map's fraction of pixels
changed); the AUC of a curve is the mean of its maps' AUCs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cosmo_sop.faithfulness.inputs import Predict, check_predict, check_settings
from cosmo_sop.faithfulness.results import Curve
from cosmo_sop.faithfulness.substrates import SubstrateKind, make_substrate, substrate_name

ErrorKind = Literal["absolute", "squared"]
Reference = Literal["prediction", "label"]
Normalise = Literal["pooled", "map", "none"]


@dataclass(frozen=True)
class Plan:
    """N x S perturbed inputs: row (n, s) shows x where ``changed(n, s)`` is True (insertion)
    or the substrate there (deletion), and the other one elsewhere."""

    changed: Callable[[Tensor, Tensor], Tensor]  # (map index (R,), step (R,)) -> bool (R, H, W)
    n_steps: int
    insert: bool


def reference_plan(height: int, width: int) -> Plan:
    """Step 0: the substrate; step 1: x itself."""
    return Plan(lambda maps, steps: (steps == 1)[:, None, None].expand(-1, height, width), 2, True)


def rank_plan(ranks: Tensor, counts: np.ndarray, insert: bool) -> Plan:
    """Step s changes the counts[s] top-ranked pixels of every map."""
    counts = torch.as_tensor(counts, device=ranks.device)
    return Plan(lambda maps, steps: ranks[maps] < counts[steps, None, None], len(counts), insert)


def union_plan(union: Tensor, insert: bool) -> Plan:
    """Step s changes the pixels in union[:, s] (N, S, H, W)."""
    return Plan(lambda maps, steps: union[maps, steps], union.shape[1], insert)


def evaluate(
    predict: Predict,
    x: Tensor,
    substrate: Tensor,
    plans: Sequence[Plan],
    max_batch: int,
    progress: bool,
    max_output: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions on the substrate and on x (N, 2, n_outputs), and on every row of every plan,
    as float64 arrays (N, S, n_outputs) per plan.

    The rows of all plans form one stream cut into batches of at most ``max_batch``, so a batch
    may mix plans; the perturbed maps of a batch are built in one vectorised step. A row that
    changes no pixel or every pixel shows the substrate or x itself, so it is not run again: it
    takes the prediction of the substrate or x (:func:`reference_plan`, run first), which spares
    the two ends of every curve (4 of the 22 rows of a pixel insertion and deletion pair at 11
    fractions). A ``predict`` with a true attribute ``takes_maps`` is called as
    ``predict(batch, maps)``, ``maps`` (R,) the index of the map each row perturbs (e.g. to look
    up that map's segments).
    """
    check_predict(predict)
    n_maps = x.shape[0]
    plans = [reference_plan(*x.shape[2:]), *plans]
    sizes = [n_maps * plan.n_steps for plan in plans]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    results: list[np.ndarray | None] = [None] * len(plans)
    copies = []  # (plan, rows, maps, shows x): rows that repeat a reference row
    starts = range(0, total, max_batch)
    bar = tqdm(starts, desc="faithfulness", unit="batch", disable=not progress, leave=False)
    with torch.inference_mode():
        for start in bar:
            stop = min(start + max_batch, total)
            parts, spans, rows_of = [], [], []
            for index, plan in enumerate(plans):
                low, high = max(start, offsets[index]), min(stop, offsets[index + 1])
                if low >= high:
                    continue
                rows = torch.arange(low - offsets[index], high - offsets[index], device=x.device)
                maps, steps = rows // plan.n_steps, rows % plan.n_steps
                changed = plan.changed(maps, steps)[:, None]  # (R, 1, H, W), all bins together
                if index > 0:
                    n_changed = changed.flatten(1).sum(1)
                    repeat = (n_changed == 0) | (n_changed == changed[0].numel())
                    if repeat.any():
                        shows_x = (n_changed > 0) == plan.insert
                        copies.append((index, rows[repeat], maps[repeat], shows_x[repeat]))
                        rows, maps, changed = rows[~repeat], maps[~repeat], changed[~repeat]
                if len(rows) == 0:
                    continue
                shown, hidden = (x, substrate) if plan.insert else (substrate, x)
                parts.append(torch.where(changed, shown[maps], hidden[maps]))
                spans.append((index, rows.cpu().numpy()))
                rows_of.append(maps)
            if not parts:
                continue
            batch = parts[0] if len(parts) == 1 else torch.cat(parts)
            if getattr(predict, "takes_maps", False):
                # A model that needs per-map side inputs (SOP's segments) gets the map indices.
                predicted = torch.as_tensor(predict(batch, torch.cat(rows_of)))
            else:
                predicted = torch.as_tensor(predict(batch))
            expected_rows = predicted.ndim == 2 and predicted.shape[0] == batch.shape[0]
            if not (expected_rows and predicted.shape[1] > max_output):
                raise ValueError(
                    f"predict returned shape {tuple(predicted.shape)} for {batch.shape[0]} inputs; "
                    f"expected (inputs, n_outputs) with n_outputs > {max_output}, the output scored"
                )
            predicted = predicted.detach().to("cpu", torch.float64).numpy()
            row = 0
            for index, rows in spans:
                if results[index] is None:
                    results[index] = np.empty((sizes[index], predicted.shape[1]))
                results[index][rows] = predicted[row : row + len(rows)]
                row += len(rows)
    reference = results[0].reshape(n_maps, 2, -1)  # substrate, x
    for index, rows, maps, shows_x in copies:
        if results[index] is None:
            results[index] = np.empty((sizes[index], reference.shape[-1]))
        results[index][rows.cpu().numpy()] = reference[
            maps.cpu().numpy(), shows_x.long().cpu().numpy()
        ]
    results = [r.reshape(n_maps, plan.n_steps, -1) for r, plan in zip(results, plans)]
    return results[0], results[1:]


def error_of(difference: np.ndarray, kind: ErrorKind) -> np.ndarray:
    return np.abs(difference) if kind == "absolute" else difference**2


@dataclass(frozen=True)
class Scoring:
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
        area_over: np.ndarray | None = None,
    ) -> Curve:
        """Score (N, S, n_outputs) predictions of perturbed inputs as a :class:`Curve`.

        ``area_over`` (N, S), increasing along S, is every map's own axis for its AUC; None:
        the shared ``position`` (S,).
        """
        prediction = predictions[..., output]
        target = self.target(output)
        error = error_of(prediction - target[:, None], self.error)
        scale = error_of(self.reference_predictions[:, 0, output] - target, self.error)
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
        map_auc = np.trapezoid(per_map, position if area_over is None else area_over, axis=1)
        return Curve(
            kind=kind,
            output=output,
            position=position,
            curve=mean,
            per_map=per_map,
            # The map mean of the AUCs: equal to the area under the mean curve on a shared axis.
            auc=float(map_auc[kept].mean()) if kept.any() else float("nan"),
            map_auc=map_auc,
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


class Builder(Protocol):
    """A metric of :func:`run_builders`: its plans, the output it scores, and its scoring."""

    output: int
    plans: list[Plan]

    def finish(self, scoring: Scoring, predictions: list[np.ndarray]) -> Any:
        """The metric's result from the predictions (N, S, n_outputs) of each of its plans."""
        ...


def run_builders(
    predict: Predict,
    x: Tensor,
    builders: Sequence[Builder],
    *,
    substrate: SubstrateKind | Tensor,
    blur_sigma: float,
    labels: np.ndarray | None,
    reference: Reference,
    error: ErrorKind,
    normalise: Normalise,
    max_batch: int,
    progress: bool,
) -> list[Any]:
    """Evaluate every builder's plans in one stream, then let each builder score its rows."""
    check_settings(error, reference, normalise, max_batch, labels)
    substrate_maps = make_substrate(x, substrate, blur_sigma)
    plans = [plan for b in builders for plan in b.plans]
    max_output = max(b.output for b in builders)
    if labels is not None and labels.shape[1] <= max_output:
        raise ValueError(f"labels have {labels.shape[1]} outputs; output {max_output} is scored")
    references, predictions = evaluate(
        predict, x, substrate_maps, plans, max_batch, progress, max_output
    )
    name = substrate_name(substrate)
    scoring = Scoring(references, labels, name, error, reference, normalise)
    results, start = [], 0
    for builder in builders:
        stop = start + len(builder.plans)
        results.append(builder.finish(scoring, predictions[start:stop]))
        start = stop
    return results
