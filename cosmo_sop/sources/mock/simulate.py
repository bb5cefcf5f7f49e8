"""The built-in mock of CosmoGridV1: lognormal convergence maps with halos, in the release layout.

The real CosmoGridV1 is terabytes and cannot be fetched on every machine, so cosmo-sop can write
a physically grounded stand-in under ``mock.root`` in exactly the layout of
:mod:`cosmo_sop.sources.cosmogrid`; the ingest step then reads both the same way. Per cosmology
(:mod:`~cosmo_sop.sources.mock.design`) the theory convergence spectra
(:mod:`~cosmo_sop.sources.mock.spectra`) are computed once and reused by all its permutations
(independent realisations), each a set of correlated lognormal maps
(:mod:`~cosmo_sop.sources.mock.lognormal`) plus, with ``mock.halos.enabled``, Poisson-sampled
NFW halos (:mod:`~cosmo_sop.sources.mock.halos`), the lognormal field then carrying the halofit
power less the halos' one-halo term; :mod:`~cosmo_sop.sources.mock.writer` writes the files.
With ``mock.planted.enabled`` the maps are instead the planted-signal control
(:mod:`~cosmo_sop.sources.mock.planted`), in the same layout.

Resuming and provenance
-----------------------
Every map file is written atomically and carries, in the HDF5 attribute ``cosmo_sop_mock``, the
JSON of everything that determines it (the cosmology, redshift distributions, nside, lmax, master
seed, map indices, cosmo-sop version and the mock format). A rerun skips a map whose file is
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

import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyccl as ccl
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cosmo_sop.config import with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.sources.cosmogrid.layout import METAINFO_NAME, cosmology_id, map_path
from cosmo_sop.sources.mock.halos import (
    HaloLightcone,
    HaloModel,
    field_spectra,
    halo_rng,
    one_halo_spectra,
)
from cosmo_sop.sources.mock.lognormal import (
    gaussian_spectra,
    generate_maps,
    lognormal_shifts,
    map_rng,
)
from cosmo_sop.sources.mock.planted import PlantedMock, check_planted
from cosmo_sop.sources.mock.spectra import ccl_cosmology, convergence_spectra, tomographic_nz
from cosmo_sop.sources.mock.writer import (
    map_is_complete,
    map_provenance,
    metainfo_record,
    metainfo_tables,
    read_metainfo_record,
    row_dict,
    write_map,
    write_metainfo,
)

#: A cosmology row of the ``parameters`` table and the perms of it still to write.
Job = tuple[dict, list[int]]


def run(config: Mapping[str, Any], *, root: str | os.PathLike, workers: int = 1) -> Path:
    """The ``simulate_mock`` step: :func:`simulate_mock` of the validated config's ``mock``
    section and master seed, under ``root``."""
    return simulate_mock(root, config["mock"], seed=config["seed"], workers=workers)


def mock_settings(mock_config: Mapping[str, Any] | None, where: str = "config") -> dict:
    """The ``mock`` config section, checked and complete: schema defaults filled in, the
    physical checks that the schema cannot express passed, ``lmax: null`` made ``2 * nside``.

    Raises
    ------
    InputError
        Naming ``where``, the config key and the problem.
    """
    cfg = with_defaults("mock", mock_config, where=where)
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
    halos = cfg["halos"]
    if not halos["mass_min"] < halos["mass_max"]:
        raise InputError(
            where,
            f"config key 'mock.halos.mass_min' ({halos['mass_min']:.3g}) must be below "
            f"mock.halos.mass_max ({halos['mass_max']:.3g})",
        )
    check_planted(cfg, where)
    if cfg["lmax"] is None:
        cfg["lmax"] = 2 * cfg["nside"]
    return cfg


# ----------------------------------------------------------------------------------------------
# maps


def simulate_cosmology(
    cfg: Mapping[str, Any], seed: int, parameters: Mapping[str, Any], perms: Sequence[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Simulate the maps of one cosmology, computing its spectra once for all ``perms``.

    Parameters
    ----------
    cfg
        Complete ``mock`` config (:func:`mock_settings`).
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
        Convergence maps of all bins in RING order, seeded by ``(seed, id_param, perm)``;
        with ``mock.planted.enabled`` the planted maps
        (:meth:`~cosmo_sop.sources.mock.planted.PlantedMock.maps`).
    """
    if len(perms) == 0:
        return
    if cfg["planted"]["enabled"]:
        # The planted maps' background has one fixed cosmology: this one's spectra are not used.
        planted = PlantedMock.from_config(cfg)
        for perm in perms:
            yield int(perm), planted.maps(parameters, seed, perm)
        return
    z, nz = tomographic_nz(cfg["redshift"])
    cosmo = ccl_cosmology(parameters)
    spectra = convergence_spectra(cosmo, z, nz, cfg["lmax"])
    shifts = lognormal_shifts(z, nz, parameters["Om"])
    halos = None
    if cfg["halos"]["enabled"]:
        model = HaloModel.from_config(cfg["halos"])
        spectra = field_spectra(spectra, one_halo_spectra(cosmo, model, z, nz, cfg["lmax"]))
        halos = HaloLightcone.of(cosmo, model, z, nz)
    gaussian = gaussian_spectra(spectra, shifts)
    for perm in perms:
        index = (seed, int(parameters["id_param"]), int(perm))
        maps = generate_maps(gaussian, shifts, cfg["nside"], map_rng(*index))
        if halos is not None:
            kappa, _ = halos.convergence(cfg["nside"], halo_rng(*index))
            maps += kappa.astype(np.float32)
        yield int(perm), maps


