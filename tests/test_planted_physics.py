"""The planted-signal mock (mock.planted): each parameter moves only the structure that carries
it, the background depends on neither, the no-signal control moves only its smooth fields, the
planted keys are in every map's provenance, and bad keys are one-line InputErrors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pytest
import yaml

from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.sources import cosmogrid
from cosmo_sop.sources.mock import (
    PROVENANCE_ATTR,
    PlantedMock,
    generate_maps,
    map_provenance,
    map_rng,
    metainfo_tables,
    mock_settings,
    regenerate_map,
    simulate_mock,
)
from cosmo_sop.sources.mock.planted import parameter_factor, pixel_arcmin

ROOT = Path(__file__).resolve().parents[1]
SEED = 7
NSIDE = 32  # 110 arcmin pixels: the widths below span one to a few of them
#: Widths of 2.2 and 1.5 pixels, arcmin: at 1.5 pixels the band limit's ringing is 3e-6 of the
#: peak (1e-3 at the smallest width allowed, one pixel).
VOID_SIGMA, CLUSTER_SIGMA = 240.0, 165.0
#: A tiny planted mock: about 40 voids and 40 clusters on the sphere, two bins.
PLANTED = {
    "enabled": True,
    "voids": {"density": 0.001, "sigma_arcmin": VOID_SIGMA},
    "clusters": {"density": 0.001, "sigma_arcmin": CLUSTER_SIGMA},
    "smooth": {"sigma_arcmin": 600.0},
}
CONFIG = {"n_cosmologies": 2, "n_perms": 1, "nside": NSIDE, "redshift": {"n_bins": 2}}
#: Relative size below which a difference counts as zero (float32 maps, band-limit ringing).
TOLERANCE = 1e-3


def _config(**planted) -> dict:
    return {**CONFIG, "planted": {**PLANTED, **planted}}


def _mock(**planted) -> PlantedMock:
    return PlantedMock.from_config(mock_settings(_config(**planted)))


def _row(om: float = 0.3, s8: float = 0.9, id_param: int = 3) -> dict:
    return {"id_param": id_param, "Om": om, "s8": s8}


def _far_from(pixels: np.ndarray, sigma_arcmin: float, n_sigma: float = 5.0) -> np.ndarray:
    """Pixels farther than ``n_sigma`` widths from every one of ``pixels``."""
    centres = np.stack(hp.pix2vec(NSIDE, pixels), axis=-1)
    every = np.stack(hp.pix2vec(NSIDE, np.arange(hp.nside2npix(NSIDE))), axis=-1)
    closest = np.arccos(np.clip((every @ centres.T).max(axis=1), -1.0, 1.0))
    return closest > n_sigma * np.radians(sigma_arcmin / 60.0)


def _moves_only(delta: np.ndarray, pixels: np.ndarray, sigma_arcmin: float, sign: int) -> None:
    """``delta`` (n_bins, npix) goes one way (``sign``), at the structures and nowhere else."""
    scale = np.abs(delta).max(axis=1, keepdims=True)  # per bin: the amplitudes grow with it
    assert np.all(scale > 0)
    assert np.all(sign * delta >= -TOLERANCE * scale)  # one direction only
    assert np.all(sign * delta[:, pixels] > 0.3 * scale)  # at every structure's centre
    far = np.abs(delta[:, _far_from(pixels, sigma_arcmin)])
    assert far.shape[1] > 500
    assert np.all(far < TOLERANCE * scale)


# --- each parameter moves only its structure ----------------------------------------------------


def test_omega_m_deepens_only_the_voids():
    mock = _mock()
    parts = mock.components(SEED, 3, 0)
    low, high = mock.maps(_row(om=0.2), SEED, 0), mock.maps(_row(om=0.45), SEED, 0)
    delta = high.astype(np.float64) - low
    _moves_only(delta, parts.void_pixels, VOID_SIGMA, sign=-1)
    # exactly the void template, scaled by the change of the depth factor 0.5 + u
    factor = parameter_factor(0.45, (0.1, 0.5)) - parameter_factor(0.2, (0.1, 0.5))
    expected = -3.0 * factor * mock.sigma[:, None] * parts.voids
    np.testing.assert_allclose(delta, expected, atol=1e-6 * np.abs(low).max())


def test_sigma_8_raises_only_the_clusters():
    mock = _mock()
    parts = mock.components(SEED, 3, 0)
    delta = mock.maps(_row(s8=1.3), SEED, 0).astype(np.float64) - mock.maps(_row(s8=0.5), SEED, 0)
    _moves_only(delta, parts.cluster_pixels, CLUSTER_SIGMA, sign=1)
    factor = parameter_factor(1.3, (0.4, 1.4)) - parameter_factor(0.5, (0.4, 1.4))
    expected = 8.0 * factor * mock.sigma[:, None] * parts.clusters
    np.testing.assert_allclose(delta, expected, atol=1e-6 * np.abs(expected).max())


def test_the_map_is_background_plus_structures_scaled_by_the_background_sigma():
    mock = _mock()
    parts = mock.components(SEED, 3, 0)
    row = _row(om=0.1, s8=1.4)  # u = 0 and 1: depth 1.5 sigma, cluster peaks 12 sigma
    planted = 12.0 * parts.clusters - 1.5 * parts.voids
    expected = parts.background + mock.sigma[:, None] * planted
    np.testing.assert_allclose(mock.maps(row, SEED, 0), expected, rtol=1e-5, atol=1e-7)
    # an isolated structure peaks at 1 in its template (overlaps only add)
    for template, pixels in (
        (parts.voids, parts.void_pixels),
        (parts.clusters, parts.cluster_pixels),
    ):
        assert len(pixels) > 20
        assert np.all(template[pixels] > 0.99)
        assert np.median(template[pixels]) == pytest.approx(1.0, abs=0.05)


def test_background_depends_on_neither_parameter():
    """Without structures a map is the background alone: the same for any (Om, s8), its pixel
    sigma the analytic one of the fixed background cosmology, for every cosmology and perm."""
    mock = _mock(
        voids={**PLANTED["voids"], "depth": 0.0}, clusters={**PLANTED["clusters"], "amplitude": 0.0}
    )
    corners = [(0.1, 0.4), (0.1, 1.4), (0.5, 0.4), (0.5, 1.4)]
    maps = [mock.maps(_row(om, s8), SEED, 0) for om, s8 in corners]
    for other in maps[1:]:
        np.testing.assert_array_equal(other, maps[0])
    np.testing.assert_array_equal(maps[0], mock.components(SEED, 3, 0).background)
    sigmas = np.array(
        [mock.maps(_row(id_param=i), SEED, p).std(axis=1) for i in range(3) for p in range(2)]
    )
    np.testing.assert_allclose(sigmas, np.broadcast_to(mock.sigma, sigmas.shape), rtol=0.1)
    # a realisation of its own per (cosmology, perm), and of its own stream: not the plain
    # mock's field of the same seed
    plain = generate_maps(mock.gaussian, mock.shifts, NSIDE, map_rng(SEED, 3, 0))
    assert np.abs(np.corrcoef(plain[0], maps[0][0])[0, 1]) < 0.1
    assert not np.array_equal(
        mock.maps(_row(id_param=0), SEED, 0), mock.maps(_row(id_param=0), SEED, 1)
    )
    assert not np.array_equal(
        mock.maps(_row(id_param=0), SEED, 0), mock.maps(_row(id_param=1), SEED, 0)
    )


def test_swapped_carriers_move_the_other_structures():
    mock = _mock(carriers={"voids": "s8", "clusters": "Om"})
    parts = mock.components(SEED, 3, 0)
    om = mock.maps(_row(om=0.45), SEED, 0).astype(np.float64) - mock.maps(_row(om=0.2), SEED, 0)
    _moves_only(om, parts.cluster_pixels, CLUSTER_SIGMA, sign=1)
    s8 = mock.maps(_row(s8=1.3), SEED, 0).astype(np.float64) - mock.maps(_row(s8=0.5), SEED, 0)
    _moves_only(s8, parts.void_pixels, VOID_SIGMA, sign=-1)


def test_the_defaults_give_the_demo_patches_their_voids_and_clusters():
    """At the demo's nside 256 and 15 x 15 deg patches: about 10 voids a few pixels wide, a few
    background sigma deep, and 20 compact clusters well above 3 sigma."""
    settings = mock_settings({"planted": {"enabled": True}})
    planted, pixel = settings["planted"], pixel_arcmin(256)  # 13.7 arcmin
    patch_deg2 = (66 * 13.7 / 60) ** 2
    assert 5 <= planted["voids"]["density"] * patch_deg2 <= 15
    assert 10 <= planted["clusters"]["density"] * patch_deg2 <= 30
    assert 2 <= planted["voids"]["sigma_arcmin"] / pixel <= 5
    assert 1 <= planted["clusters"]["sigma_arcmin"] / pixel <= 2
    depth = planted["voids"]["depth"]  # times 0.5 + u: from 0.5 to 1.5 times over the prior
    assert 0.5 * depth >= 1 and 1.5 * depth <= 5
    assert 0.5 * planted["clusters"]["amplitude"] > 3


# --- the no-signal control ----------------------------------------------------------------------


def test_smooth_signal_keeps_the_structures_and_moves_only_the_smooth_fields():
    mock = _mock(signal="smooth")
    parts = mock.components(SEED, 3, 0)
    assert parts.smooth is not None and parts.smooth.shape == (2, hp.nside2npix(NSIDE))
    # unit variance, no mean, the two fields independent
    np.testing.assert_allclose(parts.smooth.std(axis=1), 1.0, rtol=0.15)
    assert np.all(np.abs(parts.smooth.mean(axis=1)) < 1e-3)  # no monopole, to pixel quadrature
    assert abs(np.corrcoef(parts.smooth)[0, 1]) < 0.3
    corners = [(0.1, 0.4), (0.5, 1.4), (0.2, 1.1)]
    amplitudes = [mock.amplitudes(_row(om, s8)) for om, s8 in corners]
    assert all(a["voids"] == 3.0 and a["clusters"] == 8.0 for a in amplitudes)  # as at u = 0.5
    base = mock.maps(_row(om=0.2, s8=0.9), SEED, 0).astype(np.float64)
    om = mock.maps(_row(om=0.45, s8=0.9), SEED, 0) - base
    s8 = mock.maps(_row(om=0.2, s8=1.3), SEED, 0) - base
    # Om only in the lower bin, s8 only in the upper bin, each by its own smooth field
    assert np.abs(om[1]).max() == 0 and np.abs(s8[0]).max() == 0
    # the smooth fields' amplitude is 2 background sigma times 0.5 + u
    om_step = 2.0 * (parameter_factor(0.45, (0.1, 0.5)) - parameter_factor(0.2, (0.1, 0.5)))
    s8_step = 2.0 * (parameter_factor(1.3, (0.4, 1.4)) - parameter_factor(0.9, (0.4, 1.4)))
    atol = 1e-6 * np.abs(base).max()
    np.testing.assert_allclose(om[0], mock.sigma[0] * om_step * parts.smooth[0], atol=atol)
    np.testing.assert_allclose(s8[1], mock.sigma[1] * s8_step * parts.smooth[1], atol=atol)


def test_smooth_signal_structures_are_those_of_the_middle_of_the_prior():
    """The control's map less its smooth fields is the structures mock at u = 0.5: the same
    background, voids and clusters, at the same depths."""
    smooth, structures = _mock(signal="smooth"), _mock()
    row = _row(om=0.12, s8=1.35)
    parts = smooth.components(SEED, 3, 0)
    amplitude = smooth.amplitudes(row)
    fields = np.stack([amplitude["Om"] * parts.smooth[0], amplitude["s8"] * parts.smooth[1]])
    without = smooth.maps(row, SEED, 0) - smooth.sigma[:, None] * fields
    middle = structures.maps(_row(om=0.3, s8=0.9), SEED, 0)
    np.testing.assert_allclose(without, middle, atol=1e-6 * np.abs(middle).max())


# --- through simulate_mock: provenance and regeneration -----------------------------------------


def _provenance(root: Path) -> list[dict]:
    with h5py.File(root / cosmogrid.METAINFO_NAME, "r") as f:
        sims = f["simulations/grid"][:]
    records = []
    for sim in sims:
        path = cosmogrid.map_path(root, sim["path_par"], int(sim["seed_index"]), False)
        with h5py.File(path, "r") as f:
            records.append((path, json.loads(f.attrs[PROVENANCE_ATTR])))
    return records


def test_written_maps_record_the_planted_keys_and_a_changed_key_regenerates_them(tmp_path):
    root = tmp_path / "planted"
    config = _config()
    simulate_mock(root, config, SEED)
    written = _provenance(root)
    assert len(written) == 2
    for id_param, (path, record) in enumerate(written):
        planted = record["planted"]
        assert "halos" not in record and "smooth" not in planted  # structures: smooth unread
        assert planted["signal"] == "structures" and planted["carriers"] == {
            "voids": "Om",
            "clusters": "s8",
        }
        assert planted["voids"] == {"density": 0.001, "sigma_arcmin": 240.0, "depth": 3.0}
        assert planted["prior"] == {"Om": [0.1, 0.5], "s8": [0.4, 1.4]}
        maps = cosmogrid.read_kappa(path, [1, 2])
        np.testing.assert_array_equal(maps, regenerate_map(config, SEED, id_param, 0))
        row = metainfo_tables(mock_settings(config), SEED)[0][id_param]
        cosmology = {name: row[name].item() for name in row.dtype.names}
        np.testing.assert_array_equal(maps, _mock().maps(cosmology, SEED, 0))
    mtimes = {path: path.stat().st_mtime_ns for path, _ in written}

    # a key the structures signal does not read keeps the maps; a planted key it reads does not
    simulate_mock(root, _config(smooth={"sigma_arcmin": 900.0}), SEED)
    assert {path: path.stat().st_mtime_ns for path, _ in _provenance(root)} == mtimes
    deeper = _config(voids={**PLANTED["voids"], "depth": 4.0})
    simulate_mock(root, deeper, SEED)
    rewritten = _provenance(root)
    assert all(path.stat().st_mtime_ns != mtimes[path] for path, _ in rewritten)
    assert all(record["planted"]["voids"]["depth"] == 4.0 for _, record in rewritten)
    np.testing.assert_array_equal(
        cosmogrid.read_kappa(rewritten[0][0], [1, 2]), regenerate_map(deeper, SEED, 0, 0)
    )


def test_planted_keys_only_enter_the_provenance_when_enabled():
    plain = mock_settings(CONFIG)
    row = {"id_param": 0, "Om": 0.3, "s8": 0.8, "H0": 67.0, "Ob": 0.05, "ns": 0.96}
    row |= {"w0": -1.0, "wa": 0.0, "m_nu": 0.0}
    assert "planted" not in json.loads(map_provenance(plain, SEED, row, 0))
    smooth = json.loads(map_provenance(mock_settings(_config(signal="smooth")), SEED, row, 0))
    assert smooth["planted"]["smooth"] == {"sigma_arcmin": 600.0, "amplitude": 2.0}
    assert "carriers" not in smooth["planted"]  # the smooth signal reads no carriers
    swapped = mock_settings(_config(carriers={"voids": "s8", "clusters": "Om"}))
    assert map_provenance(swapped, SEED, row, 0) != map_provenance(
        mock_settings(_config()), SEED, row, 0
    )
    wider = mock_settings({**_config(), "prior": {"Om": [0.1, 0.6]}})
    assert map_provenance(wider, SEED, row, 0) != map_provenance(
        mock_settings(_config()), SEED, row, 0
    )


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("planted", "key"),
    [
        ({"carriers": {"voids": "s8", "clusters": "s8"}}, "mock.planted.carriers"),
        ({"clusters": {"sigma_arcmin": 60.0}}, "mock.planted.clusters.sigma_arcmin"),
        (
            {"signal": "smooth", "smooth": {"sigma_arcmin": 30.0}},
            "mock.planted.smooth.sigma_arcmin",
        ),
        ({"background": {"Om": 0.01}}, "mock.planted.background.Om"),
        ({"signal": "none"}, "mock.planted.signal"),
        ({"carriers": {"voids": "h"}}, "mock.planted.carriers.voids"),
        ({"voids": {"depth": -1.0}}, "mock.planted.voids.depth"),
        ({"halo": {}}, "'mock.planted' fails the schema: Additional properties"),
    ],
)
def test_bad_planted_keys_are_one_line_input_errors(planted, key):
    with pytest.raises(InputError, match=re.escape(key)) as error:
        mock_settings(_config(**planted))
    assert "\n" not in str(error.value)


def test_smooth_signal_needs_two_bins_and_a_disabled_section_is_not_checked():
    with pytest.raises(InputError, match=r"mock\.planted\.signal"):
        mock_settings({**_config(signal="smooth"), "redshift": {"n_bins": 1}})
    # widths below the pixel are fine while the planted mock is off
    mock_settings({**CONFIG, "planted": {"clusters": {"sigma_arcmin": 1.0}}})


def test_planted_configs_are_the_demo_networks_on_planted_maps_in_folders_of_their_own():
    """config/planted.yaml over config/config.yaml, and config/planted_null.yaml over both, as
    Snakemake merges --configfile files: the demo's networks on planted maps, noiseless only,
    no tasks, a test split large enough for verdicts, and results and mock folders apart from
    the demo's and from each other's; the null control differs from the control only in its
    folders and its signal."""
    from snakemake.utils import update_config

    def merged_with(*files: str) -> dict:
        config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        for file in files:
            update_config(config, yaml.safe_load((ROOT / "config" / file).read_text()))
        return validate_config(config, files[-1] if files else "demo")

    demo = merged_with()
    planted = merged_with("planted.yaml")
    null = merged_with("planted.yaml", "planted_null.yaml")
    assert planted["mock"]["planted"]["enabled"] and null["mock"]["planted"]["enabled"]
    assert planted["mock"]["planted"]["signal"] == "structures"
    assert null["mock"]["planted"]["signal"] == "smooth"
    for config in (planted, null):
        assert config["tasks"] == [] and [lv["name"] for lv in config["noise"]] == ["noiseless"]
        for section in ("training", "backbone", "evaluation", "structures"):
            assert config[section] == demo[section]
        mock_settings(config["mock"])  # the physical checks pass at the demo's nside
    assert len({demo["results"], planted["results"], null["results"]}) == 3
    assert len({demo["mock"]["root"], planted["mock"]["root"], null["mock"]["root"]}) == 3
    different = {
        ("results",),
        ("mock", "root"),
        ("mock", "planted", "signal"),
    }
    for path in different:
        for config in (planted, null):
            for key in path[:-1]:
                config = config[key]
            config.pop(path[-1])
    assert planted == null
    # 38 test cosmologies: a verdict needs structures.min_blocks of them
    n_test = round(planted["mock"]["n_cosmologies"] * planted["ingest"]["split"]["test"])
    assert n_test >= 3 * planted["structures"]["min_blocks"]
