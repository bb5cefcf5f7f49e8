"""The mock's files in the CosmoGridV1 release layout: metainfo tables, map files, provenance.

Every map file carries, in the HDF5 attribute :data:`PROVENANCE_ATTR`, the JSON of everything
that determines it (:func:`map_provenance`); the metainfo carries the mock config, seed and
version (:func:`metainfo_record`). :mod:`cosmo_sop.sources.mock.simulate` compares these
records to decide which maps a rerun keeps.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import cosmo_sop
from cosmo_sop.errors import InputError
from cosmo_sop.sources.cosmogrid.layout import (
    HDF5_ERRORS,
    KAPPA_GROUP,
    SIMULATION_SETS,
    dataset_name,
    metainfo_dtype,
)
from cosmo_sop.sources.mock.design import draw_cosmologies
from cosmo_sop.sources.mock.planted import provenance_record as planted_provenance
from cosmo_sop.storage import atomic_path

#: Version of the map generator: bump it when the same inputs would give different maps,
#: so that reruns regenerate maps written by an older generator.
MOCK_FORMAT = 1
#: HDF5 attribute holding the provenance JSON (map files) or the mock config (metainfo).
PROVENANCE_ATTR = "cosmo_sop_mock"
#: The mock fills the ``grid`` set of the release; the other sets are written empty.
SIMULATION_SET = "grid"
#: Parameters written into the provenance of each map: those that determine its spectra.
_MAP_PARAMETERS = ("Om", "s8", "H0", "Ob", "ns", "w0", "wa", "m_nu")


def config_record(cfg: Mapping[str, Any]) -> dict:
    """The config as recorded in the metainfo: without ``root``, which moving a mock changes."""
    record = copy.deepcopy(dict(cfg))
    record.pop("root", None)
    return record


# ----------------------------------------------------------------------------------------------
# tables


def cosmology_path(id_param: int) -> bytes:
    """``path_par`` of a mock cosmology (ids count from 1, as in the release's grid set)."""
    return f"CosmoGrid/raw/{SIMULATION_SET}/cosmo_{id_param + 1:06d}/".encode()


def metainfo_tables(cfg: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``parameters`` and ``simulations`` tables of a mock.

    Parameters
    ----------
    cfg
        Complete ``mock`` config (:func:`cosmo_sop.sources.mock.simulate.mock_settings`).
    seed
        Master seed.

    Returns
    -------
    parameters : ndarray of :func:`cosmo_sop.sources.cosmogrid.metainfo_dtype`
        One row per cosmology: ``id_param`` = row, ``path_par``; ``path_sim`` is empty and
        ``id_sim`` and ``seed_index`` are -1 (they belong to simulations).
    simulations : ndarray of :func:`cosmo_sop.sources.cosmogrid.metainfo_dtype`
        One row per (cosmology, perm), cosmology-major: ``id_sim`` = row, ``id_param``,
        ``seed_index`` = perm (the map is seeded by ``(seed, id_param, seed_index)``),
        ``path_sim`` = ``<path_par>run_<perm:04d>/``.
    """
    cosmologies = draw_cosmologies(
        cfg["n_cosmologies"], cfg["prior"], cfg["fiducial"], sampler=cfg["sampler"], seed=seed
    )
    parameters = np.zeros(len(cosmologies), dtype=metainfo_dtype())
    for name in cosmologies.dtype.names:
        parameters[name] = cosmologies[name]
    parameters["id_param"] = np.arange(len(cosmologies))
    parameters["id_sim"] = -1
    parameters["seed_index"] = -1
    parameters["path_par"] = [cosmology_path(i) for i in range(len(cosmologies))]

    n_perms = cfg["n_perms"]
    simulations = np.repeat(parameters, n_perms)
    perms = np.tile(np.arange(n_perms), len(parameters))
    simulations["id_sim"] = np.arange(len(simulations))
    simulations["seed_index"] = perms
    simulations["path_sim"] = [
        path + f"run_{perm:04d}/".encode() for path, perm in zip(simulations["path_par"], perms)
    ]
    return parameters, simulations


def row_dict(row: np.void) -> dict:
    """One row of a metainfo table as a dict of Python scalars."""
    return {name: row[name].item() for name in row.dtype.names}


# ----------------------------------------------------------------------------------------------
# map files


def map_provenance(
    cfg: Mapping[str, Any], seed: int, parameters: Mapping[str, Any], perm: int
) -> str:
    """JSON of everything that determines one map file (stored in it and checked on rerun)."""
    record = {
        "mock_format": MOCK_FORMAT,
        "cosmo_sop_version": cosmo_sop.__version__,
        "seed": int(seed),
        "id_param": int(parameters["id_param"]),
        "perm": int(perm),
        "nside": int(cfg["nside"]),
        "lmax": int(cfg["lmax"]),
        # floats normalised so that e.g. z_max: 3 and z_max: 3.0 give the same record
        "redshift": {
            key: (int(value) if key == "n_bins" else float(value))
            for key, value in cfg["redshift"].items()
        },
        "parameters": {name: float(parameters[name]) for name in _MAP_PARAMETERS},
    }
    if cfg["planted"]["enabled"]:
        # a planted map has no halos; its record names every planted key its signal reads
        record["planted"] = planted_provenance(cfg)
    elif cfg["halos"]["enabled"]:
        # only then: the maps of a lognormal-only mock keep the record they had before halos
        record["halos"] = {
            key: (value if isinstance(value, str) else float(value))
            for key, value in cfg["halos"].items()
            if key != "enabled"
        }
    return json.dumps(record, sort_keys=True)


def map_is_complete(path: Path, provenance: str, n_bins: int, npix: int) -> bool:
    """Whether ``path`` holds all bins of a map written from exactly ``provenance``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get(PROVENANCE_ATTR) != provenance:
                return False
            for b in range(1, n_bins + 1):
                dset = f.get(dataset_name(KAPPA_GROUP, b))
                if not isinstance(dset, h5py.Dataset):
                    return False
                if dset.shape != (npix,) or dset.dtype != np.float32:
                    return False
    except HDF5_ERRORS:  # truncated, damaged or not HDF5 at all: written again
        return False
    return True


def write_map(path: Path, maps: np.ndarray, provenance: str) -> None:
    """Write the bins ``maps`` (n_bins, npix) of one map file atomically, with provenance."""
    # atomic_path also removes the temporaries of this file that a killed run left.
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[PROVENANCE_ATTR] = provenance
        for b, kappa in enumerate(maps, start=1):
            f.create_dataset(dataset_name(KAPPA_GROUP, b), data=kappa)


# ----------------------------------------------------------------------------------------------
# metainfo


def read_metainfo_record(path: Path) -> str | None:
    """The mock record of an existing metainfo, None if there is none.

    Raises
    ------
    InputError
        If a metainfo exists that the mock did not write: it is never overwritten.
    """
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            record = f.attrs.get(PROVENANCE_ATTR)
    except HDF5_ERRORS:
        record = None
    if record is None:
        raise InputError(
            path,
            "exists but was not written by the cosmo-sop mock (a CosmoGridV1 release, or an "
            "unreadable file); refusing to overwrite it: choose another mock.root",
        )
    return str(record)


def metainfo_record(cfg: Mapping[str, Any], seed: int) -> str:
    """JSON of what the metainfo vouches for: format, version, seed and the mock config."""
    return json.dumps(
        {
            "mock_format": MOCK_FORMAT,
            "cosmo_sop_version": cosmo_sop.__version__,
            "seed": int(seed),
            "config": config_record(cfg),
        },
        sort_keys=True,
    )


def write_metainfo(
    path: Path, parameters: np.ndarray, simulations: np.ndarray, record: str
) -> None:
    """Write the metainfo atomically: the tables as the ``grid`` and ``all`` sets, the other
    sets empty, and ``record`` (:func:`metainfo_record`) as its provenance."""
    empty = np.zeros(0, dtype=metainfo_dtype())
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[PROVENANCE_ATTR] = record
        # Older than the move to cosmo_sop/sources/mock/; kept so that the metainfo of an
        # unchanged mock stays byte-identical.
        f.attrs["description"] = (
            "cosmo-sop lognormal mock of CosmoGridV1 (grid set only); see cosmo_sop/mock.py"
        )
        for table, rows in (("parameters", parameters), ("simulations", simulations)):
            group = f.create_group(table)
            group.create_dataset("all", data=rows)
            for name in SIMULATION_SETS:
                group.create_dataset(name, data=rows if name == SIMULATION_SET else empty)
