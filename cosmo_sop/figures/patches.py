"""Figure of the patch dataset: where the patches lie on the sky, and example patches per bin."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from cosmo_sop.figures import save_figure
from cosmo_sop.ingest.patches import patch_outline
from cosmo_sop.storage import open_zarr

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def example_rows(dataset: xr.Dataset, n_maps: int, seed: int = 0) -> np.ndarray:
    """Sample indices to show: one per split in turn (train, val, test), drawn at random."""
    rng = np.random.default_rng([seed, n_maps])
    split = dataset["split"].values
    pools = [np.flatnonzero(split == name) for name in SPLIT_COLOURS]
    pools = [rng.permutation(pool) for pool in pools if pool.size]
    rows = [pool[i] for i in range(n_maps) for pool in pools if i < pool.size]
    return np.array(rows[:n_maps], dtype=int)


def _sky_panel(fig: Figure, spec, dataset: xr.Dataset, shown_patches: np.ndarray) -> None:
    """Mollweide view of every patch footprint; the patches drawn below are filled."""
    ax = fig.add_subplot(spec, projection="mollweide")
    lon = dataset["patch_lon"].values
    lat = dataset["patch_lat"].values
    index = dataset["patch_index"].values
    _, first = np.unique(index, return_index=True)
    ny, nx = dataset.sizes["y"], dataset.sizes["x"]
    pixel = float(dataset.attrs["pixel_scale_arcmin"])
    for i in first:
        outline_lon, outline_lat = patch_outline(lon[i], lat[i], max(nx, ny), pixel)
        # Astronomical convention (east left, as healpy.mollview): plot minus the longitude.
        x = -np.radians((outline_lon + 180.0) % 360.0 - 180.0)
        y = np.radians(outline_lat)
        x[np.flatnonzero(np.abs(np.diff(x)) > np.pi) + 1] = np.nan  # break at the +-180 seam
        filled = index[i] in shown_patches
        ax.plot(x, y, color="tab:red" if filled else "0.3", lw=1.2 if filled else 0.6)
        ax.text(
            -np.radians((lon[i] + 180.0) % 360.0 - 180.0),
            np.radians(lat[i]),
            str(index[i]),
            ha="center",
            va="center",
            fontsize=5,
            color="0.3",
        )
    ticks = np.radians([-120, -60, 0, 60, 120])
    ax.set_xticks(ticks, labels=[f"{(-np.degrees(t)) % 360:.0f}°" for t in ticks])
    ax.tick_params(labelsize="x-small")
    ax.grid(True, lw=0.3)
    ax.set_title(f"{len(first)} patch footprints per map (red: shown below)", fontsize="small")


def plot_patches(
    store: str | os.PathLike, out_png: str | os.PathLike, n_maps: int = 3, seed: int = 0
) -> Path:
    """Draw the patch footprints on the sky and ``n_maps`` example patches, one row each.

    Rows alternate between the splits and are titled with Omega_m, sigma_8, the split and the
    patch's origin; each tomographic bin is a column with one diverging colour scale (about
    kappa = 0, 1st-99th percentile of the rows shown). Patches are shown north up, east left.
    Written atomically to ``out_png`` and, beside it, the same figure as PDF.

    Returns
    -------
    Path
        ``out_png``.
    """
    dataset = open_zarr(store, ("kappa", "patch_lon", "patch_lat", "patch_index", "split"))
    rows = example_rows(dataset, n_maps, seed)
    maps = dataset["kappa"].isel(sample=rows).values
    bins = dataset["bin"].values
    pixel = float(dataset.attrs["pixel_scale_arcmin"])
    ny, nx = maps.shape[-2:]
    extent = (0, nx * pixel / 60.0, 0, ny * pixel / 60.0)

    n_rows, n_bins = len(rows), len(bins)
    fig = Figure(figsize=(2.2 * n_bins + 0.6, 2.3 * n_rows + 4.0), layout="constrained")
    grid = fig.add_gridspec(n_rows + 2, n_bins, height_ratios=[3.2] + [1] * n_rows + [0.07])
    _sky_panel(fig, grid[0, :], dataset, dataset["patch_index"].values[rows])

    for b in range(n_bins):
        lo, hi = np.percentile(maps[:, b], [1, 99])
        norm = TwoSlopeNorm(vcenter=0.0, vmin=min(lo, -1e-12), vmax=max(hi, 1e-12))
        for r, sample in enumerate(rows):
            ax = fig.add_subplot(grid[1 + r, b])
            image = ax.imshow(
                maps[r, b],
                cmap="RdBu_r",
                norm=norm,
                origin="lower",
                extent=extent,
                interpolation="nearest",
            )
            ax.tick_params(labelsize="x-small")
            if b == 0:
                ax.set_title(_row_title(dataset, int(sample)), loc="left", fontsize="small")
                ax.set_ylabel("y [deg] (north up)", fontsize="x-small")
            else:
                ax.set_yticklabels([])
            if r == n_rows - 1:
                ax.set_xlabel("x [deg] (east left)", fontsize="x-small")
            else:
                ax.set_xticklabels([])
        cax = fig.add_subplot(grid[n_rows + 1, b])
        cbar = fig.colorbar(image, cax=cax, orientation="horizontal")
        cbar.set_label(rf"$\kappa$, bin {bins[b]}", fontsize="small")
        cbar.set_ticks(
            [norm.vmin, 0.0, norm.vmax], labels=[f"{norm.vmin:.2g}", "0", f"{norm.vmax:.2g}"]
        )
        cbar.ax.tick_params(labelsize="x-small")

    fig.suptitle(
        f"Patches: {dataset.sizes['sample']} samples of {ny} x {nx} pixels of "
        f"{dataset.attrs.get('pixel_scale', f'{pixel} arcmin')}, from nside "
        f"{dataset.attrs.get('nside', '?')} maps ({dataset.attrs.get('source', '?')})",
        fontsize="medium",
    )
    return save_figure(fig, out_png)


def _row_title(dataset: xr.Dataset, sample: int) -> str:
    values = {
        name: dataset[name].values[sample]
        for name in ("Om", "s8", "split", "cosmology", "perm", "patch_index")
        if name in dataset.coords
    }
    parts = []
    if "Om" in values and "s8" in values:
        parts.append(rf"$\Omega_m$ = {values['Om']:.3f}, $\sigma_8$ = {values['s8']:.3f}")
    origin = [str(values[k]) for k in ("split", "cosmology") if k in values]
    if "perm" in values:
        origin.append(f"perm {int(values['perm'])}")
    origin.append(f"patch {int(values['patch_index'])}")
    parts.append(" ".join(origin))
    return "\n".join(parts)
