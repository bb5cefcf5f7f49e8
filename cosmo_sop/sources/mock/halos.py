"""Dark-matter halos on top of the lognormal field: Poisson-sampled from the mass function and
painted as truncated NFW convergence profiles.

A lognormal field carries little information beyond its power spectrum and one-point PDF and
has no objects; the clusters of an N-body map are the rare, massive halos whose abundance is
exponentially sensitive to sigma_8. Following the fast stochastic model of Lin & Kilbinger
(2015, Camelus), made a map here:

1. the light cone to ``z_max`` is cut into fine cells in (redshift, log mass); each cell holds a
   Poisson number of halos with mean ``dn/dlog10M dV dlog10M`` from CCL's mass function
   (:func:`expected_counts`, :meth:`HaloLightcone.sample`);
2. halos are placed uniformly on the sphere (so they are uncorrelated with the lognormal
   field, which carries the large-scale, two-halo power);
3. each halo adds its truncated NFW convergence (:func:`truncated_nfw_projected`), truncated at
   ``r_Delta`` of the mass definition, to every tomographic bin, weighted by the bin's lensing
   kernel at the halo's distance (:meth:`HaloLightcone.paint`);
4. to keep the total power at halofit, the lognormal field is given the halofit spectra minus
   the one-halo term of the painted halos (:func:`one_halo_spectra`).

Units: masses in M_sun (CCL's, no h), distances comoving Mpc, angles radians.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import glass
import healpy as hp
import numpy as np
import pyccl as ccl

#: Width of the fine (redshift, log10 mass) cells in which halos are drawn. Within a cell the
#: mass function is taken as flat in log mass and the halos as uniform in volume.
REDSHIFT_STEP = 0.01
LOG10_MASS_STEP = 0.02
#: Points of the one-halo power spectrum's grids (scale factor, wavenumber, mass).
_N_A, _N_K, _N_MASS = 12, 48, 64
#: Multipoles at which the one-halo spectra are integrated (the rest interpolated).
_N_ELL = 48

# Tag of the halos' random stream, separate from the lognormal field's, so that switching the
# halos on or off leaves the field's random numbers (not its spectra) unchanged.
_HALO_STREAM = zlib.crc32(b"cosmo_sop.halos")


@dataclass(frozen=True)
class HaloModel:
    """The CCL ingredients of the halos, by the names of the ``mock.halos`` config."""

    mass_def: ccl.halos.MassDef
    mass_function: ccl.halos.MassFunc
    concentration: ccl.halos.Concentration
    log10_mass_min: float
    log10_mass_max: float
    z_max: float
    max_rings: int = 4

    @classmethod
    def from_config(cls, halos: Mapping[str, Any]) -> HaloModel:
        """From the ``mock.halos`` section (names as in CCL: ``Tinker08``, ``200c``,
        ``Duffy08``; masses in M_sun)."""
        mass_def = ccl.halos.MassDef.from_name(halos["mass_definition"])
        return cls(
            mass_def=mass_def,
            mass_function=ccl.halos.MassFunc.from_name(halos["mass_function"])(mass_def=mass_def),
            concentration=ccl.halos.Concentration.from_name(halos["concentration"])(
                mass_def=mass_def
            ),
            log10_mass_min=float(np.log10(halos["mass_min"])),
            log10_mass_max=float(np.log10(halos["mass_max"])),
            z_max=float(halos["z_max"]),
            max_rings=int(halos["max_rings"]),
        )

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges of the fine cells: redshift (from 0) and log10 mass."""
        n_z = max(1, round(self.z_max / REDSHIFT_STEP))
        n_m = max(1, round((self.log10_mass_max - self.log10_mass_min) / LOG10_MASS_STEP))
        return (
            np.linspace(0.0, self.z_max, n_z + 1),
            np.linspace(self.log10_mass_min, self.log10_mass_max, n_m + 1),
        )


