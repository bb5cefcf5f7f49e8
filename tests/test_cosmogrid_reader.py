"""The CosmoGridV1 reader, on small releases written in the real on-disk format."""

from __future__ import annotations

import h5py
import healpy as hp
import numpy as np
import pytest
from fixtures.cosmogrid import (
    FIDUCIAL_ID,
    damage_dataset,
    parameter_table,
    release_maps,
    write_map_file,
    write_metainfo,
    write_release,
)

from cosmo_sop.errors import InputError
from cosmo_sop.sources import cosmogrid

NSIDE = 16


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return write_release(
        root, n_cosmologies=4, n_perms=3, nside=NSIDE, fiducial_perms=2, baryonified=(False, True)
    )


@pytest.fixture
def small_release(tmp_path):
    """A fresh release a test may damage."""
    return write_release(tmp_path / "release", n_cosmologies=3, n_perms=2, nside=NSIDE)


def test_metainfo_round_trip(release):
    parameters = cosmogrid.read_parameters(release.root, "grid")
    np.testing.assert_array_equal(parameters, release.parameters["grid"])
    simulations = cosmogrid.read_simulations(release.root, "grid")
    assert len(simulations) == 4 * 3


def test_list_maps_all(release):
    maps = cosmogrid.list_maps(release.root, "grid", "all", perms=3)
    table = release.parameters["grid"]
    assert [(m.cosmology, m.perm) for m in maps] == [
        (c, p) for c in release.ids() for p in range(3)
    ]
    assert all(type(m.cosmology) is str for m in maps)
    np.testing.assert_array_equal([m.Om for m in maps], np.repeat(table["Om"], 3))
    np.testing.assert_array_equal([m.s8 for m in maps], np.repeat(table["s8"], 3))
    first = maps[4]
    assert first.path == (
        release.root
        / "stage3_forecast/grid/cosmo_000002/perm_0001"
        / "projected_probes_maps_nobaryons512.h5"
    )


def test_select_first_n_and_list(release):
    maps = cosmogrid.list_maps(release.root, "grid", 2, perms=1)
    assert [m.cosmology for m in maps] == ["cosmo_000001", "cosmo_000002"]
    maps = cosmogrid.list_maps(release.root, "grid", ["cosmo_000004", "cosmo_000002"], [2, 0])
    assert [(m.cosmology, m.perm) for m in maps] == [
        ("cosmo_000004", 2),
        ("cosmo_000004", 0),
        ("cosmo_000002", 2),
        ("cosmo_000002", 0),
    ]
    om = {c: om for c, om in zip(release.ids(), release.parameters["grid"]["Om"], strict=True)}
    assert maps[0].Om == om["cosmo_000004"]


def test_fiducial_layout(release):
    maps = cosmogrid.list_maps(release.root, "fiducial", "all", perms=2)
    assert [m.cosmology for m in maps] == [FIDUCIAL_ID, FIDUCIAL_ID]
    assert maps[1].path.parent == release.root / "stage3_forecast/fiducial/cosmo_fiducial/perm_0001"
    kappa, _ = release_maps(release.seed, FIDUCIAL_ID, 1, NSIDE, 4)
    np.testing.assert_array_equal(cosmogrid.read_kappa(maps[1].path, [1, 2, 3, 4]), kappa)


def test_read_kappa_round_trip_and_bin_order(release):
    (record,) = cosmogrid.list_maps(release.root, "grid", ["cosmo_000003"], [1])
    kappa, _ = release_maps(release.seed, "cosmo_000003", 1, NSIDE, 4)
    out = cosmogrid.read_kappa(record.path, [4, 1, 2])
    assert out.dtype == np.float32 and out.shape == (3, hp.nside2npix(NSIDE))
    np.testing.assert_array_equal(out, kappa[[3, 0, 1]])


def test_read_kappa_adds_intrinsic_alignment(release):
    (record,) = cosmogrid.list_maps(release.root, "grid", ["cosmo_000002"], [0])
    kappa, ia = release_maps(release.seed, "cosmo_000002", 0, NSIDE, 4)
    out = cosmogrid.read_kappa(record.path, [2, 3], ia_amplitude=-1.5)
    np.testing.assert_allclose(out, kappa[[1, 2]] - 1.5 * ia[[1, 2]], rtol=1e-6, atol=1e-9)
    assert not np.allclose(out, kappa[[1, 2]])


