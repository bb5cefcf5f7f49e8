"""Figures of voids and clusters among SOP groups: weight histograms per structure class, and
one map with its top groups outlined and labelled (see :mod:`cosmo_sop.structures`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter
from scipy import ndimage

from cosmo_sop.errors import InputError
from cosmo_sop.figures import save_figure
from cosmo_sop.figures.labels import TEX_ITALIC
from cosmo_sop.structures.classes import sigma_map
from cosmo_sop.structures.definitions import OUTPUTS
from cosmo_sop.structures.purity import top_groups
from cosmo_sop.structures.weights import class_weights

#: Colour per output in the histograms, per class in the map outlines.
OUTPUT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
CLASS_STYLE = {
    "void": dict(color="black", linestyles="dashed", letter="V"),
    "cluster": dict(color="black", linestyles="solid", letter="C"),
    "": dict(color="dimgray", linestyles="dotted", letter="–"),
}


def _name(output: str) -> str:
    return TEX_ITALIC.get(output, output)


def plot_weight_histograms(
    scores: np.ndarray | xr.DataArray,
    membership: xr.DataArray,
    out_png: str | os.PathLike,
    valid: np.ndarray | xr.DataArray | None = None,
    outputs: Sequence[str] = OUTPUTS,
    nonzero_only: bool = True,
    n_bins: int = 25,
    title: str | None = None,
) -> Path:
    """Histograms of the weights of the groups of each structure class, one panel per definition.

    The outputs (Omega_m, sigma_8) are overlaid as step histograms on shared bins over
    [0, largest weight], log y axis where counts exceed 30; a dashed line marks each mean. The
    legend gives the number of groups; with ``nonzero_only`` (default, as SOP's selector leaves
    most groups at exactly zero and that spike would hide the shape) the zero-weight groups of
    the class are counted in the legend but not drawn. Written atomically as PNG and PDF;
    returns ``out_png``.

    Parameters
    ----------
    scores
        (N, m, n_out) group weights.
    membership
        From :func:`cosmo_sop.structures.classify`, dims (sample, group, definition).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[-1] != len(outputs):
        raise InputError(
            "argument 'scores'", f"must have shape (N, m, {len(outputs)}), got {scores.shape}"
        )
    definitions = [str(d) for d in membership["definition"].values]
    rules = (
        dict(zip(definitions, map(str, membership["rule"].values)))
        if "rule" in membership.coords
        else {}
    )
    weights = {
        (d, o): class_weights(scores, membership, d, o, valid)
        for d in definitions
        for o in range(len(outputs))
    }
    top = max((w.max() for w in weights.values() if w.size), default=1.0)
    edges = np.linspace(0.0, top if top > 0 else 1.0, n_bins + 1)

    n_cols = min(3, len(definitions))
    n_rows = math.ceil(len(definitions) / n_cols)
    fig = Figure(figsize=(3.6 * n_cols, 2.9 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True)
    for ax in axes.ravel()[len(definitions) :]:
        ax.set_visible(False)
    for ax, d in zip(axes.ravel(), definitions):
        panel = [weights[d, o] for o in range(len(outputs))]
        _histogram_panel(ax, panel, outputs, edges, nonzero_only)
        ax.set_title(f"{d}: {rules.get(d, '')}", fontsize="small")
        ax.legend(fontsize="x-small", loc="upper right", frameon=False)
        ax.tick_params(labelsize="x-small")
        ax.set_xlabel("group weight $c_i$", fontsize="small")
        ax.set_ylabel("groups", fontsize="small")
    which = "non-zero weights" if nonzero_only else "all weights"
    fig.suptitle(
        title
        or f"Weights of SOP groups by structure class ({scores.shape[0]} maps, "
        f"{which}; dashed: mean)",
        fontsize="medium",
    )
    return save_figure(fig, out_png)


def _histogram_panel(
    ax: Axes,
    weights: Sequence[np.ndarray],
    outputs: Sequence[str],
    edges: np.ndarray,
    nonzero_only: bool,
) -> None:
    """One class's weights per output as step histograms with their means (dashed)."""
    drawn, largest = False, 0
    for o, output in enumerate(outputs):
        w = weights[o]
        shown = w[w > 0] if nonzero_only else w
        label = f"{_name(output)}: {w.size} groups"
        if nonzero_only and w.size:
            label += f" ({w.size - shown.size} at 0, not drawn)"
        colour = OUTPUT_COLOURS[o % len(OUTPUT_COLOURS)]
        if shown.size:
            counts, _ = np.histogram(shown, bins=edges)
            ax.stairs(counts, edges, color=colour, lw=1.4, label=label)
            ax.axvline(shown.mean(), color=colour, lw=0.9, ls="--")
            drawn, largest = True, max(largest, int(counts.max()))
        else:
            ax.plot([], [], color=colour, label=label)
    if drawn and largest > 30:  # log y only where counts span decades
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif drawn:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        empty = all(w.size == 0 for w in weights)
        text = "no groups in this class" if empty else "no groups with weight > 0"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_yticks([])


def _label_position(mask: np.ndarray) -> tuple[int, int]:
    """(y, x) of the group pixel farthest from the group's edge: inside even for a ring."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), mask.shape)
    return int(y), int(x)


def plot_groups(
    kappa: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    out_png: str | os.PathLike,
    outputs: Sequence[str] = OUTPUTS,
    top_k: int | None = None,
    valid: np.ndarray | None = None,
    pixel_scale_arcmin: float | None = None,
    title: str | None = None,
    *,
    smoothing_pixels: float,
) -> Path:
    """One map with its top SOP groups outlined, one panel per output.

    The background is the sigma map (:func:`cosmo_sop.structures.sigma_map`: bin-combined,
    smoothed by ``smoothing_pixels`` as for the classes, standardised; red over-dense, blue
    under-dense). Each of the output's top groups
    (:func:`cosmo_sop.structures.top_groups`: by default those with non-zero weight) is outlined
    - solid for a cluster, dashed for a void, dotted for neither - and labelled with its class
    letter (C / V / –) and weight. Written atomically as PNG and PDF; returns ``out_png``.

    Parameters
    ----------
    kappa
        One map (C, H, W).
    masks
        bool (m, H, W): the groups of that map.
    scores
        (m, n_out): their weights.
    labels
        m strings, ``"void"``, ``"cluster"`` or ``""`` (e.g. a row of
        :func:`cosmo_sop.structures.group_labels`).
    pixel_scale_arcmin
        If given, axes in degrees; otherwise in pixels.
    """
    kappa, masks, scores, labels = _checked_group_inputs(kappa, masks, scores, labels, outputs)
    chosen = top_groups(scores[None], None if valid is None else np.asarray(valid)[None], top_k)[0]
    sigma = sigma_map(kappa[None], smoothing_pixels)[0]

    extent, unit, centres = _axes_extent(sigma.shape, pixel_scale_arcmin)
    limit = max(float(np.abs(sigma).max()), 1e-12)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)

    n_out = len(outputs)
    fig = Figure(figsize=(4.2 * n_out + 0.8, 4.6), layout="constrained")
    axes = fig.subplots(1, n_out, squeeze=False)[0]
    for o, (ax, output) in enumerate(zip(axes, outputs)):
        image = ax.imshow(
            sigma, cmap="RdBu_r", norm=norm, origin="lower", extent=extent, interpolation="nearest"
        )
        groups = np.flatnonzero(chosen[:, o])
        for g in groups[np.argsort(-scores[groups, o], kind="stable")]:
            _outline_group(ax, masks[g], CLASS_STYLE[labels[g]], scores[g, o], centres)
        n_void, n_cluster = (int(np.sum(labels[groups] == k)) for k in ("void", "cluster"))
        ax.set_title(
            f"{_name(output)}: {groups.size} top groups ({n_void} void"
            f"{'s' * (n_void != 1)}, {n_cluster} cluster{'s' * (n_cluster != 1)})",
            fontsize="small",
        )
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_xlabel(f"x [{unit}]", fontsize="small")
        ax.set_ylabel(f"y [{unit}]", fontsize="small")
        ax.tick_params(labelsize="x-small")
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    cbar.set_label(r"$\kappa$ in units of the map's $\sigma$ (bins combined)", fontsize="small")
    _class_legend(fig)
    fig.suptitle(title or "Top SOP groups and their weights", fontsize="medium")
    return save_figure(fig, out_png)


def _axes_extent(
    shape: tuple[int, int], pixel_scale_arcmin: float | None
) -> tuple[tuple[float, float, float, float], str, tuple[np.ndarray, np.ndarray]]:
    """Extent and unit of a map's axes (degrees if the pixel scale is known, else pixels), and
    the x and y of the pixel centres with one padding pixel each side, so that outlines close
    at the patch border."""
    h, w = shape
    if pixel_scale_arcmin:
        step = pixel_scale_arcmin / 60.0
        extent, unit = (0, w * step, 0, h * step), "deg"
    else:
        step, extent, unit = 1.0, (0, w, 0, h), "pixel"
    centres = ((np.arange(-1, w + 1) + 0.5) * step, (np.arange(-1, h + 1) + 0.5) * step)
    return extent, unit, centres


def _class_legend(fig: Figure) -> None:
    """The line style of each structure class, below the panels."""
    handles = [
        Line2D([], [], color=CLASS_STYLE[k]["color"], ls=ls, label=name)
        for k, ls, name in (
            ("cluster", "-", "cluster (C)"),
            ("void", "--", "void (V)"),
            ("", ":", "neither (–)"),
        )
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=3, fontsize="small", frameon=False
    )


def _checked_group_inputs(
    kappa: Any, masks: Any, scores: Any, labels: Any, outputs: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arguments of :func:`plot_groups` as arrays, refused unless their shapes agree."""
    kappa = np.asarray(kappa)
    masks = np.asarray(masks).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=str)
    if kappa.ndim != 3:
        raise InputError("argument 'kappa'", f"must have shape (C, H, W), got {kappa.shape}")
    if masks.ndim != 3 or masks.shape[1:] != kappa.shape[1:]:
        raise InputError(
            "argument 'masks'",
            f"must have shape (m, {kappa.shape[1]}, {kappa.shape[2]}), got {masks.shape}",
        )
    m = masks.shape[0]
    if scores.shape != (m, len(outputs)):
        raise InputError(
            "argument 'scores'", f"must have shape ({m}, {len(outputs)}), got {scores.shape}"
        )
    if labels.shape != (m,) or not set(labels) <= set(CLASS_STYLE):
        raise InputError(
            "argument 'labels'",
            f"must be {m} strings among 'void', 'cluster', '' (got {labels.tolist()})",
        )
    return kappa, masks, scores, labels


def _outline_group(
    ax: Axes,
    mask: np.ndarray,
    style: dict[str, str],
    weight: float,
    centres: tuple[np.ndarray, np.ndarray],
) -> None:
    """Outline one group in its class's line style and label it with its letter and weight."""
    centres_x, centres_y = centres
    ax.contour(
        centres_x,
        centres_y,
        np.pad(mask, 1).astype(float),
        levels=[0.5],
        colors=style["color"],
        linestyles=style["linestyles"],
        linewidths=1.2,
    )
    y, x = _label_position(mask)
    ax.text(
        centres_x[x + 1],
        centres_y[y + 1],
        f"{style['letter']} {weight:.2g}",
        ha="center",
        va="center",
        fontsize="x-small",
        bbox=dict(fc="white", ec="none", alpha=0.75, pad=0.8),
    )
