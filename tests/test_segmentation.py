"""Segmentation: label contract (contiguous, bounded, connected), clusters and voids, methods,
the Zarr step, bad input and the example figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures.stores import lognormal_kappa, ordered_coords, write_patch_store
from scipy import ndimage

from cosmo_sop.config import with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import detection_map
from cosmo_sop.segmentation import (
    merge_smallest_segments,
    patch_segments,
    segment,
    segment_map,
)

SIZE = 40


def write_store(path, kappa: np.ndarray, chunk: int) -> None:
    """A patch store of these tests: two maps per cosmology, the splits taking turns over maps."""
    coords = ordered_coords(len(kappa), per_cosmology=2, split_by_cosmology=False)
    write_patch_store(path, kappa, coords, pixel_arcmin=10.0, noise_level="x", chunk=chunk)


def assert_valid_labels(labels: np.ndarray, max_segments: int) -> None:
    """Labels 0..n-1 without gaps, n <= max_segments, each segment one 4-connected piece."""
    assert labels.dtype == np.int32
    for image in labels.reshape(-1, *labels.shape[-2:]):
        present = np.unique(image)
        np.testing.assert_array_equal(present, np.arange(len(present)))
        assert len(present) <= max_segments
        for value in present:  # a loop over segments: fine for a test
            assert ndimage.label(image == value)[1] == 1, f"segment {value} is not connected"


@pytest.fixture(scope="module")
def patch_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "patches.zarr"
    write_store(path, lognormal_kappa(9, 2, SIZE), chunk=4)
    return path


def test_watershed_store_obeys_the_label_contract(patch_store, tmp_path):
    config = {"max_segments": 12, "min_distance_pixels": 2}
    out = segment(patch_store, tmp_path / "seg.zarr", config, workers=2)
    seg = xr.open_zarr(out)
    patches = xr.open_zarr(patch_store)
    labels = seg["segments"].values
    assert seg["segments"].dims == ("sample", "y", "x") and labels.shape == (9, SIZE, SIZE)
    assert_valid_labels(labels, 12)
    # the small bound is reached: the maps have more extrema than 12
    assert all(image.max() + 1 == 12 for image in labels)
    for name in ("Om", "s8", "cosmology", "split", "perm", "patch_index"):
        np.testing.assert_array_equal(seg[name].values, patches[name].values)
    recorded = json.loads(seg.attrs["segmentation"])
    assert recorded["method"] == "watershed" and recorded["max_segments"] == 12
    assert seg.attrs["noise_level"] == "x" and seg.attrs["pixel_scale_arcmin"] == 10.0
    # same labels whatever the number of workers, and the map-by-map function agrees
    again = segment(patch_store, tmp_path / "seg1.zarr", config, workers=1)
    np.testing.assert_array_equal(xr.open_zarr(again)["segments"].values, labels)
    one = segment_map(
        detection_map(patches["kappa"].values[3]), with_defaults("segmentation", config)
    )
    np.testing.assert_array_equal(one, labels[3])


def test_markers_follow_the_peak_local_max_rule():
    """The chunk-wide marker search finds what skimage's peak_local_max finds, map by map."""
    from skimage.feature import peak_local_max

    from cosmo_sop.segmentation import extrema_markers

    images = detection_map(lognormal_kappa(6, 1, SIZE, seed=3))
    markers = extrema_markers(images, min_distance=3, max_markers=10_000)
    for image, found in zip(images, markers):
        contrast = image - np.median(image)
        expected = [
            peak_local_max(sign * contrast, min_distance=3, threshold_abs=0, exclude_border=False)
            for sign in (1, -1)
        ]
        expected = {tuple(p) for p in np.concatenate(expected)}
        assert {tuple(p) for p in np.argwhere(found > 0)} == expected
    capped = extrema_markers(images, min_distance=3, max_markers=5)
    assert all(np.count_nonzero(m) == 5 for m in capped)
    # the kept ones are the most extreme
    image = images[0]
    strength = np.abs(image - np.median(image))
    assert strength[capped[0] > 0].min() >= strength[(markers[0] > 0) & (capped[0] == 0)].max()


def test_segments_do_not_depend_on_chunking(tmp_path):
    kappa = lognormal_kappa(7, 2, SIZE, seed=4)
    write_store(tmp_path / "c2.zarr", kappa, chunk=2)
    write_store(tmp_path / "c5.zarr", kappa, chunk=5)
    for config in ({"max_segments": 9}, {"method": "slic", "max_segments": 9}):
        a = segment(tmp_path / "c2.zarr", tmp_path / "s2.zarr", config)
        b = segment(tmp_path / "c5.zarr", tmp_path / "s5.zarr", config, workers=2)
        np.testing.assert_array_equal(
            xr.open_zarr(a)["segments"].values, xr.open_zarr(b)["segments"].values
        )