def halo_rng(seed: int, cosmology_index: int, perm: int) -> np.random.Generator:
    """Random generator of the halos of one realisation (see
    :func:`cosmo_sop.sources.mock.lognormal.map_rng` for the field's)."""
    return np.random.default_rng([seed, _HALO_STREAM, cosmology_index, perm])


# ----------------------------------------------------------------------------------------------
# counts and sampling


def expected_counts(
    cosmo: ccl.Cosmology,
    model: HaloModel,
    z_edges: np.ndarray,
    log10m_edges: np.ndarray,
    sky_fraction: float = 1.0,
) -> np.ndarray:
    """Mean number of halos in each (redshift, log10 mass) cell of the light cone.

    Parameters
    ----------
    cosmo
        CCL cosmology.
    model
        Mass function and mass definition.
    z_edges, log10m_edges
        Cell edges in redshift and log10(M / M_sun).
    sky_fraction
        Fraction of the sphere covered.

    Returns
    -------
    ndarray, shape (len(z_edges) - 1, len(log10m_edges) - 1)
        ``4 pi f_sky / 3 (chi_hi^3 - chi_lo^3) * integral dn/dlog10M dlog10M``, with the mass
        function at the cell's middle redshift integrated over its mass range by Simpson's rule
        on the edges and midpoint.
    """
    chi = ccl.comoving_radial_distance(cosmo, 1.0 / (1.0 + z_edges))
    volume = 4.0 * np.pi * sky_fraction / 3.0 * np.diff(chi**3)
    z_mid = 0.5 * (z_edges[1:] + z_edges[:-1])
    log10m = np.sort(np.concatenate([log10m_edges, 0.5 * (log10m_edges[1:] + log10m_edges[:-1])]))
    density = np.stack([model.mass_function(cosmo, 10.0**log10m, 1.0 / (1.0 + z)) for z in z_mid])
    lower, middle, upper = density[:, :-1:2], density[:, 1::2], density[:, 2::2]
    per_mass = np.diff(log10m_edges) / 6.0 * (lower + 4.0 * middle + upper)
    return volume[:, None] * per_mass


@dataclass(frozen=True)
class HaloCatalogue:
    """Halos of one realisation: positions and masses, and their fine-cell indices."""

    z: np.ndarray  #: redshift
    chi: np.ndarray  #: comoving distance, Mpc
    log10_mass: np.ndarray  #: log10(M_Delta / M_sun)
    cos_theta: np.ndarray  #: cosine of the colatitude
    phi: np.ndarray  #: longitude, radians
    z_cell: np.ndarray  #: index of the redshift cell
    mass_cell: np.ndarray  #: index of the mass cell

    def __len__(self) -> int:
        return len(self.z)

    def directions(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Unit vectors of the halos ``index``, shape (n, 3) (built on demand: only halos
        larger than a pixel need them)."""
        cos_theta, phi = self.cos_theta[index], self.phi[index]
        sin_theta = np.sqrt(1.0 - cos_theta**2)
        return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)


# ----------------------------------------------------------------------------------------------
# profiles


def _nfw_mass_factor(c: np.ndarray) -> np.ndarray:
    """m(c) = ln(1 + c) - c / (1 + c): the NFW mass inside c scale radii, in 4 pi rho_s r_s^3."""
    return np.log1p(c) - c / (1.0 + c)


def truncated_nfw_projected(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Surface density of an NFW halo truncated at ``r_Delta = c r_s``, per unit mass.

    Written out (Takada & Jain 2003, eq. 27) rather than taken from
    :meth:`pyccl.halos.HaloProfileNFW.projected`, which evaluates every mass on one shared
    radius grid, while each halo here is evaluated at its own pixels' offsets; the test suite
    checks the two agree.

    Parameters
    ----------
    x
        Projected radius in units of the scale radius, ``R / r_s``.
    c
        Concentration ``r_Delta / r_s`` (broadcast against ``x``).

    Returns
    -------
    ndarray
        ``Sigma(R) r_s^2 / M_Delta``: zero beyond ``x = c``; its integral over the plane,
        ``2 pi int Sigma R dR``, is ``M_Delta``.
    """
    x, c = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(c, dtype=np.float64))
    out = np.zeros(x.shape)
    inside = (x > 0) & (x < c)
    x, c = x[inside], c[inside]
    root = np.sqrt(c**2 - x**2) / ((1.0 - x**2) * (1.0 + c))
    argument = (x**2 + c) / (x * (1.0 + c))
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.arccosh(np.maximum(argument, 1.0)) / np.abs(1.0 - x**2) ** 1.5
        above = np.arccos(np.minimum(argument, 1.0)) / np.abs(x**2 - 1.0) ** 1.5
        shape = np.where(x < 1.0, below - root, -root - above)
    # at x = 1 both branches are 0/0; the limit (Takada & Jain 2003)
    at_one = np.isclose(x, 1.0, rtol=1e-6, atol=0)
    shape[at_one] = (np.sqrt(c[at_one] ** 2 - 1.0) / (3.0 * (1.0 + c[at_one]))) * (
        1.0 + 1.0 / (c[at_one] + 1.0)
    )
    out[inside] = shape / (2.0 * np.pi * _nfw_mass_factor(c))
    return out


