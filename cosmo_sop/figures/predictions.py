"""How well the models recover (Omega_m, sigma_8): predicted against true values on the test
split, and the test error per noise level.

The predictions are read from the run folders of one noise level (paths from
:mod:`cosmo_sop.layout`; written by :mod:`cosmo_sop.training.runs` and
:mod:`cosmo_sop.summary_statistics.run`)::

    <level>/models/<model>/test_predictions.npz   sample, predictions (N, 2), targets (N, 2), names
    <level>/summary_statistics.npz                names, sample, true, predicted_<regressor>

all in physical units.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cosmo_sop import layout
from cosmo_sop.errors import InputError
from cosmo_sop.figures import save_figure
from cosmo_sop.figures.labels import MODEL_LABELS, summary_label, tex

#: Colours of the known models, the same in every figure; others take :data:`COLOURS` in turn.
MODEL_COLOURS = {
    "CNN backbone": "tab:blue",
    "X-DNN": "tab:green",
    "SOP": "tab:red",
    summary_label("mlp"): "tab:purple",
    summary_label("ridge"): "tab:orange",
}
COLOURS = ("tab:brown", "tab:gray", "tab:olive", "tab:cyan", "tab:pink")
#: Bins of the true value for the running median drawn over each scatter; with at most
#: ``MAX_DISCRETE`` distinct true values (a grid of cosmologies) the median is per value.
MEDIAN_BINS = 12
MAX_DISCRETE = 30


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise InputError(path, f"lacks array(s) {', '.join(missing)}")
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"not a readable .npz file ({exc})") from None


def _ordered(
    true: np.ndarray,
    predicted: np.ndarray,
    file_names: Sequence[str],
    names: Sequence[str],
    path: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Columns of ``true`` and ``predicted`` in the order of ``names``, checked."""
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    file_names = [str(n) for n in file_names]
    if true.ndim != 2 or true.shape != predicted.shape or true.shape[1] != len(file_names):
        raise InputError(
            path,
            f"targets {true.shape} and predictions {predicted.shape} must both "
            f"be (N, {len(file_names)}) for parameters {file_names}",
        )
    missing = [n for n in names if n not in file_names]
    if missing:
        raise InputError(path, f"has no parameter(s) {missing} (it holds {file_names})")
    columns = [file_names.index(n) for n in names]
    return true[:, columns], predicted[:, columns]


