"""The built-in mock of CosmoGridV1: lognormal convergence maps written in the release layout.

The real CosmoGridV1 is terabytes and cannot be fetched on every machine, so cosmo-sop can write
a physically grounded stand-in under ``mock.root`` in exactly the layout of
:mod:`cosmo_sop.cosmogrid`; the ingest step then reads both the same way. Per cosmology
(:mod:`cosmo_sop.cosmology`) the theory convergence spectra (:mod:`cosmo_sop.spectra`) are
computed once and reused by all its permutations (independent realisations), each a set of
correlated lognormal maps (:mod:`cosmo_sop.lognormal`).

Resuming and provenance
-----------------------
Every map file is written atomically and carries, in the HDF5 attribute ``cosmo_sop_mock``, the
JSON of everything that determines it (the cosmology, redshift distributions, nside, lmax, master
seed, map indices, cosmo-sop version and :data:`MOCK_FORMAT`). A rerun skips a map whose file is
complete and whose provenance matches, and regenerates any other (missing, truncated, stale from
another config), so an interrupted run resumes and a changed config never reuses old maps. Maps
that do not depend on the change are kept: with the Sobol sampler, growing ``n_cosmologies``
only simulates the new cosmologies. The metainfo is the mark of a complete mock: it is removed
before any map changes and written last, atomically, with the mock config, seed and version in
its attributes. A metainfo that the mock did not write (a real CosmoGridV1 release) is never
overwritten. Maps of cosmologies that a smaller config no longer lists stay on disk but out of
the metainfo, so no reader sees them.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyccl as ccl
from tqdm.auto import tqdm

import cosmo_sop
from cosmo_sop.errors import InputError
from cosmo_sop.sources import cosmogrid
from cosmo_sop.sources.mock.design import draw_cosmologies
from cosmo_sop.sources.mock.lognormal import (
    gaussian_spectra,
    generate_maps,
    lognormal_shifts,
    map_rng,
)
from cosmo_sop.sources.mock.spectra import ccl_cosmology, convergence_spectra, tomographic_nz
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


# ----------------------------------------------------------------------------------------------
# configuration


def resolve_mock_config(mock_config: Mapping[str, Any] | None, where: str = "config") -> dict:
    """Validate the ``mock`` config section and fill in its defaults.

    The schema (``cosmo_sop/schemas/config.schema.yaml``) fills the defaults and checks types;
    this adds the physical checks that the schema cannot express. ``lmax: null`` becomes
    ``2 * nside``.

    Raises
    ------
    InputError
        Naming the config key and the problem.
    """
    from cosmo_sop.config import validate_config

    # Only the mock section matters here; a single ingest bin keeps the cross-section check of
    # ingest.bins against mock.redshift.n_bins out of the way.
    cfg = validate_config({"mock": dict(mock_config or {}), "ingest": {"bins": [1]}}, where)["mock"]
    for name, (low, high) in cfg["prior"].items():
        if not low < high:
            raise InputError(
                where, f"config key 'mock.prior.{name}' needs lower < upper, got [{low}, {high}]"
            )
    fid = cfg["fiducial"]
    om_low, om_high = cfg["prior"]["Om"]
    if not 0 < fid["Ob"] < om_low:
        raise InputError(
            where,
            f"config key 'mock.prior.Om' lower bound {om_low} must exceed "
            f"mock.fiducial.Ob = {fid['Ob']} (Omega_cdm > 0)",
        )
    if om_high > 1:
        raise InputError(
            where,
            f"config key 'mock.prior.Om' upper bound {om_high} exceeds 1 "
            "(the mock is flat, Omega_Lambda >= 0)",
        )
    if cfg["prior"]["s8"][0] <= 0:
        raise InputError(where, "config key 'mock.prior.s8' must be positive")
    for section, keys in (("fiducial", ("h", "ns")), ("redshift", ("alpha", "beta"))):
        for key in keys:
            value = cfg[section][key]
            if value <= 0:
                raise InputError(
                    where, f"config key 'mock.{section}.{key}' must be positive, got {value}"
                )
    if cfg["lmax"] is None:
        cfg["lmax"] = 2 * cfg["nside"]
    return cfg


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
        Resolved ``mock`` config (:func:`resolve_mock_config`).
    seed
        Master seed.

    Returns
    -------
    parameters : ndarray of :func:`cosmo_sop.cosmogrid.metainfo_dtype`
        One row per cosmology: ``id_param`` = row, ``path_par``; ``path_sim`` is empty and
        ``id_sim`` and ``seed_index`` are -1 (they belong to simulations).
    simulations : ndarray of :func:`cosmo_sop.cosmogrid.metainfo_dtype`
        One row per (cosmology, perm), cosmology-major: ``id_sim`` = row, ``id_param``,
        ``seed_index`` = perm (the map is seeded by ``(seed, id_param, seed_index)``),
        ``path_sim`` = ``<path_par>run_<perm:04d>/``.
    """
    cosmologies = draw_cosmologies(
        cfg["n_cosmologies"], cfg["prior"], cfg["fiducial"], sampler=cfg["sampler"], seed=seed
    )
    parameters = np.zeros(len(cosmologies), dtype=cosmogrid.metainfo_dtype())
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


