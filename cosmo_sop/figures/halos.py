"""Figures of the halo mock's physics checks (:mod:`cosmo_sop.sources.mock.diagnostics`).

Four figures and one JSON of the numbers they show, all in ``results/figures/``:
``mock_halo_counts`` (halo counts per redshift and mass bin against the mass function),
``mock_halo_spectra`` (measured over halofit power, both mocks), ``mock_halo_peaks`` (peak
counts above S/N against sigma_8, both mocks) and ``mock_halo_pdf`` (one-point PDFs and their
high-kappa tails).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from cosmo_sop import layout
from cosmo_sop.figures import save_figure
from cosmo_sop.sources.mock.diagnostics import (
    OMEGA_M,
    DiagnosticRun,
    band_power_ratios,
    count_edges,
    count_table,
    diagnostic_run,
    expected_count_table,
    log_slope,
    peak_counts_above,
    peak_information,
    tail_fraction,
)
from cosmo_sop.sources.mock.simulate import mock_settings
from cosmo_sop.storage import write_json

#: Peak S/N thresholds of the peaks figure; :data:`PEAK_THRESHOLD` is the one the tests check.
PEAK_THRESHOLDS = np.array([3.0, 4.0, 5.0, 6.0, 8.0])
PEAK_THRESHOLD = 4.0
#: Quantile of the lognormal-only map above which the tail fraction is measured.
TAIL_QUANTILE = 0.9999
_MOCKS = (("lognormal", "lognormal only", "C0"), ("with_halos", "with halos", "C3"))


def halo_diagnostics(run: DiagnosticRun) -> dict:
    """The numbers of the figures: counts, band-power ratios, peak counts, tail fractions."""
    middle = len(run.sigma8) // 2
    lmax = len(run.halofit[0][0]) - 1
    edges = np.unique(np.geomspace(10, lmax + 1, 7).astype(int))
    peaks = {
        mock: np.array([peak_counts_above(maps, run.nside, PEAK_THRESHOLDS) for maps in stack])
        for mock, stack in (("lognormal", run.lognormal), ("with_halos", run.with_halos))
    }
    thresholds = [np.quantile(maps, TAIL_QUANTILE, axis=1) for maps in run.lognormal]
    z_edges, m_edges = count_edges(run.model)
    return {
        "sigma8": run.sigma8.tolist(),
        "omega_m": OMEGA_M,
        "nside": run.nside,
        "counts": {
            "z_edges": z_edges.tolist(),
            "log10m_edges": m_edges.tolist(),
            "sampled": count_table(run.catalogues[middle], run.model).tolist(),
            "expected": expected_count_table(run.parameters[middle], run.model).tolist(),
            "total_sampled": len(run.catalogues[middle]),
        },
        "spectra": {
            "band_edges": edges.tolist(),
            "lognormal": [
                band_power_ratios(m, s, edges).tolist() for m, s in zip(run.lognormal, run.halofit)
            ],
            "with_halos": [
                band_power_ratios(m, s, edges).tolist() for m, s in zip(run.with_halos, run.halofit)
            ],
        },
        "peaks": {
            "thresholds": PEAK_THRESHOLDS.tolist(),
            **{mock: counts.tolist() for mock, counts in peaks.items()},
            "log_slope": {
                mock: [log_slope(c, run.sigma8) for c in counts.T] for mock, counts in peaks.items()
            },
            "fisher_sigma8": {
                mock: [peak_information(c, run.sigma8) for c in counts.T]
                for mock, counts in peaks.items()
            },
        },
        "tail": {
            "quantile": TAIL_QUANTILE,
            "lognormal": [tail_fraction(m, t).tolist() for m, t in zip(run.lognormal, thresholds)],
            "with_halos": [
                tail_fraction(m, t).tolist() for m, t in zip(run.with_halos, thresholds)
            ],
        },
    }


def plot_halo_diagnostics(
    mock_config: Mapping[str, Any] | None, seed: int, output_dir: str | os.PathLike
) -> dict:
    """Run the diagnostics of a ``mock`` config and write the four figures and the JSON.

    Returns
    -------
    dict
        The numbers (:func:`halo_diagnostics`), also written as
        ``output_dir/mock_halos.json``.
    """
    cfg = mock_settings(mock_config)
    with tqdm(total=2, desc="halo diagnostics", unit="step") as bar:
        run = diagnostic_run(cfg, seed)
        bar.update()
        numbers = halo_diagnostics(run)
        bar.update()
    write_halo_figures(run, numbers, output_dir)
    return numbers


def write_halo_figures(run: DiagnosticRun, numbers: dict, output_dir: str | os.PathLike) -> None:
    """Write the four figures and the JSON of :func:`halo_diagnostics` into ``output_dir``."""
    output_dir = Path(output_dir)
    _plot_counts(numbers, output_dir / layout.HALO_FIGURES["counts"])
    _plot_spectra(numbers, output_dir / layout.HALO_FIGURES["spectra"])
    _plot_peaks(numbers, output_dir / layout.HALO_FIGURES["peaks"])
    _plot_pdf(run, numbers, output_dir / layout.HALO_FIGURES["pdf"])
    write_json(output_dir / layout.HALO_DIAGNOSTICS, numbers)


def _plot_counts(numbers: dict, out_png: Path) -> Path:
    counts = numbers["counts"]
    sampled, expected = np.array(counts["sampled"]), np.array(counts["expected"])
    z_edges, m_edges = np.array(counts["z_edges"]), np.array(counts["log10m_edges"])
    z_mid = 0.5 * (z_edges[1:] + z_edges[:-1])
    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    ax, pull_ax = fig.subplots(1, 2)
    for j in range(sampled.shape[1]):
        label = rf"$10^{{{m_edges[j]:.2f}}}$-$10^{{{m_edges[j + 1]:.2f}}}\,M_\odot$"
        ax.plot(z_mid, expected[:, j], "-", color=f"C{j}", label=label)
        ax.errorbar(z_mid, sampled[:, j], np.sqrt(sampled[:, j]), fmt="o", ms=3, color=f"C{j}")
        pull = (sampled[:, j] - expected[:, j]) / np.sqrt(np.maximum(expected[:, j], 1.0))
        pull_ax.plot(z_mid, pull, "o-", ms=3, color=f"C{j}")
    ax.set(yscale="log", xlabel="z", ylabel="halos per bin (full sky)")
    ax.legend(fontsize=7, title="lines: mass function, points: sampled", title_fontsize=7)
    pull_ax.axhspan(-2, 2, color="0.9")
    pull_ax.set(xlabel="z", ylabel=r"(sampled $-$ expected) / $\sqrt{\rm expected}$")
    fig.suptitle(
        rf"Halo counts, $\Omega_m$={numbers['omega_m']}, "
        rf"$\sigma_8$={numbers['sigma8'][len(numbers['sigma8']) // 2]}: "
        f"{counts['total_sampled']} halos"
    )
    return save_figure(fig, out_png)


def _plot_spectra(numbers: dict, out_png: Path) -> Path:
    spectra = numbers["spectra"]
    edges = np.array(spectra["band_edges"])
    centres = np.sqrt(edges[1:] * edges[:-1])
    n_bins = len(spectra["with_halos"][0])
    fig = Figure(figsize=(3.0 * n_bins, 3.2), layout="constrained")
    axes = fig.subplots(1, n_bins, sharey=True, squeeze=False)[0]
    for b, ax in enumerate(axes):
        for n, s8 in enumerate(numbers["sigma8"]):
            for mock, label, _ in _MOCKS:
                style = "-o" if mock == "with_halos" else ":s"
                ax.plot(
                    centres,
                    np.array(spectra[mock][n])[b],
                    style,
                    ms=3,
                    color=f"C{n}",
                    label=rf"$\sigma_8$={s8}, {label}",
                )
        ax.axhspan(0.9, 1.1, color="0.92")
        ax.set(xscale="log", xlabel=r"$\ell$", title=f"bin {b + 1}")
    axes[0].set_ylabel("measured / halofit power")
    axes[0].legend(fontsize=6)
    fig.suptitle("Convergence power against the halofit target (one full-sky realisation)")
    return save_figure(fig, out_png)


def _plot_peaks(numbers: dict, out_png: Path) -> Path:
    peaks = numbers["peaks"]
    sigma8 = np.array(numbers["sigma8"])
    thresholds = np.array(peaks["thresholds"])
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    count_ax, slope_ax, info_ax = fig.subplots(1, 3)
    for mock, label, colour in _MOCKS:
        counts = np.array(peaks[mock])
        for t, threshold in enumerate(thresholds):
            count_ax.plot(
                sigma8,
                np.maximum(counts[:, t], 0.5),
                "-o" if mock == "with_halos" else ":s",
                ms=3,
                color=f"C{t}",
                label=f"S/N > {threshold:g}" if mock == "with_halos" else None,
            )
        slope_ax.plot(thresholds, peaks["log_slope"][mock], "-o", color=colour, label=label)
        info_ax.plot(thresholds, peaks["fisher_sigma8"][mock], "-o", color=colour, label=label)
    count_ax.set(
        xscale="log", yscale="log", xlabel=r"$\sigma_8$", ylabel="peaks (full sky, all bins)"
    )
    count_ax.legend(fontsize=7, title="solid: with halos, dotted: lognormal", title_fontsize=7)
    slope_ax.set(xlabel="S/N threshold", ylabel=r"d ln N / d ln $\sigma_8$")
    info_ax.set(xlabel="S/N threshold", ylabel=r"$(dN/d\sigma_8)^2 / N$", yscale="log")
    slope_ax.legend(fontsize=7)
    fig.suptitle(rf"Peaks above S/N (stage-3 noise of one pixel), $\Omega_m$={numbers['omega_m']}")
    return save_figure(fig, out_png)


def _plot_pdf(run: DiagnosticRun, numbers: dict, out_png: Path) -> Path:
    n_bins = run.lognormal.shape[1]
    fig = Figure(figsize=(3.0 * n_bins, 3.2), layout="constrained")
    axes = fig.subplots(1, n_bins, squeeze=False)[0]
    for b, ax in enumerate(axes):
        for n, s8 in enumerate(run.sigma8):
            for mock, label, _ in _MOCKS:
                maps = getattr(run, mock)[n, b]
                edges = np.linspace(maps.min(), np.quantile(run.with_halos[n, b], 1.0), 120)
                density, _ = np.histogram(maps, edges, density=True)
                ax.step(
                    edges[:-1],
                    np.where(density > 0, density, np.nan),
                    where="post",
                    ls="-" if mock == "with_halos" else ":",
                    color=f"C{n}",
                    label=rf"$\sigma_8$={s8}, {label}",
                )
        ax.set(yscale="log", xlabel=r"$\kappa$", title=f"bin {b + 1}")
    axes[0].set_ylabel("PDF")
    axes[0].legend(fontsize=6)
    fig.suptitle(r"One-point PDF: the halos' high-$\kappa$ tail")
    return save_figure(fig, out_png)
