"""Ingest: HEALPix convergence maps -> one Zarr store of flat patches, split by cosmology.

The dataset is built lazily with dask: one task per map file reads its bins
(:func:`cosmo_sop.sources.cosmogrid.read_kappa`) and cuts every patch with one gather
(:func:`cosmo_sop.ingest.patches.extract_patches`); the per-file blocks are concatenated along
``sample`` and rechunked to about ``ingest.chunk_samples`` (a whole number of maps, see
:func:`aligned_chunk`) before the atomic Zarr write. Memory therefore stays near one map per
worker plus the output chunks being written.

The store follows the patch-dataset contract of the project (``kappa(sample, bin, y, x)``
float32 with ``sample`` coordinates Om, s8, cosmology, perm, patch_lon, patch_lat,
patch_index, split and the ``bin`` coordinate). The split is by cosmology
(:mod:`cosmo_sop.ingest.split`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from tqdm.dask import TqdmCallback

from cosmo_sop import __version__, fanout, layout
from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.fanout import part_count
from cosmo_sop.ingest.bad_maps import (
    SkippedMaps,
    copy_without_skipped,
    unfiltered_path,
    write_without_skipped,
)
from cosmo_sop.ingest.patches import (
    check_patches_disjoint,
    extract_patches,
    patch_centres,
    patch_pixel_indices,
)
from cosmo_sop.ingest.split import split_cosmologies
from cosmo_sop.scheduler import array_scheduler
from cosmo_sop.sources import cosmogrid
from cosmo_sop.sources.cosmogrid import MapRecord
from cosmo_sop.storage import write_zarr


def aligned_chunk(chunk_samples: int, n_patch: int) -> int:
    """Samples per Zarr chunk: ``chunk_samples`` rounded so that chunks hold whole maps.

    Each output chunk then gathers whole per-file blocks (or splits one), so dask finishes and
    frees each block promptly. With chunks straddling files, dask's rechunk kept a growing
    number of blocks alive (about 90 MB more at 512 maps in our measurement).

    Returns
    -------
    ``n_patch * round(chunk_samples / n_patch)`` (at least ``n_patch``) if ``chunk_samples``
    reaches ``n_patch``; else the largest divisor of ``n_patch`` not above ``chunk_samples``.
    """
    if chunk_samples >= n_patch:
        return n_patch * max(1, round(chunk_samples / n_patch))
    return max(d for d in range(1, chunk_samples + 1) if n_patch % d == 0)


def _file_patches(
    path: Path,
    bins: Sequence[int],
    ia_amplitude: float | None,
    nside: int,
    indices: np.ndarray,
    skipped: SkippedMaps | None = None,
) -> np.ndarray:
    """One dask task: the patches (n_patch, n_bin, size, size) of one map file; zeros if the
    file is bad and ``skipped`` (``on_bad_map: skip``) notes it."""
    try:
        maps = cosmogrid.read_kappa(path, bins, ia_amplitude=ia_amplitude, nside=nside)
    except InputError as exc:
        if skipped is None:
            raise
        skipped.add(path, exc)
        return np.zeros((indices.shape[0], len(bins), *indices.shape[1:]), dtype=np.float32)
    return extract_patches(maps, indices)


def _first_nside(
    maps: Sequence[MapRecord],
    bins: list[int],
    ia_amplitude: float | None,
    skipped: SkippedMaps | None,
) -> int:
    """nside of the first map file (checked without reading its maps); with ``skipped``, of
    the first file that passes the check."""
    for record in maps:
        try:
            return cosmogrid.map_nside(record.path, bins, ia_amplitude)
        except InputError as exc:
            if skipped is None:
                raise
            skipped.add(record.path, exc)
    raise skipped.none_readable(len(maps))


def patch_dataset(
    maps: Sequence[MapRecord],
    settings: Mapping[str, Any],
    seed: int,
    ia_amplitude: float | None = None,
    skipped: SkippedMaps | None = None,
) -> xr.Dataset:
    """The lazy (dask-backed) patch dataset of ``maps``, with coordinates but no attrs.

    Cheap checks run now: the patch geometry, and the first file's datasets and nside (a
    wrong bin or a missing IA group fails here, before any map is read). Every other file is
    checked as it is read.

    Parameters
    ----------
    maps
        Files to ingest (:func:`cosmo_sop.sources.cosmogrid.list_maps`).
    settings
        The ``ingest`` config section (bins, patch_size, resolution_arcmin, centres_nside,
        split, chunk_samples; the chunk is rounded by :func:`aligned_chunk`).
    seed
        Master seed; fixes the train/val/test split.
    ia_amplitude
        A_IA for ``kappa + A_IA * ia``, or None for kappa alone.
    skipped
        For ``ingest.on_bad_map: skip``: bad files are noted here and give zeros (to be left
        out by :func:`cosmo_sop.ingest.bad_maps.write_without_skipped`); None raises.
    """
    if not maps:
        raise InputError("config key 'cosmogrid.cosmologies'", "selects no map files")
    bins = [int(b) for b in settings["bins"]]
    if len(set(bins)) != len(bins):
        raise InputError("config key 'ingest.bins'", f"repeats a tomographic bin: {bins}")
    size = int(settings["patch_size"])
    resolution = float(settings["resolution_arcmin"])
    centres_nside = int(settings["centres_nside"])
    check_patches_disjoint(centres_nside, size, resolution)
    nside = _first_nside(maps, bins, ia_amplitude, skipped)
    check_resolution(resolution, nside)
    lon, lat = patch_centres(centres_nside)

    geometry = (size, resolution, centres_nside)
    kappa = _lazy_patches(maps, bins, ia_amplitude, nside, (lon, lat), geometry, skipped)
    kappa = kappa.rechunk({0: aligned_chunk(int(settings["chunk_samples"]), lon.size)})
    # Over every selected cosmology, skipped files included: skipping moves no cosmology.
    splits = split_cosmologies([m.cosmology for m in maps], settings["split"], seed)
    coords = _sample_coords(maps, splits, lon, lat)
    coords["bin"] = ("bin", np.asarray(bins, dtype=np.int64))
    kappa_attrs = {"long_name": "weak-lensing convergence", "units": "1"}
    dims = ("sample", "bin", "y", "x")
    dataset = xr.Dataset({"kappa": (dims, kappa, kappa_attrs)}, coords=coords)
    dataset.attrs["nside"] = int(nside)
    return dataset


def check_resolution(resolution_arcmin: float, nside: int) -> None:
    """Refuse a patch pixel finer than half the HEALPix pixel of the maps.

    Finer patch pixels only repeat the map's pixels (the patches are a nearest-pixel gather):
    the patches look sharp, the networks learn the HEALPix pixel shapes, and nothing warns.
    Half a pixel still lets a patch place the pixel edges within one patch pixel.

    Parameters
    ----------
    resolution_arcmin
        The patch pixel (config key ``ingest.resolution_arcmin``), in arcmin.
    nside
        HEALPix nside of the maps.

    Raises
    ------
    InputError
        Naming the config key, both pixel sizes (arcmin) and the nside.
    """
    side = float(np.degrees(np.sqrt(4 * np.pi / (12 * nside**2))) * 60)  # arcmin
    if resolution_arcmin < side / 2:
        raise InputError(
            "config key 'ingest.resolution_arcmin'",
            f"{resolution_arcmin:g} arcmin is finer than the maps hold: their HEALPix pixels "
            f"(nside {nside}) are {side:.3g} arcmin across, so a patch pixel must be at least "
            f"half that, {side / 2:.3g} arcmin",
        )


def _lazy_patches(
    maps: Sequence[MapRecord],
    bins: list[int],
    ia_amplitude: float | None,
    nside: int,
    centres: tuple[np.ndarray, np.ndarray],
    geometry: tuple[int, float, int],
    skipped: SkippedMaps | None,
) -> da.Array:
    """Patches (sample, bin, y, x) of every file, one dask task per file, map-major;
    ``centres`` is (lon, lat), ``geometry`` (patch_size, resolution_arcmin, centres_nside)."""
    lon, lat = centres
    size, resolution, centres_nside = geometry
    # Explicit task names: tokenising the (large) lookup once per task would cost more than
    # the gather itself.
    token = tokenize(
        [str(m.path) for m in maps], bins, ia_amplitude, nside, size, resolution, centres_nside
    )
    # The projection is computed once and shared by every task (threads share memory).
    indices = dask.delayed(
        patch_pixel_indices(nside, lon, lat, size, resolution), name=f"patch-indices-{token}"
    )
    read = dask.delayed(_file_patches)
    blocks = [
        da.from_delayed(
            read(
                path,
                bins,
                ia_amplitude,
                nside,
                indices,
                skipped,
                dask_key_name=f"patches-{token}-{i}",
            ),
            shape=(lon.size, len(bins), size, size),
            dtype=np.float32,
        )
        for i, path in enumerate(m.path for m in maps)
    ]
    return da.concatenate(blocks, axis=0)


def _sample_coords(
    maps: Sequence[MapRecord], splits: Mapping[str, str], lon: np.ndarray, lat: np.ndarray
) -> dict[str, tuple]:
    """The ``sample`` coordinates: labels of each map repeated over its patches, and the
    patch index and centre of each sample."""
    n_patch = lon.size

    def per_map(values: list, dtype) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), n_patch)

    sample = ("sample",)
    return {
        "Om": (sample, per_map([m.Om for m in maps], np.float64)),
        "s8": (sample, per_map([m.s8 for m in maps], np.float64)),
        "cosmology": (sample, per_map([m.cosmology for m in maps], str)),
        "perm": (sample, per_map([m.perm for m in maps], np.int64)),
        "split": (sample, per_map([splits[m.cosmology] for m in maps], str)),
        "patch_index": (sample, np.tile(np.arange(n_patch, dtype=np.int64), len(maps))),
        "patch_lon": (sample, np.tile(lon, len(maps)), {"units": "deg"}),
        "patch_lat": (sample, np.tile(lat, len(maps)), {"units": "deg"}),
    }


def attributed_dataset(
    maps: Sequence[MapRecord],
    settings: Mapping[str, Any],
    *,
    seed: int,
    source: str,
    config_attrs: Mapping[str, Any],
    ia_amplitude: float | None = None,
    skipped: SkippedMaps | None = None,
) -> xr.Dataset:
    """:func:`patch_dataset` with the store's attributes (provenance, config, pixel scale)."""
    dataset = patch_dataset(maps, settings, seed, ia_amplitude, skipped)
    resolution = float(settings["resolution_arcmin"])
    dataset.attrs.update(
        pixel_scale_arcmin=resolution,
        pixel_scale=str(u.Quantity(resolution, u.arcmin)),
        source=source,
        config=json.dumps(config_attrs, sort_keys=True),
        cosmo_sop_version=__version__,
    )
    return dataset


