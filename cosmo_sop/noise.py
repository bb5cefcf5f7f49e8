"""Galaxy shape noise and smoothing of the flat convergence patches.

A lensing survey measures kappa from galaxy ellipticities, so each pixel carries the intrinsic
ellipticity scatter of the galaxies in it, averaged down by their number:

.. math::

    \\sigma_\\mathrm{pix} = \\frac{\\sigma_e}{\\sqrt{n_\\mathrm{gal} A_\\mathrm{pix}}},

with :math:`\\sigma_e` the ellipticity dispersion per component, :math:`n_\\mathrm{gal}` the
source density of the tomographic bin in arcmin^-2 and :math:`A_\\mathrm{pix}` the pixel area in
arcmin^2. The noise is white and Gaussian, independent between pixels and bins. An optional
Gaussian smoothing is applied to the *noisy* map afterwards, as a survey analysis would.

Each noise level of the config is one store: the same patches (a plain copy for a noiseless,
unsmoothed level), so every later step sees the same layout whatever the level.

Reproducibility: the noise of sample ``i`` of level ``name`` is drawn from
``np.random.default_rng([seed, crc32(name), i])``, so it depends neither on the chunking of the
store nor on the number of workers, and two levels never share a realisation.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from cosmo_sop.config import with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import smooth_maps
from cosmo_sop.scheduler import array_scheduler
from cosmo_sop.storage import open_zarr, write_zarr

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def pixel_noise_sigma(
    sigma_e: float, n_gal_arcmin2: float | Sequence[float] | np.ndarray, pixel_arcmin: float
) -> np.ndarray:
    """Standard deviation of the shape noise in kappa per pixel.

    Parameters
    ----------
    sigma_e
        Intrinsic ellipticity dispersion per component (dimensionless).
    n_gal_arcmin2
        Source galaxy density of each bin, in arcmin^-2 (scalar or one value per bin).
    pixel_arcmin
        Pixel side in arcmin.

    Returns
    -------
    ndarray
        sigma_e / sqrt(n_gal * pixel_arcmin^2), one value per entry of ``n_gal_arcmin2``
        (dimensionless, kappa units).
    """
    n_gal = np.asarray(n_gal_arcmin2, dtype=np.float64)
    return sigma_e / np.sqrt(n_gal * pixel_arcmin**2)


def galaxy_density_per_bin(
    n_gal_arcmin2: float | Sequence[float], n_bins: int, where: str = "n_gal_arcmin2"
) -> np.ndarray:
    """Source density of each tomographic bin in arcmin^-2.

    A scalar is the total density of the survey, split equally over the ``n_bins`` bins; a list
    gives the density of each bin and must have ``n_bins`` entries.

    Raises
    ------
    InputError
        Naming ``where`` if a list has the wrong length or a density is not positive.
    """
    if np.ndim(n_gal_arcmin2) == 0:
        density = np.full(n_bins, float(n_gal_arcmin2) / n_bins)
    else:
        density = np.asarray(n_gal_arcmin2, dtype=np.float64)
        if density.shape != (n_bins,):
            raise InputError(
                where,
                f"lists {density.size} galaxy densities but the patches have {n_bins} "
                "tomographic bins (give one per bin, or a single total)",
            )
    if not np.all(density > 0):
        raise InputError(where, f"galaxy densities must be positive, got {density.tolist()}")
    return density


def fwhm_to_sigma_pixels(fwhm_arcmin: float, pixel_arcmin: float) -> float:
    """Standard deviation in pixels of a Gaussian kernel of the given FWHM in arcmin."""
    return float(fwhm_arcmin) / FWHM_PER_SIGMA / float(pixel_arcmin)


def level_stream(name: str) -> int:
    """Integer that identifies a noise level in the seed sequence (CRC-32 of its name)."""
    return zlib.crc32(name.encode("utf-8"))


def sample_generators(seed: int, level_name: str, sample_indices: Iterable[int]) -> list:
    """One independent random generator per sample, keyed by (seed, level, sample index)."""
    stream = level_stream(level_name)
    return [np.random.default_rng([seed, stream, int(i)]) for i in sample_indices]


def noisy_patches(
    kappa: np.ndarray, sigma_pix: np.ndarray, generators: Sequence[np.random.Generator]
) -> np.ndarray:
    """Add white Gaussian shape noise to a stack of patches.

    Parameters
    ----------
    kappa
        Convergence patches, shape (sample, bin, y, x).
    sigma_pix
        Noise standard deviation of each bin, shape (bin,), in kappa units.
    generators
        One generator per sample (see :func:`sample_generators`).

    Returns
    -------
    ndarray
        ``kappa`` plus noise, same shape, float32.
    """
    if len(generators) != kappa.shape[0]:
        raise ValueError(f"{len(generators)} generators for {kappa.shape[0]} samples")
    # One generator per sample (not one per chunk) is what makes the result independent of the
    # chunking; drawing a whole (bin, y, x) block per call keeps the Python loop per map only.
    unit = np.empty(kappa.shape, dtype=np.float32)
    for sample, generator in enumerate(generators):
        generator.standard_normal(kappa.shape[1:], dtype=np.float32, out=unit[sample])
    sigma = np.asarray(sigma_pix, dtype=np.float32)[None, :, None, None]
    return (kappa + sigma * unit).astype(np.float32, copy=False)


def level_with_defaults(level: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of the config's ``noise`` list, checked by the schema and completed with the
    defaults of its items (``name`` is required).

    Raises
    ------
    InputError
        Naming the level and the config key that fails the schema.
    """
    if not isinstance(level, Mapping):
        raise InputError("config key 'noise'", f"a noise level must be a mapping, got {level!r}")
    where = f"noise level {level.get('name', '(unnamed)')!r}"
    return with_defaults("noise", [dict(level)], where=where)[0]


