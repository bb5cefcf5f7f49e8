"""Overview figure of a (mock) CosmoGridV1: maps, power spectra against theory, one-point PDFs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import healpy as hp
import numpy as np
from matplotlib.figure import Figure

from cosmo_sop.errors import InputError
from cosmo_sop.figures import save_figure
from cosmo_sop.sources.cosmogrid.layout import (
    HDF5_ERRORS,
    KAPPA_GROUP,
    cosmology_id,
    map_path,
    metainfo_path,
)
from cosmo_sop.sources.cosmogrid.maps import read_kappa
from cosmo_sop.sources.cosmogrid.metainfo import read_parameters
from cosmo_sop.sources.mock.lognormal import lognormal_shifts
from cosmo_sop.sources.mock.simulate import mock_settings
from cosmo_sop.sources.mock.spectra import (
    auto_spectra,
    ccl_cosmology,
    convergence_spectra,
    tomographic_nz,
)
from cosmo_sop.sources.mock.writer import PROVENANCE_ATTR, config_record

#: Number of logarithmic multipole bands of the measured spectra.
N_BANDS = 16


def _read_parameters(
    root: Path, mock_config: Mapping[str, Any] | None
) -> tuple[np.ndarray, dict | None]:
    """The ``parameters/grid`` table and, for a mock, its config (None for a real release),
    checked to be ``mock_config`` if that is given."""
    parameters = read_parameters(root, "grid")
    with h5py.File(metainfo_path(root), "r") as f:
        record = f.attrs.get(PROVENANCE_ATTR)
    config = json.loads(record)["config"] if record is not None else None
    if mock_config is not None:
        expected = json.loads(json.dumps(config_record(mock_settings(mock_config))))
        if config is None or config != expected:
            raise InputError(
                metainfo_path(root),
                "was not written by the mock with the given mock config; rerun simulate-mock",
            )
    return parameters, config


def _read_maps(path: Path) -> np.ndarray:
    """All tomographic bins of one map file, through the same reader as the ingest step."""
    try:
        with h5py.File(path, "r") as f:
            names = list(f.get(KAPPA_GROUP, {}))
    except HDF5_ERRORS:
        names = []  # missing, unreadable or damaged: read_kappa names the problem
    n_bins = max(1, sum(name.startswith("stage3_lensing") for name in names))
    return read_kappa(path, list(range(1, n_bins + 1)))


def _band_average(
    ell: np.ndarray, cl: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Band centres and mode-weighted (2l+1) band averages of l(l+1)C_l/2pi."""
    weight = 2 * ell + 1
    index = np.digitize(ell, edges) - 1
    keep = (index >= 0) & (index < len(edges) - 1)
    counts = np.bincount(index[keep], weight[keep], minlength=len(edges) - 1)
    dl = ell * (ell + 1) * cl / (2 * np.pi)
    means = np.bincount(index[keep], (weight * dl)[keep], minlength=len(edges) - 1) / counts
    return np.sqrt(edges[:-1] * edges[1:]), means


def _draw_map(fig: Figure, ax, kappa: np.ndarray, title: str, xsize: int) -> None:
    """Mollweide view of one HEALPix map (healpy's projector, no pyplot)."""
    nside = hp.npix2nside(kappa.size)
    projector = hp.projector.MollweideProj(xsize=xsize)
    image = projector.projmap(kappa.astype(np.float64), partial(hp.vec2pix, nside))
    image = np.ma.masked_where(~np.isfinite(image), image)  # outside the ellipse
    low, high = np.percentile(kappa, [0.5, 99.5])
    shown = ax.imshow(
        image, origin="lower", cmap="magma", vmin=low, vmax=high, interpolation="nearest"
    )
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    colorbar = fig.colorbar(
        shown, ax=ax, orientation="horizontal", fraction=0.08, pad=0.02, label=r"$\kappa$"
    )
    colorbar.ax.locator_params(nbins=4)