def test_peak_and_deep_trough_get_their_own_segments():
    """A cluster (positive peak) and a void (strongly negative) are distinct segments.

    Watershedding uint8(kappa * 255) would wrap the negative void around to large values."""
    y, x = np.mgrid[:SIZE, :SIZE]
    bump = lambda cy, cx, r: np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))  # noqa: E731
    rng = np.random.default_rng(1)
    noise = 0.002 * rng.standard_normal((SIZE, SIZE))
    kappa = 0.05 * bump(10, 10, 3) - 0.04 * bump(28, 29, 4) + noise
    config = with_defaults("segmentation", {"max_segments": 8, "min_distance_pixels": 3})
    labels = segment_map(detection_map(kappa[None]), config)
    assert_valid_labels(labels, 8)
    peak, void = labels[10, 10], labels[28, 29]
    assert peak != void
    # the whole void (kappa < -0.01) is one segment, the whole cluster (kappa > 0.01) another;
    # neither reaches into the other, and each is under- / over-dense on average
    assert np.all(labels[kappa < -0.01] == void) and np.all(labels[kappa > 0.01] == peak)
    assert kappa[labels == void].max() < 0.01 and kappa[labels == peak].min() > -0.01
    assert kappa[labels == void].mean() < 0 < kappa[labels == peak].mean()


def test_void_in_one_bin_survives_the_bin_combination():
    """Bins are standardised before averaging: a void in the low-amplitude bin still counts."""
    y, x = np.mgrid[:SIZE, :SIZE]
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((2, SIZE, SIZE))
    # bin 1: a shallow void, little noise; bin 2: a strong peak and noise deeper than that void
    weak = -0.004 * np.exp(-((y - 20) ** 2 + (x - 20) ** 2) / 18) + 1e-4 * noise[0]
    strong = 0.05 * np.exp(-((y - 5) ** 2 + (x - 34) ** 2) / 8) + 0.01 * noise[1]
    config = with_defaults("segmentation", {"max_segments": 6})
    labels = segment_map(detection_map(np.stack([weak, strong])), config)
    assert_valid_labels(labels, 6)
    assert labels[20, 20] != labels[5, 34]
    assert np.all(labels[18:23, 18:23] == labels[20, 20])


def test_patch_method_gives_the_exact_grid(patch_store, tmp_path):
    config = {"method": "patch", "patch_pixels": 8, "max_segments": 25}
    out = segment(patch_store, tmp_path / "grid.zarr", config)
    labels = xr.open_zarr(out)["segments"].values
    y, x = np.mgrid[:SIZE, :SIZE]
    grid = (y // 8) * 5 + x // 8
    assert np.all(labels == grid[None])
    # a side that is not a multiple: ceil(40 / 7) = 6 squares per side, narrower last ones
    sizes = np.bincount(patch_segments((SIZE, SIZE), 7).ravel()).reshape(6, 6)
    np.testing.assert_array_equal(sizes[0], [49] * 5 + [35])
    np.testing.assert_array_equal(sizes[-1], [35] * 5 + [25])


def test_slic_method(patch_store, tmp_path):
    config = {"method": "slic", "max_segments": 10, "slic_compactness": 0.1}
    out = segment(patch_store, tmp_path / "slic.zarr", config)
    seg = xr.open_zarr(out)
    labels = seg["segments"].values
    assert_valid_labels(labels, 10)
    assert all(image.max() >= 3 for image in labels)  # a real partition, not one blob
    assert json.loads(seg.attrs["segmentation"])["method"] == "slic"


def test_merge_smallest_segments_bounds_the_count_and_keeps_large_ones():
    labels = patch_segments((SIZE, SIZE), 5)  # 64 squares
    labels[:20, :20] = 100  # one large segment
    merged = merge_smallest_segments(labels, 7)
    assert_valid_labels(merged, 7)
    assert len(np.unique(merged)) == 7
    assert len(np.unique(merged[:20, :20])) == 1  # the large one is only ever grown
    np.testing.assert_array_equal(merge_smallest_segments(merged, 7), merged)  # within bound: kept


def test_bad_config_and_missing_input_raise_input_error(patch_store, tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(InputError, match="segmentation.method"):
        segment(patch_store, out, {"method": "felzenszwalb"})
    with pytest.raises(InputError, match="segmentation.max_segments"):
        segment(patch_store, out, {"max_segments": 1})
    with pytest.raises(InputError, match="patch_pixels.*25 segments.*max_segments = 16"):
        segment(patch_store, out, {"method": "patch", "patch_pixels": 8, "max_segments": 16})
    with pytest.raises(InputError, match="segmentation.method"):
        segment_map(
            np.zeros((8, 8)), {**with_defaults("segmentation", {}), "method": "felzenszwalb"}
        )
    with pytest.raises(InputError, match="absent.zarr"):
        segment(tmp_path / "absent.zarr", out, {})
    assert list(tmp_path.iterdir()) == []


def test_featureless_map_is_one_segment():
    labels = segment_map(np.zeros((16, 16)), with_defaults("segmentation", {}))
    assert labels.dtype == np.int32 and np.all(labels == 0)


def test_plot_segments_writes_png_and_pdf(patch_store, tmp_path):
    from cosmo_sop.figures.segments import plot_segments

    seg = segment(patch_store, tmp_path / "seg.zarr", {"max_segments": 10})
    png = plot_segments(patch_store, seg, tmp_path / "fig" / "segments.png", n_maps=3, seed=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(InputError, match="do not match"):
        other = tmp_path / "other.zarr"
        write_store(other, lognormal_kappa(3, 1, SIZE), chunk=3)
        plot_segments(other, seg, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
