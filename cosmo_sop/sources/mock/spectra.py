"""Theory inputs of the mock: tomographic redshift distributions and convergence spectra.

The source galaxies follow a Smail et al. (1994) n(z), split into equal-number tomographic bins
whose photometric-redshift scatter is Gaussian with sigma_z = sigma_0 (1 + z) (GLASS). The
convergence angular power spectra of all bin pairs come from CCL in the Limber approximation,
with the Eisenstein & Hu (1998) transfer function and the Takahashi et al. (2012) halofit
non-linear power spectrum. Eisenstein & Hu keeps CAMB out of the dependencies and takes a
fraction of a second per cosmology; its BAO wiggles are approximate, which matters little for
lensing spectra, which integrate over k.

Spectra are returned in GLASS "standard order" (:func:`glass.spectra_indices`):
``(0,0), (1,1), (1,0), (2,2), (2,1), (2,0), ...``, the order that :func:`glass.generate` expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import glass
import numpy as np
import pyccl as ccl

#: Redshift step of the n(z) grid; fine enough for CCL's lensing-kernel integrals.
REDSHIFT_STEP = 0.01


def redshift_grid(z_max: float) -> np.ndarray:
    """Redshift grid ``0 .. z_max`` (inclusive) with step about :data:`REDSHIFT_STEP`."""
    return np.linspace(0.0, z_max, max(2, math.ceil(z_max / REDSHIFT_STEP)) + 1)


def tomographic_nz(
    redshift: Mapping[str, float], z: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Redshift distributions of the tomographic bins.

    Parameters
    ----------
    redshift
        The ``mock.redshift`` config: ``n_bins``, ``z_max``, ``z_mode``, ``alpha``, ``beta``,
        ``photoz_sigma0``.
    z
        Redshift grid; :func:`redshift_grid` of ``z_max`` if not given.

    Returns
    -------
    z : ndarray, shape (n_z,)
        True redshifts.
    nz : ndarray, shape (n_bins, n_z)
        n(z) of each bin, each normalised to unit integral over ``z``.
    """
    if z is None:
        z = redshift_grid(redshift["z_max"])
    nz = glass.smail_nz(z, redshift["z_mode"], redshift["alpha"], redshift["beta"])
    edges = glass.equal_dens_zbins(z, nz, redshift["n_bins"])
    sigma0 = redshift["photoz_sigma0"]
    if sigma0 > 0:
        bins = glass.tomo_nz_gausserr(z, nz, sigma0, edges)
    else:
        # no photo-z scatter: sharp bins (glass.tomo_nz_gausserr divides by sigma0)
        lower, upper = np.asarray(edges).T
        bins = nz * ((z >= lower[:, None]) & (z < upper[:, None]))
        bins[-1, -1] = nz[-1]  # the last bin includes z_max
    bins = bins / np.trapezoid(bins, z, axis=-1)[:, None]
    return z, bins


def ccl_cosmology(parameters: Mapping[str, float]) -> ccl.Cosmology:
    """CCL cosmology of one row of a cosmology table
    (:func:`cosmo_sop.sources.mock.design.draw_cosmologies`).

    Flat, massless neutrinos, normalised by sigma_8, Eisenstein & Hu transfer function and
    halofit non-linear matter power spectrum.
    """
    return ccl.Cosmology(
        Omega_c=float(parameters["Om"]) - float(parameters["Ob"]),
        Omega_b=float(parameters["Ob"]),
        h=float(parameters["H0"]) / 100.0,
        n_s=float(parameters["ns"]),
        sigma8=float(parameters["s8"]),
        w0=float(parameters["w0"]),
        wa=float(parameters["wa"]),
        m_nu=0.0,
        transfer_function="eisenstein_hu",
        matter_power_spectrum="halofit",
    )


def convergence_tracer(cosmo: ccl.Cosmology, z: np.ndarray, nz: np.ndarray) -> ccl.Tracer:
    """CCL tracer of the lensing convergence of sources with redshift distribution ``nz``.

    :func:`pyccl.WeakLensingTracer` describes the *shear* E-mode: its angular factor is
    sqrt((l+2)!/(l-2)!) (``der_angles=2``), which vanishes at l < 2 and is 2/3 of the convergence
    spectrum at l = 2. The convergence has the factor l(l+1) (``der_angles=1``), as in
    :func:`pyccl.CMBLensingTracer`, with the same radial lensing kernel.
    """
    tracer = ccl.Tracer()
    kernel = ccl.get_lensing_kernel(cosmo, dndz=(z, nz))
    tracer.add_tracer(cosmo, kernel=kernel, der_bessel=-1, der_angles=1)
    return tracer


def convergence_spectra(
    cosmo: ccl.Cosmology, z: np.ndarray, nz: np.ndarray, lmax: int
) -> list[np.ndarray]:
    """Convergence angular power spectra of every pair of tomographic bins.

    Parameters
    ----------
    cosmo
        CCL cosmology.
    z, nz
        Redshift grid and the n(z) of each bin, shape (n_bins, n_z).
    lmax
        Largest multipole.

    Returns
    -------
    list of ndarray, each shape (lmax + 1,)
        C_l (dimensionless) for l = 0..lmax of all ``n_bins (n_bins + 1) / 2`` bin pairs in GLASS
        standard order. C_0 = 0: the convergence has no monopole.
    """
    ell = np.arange(lmax + 1)
    tracers = [convergence_tracer(cosmo, z, nz_bin) for nz_bin in nz]
    spectra = []
    for i, j in glass.spectra_indices(len(tracers)):
        spectra.append(ccl.angular_cl(cosmo, tracers[i], tracers[j], ell))
    return spectra


def auto_spectra(spectra: list[np.ndarray]) -> list[np.ndarray]:
    """The auto-spectra (bin i with itself) of a list in GLASS standard order, by bin."""
    n_bins = glass.nfields_from_nspectra(len(spectra))
    return [glass.getcl(spectra, i, i) for i in range(n_bins)]
