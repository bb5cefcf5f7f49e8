"""The explanation store: a trained SOP model's groups and weights for every map of a split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fixtures.runs import SIZE, write_stores

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.explain import explain_split
from cosmo_sop.models import load_sop, patch_token_map
from cosmo_sop.storage import write_zarr

N_GROUPS = 4  # tiny_config's sop.n_groups


@pytest.fixture(scope="module")
def runs(tiny_runs):
    """A backbone and two SOP models (segment and patch tokens) trained on tiny stores."""
    tiny_runs("sop")
    tiny_runs("sop_patches")
    return tiny_runs.folder, tiny_runs.patches, tiny_runs.segments


@pytest.fixture(scope="module")
def segment_store(runs, tmp_path_factory):
    tmp, patches, segments = runs
    out = tmp_path_factory.mktemp("explain") / "explanations.zarr"
    return explain_split(tmp / "sop", patches, out, segments, batch_size=5)


def _no_leftovers(folder: Path, name: str) -> bool:
    return not any(
        p.name.startswith(name) or p.name.startswith(f".{name}") for p in folder.iterdir()
    )


def test_store_follows_the_contract(runs, segment_store):
    tmp, patches, segments = runs
    ds = xr.open_zarr(segment_store)
    store = xr.open_zarr(patches)
    test_rows = np.flatnonzero(store.split.values == "test")
    n = test_rows.size
    n_segments = int(xr.open_zarr(segments).segments.values[test_rows].max()) + 1

    assert dict(ds.sizes) == {
        "sample": n,
        "group": N_GROUPS,
        "output": 2,
        "y": SIZE,
        "x": SIZE,
        "segment": n_segments,
    }
    assert list(ds.output.values) == ["Om", "s8"]
    expected = {
        "prediction": (("sample", "output"), np.float64),
        "target": (("sample", "output"), np.float64),
        "scores": (("sample", "group", "output"), np.float64),
        "partial": (("sample", "group", "output"), np.float64),
        "masks": (("sample", "group", "y", "x"), np.bool_),
        "valid": (("sample", "group"), np.bool_),
        "pixel_count": (("sample", "group"), np.int64),
        "group_segments": (("sample", "group", "segment"), np.bool_),
    }
    assert set(ds.data_vars) == set(expected)
    for name, (dims, dtype) in expected.items():
        assert ds[name].dims == dims, name
        assert ds[name].dtype == dtype, name
    # Batches of 5 maps: the last one is partial, every chunk is one batch.
    assert ds.masks.encoding["chunks"][0] == 5

    # The prediction is exactly the sum of its parts; weights are a partition of one.
    np.testing.assert_allclose((ds.scores * ds.partial).sum("group"), ds.prediction, atol=1e-5)
    np.testing.assert_allclose(ds.scores.sum("group"), 1.0, atol=1e-6)
    assert (ds.scores.values >= 0).all()
    np.testing.assert_array_equal(ds.pixel_count, ds.masks.sum(("y", "x")))
    assert not (ds.masks.values & ~ds.valid.values[..., None, None]).any()

    # Each group's pixels are exactly the union of the segments it names.
    labels = xr.open_zarr(segments).segments.values[test_rows]  # (N, H, W)
    members = ds.group_segments.values  # (N, m, S)
    painted = members[
        np.arange(n)[:, None, None, None], np.arange(N_GROUPS)[None, :, None, None], labels[:, None]
    ]
    np.testing.assert_array_equal(painted, ds.masks.values)

    # Coordinates are the patch store's rows of the explained maps.
    np.testing.assert_array_equal(ds.store_index, test_rows)
    for key in ("Om", "s8", "cosmology", "perm", "patch_index", "split", "patch_lon"):
        np.testing.assert_array_equal(ds[key].values, store[key].values[test_rows], err_msg=key)
    truth = np.stack([store.Om.values, store.s8.values], axis=1)[test_rows]
    np.testing.assert_array_equal(ds.target.values, truth)

    # The same numbers as the model explaining all maps at once (batching changes nothing).
    sop = load_sop(tmp / "sop")
    parts = sop.explain(store.kappa.values[test_rows], labels)
    np.testing.assert_allclose(ds.prediction.values, parts.prediction, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ds.masks.values, parts.masks)

    attrs = ds.attrs
    assert attrs["sop_dir"] == str((tmp / "sop").resolve())
    assert attrs["tokens"] == "segments" and attrs["n_groups"] == N_GROUPS
    assert attrs["noise_level"] == "noiseless" and attrs["split"] == "test"
    assert json.loads(attrs["segmentation"]) == {"method": "patch", "patch_pixels": 4}
    assert attrs["cosmo_sop_version"] == __version__


def test_patch_tokens_and_max_maps(runs):
    tmp, patches, _ = runs
    out = explain_split(tmp / "sop_patches", patches, tmp / "patch_explanations.zarr", max_maps=7)
    ds = xr.open_zarr(out)
    test_rows = np.flatnonzero(xr.open_zarr(patches).split.values == "test")
    np.testing.assert_array_equal(ds.store_index, test_rows[:7])
    assert "group_segments" not in ds and ds.group_tokens.dims == ("sample", "group", "token")
    assert ds.sizes["token"] == 16 and ds.attrs["tokens"] == "patches"  # a 4 x 4 grid
    cells = patch_token_map(SIZE, SIZE, 4).numpy()
    np.testing.assert_array_equal(ds.group_tokens.values[:, :, cells], ds.masks.values)
    np.testing.assert_allclose((ds.scores * ds.partial).sum("group"), ds.prediction, atol=1e-5)


def test_model_of_another_noise_level_is_refused(runs, tmp_path):
    tmp, _, _ = runs
    patches, segments = write_stores(tmp_path, noise_level="stage3")
    with pytest.raises(InputError, match="noise_level") as error:
        explain_split(tmp / "sop", patches, tmp_path / "out.zarr", segments)
    message = str(error.value)
    assert "model.safetensors" in message and str(patches) in message and "\n" not in message
    assert _no_leftovers(tmp_path, "out.zarr")


def test_model_of_another_segmentation_is_refused(runs, tmp_path):
    tmp, patches, segments = runs
    other = xr.open_zarr(segments).load()
    other.attrs["segmentation"] = json.dumps({"method": "watershed", "max_segments": 16})
    other_store = write_zarr(other, tmp_path / "segments.zarr")
    with pytest.raises(InputError, match="segmentation"):
        explain_split(tmp / "sop", patches, tmp_path / "out.zarr", other_store)
    assert _no_leftovers(tmp_path, "out.zarr")


def test_segment_tokens_need_the_segments_store(runs, tmp_path):
    tmp, patches, _ = runs
    with pytest.raises(InputError, match="segments store"):
        explain_split(tmp / "sop", patches, tmp_path / "out.zarr")
    assert _no_leftovers(tmp_path, "out.zarr")


def test_bad_arguments_are_refused(runs, tmp_path):
    tmp, patches, segments = runs
    with pytest.raises(InputError, match="batch_size"):
        explain_split(tmp / "sop", patches, tmp_path / "a.zarr", segments, batch_size=0)
    with pytest.raises(InputError, match="split"):
        explain_split(tmp / "sop", patches, tmp_path / "a.zarr", segments, split="dev")
    with pytest.raises(InputError, match="expected sop"):
        explain_split(tmp / "backbone", patches, tmp_path / "a.zarr", segments)
    assert _no_leftovers(tmp_path, "a.zarr")
