"""Reading the metainfo of a CosmoGridV1 release and choosing the map files to ingest.

The metainfo tables (:func:`read_parameters`, :func:`read_simulations`) and the selection of
cosmologies and permutations (:func:`list_maps`, which checks that every file exists before any
long work starts). Every malformed input raises :class:`~cosmo_sop.errors.InputError` naming
the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cosmo_sop.config import fill_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.sources.cosmogrid.layout import (
    SIMULATION_SETS,
    cosmology_id,
    hdf5_errors,
    map_path,
    metainfo_path,
    open_hdf5,
)

#: Columns the reader needs from the metainfo tables.
_REQUIRED_COLUMNS = ("Om", "s8", "path_par")


@dataclass(frozen=True)
class MapRecord:
    """One map file to read: a cosmology, one of its permutations, its labels and its path.

    Attributes
    ----------
    cosmology : str
        Cosmology id, the folder name (e.g. ``cosmo_000001``, ``cosmo_fiducial``).
    perm : int
        Permutation (realisation) index, the ``perm_NNNN`` folder.
    Om, s8 : float
        Omega_m and sigma_8 of the cosmology (dimensionless), from ``parameters/<set>``.
    path : Path
        The ``projected_probes_maps_*512.h5`` file.
    """

    cosmology: str
    perm: int
    Om: float
    s8: float
    path: Path


def read_parameters(root: str | os.PathLike, simulation_set: str) -> np.ndarray:
    """Table ``parameters/<simulation_set>`` of the metainfo: one row per cosmology.

    Parameters
    ----------
    root
        Folder holding ``CosmoGridV1_metainfo.h5`` and ``stage3_forecast/``.
    simulation_set
        ``grid``, ``fiducial`` or ``benchmark``.

    Returns
    -------
    numpy structured array with (at least) the columns ``Om``, ``s8`` and ``path_par``.

    Raises
    ------
    InputError
        Also if two rows name the same cosmology: its maps would be ingested twice under two
        labels (and the split would count it once), so such a table is refused.
    """
    table = _read_table(root, "parameters", simulation_set)
    ids, counts = np.unique(cosmology_ids(table), return_counts=True)
    repeated = ids[counts > 1].tolist()
    if repeated:
        shown = ", ".join(repeated[:5]) + (
            f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        )
        raise InputError(
            metainfo_path(root),
            f"table 'parameters/{simulation_set}' lists cosmology id(s) {shown} more than once "
            "(one row per cosmology expected)",
        )
    _check_labels(table, metainfo_path(root), f"parameters/{simulation_set}")
    return table


#: The parameters the networks learn: every row must give each a finite, positive number.
_LABELS = ("Om", "s8")


def _check_labels(table: np.ndarray, path: Path, name: str) -> None:
    """Refuse a parameters table whose Om or s8 is NaN, infinite or not positive somewhere,
    naming the first such cosmology (else it surfaces at training, as a NaN loss)."""
    for column in _LABELS:
        values = np.asarray(table[column], dtype=np.float64)
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            first = int(np.argmax(bad))
            more = f" ({int(bad.sum()) - 1} more rows too)" if bad.sum() > 1 else ""
            raise InputError(
                path,
                f"table '{name}' gives cosmology {cosmology_ids(table)[first]} "
                f"{column} = {values[first]:g}, not a finite positive number{more}",
            )


def read_simulations(root: str | os.PathLike, simulation_set: str) -> np.ndarray:
    """Table ``simulations/<simulation_set>``: one row per (cosmology, permutation)."""
    return _read_table(root, "simulations", simulation_set)


def _read_table(root: str | os.PathLike, kind: str, simulation_set: str) -> np.ndarray:
    if simulation_set not in SIMULATION_SETS:
        raise InputError(
            "config key 'cosmogrid.simulation_set'",
            f"'{simulation_set}' is not one of {', '.join(SIMULATION_SETS)}",
        )
    path = metainfo_path(root)
    if not path.is_file():
        raise InputError(path, "CosmoGridV1 metainfo file not found (check cosmogrid.root)")
    table = f"{kind}/{simulation_set}"
    with open_hdf5(path) as file, hdf5_errors(path, f"table '{table}'"):
        if table not in file or not isinstance(file[table], h5py.Dataset):
            raise InputError(path, f"metainfo lacks the table '{table}'")
        rows = file[table][()]
    names = rows.dtype.names or ()
    missing = [name for name in _REQUIRED_COLUMNS if name not in names]
    if rows.ndim != 1 or missing:
        raise InputError(path, f"table '{table}' is not a 1-D table with columns {missing}")
    if rows.size == 0:
        raise InputError(path, f"table '{table}' is empty")
    return rows


def cosmology_ids(table: np.ndarray) -> np.ndarray:
    """Cosmology id of every row of a metainfo table (from its ``path_par`` column)."""
    return np.array([cosmology_id(p) for p in table["path_par"]], dtype=str)


def select_cosmologies(
    parameters: np.ndarray, cosmologies: str | int | Sequence[str], where: str | os.PathLike
) -> np.ndarray:
    """Rows of ``parameters`` chosen by the ``cosmogrid.cosmologies`` config key.

    Parameters
    ----------
    parameters
        A ``parameters/<set>`` table (:func:`read_parameters`).
    cosmologies
        ``"all"``; an integer N for the first N rows; or a list of ids such as
        ``["cosmo_000001", "cosmo_000042"]`` (kept in the order given).
    where
        Named in error messages (the metainfo file and table).

    Raises
    ------
    InputError
        If N exceeds the number of cosmologies, or the list names unknown or repeated ids.
    """
    ids = cosmology_ids(parameters)
    if isinstance(cosmologies, str):
        if cosmologies != "all":
            raise InputError(
                "config key 'cosmogrid.cosmologies'",
                f"'{cosmologies}' is neither 'all', an integer nor a list of cosmology ids",
            )
        return parameters
    if isinstance(cosmologies, (int, np.integer)) and not isinstance(cosmologies, bool):
        if not 1 <= cosmologies <= len(parameters):
            raise InputError(
                where,
                f"config key 'cosmogrid.cosmologies' asks for the first {cosmologies} "
                f"cosmologies but the table has {len(parameters)}",
            )
        return parameters[: int(cosmologies)]
    wanted = [str(c) for c in cosmologies]
    repeated = sorted({c for c in wanted if wanted.count(c) > 1})
    if repeated:
        raise InputError(
            "config key 'cosmogrid.cosmologies'", f"lists {', '.join(repeated)} more than once"
        )
    row_of = {cosmology: row for row, cosmology in enumerate(ids)}
    unknown = [c for c in wanted if c not in row_of]
    if unknown:
        raise InputError(
            where,
            f"config key 'cosmogrid.cosmologies' names {len(unknown)} unknown id(s): "
            f"{', '.join(unknown)} (the table has {ids[0]} ... {ids[-1]})",
        )
    return parameters[[row_of[c] for c in wanted]]


def perm_indices(perms: int | Sequence[int]) -> list[int]:
    """Permutation indices from the ``cosmogrid.perms`` key: N means ``0..N-1``."""
    if isinstance(perms, (int, np.integer)) and not isinstance(perms, bool):
        if perms < 1:
            raise InputError("config key 'cosmogrid.perms'", f"must be at least 1, got {perms}")
        return list(range(int(perms)))
    indices = [int(p) for p in perms]
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise InputError(
            "config key 'cosmogrid.perms'", f"needs distinct indices >= 0, got {indices}"
        )
    return indices


def list_maps(
    root: str | os.PathLike,
    simulation_set: str | None = None,
    cosmologies: str | int | Sequence[str] | None = None,
    perms: int | Sequence[int] | None = None,
    baryonified: bool | None = None,
    require_files: bool = True,
) -> list[MapRecord]:
    """Every map file of the selected cosmologies and permutations, checked to exist.

    The number of permutations of each cosmology is its number of rows in
    ``simulations/<set>`` (7 per cosmology of the grid, 200 for the fiducial).

    Parameters
    ----------
    root
        Folder holding ``CosmoGridV1_metainfo.h5`` and ``stage3_forecast/``.
    simulation_set, cosmologies, perms, baryonified
        As the keys of the ``cosmogrid`` config section; None takes the key's default.
    require_files
        Check that every map file exists (False for ``ingest.on_bad_map: skip``, which
        reports a missing file as skipped instead).

    Returns
    -------
    One :class:`MapRecord` per (cosmology, permutation), cosmology-major.

    Raises
    ------
    InputError
        For a missing or malformed metainfo file, unknown cosmologies, permutations that the
        simulations table does not have, or map files that are not on disk.
    """
    simulation_set, cosmologies, perms, baryonified = fill_defaults(
        "cosmogrid",
        simulation_set=simulation_set,
        cosmologies=cosmologies,
        perms=perms,
        baryonified=baryonified,
    ).values()
    parameters = read_parameters(root, simulation_set)
    simulations = read_simulations(root, simulation_set)
    where = f"{metainfo_path(root)} (parameters/{simulation_set})"
    selected = select_cosmologies(parameters, cosmologies, where)
    indices = perm_indices(perms)

    selected_ids = cosmology_ids(selected).tolist()
    ids, counts = np.unique(cosmology_ids(simulations), return_counts=True)
    n_perms = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    short = [(c, n_perms.get(c, 0)) for c in selected_ids if n_perms.get(c, 0) <= max(indices)]
    if short:
        examples = ", ".join(f"{c} has {n}" for c, n in short[:3])
        raise InputError(
            f"{metainfo_path(root)} (simulations/{simulation_set})",
            f"config key 'cosmogrid.perms' asks for permutation {max(indices)} but "
            f"{len(short)} cosmolog{'y' if len(short) == 1 else 'ies'} have fewer "
            f"permutations ({examples})",
        )

    records = [
        MapRecord(
            cosmology=cosmology,
            perm=perm,
            Om=float(row["Om"]),
            s8=float(row["s8"]),
            path=map_path(root, row["path_par"], perm, baryonified),
        )
        for cosmology, row in zip(selected_ids, selected, strict=True)
        for perm in indices
    ]
    # Stat every file now: a missing one should stop the run before hours of reading, not after.
    missing = [record.path for record in records if require_files and not record.path.is_file()]
    if missing:
        more = f" ({len(missing) - 1} more of the {len(records)} files are missing too)"
        raise InputError(missing[0], "map file not found" + (more if len(missing) > 1 else ""))
    return records