def test_baryonified_file(release):
    (record,) = cosmogrid.list_maps(release.root, "grid", ["cosmo_000001"], [2], baryonified=True)
    assert record.path.name == "projected_probes_maps_baryonified512.h5"
    kappa_bary, _ = release_maps(release.seed, "cosmo_000001", 2, NSIDE, 4, baryonified=True)
    kappa_dmo, _ = release_maps(release.seed, "cosmo_000001", 2, NSIDE, 4, baryonified=False)
    out = cosmogrid.read_kappa(record.path, [1])
    np.testing.assert_array_equal(out[0], kappa_bary[0])
    assert not np.array_equal(out[0], kappa_dmo[0])


def test_float64_maps_are_read_as_float32(tmp_path):
    values = np.linspace(-0.05, 0.05, hp.nside2npix(8))[None]
    path = write_map_file(tmp_path / "maps.h5", values, dtype=np.float64)
    out = cosmogrid.read_kappa(path, [1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))
    assert cosmogrid.map_nside(path, [1]) == 8


# --- bad input: one-line InputError naming the file and the problem ---------------------------


def test_missing_metainfo(tmp_path):
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(tmp_path, "grid")
    assert str(tmp_path / cosmogrid.METAINFO_NAME) in str(info.value)
    assert "metainfo file not found" in str(info.value)


def test_metainfo_not_hdf5(tmp_path):
    (tmp_path / cosmogrid.METAINFO_NAME).write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        cosmogrid.read_parameters(tmp_path, "grid")


def test_metainfo_lacks_table(release):
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(release.root, "benchmark")
    message = str(info.value)
    assert cosmogrid.METAINFO_NAME in message
    assert "lacks the table 'parameters/benchmark'" in message


def test_metainfo_lacks_simulations_table(tmp_path):
    table = parameter_table("grid", ["cosmo_000001"], 0.3, 0.8)
    write_metainfo(tmp_path, {"grid": table}, {"grid": 1})
    with h5py.File(tmp_path / cosmogrid.METAINFO_NAME, "a") as file:
        del file["simulations/grid"]
    with pytest.raises(InputError, match="lacks the table 'simulations/grid'"):
        cosmogrid.list_maps(tmp_path, "grid")


def test_unknown_simulation_set(release):
    with pytest.raises(InputError, match="cosmogrid.simulation_set"):
        cosmogrid.read_parameters(release.root, "grids")


def test_unknown_cosmology_ids_are_listed(release):
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(release.root, "grid", ["cosmo_000001", "cosmo_000099", "cosmo_x"], 1)
    message = str(info.value)
    assert cosmogrid.METAINFO_NAME in message and "parameters/grid" in message
    assert "2 unknown id(s): cosmo_000099, cosmo_x" in message
    assert "cosmo_000001," not in message


def test_repeated_cosmology_id(release):
    with pytest.raises(InputError, match="cosmo_000002 more than once"):
        cosmogrid.list_maps(release.root, "grid", ["cosmo_000002", "cosmo_000002"], 1)


def test_metainfo_with_a_repeated_cosmology_id_is_refused(tmp_path):
    # Two rows for cosmo_000002 (with different Om) would ingest its maps twice under two
    # labels while the split counted it once.
    ids = ["cosmo_000001", "cosmo_000002", "cosmo_000003", "cosmo_000002"]
    table = parameter_table("grid", ids, [0.2, 0.3, 0.4, 0.35], 0.8)
    path = write_metainfo(tmp_path, {"grid": table}, {"grid": 1})
    for read in (cosmogrid.read_parameters, cosmogrid.list_maps):
        with pytest.raises(InputError) as info:
            read(tmp_path, "grid")
        assert str(info.value) == (
            f"{path}: table 'parameters/grid' lists cosmology id(s) cosmo_000002 more than "
            "once (one row per cosmology expected)"
        )


def test_too_many_cosmologies(release):
    with pytest.raises(InputError, match="first 5 cosmologies but the table has 4"):
        cosmogrid.list_maps(release.root, "grid", 5, 1)


@pytest.mark.parametrize("perms", [4, [0, 3]])
def test_perm_that_does_not_exist(release, perms):
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(release.root, "grid", "all", perms)
    message = str(info.value)
    assert "simulations/grid" in message and "permutation 3" in message
    assert "4 cosmologies have fewer permutations (cosmo_000001 has 3" in message


def test_bad_perm_list(release):
    with pytest.raises(InputError, match="cosmogrid.perms"):
        cosmogrid.list_maps(release.root, "grid", "all", [1, 1])


def test_missing_map_file_is_found_before_reading(small_release):
    maps = cosmogrid.list_maps(small_release.root, "grid", "all", 2)
    maps[3].path.unlink()
    maps[5].path.unlink()
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(small_release.root, "grid", "all", 2)
    message = str(info.value)
    assert message.startswith(f"{maps[3].path}: map file not found")
    assert "1 more of the 6 files" in message