def regenerate_map(
    mock_config: Mapping[str, Any], seed: int, id_param: int, perm: int
) -> np.ndarray:
    """Regenerate one map set alone, identical to the one :func:`simulate_mock` writes.

    Returns
    -------
    ndarray, shape (n_bins, 12 nside^2), float32
        The convergence maps of cosmology row ``id_param`` and permutation ``perm``.
    """
    cfg = mock_settings(mock_config)
    parameters, _ = metainfo_tables(cfg, seed)
    if not 0 <= id_param < len(parameters):
        raise InputError("mock", f"cosmology index {id_param} outside 0..{len(parameters) - 1}")
    ((_, maps),) = simulate_cosmology(cfg, seed, row_dict(parameters[id_param]), [perm])
    return maps


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
            path = map_path(root, parameters["path_par"], perm, baryonified=False)
            write_map(path, maps, map_provenance(cfg, seed, parameters, perm))
            written += 1
    except (ValueError, ccl.CCLError) as exc:
        name = cosmology_id(parameters["path_par"])
        raise _CosmologyFailed(
            name, f"Om={parameters['Om']:.4f}, s8={parameters['s8']:.4f}: {exc}"
        ) from None
    return written


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
    cfg = mock_settings(mock_config)
    if not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be a positive integer, got {workers!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(root, "mock root exists and is not a folder")
    metainfo_path = root / METAINFO_NAME
    old_record = read_metainfo_record(metainfo_path)
    record = metainfo_record(cfg, seed)

    parameters, simulations = metainfo_tables(cfg, seed)
    jobs = _pending_jobs(root, cfg, seed, parameters)
    if jobs:
        # The metainfo vouches for a complete mock: withdraw it while maps change, so that an
        # interrupted run never leaves an index that describes maps which are not on disk.
        metainfo_path.unlink(missing_ok=True)
        _run_jobs(root, cfg, seed, jobs, workers)
    if jobs or old_record != record:
        write_metainfo(metainfo_path, parameters, simulations, record)
    return metainfo_path


def _pending_jobs(
    root: Path, cfg: Mapping[str, Any], seed: int, parameters: np.ndarray
) -> list[Job]:
    """The perms of each cosmology whose map file is missing, incomplete or stale."""
    npix = 12 * cfg["nside"] ** 2
    n_bins = cfg["redshift"]["n_bins"]
    jobs = []
    for row in parameters:
        row = row_dict(row)
        todo = [
            perm
            for perm in range(cfg["n_perms"])
            if not map_is_complete(
                map_path(root, row["path_par"], perm, baryonified=False),
                map_provenance(cfg, seed, row, perm),
                n_bins,
                npix,
            )
        ]
        if todo:
            jobs.append((row, todo))
    return jobs


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


def _run_jobs(root: Path, cfg: Mapping[str, Any], seed: int, jobs: list[Job], workers: int) -> None:
    """Simulate and write every job, in this process or in ``workers`` processes."""
    total = sum(len(perms) for _, perms in jobs)
    if total == 0:
        return
    with tqdm(total=total, unit="map", desc="mock maps") as bar:
        try:
            if workers == 1:
                for row, perms in jobs:
                    bar.update(_simulate_and_write(root, cfg, seed, row, perms))
            else:
                _run_in_processes(root, cfg, seed, jobs, workers, bar)
        except _CosmologyFailed as failed:
            cosmology, problem = failed.args
            raise InputError(
                "config",
                f"mock cosmology {cosmology} cannot be simulated ({problem}); "
                "check config keys 'mock.prior', 'mock.fiducial' and 'mock.redshift'",
            ) from None


def _one_thread_each() -> None:
    """Worker start-up: one OpenMP thread (healpy's transforms), as the workers share the cores.

    Snakemake sets ``OMP_NUM_THREADS`` to the job's threads, so each of two workers would run two
    threads on two cores: 1.45x slower, with identical maps (measured on 24 cosmologies).
    """
    threadpool_limits(1)


def _run_in_processes(
    root: Path, cfg: Mapping[str, Any], seed: int, jobs: list[Job], workers: int, bar: tqdm
) -> None:
    """One task per cosmology in a process pool; the first failure cancels the rest."""
    context = _process_context()
    n_processes = min(workers, len(jobs))
    with ProcessPoolExecutor(
        max_workers=n_processes, mp_context=context, initializer=_one_thread_each
    ) as pool:
        futures = {
            pool.submit(_simulate_and_write, root, cfg, seed, row, perms) for row, perms in jobs
        }
        while futures:
            # FIRST_COMPLETED, not FIRST_EXCEPTION: the latter returns only once every task is
            # done when none fails, and the progress bar stood at 0 until the end.
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is not None:
                    for pending in futures:
                        pending.cancel()
                bar.update(future.result())
