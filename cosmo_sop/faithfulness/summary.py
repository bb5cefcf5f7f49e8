"""Per-map faithfulness scores, their cosmology-bootstrap summary, and the summary CSV.

An *entry* is one way of scoring one method: the method (``"sop"`` or a baseline), the
resolution of its ranking (``"pixel"``, or ``"token"``: aggregated to SOP's cells or segments)
and the scoring model (``"backbone"``, ``"sop"`` for SOP scored on itself, ``"xdnn"`` for
X-Gradient scored on the X-DNN it explains). Every entry has one score per map, metric and
output (:func:`per_map_scores`); :func:`summarise` gives the mean with its 95 % interval from a
bootstrap over cosmologies (:mod:`cosmo_sop.statistics`) and the paired difference SOP − entry
on the same maps and the same resamples of cosmologies, SOP scored on the same model (SOP on
SOP for an entry scored on its own model). A table compares SOP with every method on every
metric and output, a hundred comparisons and more: a difference is called significant only
where its bootstrap p-value, adjusted by Benjamini–Hochberg over all of the table's
differences, is below :data:`ALPHA`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.faithfulness.results import BETTER, Curve, KeptFeatures
from cosmo_sop.statistics import (
    CONFIDENCE,
    benjamini_hochberg,
    bootstrap_mean,
    bootstrap_paired_difference,
)
from cosmo_sop.storage import write_csv

SOP = "sop"
#: Scoring models: the backbone, the SOP model itself, the X-DNN twin.
BACKBONE, SOP_MODEL, XDNN = "backbone", "sop", "xdnn"
#: Resolutions of a ranking: the method's own pixels, or SOP's tokens (cells or segments).
PIXEL, TOKEN = "pixel", "token"
#: The false discovery rate at which a difference SOP − entry is significant.
ALPHA = 1.0 - CONFIDENCE
#: How the table's p-values are adjusted for its many comparisons (report and CSV say so).
MULTIPLICITY = "Benjamini-Hochberg"
#: The dimensions of the summary's variables.
SUMMARY_DIMS = ("entry", "metric", "output")
#: The columns of a paired difference SOP − entry, in the order of the summary CSV.
DIFFERENCE_COLUMNS = ("sop_minus", "diff_ci_low", "diff_ci_high", "diff_p", "diff_p_adjusted")
#: Columns of the summary CSV (:func:`write_summary_csv`).
SUMMARY_COLUMNS = (
    "method",
    "resolution",
    "scorer",
    "output",
    "metric",
    "better",
    "mean",
    "ci_low",
    "ci_high",
    "n_maps",
    "n_cosmologies",
    *DIFFERENCE_COLUMNS,
    "significant",
)


@dataclass(frozen=True)
class Entry:
    """One scored variant of a method (see the module docstring)."""

    method: str
    resolution: str
    scorer: str

    @property
    def key(self) -> str:
        """A unique name, e.g. ``"integrated_gradients/token/backbone"``."""
        return f"{self.method}/{self.resolution}/{self.scorer}"

    def reference(self) -> Entry:
        """The SOP entry it is compared with: on the same model, or on its own for an entry
        scored on the model it explains."""
        own = self.scorer in (SOP_MODEL, XDNN)
        return Entry(SOP, TOKEN, SOP_MODEL if own else BACKBONE)


def per_map_value(result: Any) -> np.ndarray:
    """A metric's score of every map (N,): a curve's area, a squared error, or the array."""
    if isinstance(result, Curve):
        return np.asarray(result.map_auc, dtype=np.float64)
    if isinstance(result, KeptFeatures):
        return np.asarray(result.squared_error, dtype=np.float64)
    return np.asarray(result, dtype=np.float64)


def per_map_scores(
    results: Mapping[Entry, Mapping[str, Mapping[str, Any]]],
    metrics: Sequence[str],
    outputs: Sequence[str],
    n_maps: int,
) -> np.ndarray:
    """Scores (N, entry, metric, output) float64; NaN where an entry lacks a metric.

    A curve's per-map area uses the pooled normalisation of the whole evaluation (a fixed
    scale per scoring model and output), so the mean over maps is the table's AUC.
    """
    out = np.full((n_maps, len(results), len(metrics), len(outputs)), np.nan)
    for e, per_output in enumerate(results.values()):
        for o, output in enumerate(outputs):
            for m, metric in enumerate(metrics):
                if metric in per_output.get(output, {}):
                    out[:, e, m, o] = per_map_value(per_output[output][metric])
    return out


def summarise(
    scores: np.ndarray,
    entries: Sequence[Entry],
    cosmologies: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Means, intervals and paired differences SOP − entry, each (entry, metric, output).

    Returns ``mean``, ``ci_low``, ``ci_high``, ``n_maps``, ``sop_minus``, ``diff_ci_low``,
    ``diff_ci_high``, ``diff_p`` (two-sided bootstrap p-value of a zero difference),
    ``diff_p_adjusted`` (Benjamini–Hochberg over every difference of the table) and the scalar
    ``n_cosmologies``; differences are NaN for SOP's own entries and where the reference SOP
    entry was not scored.
    """
    means = bootstrap_mean(scores, cosmologies, n_boot, seed)
    keys = [e.key for e in entries]
    diff = np.full((4, *scores.shape[1:]), np.nan)
    for e, entry in enumerate(entries):
        ref = entry.reference().key
        if entry.method == SOP or ref not in keys:
            continue
        paired = bootstrap_paired_difference(
            scores[:, keys.index(ref)], scores[:, e], cosmologies, n_boot, seed
        )
        diff[:, e] = (paired.estimate, paired.low, paired.high, paired.p_value)
    return {
        "mean": means.estimate,
        "ci_low": means.low,
        "ci_high": means.high,
        "n_maps": means.n_maps,
        "sop_minus": diff[0],
        "diff_ci_low": diff[1],
        "diff_ci_high": diff[2],
        "diff_p": diff[3],
        "diff_p_adjusted": benjamini_hochberg(diff[3]),
        "n_cosmologies": np.asarray(means.n_cosmologies),
    }


