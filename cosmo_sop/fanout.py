"""Fan-out: one Zarr store written by several jobs, each filling a region of whole chunks.

On a cluster, ingest and segmentation run as many Snakemake jobs (config key
``parallel.cosmologies_per_job``) that meet in :func:`cosmo_sop.layout.parts_dir`:

1. :func:`start` writes the store's metadata and coordinates, with no array data, and the plan:
   the ``sample`` region of every part.
2. :func:`fill` (one job per part, in any order, at the same time) computes the samples of one
   part and writes them into their region of the store; a record of the part is written last.
3. :func:`finish` checks that every part is recorded and moves the store into place.

A region is ``cosmologies_per_job`` consecutive cosmologies, in the store's order, with both
bounds moved up to the next multiple of the store's sample chunk: no two jobs ever write into
one chunk file, and the store is the one a single job writes, bit for bit (the chunks hold the
same values and the metadata is written by the same call). A killed part is simply rerun: its
region is rewritten whole, and :func:`finish` refuses a store with a part unrecorded.

Zarr's own region writes do the work (``xarray.Dataset.to_zarr(region=...)``); this module only
plans the regions and makes the three steps safe to run as separate processes.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop import __version__, layout
from cosmo_sop.errors import InputError
from cosmo_sop.storage import (
    MARKER_ATTRIBUTE,
    ZARR_FORMAT,
    atomic_path,
    move_into_place,
    open_zarr,
    read_json,
    write_json,
)

#: The dimension the parts split.
DIM = "sample"


def part_count(n_cosmologies: int, cosmologies_per_job: int) -> int:
    """The number of parts of a store of ``n_cosmologies`` cosmologies."""
    return max(1, math.ceil(int(n_cosmologies) / int(cosmologies_per_job)))


def part_regions(
    cosmology: Sequence[Any], chunk: int, cosmologies_per_job: int, n_parts: int
) -> list[tuple[int, int]]:
    """The ``[start, stop)`` sample range of each of ``n_parts`` parts.

    Parameters
    ----------
    cosmology
        The cosmology of every sample, in store order; each cosmology's samples are consecutive.
    chunk
        Samples per Zarr chunk: every bound but the last is a multiple of it.
    cosmologies_per_job
        Cosmologies per part before the bounds move to chunk multiples.
    n_parts
        Parts the workflow planned (:func:`part_count`); trailing parts may be empty (a part
        of fewer samples than a chunk, or cosmologies left out by ``ingest.on_bad_map: skip``).

    Raises
    ------
    InputError
        If the samples need more parts than planned (the release changed since the workflow
        was planned) or a cosmology's samples are not consecutive.
    """
    cosmology = np.asarray(cosmology)
    n = cosmology.size
    new = np.flatnonzero(np.r_[True, cosmology[1:] != cosmology[:-1]]) if n else np.array([])
    if np.unique(cosmology).size != new.size:
        raise InputError(
            "config key 'parallel.cosmologies_per_job'",
            "needs the samples of each cosmology to be consecutive in the store",
        )
    needed = part_count(new.size, cosmologies_per_job) if n else 0
    if needed > n_parts:
        raise InputError(
            "config key 'parallel.cosmologies_per_job'",
            f"the store holds {new.size} cosmologies, {needed} parts of "
            f"{cosmologies_per_job}, but the workflow planned {n_parts}: rerun Snakemake",
        )
    starts = [int(new[i * cosmologies_per_job]) for i in range(needed)] + [n] * (
        n_parts + 1 - needed
    )
    bounds = [min(n, -(-start // chunk) * chunk) for start in starts]
    bounds[0] = 0
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def sample_chunk(dataset: xr.Dataset) -> int:
    """Samples per chunk of a dask-backed dataset (every array along ``sample`` alike)."""
    chunks = {v.chunks[v.dims.index(DIM)][0] for v in dataset.data_vars.values() if v.chunks}
    if len(chunks) != 1:
        raise RuntimeError(f"data variables chunked unlike along {DIM}: {chunks}")  # a bug
    return chunks.pop()


def start(dataset: xr.Dataset, output: str | os.PathLike, regions: Sequence[tuple]) -> Path:
    """Write the metadata and coordinates of ``dataset`` (dask-backed; nothing is computed) to
    the store of the parts of ``output``, and the plan last; returns the plan's path.

    Whatever an earlier run left in the parts folder is removed first.
    """
    output = Path(output)
    folder = layout.parts_dir(output)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with atomic_path(layout.parts_store(output)) as tmp:
        _in_memory_coords(dataset).to_zarr(
            tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, compute=False
        )
    plan = {
        "output": str(output),
        "n_samples": int(dataset.sizes[DIM]),
        "chunk": sample_chunk(dataset),
        "regions": [[int(a), int(b)] for a, b in regions],
    }
    return write_json(layout.parts_plan(output), plan)


def _in_memory_coords(dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` with its coordinates computed, each stored in the chunks of its dask array.

    ``to_zarr(compute=False)`` writes no dask-backed variable, and a part may not write a
    coordinate: its chunk (often one for the whole array) spans the other parts' regions. So
    :func:`start` writes them all, in the chunks a single job's write gives them.
    """
    dataset = dataset.copy()
    # Marked as write_zarr marks a single job's store, so a rerun may replace the output.
    dataset.attrs.setdefault(MARKER_ATTRIBUTE, __version__)
    for name in list(dataset.coords):
        variable = dataset.variables[name]
        if variable.chunks is not None:
            chunks = tuple(sizes[0] for sizes in variable.chunks)
            dataset.coords[name] = variable.compute()
            dataset.variables[name].encoding["chunks"] = chunks
    return dataset


