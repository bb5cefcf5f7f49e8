"""Figure of example convergence patches with the boundaries of their segments."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from cosmo_sop.errors import InputError
from cosmo_sop.figures import save_figure
from cosmo_sop.kappa import detection_map
from cosmo_sop.storage import open_zarr


def _segment_colours(n: int, seed: int = 0) -> ListedColormap:
    """Distinct, shuffled colours so that neighbouring labels rarely look alike."""
    from matplotlib import colormaps

    base = colormaps["tab20"](np.arange(20))
    order = np.random.default_rng([seed, n]).permutation(max(n, 1)) % 20
    return ListedColormap(base[order])


def plot_segments(
    kappa_store: str | os.PathLike,
    segments_store: str | os.PathLike,
    out_png: str | os.PathLike,
    n_maps: int = 6,
    seed: int = 0,
) -> Path:
    """Draw ``n_maps`` random patches, one per row: kappa of every bin with the segment
    boundaries on top, then the segments themselves over the map that was segmented.

    Each bin column shares one colour scale (diverging about kappa = 0, so over-dense regions
    are red and voids blue; 1st-99th percentile of the rows shown) with its colour bar at the
    bottom. Rows are titled with Omega_m, sigma_8, the split and the patch's origin. Axes in
    degrees. Written atomically to ``out_png`` and, beside it, the same figure as PDF.

    Returns
    -------
    Path
        ``out_png``.
    """
    patches = open_zarr(kappa_store, ("kappa",))
    segments = open_zarr(segments_store, ("segments",))
    maps, seg, coords = _examples(patches, segments, n_maps, seed, (kappa_store, segments_store))
    bins = patches["bin"].values if "bin" in patches.coords else np.arange(1, maps.shape[1] + 1)

    pixel_arcmin = float(patches.attrs.get("pixel_scale_arcmin", np.nan))
    size_deg = np.array(maps.shape[-2:]) * pixel_arcmin / 60.0
    extent = (0, size_deg[1], 0, size_deg[0]) if np.isfinite(pixel_arcmin) else None
    unit = "deg" if extent else "pixel"

    n_rows, n_bins = maps.shape[:2]
    n_cols = n_bins + 1
    fig = Figure(figsize=(2.1 * n_cols + 0.4, 2.25 * n_rows + 1.3), layout="constrained")
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1] * n_rows + [0.07])
    norms = []
    for b in range(n_bins):
        lo, hi = np.percentile(maps[:, b], [1, 99])
        lo, hi = min(lo, -1e-12), max(hi, 1e-12)  # the diverging scale needs 0 inside
        norms.append(TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi))

    image_kw = dict(origin="lower", extent=extent, interpolation="nearest")
    # "subpixel" boundaries lie between pixels (half-pixel grid from first to last pixel centre),
    # so lines are thin and hide no kappa pixel; the grid spans a quarter pixel less on each side.
    ny, nx = maps.shape[-2:]
    px_y, px_x = (size_deg / [ny, nx]) if extent else (1.0, 1.0)
    edge_kw = dict(
        origin="lower",
        interpolation="nearest",
        extent=(px_x / 4, (nx - 0.25) * px_x, px_y / 4, (ny - 0.25) * px_y),
    )
    for r in range(n_rows):
        on_edge = find_boundaries(seg[r], mode="subpixel")
        edges = np.ma.masked_where(~on_edge, np.ones(on_edge.shape))
        for b in range(n_cols):
            ax = fig.add_subplot(grid[r, b])
            if b < n_bins:
                im = ax.imshow(maps[r, b], cmap="RdBu_r", norm=norms[b], **image_kw)
                ax.imshow(edges, cmap=ListedColormap(["black"]), alpha=0.8, **edge_kw)
                _corner_label(ax, f"bin {bins[b]}")
                if r == n_rows - 1:
                    _colour_bar(fig, grid[n_rows, b], im, norms[b], bins[b])
            else:
                n_seg = int(seg[r].max()) + 1
                ax.imshow(detection_map(maps[r]), cmap="gray", **image_kw)
                colours = _segment_colours(n_seg, seed)
                ax.imshow(seg[r], cmap=colours, vmin=-0.5, vmax=n_seg - 0.5, alpha=0.45, **image_kw)
                ax.imshow(edges, cmap=ListedColormap(["black"]), alpha=0.9, **edge_kw)
                _corner_label(ax, f"{n_seg} segments")
            _label_axes(ax, extent, unit, first_column=b == 0, last_row=r == n_rows - 1)
            if b == 0:
                ax.set_title(_row_title(coords, r), loc="left", fontsize="small")
    fig.suptitle(_figure_title(patches.attrs, segments.attrs), fontsize="medium")

    return save_figure(fig, out_png)


def _examples(
    patches: xr.Dataset, segments: xr.Dataset, n_maps: int, seed: int, stores: tuple
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """kappa, segments and ``sample`` coordinates of ``n_maps`` random samples, in order."""
    kappa, labels = patches["kappa"], segments["segments"]
    if labels.sizes["sample"] != kappa.sizes["sample"] or labels.shape[1:] != kappa.shape[2:]:
        raise InputError(
            stores[1],
            f"segments {dict(labels.sizes)} do not match the patches of {stores[0]} "
            f"{dict(kappa.sizes)}",
        )
    n_samples = kappa.sizes["sample"]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_samples, min(n_maps, n_samples), replace=False))
    coords = {
        name: patches[name].values[rows]
        for name in patches.coords
        if patches[name].dims == ("sample",)
    }
    return kappa.isel(sample=rows).values, labels.isel(sample=rows).values, coords


def _corner_label(ax, text: str) -> None:
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        fontsize="x-small",
        bbox=dict(fc="white", ec="none", alpha=0.7, pad=1),
    )


def _colour_bar(fig: Figure, spec, image, norm: TwoSlopeNorm, tomo_bin: int) -> None:
    cbar = fig.colorbar(image, cax=fig.add_subplot(spec), orientation="horizontal")
    cbar.set_label(rf"$\kappa$, bin {tomo_bin}", fontsize="small")
    # the two halves of the diverging scale differ: label ends and centre only
    lo, hi = norm.vmin, norm.vmax
    cbar.set_ticks([lo, 0.0, hi], labels=[f"{lo:.2g}", "0", f"{hi:.2g}"])
    cbar.ax.tick_params(labelsize="x-small")


def _label_axes(ax, extent, unit: str, *, first_column: bool, last_row: bool) -> None:
    """Limits, ticks and axis labels of one panel: labels on the outer panels only."""
    if extent:
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
    ax.tick_params(labelsize="x-small")
    if first_column:
        ax.set_ylabel(f"y [{unit}]", fontsize="x-small")
    else:
        ax.set_yticklabels([])
    if last_row:
        ax.set_xlabel(f"x [{unit}]", fontsize="x-small")
    else:
        ax.set_xticklabels([])


def _row_title(coords: dict[str, np.ndarray], row: int) -> str:
    parts = []
    if "Om" in coords and "s8" in coords:
        parts.append(rf"$\Omega_m$ = {coords['Om'][row]:.3f}, $\sigma_8$ = {coords['s8'][row]:.3f}")
    if "split" in coords:
        parts.append(str(coords["split"][row]))
    origin = [str(coords["cosmology"][row])] if "cosmology" in coords else []
    if "perm" in coords:
        origin.append(f"perm {int(coords['perm'][row])}")
    if "patch_index" in coords:
        origin.append(f"patch {int(coords['patch_index'][row])}")
    if origin:
        parts.append(" ".join(origin))
    return "  |  ".join(parts)


def _figure_title(patch_attrs: dict, segment_attrs: dict) -> str:
    try:
        method = json.loads(segment_attrs.get("segmentation", "{}")).get("method", "?")
    except json.JSONDecodeError:
        method = "?"
    parts = [f"Segments ({method})"]
    if "noise_level" in patch_attrs:
        parts.append(f"noise level '{patch_attrs['noise_level']}'")
    if "pixel_scale" in patch_attrs:
        parts.append(f"pixel {patch_attrs['pixel_scale']}")
    return ", ".join(parts)
