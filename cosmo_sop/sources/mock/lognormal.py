"""Correlated lognormal convergence maps of all tomographic bins on the HEALPix sphere.

The convergence of bin ``i`` is modelled as a shifted lognormal field (Hilbert, Hartlap &
Schneider 2011; Xavier et al. 2016)::

    kappa_i = lambda_i[exp(X_i - var(X_i) / 2) - 1]

with correlated Gaussian fields X_i. It has zero mean, a positive skewness and a hard minimum
``-lambda_i``, the convergence of an empty beam. GLASS solves for the Gaussian spectra of the X_i
such that the kappa_i have the target spectra (Tessore et al. 2023) and samples the fields.

The maps are band-limited at ``lmax`` and sampled at the pixel centres (no pixel window), in
HEALPix RING order.
"""

from __future__ import annotations

import warnings
import zlib

import glass
import numpy as np

#: Matter density of the Millennium simulation, for which the shift fit of Hilbert et al. holds.
HILBERT2011_OMEGA_M = 0.25

# Tag mixed into the seeds of the maps so that they never coincide with another stream
# derived from the same master seed. The tag spells the module's first name: changing it
# would change every mock.
_MAP_STREAM = zlib.crc32(b"cosmo_sop.lognormal.maps")


def lognormal_shifts(z: np.ndarray, nz: np.ndarray, omega_m: float) -> np.ndarray:
    """Lognormal shift (minus the smallest possible convergence) of each tomographic bin.

    Parameters
    ----------
    z, nz
        Redshift grid and the n(z) of each bin, shape (n_bins, n_z).
    omega_m
        Matter density parameter of the cosmology.

    Returns
    -------
    ndarray, shape (n_bins,)
        ``lambda_i = (Omega_m / 0.25) * integral n_i(z) kappa_0(z) dz / integral n_i(z) dz``.

    Notes
    -----
    :func:`glass.lognormal_shift_hilbert2011` is the fit of Hilbert et al. (2011) to the
    empty-beam convergence ``kappa_0(z_s)`` of sources at one redshift in the Millennium
    simulation (Omega_m = 0.25). For a distribution of sources the empty-beam convergence is the
    n(z)-weighted mean of ``kappa_0(z_s)`` (the convergence is linear in the source
    distribution). The empty-beam convergence is ``-(3/2) Omega_m (H_0/c)^2`` times a distance
    integral, so it is rescaled by ``Omega_m / 0.25``; the weak dependence of the distances on
    Omega_m is neglected.
    """
    kappa0 = glass.lognormal_shift_hilbert2011(z)
    mean = np.trapezoid(nz * kappa0, z, axis=-1) / np.trapezoid(nz, z, axis=-1)
    return mean * (omega_m / HILBERT2011_OMEGA_M)


def lognormal_transformations(shifts: np.ndarray) -> list[glass.grf.Lognormal]:
    """GLASS lognormal transformations of the bins.

    Built directly rather than with :func:`glass.lognormal_fields`, which evaluates a shift
    function at the effective redshift of each matter shell; here each field is a whole
    tomographic bin with its own n(z)-averaged shift.
    """
    return [glass.grf.Lognormal(float(shift)) for shift in shifts]


def gaussian_spectra(spectra: list[np.ndarray], shifts: np.ndarray) -> list[np.ndarray]:
    """Spectra of the Gaussian fields whose lognormal transforms have the target ``spectra``.

    Parameters
    ----------
    spectra
        Target convergence spectra in GLASS standard order (:mod:`cosmo_sop.sources.mock.spectra`).
    shifts
        Lognormal shift of each bin (:func:`lognormal_shifts`).

    Returns
    -------
    list of ndarray
        Gaussian spectra in GLASS standard order, regularised to be positive semi-definite at
        every l when needed (tomographic convergence bins are strongly correlated, so the
        solved matrices can have tiny negative eigenvalues).

    Raises
    ------
    ValueError
        If the solver does not converge for a pair of bins, which means the target spectra are
        not reachable by a lognormal field with these shifts.
    """
    fields = lognormal_transformations(shifts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gls = glass.solve_gaussian_spectra(fields, spectra)
    for warning in caught:
        # glass only warns when the solver fails; a map from unconverged spectra would be wrong
        if "did not converge" in str(warning.message):
            raise ValueError(f"lognormal shifts {np.round(shifts, 5).tolist()}: {warning.message}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not glass.check_posdef_spectra(gls):
        gls = glass.regularized_spectra(gls)
    return gls


def map_rng(seed: int, cosmology_index: int, perm: int) -> np.random.Generator:
    """Random generator of one realisation, a function of (master seed, cosmology, perm) only.

    Any single map can thus be regenerated alone, in any order and on any worker.
    """
    return np.random.default_rng([seed, _MAP_STREAM, cosmology_index, perm])


def generate_maps(
    gaussian: list[np.ndarray], shifts: np.ndarray, nside: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample one realisation of the correlated lognormal convergence maps of all bins.

    Parameters
    ----------
    gaussian
        Gaussian spectra from :func:`gaussian_spectra` (their length sets the band limit).
    shifts
        Lognormal shift of each bin.
    nside
        HEALPix resolution of the maps.
    rng
        Random generator, e.g. from :func:`map_rng`.

    Returns
    -------
    ndarray, shape (n_bins, 12 nside^2), float32
        Convergence maps in RING order.
    """
    fields = lognormal_transformations(shifts)
    maps = np.empty((len(fields), 12 * nside**2), dtype=np.float32)
    for i, kappa in enumerate(glass.generate(fields, gaussian, nside, rng=rng)):
        maps[i] = kappa
    return maps
