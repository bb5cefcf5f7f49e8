"""Shape noise: amplitude, per-bin densities, smoothing, determinism, copies and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures.stores import lognormal_kappa, write_patch_store
from scipy import ndimage

from cosmo_sop.errors import InputError
from cosmo_sop.noise import (
    add_noise,
    fwhm_to_sigma_pixels,
    galaxy_density_per_bin,
    pixel_noise_sigma,
)

PIXEL_ARCMIN = 5.0


def read_kappa(path) -> np.ndarray:
    return xr.open_zarr(path)["kappa"].values


@pytest.fixture(scope="module")
def signal_stores(tmp_path_factory):
    """The same lognormal patches stored with two different sample chunkings."""
    root = tmp_path_factory.mktemp("noise")
    kappa = lognormal_kappa(11, 2, 24)
    write_patch_store(root / "chunk2.zarr", kappa, chunk=2, pixel_arcmin=PIXEL_ARCMIN)
    write_patch_store(root / "chunk5.zarr", kappa, chunk=5, pixel_arcmin=PIXEL_ARCMIN)
    return root, kappa


def test_pixel_noise_sigma_by_hand():
    # sigma_e / sqrt(n_gal * A_pix): 0.3 / sqrt(1 * 1) and 0.3 / sqrt(4 * 1), 0.3 / sqrt(1 * 4)
    np.testing.assert_allclose(pixel_noise_sigma(0.3, [1.0, 4.0], 1.0), [0.3, 0.15])
    np.testing.assert_allclose(pixel_noise_sigma(0.3, 1.0, 2.0), 0.15)


def test_galaxy_density_total_is_split_equally_and_lists_are_checked():
    np.testing.assert_allclose(galaxy_density_per_bin(10.0, 4), [2.5, 2.5, 2.5, 2.5])
    np.testing.assert_allclose(galaxy_density_per_bin([1, 2, 3], 3), [1, 2, 3])
    with pytest.raises(InputError, match="n_gal_arcmin2.*3 galaxy densities.*4 tomographic bins"):
        galaxy_density_per_bin([1, 2, 3], 4, where="n_gal_arcmin2")


def test_noise_on_zero_maps_has_the_expected_std(tmp_path):
    zeros = np.zeros((30, 2, 32, 32), dtype=np.float32)
    write_patch_store(tmp_path / "zero.zarr", zeros, chunk=7, pixel_arcmin=PIXEL_ARCMIN)
    level = {"name": "deep", "sigma_e": 0.3, "n_gal_arcmin2": [2.0, 8.0]}
    out = add_noise(tmp_path / "zero.zarr", tmp_path / "noisy.zarr", level, seed=5, workers=2)

    ds = xr.open_zarr(out)
    expected = 0.3 / np.sqrt(np.array([2.0, 8.0]) * PIXEL_ARCMIN**2)
    np.testing.assert_allclose(ds.attrs["sigma_pix"], expected, rtol=1e-12)
    noise = ds["kappa"].values
    assert noise.dtype == np.float32
    # 30 * 32 * 32 = 30720 pixels per bin: the std is known to ~0.4 %, the mean to ~0.6 % of sigma.
    np.testing.assert_allclose(noise.std(axis=(0, 2, 3)), expected, rtol=0.02)
    assert np.all(np.abs(noise.mean(axis=(0, 2, 3))) < 0.03 * expected)
    # white: neighbouring pixels are uncorrelated
    corr = np.corrcoef(noise[:, 0, :, :-1].ravel(), noise[:, 0, :, 1:].ravel())[0, 1]
    assert abs(corr) < 0.03
    # earlier attrs and coords are kept, the level is recorded
    assert ds.attrs["pixel_scale"] == f"{PIXEL_ARCMIN} arcmin"
    assert ds.attrs["noise_level"] == "deep"
    recorded = json.loads(ds.attrs["noise"])
    assert recorded["n_gal_arcmin2"] == [2.0, 8.0] and recorded["smoothing_fwhm_arcmin"] == 0.0
    assert list(ds["split"].values[:4]) == ["train", "train", "train", "val"]


def test_total_density_is_split_over_the_bins(tmp_path):
    zeros = np.zeros((4, 4, 8, 8), dtype=np.float32)
    write_patch_store(tmp_path / "zero.zarr", zeros, chunk=4, pixel_arcmin=PIXEL_ARCMIN)
    level = {"name": "s3", "n_gal_arcmin2": 8.0}
    out = add_noise(tmp_path / "zero.zarr", tmp_path / "n.zarr", level, 0)
    expected = 0.26 / np.sqrt(2.0 * PIXEL_ARCMIN**2)  # schema default sigma_e, 8 / 4 bins
    np.testing.assert_allclose(xr.open_zarr(out).attrs["sigma_pix"], [expected] * 4)


def test_noise_is_deterministic_and_independent_of_chunking(signal_stores, tmp_path):
    root, kappa = signal_stores
    level = {"name": "stage3", "n_gal_arcmin2": 4.0}
    a = read_kappa(add_noise(root / "chunk2.zarr", tmp_path / "a.zarr", level, seed=7, workers=2))
    b = read_kappa(add_noise(root / "chunk5.zarr", tmp_path / "b.zarr", level, seed=7, workers=1))
    again = read_kappa(add_noise(root / "chunk2.zarr", tmp_path / "a.zarr", level, seed=7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, again)

    other_seed = read_kappa(add_noise(root / "chunk2.zarr", tmp_path / "c.zarr", level, seed=8))
    other_name = read_kappa(
        add_noise(root / "chunk2.zarr", tmp_path / "d.zarr", {**level, "name": "other"}, seed=7)
    )
    noise = a - kappa
    assert not np.allclose(noise, other_seed - kappa)
    assert not np.allclose(noise, other_name - kappa)
    # no two samples (nor bins) share a realisation
    flat = noise.reshape(-1, noise.shape[-2] * noise.shape[-1])
    corr = np.corrcoef(flat)
    assert np.max(np.abs(corr - np.eye(len(flat)))) < 0.3


def test_smoothing_lowers_the_noise_by_the_expected_factor(tmp_path):
    zeros = np.zeros((12, 1, 48, 48), dtype=np.float32)
    write_patch_store(tmp_path / "zero.zarr", zeros, chunk=5, pixel_arcmin=PIXEL_ARCMIN)
    sigma_px = 2.0
    fwhm = sigma_px * PIXEL_ARCMIN * 2 * np.sqrt(2 * np.log(2))
    assert fwhm_to_sigma_pixels(fwhm, PIXEL_ARCMIN) == pytest.approx(sigma_px)
    base = {"name": "s", "n_gal_arcmin2": 1.0}
    raw = add_noise(tmp_path / "zero.zarr", tmp_path / "raw.zarr", base, seed=3)
    smoothed_level = {**base, "smoothing_fwhm_arcmin": fwhm}
    smooth = add_noise(tmp_path / "zero.zarr", tmp_path / "sm.zarr", smoothed_level, seed=3)
    sigma = xr.open_zarr(raw).attrs["sigma_pix"][0]
    inner = (slice(None), 0, slice(8, -8), slice(8, -8))  # away from the mirrored edges
    # White noise through a unit-sum Gaussian of sigma s pixels: std / (2 sqrt(pi) s).
    expected = sigma / (2 * np.sqrt(np.pi) * sigma_px)
    assert read_kappa(smooth)[inner].std() == pytest.approx(expected, rel=0.1)
    # the smoothed map is the smoothed noisy map (same realisation, smoothed afterwards)
    resmoothed = ndimage.gaussian_filter(
        read_kappa(raw), (0, 0, sigma_px, sigma_px), mode="reflect"
    )
    np.testing.assert_allclose(read_kappa(smooth), resmoothed, atol=1e-6 * sigma)


def test_noiseless_level_is_an_exact_copy(signal_stores, tmp_path):
    root, kappa = signal_stores
    level = {"name": "noiseless", "shape_noise": False}
    out = add_noise(root / "chunk5.zarr", tmp_path / "copy.zarr", level, 1)
    ds = xr.open_zarr(out)
    original = xr.open_zarr(root / "chunk5.zarr")
    np.testing.assert_array_equal(ds["kappa"].values, kappa)
    for name in original.coords:
        np.testing.assert_array_equal(ds[name].values, original[name].values)
    assert ds.attrs["sigma_pix"] == [0.0, 0.0]
    assert ds.attrs["noise_level"] == "noiseless"


def test_bad_input_raises_input_error_and_writes_nothing(signal_stores, tmp_path):
    root, _ = signal_stores
    missing = tmp_path / "nowhere.zarr"
    with pytest.raises(InputError, match="nowhere.zarr"):
        add_noise(missing, tmp_path / "out.zarr", {"name": "a"}, 0)
    with pytest.raises(InputError, match=r"noise\[a\]\.n_gal_arcmin2.*3 galaxy densities.*2"):
        level = {"name": "a", "n_gal_arcmin2": [1, 2, 3]}
        add_noise(root / "chunk2.zarr", tmp_path / "out.zarr", level, 0)
    with pytest.raises(InputError, match="sigma_e"):
        add_noise(root / "chunk2.zarr", tmp_path / "out.zarr", {"name": "a", "sigma_e": -1}, 0)
    with pytest.raises(InputError, match="seed"):
        add_noise(root / "chunk2.zarr", tmp_path / "out.zarr", {"name": "a"}, -3)
    assert list(tmp_path.iterdir()) == []