# ----------------------------------------------------------------------------------------------
# painting


def _stencils(nside: int, centres: np.ndarray, depth: int) -> np.ndarray:
    """The pixels within ``depth`` neighbour rings of each centre pixel, -1 padded.

    Returns shape (n, k): each row lists a pixel once (duplicates reached by two paths are -1).
    """
    stencil = centres[:, None]
    for _ in range(depth):
        ring = hp.get_all_neighbours(nside, np.maximum(stencil, 0).ravel())
        ring = np.moveaxis(ring.reshape(8, *stencil.shape), 0, -1).reshape(len(centres), -1)
        ring[np.repeat(stencil, 8, axis=1) < 0] = -1
        stencil = np.sort(np.concatenate([stencil, ring], axis=1), axis=1)
        duplicate = np.zeros(stencil.shape, dtype=bool)
        duplicate[:, 1:] = stencil[:, 1:] == stencil[:, :-1]
        stencil[duplicate] = -1
    return stencil


@dataclass(frozen=True)
class HaloLightcone:
    """The halos' light cone of one cosmology: what all its realisations share, computed once.

    The mean count, comoving ``r_Delta`` and concentration of every fine (redshift, log mass)
    cell (:meth:`HaloModel.cells`) and the bins' lensing kernels depend on the cosmology only:
    :meth:`of` evaluates them once, and each realisation (:meth:`convergence`) then costs only
    its Poisson draw and its painting.
    """

    cosmo: ccl.Cosmology
    model: HaloModel
    z_edges: np.ndarray  #: redshift edges of the fine cells
    log10m_edges: np.ndarray  #: log10(M / M_sun) edges of the fine cells
    chi_edges: np.ndarray  #: comoving distance of ``z_edges``, Mpc
    mean_counts: np.ndarray  #: (n_z, n_m): :func:`expected_counts` on the full sky
    radius: np.ndarray  #: (n_z, n_m): comoving r_Delta at the cell centres, Mpc
    concentration: np.ndarray  #: (n_z, n_m): r_Delta / r_s at the cell centres
    kernels: tuple[tuple[np.ndarray, np.ndarray], ...]  #: (chi, q) per bin, Mpc and 1/Mpc

    @classmethod
    def of(
        cls, cosmo: ccl.Cosmology, model: HaloModel, z: np.ndarray, nz: np.ndarray
    ) -> HaloLightcone:
        """The light cone of ``cosmo`` for sources with redshift distributions ``nz`` (one row
        per tomographic bin, on the grid ``z``)."""
        z_edges, m_edges = model.cells()
        z_mid = 0.5 * (z_edges[1:] + z_edges[:-1])
        mass = 10.0 ** (0.5 * (m_edges[1:] + m_edges[:-1]))
        radius = np.empty((len(z_mid), len(mass)))
        concentration = np.empty_like(radius)
        # CCL's concentrations take one scale factor per call.
        for i, a in enumerate(1.0 / (1.0 + z_mid)):
            radius[i] = model.mass_def.get_radius(cosmo, mass, a) / a  # physical -> comoving
            concentration[i] = model.concentration(cosmo, mass, a)
        return cls(
            cosmo=cosmo,
            model=model,
            z_edges=z_edges,
            log10m_edges=m_edges,
            chi_edges=ccl.comoving_radial_distance(cosmo, 1.0 / (1.0 + z_edges)),
            mean_counts=expected_counts(cosmo, model, z_edges, m_edges),
            radius=radius,
            concentration=concentration,
            kernels=tuple(ccl.get_lensing_kernel(cosmo, dndz=(z, nz_bin)) for nz_bin in nz),
        )

    def sample(self, rng: np.random.Generator) -> HaloCatalogue:
        """Poisson-sample the halos of the full sky out to ``model.z_max``.

        Each fine cell holds a Poisson number with mean :attr:`mean_counts`; within it halos
        are uniform in comoving volume and in log mass, and their directions are uniform on
        the sphere.
        """
        counts = rng.poisson(self.mean_counts)
        z_cell, mass_cell = np.nonzero(counts)
        repeats = counts[z_cell, mass_cell]
        z_cell, mass_cell = np.repeat(z_cell, repeats), np.repeat(mass_cell, repeats)
        n = len(z_cell)
        lo, hi = self.chi_edges[z_cell] ** 3, self.chi_edges[z_cell + 1] ** 3
        chi = np.cbrt(lo + (hi - lo) * rng.random(n))
        m_edges = self.log10m_edges
        log10_mass = m_edges[mass_cell] + np.diff(m_edges)[mass_cell] * rng.random(n)
        cos_theta = rng.uniform(-1.0, 1.0, n)
        phi = rng.uniform(0.0, 2.0 * np.pi, n)
        # distance to redshift by interpolation on the fine cell edges (chi is monotonic in z)
        z = np.interp(chi, self.chi_edges, self.z_edges)
        return HaloCatalogue(z, chi, log10_mass, cos_theta, phi, z_cell, mass_cell)

    def paint(self, catalogue: HaloCatalogue, nside: int) -> np.ndarray:
        """Convergence of the halos of a catalogue in each tomographic bin.

        A halo of mass ``M`` at comoving distance ``chi`` adds to bin ``b`` the convergence
        ``q_b(chi) Sigma(chi theta) / rho_m``, with ``q_b`` the bin's lensing kernel, ``Sigma``
        the comoving surface density of its truncated NFW profile and ``rho_m`` the comoving
        mean matter density. Its mass is spread over the pixels within its truncation radius
        (up to ``model.max_rings`` rings of neighbours, by its angular size), in proportion to
        the profile at each pixel's centre (at no less than a quarter pixel from the halo, the
        pixel-averaged cusp), and renormalised so that every halo deposits exactly its mass
        ``M_Delta``. A halo smaller than half a pixel puts all of it in its centre pixel. Its
        ``r_Delta`` and concentration are those of its fine cell's centre.

        Parameters
        ----------
        catalogue
            Halos from :meth:`sample`.
        nside
            HEALPix resolution.

        Returns
        -------
        ndarray, shape (n_bins, 12 nside^2), float64
            Halo convergence in RING order (with its positive mean: see :meth:`convergence`).
        """
        npix = hp.nside2npix(nside)
        maps = np.zeros((len(self.kernels), npix))
        if len(catalogue) == 0:
            return maps
        pixel_area = hp.nside2pixarea(nside)
        pixel_size = np.sqrt(pixel_area)
        rho_m = ccl.rho_x(self.cosmo, 1.0, "matter")  # comoving mean density, M_sun / Mpc^3
        mass = 10.0**catalogue.log10_mass
        weight = np.stack([np.interp(catalogue.chi, chi, q, right=0.0) for chi, q in self.kernels])
        amplitude = weight * mass / (rho_m * catalogue.chi**2 * pixel_area)  # (n_bins, n_halos)
        cells = (catalogue.z_cell, catalogue.mass_cell)
        radius, concentration = self.radius[cells], self.concentration[cells]
        angular_radius = radius / catalogue.chi
        depth = np.clip(np.rint(angular_radius / pixel_size), 0, self.model.max_rings).astype(int)
        centre = hp.ang2pix(nside, np.arccos(catalogue.cos_theta), catalogue.phi)
        for d in np.unique(depth):
            halos = np.flatnonzero(depth == d)
            if d == 0:
                pixels, share = centre[halos, None], np.ones((len(halos), 1))
            else:
                pixels = _stencils(nside, centre[halos], int(d))
                valid = pixels >= 0
                vectors = np.stack(hp.pix2vec(nside, np.where(valid, pixels, 0)), axis=-1)
                cosine = np.einsum("hpk,hk->hp", vectors, catalogue.directions(halos))
                separation = np.arccos(np.clip(cosine, -1.0, 1.0))
                scale_radius = angular_radius[halos, None] / concentration[halos, None]
                x = np.maximum(separation, 0.25 * pixel_size) / scale_radius
                share = truncated_nfw_projected(x, concentration[halos, None]) * valid
                total = share.sum(axis=1)
                # a halo whose profile misses every pixel centre keeps its mass in its centre
                empty = total == 0
                share /= np.where(empty, 1.0, total)[:, None]
                centre_column = np.argmax(pixels == centre[halos, None], axis=1)
                share[empty, centre_column[empty]] = 1.0
                pixels = np.where(valid, pixels, 0)
            for b in range(len(self.kernels)):
                deposit = share * amplitude[b, halos, None]
                maps[b] += np.bincount(pixels.ravel(), deposit.ravel(), minlength=npix)
        return maps

    def convergence(self, nside: int, rng: np.random.Generator) -> tuple[np.ndarray, HaloCatalogue]:
        """Sample and paint the halos of one realisation, without monopole.

        The mass of the halos is part of the mean density, so each bin's mean is subtracted:
        the map then adds only the halos' fluctuations to the zero-mean lognormal field.

        Returns
        -------
        maps : ndarray, shape (n_bins, 12 nside^2), float64
        catalogue : HaloCatalogue
        """
        catalogue = self.sample(rng)
        maps = self.paint(catalogue, nside)
        return maps - maps.mean(axis=1, keepdims=True), catalogue


