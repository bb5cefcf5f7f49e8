"""Planted-signal mock: convergence maps in which (Omega_m, sigma_8) act only through known parts.

A control for the void/cluster finding of the SOP paper (voids weigh more for Omega_m, clusters
for sigma_8): on these maps the truth is known by construction, so the pipeline's verdicts can be
checked against it. A map of bin ``b`` is::

    kappa_b = B_b + sigma_b [- D_v T_v + A_c T_c + S_b]

- ``B_b``, the *background*: the lognormal field of :mod:`~cosmo_sop.sources.mock.lognormal` at
  one fixed cosmology (``mock.planted.background``, the mock's fiducial parameters otherwise), no
  halos, so its statistics depend on neither parameter; each map has its own realisation, seeded
  by ``(seed, id_param, perm)`` in a stream of its own;
- ``sigma_b``, the background's pixel standard deviation in bin ``b`` (from its spectra), the
  unit of every amplitude below: the structures are the same in every bin and grow with the bin
  as the background does;
- ``T_v``, the *voids*: Poisson-many (``voids.density`` per deg^2) points uniform on the sphere,
  each a Gaussian dip of width ``voids.sigma_arcmin`` and unit depth, so ``-D_v T_v`` is an
  underdensity of ``D_v`` background sigma at an isolated void's centre;
- ``T_c``, the *clusters*: the same with ``clusters.*``: compact peaks of ``A_c`` sigma;
- ``S_b``, with ``signal: smooth`` only: a smooth, zero-mean Gaussian field of width
  ``smooth.sigma_arcmin`` and unit variance, one for Omega_m in the lower half of the bins and an
  independent one for sigma_8 in the upper half, each times its amplitude.

A parameter ``p`` enters through its place in the prior, ``u = (p - low) / (high - low)`` in
[0, 1], as the factor ``0.5 + u`` (0.5 to 1.5) on one amplitude (:func:`parameter_factor`):

- ``signal: structures``: ``D_v = voids.depth (0.5 + u)`` of the parameter that
  ``carriers.voids`` names, ``A_c = clusters.amplitude (0.5 + u)`` of the one that
  ``carriers.clusters`` names; nothing else moves;
- ``signal: smooth``, the *no-signal* control for voids and clusters: ``D_v`` and ``A_c`` are
  fixed at their ``u = 0.5`` values, and Omega_m and sigma_8 scale only the amplitudes of their
  smooth fields (``smooth.amplitude (0.5 + u)``), which are neither voids nor clusters and are
  symmetric under kappa -> -kappa, so that no class of structure is favoured.

Positions, counts and random fields are drawn from streams that do not see the parameters, so
two cosmologies of the same ``(seed, id_param, perm)`` differ only through the amplitudes. The
maps keep the structures' mean (no monopole is removed): a parameter thus changes pixels at its
own structures and nowhere else.

Painting is vectorised (:func:`smooth_maps`): unit spikes at the structures' pixels (and white
noise for the smooth fields) go through one spherical-harmonic transform, each template is
smoothed with its Gaussian beam to ``l = 3 nside - 1`` and transformed back (no pixel window,
which healpy would download), normalised so that an isolated structure peaks at exactly 1.
``mock.halos`` is ignored: the planted maps have no halos.

The defaults, for the demo's 15 x 15 deg patches of 13.7 arcmin pixels (nside 256): about 10
voids of sigma 45 arcmin (3.3 pixels), 1.5 to 4.5 sigma deep, and 20 clusters of sigma 20 arcmin
(1.5 pixels), 4 to 12 sigma high, per patch; with ``signal: smooth``, fields of 90 arcmin with
standard deviations of 1 to 3 sigma. The amplitudes keep both modes about equally learnable: a
ridge regression on each patch's per-bin quantiles, extremes and variances reached a test R^2
of about 0.75 for both parameters in both modes (Om 0.76, s8 0.94 from the structures; 0.73 and
0.76 from the smooth fields; 40 cosmologies, 48 patches each, split by cosmology).

Units: widths in arcmin, densities per deg^2, amplitudes in background sigma of each bin.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import healpy as hp
import numpy as np

from cosmo_sop.errors import InputError
from cosmo_sop.sources.mock.lognormal import gaussian_spectra, generate_maps, lognormal_shifts
from cosmo_sop.sources.mock.spectra import (
    auto_spectra,
    ccl_cosmology,
    convergence_spectra,
    tomographic_nz,
)

#: The parameters that can carry a structure (the model's outputs).
PARAMETERS: tuple[str, ...] = ("Om", "s8")
#: The planted structures, by their config names.
STRUCTURES: tuple[str, ...] = ("voids", "clusters")
#: Area of the sphere, deg^2.
SKY_DEG2 = 4.0 * math.pi * math.degrees(1.0) ** 2

# Tags of the planted mock's random streams, apart from the lognormal and halo mocks' (the
# same master seed must not give a planted background that is the plain mock's field).
# Changing a tag would change every planted map.
_BACKGROUND_STREAM = zlib.crc32(b"cosmo_sop.planted.background")
_STRUCTURE_STREAM = zlib.crc32(b"cosmo_sop.planted.structures")


# ----------------------------------------------------------------------------------------------
# config


def check_planted(cfg: Mapping[str, Any], where: str) -> None:
    """The checks of ``mock.planted`` that the schema cannot express (only when it is enabled).

    Parameters
    ----------
    cfg
        The ``mock`` section with its schema defaults.
    where
        Named in the error (the config file).

    Raises
    ------
    InputError
        Naming the config key: both structures carry the same parameter (the other one would
        act through nothing), a background Omega_m outside the mock's physical range, a width
        below one HEALPix pixel, or ``signal: smooth`` with a single tomographic bin.
    """
    planted = cfg["planted"]
    if not planted["enabled"]:
        return
    carriers = planted["carriers"]
    if carriers["voids"] == carriers["clusters"]:
        raise InputError(
            where,
            f"config key 'mock.planted.carriers' gives both voids and clusters "
            f"{carriers['voids']!r}; each of Om and s8 needs one structure to act through",
        )
    background = planted["background"]
    ob = cfg["fiducial"]["Ob"]
    if not ob < background["Om"] <= 1:
        raise InputError(
            where,
            f"config key 'mock.planted.background.Om' = {background['Om']} must lie in "
            f"(mock.fiducial.Ob = {ob}, 1]",
        )
    # A Gaussian of one pixel, band-limited at 3 nside - 1, rings at 1e-3 of its peak; narrower
    # ones ring more and are not resolved by the pixels anyway.
    pixel = pixel_arcmin(cfg["nside"])
    widths = [f"{name}.sigma_arcmin" for name in STRUCTURES]
    if planted["signal"] == "smooth":
        widths.append("smooth.sigma_arcmin")
    for key in widths:
        section, name = key.split(".")
        value = planted[section][name]
        if value < pixel:
            raise InputError(
                where,
                f"config key 'mock.planted.{key}' = {value} arcmin is below the HEALPix pixel "
                f"({pixel:.1f} arcmin at mock.nside {cfg['nside']}); a profile must span a pixel",
            )
    if planted["signal"] == "smooth" and cfg["redshift"]["n_bins"] < 2:
        raise InputError(
            where,
            "config key 'mock.planted.signal' = 'smooth' needs mock.redshift.n_bins >= 2 "
            "(Om acts in the lower half of the bins, s8 in the upper half)",
        )


def provenance_record(cfg: Mapping[str, Any]) -> dict:
    """What of the ``mock`` config determines a planted map beyond the plain mock's record:
    the ``planted`` keys that its ``signal`` uses and the prior (through ``u``), JSON-ready
    with numbers as floats (``depth: 3`` and ``depth: 3.0`` give the same record)."""
    planted = {key: value for key, value in cfg["planted"].items() if key != "enabled"}
    # keys the signal does not read: changing them must not regenerate the maps
    planted.pop("smooth" if planted["signal"] == "structures" else "carriers")
    planted["prior"] = {name: list(bounds) for name, bounds in cfg["prior"].items()}
    return _floats(planted)


def _floats(value: Any) -> Any:
    """``value`` with every number a float (strings and booleans kept), recursively."""
    if isinstance(value, Mapping):
        return {key: _floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_floats(item) for item in value]
    if isinstance(value, bool | str):
        return value
    return float(value)


# ----------------------------------------------------------------------------------------------
# pieces


def planted_rngs(seed: int, id_param: int, perm: int) -> dict[str, np.random.Generator]:
    """Random generators of one planted map, functions of (master seed, cosmology, perm) only.

    Returns
    -------
    dict
        ``background``; ``voids`` and ``clusters`` (counts and pixels); ``Om`` and ``s8``
        (their smooth fields). Independent streams, so that e.g. a changed void density moves
        no cluster.
    """
    children = np.random.SeedSequence([seed, _STRUCTURE_STREAM, id_param, perm]).spawn(4)
    rngs = dict(zip((*STRUCTURES, *PARAMETERS), map(np.random.default_rng, children)))
    rngs["background"] = np.random.default_rng([seed, _BACKGROUND_STREAM, id_param, perm])
    return rngs


def parameter_factor(value: float, bounds: tuple[float, float] | list[float]) -> float:
    """``0.5 + u``, ``u = (value - low) / (high - low)`` the parameter's place in its prior:
    0.5 at the lower bound, 1 in the middle, 1.5 at the upper bound."""
    low, high = bounds
    return 0.5 + (float(value) - low) / (high - low)


def pixel_arcmin(nside: int) -> float:
    """Side of a HEALPix pixel (square root of its area), arcmin."""
    return math.degrees(math.sqrt(hp.nside2pixarea(nside))) * 60.0


def gaussian_beam(sigma_arcmin: float, lmax: int) -> np.ndarray:
    """Harmonic coefficients ``exp(-l (l + 1) sigma^2 / 2)``, l = 0..lmax, of a Gaussian of
    standard deviation ``sigma_arcmin``."""
    sigma = math.radians(sigma_arcmin / 60.0)
    ell = np.arange(lmax + 1)
    return np.exp(-0.5 * ell * (ell + 1) * sigma**2)


def smooth_maps(maps: np.ndarray, beams: list[np.ndarray]) -> np.ndarray:
    """Smooth each of ``maps`` (k, npix) with its beam (harmonic coefficients to a common lmax).

    Transforms without iteration (``iter=0``): the harmonic coefficients of a map of spikes or
    white noise are then its exact pixel sums, so the result is the band-limited Gaussian of
    each spike, with the normalisations of :func:`spike_peak` and :func:`noise_variance`. No
    pixel weights and no pixel window: healpy would download them.
    """
    nside = hp.npix2nside(maps.shape[1])
    lmax = len(beams[0]) - 1
    # one map in gives one alm out, not a stack of one
    alms = np.atleast_2d(hp.map2alm(maps, lmax=lmax, iter=0, pol=False, use_weights=False))
    return np.stack(
        [hp.alm2map(hp.almxfl(alm, beam), nside, lmax=lmax) for alm, beam in zip(alms, beams)]
    )


def spike_peak(beam: np.ndarray, nside: int) -> float:
    """Peak of one pixel of value 1 smoothed by :func:`smooth_maps` with ``beam``:
    ``A_pix sum_l (2l + 1) / (4 pi) b_l`` (about ``A_pix / (2 pi sigma^2)``)."""
    ell = np.arange(len(beam))
    return hp.nside2pixarea(nside) * float(np.sum((2 * ell + 1) / (4 * np.pi) * beam))


def noise_variance(beam: np.ndarray, nside: int) -> float:
    """Variance of unit white noise smoothed by :func:`smooth_maps` with ``beam``:
    ``A_pix sum_l (2l + 1) / (4 pi) b_l^2`` (white noise has ``C_l = A_pix``)."""
    ell = np.arange(len(beam))
    return hp.nside2pixarea(nside) * float(np.sum((2 * ell + 1) / (4 * np.pi) * beam**2))


@functools.lru_cache(maxsize=4)
def _background(key: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Gaussian spectra, lognormal shifts and pixel sigma of the background, by the JSON of
    what determines them; cached, since every cosmology of a mock shares them."""
    inputs = json.loads(key)
    background, fiducial = inputs["background"], inputs["fiducial"]
    # one row of the cosmology table, as mock.design writes it: H0 = 100 h, wa = 0
    row = {
        "Om": background["Om"],
        "s8": background["s8"],
        "H0": 100.0 * fiducial["h"],
        "Ob": fiducial["Ob"],
        "ns": fiducial["ns"],
        "w0": fiducial["w0"],
        "wa": 0.0,
    }
    z, nz = tomographic_nz(inputs["redshift"])
    spectra = convergence_spectra(ccl_cosmology(row), z, nz, inputs["lmax"])
    shifts = lognormal_shifts(z, nz, background["Om"])
    ell = np.arange(inputs["lmax"] + 1)
    # The maps are band-limited and sampled at pixel centres: their variance is the sum of the
    # target spectra (the lognormal field keeps them), with no pixel window.
    sigma = np.sqrt([np.sum((2 * ell + 1) / (4 * np.pi) * cl) for cl in auto_spectra(spectra)])
    return gaussian_spectra(spectra, shifts), shifts, sigma