def test_missing_dataset_names_key_and_file(tmp_path):
    kappa = np.zeros((2, hp.nside2npix(8)), dtype=np.float32)
    path = write_map_file(tmp_path / "maps.h5", kappa)
    with pytest.raises(InputError) as info:
        cosmogrid.read_kappa(path, [1, 3])
    message = str(info.value)
    assert message.startswith(str(path))
    assert "lacks dataset 'kg/stage3_lensing3'" in message
    assert "stage3_lensing1, stage3_lensing2" in message


def test_map_file_not_hdf5(tmp_path):
    path = tmp_path / "maps.h5"
    path.write_bytes(b"\x89HDF\r\n" + bytes(100))
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        cosmogrid.read_kappa(path, [1])


@pytest.mark.parametrize("npix", [1000, 12 * 16 * 16 + 1])
def test_length_not_healpix(tmp_path, npix):
    path = write_map_file(tmp_path / "maps.h5", np.zeros((1, npix)))
    with pytest.raises(InputError) as info:
        cosmogrid.read_kappa(path, [1])
    assert str(path) in str(info.value)
    assert f"'kg/stage3_lensing1' has {npix} pixels, which is not 12 * nside^2" in str(info.value)


def test_bins_of_different_lengths(tmp_path):
    path = tmp_path / "maps.h5"
    with h5py.File(path, "w") as file:
        file["kg/stage3_lensing1"] = np.zeros(hp.nside2npix(8), dtype=np.float32)
        file["kg/stage3_lensing2"] = np.zeros(hp.nside2npix(16), dtype=np.float32)
    with pytest.raises(InputError, match="'kg/stage3_lensing2' has 3072 pixels but"):
        cosmogrid.read_kappa(path, [1, 2])


def test_two_dimensional_dataset(tmp_path):
    path = tmp_path / "maps.h5"
    with h5py.File(path, "w") as file:
        file["kg/stage3_lensing1"] = np.zeros((12, 64), dtype=np.float32)
    with pytest.raises(InputError, match=r"shape \(12, 64\).*expected a 1-D floating-point"):
        cosmogrid.read_kappa(path, [1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("group", ["kg", "ia"])
def test_non_finite_pixels(tmp_path, bad, group):
    kappa = np.zeros((2, hp.nside2npix(8)), dtype=np.float32)
    ia = np.zeros_like(kappa)
    (kappa if group == "kg" else ia)[1, [5, 17]] = bad
    path = write_map_file(tmp_path / "maps.h5", kappa, ia)
    with pytest.raises(InputError) as info:
        cosmogrid.read_kappa(path, [1, 2], ia_amplitude=1.0)
    assert str(info.value) == f"{path}: dataset '{group}/stage3_lensing2' has 2 NaN/inf pixels"


def test_ia_amplitude_without_ia_group(tmp_path):
    path = write_map_file(tmp_path / "maps.h5", np.zeros((1, hp.nside2npix(8))))
    assert cosmogrid.read_kappa(path, [1]).shape == (1, hp.nside2npix(8))
    for read in (cosmogrid.read_kappa, cosmogrid.map_nside):
        with pytest.raises(InputError) as info:
            read(path, [1], 0.5)
        assert str(info.value).startswith(str(path))
        assert "ia_amplitude is set but the file has no 'ia' group" in str(info.value)


def test_nside_differs_from_other_files(release):
    (record,) = cosmogrid.list_maps(release.root, "grid", 1, 1)
    with pytest.raises(InputError, match=f"maps have nside {NSIDE}, expected 32"):
        cosmogrid.read_kappa(record.path, [1], nside=32)


def test_errors_are_one_line(release, tmp_path):
    with pytest.raises(InputError) as info:
        cosmogrid.list_maps(release.root, "grid", ["nope"], 1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("part", "compression"), [("header", None), ("chunk", "gzip")])
def test_damaged_map_content_names_file_and_dataset(tmp_path, part, compression):
    # The signature is intact, so the file opens; the damage shows only when the dataset is
    # opened (object header) or its values are read (compressed chunk).
    kappa = np.ones((2, hp.nside2npix(16)), dtype=np.float32)
    path = write_map_file(tmp_path / "maps.h5", kappa, kappa, compression=compression)
    damage_dataset(path, "kg/stage3_lensing2", part)
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    readers = [cosmogrid.read_kappa] + ([cosmogrid.map_nside] if part == "header" else [])
    for read in readers:
        with pytest.raises(InputError) as info:
            read(path, [1, 2], 1.0)
        message = str(info.value)
        assert message.startswith(
            f"{path}: cannot read dataset 'kg/stage3_lensing2', the file is damaged ("
        )
        assert "\n" not in message