def plot_mock_overview(
    root: str | os.PathLike,
    out_png: str | os.PathLike,
    mock_config: Mapping[str, Any] | None = None,
    *,
    n_cosmologies: int = 3,
    perm: int = 0,
    xsize: int = 600,
    pdf: bool = True,
) -> Path:
    """Draw maps, spectra and one-point PDFs of the first cosmologies of a CosmoGridV1 tree.

    Row 1: Mollweide view of every tomographic bin of the first cosmology. Row 2: measured
    convergence spectra (``healpy.anafast``, mode-weighted in logarithmic bands) of the first
    ``n_cosmologies`` cosmologies against the CCL input that the mock used. Row 3: one-point PDF
    of each bin, with the lognormal floor ``-lambda`` of the mock. For a tree that the mock did
    not write (a real CosmoGridV1), the theory curves and floors are left out.

    Parameters
    ----------
    root
        Folder holding ``CosmoGridV1_metainfo.h5`` and ``stage3_forecast/``.
    out_png
        Output PNG; a PDF is written beside it when ``pdf`` is true. Both are written atomically.
    mock_config
        The ``mock`` config section the figure should describe. If given, the mock under
        ``root`` must have been written with it (else :class:`InputError`: rerun the
        simulation); if not, the config recorded in the metainfo is used.
    n_cosmologies
        How many cosmologies (from the top of ``parameters/grid``) to show in rows 2 and 3.
    perm
        Permutation whose maps are shown.
    xsize
        Width in pixels of the Mollweide projections.
    pdf
        Also write a PDF.

    Returns
    -------
    Path
        The PNG written.
    """
    root = Path(root)
    parameters, config = _read_parameters(root, mock_config)
    rows = parameters[: max(1, n_cosmologies)]
    maps = [_read_maps(map_path(root, row["path_par"], perm, False)) for row in rows]
    n_bins, npix = maps[0].shape
    nside = hp.npix2nside(npix)
    lmax = min(3 * nside - 1, config["lmax"] if config else 2 * nside)
    theory = _theory(rows, config, lmax)
    titles = [f"bin {b + 1}" for b in range(n_bins)]
    if theory is not None:
        titles = [f"{title}, <z> = {zm:.2f}" for title, zm in zip(titles, theory["z_mean"])]

    fig = Figure(figsize=(3.2 * n_bins, 8.4), layout="constrained")
    axes = fig.subplots(3, n_bins, squeeze=False, height_ratios=[1.0, 1.2, 1.2])
    for b in range(n_bins):
        _draw_map(fig, axes[0, b], maps[0][b], titles[b], xsize)
        _draw_bin(axes[1, b], axes[2, b], b, rows, maps, theory, lmax)
    axes[1, 0].set_ylabel(r"$\ell(\ell+1)C_\ell/2\pi$")
    axes[2, 0].set_ylabel("PDF")
    legend_title = "points: anafast, lines: CCL" if theory is not None else None
    axes[1, 0].legend(fontsize=7, title=legend_title, title_fontsize=7)
    if theory is not None:
        axes[2, 0].legend(fontsize=7, title=r"dotted: floor $-\lambda$", title_fontsize=7)
    first = rows[0]
    source = "cosmo-sop mock" if config is not None else "CosmoGridV1"
    fig.suptitle(
        f"{source} (nside {nside}, perm {perm}); "
        f"maps: {cosmology_id(first['path_par'])}, "
        rf"$\Omega_m$={first['Om']:.3f}, $\sigma_8$={first['s8']:.3f}"
    )

    return save_figure(fig, out_png, pdf=pdf, dpi=130)


def _theory(rows: np.ndarray, config: dict | None, lmax: int) -> dict | None:
    """CCL spectra (``cl``), lognormal floors (``shifts``) and mean redshift of each bin
    (``z_mean``) that the mock used for ``rows``; None for a tree the mock did not write."""
    if config is None:
        return None
    z, nz = tomographic_nz(config["redshift"])
    return {
        "cl": [auto_spectra(convergence_spectra(ccl_cosmology(row), z, nz, lmax)) for row in rows],
        "shifts": [lognormal_shifts(z, nz, row["Om"]) for row in rows],
        "z_mean": np.trapezoid(z * nz, z, axis=-1),
    }


def _draw_bin(
    ax_cl, ax_pdf, b: int, rows: np.ndarray, maps: list, theory: dict | None, lmax: int
) -> None:
    """Measured spectra against theory, and one-point PDFs, of bin ``b`` of every row."""
    ell = np.arange(lmax + 1)
    edges = np.unique(np.geomspace(2, lmax + 1, N_BANDS + 1).astype(int))
    for i, (row, kappa) in enumerate(zip(rows, maps)):
        colour = f"C{i}"
        label = rf"$\Omega_m$={row['Om']:.3f}, $\sigma_8$={row['s8']:.3f}"
        cl = hp.anafast(kappa[b].astype(np.float64), lmax=lmax)
        centres, measured = _band_average(ell, cl, edges)
        ax_cl.plot(centres, measured, "o", ms=3, color=colour, label=label)
        if theory is not None:
            dl = ell * (ell + 1) * theory["cl"][i][b] / (2 * np.pi)
            ax_cl.plot(ell[2:], dl[2:], "-", lw=1, color=colour)
        density, bin_edges = np.histogram(kappa[b], bins=80, density=True)
        ax_pdf.stairs(density, bin_edges, color=colour, label=label)
        if theory is not None:
            ax_pdf.axvline(-theory["shifts"][i][b], color=colour, ls=":", lw=1)
    ax_cl.set(xscale="log", yscale="log", xlabel=r"$\ell$")
    ax_pdf.set(yscale="log", xlabel=r"$\kappa$")
    ax_pdf.locator_params(axis="x", nbins=4)
