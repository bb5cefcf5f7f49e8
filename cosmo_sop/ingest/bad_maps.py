"""Skipping bad map files (``ingest.on_bad_map: skip``): leaving them out, and saying which.

With ``skip``, a map file the reader refuses (missing, truncated, damaged, NaN/inf pixels,
another nside, a missing bin: any :class:`~cosmo_sop.errors.InputError` naming that file) is
left out with a warning. Its dask task returns zeros and notes the file and the problem in a
:class:`SkippedMaps`; the store is written with every map first, then copied without the
samples of the skipped files (:func:`write_without_skipped`), and the copy records them in its
``skipped_maps`` attribute: a JSON list of ``{"path", "problem"}`` in the order of the maps.

The split is drawn over all selected cosmologies before any file is read, so a skipped file
moves no other cosmology between splits; a cosmology whose every file is skipped leaves its
split one cosmology short.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.errors import InputError
from cosmo_sop.storage import json_text, write_zarr

#: Store attribute listing the skipped files.
ATTR = "skipped_maps"


class SkippedMaps:
    """The map files left out of one ingest, and why (shared by the reading threads).

    Parameters
    ----------
    paths
        Every map file of the ingest, in order (the records keep this order).
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self._order = {str(path): i for i, path in enumerate(paths)}
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, path: str | os.PathLike, error: InputError) -> None:
        """Skip ``path`` for ``error``; an error about anything else (a config key) is raised."""
        if error.where != str(path):
            raise error
        with self._lock:
            first = error.where not in self._problems
            self._problems.setdefault(error.where, error.problem)
        if first:  # the first file is checked twice (its nside, then its maps)
            warnings.warn(f"{error} (skipped: ingest.on_bad_map is skip)", stacklevel=2)

    def merge(self, records: Sequence[Mapping[str, str]]) -> None:
        """Add the ``{"path", "problem"}`` records of another process (a part of the ingest)."""
        with self._lock:
            for record in records:
                self._problems.setdefault(str(record["path"]), str(record["problem"]))

    def __contains__(self, path: object) -> bool:
        return str(path) in self._problems

    def none_readable(self, n_maps: int) -> InputError:
        """The error when every one of the ``n_maps`` files was skipped."""
        first = self.records()[0]
        return InputError(
            "config key 'ingest.on_bad_map'",
            f"is skip but none of the {n_maps} map files can be read "
            f"(the first: {first['path']}: {first['problem']})",
        )

    def records(self) -> list[dict[str, str]]:
        """``{"path", "problem"}`` of every skipped file, in the order of the maps."""
        with self._lock:
            paths = sorted(self._problems, key=self._order.__getitem__)
            return [{"path": path, "problem": self._problems[path]} for path in paths]


def read_skipped_maps(attrs: Mapping[str, Any], where: str | os.PathLike) -> list[dict] | None:
    """The skipped files a store records (None if it was ingested with ``on_bad_map: error``)."""
    text = attrs.get(ATTR)
    if text is None:
        return None
    try:
        records = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        records = None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"path", "problem"} <= set(r) for r in records
    ):
        raise InputError(where, f"attribute '{ATTR}' is not a JSON list of {{path, problem}}")
    return records


def write_without_skipped(
    dataset: xr.Dataset,
    output: Path,
    paths: Sequence[str | os.PathLike],
    skipped: SkippedMaps,
    chunk: int,
) -> Path:
    """Write ``dataset`` (one block of samples per map of ``paths``, skipped ones as zeros)
    to ``output`` without the skipped maps' samples, recording them; returns ``output``.

    ``chunk`` is the sample chunk of the output. The first pass goes to a hidden sibling
    store, removed at the end.
    """
    unfiltered = unfiltered_path(output)
    try:
        write_zarr(dataset, unfiltered)
        with xr.open_zarr(unfiltered, consolidated=True) as full:
            return copy_without_skipped(full, output, paths, skipped, chunk)
    finally:
        shutil.rmtree(unfiltered, ignore_errors=True)


def copy_without_skipped(
    full: xr.Dataset,
    output: Path,
    paths: Sequence[str | os.PathLike],
    skipped: SkippedMaps,
    chunk: int,
) -> Path:
    """Write the stored dataset ``full`` of every map of ``paths`` to ``output`` without the
    samples of the skipped maps, recording them in attribute :data:`ATTR`; returns ``output``."""
    bad = np.array([path in skipped for path in paths])
    if bad.all():
        raise skipped.none_readable(len(paths))
    n_patch = full.sizes["sample"] // len(paths)
    keep = np.flatnonzero(np.repeat(~bad, n_patch))
    kept = full.isel(sample=keep).drop_encoding()
    # Coordinates in memory, as ingest builds them (so they are stored alike).
    for name in list(kept.coords):
        kept.coords[name] = kept[name].load()
    kept["kappa"] = kept.kappa.chunk({"sample": chunk})
    kept.attrs = {**full.attrs, ATTR: json_text(skipped.records(), indent=None)}
    return write_zarr(kept, output)


def unfiltered_path(output: Path) -> Path:
    """The hidden first-pass store of :func:`write_without_skipped` beside ``output``."""
    return output.with_name(f".{output.name}.unfiltered")
