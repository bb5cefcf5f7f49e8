"""Segmentation of convergence patches into the groups that Sum-of-Parts attributes to.

Every map is cut into at most ``max_segments`` connected segments, labelled 0, 1, ... without
gaps. Methods (config ``segmentation.method``):

``watershed`` (default)
    Physically motivated segments: one per prominent peak (cluster-like, over-dense) and one per
    prominent trough (void-like, under-dense). Basins grow from the extrema of the smoothed map
    and meet where the map crosses its median, so over- and under-dense regions are separated.
``patch``
    A fixed square grid of ``patch_pixels`` squares (the SOP image baseline).
``slic``
    SLIC superpixels (k-means in position and kappa) with ``slic_compactness``.

With several tomographic bins one map is segmented per sample: the mean over bins of each bin's
standardised map, ``mean_b((kappa_b - mean(kappa_b)) / std(kappa_b))`` (statistics over the
patch), so every bin weighs equally whatever its lensing amplitude and noise. It is
Gaussian-smoothed by ``smoothing_pixels`` before segmenting. The same segments serve all bins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.measure import label as connected_label
from skimage.segmentation import relabel_sequential, slic, watershed
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from cosmo_sop import fanout
from cosmo_sop.config import with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import detection_map, smooth_maps
from cosmo_sop.scheduler import array_scheduler
from cosmo_sop.storage import open_zarr, write_zarr

METHODS = ("watershed", "patch", "slic")


def _in_plane(connectivity: int) -> np.ndarray:
    """Structuring element for a stack (sample, y, x) that links pixels within a map only."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    return structure


