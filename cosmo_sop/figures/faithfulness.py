"""Figure of insertion and deletion curves of several attribution methods."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cosmo_sop.faithfulness.results import (
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    Curve,
)
from cosmo_sop.figures import save_figure
from cosmo_sop.figures.labels import tex

#: Panel columns: metric key, title, x-axis label.
PANELS = (
    (INSERTION, "insertion", "fraction of pixels inserted"),
    (DELETION, "deletion", "fraction of pixels deleted"),
    (GROUPED_INSERTION, "grouped insertion", "fraction of pixels inserted, by groups"),
    (GROUPED_DELETION, "grouped deletion", "fraction of pixels deleted, by groups"),
)
ERROR_LABELS = {"absolute": r"$|f(x_k) - {}|$", "squared": r"$(f(x_k) - {})^2$"}


def _y_label(curve: Curve, output: str) -> str:
    reference = "f(x)" if curve.reference == "prediction" else "y"
    error = ERROR_LABELS.get(curve.error_kind, "error").format(reference)
    scale = "" if curve.normalise == "none" else " / e(0)"
    return f"{tex(output)}: {error}{scale}"


def plot_curves(
    results: Mapping[str, Mapping[str, Mapping[str, object]]],
    out_png: str | os.PathLike,
    pdf: bool = True,
) -> Path:
    """Plot the insertion and deletion curves of several methods, one row per output.

    Columns are pixel insertion, pixel deletion and, where present, their grouped versions;
    each line is the map-mean normalised error of one method with its AUC in the legend and a
    band of +- one standard error of the map mean. Lower insertion and higher deletion curves
    mean a more faithful attribution.

    Parameters
    ----------
    results
        ``{method: {output_name: {metric: Curve, ...}}}`` as returned per method by
        :func:`cosmo_sop.faithfulness.faithfulness_metrics`; entries that are not curves are
        ignored.
    out_png
        Output PNG; a PDF is written beside it when ``pdf`` is true. Both are written atomically.

    Returns
    -------
    Path
        ``out_png``.
    """
    outputs = list(dict.fromkeys(o for per_output in results.values() for o in per_output))
    present = {
        metric
        for per_output in results.values()
        for metrics in per_output.values()
        for metric, value in metrics.items()
        if isinstance(value, Curve)
    }
    panels = [panel for panel in PANELS if panel[0] in present]
    if not outputs or not panels:
        raise ValueError("results hold no insertion or deletion curves to plot")

    fig = Figure(figsize=(3.1 * len(panels), 2.6 * len(outputs) + 0.4), layout="constrained")
    axes = fig.subplots(len(outputs), len(panels), squeeze=False, sharey="row")
    colours = {method: f"C{i}" for i, method in enumerate(results)}
    for row, output in enumerate(outputs):
        for column, (metric, title, x_label) in enumerate(panels):
            ax = axes[row, column]
            for method, per_output in results.items():
                curve = per_output.get(output, {}).get(metric)
                if not isinstance(curve, Curve):
                    continue
                kept = curve.per_map[~np.isnan(curve.per_map).any(axis=1)]
                sem = np.zeros_like(curve.curve)
                if len(kept) > 1:
                    sem = kept.std(axis=0, ddof=1) / np.sqrt(len(kept))
                colour = colours[method]
                ax.fill_between(
                    curve.position,
                    curve.curve - sem,
                    curve.curve + sem,
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
                ax.plot(
                    curve.position,
                    curve.curve,
                    color=colour,
                    lw=1.4,
                    label=f"{method} (AUC {curve.auc:.3f})",
                )
                if column == 0:
                    ax.set_ylabel(_y_label(curve, output))
            better = "lower" if "insertion" in title else "higher"
            ax.set_title(f"{title} ({better} AUC better)", fontsize="medium")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3, lw=0.5)
            if row == len(outputs) - 1:
                ax.set_xlabel(x_label)
            ax.legend(fontsize="x-small", loc="best")
    return save_figure(fig, out_png, pdf=pdf)
