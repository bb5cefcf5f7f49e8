"""Physics checks of the halo mock against the lognormal-only mock, on full-sky maps.

One diagnostic run (:func:`diagnostic_run`) simulates, at the mock's resolution and redshift
distributions, one realisation per sigma_8 at fixed Omega_m, with and without halos, from the
same seeds: the lognormal fields then share their random numbers (not their spectra, which the
halos' one-halo term lowers). :mod:`cosmo_sop.figures.halos` draws it and the test suite checks
it: halo counts against the mass function, power spectra against halofit, high-significance
peaks and the one-point tail.

Peaks are local maxima over the 8 HEALPix neighbours, in units of the shape noise of one pixel
(``sigma_e / sqrt(n_gal A_pix)``, as :func:`cosmo_sop.noise.pixel_noise_sigma`): the pixel is
the smoothing, the scale at which the ingest step reads the maps (nearest pixel, no
interpolation), with an optional extra Gaussian smoothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import healpy as hp
import numpy as np

from cosmo_sop.noise import pixel_noise_sigma
from cosmo_sop.sources.mock.halos import (
    HaloCatalogue,
    HaloModel,
    expected_counts,
    field_spectra,
    halo_convergence,
    halo_rng,
    one_halo_spectra,
)
from cosmo_sop.sources.mock.lognormal import (
    gaussian_spectra,
    generate_maps,
    lognormal_shifts,
    map_rng,
)
from cosmo_sop.sources.mock.spectra import ccl_cosmology, convergence_spectra, tomographic_nz

#: sigma_8 values of the diagnostic run, at the fiducial Omega_m.
SIGMA8 = (0.6, 0.8, 1.0)
OMEGA_M = 0.3
#: Shape noise of the stage-3 noise level of the demo config (per bin).
SIGMA_E, N_GAL_ARCMIN2 = 0.26, 10.0
#: Coarse redshift bins in which halo counts are compared with the mass function (to z_max).
COUNT_Z_STEP = 0.25
#: Upper edges of the coarse mass bins above the floor, log10(M / M_sun); the last bin is open.
COUNT_LOG10M_UPPER = (14.75, 15.0, 15.25)


def count_edges(model: HaloModel) -> tuple[np.ndarray, np.ndarray]:
    """Coarse (redshift, log10 mass) bins of the count check: steps of :data:`COUNT_Z_STEP`
    to ``z_max``, and from the mass floor through :data:`COUNT_LOG10M_UPPER` to the top."""
    z_edges = np.append(np.arange(0.0, model.z_max, COUNT_Z_STEP), model.z_max)
    inner = [m for m in COUNT_LOG10M_UPPER if model.log10_mass_min < m < model.log10_mass_max]
    m_edges = np.array([model.log10_mass_min, *inner, model.log10_mass_max])
    return z_edges, m_edges


@dataclass(frozen=True)
class DiagnosticRun:
    """Maps and theory of one diagnostic run, per sigma_8 (first axis)."""

    sigma8: np.ndarray  #: (n_s8,)
    nside: int
    lognormal: np.ndarray  #: (n_s8, n_bins, npix) float32, lognormal-only mock
    with_halos: np.ndarray  #: (n_s8, n_bins, npix) float32, halo mock
    halofit: list[list[np.ndarray]]  #: per sigma_8, target spectra in GLASS standard order
    one_halo: list[list[np.ndarray]]  #: per sigma_8, the halos' one-halo spectra
    catalogues: list[HaloCatalogue]  #: per sigma_8
    model: HaloModel
    parameters: list[dict]  #: per sigma_8, the cosmology (as a row of the parameters table)


def diagnostic_run(
    mock_config: Mapping[str, Any], seed: int, sigma8: Sequence[float] = SIGMA8
) -> DiagnosticRun:
    """Simulate the diagnostic maps of a (complete) ``mock`` config; the halo settings are
    taken from ``mock.halos`` whether or not the mock itself is painted with them."""
    cfg = mock_config
    model = HaloModel.from_config(cfg["halos"])
    z, nz = tomographic_nz(cfg["redshift"])
    fiducial = {key: float(value) for key, value in cfg["fiducial"].items()}
    lognormal, with_halos, halofit, one_halo, catalogues, rows = [], [], [], [], [], []
    for n, s8 in enumerate(sigma8):
        row = {"Om": OMEGA_M, "s8": s8, "H0": 100 * fiducial["h"], "wa": 0.0, **fiducial}
        cosmo = ccl_cosmology(row)
        spectra = convergence_spectra(cosmo, z, nz, cfg["lmax"])
        halos = one_halo_spectra(cosmo, model, z, nz, cfg["lmax"])
        shifts = lognormal_shifts(z, nz, OMEGA_M)
        plain = generate_maps(
            gaussian_spectra(spectra, shifts), shifts, cfg["nside"], map_rng(seed, n, 0)
        )
        field = generate_maps(
            gaussian_spectra(field_spectra(spectra, halos), shifts),
            shifts,
            cfg["nside"],
            map_rng(seed, n, 0),
        )
        kappa, catalogue = halo_convergence(cosmo, model, z, nz, cfg["nside"], halo_rng(seed, n, 0))
        lognormal.append(plain)
        with_halos.append(field + kappa.astype(np.float32))
        halofit.append(spectra)
        one_halo.append(halos)
        catalogues.append(catalogue)
        rows.append(row)
    return DiagnosticRun(
        np.asarray(sigma8, dtype=float),
        int(cfg["nside"]),
        np.stack(lognormal),
        np.stack(with_halos),
        halofit,
        one_halo,
        catalogues,
        model,
        rows,
    )


# ----------------------------------------------------------------------------------------------
# halo counts


def count_table(catalogue: HaloCatalogue, model: HaloModel) -> np.ndarray:
    """Halos of a catalogue per coarse (redshift, log10 mass) bin (:func:`count_edges`)."""
    counts, _, _ = np.histogram2d(catalogue.z, catalogue.log10_mass, count_edges(model))
    return counts


def expected_count_table(
    cosmo_parameters: Mapping[str, float], model: HaloModel, step: float = 0.01
) -> np.ndarray:
    """Mean halo counts per coarse bin: :func:`expected_counts` on sub-cells of ``step`` in
    redshift and log10 mass, summed."""
    cosmo = ccl_cosmology(cosmo_parameters)
    z_edges, log10m_edges = count_edges(model)
    table = np.zeros((len(z_edges) - 1, len(log10m_edges) - 1))
    for i, (z_lo, z_hi) in enumerate(zip(z_edges[:-1], z_edges[1:])):
        z_cells = np.linspace(z_lo, z_hi, max(1, round((z_hi - z_lo) / step)) + 1)
        for j, (m_lo, m_hi) in enumerate(zip(log10m_edges[:-1], log10m_edges[1:])):
            m_cells = np.linspace(m_lo, m_hi, max(1, round((m_hi - m_lo) / step)) + 1)
            table[i, j] = expected_counts(cosmo, model, z_cells, m_cells).sum()
    return table


# ----------------------------------------------------------------------------------------------
# power spectra


def band_power_ratios(maps: np.ndarray, spectra: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    """Measured over target auto-power of each bin in multipole bands.

    Parameters
    ----------
    maps
        Shape (n_bins, npix).
    spectra
        Target spectra in GLASS standard order (auto-spectrum of bin ``b`` at ``b(b+1)/2``).
    edges
        Band edges in l (bands ``[edges[i], edges[i+1])``).

    Returns
    -------
    ndarray, shape (n_bins, n_bands)
        ``sum_band (2l+1) C_l^measured / sum_band (2l+1) C_l^target`` (anafast, no pixel window).
    """
    lmax = int(edges[-1]) - 1
    ell = np.arange(lmax + 1)
    ratios = np.empty((len(maps), len(edges) - 1))
    for b, kappa in enumerate(maps):
        measured = hp.anafast(kappa.astype(np.float64), lmax=lmax, use_pixel_weights=False)
        target = spectra[b * (b + 1) // 2][: lmax + 1]
        for n, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            band = (ell >= lo) & (ell < hi)
            weight = 2 * ell[band] + 1
            ratios[b, n] = np.sum(weight * measured[band]) / np.sum(weight * target[band])
    return ratios


# ----------------------------------------------------------------------------------------------
# peaks and the one-point tail


def noise_sigma(nside: int) -> float:
    """Stage-3 shape noise of one pixel of a HEALPix map of this resolution (per bin)."""
    pixel_arcmin = np.degrees(np.sqrt(hp.nside2pixarea(nside))) * 60.0
    return float(pixel_noise_sigma(SIGMA_E, N_GAL_ARCMIN2, pixel_arcmin))


def sphere_peaks(maps: np.ndarray, nside: int) -> np.ndarray:
    """Strict local maxima over the (7 or) 8 HEALPix neighbours of each map, RING order.

    Parameters
    ----------
    maps
        Shape (..., npix).

    Returns
    -------
    ndarray of bool, same shape.
    """
    maps = np.asarray(maps)
    neighbours = hp.get_all_neighbours(nside, np.arange(hp.nside2npix(nside)))
    values = maps[..., np.maximum(neighbours, 0)]  # (..., 8, npix)
    values = np.where(neighbours >= 0, values, -np.inf)  # the 8 pixels with 7 neighbours
    return np.all(maps[..., None, :] > values, axis=-2)


def peak_counts_above(
    maps: np.ndarray, nside: int, thresholds: np.ndarray, fwhm_arcmin: float = 0.0
) -> np.ndarray:
    """Number of peaks above each S/N threshold, summed over bins.

    Parameters
    ----------
    maps
        Shape (n_bins, npix), noiseless convergence.
    thresholds
        S/N thresholds in units of :func:`noise_sigma`, which an extra Gaussian smoothing of
        ``fwhm_arcmin`` lowers as it lowers the noise (the white-noise variance under the
        beam, computed here analytically).

    Returns
    -------
    ndarray, shape (len(thresholds),)
    """
    sigma = noise_sigma(nside)
    if fwhm_arcmin > 0:
        lmax = 3 * nside - 1
        beam = hp.gauss_beam(np.radians(fwhm_arcmin / 60.0), lmax=lmax)
        ell = np.arange(lmax + 1)
        white = sigma**2 * hp.nside2pixarea(nside)
        sigma = float(np.sqrt(np.sum((2 * ell + 1) / (4 * np.pi) * white * beam**2)))
        maps = np.stack(
            [hp.smoothing(m.astype(np.float64), fwhm=np.radians(fwhm_arcmin / 60.0)) for m in maps]
        )
    heights = maps[sphere_peaks(maps, nside)] / sigma
    return np.array([np.count_nonzero(heights > t) for t in np.atleast_1d(thresholds)])


def peak_information(counts: np.ndarray, sigma8: np.ndarray) -> float:
    """Poisson Fisher information of one peak count about sigma_8 at the middle sigma_8:
    ``(dN/dsigma_8)^2 / N`` with a central difference over the outer two."""
    counts = np.asarray(counts, dtype=float)
    slope = (counts[-1] - counts[0]) / (sigma8[-1] - sigma8[0])
    return float(slope**2 / max(counts[len(counts) // 2], 1.0))


def log_slope(counts: np.ndarray, sigma8: np.ndarray) -> float:
    """``d ln N / d ln sigma_8`` of a peak count, least squares over the run's sigma_8."""
    return float(np.polyfit(np.log(sigma8), np.log(np.maximum(counts, 0.5)), 1)[0])


def tail_fraction(maps: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Fraction of pixels of each bin above a per-bin threshold; maps (n_bins, npix)."""
    return np.mean(maps > np.asarray(threshold)[:, None], axis=1)
