"""Flat square patches cut from full-sky HEALPix maps by gnomonic projection.

The patch centres are the pixel centres of a coarse HEALPix grid (``centres_nside``, so
``12 centres_nside^2`` patches per sphere, spread evenly over the sky). Each patch is the
tangent-plane (gnomonic) projection about its centre, sampled on a ``patch_size`` x
``patch_size`` grid of ``resolution_arcmin`` pixels; the config's default 66 x 66 pixels of
13.7 arcmin match the native resolution of nside 256 (about 13.7 arcmin) and cover
15 deg x 15 deg.

The projection is done once: :func:`patch_pixel_indices` turns (nside, centres, size,
resolution) into the HEALPix pixel of every patch pixel, and :func:`extract_patches` is then a
single gather ``maps[:, indices]`` for any number of maps of that nside.

Orientation follows ``healpy.gnomview``: shown with ``imshow(origin="lower")``, north is up and
east is left (row index grows northward, column index westward).
"""

from __future__ import annotations

import healpy as hp
import numpy as np
from healpy.projector import GnomonicProj

from cosmo_sop.errors import InputError


def patch_centres(centres_nside: int) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of the patch centres: HEALPix pixel centres, RING order.

    Returns
    -------
    lon, lat : ndarray, shape (12 centres_nside^2,), float64, degrees
    """
    lon, lat = hp.pix2ang(centres_nside, np.arange(hp.nside2npix(centres_nside)), lonlat=True)
    return lon, lat


def min_centre_separation(centres_nside: int) -> float:
    """Smallest angle (degrees) between two patch centres of a ``centres_nside`` grid.

    The nearest centre of a HEALPix pixel is always one of its (up to) 8 neighbours.
    """
    pixels = np.arange(hp.nside2npix(centres_nside))
    neighbours = hp.get_all_neighbours(centres_nside, pixels)  # (8, npix), -1 where absent
    exists = neighbours >= 0
    centre = np.array(hp.pix2vec(centres_nside, pixels))
    other = np.array(hp.pix2vec(centres_nside, np.where(exists, neighbours, 0)))
    cosine = np.where(exists, np.einsum("ip,inp->np", centre, other), -1.0)
    return float(np.degrees(np.arccos(np.clip(cosine.max(), -1.0, 1.0))))


def patch_diagonal(patch_size: int, resolution_arcmin: float) -> float:
    """Angle (degrees) between opposite corners of a gnomonic patch, through its centre.

    The corners lie at tangent-plane distance ``patch_size * resolution / sqrt(2)`` from the
    centre, i.e. at angle ``arctan`` of that; twice this is the diameter of the smallest cap
    around the centre that holds the whole patch.
    """
    half_diagonal = patch_size * np.radians(resolution_arcmin / 60.0) / np.sqrt(2.0)
    return float(np.degrees(2.0 * np.arctan(half_diagonal)))


def check_patches_disjoint(centres_nside: int, patch_size: int, resolution_arcmin: float) -> None:
    """Raise InputError if patches of neighbouring centres could share sky.

    Overlapping patches would put the same pixels into several samples, which leaks between
    samples and inflates the apparent size of the data set. The check is conservative: it
    compares the patch diagonal with the smallest centre separation.
    """
    diagonal = patch_diagonal(patch_size, resolution_arcmin)
    separation = min_centre_separation(centres_nside)
    if diagonal > separation:
        side = patch_size * resolution_arcmin / 60.0
        raise InputError(
            "config keys 'ingest.patch_size', 'ingest.resolution_arcmin', 'ingest.centres_nside'",
            f"patches of {patch_size} x {resolution_arcmin} arcmin ({side:.1f} deg side, "
            f"{diagonal:.1f} deg diagonal) would overlap: centres at centres_nside "
            f"{centres_nside} are as close as {separation:.1f} deg; use fewer centres or "
            "smaller patches",
        )


def patch_pixel_indices(
    nside: int,
    lon: np.ndarray,
    lat: np.ndarray,
    patch_size: int,
    resolution_arcmin: float,
) -> np.ndarray:
    """HEALPix pixel (RING) under every pixel of every gnomonic patch.

    Nearest-pixel sampling: each patch pixel takes the value of the map pixel that contains
    its centre. At patch resolutions near the native one this keeps every patch value a true
    map value (interpolation would smooth small scales, by an amount that varies with the
    offset between the two grids), and it makes extraction a single gather.

    Parameters
    ----------
    nside
        Resolution of the maps the indices will be applied to.
    lon, lat
        Patch centres, degrees.
    patch_size
        Patch side, pixels.
    resolution_arcmin
        Patch pixel side, arcmin.

    Returns
    -------
    ndarray, shape (n_patch, patch_size, patch_size), int64
        ``indices[p, i, j]``: row ``i`` (growing northward), column ``j`` (growing westward).
    """
    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    indices = np.empty((lon.size, patch_size, patch_size), dtype=np.int64)
    # One projector per centre (a few thousand at most): healpy owns the rotation and the
    # projection conventions; the per-pixel work inside is vectorised.
    for patch, (centre_lon, centre_lat) in enumerate(zip(lon, lat, strict=True)):
        projector = GnomonicProj(
            rot=(centre_lon, centre_lat, 0.0),
            xsize=patch_size,
            ysize=patch_size,
            reso=resolution_arcmin,
        )
        x, y = projector.ij2xy()
        indices[patch] = hp.vec2pix(nside, *projector.xy2vec(x, y))
    return indices


def extract_patches(maps: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Cut patches from maps with a lookup from :func:`patch_pixel_indices`.

    Parameters
    ----------
    maps : ndarray, shape (n_bin, npix)
        HEALPix maps (RING) of the nside the indices were built for.
    indices : ndarray, shape (n_patch, size, size)

    Returns
    -------
    ndarray, shape (n_patch, n_bin, size, size), dtype of ``maps``
    """
    if maps.ndim != 2 or indices.size and indices.max() >= maps.shape[1]:
        raise ValueError(f"maps of shape {maps.shape} do not match the patch pixel indices")
    return np.ascontiguousarray(np.moveaxis(maps[:, indices], 0, 1))


def patch_outline(
    lon: float,
    lat: float,
    patch_size: int,
    resolution_arcmin: float,
    points_per_side: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) along the edge of one patch, a closed curve.

    The edges are straight in the tangent plane, hence great-circle arcs on the sphere; they
    are sampled so that figures can draw patch footprints on any sky projection.
    """
    half = patch_size / 2 * np.radians(resolution_arcmin / 60.0)
    edge = np.linspace(-half, half, points_per_side, endpoint=False)
    x = np.concatenate([edge, np.full_like(edge, half), -edge, np.full_like(edge, -half), [-half]])
    y = np.concatenate([np.full_like(edge, -half), edge, np.full_like(edge, half), -edge, [-half]])
    projector = GnomonicProj(rot=(lon, lat, 0.0))
    outline_lon, outline_lat = projector.xy2ang(x, y, lonlat=True)
    return np.asarray(outline_lon), np.asarray(outline_lat)