def read_plan(output: str | os.PathLike) -> dict[str, Any]:
    """The plan :func:`start` wrote for ``output``."""
    path = layout.parts_plan(output)
    plan = read_json(path)
    if plan is None:
        raise InputError(path, "no plan of the parts (run the step with --part start first)")
    return plan


def fill(
    dataset: xr.Dataset,
    output: str | os.PathLike,
    part: int,
    record: Callable[[], dict[str, Any]] | None = None,
) -> Path:
    """Compute part ``part`` of ``dataset`` and write it into its region; returns the record.

    ``dataset`` must be the one :func:`start` was given (rebuilt by this job the same way);
    ``record()``, called once the region is written, adds keys to the part's record (e.g. the
    map files it skipped).
    """
    plan = read_plan(output)
    where = layout.parts_plan(output)
    if dataset.sizes[DIM] != plan["n_samples"] or sample_chunk(dataset) != plan["chunk"]:
        raise InputError(where, "was planned for other data: rerun the step with --part start")
    if not 0 <= part < len(plan["regions"]):
        raise InputError(where, f"has {len(plan['regions'])} parts, no part {part}")
    begin, end = plan["regions"][part]
    store = layout.parts_store(output)
    if not store.is_dir():
        raise InputError(store, "missing: rerun the step with --part start")
    if end > begin:
        values = dataset.drop_vars(list(dataset.coords)).isel({DIM: slice(begin, end)})
        values.to_zarr(store, region={DIM: slice(begin, end)}, zarr_format=ZARR_FORMAT)
    content = {"part": part, "region": [begin, end], **(record() if record else {})}
    return write_json(layout.part_record(output, part), content)


def part_records(output: str | os.PathLike) -> list[dict[str, Any]]:
    """The record of every part of ``output``, in part order; InputError if one is missing."""
    plan = read_plan(output)
    records = []
    for part, region in enumerate(plan["regions"]):
        path = layout.part_record(output, part)
        record = read_json(path)
        if record is None or record.get("region") != region:
            raise InputError(path, f"part {part} of {output} is not complete: rerun it")
        records.append(record)
    return records


def finish(output: str | os.PathLike, variables: tuple[str, ...] = ()) -> Path:
    """Check that every part of ``output`` is written, then move the store into place.

    The store is opened as any reader does (:func:`cosmo_sop.storage.open_zarr`, which checks
    its values), so a store with a hole or a corrupt chunk never reaches ``output``.
    """
    output = Path(output)
    part_records(output)
    store = layout.parts_store(output)
    open_zarr(store, variables).close()
    move_into_place(store, output)
    return output


def assembled(output: str | os.PathLike) -> xr.Dataset:
    """The store of the parts of ``output``, once every part is recorded (for a finishing step
    that writes ``output`` itself, as ingest does when it leaves out skipped maps)."""
    part_records(output)
    return xr.open_zarr(layout.parts_store(output), consolidated=True)
