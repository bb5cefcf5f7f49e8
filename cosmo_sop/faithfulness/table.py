"""The faithfulness table: metrics of several attribution methods side by side, and its CSV.

One variable per output, dims (metric, attribution), with the direction that is better per
metric; :func:`write_table_csv` writes it through the one CSV writer of
:mod:`cosmo_sop.storage`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from cosmo_sop.faithfulness.results import (
    BETTER,
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    N_GROUPS,
    SPARSITY,
    Curve,
    KeptFeatures,
    Sparsity,
)
from cosmo_sop.storage import write_csv

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
        output: (
            ("metric", "attribution"),
            np.array(
                [[table.get(m, {}).get(method, np.nan) for method in methods] for m in metrics],
                dtype=np.float64,
            ),
        )
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

    Values are written with 6 significant digits (``%.6g``). Written atomically; returns
    ``path``.
    """
    methods = [str(m) for m in table["attribution"].values]
    rows = [
        [output, metric, better, *(f"{v:.6g}" for v in values)]
        for output in table.data_vars
        for metric, better, values in zip(
            table["metric"].values, table["better"].values, table[output].values, strict=True
        )
    ]
    return write_csv(path, ["output", "metric", "better", *methods], rows)