def _noisy_block(
    block: np.ndarray,
    block_info: dict | None = None,
    *,
    seed: int,
    level_name: str,
    sigma_pix: np.ndarray,
    shape_noise: bool,
    smoothing_sigma_pixels: float,
) -> np.ndarray:
    start, stop = block_info[0]["array-location"][0]
    out = block.astype(np.float32, copy=False)
    if shape_noise:
        out = noisy_patches(out, sigma_pix, sample_generators(seed, level_name, range(start, stop)))
    return smooth_maps(out, smoothing_sigma_pixels)


def run(
    config: Mapping[str, Any],
    *,
    level: str,
    input_store: str | os.PathLike,
    output_store: str | os.PathLike,
    workers: int = 1,
) -> Path:
    """The ``noise`` step: :func:`add_noise` of the validated config's level named ``level``.

    Raises
    ------
    InputError
        If the config has no noise level of that name.
    """
    levels = {entry["name"]: entry for entry in config["noise"]}
    if level not in levels:
        raise InputError("--level", f"no noise level '{level}' in the config ({list(levels)})")
    return add_noise(
        input_store,
        output_store,
        levels[level],
        seed=config["seed"],
        workers=workers,
        scheduler=config["parallel"]["dask_scheduler"],
    )


def add_noise(
    input_store: str | os.PathLike,
    output_store: str | os.PathLike,
    level: Mapping[str, Any],
    seed: int,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """Write the patches of ``input_store`` with the shape noise of ``level`` to ``output_store``.

    Parameters
    ----------
    input_store
        Patch store with ``kappa(sample, bin, y, x)`` and attr ``pixel_scale_arcmin``.
    output_store
        Where the noisy copy is written (atomically: nothing appears if this fails).
    level
        One entry of the config's ``noise`` list (missing keys take the schema defaults).
    seed
        Master seed (non-negative integer).
    workers
        Threads used to compute the chunks.
    scheduler
        Address of a dask.distributed scheduler to compute on instead
        (:func:`cosmo_sop.scheduler.array_scheduler`).

    Returns
    -------
    Path
        ``output_store``. Its attrs are those of the input plus ``noise_level`` (the name),
        ``noise`` (JSON of the full level) and ``sigma_pix`` (noise std per bin before
        smoothing, kappa units; zeros without shape noise).
    """
    level = level_with_defaults(level)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("config key 'seed'", f"must be a non-negative integer, got {seed!r}")
    ds, pixel_arcmin = _read_patches(input_store)
    kappa = ds["kappa"]
    sigma_pix = _level_sigma_pix(level, kappa.sizes["bin"], pixel_arcmin)
    smoothing = fwhm_to_sigma_pixels(level["smoothing_fwhm_arcmin"], pixel_arcmin)

    data = kappa.data.rechunk({1: -1, 2: -1, 3: -1})
    if level["shape_noise"] or smoothing > 0:
        data = da.map_blocks(
            _noisy_block,
            data,
            dtype=np.float32,
            seed=int(seed),
            level_name=level["name"],
            sigma_pix=sigma_pix,
            shape_noise=level["shape_noise"],
            smoothing_sigma_pixels=smoothing,
        )
    out = ds.copy()
    out["kappa"] = (kappa.dims, data.astype(np.float32), kappa.attrs)
    for variable in out.variables.values():
        variable.encoding = {}  # chunks/compressors of the input must not constrain the output
    out.attrs = {
        **ds.attrs,
        "noise_level": level["name"],
        "noise": json.dumps(level, sort_keys=True),
        "sigma_pix": [float(s) for s in sigma_pix],
    }
    with (
        array_scheduler(workers, scheduler),
        TqdmCallback(desc=f"noise {level['name']}", tqdm_class=tqdm),
    ):
        return write_zarr(out, output_store)


def _read_patches(input_store: str | os.PathLike) -> tuple[xr.Dataset, float]:
    """The patch store (lazy) and its pixel side in arcmin, checked."""
    ds = open_zarr(input_store, ("kappa",))
    kappa = ds["kappa"]
    if kappa.dims != ("sample", "bin", "y", "x"):
        raise InputError(input_store, f"kappa has dims {kappa.dims}, expected (sample, bin, y, x)")
    if "pixel_scale_arcmin" not in ds.attrs:
        raise InputError(input_store, "attr 'pixel_scale_arcmin' is missing")
    pixel_arcmin = float(ds.attrs["pixel_scale_arcmin"])
    if not pixel_arcmin > 0:
        raise InputError(input_store, f"attr 'pixel_scale_arcmin' = {pixel_arcmin} is not positive")
    return ds, pixel_arcmin


def _level_sigma_pix(level: Mapping[str, Any], n_bins: int, pixel_arcmin: float) -> np.ndarray:
    """Shape-noise standard deviation per bin of a complete level (zeros without noise)."""
    if not level["shape_noise"]:
        return np.zeros(n_bins)
    where = f"config key 'noise[{level['name']}].n_gal_arcmin2'"
    density = galaxy_density_per_bin(level["n_gal_arcmin2"], n_bins, where=where)
    return pixel_noise_sigma(level["sigma_e"], density, pixel_arcmin)
