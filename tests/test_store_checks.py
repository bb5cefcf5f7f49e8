"""Stores are checked where they are opened: one NaN or infinite pixel in a patch store is one
line naming the store and the first bad sample, before any step writes anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from fixtures.runs import tiny_config, write_stores
from fixtures.stores import lognormal_kappa, ordered_coords, write_patch_store

from cosmo_sop.cli import main
from cosmo_sop.errors import InputError
from cosmo_sop.explain import explain_split
from cosmo_sop.figures.patches import plot_patches
from cosmo_sop.noise import add_noise
from cosmo_sop.segmentation import segment
from cosmo_sop.storage import open_zarr
from cosmo_sop.summary_statistics import run_summary_statistics
from cosmo_sop.training.runs import train_backbone


def poison(store: Path, sample: int, bin_index: int, value: float = np.nan) -> Path:
    """Set one pixel of ``kappa`` in place, as a user editing a finished store would."""
    kappa = zarr.open_array(store=str(store), path="kappa", mode="r+")
    kappa[sample, bin_index, 2, 3] = value
    return store


def bad_sample_message(store: Path, sample: int) -> str:
    """The start of the error's message: the store, then the first bad sample."""
    return f"{store}: kappa holds NaN or infinity in 1 of .* first in sample {sample} "


@pytest.fixture
def bad_store(tmp_path) -> Path:
    """A patch store of 9 lognormal maps (chunks of 4) with one NaN pixel in sample 5, bin 2."""
    path = tmp_path / "patches.zarr"
    kappa = lognormal_kappa(9, 2, 32)
    coords = ordered_coords(9, per_cosmology=3)
    write_patch_store(path, kappa, coords, pixel_arcmin=10.0, noise_level="x", chunk=4)
    return poison(path, 5, 1)


def assert_nothing_in(folder: Path, *kept: Path) -> None:
    """Nothing but ``kept`` (and hidden temporaries' absence) in ``folder``."""
    assert sorted(folder.iterdir()) == sorted(kept)


def test_the_message_names_the_store_the_sample_and_the_bin(bad_store):
    with pytest.raises(InputError) as caught:
        open_zarr(bad_store)
    assert str(caught.value) == (
        f"{bad_store}: kappa holds NaN or infinity in 1 of 9 sample(s), first in sample 5 "
        "(cosmology cosmo_000001, perm 0, patch_index 2, bin 2)"
    )
    # infinity too, and the first of several bad samples is named
    poison(bad_store, 7, 0, np.inf)
    poison(bad_store, 2, 0, -np.inf)
    with pytest.raises(InputError, match=r"in 3 of 9 sample\(s\), first in sample 2 .*bin 1\)"):
        open_zarr(bad_store)
    assert open_zarr(bad_store, check_values=False).sizes["sample"] == 9


def test_segments_and_finite_stores_pass(tmp_path):
    patches, segments = write_stores(tmp_path)
    assert open_zarr(patches).sizes["sample"] == 96
    assert open_zarr(segments).sizes["sample"] == 96  # int labels are not checked


def test_noise_refuses_a_nan_pixel(bad_store, tmp_path):
    level = {"name": "deep", "sigma_e": 0.3, "n_gal_arcmin2": 10.0}
    with pytest.raises(InputError, match=bad_sample_message(bad_store, 5)):
        add_noise(bad_store, tmp_path / "noisy.zarr", level, seed=1)
    assert_nothing_in(tmp_path, bad_store)


def test_segment_refuses_a_nan_pixel(bad_store, tmp_path):
    with pytest.raises(InputError, match=bad_sample_message(bad_store, 5)):
        segment(bad_store, tmp_path / "segments.zarr", {"max_segments": 8})
    assert_nothing_in(tmp_path, bad_store)


