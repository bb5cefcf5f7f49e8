"""Figure of the training curves of one run (from its ``metrics.csv``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

from cosmo_sop.errors import InputError
from cosmo_sop.figures import save_figure
from cosmo_sop.storage import read_csv


def read_metrics(metrics_csv: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a ``metrics.csv`` written by :func:`cosmo_sop.training.loop.fit`, as float arrays.

    Raises
    ------
    InputError
        If the file is missing, lacks the loss columns or a row, or holds non-numbers.
    """
    path = Path(metrics_csv)
    table = read_csv(path)
    if table is None:
        raise InputError(path, "metrics file not found (train the model first)")
    header, rows = table
    required = {"epoch", "train_loss", "val_loss"}
    if not rows or not required <= set(header):
        raise InputError(path, f"needs a header with {sorted(required)} and at least one row")
    try:
        return {key: np.array([float(row[i]) for row in rows]) for i, key in enumerate(header)}
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"non-numeric value ({exc})") from None


def plot_training_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot training and validation loss (standardised MSE) against epoch, log y axis.

    The per-target validation MSEs are drawn thin and dashed, and the epoch of the best
    validation loss (the saved weights) is marked. Written atomically; returns ``out_png``.
    """
    m = read_metrics(metrics_csv)
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(m["epoch"], m["train_loss"], "o-", ms=3, label="train")
    ax.plot(m["epoch"], m["val_loss"], "o-", ms=3, label="validation")
    for key in sorted(k for k in m if k.startswith("val_mse_")):
        ax.plot(m["epoch"], m[key], "--", lw=1, label=f"validation, {key.removeprefix('val_mse_')}")
    best = int(np.argmin(m["val_loss"]))
    ax.axvline(m["epoch"][best], color="0.6", lw=0.8, zorder=0)
    ax.annotate(
        "best",
        (m["epoch"][best], m["val_loss"][best]),
        textcoords="offset points",
        xytext=(4, 6),
        fontsize="small",
        color="0.4",
    )
    ax.set_yscale("log")
    # Plain numbers; minor ticks labelled only when the curves span less than a decade (else
    # there would be no labelled tick at all, or too many).
    curves = np.concatenate([m[k] for k in m if k.endswith("_loss") or k.startswith("val_mse_")])
    curves = curves[curves > 0]
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    if curves.size and curves.max() < 10 * curves.min():
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (standardised targets)")
    ax.set_title(Path(metrics_csv).parent.name, fontsize="medium")
    ax.legend(fontsize="small")
    return save_figure(fig, out_png, pdf=False)