def _row_dict(row: np.void) -> dict:
    return {name: row[name].item() for name in row.dtype.names}


# ----------------------------------------------------------------------------------------------
# maps


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
    return json.dumps(record, sort_keys=True)


def simulate_cosmology(
    cfg: Mapping[str, Any], seed: int, parameters: Mapping[str, Any], perms: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Simulate the maps of one cosmology, computing its spectra once for all ``perms``.

    Parameters
    ----------
    cfg
        Resolved ``mock`` config.
    seed
        Master seed.
    parameters
        One row of the ``parameters`` table (needs ``id_param`` and the cosmological columns).
    perms
        Permutation indices to simulate.

    Yields
    ------
    perm : int
    maps : ndarray, shape (n_bins, 12 nside^2), float32
        Convergence maps of all bins in RING order, seeded by ``(seed, id_param, perm)``.
    """
    if len(perms) == 0:
        return
    z, nz = tomographic_nz(cfg["redshift"])
    cosmo = ccl_cosmology(parameters)
    spectra = convergence_spectra(cosmo, z, nz, cfg["lmax"])
    shifts = lognormal_shifts(z, nz, parameters["Om"])
    gaussian = gaussian_spectra(spectra, shifts)
    for perm in perms:
        rng = map_rng(seed, int(parameters["id_param"]), int(perm))
        yield int(perm), generate_maps(gaussian, shifts, cfg["nside"], rng)


def regenerate_map(
    mock_config: Mapping[str, Any], seed: int, id_param: int, perm: int
) -> np.ndarray:
    """Regenerate one map set alone, identical to the one :func:`simulate_mock` writes.

    Returns
    -------
    ndarray, shape (n_bins, 12 nside^2), float32
        The convergence maps of cosmology row ``id_param`` and permutation ``perm``.
    """
    cfg = resolve_mock_config(mock_config)
    parameters, _ = metainfo_tables(cfg, seed)
    if not 0 <= id_param < len(parameters):
        raise InputError("mock", f"cosmology index {id_param} outside 0..{len(parameters) - 1}")
    ((_, maps),) = simulate_cosmology(cfg, seed, _row_dict(parameters[id_param]), [perm])
    return maps


def _map_is_complete(path: Path, provenance: str, n_bins: int, npix: int) -> bool:
    """Whether ``path`` holds all bins of a map written from exactly ``provenance``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get(PROVENANCE_ATTR) != provenance:
                return False
            for b in range(1, n_bins + 1):
                dset = f.get(cosmogrid.dataset_name(cosmogrid.KAPPA_GROUP, b))
                if not isinstance(dset, h5py.Dataset):
                    return False
                if dset.shape != (npix,) or dset.dtype != np.float32:
                    return False
    except OSError:  # truncated or not HDF5 at all
        return False
    return True


def _remove_stray_temporaries(path: Path) -> None:
    """Remove temporaries that an interrupted run left beside ``path`` (see ``atomic_path``)."""
    if path.parent.is_dir():
        for stray in path.parent.glob(f".{path.name}.tmp-*"):
            if stray.is_file():
                stray.unlink()


def _write_map(path: Path, maps: np.ndarray, provenance: str) -> None:
    _remove_stray_temporaries(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[PROVENANCE_ATTR] = provenance
        for b, kappa in enumerate(maps, start=1):
            f.create_dataset(cosmogrid.dataset_name(cosmogrid.KAPPA_GROUP, b), data=kappa)


class _CosmologyFailed(Exception):
    """A cosmology that cannot be simulated (picklable, so it crosses process boundaries)."""

    def __init__(self, cosmology: str, problem: str) -> None:
        super().__init__(cosmology, problem)


def _simulate_and_write(
    root: Path,
    cfg: Mapping[str, Any],
    seed: int,
    parameters: Mapping[str, Any],
    perms: Sequence[int],
) -> int:
    """Worker task: simulate and write the listed perms of one cosmology; return how many."""
    written = 0
    try:
        for perm, maps in simulate_cosmology(cfg, seed, parameters, perms):
            path = cosmogrid.map_path(root, parameters["path_par"], perm, baryonified=False)
            _write_map(path, maps, map_provenance(cfg, seed, parameters, perm))
            written += 1
    except (ValueError, ccl.CCLError) as exc:
        name = cosmogrid.cosmology_id(parameters["path_par"])
        raise _CosmologyFailed(
            name, f"Om={parameters['Om']:.4f}, s8={parameters['s8']:.4f}: {exc}"
        ) from None
    return written


# ----------------------------------------------------------------------------------------------
# metainfo


def _read_metainfo_record(path: Path) -> str | None:
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
    except OSError:
        record = None
    if record is None:
        raise InputError(
            path,
            "exists but was not written by the cosmo-sop mock (a CosmoGridV1 release, or an "
            "unreadable file); refusing to overwrite it: choose another mock.root",
        )
    return str(record)


def _metainfo_record(cfg: Mapping[str, Any], seed: int) -> str:
    return json.dumps(
        {
            "mock_format": MOCK_FORMAT,
            "cosmo_sop_version": cosmo_sop.__version__,
            "seed": int(seed),
            "config": config_record(cfg),
        },
        sort_keys=True,
    )


def _write_metainfo(
    path: Path, parameters: np.ndarray, simulations: np.ndarray, record: str
) -> None:
    empty = np.zeros(0, dtype=cosmogrid.metainfo_dtype())
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[PROVENANCE_ATTR] = record
        f.attrs["description"] = (
            "cosmo-sop lognormal mock of CosmoGridV1 (grid set only); see cosmo_sop/mock.py"
        )
        for table, rows in (("parameters", parameters), ("simulations", simulations)):
            group = f.create_group(table)
            group.create_dataset("all", data=rows)
            for name in cosmogrid.SIMULATION_SETS:
                group.create_dataset(name, data=rows if name == SIMULATION_SET else empty)


# ----------------------------------------------------------------------------------------------
# top level


def simulate_mock(
    root: str | os.PathLike, mock_config: Mapping[str, Any] | None, seed: int, workers: int = 1
) -> Path:
    """Write the mock CosmoGridV1 under ``root``, resuming whatever a previous run finished.

    Parameters
    ----------
    root
        Folder of the mock (``mock.root``); created if needed.
    mock_config
        The ``mock`` config section; missing keys take their schema defaults.
    seed
        Master seed (config ``seed``).
    workers
        Worker processes. With more than one, cosmologies are simulated in parallel processes
        (the simulation holds the GIL), started as described in :func:`_process_context`; a
        script that calls this must guard its top level with ``if __name__ == "__main__":``.

    Returns
    -------
    Path
        The metainfo file ``<root>/CosmoGridV1_metainfo.h5``.

    Raises
    ------
    InputError
        For a bad config, a ``root`` that is not a folder, a metainfo at ``root`` that the mock
        did not write, or a cosmology in the prior that cannot be simulated.
    """
    cfg = resolve_mock_config(mock_config)
    if not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be a positive integer, got {workers!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(root, "mock root exists and is not a folder")
    metainfo_path = root / cosmogrid.METAINFO_NAME
    old_record = _read_metainfo_record(metainfo_path)
    record = _metainfo_record(cfg, seed)

    parameters, simulations = metainfo_tables(cfg, seed)
    npix = 12 * cfg["nside"] ** 2
    n_bins = cfg["redshift"]["n_bins"]
    jobs = []  # (parameters row, perms still to write)
    for row in parameters:
        row = _row_dict(row)
        todo = [
            perm
            for perm in range(cfg["n_perms"])
            if not _map_is_complete(
                cosmogrid.map_path(root, row["path_par"], perm, baryonified=False),
                map_provenance(cfg, seed, row, perm),
                n_bins,
                npix,
            )
        ]
        if todo:
            jobs.append((row, todo))

    if jobs:
        # The metainfo vouches for a complete mock: withdraw it while maps change, so that an
        # interrupted run never leaves an index that describes maps which are not on disk.
        metainfo_path.unlink(missing_ok=True)
        _run_jobs(root, cfg, seed, jobs, workers)
    if jobs or old_record != record:
        _write_metainfo(metainfo_path, parameters, simulations, record)
    return metainfo_path


def _process_context() -> multiprocessing.context.BaseContext:
    """Start method of the worker processes.

    Not ``fork``: forking a process that has run OpenMP code (healpy's transforms) can deadlock.
    ``forkserver`` starts one fresh process that imports this module once and forks every worker
    from it, which halves the start-up time of ``spawn``, where each worker imports pyccl,
    healpy and glass itself. ``spawn`` where ``forkserver`` is not available (Windows).
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _run_jobs(root: Path, cfg: Mapping[str, Any], seed: int, jobs: list, workers: int) -> None:
    total = sum(len(perms) for _, perms in jobs)
    if total == 0:
        return
    with tqdm(total=total, unit="map", desc="mock maps") as bar:
        try:
            if workers == 1:
                for row, perms in jobs:
                    bar.update(_simulate_and_write(root, cfg, seed, row, perms))
                return
            context = _process_context()
            n_processes = min(workers, len(jobs))
            with ProcessPoolExecutor(max_workers=n_processes, mp_context=context) as pool:
                futures = {
                    pool.submit(_simulate_and_write, root, cfg, seed, row, perms)
                    for row, perms in jobs
                }
                while futures:
                    done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None:
                            for pending in futures:
                                pending.cancel()
                        bar.update(future.result())
        except _CosmologyFailed as failed:
            cosmology, problem = failed.args
            raise InputError(
                "config",
                f"mock cosmology {cosmology} cannot be simulated ({problem}); "
                "check config keys 'mock.prior', 'mock.fiducial' and 'mock.redshift'",
            ) from None