def extrema_markers(images: np.ndarray, min_distance: int, max_markers: int) -> np.ndarray:
    """Watershed markers of a stack of maps: the most extreme peaks and troughs of each.

    A peak is a pixel above the map's median that is the maximum of the
    (2 min_distance + 1)^2 square around it; a trough the same below the median with the
    minimum. This is the rule of ``skimage.feature.peak_local_max(image - median,
    min_distance, threshold_abs=0, exclude_border=False)`` applied to the map and to its
    negative: two such extrema are never within ``min_distance`` pixels (Chebyshev) of each
    other unless their values tie exactly, and a tied plateau keeps one pixel, as there. Written
    here because peak_local_max takes one image at a time and spends most of its time in a
    Python spacing loop that this rule makes redundant; here the whole chunk is one array op.

    Of each map's extrema the ``max_markers`` farthest from the median are kept, so the
    strongest clusters and voids always get their own segment. Extrema on the patch border
    count: a structure cut by the border is still a structure.

    Parameters
    ----------
    images
        Maps, shape (sample, y, x).

    Returns
    -------
    ndarray
        int32 markers of the shape of ``images``: 0 off the markers, 1, 2, ... on them (numbered
        through the stack, at most ``max_markers`` per map).
    """
    contrast = images - np.median(images, axis=(-2, -1), keepdims=True)
    window = (1, 2 * min_distance + 1, 2 * min_distance + 1)
    is_peak = contrast == ndimage.maximum_filter(contrast, size=window, mode="nearest")
    is_trough = contrast == ndimage.minimum_filter(contrast, size=window, mode="nearest")
    candidates = (is_peak & (contrast > 0)) | (is_trough & (contrast < 0))
    # one pixel per plateau of tied extrema (the first in raster order)
    plateaus, _ = ndimage.label(candidates, structure=_in_plane(2))
    _, first = np.unique(plateaus.ravel(), return_index=True)
    flat = first[1:]  # drop the background
    plane = images.shape[-2] * images.shape[-1]
    sample = flat // plane
    strength = np.abs(contrast.ravel()[flat])
    # rank the extrema of each map by strength (ties: raster order) and keep the first ones
    order = np.lexsort((flat, -strength, sample))
    by_sample = sample[order]
    rank = np.arange(order.size) - np.searchsorted(by_sample, by_sample)
    keep = flat[order[rank < max_markers]]
    markers = np.zeros(images.shape, dtype=np.int32)
    markers.ravel()[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return markers


def watershed_segments(images: np.ndarray, min_distance: int, max_segments: int) -> np.ndarray:
    """Segment each map of a stack (sample, y, x) into basins around its peaks and troughs.

    The flooded elevation is ``-|image - median(image)|``: peaks and troughs alike are its
    minima, so basins grow outward from both kinds of extrema in order of decreasing contrast
    and meet on the ridge ``image = median``, the contour between over- and under-dense regions
    (the median, not the mean, because the skewed lognormal-like field has a mean pulled up by
    its peaks). Adjacent peaks split along the saddle between them. Unlike watershedding
    ``uint8(kappa * 255)``, negative kappa (voids) is neither wrapped around nor clipped.

    Returns
    -------
    ndarray
        int32 labels, at most ``max_segments`` per map, unique through the stack; a featureless
        map (no extremum) is all 0.
    """
    markers = extrema_markers(images, min_distance, max_segments)
    elevation = -np.abs(images - np.median(images, axis=(-2, -1), keepdims=True))
    labels = np.zeros(images.shape, dtype=np.int32)
    # One watershed call per map: a single call on the stack with an in-plane footprint gives
    # the same labels but is several times slower (one large priority queue).
    for sample in np.flatnonzero(markers.any(axis=(-2, -1))):
        labels[sample] = watershed(elevation[sample], markers[sample], connectivity=1)
    return labels


def patch_segments(shape: tuple[int, int], patch_pixels: int) -> np.ndarray:
    """Square grid of ``patch_pixels`` squares (the last row and column may be narrower)."""
    rows = np.arange(shape[0]) // patch_pixels
    cols = np.arange(shape[1]) // patch_pixels
    n_cols = -(-shape[1] // patch_pixels)
    return (rows[:, None] * n_cols + cols[None, :]).astype(np.int32)


def slic_segments(images: np.ndarray, max_segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels of each single-channel map of a stack, about ``max_segments`` each."""
    labels = np.empty(images.shape, dtype=np.int32)
    for sample, image in enumerate(images):  # skimage's slic takes one image at a time
        labels[sample] = slic(
            image,
            n_segments=max_segments,
            compactness=compactness,
            channel_axis=None,
            start_label=0,
            enforce_connectivity=True,
        )
    return labels


def connected_segments(labels: np.ndarray) -> np.ndarray:
    """Split every label of a stack (sample, y, x) into its 4-connected components.

    Returns labels 0..n-1 per map, numbered in raster order of each segment's first pixel, so
    the result of a map does not depend on the other maps of the stack.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return labels.astype(np.int32)
    # Make values unique across maps, then label 4-connected runs of equal value in the stack
    # (measure.label, unlike ndimage.label, separates touching regions of different values).
    shifted = labels - labels.min()
    offset = np.arange(labels.shape[0]).reshape(-1, 1, 1) * (int(shifted.max()) + 1)
    pieces = connected_label(shifted + offset, background=-1, connectivity=1)
    # Within one map the values differ from those of the other maps, so no component spans
    # two maps even though connectivity=1 includes the sample axis.
    _, first, inverse = np.unique(pieces.ravel(), return_index=True, return_inverse=True)
    plane = labels.shape[-2] * labels.shape[-1]
    sample = first // plane
    order = np.lexsort((first, sample))
    by_sample = sample[order]
    local = np.empty(first.size, dtype=np.int32)
    local[order] = np.arange(order.size) - np.searchsorted(by_sample, by_sample)
    return local[inverse].reshape(labels.shape)


def merge_smallest_segments(labels: np.ndarray, max_segments: int) -> np.ndarray:
    """Merge the smallest segment of a map (y, x) into the neighbour it shares most border
    with, until at most ``max_segments`` remain.

    Segments stay 4-connected; labels are returned 0..n-1 without gaps. The pixels are read
    once to build a segment contact matrix; the merging works on that small matrix, one
    iteration per surplus segment.
    """
    labels = relabel_sequential(labels - labels.min() + 1)[0] - 1
    n = int(labels.max()) + 1
    if n <= max_segments:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    contact = np.zeros((n, n), dtype=np.int64)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = a != b
        np.add.at(contact, (a[differ], b[differ]), 1)
    contact += contact.T
    parent = np.arange(n)
    for _ in range(n - max_segments):
        small = int(np.argmin(sizes))
        target = int(np.argmax(contact[small]))
        parent[small] = target
        sizes[target] += sizes[small]
        sizes[small] = np.inf  # retired
        contact[target] += contact[small]
        contact[:, target] += contact[:, small]
        contact[target, target] = 0
        contact[small] = 0
        contact[:, small] = 0
    while True:  # follow merges of merged segments to their final segment
        root = parent[parent]
        if np.array_equal(root, parent):
            break
        parent = root
    return (relabel_sequential(parent[labels] + 1)[0] - 1).astype(np.int32)


def segment_maps(images: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Segment a stack of detection maps (sample, y, x) with a complete ``segmentation`` config
    (every key given, e.g. by :func:`cosmo_sop.config.with_defaults`).

    Returns
    -------
    ndarray
        int32 labels (sample, y, x), per map 0..n-1 with n <= ``max_segments``, each segment
        4-connected.
    """
    method = config["method"]
    max_segments = config["max_segments"]
    images = smooth_maps(np.asarray(images, dtype=np.float64), config["smoothing_pixels"])
    if method == "watershed":
        labels = watershed_segments(images, config["min_distance_pixels"], max_segments)
    elif method == "patch":
        grid = patch_segments(images.shape[-2:], config["patch_pixels"])
        labels = np.broadcast_to(grid, images.shape)
    elif method == "slic":
        labels = slic_segments(images, max_segments, config["slic_compactness"])
    else:
        raise InputError(
            "config key 'segmentation.method'", f"unknown method {method!r}, not one of {METHODS}"
        )
    labels = connected_segments(labels)
    # Only maps over the bound are merged (never for watershed, whose markers are capped).
    for sample in np.flatnonzero(labels.max(axis=(-2, -1)) >= max_segments):
        labels[sample] = merge_smallest_segments(labels[sample], max_segments)
    return labels


def segment_map(image: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Segment one detection map (y, x); see :func:`segment_maps`."""
    return segment_maps(np.asarray(image)[None], config)[0]


def segment_patches(kappa: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """Segment patches (sample, bin, y, x) into labels (sample, y, x), int32.

    The map segmented is :func:`cosmo_sop.kappa.detection_map` of each patch.
    """
    return segment_maps(detection_map(kappa), config)


def _check_patch_grid(config: Mapping[str, Any], shape: tuple[int, int]) -> None:
    """The check that needs the patch shape: the squares of method 'patch' must not exceed
    ``max_segments``; raise InputError naming the config key."""
    if config["method"] == "patch":
        p = config["patch_pixels"]
        n = -(-shape[0] // p) * -(-shape[1] // p)
        if n > config["max_segments"]:
            raise InputError(
                "config key 'segmentation.patch_pixels'",
                f"{p}-pixel squares cut {shape[0]}x{shape[1]} patches into {n} segments, more "
                f"than segmentation.max_segments = {config['max_segments']}; raise one of them",
            )


def run(
    config: Mapping[str, Any],
    *,
    input_store: str | os.PathLike,
    output_store: str | os.PathLike,
    workers: int = 1,
    part: str | int | None = None,
    n_parts: int | None = None,
) -> Path:
    """The ``segment`` step: :func:`segment` with the validated config's ``segmentation``; with
    ``part``, one step of a segmentation in ``n_parts`` parts (:func:`segment_part`)."""
    scheduler = config["parallel"]["dask_scheduler"]
    if part is None:
        return segment(
            input_store, output_store, config["segmentation"], workers=workers, scheduler=scheduler
        )
    per_job = config["parallel"]["cosmologies_per_job"]
    if per_job is None:
        raise InputError("--part", "needs config key 'parallel.cosmologies_per_job'")
    return segment_part(
        input_store,
        output_store,
        config["segmentation"],
        part=part,
        n_parts=n_parts,
        cosmologies_per_job=per_job,
        workers=workers,
        scheduler=scheduler,
    )


def segments_dataset(
    input_store: str | os.PathLike, seg_config: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """The lazy (dask-backed) ``segments(sample, y, x)`` of every patch of ``input_store``, with
    the sample coordinates and attrs of the input plus ``segmentation`` (JSON of the resolved
    config); chunked along ``sample`` as the input. Arguments as :func:`segment`."""
    if seg_config is not None and not isinstance(seg_config, Mapping):
        raise InputError("config key 'segmentation'", f"must be a mapping, got {seg_config!r}")
    config = with_defaults("segmentation", seg_config, where="config")
    ds = open_zarr(input_store, ("kappa",))
    kappa = ds["kappa"]
    if kappa.dims != ("sample", "bin", "y", "x"):
        raise InputError(input_store, f"kappa has dims {kappa.dims}, expected (sample, bin, y, x)")
    _check_patch_grid(config, (kappa.sizes["y"], kappa.sizes["x"]))

    data = kappa.data.rechunk({1: -1, 2: -1, 3: -1})
    labels = da.map_blocks(
        segment_patches,
        data,
        config,
        drop_axis=1,
        dtype=np.int32,
        meta=np.empty((0, 0, 0), dtype=np.int32),
    )
    coords = {k: v for k, v in ds.coords.items() if set(v.dims) <= {"sample", "y", "x"}}
    out = xr.Dataset({"segments": (("sample", "y", "x"), labels)}, coords=coords)
    for variable in out.variables.values():
        variable.encoding = {}
    out.attrs = {**ds.attrs, "segmentation": json.dumps(config, sort_keys=True)}
    return out


def _progress() -> TqdmCallback:
    return TqdmCallback(desc="segmentation", tqdm_class=tqdm)


def segment(
    input_store: str | os.PathLike,
    output_store: str | os.PathLike,
    seg_config: Mapping[str, Any] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """Segment every patch of ``input_store`` and write ``segments(sample, y, x)``.

    Parameters
    ----------
    input_store
        Patch store with ``kappa(sample, bin, y, x)`` (usually a noise level's store).
    output_store
        Where ``segments`` is written, atomically, with the ``sample`` coordinates and attrs of
        the input plus ``segmentation`` (JSON of the resolved config).
    seg_config
        The config's ``segmentation`` section (missing keys take the schema defaults).
    workers
        Threads computing chunks in parallel.
    scheduler
        Address of a dask.distributed scheduler to compute on instead
        (:func:`cosmo_sop.scheduler.array_scheduler`).

    Returns
    -------
    Path
        ``output_store``.
    """
    out = segments_dataset(input_store, seg_config)
    with array_scheduler(workers, scheduler), _progress():
        return write_zarr(out, output_store)


def segment_part(
    input_store: str | os.PathLike,
    output_store: str | os.PathLike,
    seg_config: Mapping[str, Any] | None = None,
    *,
    part: str | int,
    n_parts: int | None,
    cosmologies_per_job: int,
    workers: int = 1,
    scheduler: str | None = None,
) -> Path:
    """One step of a segmentation in parts (:mod:`cosmo_sop.fanout`): ``part`` ``"start"``, a
    part number, or ``"finish"``; the store written at the end equals :func:`segment`'s, bit
    for bit. ``n_parts`` is the number of parts the workflow planned (None: as many as the
    store's cosmologies need). Returns the path written (the plan, the record, the store)."""
    if part == "finish":
        return fanout.finish(output_store, ("segments",))
    out = segments_dataset(input_store, seg_config)
    if part == "start":
        cosmology = out["cosmology"].values
        if n_parts is None:
            n_parts = fanout.part_count(np.unique(cosmology).size, cosmologies_per_job)
        chunk = fanout.sample_chunk(out)
        regions = fanout.part_regions(cosmology, chunk, cosmologies_per_job, n_parts)
        return fanout.start(out, output_store, regions)
    with array_scheduler(workers, scheduler), _progress():
        return fanout.fill(out, output_store, int(part))