def summary_rows(table: xr.Dataset) -> list[list[Any]]:
    """Rows of the summary CSV from the summary variables of the faithfulness store."""
    rows = []
    better = dict(zip(table["metric"].values, table["better"].values, strict=True))
    n_cosmo = int(table.attrs["n_cosmologies"])
    for e in range(table.sizes["entry"]):
        entry = table.isel(entry=e)
        for output in table["output"].values:
            for metric in table["metric"].values:
                cell = entry.sel(output=output, metric=metric)
                values = [float(cell[k]) for k in ("mean", "ci_low", "ci_high")]
                diffs = [float(cell[k]) for k in DIFFERENCE_COLUMNS]
                significant = bool(diffs[-1] < ALPHA)  # False for NaN
                rows.append(
                    [
                        str(entry["method"].values),
                        str(entry["resolution"].values),
                        str(entry["scorer"].values),
                        str(output),
                        str(metric),
                        str(better[metric]),
                        *(f"{v:.6g}" for v in values),
                        int(cell["n_maps"]),
                        n_cosmo,
                        *(f"{v:.6g}" for v in diffs),
                        str(significant).lower(),
                    ]
                )
    return rows


def write_summary_csv(table: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write the summary (one row per entry, output and metric; :data:`SUMMARY_COLUMNS`)."""
    return write_csv(path, list(SUMMARY_COLUMNS), summary_rows(table))


def better_of(metric: str) -> str:
    """Which direction of a metric is better ("lower" or "higher")."""
    return BETTER.get(metric, "higher" if metric == "purity" else "lower")


def write_purity_csv(
    purities: Mapping[tuple[str, str], np.ndarray],
    outputs: Sequence[str],
    table: xr.Dataset,
    n_boot: int,
    seed: int,
    path: str | os.PathLike,
) -> Path:
    """Mean purity (N, n_outputs per (method, resolution)) per method and output, with its
    interval from the cosmology bootstrap of :mod:`cosmo_sop.statistics`."""
    cosmologies = table["cosmology"].values
    rows = []
    for (method, _), purity in purities.items():
        ci = bootstrap_mean(purity, cosmologies, n_boot, seed)
        for o, output in enumerate(outputs):
            values = (f"{float(v[o]):.6g}" for v in (ci.estimate, ci.low, ci.high))
            rows.append([method, output, *values, int(ci.n_maps[o])])
    return write_csv(path, ["method", "output", "purity", "ci_low", "ci_high", "n_maps"], rows)


def scores_dataset(
    results: Mapping[Entry, Mapping[str, Mapping[str, Any]]],
    metrics: Sequence[str],
    outputs: Sequence[str],
    cosmologies: np.ndarray,
    store_index: np.ndarray,
    n_boot: int,
    seed: int,
) -> xr.Dataset:
    """The faithfulness store: ``score`` (sample, entry, metric, output) and its summary
    (:func:`summarise`), with the entries' method, resolution and scorer, each metric's
    better direction and each sample's cosmology and patch-store row."""
    entries = list(results)
    scores = per_map_scores(results, metrics, outputs, len(cosmologies))
    summary = summarise(scores, entries, cosmologies, n_boot, seed)
    table = summary_dataset(summary, entries, metrics, outputs)
    return table.assign(score=(("sample", *SUMMARY_DIMS), scores)).assign_coords(
        cosmology=("sample", np.asarray(cosmologies).astype(str)),
        store_index=("sample", np.asarray(store_index)),
    )


def summary_dataset(
    summary: Mapping[str, np.ndarray],
    entries: Sequence[Entry],
    metrics: Sequence[str],
    outputs: Sequence[str],
) -> xr.Dataset:
    """The summary of :func:`summarise` as a Dataset (entry, metric, output), with the entries'
    method, resolution and scorer and each metric's better direction."""
    return xr.Dataset(
        {k: (SUMMARY_DIMS, v) for k, v in summary.items() if k != "n_cosmologies"},
        coords={
            "entry": [e.key for e in entries],
            "method": ("entry", [e.method for e in entries]),
            "resolution": ("entry", [e.resolution for e in entries]),
            "scorer": ("entry", [e.scorer for e in entries]),
            "metric": list(metrics),
            "better": ("metric", [better_of(m) for m in metrics]),
            "output": list(outputs),
        },
        attrs={"n_cosmologies": int(summary["n_cosmologies"]), "multiplicity": MULTIPLICITY},
    )
