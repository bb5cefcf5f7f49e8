"""The mock CosmoGridV1: design, on-disk layout, resume, provenance, errors, no network."""

from __future__ import annotations

import json
import shutil
import socket
import warnings
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pytest

from cosmo_sop.errors import InputError
from cosmo_sop.figures.mock import plot_mock_overview
from cosmo_sop.sources import cosmogrid
from cosmo_sop.sources.mock import (
    PROVENANCE_ATTR,
    draw_cosmologies,
    metainfo_tables,
    mock_settings,
    regenerate_map,
    simulate_mock,
    unit_design,
)
from cosmo_sop.sources.mock import simulate as mock_module

SEED = 11
CONFIG = {"n_cosmologies": 3, "n_perms": 2, "nside": 16, "redshift": {"n_bins": 2}}
N_SIMS = 6


def _map_files(root: Path) -> list[Path]:
    with h5py.File(root / cosmogrid.METAINFO_NAME, "r") as f:
        sims = f["simulations/grid"][:]
    return [cosmogrid.map_path(root, r["path_par"], int(r["seed_index"]), False) for r in sims]


def _mtimes(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def mock_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mock") / "cosmogrid"
    simulate_mock(root, CONFIG, SEED)
    return root


@pytest.fixture
def mock_copy(mock_root, tmp_path) -> Path:
    copy = tmp_path / "cosmogrid"
    shutil.copytree(mock_root, copy)
    return copy


# --- design ------------------------------------------------------------------------------------


def test_sobol_design_is_a_stable_prefix_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns for n not a power of two if misused
        small, large = unit_design(5, "sobol", SEED), unit_design(12, "sobol", SEED)
    np.testing.assert_array_equal(small, large[:5])
    assert small.shape == (5, 2) and np.all((small >= 0) & (small < 1))
    assert not np.array_equal(small, unit_design(5, "sobol", SEED + 1))


def test_latin_hypercube_fills_every_stratum_once():
    n = 7
    points = unit_design(n, "lhs", SEED)
    for column in points.T:
        assert sorted(np.floor(column * n).astype(int)) == list(range(n))


def test_cosmology_table_has_release_columns():
    prior = {"Om": (0.2, 0.4), "s8": (0.6, 1.0)}
    table = draw_cosmologies(4, prior, {"h": 0.7, "Ob": 0.05, "ns": 0.96, "w0": -0.9}, seed=SEED)
    for name, (low, high) in prior.items():
        assert np.all((table[name] >= low) & (table[name] < high))
    np.testing.assert_allclose(table["O_cdm"], table["Om"] - 0.05)
    np.testing.assert_allclose(table["Ol"], 1 - table["Om"])
    assert np.all(table["H0"] == 70.0) and np.all(table["w0"] == -0.9)
    assert np.all(table["m_nu"] == 0) and np.all(table["wa"] == 0)
    assert np.all(np.isnan(table["As"])) and list(table["sobol_index"]) == [0, 1, 2, 3]


# --- layout ------------------------------------------------------------------------------------


def test_metainfo_has_release_layout(mock_root):
    with h5py.File(mock_root / cosmogrid.METAINFO_NAME, "r") as f:
        for table in ("parameters", "simulations"):
            assert set(f[table]) == {"all", "grid", "fiducial", "benchmark"}
            for name in f[table]:
                assert f[table][name].dtype == cosmogrid.metainfo_dtype()
            assert len(f[table]["fiducial"]) == 0 and len(f[table]["benchmark"]) == 0
            # compared as bytes: the As and bary_* columns are NaN
            assert f[table]["all"][:].tobytes() == f[table]["grid"][:].tobytes()
        params, sims = f["parameters/grid"][:], f["simulations/grid"][:]
        record = json.loads(f.attrs[PROVENANCE_ATTR])
    assert record["seed"] == SEED
    assert record["config"]["nside"] == 16 and record["config"]["lmax"] == 32
    expected_paths = [f"CosmoGrid/raw/grid/cosmo_{i:06d}/".encode() for i in (1, 2, 3)]
    assert list(params["path_par"]) == expected_paths
    assert list(params["id_param"]) == [0, 1, 2]
    assert np.all((params["Om"] >= 0.1) & (params["Om"] < 0.5))
    assert np.all((params["s8"] >= 0.4) & (params["s8"] < 1.4))
    assert len(np.unique(params["Om"])) == 3
    assert len(sims) == N_SIMS
    assert list(sims["id_sim"]) == list(range(N_SIMS))
    assert list(sims["id_param"]) == [0, 0, 1, 1, 2, 2] and list(sims["seed_index"]) == [0, 1] * 3
    assert sims["path_sim"][3] == b"CosmoGrid/raw/grid/cosmo_000002/run_0001/"
    np.testing.assert_array_equal(sims["Om"], np.repeat(params["Om"], 2))


def test_map_files_have_release_layout(mock_root):
    files = _map_files(mock_root)
    expected = "stage3_forecast/grid/cosmo_000002/perm_0001/projected_probes_maps_nobaryons512.h5"
    assert files[3] == mock_root / expected
    for path in files:
        with h5py.File(path, "r") as f:
            assert set(f) == {"kg"} and set(f["kg"]) == {"stage3_lensing1", "stage3_lensing2"}
            for b in (1, 2):
                kappa = f[cosmogrid.dataset_name("kg", b)]
                assert kappa.dtype == np.float32 and kappa.ndim == 1
                assert hp.npix2nside(kappa.shape[0]) == 16
                assert np.all(np.isfinite(kappa[:])) and kappa[:].std() > 0
    assert not list(mock_root.rglob(".*tmp*"))


def test_single_map_regenerated_alone_equals_written(mock_root):
    path = _map_files(mock_root)[3]  # cosmology 1, perm 1
    with h5py.File(path, "r") as f:
        written = np.stack([f[cosmogrid.dataset_name("kg", b)][:] for b in (1, 2)])
    np.testing.assert_array_equal(regenerate_map(CONFIG, SEED, 1, 1), written)


def test_cosmogrid_reader_reads_the_mock(mock_root):
    """The ingest path is the same for the mock and the release: the reader sees every map."""
    records = cosmogrid.list_maps(mock_root, "grid", "all", perms=2)
    assert [(r.cosmology, r.perm) for r in records] == [
        (f"cosmo_{i:06d}", p) for i in (1, 2, 3) for p in (0, 1)
    ]
    assert cosmogrid.map_nside(records[5].path, [1, 2]) == 16
    np.testing.assert_array_equal(
        cosmogrid.read_kappa(records[5].path, [1, 2]), regenerate_map(CONFIG, SEED, 2, 1)
    )
    parameters, _ = metainfo_tables(mock_settings(CONFIG), SEED)
    assert (records[5].Om, records[5].s8) == (parameters["Om"][2], parameters["s8"][2])


# --- resume and provenance ---------------------------------------------------------------------


def test_rerun_of_a_complete_mock_changes_nothing(mock_copy):
    before = _mtimes(mock_copy)
    simulate_mock(mock_copy, CONFIG, SEED)
    assert _mtimes(mock_copy) == before


def test_interrupted_run_resumes_only_missing_and_broken_maps(mock_copy):
    files = _map_files(mock_copy)
    files[1].unlink()  # never written
    stray = files[1].with_name(f".{files[1].name}.tmp-99999")
    stray.write_bytes(b"half a file")  # left by the killed run
    files[4].write_bytes(files[4].read_bytes()[:1000])  # truncated by hand
    (mock_copy / cosmogrid.METAINFO_NAME).unlink()  # the metainfo comes last
    before = _mtimes(mock_copy)
    simulate_mock(mock_copy, CONFIG, SEED)
    after = _mtimes(mock_copy)
    changed = {path for path in after if before.get(path) != after[path]}
    assert changed == {files[1], files[4], mock_copy / cosmogrid.METAINFO_NAME}
    assert not stray.exists()
    with h5py.File(files[4], "r") as f:
        rewritten = f[cosmogrid.dataset_name("kg", 2)][:]
    np.testing.assert_array_equal(rewritten, regenerate_map(CONFIG, SEED, 2, 0)[1])


def test_run_killed_midway_leaves_no_metainfo_and_resumes(mock_copy, monkeypatch):
    files = _map_files(mock_copy)
    config = {**CONFIG, "prior": {"Om": [0.2, 0.3]}}  # every map is stale
    calls = []

    def killed_on_second_map(path, maps, provenance):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_map(path, maps, provenance)

    write_map = mock_module.write_map
    monkeypatch.setattr(mock_module, "write_map", killed_on_second_map)
    with pytest.raises(KeyboardInterrupt):
        simulate_mock(mock_copy, config, SEED)
    assert not (mock_copy / cosmogrid.METAINFO_NAME).exists()  # no index of a half-made mock
    assert not list(mock_copy.rglob(".*tmp*"))
    monkeypatch.undo()
    before = _mtimes(mock_copy)
    simulate_mock(mock_copy, config, SEED)
    after = _mtimes(mock_copy)
    assert after[files[0]] == before[files[0]]  # finished before the kill: kept
    assert all(after[path] != before[path] for path in files[1:])
    with h5py.File(mock_copy / cosmogrid.METAINFO_NAME, "r") as f:
        assert np.all(f["parameters/grid"]["Om"] < 0.3)


def test_changed_config_regenerates_stale_maps_only(mock_copy):
    files = _map_files(mock_copy)
    before = _mtimes(mock_copy)
    # Sobol prefix: one more cosmology leaves the first three (and their maps) unchanged
    simulate_mock(mock_copy, {**CONFIG, "n_cosmologies": 4}, SEED)
    after = _mtimes(mock_copy)
    assert all(after[path] == before[path] for path in files)
    assert len(_map_files(mock_copy)) == 8
    # another prior moves every cosmology: every map is regenerated, none silently reused
    simulate_mock(mock_copy, {**CONFIG, "prior": {"s8": [0.7, 0.9]}}, SEED)
    final = _mtimes(mock_copy)
    assert all(final[path] != after[path] for path in files)
    with h5py.File(files[0], "r") as f:
        assert 0.7 <= json.loads(f.attrs[PROVENANCE_ATTR])["parameters"]["s8"] < 0.9


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"prior": {"Om": [0.5, 0.1]}}, "mock.prior.Om"),
        ({"prior": {"Om": [0.02, 0.4]}}, "Omega_cdm"),
        ({"prior": {"s8": [0.0, 1.0]}}, "mock.prior.s8"),
        ({"nside": 16, "lmax": 100}, "mock.lmax"),
        ({"nside": 17}, "mock.nside"),
        ({"redshift": {"beta": -1.0}}, "mock.redshift.beta"),
        ({"n_bins": 4}, "n_bins"),
    ],
)
def test_bad_config_is_an_input_error_and_writes_nothing(tmp_path, config, message):
    with pytest.raises(InputError, match=message):
        simulate_mock(tmp_path / "mock", {**CONFIG, **config}, SEED)
    assert not (tmp_path / "mock").exists()