def halo_convergence(
    cosmo: ccl.Cosmology,
    model: HaloModel,
    z: np.ndarray,
    nz: np.ndarray,
    nside: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, HaloCatalogue]:
    """The halo convergence of one realisation (:meth:`HaloLightcone.convergence`); for
    several realisations of one cosmology, build its :class:`HaloLightcone` once."""
    return HaloLightcone.of(cosmo, model, z, nz).convergence(nside, rng)


# ----------------------------------------------------------------------------------------------
# one-halo power


def one_halo_power(cosmo: ccl.Cosmology, model: HaloModel) -> ccl.Pk2D:
    """Matter power spectrum of the sampled halos' one-halo term, ``z <= model.z_max``.

    ``P_1h(k, a) = int dlog10M dn/dlog10M |u(k | M)|^2 / rho_m^2`` over the sampled mass
    range, with ``u`` CCL's Fourier transform of the truncated NFW profile (comoving k, 1/Mpc)
    and ``rho_m`` the comoving mean matter density. Written as the integral rather than
    :func:`pyccl.halos.halomod_Pk2D`, which normalises by the mean density of the halos in its
    own mass range, not by ``rho_m``.
    """
    profile = ccl.halos.HaloProfileNFW(
        mass_def=model.mass_def, concentration=model.concentration, truncated=True
    )
    a = np.linspace(1.0 / (1.0 + model.z_max), 1.0, _N_A)
    k = np.geomspace(1e-4, 1e3, _N_K)
    mass = np.logspace(model.log10_mass_min, model.log10_mass_max, _N_MASS)
    rho_m = ccl.rho_x(cosmo, 1.0, "matter")
    power = np.empty((_N_A, _N_K))
    for i, scale_factor in enumerate(a):
        density = model.mass_function(cosmo, mass, scale_factor)
        fourier = profile.fourier(cosmo, k, mass, scale_factor) / rho_m
        power[i] = np.trapezoid(density[:, None] * fourier**2, np.log10(mass), axis=0)
    return ccl.Pk2D(a_arr=a, lk_arr=np.log(k), pk_arr=np.log(power), is_logp=True)


