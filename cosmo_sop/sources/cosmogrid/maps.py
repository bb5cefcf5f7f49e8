"""Reading the convergence maps of one CosmoGridV1 map file (release or mock).

:func:`map_nside` checks a file's datasets without reading them; :func:`read_kappa` reads the
bins asked for (optionally with intrinsic alignment added), checking shapes, nside and finite
values. Every malformed input raises :class:`~cosmo_sop.errors.InputError` naming the file and
the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import healpy as hp
import numpy as np

from cosmo_sop.errors import InputError
from cosmo_sop.sources.cosmogrid.layout import (
    IA_GROUP,
    KAPPA_GROUP,
    dataset_name,
    hdf5_errors,
    open_hdf5,
)


def _map_datasets(
    file: h5py.File, path: Path, bins: Sequence[int], ia_amplitude: float | None
) -> tuple[list[h5py.Dataset], list[h5py.Dataset], int]:
    """The kappa (and IA) datasets of ``bins``, checked for presence, shape and dtype."""
    if not bins:
        raise InputError("config key 'ingest.bins'", "needs at least one tomographic bin")
    with hdf5_errors(path, f"group '{IA_GROUP}'"):
        no_ia = ia_amplitude is not None and IA_GROUP not in file
    if no_ia:
        raise InputError(
            path,
            f"cosmogrid.ia_amplitude is set but the file has no '{IA_GROUP}' group "
            "(intrinsic-alignment maps)",
        )
    groups = [KAPPA_GROUP] + ([IA_GROUP] if ia_amplitude is not None else [])
    datasets: dict[str, list[h5py.Dataset]] = {group: [] for group in groups}
    npix = None
    for group in groups:
        for tomo_bin in bins:
            name = dataset_name(group, tomo_bin)
            # Metadata reads: a damaged header, B-tree or heap fails here, named.
            with hdf5_errors(path, f"dataset '{name}'"):
                dataset = _dataset(file, path, group, tomo_bin)
                shape, dtype = dataset.shape, dataset.dtype
            if len(shape) != 1 or dtype.kind != "f":
                raise InputError(
                    path,
                    f"dataset '{name}' has shape {shape} and dtype {dtype}, "
                    "expected a 1-D floating-point HEALPix map",
                )
            if not hp.isnpixok(shape[0]):
                raise InputError(
                    path,
                    f"dataset '{name}' has {shape[0]} pixels, which is not "
                    "12 * nside^2 for any nside",
                )
            if npix is not None and shape[0] != npix:
                raise InputError(
                    path,
                    f"dataset '{name}' has {shape[0]} pixels but "
                    f"'{dataset_name(KAPPA_GROUP, bins[0])}' has {npix}",
                )
            npix = shape[0]
            datasets[group].append(dataset)
    return datasets[KAPPA_GROUP], datasets.get(IA_GROUP, []), hp.npix2nside(npix)


def _dataset(file: h5py.File, path: Path, group: str, tomo_bin: int) -> h5py.Dataset:
    """The dataset of ``tomo_bin`` in ``group``; InputError listing the group if absent."""
    name = dataset_name(group, tomo_bin)
    if name in file and isinstance(file[name], h5py.Dataset):
        return file[name]
    members = file.get(group)
    members = list(members) if isinstance(members, h5py.Group) else []
    present = sorted(k for k in members if k.startswith("stage3_lensing"))
    raise InputError(
        path,
        f"lacks dataset '{name}' (tomographic bin {tomo_bin}; the '{group}' group "
        f"has {', '.join(present) or 'no stage3_lensing datasets'})",
    )


def map_nside(
    path: str | os.PathLike, bins: Sequence[int], ia_amplitude: float | None = None
) -> int:
    """Check one map file's datasets without reading the maps; return its HEALPix nside.

    Cheap (metadata only): ingest calls it on the first file so that a wrong bin or a missing
    IA group is reported at once, before any map is read.
    """
    path = Path(path)
    with open_hdf5(path) as file:
        return _map_datasets(file, path, bins, ia_amplitude)[2]


def read_kappa(
    path: str | os.PathLike,
    bins: Sequence[int],
    ia_amplitude: float | None = None,
    nside: int | None = None,
) -> np.ndarray:
    """Read the convergence maps of some tomographic bins from one map file.

    Parameters
    ----------
    path
        A ``projected_probes_maps_*512.h5`` file.
    bins
        1-based tomographic bins, e.g. ``[1, 2, 3, 4]``.
    ia_amplitude
        If given, return ``kappa + ia_amplitude * ia`` (NLA intrinsic alignment, A_IA
        dimensionless) from the ``ia/`` group.
    nside
        If given, the nside every map must have (files of one dataset must agree).

    Returns
    -------
    ndarray, shape (n_bins, 12 nside^2), float32
        Dimensionless convergence, HEALPix RING order. Only these bins are ever in memory
        (plus one IA map while it is added).

    Raises
    ------
    InputError
        If the file is unreadable, lacks a dataset, has a length that is not 12 nside^2
        (or not the expected nside), or holds NaN/inf pixels.
    """
    path = Path(path)
    with open_hdf5(path) as file:
        kappa_sets, ia_sets, file_nside = _map_datasets(file, path, bins, ia_amplitude)
        if nside is not None and file_nside != nside:
            raise InputError(
                path, f"maps have nside {file_nside}, expected {nside} like the others"
            )
        out = np.empty((len(bins), hp.nside2npix(file_nside)), dtype=np.float32)
        for row, dataset in enumerate(kappa_sets):
            _read_finite(dataset, path, out, row)
        if ia_amplitude is not None:
            ia = np.empty(out.shape[1], dtype=np.float32)
            for row, dataset in enumerate(ia_sets):
                _read_finite(dataset, path, ia, None)
                out[row] += np.float32(ia_amplitude) * ia
    return out


def _read_finite(dataset: h5py.Dataset, path: Path, out: np.ndarray, row: int | None) -> None:
    """Read ``dataset`` into ``out[row]`` (HDF5 converts the dtype) and reject NaN/inf."""
    name = dataset.name.lstrip("/")
    # A damaged chunk, filter or chunk index fails here (HDF5 reads the data lazily).
    with hdf5_errors(path, f"dataset '{name}'"):
        if row is None:
            dataset.read_direct(out)
        else:
            dataset.read_direct(out, dest_sel=np.s_[row])
    values = out if row is None else out[row]
    n_bad = values.size - np.count_nonzero(np.isfinite(values))
    if n_bad:
        raise InputError(path, f"dataset '{name}' has {n_bad} NaN/inf pixels")