def read_model_predictions(
    level_dir: str | os.PathLike, names: Sequence[str] = ("Om", "s8")
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test-split targets and predictions of every model of one noise level, physical units.

    Reads ``models/*/test_predictions.npz`` (the backbone, X-DNN and SOP first, then any other
    run folder in name order) and ``summary_statistics.npz`` (one entry per regressor). Missing
    files are skipped: the result holds what has been computed.

    Parameters
    ----------
    level_dir
        Results folder of one noise level, e.g. ``results/noiseless``.
    names
        Parameters to return, in this column order.

    Returns
    -------
    dict
        Display name (:data:`MODEL_LABELS`, ``"Summary statistics (mlp)"``, ...) ->
        ``(targets, predictions)``, each (N, len(names)) float64.

    Raises
    ------
    InputError
        For a file that exists but is unreadable or lacks the parameters.
    """
    level_dir = Path(level_dir)
    results, level = level_dir.parent, level_dir.name
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for folder in model_folders(level_dir):
        path = folder / layout.TEST_PREDICTIONS
        # SOP at other group sizes is the report's sweep table, not another panel here.
        if not path.is_file() or layout.sweep_keep_fraction(folder.name) is not None:
            continue
        arrays = _load_npz(path, ("predictions", "targets", "names"))
        label = MODEL_LABELS.get(folder.name, folder.name)
        out[label] = _ordered(
            arrays["targets"], arrays["predictions"], arrays["names"], names, path
        )
    path = layout.summary_statistics_predictions(results, level)
    if path.is_file():
        arrays = _load_npz(path, ("true", "names"))
        for key in sorted(k for k in arrays if k.startswith("predicted_")):
            label = summary_label(key.removeprefix("predicted_"))
            out[label] = _ordered(arrays["true"], arrays[key], arrays["names"], names, path)
    return out


def model_folders(level_dir: str | os.PathLike) -> list[Path]:
    """Run folders of one noise level: the workflow's models (:data:`cosmo_sop.layout.MODELS`)
    first, whether they exist or not, then any other folder beside them in name order."""
    level_dir = Path(level_dir)
    results, level = level_dir.parent, level_dir.name
    folders = [layout.model_dir(results, level, model) for model in layout.MODELS]
    models = folders[0].parent
    if models.is_dir():
        known = set(layout.MODELS)
        folders += sorted(p for p in models.iterdir() if p.is_dir() and p.name not in known)
    return folders


def _colours(models: Sequence[str]) -> dict[str, str]:
    others = iter(COLOURS * (1 + len(models) // len(COLOURS)))
    return {m: MODEL_COLOURS[m] if m in MODEL_COLOURS else next(others) for m in models}


def _running_median(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median prediction per distinct true value (at most :data:`MAX_DISCRETE` of them, e.g.
    the test cosmologies) or in equal-count bins of the true value (centres: median true value).
    """
    values, inverse = np.unique(true, return_inverse=True)
    if 1 < values.size <= MAX_DISCRETE:
        return values, np.array([np.median(predicted[inverse == i]) for i in range(values.size)])
    order = np.argsort(true, kind="stable")
    n_bins = min(MEDIAN_BINS, true.size // 5)
    if n_bins < 2:
        return np.empty(0), np.empty(0)
    chunks = np.array_split(order, n_bins)
    return (
        np.array([np.median(true[c]) for c in chunks]),
        np.array([np.median(predicted[c]) for c in chunks]),
    )


def plot_predicted_vs_true(
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_png: str | os.PathLike,
    names: Sequence[str] = ("Om", "s8"),
    title: str | None = None,
) -> Path:
    """Predicted against true parameters of the test maps, one panel per parameter.

    Every model is a scatter of its test maps (transparency scaled with their number, so a few
    thousand points still read as a density) with its median prediction on top (per true value
    for a grid of cosmologies, else in bins of the true value), and its mean squared error
    (physical units) in the legend; the black line is prediction = truth. Written atomically as
    PNG and, beside it, PDF; returns ``out_png``.

    Parameters
    ----------
    predictions
        Model name -> ``(targets, predictions)``, each (N, len(names)) in physical units (N may
        differ between models), e.g. from :func:`read_model_predictions`.
    out_png
        Output PNG path.
    names
        The parameter of each column.
    """
    if not predictions:
        raise InputError("argument 'predictions'", "needs at least one model")
    checked = {}
    for model, pair in predictions.items():
        true, predicted = (np.asarray(a, dtype=np.float64) for a in pair)
        if (
            true.ndim != 2
            or true.shape != predicted.shape
            or true.shape[1] != len(names)
            or true.shape[0] == 0
        ):
            raise InputError(
                f"predictions of {model!r}",
                f"targets {true.shape} and predictions "
                f"{predicted.shape} must both be (N > 0, {len(names)})",
            )
        if not (np.isfinite(true).all() and np.isfinite(predicted).all()):
            raise InputError(f"predictions of {model!r}", "must be finite")
        checked[model] = (true, predicted)

    colours = _colours(list(checked))
    fig = Figure(figsize=(4.6 * len(names), 4.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for p, (ax, name) in enumerate(zip(axes, names)):
        low, high = math.inf, -math.inf
        for model, (true, predicted) in checked.items():
            colour = colours[model]
            mse = float(np.mean((predicted[:, p] - true[:, p]) ** 2))
            alpha = float(np.clip(150.0 / true.shape[0], 0.04, 0.6))
            ax.scatter(
                true[:, p], predicted[:, p], s=5, color=colour, alpha=alpha, lw=0, rasterized=True
            )
            x, y = _running_median(true[:, p], predicted[:, p])
            ax.plot(x, y, color=colour, lw=1.6, label=f"{model}: MSE {mse:.3g}")
            low = min(low, true[:, p].min(), predicted[:, p].min())
            high = max(high, true[:, p].max(), predicted[:, p].max())
        pad = 0.03 * (high - low) if high > low else 0.5
        limits = (low - pad, high + pad)
        ax.plot(limits, limits, color="black", lw=0.8, label="prediction = truth")
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal")
        label = tex(name)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend(fontsize="x-small", loc="upper left", frameon=False)
    n_maps = sorted({t.shape[0] for t, _ in checked.values()})
    maps = f"{n_maps[0]} test maps" if len(n_maps) == 1 else f"{n_maps[0]}-{n_maps[-1]} test maps"
    fig.suptitle(
        title or f"Predicted vs true on the test split ({maps}; lines: median prediction)",
        fontsize="medium",
    )
    return save_figure(fig, out_png)


def plot_mse_per_level(
    table: Mapping[str, Mapping[str, Mapping[str, float]]],
    out_png: str | os.PathLike,
    names: Sequence[str] = ("Om", "s8"),
    title: str | None = None,
) -> Path:
    """Test MSE of standardised parameters per noise level and model, one panel per parameter.

    Grouped bars: noise levels along x, one bar per model, the value written above each bar.
    Standardised units (parameter minus train mean, over train standard deviation) make the
    two parameters comparable; 1 is what predicting the train mean gives. A model missing at a
    level leaves a gap. Written atomically as PNG and PDF; returns ``out_png``.

    Parameters
    ----------
    table
        ``{level: {model: {parameter: mse_standardised}}}``, levels in display order.
    """
    levels = list(table)
    if not levels:
        raise InputError("argument 'table'", "needs at least one noise level")
    models: list[str] = []
    for per_model in table.values():
        models += [m for m in per_model if m not in models]
    if not models:
        raise InputError("argument 'table'", "holds no model results")

    def value(level: str, model: str, name: str) -> float:
        number = table[level].get(model, {}).get(name)
        return math.nan if number is None else float(number)

    colours = _colours(models)
    width = 0.8 / len(models)
    x = np.arange(len(levels))
    fig = Figure(
        figsize=(max(4.0, 1.1 + 0.35 * len(models) * len(levels)) * len(names), 4.2),
        layout="constrained",
    )
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for m, model in enumerate(models):
            heights = np.array([value(level, model, name) for level in levels])
            offsets = x - 0.4 + (m + 0.5) * width
            bars = ax.bar(
                offsets, np.nan_to_num(heights), width * 0.92, color=colours[model], label=model
            )
            ax.bar_label(
                bars,
                labels=[f"{h:.3g}" if np.isfinite(h) else "" for h in heights],
                fontsize="xx-small",
                rotation=90,
                padding=2,
            )
        ax.set_xticks(x, levels)
        ax.set_xlabel("noise level")
        ax.set_ylabel(f"test MSE of standardised {tex(name)}")
        ax.margins(y=0.25)
        ax.set_title(tex(name))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(models), 4),
        fontsize="small",
        frameon=False,
    )
    fig.suptitle(
        title or "Test error per noise level (lower is better; 1 = predicting the mean)",
        fontsize="medium",
    )
    return save_figure(fig, out_png)