def test_bad_workers_and_root_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="workers"):
        simulate_mock(tmp_path / "mock", CONFIG, SEED, workers=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        simulate_mock(tmp_path / "file", CONFIG, SEED)


def test_unsimulable_cosmology_is_an_input_error(tmp_path, monkeypatch):
    def unreachable(spectra, shifts):
        raise ValueError("Gaussian spectrum for fields (1, 0) did not converge")

    monkeypatch.setattr(mock_module, "gaussian_spectra", unreachable)
    with pytest.raises(
        InputError, match=r"cosmo_000001 cannot be simulated \(Om=.*did not converge"
    ):
        simulate_mock(tmp_path, CONFIG, SEED)
    assert not (tmp_path / cosmogrid.METAINFO_NAME).exists()


def test_never_overwrites_a_metainfo_it_did_not_write(tmp_path):
    metainfo = tmp_path / cosmogrid.METAINFO_NAME
    with h5py.File(metainfo, "w") as f:
        f.create_dataset("parameters/grid", data=np.zeros(1, dtype=cosmogrid.metainfo_dtype()))
    content = metainfo.read_bytes()
    with pytest.raises(InputError, match="not written by the cosmo-sop mock"):
        simulate_mock(tmp_path, CONFIG, SEED)
    assert metainfo.read_bytes() == content
    assert not (tmp_path / "stage3_forecast").exists()


# --- offline, parallel, figure -----------------------------------------------------------------


def test_simulation_never_touches_the_network(tmp_path, monkeypatch):
    class NoNetwork(socket.socket):
        def __init__(self, *args, **kwargs):
            raise AssertionError("the mock tried to open a socket")

    monkeypatch.setattr(socket, "socket", NoNetwork)
    monkeypatch.setattr(socket, "create_connection", NoNetwork)
    config = {**CONFIG, "n_cosmologies": 1, "n_perms": 1}
    simulate_mock(tmp_path, config, SEED)
    assert len(_map_files(tmp_path)) == 1


def test_two_workers_write_the_same_maps(mock_root, tmp_path):
    config = {**CONFIG, "n_perms": 1, "n_cosmologies": 2}
    simulate_mock(tmp_path, config, SEED, workers=2)
    reference = _map_files(mock_root)[::2]  # perm 0 of the first two cosmologies
    for ours, theirs in zip(_map_files(tmp_path), reference[:2], strict=True):
        with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
            assert a.attrs[PROVENANCE_ATTR] == b.attrs[PROVENANCE_ATTR]
            for name in ("kg/stage3_lensing1", "kg/stage3_lensing2"):
                np.testing.assert_array_equal(a[name][:], b[name][:])


def test_overview_figure_is_written(mock_root, tmp_path):
    out = plot_mock_overview(mock_root, tmp_path / "fig" / "mock.png", n_cosmologies=2, xsize=120)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(InputError, match="metainfo file not found"):
        plot_mock_overview(tmp_path / "nowhere", tmp_path / "x.png")
    # the CLI passes the mock config: it must be the one the maps were made with
    plot_mock_overview(mock_root, tmp_path / "same.png", CONFIG, n_cosmologies=1, pdf=False)
    with pytest.raises(InputError, match="rerun simulate-mock"):
        plot_mock_overview(mock_root, tmp_path / "other.png", {**CONFIG, "nside": 32})
    assert not (tmp_path / "other.png").exists()


# --- halos on or off ----------------------------------------------------------------------------


def test_lognormal_only_mock_is_one_key_away_and_halo_keys_make_maps_stale():
    """mock.halos.enabled false: the plain lognormal maps, whose provenance has no halo record
    (mocks written before halos existed stay valid); on: the same field's random numbers
    with lower spectra plus halos, recorded in the provenance, so a changed halo key makes
    every map stale."""
    from cosmo_sop.sources.mock import (
        ccl_cosmology,
        convergence_spectra,
        gaussian_spectra,
        generate_maps,
        lognormal_shifts,
        map_provenance,
        map_rng,
        tomographic_nz,
    )

    config = {**CONFIG, "nside": 64}
    plain = mock_settings({**config, "halos": {"enabled": False}})
    halos = mock_settings(config)
    assert halos["halos"]["enabled"]  # the default
    parameters, _ = metainfo_tables(plain, SEED)
    row = {name: parameters[1][name].item() for name in parameters.dtype.names}
    z, nz = tomographic_nz(plain["redshift"])
    shifts = lognormal_shifts(z, nz, row["Om"])
    spectra = convergence_spectra(ccl_cosmology(row), z, nz, plain["lmax"])
    expected = generate_maps(gaussian_spectra(spectra, shifts), shifts, 64, map_rng(SEED, 1, 0))
    assert np.array_equal(regenerate_map(plain, SEED, 1, 0), expected)
    assert "halos" not in json.loads(map_provenance(plain, SEED, row, 0))

    with_halos = regenerate_map(halos, SEED, 1, 0)
    assert with_halos.shape == expected.shape and with_halos.dtype == np.float32
    assert not np.array_equal(with_halos, expected)
    assert np.array_equal(with_halos, regenerate_map(halos, SEED, 1, 0))  # seeded
    assert np.all(np.abs(with_halos.mean(axis=1)) < 1e-4)
    assert np.all(with_halos.max(axis=1) > expected.max(axis=1))
    record = json.loads(map_provenance(halos, SEED, row, 0))["halos"]
    assert record["mass_min"] == 3e14 and record["mass_function"] == "Tinker08"
    heavier = mock_settings({**config, "halos": {"mass_min": 1e15}})
    assert map_provenance(heavier, SEED, row, 0) != map_provenance(halos, SEED, row, 0)


def test_bad_halo_mass_range_is_an_input_error():
    with pytest.raises(InputError, match="mock.halos.mass_min"):
        mock_settings({"halos": {"mass_min": 1e16, "mass_max": 1e15}})