def test_cli_segment_says_it_in_one_line(bad_store, tmp_path, capsys):
    status = main(["segment", "--input", str(bad_store), "--output", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"cosmo-sop segment: error: {bad_store}: kappa holds NaN")
    assert "first in sample 5" in err


def test_train_backbone_refuses_a_nan_pixel(tmp_path):
    patches, _ = write_stores(tmp_path)
    poison(patches, 40, 0)
    run_dir = tmp_path / "run"
    with pytest.raises(InputError, match=bad_sample_message(patches, 40)):
        train_backbone(patches, run_dir, tiny_config())
    assert not run_dir.exists()


def test_explain_refuses_a_nan_pixel(tiny_runs, tmp_path):
    sop = tiny_runs("sop")
    patches = tmp_path / tiny_runs.patches.name
    shutil.copytree(tiny_runs.patches, patches)  # the same data the model was trained on...
    poison(patches, 45, 1)  # ...but for one pixel, in a map of the test split
    out = tmp_path / "explanations.zarr"
    with pytest.raises(InputError, match=bad_sample_message(patches, 45)):
        explain_split(sop, patches, out, tiny_runs.segments)
    assert_nothing_in(tmp_path, patches)


def test_summary_statistics_refuse_a_nan_pixel(tmp_path):
    patches, _ = write_stores(tmp_path)
    poison(patches, 3, 1, np.inf)
    out = tmp_path / "summary.json"
    with pytest.raises(InputError, match=bad_sample_message(patches, 3)):
        run_summary_statistics(patches, out, {"ell_bins": 4, "progress": False})
    assert not out.exists() and not out.with_suffix(".npz").exists()


# --- degenerate maps -----------------------------------------------------------------------


def test_enormous_values_are_refused_where_the_store_is_opened(tmp_path):
    # One pixel of 1e30 in a test map: the network's output overflowed float32 and the run
    # ended, after its training, in "Out of range float values are not JSON compliant: inf".
    patches, _ = write_stores(tmp_path)
    poison(patches, 8, 0, 1e30)
    message = (
        f"{patches}: kappa holds values above 1e+06 in magnitude (up to 1e+30) in 1 of 96 "
        "sample(s), first in sample 8 (cosmology cosmo_000002, perm 0, patch_index 0, bin 1)"
    )
    with pytest.raises(InputError) as caught:
        open_zarr(patches)
    assert str(caught.value) == message
    with pytest.raises(InputError, match="up to 1e"):
        train_backbone(patches, tmp_path / "run", tiny_config())
    assert not (tmp_path / "run").exists()


def test_a_store_without_samples_is_refused(tmp_path):
    # An empty store crashed segment (numpy reshape) and plot-patches (IndexError).
    store = write_patch_store(
        tmp_path / "patches.zarr", np.zeros((0, 2, 16, 16)), ordered_coords(0), pixel_arcmin=5.0
    )
    expected = f"{store}: kappa is empty \\(sizes .*'sample': 0"
    with pytest.raises(InputError, match=expected):
        segment(store, tmp_path / "segments.zarr", {"max_segments": 8})
    with pytest.raises(InputError, match=expected):
        plot_patches(store, tmp_path / "patches.png")
    assert_nothing_in(tmp_path, store)


@pytest.mark.parametrize("value", [0.0, 0.01], ids=["zero", "constant"])
def test_flat_train_maps_are_refused_before_training(tmp_path, value):
    # All-zero or constant maps: "ValueError: input scale must be positive and finite" from
    # inside the backbone.
    patches, _ = write_stores(tmp_path)
    kappa = zarr.open_array(store=str(patches), path="kappa", mode="r+")
    kappa[:] = value
    with pytest.raises(InputError) as caught:
        train_backbone(patches, tmp_path / "run", tiny_config())
    assert str(caught.value) == (
        f"{patches}: kappa of the train split is the same in every pixel of bin(s) [1, 2] "
        "(zero or constant maps): nothing to learn from"
    )
    assert not (tmp_path / "run").exists()


def test_a_store_without_test_maps_is_refused_before_training(tmp_path):
    # It was refused only after the training, when the test metrics were computed.
    patches, _ = write_stores(tmp_path)
    ds = xr.open_zarr(patches).load()
    shutil.rmtree(patches)
    split = ds["split"].where(ds["split"] != "test", "train")
    write_patch_store(
        patches, ds["kappa"].values, {**ordered_coords(96), "split": ("sample", split.values)}
    )
    config = tiny_config()
    config["training"]["batch_size"] = 8
    with pytest.raises(InputError, match=f"{patches}: split 'test' has no samples"):
        train_backbone(patches, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
