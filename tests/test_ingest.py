"""Gnomonic patches and the ingest step, on small releases written in the real format."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import astropy.units as u
import h5py
import healpy as hp
import numpy as np
import pytest
import xarray as xr
from fixtures.cosmogrid import (
    damage_dataset,
    parameter_table,
    release_maps,
    write_metainfo,
    write_release,
)
from fixtures.kill import KillPoint, assert_killed, killed_run, temporaries
from markupsafe import escape

from cosmo_sop import __version__, layout, storage
from cosmo_sop.cli import main
from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.figures.patches import example_rows, plot_patches
from cosmo_sop.ingest import (
    aligned_chunk,
    check_patches_disjoint,
    extract_patches,
    ingest,
    patch_centres,
    patch_diagonal,
    patch_pixel_indices,
    split_cosmologies,
    split_counts,
)
from cosmo_sop.ingest.run import run as run_ingest
from cosmo_sop.report import write_report
from cosmo_sop.sources import cosmogrid

NSIDE = 32
# Odd patch side: the central pixel sits exactly on the patch centre.
INGEST = {
    "bins": [1, 2, 3, 4],
    "patch_size": 9,
    "resolution_arcmin": 110.0,
    "centres_nside": 1,
    "split": {"train": 0.5, "val": 0.25, "test": 0.25},
    "chunk_samples": 10,
}
N_PATCH = 12


def z_map(nside: int) -> np.ndarray:
    """z = cos(colatitude) of every pixel centre."""
    return hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))[2]


# --- patches ----------------------------------------------------------------------------------


def test_patch_centre_samples_the_centre_pixel():
    lon, lat = patch_centres(2)
    assert lon.size == 48
    size, resolution = 15, 55.0
    indices = patch_pixel_indices(64, lon, lat, size, resolution)
    assert indices.shape == (48, size, size)
    patches = extract_patches(z_map(64)[None], indices)
    assert patches.shape == (48, 1, size, size)
    # The centre pixel is the HEALPix pixel containing the centre: z within one pixel of it.
    np.testing.assert_allclose(
        patches[:, 0, size // 2, size // 2], np.sin(np.radians(lat)), atol=hp.nside2resol(64)
    )
    # A coarse pixel centre is a vertex of the finer grid: any of the 4 pixels touching it.
    touching = hp.get_interp_weights(64, lon, lat, lonlat=True)[0]
    assert np.all(np.any(touching == indices[:, size // 2, size // 2], axis=0))


def test_even_patch_is_centred():
    lon, lat = patch_centres(1)
    patches = extract_patches(z_map(128)[None], patch_pixel_indices(128, lon, lat, 66, 13.7))
    centre = patches[:, 0, 32:34, 32:34].mean(axis=(1, 2))
    np.testing.assert_allclose(centre, np.sin(np.radians(lat)), atol=hp.nside2resol(128))


def test_patch_orientation_north_up_east_left():
    lon, lat = patch_centres(2)
    indices = patch_pixel_indices(64, lon, lat, 15, 55.0)
    north = extract_patches(z_map(64)[None], indices)[:, 0]
    assert np.all(np.diff(north.mean(axis=2), axis=1) > 0), "row index must grow northward"
    # Map value: component of each pixel's position along the local east of every centre.
    x, y, _ = hp.pix2vec(64, np.arange(hp.nside2npix(64)))
    for patch, centre_lon in enumerate(np.radians(lon)):
        east = -np.sin(centre_lon) * x + np.cos(centre_lon) * y
        values = extract_patches(east[None], indices[patch : patch + 1])[0, 0]
        assert np.all(np.diff(values.mean(axis=0)) < 0), "column index must grow westward"


def test_patch_resolution():
    lon, lat = np.array([30.0]), np.array([20.0])
    size, resolution = 21, 30.0
    indices = patch_pixel_indices(512, lon, lat, size, resolution)
    corner_lon, corner_lat = hp.pix2ang(512, indices[0, 0, 0], lonlat=True)
    separation = hp.rotator.angdist([lon[0], lat[0]], [corner_lon, corner_lat], lonlat=True)
    half_diagonal = (size - 1) / 2 * np.sqrt(2) * np.radians(resolution / 60)
    np.testing.assert_allclose(separation, np.arctan(half_diagonal), atol=hp.nside2resol(512))


def test_default_patches_do_not_share_pixels():
    lon, lat = patch_centres(2)
    check_patches_disjoint(2, 66, 13.7)
    indices = patch_pixel_indices(256, lon, lat, 66, 13.7)
    per_patch = np.concatenate([np.unique(patch) for patch in indices])
    assert np.unique(per_patch).size == per_patch.size
    assert patch_diagonal(66, 13.7) == pytest.approx(21.07, abs=0.01)


def test_overlapping_patches_are_rejected():
    with pytest.raises(InputError) as info:
        check_patches_disjoint(4, 66, 13.7)
    message = str(info.value)
    assert "'ingest.patch_size'" in message and "'ingest.centres_nside'" in message
    assert "would overlap" in message


def test_extract_patches_is_a_gather():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, hp.nside2npix(16))).astype(np.float32)
    indices = patch_pixel_indices(16, *patch_centres(1), 8, 200.0)
    patches = extract_patches(maps, indices)
    assert patches.dtype == np.float32 and patches.flags.c_contiguous
    np.testing.assert_array_equal(patches[7, 2], maps[2][indices[7]])


# --- split --------------------------------------------------------------------------------------


def test_split_counts():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert split_counts(100, fractions) == {"train": 80, "val": 10, "test": 10}
    assert split_counts(10, fractions) == {"train": 8, "val": 1, "test": 1}
    assert split_counts(3, fractions) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(7, {"train": 0.7, "val": 0.3, "test": 0.0}) == {
        "train": 5,
        "val": 2,
        "test": 0,
    }
    with pytest.warns(UserWarning, match="test stay empty"):
        assert split_counts(2, fractions) == {"train": 1, "val": 1, "test": 0}


def test_split_is_by_cosmology_and_reproducible():
    ids = [f"cosmo_{i:06d}" for i in range(20)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    split = split_cosmologies(ids, fractions, seed=7)
    assert sorted(split) == ids
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [16, 2, 2]
    assert split_cosmologies(ids[::-1] + ids[:3], fractions, seed=7) == split
    assert split_cosmologies(ids, fractions, seed=8) != split


def test_aligned_chunk_holds_whole_maps():
    assert aligned_chunk(256, 48) == 240
    assert aligned_chunk(40, 12) == 36
    assert aligned_chunk(12, 12) == 12
    assert aligned_chunk(13, 12) == 12
    assert aligned_chunk(10, 12) == 6
    assert aligned_chunk(5, 12) == 4
    assert aligned_chunk(1, 48) == 1


# --- ingest -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return write_release(root, n_cosmologies=4, n_perms=2, nside=NSIDE)


@pytest.fixture(scope="module")
def store(release, tmp_path_factory):
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2)
    output = tmp_path_factory.mktemp("out") / "patches.zarr"
    attrs = {"seed": 5, "ingest": INGEST}
    return ingest(output, maps, INGEST, seed=5, source="test", config_attrs=attrs, workers=2)


def test_ingest_writes_the_contract(store, release):
    ds = xr.open_zarr(store)
    n_sample = 4 * 2 * N_PATCH
    assert ds.kappa.dims == ("sample", "bin", "y", "x")
    assert ds.kappa.shape == (n_sample, 4, 9, 9) and ds.kappa.dtype == np.float32
    assert ds.kappa.encoding["chunks"] == (6, 4, 9, 9)  # chunk_samples 10 -> half a map
    dtypes = {
        "Om": np.float64,
        "s8": np.float64,
        "perm": np.int64,
        "patch_index": np.int64,
        "patch_lon": np.float64,
        "patch_lat": np.float64,
    }
    for name, dtype in dtypes.items():
        assert ds[name].dims == ("sample",) and ds[name].dtype == dtype, name
    for name in ("cosmology", "split"):
        assert ds[name].dims == ("sample",) and ds[name].dtype.kind == "U", name
    assert ds.bin.values.tolist() == [1, 2, 3, 4] and ds.bin.dtype == np.int64

    assert ds.attrs["nside"] == NSIDE
    assert ds.attrs["pixel_scale_arcmin"] == 110.0
    assert u.Quantity(ds.attrs["pixel_scale"]) == 110.0 * u.arcmin
    assert ds.attrs["source"] == "test"
    assert json.loads(ds.attrs["config"]) == {"seed": 5, "ingest": INGEST}
    assert ds.attrs["cosmo_sop_version"] == __version__

    # Labels follow the metainfo; every (cosmology, perm, patch) appears once.
    table = release.parameters["grid"]
    om = dict(zip(release.ids(), table["Om"], strict=True))
    assert all(ds.Om.values == [om[c] for c in ds.cosmology.values])
    keys = set(zip(ds.cosmology.values, ds.perm.values, ds.patch_index.values, strict=True))
    assert len(keys) == n_sample
    lon, lat = patch_centres(1)
    np.testing.assert_array_equal(ds.patch_lon.values, np.tile(lon, 8))
    np.testing.assert_array_equal(ds.patch_lat.values, np.tile(lat, 8))


def test_ingest_values_match_the_maps(store, release):
    ds = xr.open_zarr(store).load()
    lon, lat = patch_centres(1)
    indices = patch_pixel_indices(NSIDE, lon, lat, 9, 110.0)
    touching = hp.get_interp_weights(NSIDE, lon, lat, lonlat=True)[0]  # (4, n_patch)
    for cosmology in release.ids():
        for perm in range(2):
            kappa, _ = release_maps(release.seed, cosmology, perm, NSIDE, 4)
            rows = ((ds.cosmology == cosmology) & (ds.perm == perm)).values
            np.testing.assert_array_equal(ds.patch_index.values[rows], np.arange(N_PATCH))
            np.testing.assert_array_equal(ds.kappa.values[rows], extract_patches(kappa, indices))
            # Independent of the projection: the centre value is a map pixel at the centre.
            centre = ds.kappa.values[rows][:, :, 4, 4]  # (n_patch, n_bin)
            candidates = kappa[:, touching]  # (n_bin, 4, n_patch)
            assert np.all(np.any(candidates == centre.T[:, None, :], axis=1))


def test_split_has_no_cosmology_in_two_splits(store):
    ds = xr.open_zarr(store)
    pairs = {(c, s) for c, s in zip(ds.cosmology.values, ds.split.values, strict=True)}
    assert len(pairs) == len({c for c, _ in pairs}) == 4
    assert sorted(s for _, s in pairs) == ["test", "train", "train", "val"]


def test_ingest_is_deterministic(store, release, tmp_path):
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2)
    attrs = {"seed": 5, "ingest": INGEST}
    again = ingest(tmp_path / "again.zarr", maps, INGEST, seed=5, source="test", config_attrs=attrs)
    xr.testing.assert_identical(xr.open_zarr(store).load(), xr.open_zarr(again).load())


def test_ingest_config_with_intrinsic_alignment(release, tmp_path):
    config = validate_config(
        {
            "source": "cosmogrid",
            "cosmogrid": {
                "root": str(release.root),
                "cosmologies": ["cosmo_000002", "cosmo_000004"],
                "perms": [1],
                "ia_amplitude": 0.5,
            },
            "ingest": {**INGEST, "bins": [3], "split": {"train": 0.5, "val": 0.5, "test": 0.0}},
        }
    )
    store = run_ingest(config, root=release.root, output=tmp_path / "ia.zarr")
    ds = xr.open_zarr(store).load()
    assert ds.attrs["source"] == f"cosmogrid:{release.root.resolve()}"
    assert set(json.loads(ds.attrs["config"])) == {"seed", "source", "cosmogrid", "ingest"}
    assert sorted(set(ds.split.values)) == ["train", "val"]
    kappa, ia = release_maps(release.seed, "cosmo_000004", 1, NSIDE, 4)
    indices = patch_pixel_indices(NSIDE, *patch_centres(1), 9, 110.0)
    np.testing.assert_allclose(
        ds.kappa.values[ds.cosmology.values == "cosmo_000004"],
        extract_patches(kappa[[2]] + np.float32(0.5) * ia[[2]], indices),
        rtol=1e-6,
    )


def test_ingest_config_mock_source(release, tmp_path):
    config = validate_config({"source": "mock", "mock": {"n_perms": 1}, "ingest": INGEST})
    ds = xr.open_zarr(run_ingest(config, root=release.root, output=tmp_path / "m.zarr"))
    assert ds.sizes["sample"] == 4 * N_PATCH and ds.attrs["source"] == "mock"
    assert set(ds.perm.values.tolist()) == {0}


# --- bad input leaves nothing behind ------------------------------------------------------------


def _nan_in_last_file(maps):
    with h5py.File(maps[-1].path, "r+") as file:
        file["kg/stage3_lensing2"][100] = np.nan
    return maps[-1].path, "dataset 'kg/stage3_lensing2' has 1 NaN/inf pixels"


def _truncated_file(maps):
    data = maps[2].path.read_bytes()
    maps[2].path.write_bytes(data[: len(data) // 2])
    return maps[2].path, "not a readable HDF5 file"


def _missing_bin_in_later_file(maps):
    with h5py.File(maps[1].path, "r+") as file:
        del file["kg/stage3_lensing4"]
    return maps[1].path, "lacks dataset 'kg/stage3_lensing4'"


def _other_nside_in_later_file(maps):
    with h5py.File(maps[3].path, "r+") as file:
        for name in [f"{group}/stage3_lensing{b}" for group in ("kg", "ia") for b in range(1, 5)]:
            del file[name]
            file[name] = np.zeros(hp.nside2npix(8), dtype=np.float32)
    return maps[3].path, "maps have nside 8, expected 16"


def _missing_file(maps):
    maps[2].path.unlink()
    return maps[2].path, "file not found"  # listing says "map file not found", reading not


def _damaged_content(maps):
    # Bytes inside the file overwritten, its signature intact: the dataset's header is garbage.
    damage_dataset(maps[3].path, "kg/stage3_lensing2")
    return maps[3].path, "cannot read dataset 'kg/stage3_lensing2', the file is damaged ("


def _no_ia_group(maps):
    for record in maps:
        with h5py.File(record.path, "r+") as file:
            del file["ia"]
    return maps[0].path, "no 'ia' group"


@pytest.mark.parametrize(
    "damage",
    [
        _nan_in_last_file,
        _truncated_file,
        _missing_bin_in_later_file,
        _other_nside_in_later_file,
        _missing_file,
        _damaged_content,
        _no_ia_group,
    ],
)
def test_bad_map_file_leaves_no_store(tmp_path, damage):
    release = write_release(tmp_path / "release", n_cosmologies=3, n_perms=2, nside=16)
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2)
    path, problem = damage(maps)
    config = validate_config(
        {
            "source": "cosmogrid",
            "cosmogrid": {"root": str(release.root), "perms": 2, "ia_amplitude": 1.0},
            "ingest": {**INGEST, "resolution_arcmin": 220.0},
        }
    )
    output = tmp_path / "out" / "patches.zarr"
    with pytest.raises(InputError) as info:
        run_ingest(config, root=release.root, output=output, workers=2)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())  # no temp store left


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"centres_nside": 4, "patch_size": 66, "resolution_arcmin": 13.7}, "would overlap"),
        ({"bins": [2, 5]}, "lacks dataset 'kg/stage3_lensing5'"),
        ({"bins": [2, 2]}, "'ingest.bins'.*repeats"),
    ],
)
def test_bad_ingest_config_leaves_no_store(release, tmp_path, changes, problem):
    maps = cosmogrid.list_maps(release.root, "grid", "all", 1)
    output = tmp_path / "patches.zarr"
    with pytest.raises(InputError, match=problem):
        ingest(output, maps, {**INGEST, **changes}, seed=0, source="t", config_attrs={})
    assert list(tmp_path.iterdir()) == []


def test_patch_figure(store, tmp_path):
    ds = xr.open_zarr(store)
    rows = example_rows(ds, 3)
    assert sorted(ds.split.values[rows]) == ["test", "train", "val"]
    png = plot_patches(store, tmp_path / "fig" / "patches.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.with_suffix(".pdf").stat().st_size > 0


def _bad_release(tmp_path, on_bad_map="error", n_cosmologies=3, n_perms=2):
    """A fresh release (nside 16) and the validated config that ingests all of it."""
    release = write_release(
        tmp_path / "release", n_cosmologies=n_cosmologies, n_perms=n_perms, nside=16
    )
    config = validate_config(
        {
            "source": "cosmogrid",
            "cosmogrid": {"root": str(release.root), "perms": n_perms, "ia_amplitude": 1.0},
            "ingest": {**INGEST, "resolution_arcmin": 220.0, "on_bad_map": on_bad_map},
            # Networks that fit 9-pixel patches (the CLI checks them before any work).
            "backbone": {"widths": [4, 8], "kernel_size": 2, "hidden": [8]},
            "sop": {"patch_tokens": 3, "n_heads": 2, "d_model": 8},
        }
    )
    return release, config


def test_metainfo_with_a_repeated_cosmology_leaves_no_store(tmp_path):
    # cosmo_000003's row says cosmo_000002 (another Om): its maps would be ingested twice
    # under two labels and cosmo_000003 would vanish.
    release, config = _bad_release(tmp_path)
    ids = ["cosmo_000001", "cosmo_000002", "cosmo_000002"]
    table = parameter_table("grid", ids, [0.2, 0.3, 0.4], 0.8)
    metainfo = write_metainfo(release.root, {"grid": table}, {"grid": 2})
    output = tmp_path / "out" / "patches.zarr"
    with pytest.raises(InputError) as info:
        run_ingest(config, root=release.root, output=output)
    assert str(info.value) == (
        f"{metainfo}: table 'parameters/grid' lists cosmology id(s) cosmo_000002 more than "
        "once (one row per cosmology expected)"
    )
    assert not output.parent.exists()


def test_damaged_map_through_the_cli_is_one_line_and_no_store(tmp_path, capsys):
    release, config = _bad_release(tmp_path)
    path, problem = _damaged_content(cosmogrid.list_maps(release.root, "grid", "all", 2))
    output = tmp_path / "out" / "patches.zarr"
    argv = ["ingest", "--root", str(release.root), "--output", str(output)]
    assert main([*argv, "--config-json", json.dumps(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith(f"cosmo-sop ingest: error: {path}: {problem}")
    assert not output.exists() and temporaries(tmp_path / "out") == []


# --- ingest.on_bad_map: skip ----------------------------------------------------------------------

SKIPPABLE = [
    _nan_in_last_file,
    _truncated_file,
    _missing_bin_in_later_file,
    _other_nside_in_later_file,
    _missing_file,
    _damaged_content,
]


@pytest.mark.parametrize("damage", SKIPPABLE)
def test_skip_leaves_out_the_bad_map_and_records_it(tmp_path, damage):
    release, config = _bad_release(tmp_path, "skip")
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2, require_files=False)
    path, problem = damage(maps)
    output = tmp_path / "out" / "patches.zarr"
    with pytest.warns(UserWarning, match=re.escape(f"{path}: ")):
        run_ingest(config, root=release.root, output=output, workers=2)
    ds = xr.open_zarr(output).load()
    skipped = json.loads(ds.attrs.pop("skipped_maps"))
    assert [record["path"] for record in skipped] == [str(path)]
    assert problem in skipped[0]["problem"]
    # The other maps are stored exactly as an ingest of them alone stores them (each
    # cosmology keeps a permutation, so the split is the same too).
    good = [m for m in maps if m.path != path]
    settings = {**config["ingest"], "on_bad_map": "error"}
    expected = ingest(
        tmp_path / "expected.zarr",
        good,
        settings,
        seed=config["seed"],
        source=ds.attrs["source"],
        config_attrs=json.loads(ds.attrs["config"]),
        ia_amplitude=1.0,
    )
    with xr.open_zarr(expected) as reference:
        xr.testing.assert_identical(ds, reference.load())
        assert ds.kappa.encoding["chunks"] == reference.kappa.encoding["chunks"]
    assert "on_bad_map" not in json.loads(ds.attrs["config"])["ingest"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["patches.zarr"]


def test_skipping_a_whole_cosmology_moves_no_other_between_splits(tmp_path):
    release, config = _bad_release(tmp_path, "skip", n_cosmologies=6, n_perms=1)
    full = run_ingest(config, root=release.root, output=tmp_path / "full.zarr")
    with xr.open_zarr(full) as ds:
        before = dict(zip(ds.cosmology.values, ds.split.values, strict=True))
    (gone,) = cosmogrid.list_maps(release.root, "grid", ["cosmo_000004"], 1)
    gone.path.unlink()
    with pytest.warns(UserWarning, match="map file not found|file not found"):
        store = run_ingest(config, root=release.root, output=tmp_path / "skip.zarr")
    with xr.open_zarr(store) as ds:
        after = dict(zip(ds.cosmology.values, ds.split.values, strict=True))
        assert json.loads(ds.attrs["skipped_maps"]) == [
            {"path": str(gone.path), "problem": "file not found"}
        ]
    assert after == {c: s for c, s in before.items() if c != "cosmo_000004"}


def test_skip_with_every_map_bad_leaves_no_store(tmp_path):
    release, config = _bad_release(tmp_path, "skip")
    damaged = _no_ia_group(cosmogrid.list_maps(release.root, "grid", "all", 2))[0]
    output = tmp_path / "out" / "patches.zarr"
    with pytest.warns(UserWarning), pytest.raises(InputError) as info:
        run_ingest(config, root=release.root, output=output)
    assert str(info.value).startswith(
        "config key 'ingest.on_bad_map': is skip but none of the 6 map files can be read "
        f"(the first: {damaged}: "
    )
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


# --- temporaries of killed writers --------------------------------------------------------------


def test_stale_temporaries_of_dead_writers_are_removed(release, tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # reaped: its pid names no process now
    dead, live = finished.pid, os.getppid()
    output = tmp_path / "patches.zarr"

    def temporary(suffix: str):
        path = tmp_path / f".patches.zarr.tmp-{suffix}"
        (path / "kappa").mkdir(parents=True)
        (path / "kappa" / "0.0.0.0").write_bytes(b"half a chunk")
        return path

    stale = [temporary(f"{storage._HOST}-{dead}"), temporary(str(dead))]  # also without host
    kept = [temporary(f"{storage._HOST}-{live}"), temporary(f"elsewhere-{dead}")]
    maps = cosmogrid.list_maps(release.root, "grid", "all", 1)
    ingest(output, maps, INGEST, seed=0, source="t", config_attrs={})
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True, True]  # a live writer's; another host's


def test_sigkilled_ingest_then_rerun_leaves_no_temporaries(tmp_path):
    release, config = _bad_release(tmp_path)
    output = tmp_path / "out" / "patches.zarr"
    argv = ["ingest", "--root", str(release.root), "--output", str(output)]
    argv += ["--config-json", json.dumps(config)]
    point = KillPoint("open", "*/.patches.zarr.tmp-*/kappa/*", nth=2)  # chunks half written
    assert_killed(killed_run(argv, point, tmp_path / "killed"), point)
    assert not output.exists() and temporaries(tmp_path / "out") != []
    assert main(argv) == 0
    assert temporaries(tmp_path / "out") == []
    reference = tmp_path / "reference.zarr"
    assert main([*argv[:3], "--output", str(reference), *argv[5:]]) == 0
    with xr.open_zarr(output) as rerun, xr.open_zarr(reference) as expected:
        xr.testing.assert_identical(rerun.load(), expected.load())


def test_report_lists_the_skipped_maps(tmp_path):
    release, config = _bad_release(tmp_path, "skip")
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2)
    path, problem = _nan_in_last_file(maps)
    results = tmp_path / "results"
    with pytest.warns(UserWarning):
        run_ingest(config, root=release.root, output=layout.patches(results))
    page = write_report(results, ["noiseless"], tmp_path / "report.html").read_text()
    section = page[page.index("<h3>Skipped maps</h3>") :]
    assert "1 map file(s) could not be read and were left out" in section
    assert f"<td>{escape(str(path))}</td><td>{escape(problem)}</td>" in section


def test_report_without_skipping_has_no_skipped_maps_section(store, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(store, layout.patches(results))
    page = write_report(results, ["noiseless"], tmp_path / "report.html").read_text()
    assert "Skipped maps" not in page
