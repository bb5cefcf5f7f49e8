"""The on-disk layout of the CosmoGridV1 release, shared by the reader and the built-in mock.

Layout (cosmogrid.ai data documentation)::

    <root>/CosmoGridV1_metainfo.h5
        parameters/{all,grid,fiducial,benchmark}   one row per cosmology
        simulations/{all,grid,fiducial,benchmark}  one row per (cosmology, permutation)
    <root>/stage3_forecast/<set>/cosmo_XXXXXX/perm_NNNN/projected_probes_maps_{baryonified,nobaryons}512.h5
        kg/stage3_lensing{1..4}   full-sky HEALPix convergence, RING order
        ia/stage3_lensing{1..4}   intrinsic-alignment template (kappa + A_IA * ia)

``path_par`` in the metainfo is fixed-width bytes such as ``b'CosmoGrid/raw/grid/cosmo_000001/'``;
the maps live under the same path with ``CosmoGrid/raw/`` replaced by ``stage3_forecast/``.
The file names keep the release's ``512`` whatever the nside: the mock writes the same names so
that one reader serves both, and the reader derives nside from the array length.

The second half of the module reads the release: the metainfo tables (:func:`read_parameters`,
:func:`read_simulations`), the selection of cosmologies and permutations (:func:`list_maps`,
which checks that every file exists before any long work starts) and one file's maps
(:func:`read_kappa`). Every malformed input raises :class:`~cosmo_sop.errors.InputError`
naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import healpy as hp
import numpy as np

from cosmo_sop.errors import InputError

METAINFO_NAME = "CosmoGridV1_metainfo.h5"
SIMULATION_SETS = ("grid", "fiducial", "benchmark")
KAPPA_GROUP = "kg"
IA_GROUP = "ia"

#: Float columns of ``parameters/*`` and ``simulations/*``, in release order.
PARAMETER_COLUMNS = (
    "Om", "s8", "H0", "Ob", "ns", "w0", "wa", "m_nu",
    "O_cdm", "O_nu", "Ol", "As", "bary_Mc", "bary_nu",
)  # fmt: skip
#: Integer columns.
INDEX_COLUMNS = ("sobol_index", "seed_index", "id_param", "id_sim")
PATH_WIDTH = 64


def metainfo_dtype() -> np.dtype:
    """Structured dtype of the ``parameters/*`` and ``simulations/*`` tables."""
    fields = [(name, "<f8") for name in PARAMETER_COLUMNS]
    fields += [(name, "<i8") for name in INDEX_COLUMNS]
    fields += [("path_par", f"S{PATH_WIDTH}"), ("path_sim", f"S{PATH_WIDTH}")]
    return np.dtype(fields)


def dataset_name(group: str, tomo_bin: int) -> str:
    """HDF5 dataset of one tomographic bin (1-based), e.g. ``kg/stage3_lensing1``."""
    return f"{group}/stage3_lensing{tomo_bin}"


def map_filename(baryonified: bool) -> str:
    """File name of the projected-probes maps of one permutation."""
    kind = "baryonified" if baryonified else "nobaryons"
    return f"projected_probes_maps_{kind}512.h5"


def cosmology_dir(path_par: bytes | str) -> str:
    """Map folder (relative to the root) of a metainfo ``path_par`` entry.

    >>> cosmology_dir(b'CosmoGrid/raw/grid/cosmo_000001/')
    'stage3_forecast/grid/cosmo_000001'
    """
    text = path_par.decode() if isinstance(path_par, bytes) else path_par
    text = text.strip().rstrip("/")
    prefix = "CosmoGrid/raw/"
    if text.startswith(prefix):
        text = text[len(prefix) :]
    elif text.startswith("raw/"):
        text = text[len("raw/") :]
    return f"stage3_forecast/{text}"


def cosmology_id(path_par: bytes | str) -> str:
    """Cosmology id used throughout cosmo-sop: the folder name, e.g. ``cosmo_000001``."""
    return cosmology_dir(path_par).rsplit("/", 1)[-1]


def map_path(root: str | Path, path_par: bytes | str, perm: int, baryonified: bool) -> Path:
    """Full path of the maps file of one cosmology and permutation."""
    return Path(root) / cosmology_dir(path_par) / f"perm_{perm:04d}" / map_filename(baryonified)


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

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


def metainfo_path(root: str | os.PathLike) -> Path:
    """Path of the metainfo file under a release root."""
    return Path(root) / METAINFO_NAME


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
    """
    return _read_table(root, "parameters", simulation_set)


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
    with _open_hdf5(path) as file:
        if table not in file or not isinstance(file[table], h5py.Dataset):
            raise InputError(path, f"metainfo lacks the table '{table}'")
        try:
            rows = file[table][()]
        except OSError as exc:
            raise InputError(path, f"cannot read table '{table}' ({exc})") from None
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
    simulation_set: str = "grid",
    cosmologies: str | int | Sequence[str] = "all",
    perms: int | Sequence[int] = 7,
    baryonified: bool = False,
) -> list[MapRecord]:
    """Every map file of the selected cosmologies and permutations, checked to exist.

    The number of permutations of each cosmology is its number of rows in
    ``simulations/<set>`` (7 per cosmology of the grid, 200 for the fiducial).

    Parameters
    ----------
    root
        Folder holding ``CosmoGridV1_metainfo.h5`` and ``stage3_forecast/``.
    simulation_set, cosmologies, perms, baryonified
        As the keys of the ``cosmogrid`` config section.

    Returns
    -------
    One :class:`MapRecord` per (cosmology, permutation), cosmology-major.

    Raises
    ------
    InputError
        For a missing or malformed metainfo file, unknown cosmologies, permutations that the
        simulations table does not have, or map files that are not on disk.
    """
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
    missing = [record.path for record in records if not record.path.is_file()]
    if missing:
        more = f" ({len(missing) - 1} more of the {len(records)} files are missing too)"
        raise InputError(missing[0], "map file not found" + (more if len(missing) > 1 else ""))
    return records


@contextlib.contextmanager
def _open_hdf5(path: Path) -> Iterator[h5py.File]:
    try:
        file = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file ({exc})") from None
    with file:
        yield file


def _map_datasets(
    file: h5py.File, path: Path, bins: Sequence[int], ia_amplitude: float | None
) -> tuple[list[h5py.Dataset], list[h5py.Dataset], int]:
    """The kappa (and IA) datasets of ``bins``, checked for presence, shape and dtype."""
    if not bins:
        raise InputError("config key 'ingest.bins'", "needs at least one tomographic bin")
    if ia_amplitude is not None and IA_GROUP not in file:
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
            if name not in file or not isinstance(file[name], h5py.Dataset):
                members = file.get(group)
                members = list(members) if isinstance(members, h5py.Group) else []
                present = sorted(k for k in members if k.startswith("stage3_lensing"))
                raise InputError(
                    path,
                    f"lacks dataset '{name}' (tomographic bin {tomo_bin}; the '{group}' group "
                    f"has {', '.join(present) or 'no stage3_lensing datasets'})",
                )
            dataset = file[name]
            if dataset.ndim != 1 or dataset.dtype.kind != "f":
                raise InputError(
                    path,
                    f"dataset '{name}' has shape {dataset.shape} and dtype {dataset.dtype}, "
                    "expected a 1-D floating-point HEALPix map",
                )
            if not hp.isnpixok(dataset.shape[0]):
                raise InputError(
                    path,
                    f"dataset '{name}' has {dataset.shape[0]} pixels, which is not "
                    "12 * nside^2 for any nside",
                )
            if npix is not None and dataset.shape[0] != npix:
                raise InputError(
                    path,
                    f"dataset '{name}' has {dataset.shape[0]} pixels but "
                    f"'{dataset_name(KAPPA_GROUP, bins[0])}' has {npix}",
                )
            npix = dataset.shape[0]
            datasets[group].append(dataset)
    return datasets[KAPPA_GROUP], datasets.get(IA_GROUP, []), hp.npix2nside(npix)


def map_nside(
    path: str | os.PathLike, bins: Sequence[int], ia_amplitude: float | None = None
) -> int:
    """Check one map file's datasets without reading the maps; return its HEALPix nside.

    Cheap (metadata only): ingest calls it on the first file so that a wrong bin or a missing
    IA group is reported at once, before any map is read.
    """
    path = Path(path)
    with _open_hdf5(path) as file:
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
    with _open_hdf5(path) as file:
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
    try:
        if row is None:
            dataset.read_direct(out)
        else:
            dataset.read_direct(out, dest_sel=np.s_[row])
    except OSError as exc:
        raise InputError(path, f"cannot read dataset '{name}' ({exc})") from None
    values = out if row is None else out[row]
    n_bad = values.size - np.count_nonzero(np.isfinite(values))
    if n_bad:
        raise InputError(path, f"dataset '{name}' has {n_bad} NaN/inf pixels")