def _skipped_maps(maps: Sequence[MapRecord], settings: Mapping[str, Any]) -> SkippedMaps | None:
    """Where bad files are noted with ``ingest.on_bad_map: skip``; None with ``error``."""
    on_bad_map = settings.get("on_bad_map", defaults("ingest")["on_bad_map"])
    return SkippedMaps([m.path for m in maps]) if on_bad_map == "skip" else None


def _progress(maps: Sequence[MapRecord]) -> TqdmCallback:
    return TqdmCallback(desc=f"ingest {len(maps)} maps", unit="task")


def ingest(
    output: str | os.PathLike,
    maps: Sequence[MapRecord],
    settings: Mapping[str, Any],
    *,
    seed: int,
    source: str,
    config_attrs: Mapping[str, Any],
    ia_amplitude: float | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """Cut every map into patches and write the patch dataset to a Zarr store, atomically.

    With ``settings["on_bad_map"] == "skip"`` a bad map file is left out with a warning and
    listed in the store's ``skipped_maps`` attribute (:mod:`cosmo_sop.ingest.bad_maps`);
    with ``"error"`` (the default) it stops the ingest with an InputError naming it.

    Parameters
    ----------
    output
        The Zarr store to write; it appears only once complete.
    maps, settings, seed, ia_amplitude
        As :func:`patch_dataset`.
    source
        Provenance written to the ``source`` attribute, e.g. ``"cosmogrid:/data/CosmoGridV1"``.
    config_attrs
        The config sections used, stored as JSON in the ``config`` attribute.
    workers
        Threads reading files in parallel (each holds one map file's bins in memory).
    scheduler
        Address of a dask.distributed scheduler to compute on instead
        (:func:`cosmo_sop.scheduler.array_scheduler`).

    Returns
    -------
    The path of the written store.
    """
    output = Path(output)
    skipped = _skipped_maps(maps, settings)
    # A first pass that a kill left behind (write_without_skipped removes its own).
    shutil.rmtree(unfiltered_path(output), ignore_errors=True)
    dataset = attributed_dataset(
        maps,
        settings,
        seed=seed,
        source=source,
        config_attrs=config_attrs,
        ia_amplitude=ia_amplitude,
        skipped=skipped,
    )
    # Threads, not processes: numpy's gather releases the GIL (h5py does not), the patch
    # lookup is shared instead of pickled to every task, and an InputError raised in a task
    # reaches the caller unchanged. Measured on 32 nside-256 maps with 2 workers: threads
    # 13-18 maps/s, dask's (spawn) process pool 1.7 maps/s.
    with array_scheduler(workers, scheduler), _progress(maps):
        if skipped is None:
            return write_zarr(dataset, output)
        chunk = dataset.kappa.data.chunksize[0]
        return write_without_skipped(dataset, output, [m.path for m in maps], skipped, chunk)


def ingest_part(
    output: str | os.PathLike,
    maps: Sequence[MapRecord],
    settings: Mapping[str, Any],
    *,
    part: str | int,
    n_parts: int,
    cosmologies_per_job: int,
    seed: int,
    source: str,
    config_attrs: Mapping[str, Any],
    ia_amplitude: float | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """One step of an ingest in parts (:mod:`cosmo_sop.fanout`): ``part`` ``"start"``, a part
    number, or ``"finish"``; the store written at the end equals :func:`ingest`'s, bit for bit.

    ``n_parts`` is the number of parts the workflow planned, of ``cosmologies_per_job``
    cosmologies each; the other arguments are :func:`ingest`'s. Returns the path written (the
    plan, the part's record, or the store).
    """
    output = Path(output)
    skipped = _skipped_maps(maps, settings)
    if part == "finish":
        if skipped is None:
            return fanout.finish(output, ("kappa",))
        # As a single job does: the maps the parts skipped are left out in a copy.
        for record in fanout.part_records(output):
            skipped.merge(record["skipped_maps"])
        with fanout.assembled(output) as full:
            chunk = aligned_chunk(int(settings["chunk_samples"]), full.sizes["sample"] // len(maps))
            with array_scheduler(workers, scheduler):
                copy_without_skipped(full, output, [m.path for m in maps], skipped, chunk)
        shutil.rmtree(layout.parts_store(output))
        return output
    dataset = attributed_dataset(
        maps,
        settings,
        seed=seed,
        source=source,
        config_attrs=config_attrs,
        ia_amplitude=ia_amplitude,
        skipped=skipped,
    )
    if part == "start":
        chunk = fanout.sample_chunk(dataset)
        regions = fanout.part_regions(dataset.cosmology.values, chunk, cosmologies_per_job, n_parts)
        return fanout.start(dataset, output, regions)
    # The files this part skipped, for the finishing step.
    noted = None if skipped is None else lambda: {"skipped_maps": skipped.records()}
    with array_scheduler(workers, scheduler), _progress(maps):
        return fanout.fill(dataset, output, int(part), noted)


def selected_maps(
    config: Mapping[str, Any], root: str | os.PathLike
) -> tuple[list[MapRecord], float | None, str]:
    """The map files the validated ``config`` ingests from ``root``, the IA amplitude, and the
    provenance of the source.

    The mock (``source: mock``) is written in the release layout as the ``grid`` set without
    baryons or IA, with ``mock.n_perms`` permutations per cosmology.
    """
    if config["source"] == "mock":
        selection = {
            "simulation_set": "grid",
            "cosmologies": "all",
            "perms": config["mock"]["n_perms"],
            "baryonified": False,
        }
        ia_amplitude, source = None, "mock"
    else:
        section = config["cosmogrid"]
        keys = ("simulation_set", "cosmologies", "perms", "baryonified")
        selection = {key: section[key] for key in keys}
        ia_amplitude, source = section["ia_amplitude"], f"cosmogrid:{Path(root).resolve()}"
    skip = config["ingest"]["on_bad_map"] == "skip"
    maps = cosmogrid.list_maps(root, **selection, require_files=not skip)
    return maps, ia_amplitude, source


def cosmology_count(config: Mapping[str, Any], root: str | os.PathLike) -> int:
    """How many cosmologies the validated ``config`` ingests: the mock's from the config (it
    may not be written yet), the release's from its metainfo file (no map file is opened)."""
    if config["source"] == "mock":
        return int(config["mock"]["n_cosmologies"])
    config = {**config, "ingest": {**config["ingest"], "on_bad_map": "skip"}}  # no file checks
    maps, _, _ = selected_maps(config, root)
    return len({m.cosmology for m in maps})


def run(
    config: Mapping[str, Any],
    *,
    root: str | os.PathLike,
    output: str | os.PathLike,
    workers: int = 1,
    part: str | int | None = None,
    n_parts: int | None = None,
) -> Path:
    """The ``ingest`` step: ingest as the validated ``config`` says, from the release (or
    mock) at ``root``, into the Zarr store ``output``; with ``part``, one step of an ingest in
    ``n_parts`` parts (:func:`ingest_part`, config key ``parallel.cosmologies_per_job``)."""
    maps, ia_amplitude, source = selected_maps(config, root)
    used = ("seed", "source", "mock" if config["source"] == "mock" else "cosmogrid", "ingest")
    config_attrs = {key: config[key] for key in used}
    # How bad files are handled does not make the patches (skipped_maps records what was
    # left out), and leaving it out keeps the stores of earlier versions identical.
    config_attrs["ingest"] = {k: v for k, v in config["ingest"].items() if k != "on_bad_map"}
    common = {
        "seed": int(config["seed"]),
        "source": source,
        "config_attrs": config_attrs,
        "ia_amplitude": ia_amplitude,
        "workers": workers,
        "scheduler": config["parallel"]["dask_scheduler"],
    }
    if part is None:
        return ingest(output, maps, config["ingest"], **common)
    per_job = config["parallel"]["cosmologies_per_job"]
    if per_job is None:
        raise InputError("--part", "needs config key 'parallel.cosmologies_per_job'")
    if n_parts is None:
        n_parts = part_count(cosmology_count(config, root), per_job)
    return ingest_part(
        output,
        maps,
        config["ingest"],
        part=part,
        n_parts=n_parts,
        cosmologies_per_job=per_job,
        **common,
    )