def one_halo_spectra(
    cosmo: ccl.Cosmology, model: HaloModel, z: np.ndarray, nz: np.ndarray, lmax: int
) -> list[np.ndarray]:
    """Convergence spectra of the sampled halos' one-halo term, in GLASS standard order.

    Limber integrals of :func:`one_halo_power` with each bin's lensing kernel cut at the
    halos' ``z_max``, beyond which none are painted: the power of the halos that
    :meth:`HaloLightcone.paint` draws, before pixelisation (the test suite measures it on
    painted maps).
    """
    chi_max = ccl.comoving_radial_distance(cosmo, 1.0 / (1.0 + model.z_max))
    tracers = []
    for nz_bin in nz:
        chi, q = ccl.get_lensing_kernel(cosmo, dndz=(z, nz_bin))
        keep = chi <= chi_max
        tracer = ccl.Tracer()
        tracer.add_tracer(cosmo, kernel=(chi[keep], q[keep]), der_bessel=-1, der_angles=1)
        tracers.append(tracer)
    power = one_halo_power(cosmo, model)
    # The one-halo spectra are smooth in l (shot noise, then the profiles' cut-off): Limber
    # integrals at _N_ELL multipoles, interpolated in log-log, cost a tenth of all of them.
    ell = np.arange(lmax + 1)
    sampled = np.unique(np.geomspace(1, lmax, _N_ELL).astype(int))
    spectra = []
    for i, j in glass.spectra_indices(len(tracers)):
        cl = ccl.angular_cl(cosmo, tracers[i], tracers[j], sampled, p_of_k_a=power)
        full = np.zeros(lmax + 1)
        full[1:] = np.exp(np.interp(np.log(ell[1:]), np.log(sampled), np.log(cl)))
        spectra.append(full)
    return spectra


def field_spectra(
    spectra: list[np.ndarray], one_halo: list[np.ndarray], floor: float = 0.05
) -> list[np.ndarray]:
    """The lognormal field's target spectra: halofit minus the halos' one-halo term.

    An auto-spectrum keeps at least ``floor`` of its halofit value: the halo model and halofit
    are calibrated separately, and where the one-halo term of the most massive halos would
    exceed halofit the field must still have a positive spectrum. Cross-spectra are the plain
    differences; :func:`cosmo_sop.sources.mock.lognormal.gaussian_spectra` regularises the
    result if it is not positive semi-definite.
    """
    n_bins = glass.nfields_from_nspectra(len(spectra))
    out = []
    for (i, j), total, halos in zip(glass.spectra_indices(n_bins), spectra, one_halo):
        field = np.asarray(total, dtype=np.float64) - halos
        if i == j:
            field = np.maximum(field, floor * np.asarray(total))
        out.append(field)
    return out