# ----------------------------------------------------------------------------------------------
# maps


@dataclass(frozen=True)
class PlantedComponents:
    """The parameter-free pieces of one planted map (:meth:`PlantedMock.components`)."""

    background: np.ndarray  #: (n_bins, npix) float32: the lognormal background, kappa
    voids: np.ndarray  #: (npix,): the voids' template, an isolated void peaking at 1
    clusters: np.ndarray  #: (npix,): the clusters' template, an isolated cluster peaking at 1
    smooth: np.ndarray | None  #: (2, npix), unit variance: Om's and s8's fields; None unless smooth
    void_pixels: np.ndarray  #: centre pixel (RING) of each void
    cluster_pixels: np.ndarray  #: centre pixel (RING) of each cluster


@dataclass(frozen=True)
class PlantedMock:
    """What all planted maps of a mock share: the settings and the background's spectra."""

    settings: Mapping[str, Any]  #: the ``mock.planted`` section
    prior: Mapping[str, Any]  #: the ``mock.prior`` section
    nside: int
    gaussian: list[np.ndarray]  #: Gaussian spectra of the background (GLASS standard order)
    shifts: np.ndarray  #: (n_bins,) lognormal shifts of the background
    sigma: np.ndarray  #: (n_bins,) pixel standard deviation of the background, kappa

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PlantedMock:
        """From the complete ``mock`` config (:func:`~cosmo_sop.sources.mock.simulate.mock_settings`)."""
        key = json.dumps(
            {
                "background": cfg["planted"]["background"],
                "fiducial": cfg["fiducial"],
                "redshift": cfg["redshift"],
                "lmax": cfg["lmax"],
            },
            sort_keys=True,
        )
        gaussian, shifts, sigma = _background(key)
        return cls(cfg["planted"], cfg["prior"], cfg["nside"], gaussian, shifts, sigma)

    @property
    def n_bins(self) -> int:
        return len(self.shifts)

    def components(self, seed: int, id_param: int, perm: int) -> PlantedComponents:
        """Draw and paint the parameter-free pieces of map ``(seed, id_param, perm)``."""
        rngs = planted_rngs(seed, id_param, perm)
        npix = hp.nside2npix(self.nside)
        lmax = 3 * self.nside - 1  # the narrowest profile the pixels hold, whatever mock.lmax
        background = generate_maps(self.gaussian, self.shifts, self.nside, rngs["background"])
        fields, beams, pixels = [], [], {}
        for name in STRUCTURES:
            rng, section = rngs[name], self.settings[name]
            count = rng.poisson(section["density"] * SKY_DEG2)
            pixels[name] = rng.integers(0, npix, count)
            beam = gaussian_beam(section["sigma_arcmin"], lmax)
            fields.append(np.bincount(pixels[name], minlength=npix) / spike_peak(beam, self.nside))
            beams.append(beam)
        smooth_fields = self.settings["signal"] == "smooth"
        if smooth_fields:
            beam = gaussian_beam(self.settings["smooth"]["sigma_arcmin"], lmax)
            beam[0] = 0.0  # no monopole: the fields are symmetric under kappa -> -kappa
            scale = 1.0 / math.sqrt(noise_variance(beam, self.nside))
            for name in PARAMETERS:
                fields.append(rngs[name].standard_normal(npix) * scale)
                beams.append(beam)
        painted = smooth_maps(np.stack(fields).astype(np.float64), beams)
        return PlantedComponents(
            background=background,
            voids=painted[0],
            clusters=painted[1],
            smooth=painted[2:] if smooth_fields else None,
            void_pixels=pixels["voids"],
            cluster_pixels=pixels["clusters"],
        )

    def amplitudes(self, parameters: Mapping[str, Any]) -> dict[str, float]:
        """Amplitudes of the pieces for a cosmology, in background sigma.

        Returns
        -------
        dict
            ``voids`` (depth D_v), ``clusters`` (peak A_c), and with ``signal: smooth`` the
            standard deviations ``Om`` and ``s8`` of the two smooth fields.
        """
        factor = {name: parameter_factor(parameters[name], self.prior[name]) for name in PARAMETERS}
        scale = {"voids": self.settings["voids"]["depth"]}
        scale["clusters"] = self.settings["clusters"]["amplitude"]
        if self.settings["signal"] == "structures":
            carriers = self.settings["carriers"]
            return {name: scale[name] * factor[carriers[name]] for name in STRUCTURES}
        smooth = self.settings["smooth"]["amplitude"]
        return {**scale, **{name: smooth * factor[name] for name in PARAMETERS}}

    def assemble(self, components: PlantedComponents, parameters: Mapping[str, Any]) -> np.ndarray:
        """The map of ``components`` for a cosmology.

        Returns
        -------
        ndarray, shape (n_bins, 12 nside^2), float32
            Convergence in RING order.
        """
        amplitude = self.amplitudes(parameters)
        planted = (
            amplitude["clusters"] * components.clusters - amplitude["voids"] * components.voids
        )
        maps = np.empty((self.n_bins, planted.size), dtype=np.float32)
        lower = self.n_bins // 2  # bins 1..lower carry Om's smooth field, the rest s8's
        for b in range(self.n_bins):
            signal = planted
            if components.smooth is not None:
                name = "Om" if b < lower else "s8"
                field = components.smooth[PARAMETERS.index(name)]
                signal = planted + amplitude[name] * field
            maps[b] = components.background[b] + self.sigma[b] * signal
        return maps

    def maps(self, parameters: Mapping[str, Any], seed: int, perm: int) -> np.ndarray:
        """The planted map of one cosmology row (needs ``id_param``, ``Om``, ``s8``) and perm,
        shape (n_bins, 12 nside^2), float32."""
        components = self.components(seed, int(parameters["id_param"]), int(perm))
        return self.assemble(components, parameters)
