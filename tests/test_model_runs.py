"""Training the workflow's models on a patch store, and loading a trained SOP model in Python."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.storage import write_zarr
from cosmo_sop.training.runs import load_backbone, load_sop, train_backbone, train_sop

SIZE = 16


def write_stores(tmp: Path, noise_level: str = "noiseless") -> tuple[Path, Path]:
    """A patch store whose maps carry (Om, s8) in their mean and amplitude, and a 4x4 grid
    segmentation of it; 24 cosmologies x 4 patches, split 16 / 4 / 4 by cosmology."""
    rng = np.random.default_rng(3)
    n_cosmo, n_patch = 24, 4
    om, s8 = rng.uniform(0.1, 0.5, n_cosmo), rng.uniform(0.4, 1.4, n_cosmo)
    split = np.array(["train"] * 16 + ["val"] * 4 + ["test"] * 4)[rng.permutation(n_cosmo)]
    c = np.repeat(np.arange(n_cosmo), n_patch)
    field = rng.standard_normal((c.size, 2, SIZE, SIZE))
    kappa = 0.01 * (om[c, None, None, None] + s8[c, None, None, None] * field)
    coords = {
        "Om": ("sample", om[c]),
        "s8": ("sample", s8[c]),
        "cosmology": ("sample", np.array([f"cosmo_{i:06d}" for i in c])),
        "perm": ("sample", np.zeros(c.size, np.int64)),
        "patch_lon": ("sample", np.tile(np.linspace(0.0, 270.0, n_patch), n_cosmo)),
        "patch_lat": ("sample", np.zeros(c.size)),
        "split": ("sample", split[c]),
        "patch_index": ("sample", np.tile(np.arange(n_patch, dtype=np.int64), n_cosmo)),
    }
    attrs = {
        "pixel_scale_arcmin": 13.7,
        "pixel_scale": "13.7 arcmin",
        "nside": 64,
        "source": "mock",
        "noise_level": noise_level,
        "noise": json.dumps({"name": noise_level}),
        "config": "{}",
        "cosmo_sop_version": "test",
    }
    patches = xr.Dataset(
        {"kappa": (("sample", "bin", "y", "x"), kappa.astype(np.float32))},
        coords={**coords, "bin": ("bin", np.array([1, 2], np.int64))},
        attrs=attrs,
    )
    grid = (np.arange(SIZE)[:, None] // 4) * 4 + np.arange(SIZE)[None, :] // 4
    segments = xr.Dataset(
        {"segments": (("sample", "y", "x"), np.broadcast_to(grid, (c.size, SIZE, SIZE)).astype(np.int32))},
        coords=coords,
        attrs={**attrs, "segmentation": json.dumps({"method": "patch", "patch_pixels": 4})},
    )
    return (
        write_zarr(patches, tmp / f"{noise_level}_patches.zarr"),
        write_zarr(segments, tmp / f"{noise_level}_segments.zarr"),
    )


def tiny_config(tokens: str = "segments") -> dict:
    return validate_config(
        {
            "seed": 5,
            "backbone": {"widths": [4, 8], "kernel_size": 3, "hidden": [16]},
            "training": {"epochs": 2, "batch_size": 16, "patience": 2},
            "sop": {
                "tokens": tokens,
                "patch_tokens": 4,
                "encoder_blocks": 1,
                "n_heads": 2,
                "d_model": 8,
                "n_groups": 4,
                "keep_fraction": 0.25,
                "max_backbone_batch": 32,
                "max_train_maps": 32,
                "training": {"epochs": 1, "batch_size": 8},
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    patches, segments = write_stores(tmp)
    config = tiny_config()
    train_backbone(patches, tmp / "backbone", config)
    train_sop(patches, segments, tmp / "backbone", tmp / "sop", config)
    return tmp, patches, segments, config


def test_backbone_run_folder_and_test_metrics(trained):
    tmp, *_ = trained
    run = tmp / "backbone"
    for name in ("model.safetensors", "model.json", "checkpoint.pt", "metrics.csv", "test_metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n_test_maps"] == 16
    assert set(metrics["mse"]) == {"Om", "s8"}
    model, sidecar = load_backbone(run)
    # The input scale is the train-split std of kappa per bin, saved with the weights.
    assert np.all(model.scale.scale.numpy() > 1e-3) and np.all(model.scale.scale.numpy() < 0.1)
    assert sidecar["data"]["train"]["noise_level"] == "noiseless"


def test_loaded_sop_prediction_is_exactly_the_sum_of_its_parts(trained):
    tmp, patches, segments, _ = trained
    sop = load_sop(tmp / "sop")
    ds, seg = xr.open_zarr(patches), xr.open_zarr(segments)
    test = np.flatnonzero(ds.split.values == "test")[:6]
    parts = sop.explain(ds.kappa.values[test], seg.segments.values[test])

    assert parts.prediction.shape == (6, 2) and parts.names == ("Om", "s8")
    np.testing.assert_allclose((parts.scores * parts.partial).sum(axis=1), parts.prediction, atol=1e-6)
    np.testing.assert_allclose(parts.scores.sum(axis=1), 1.0, atol=1e-6)
    assert parts.masks.dtype == bool and parts.masks.shape == (6, 4, SIZE, SIZE)
    # Each group's pixels are exactly the union of the segments it names.
    grid = seg.segments.values[test[0]]
    for mask, members in zip(parts.masks[0], parts.group_segments[0]):
        np.testing.assert_array_equal(mask, np.isin(grid, members))
    # Predictions are in physical units, inside the prior's neighbourhood.
    assert np.all(np.abs(parts.prediction[:, 0] - 0.3) < 0.5)
    np.testing.assert_array_equal(sop.predict(ds.kappa.values[test], seg.segments.values[test]), parts.prediction)

    single = sop.explain(ds.kappa.values[test[0]], grid)
    np.testing.assert_allclose(single.prediction[0], parts.prediction[0], rtol=1e-6)

    metrics = json.loads((tmp / "sop" / "test_metrics.json").read_text())
    assert metrics["groups"]["n_groups"] == 4
    assert 0 < metrics["groups"]["nonzero_groups_per_map"]["Om"] <= 4
    assert 0 < metrics["groups"]["mean_group_size"]["s8"] <= 1


def test_segment_tokens_need_segments(trained):
    tmp, patches, *_ = trained
    sop = load_sop(tmp / "sop")
    with pytest.raises(ValueError, match="segments"):
        sop.explain(xr.open_zarr(patches).kappa.values[:2])


def test_sop_refuses_a_backbone_of_another_noise_level(trained, tmp_path):
    tmp, _, _, config = trained
    patches, segments = write_stores(tmp_path, noise_level="noisy")
    with pytest.raises(InputError, match="noise_level") as error:
        train_sop(patches, segments, tmp / "backbone", tmp_path / "sop", config)
    assert "model.safetensors" in str(error.value)
    assert not (tmp_path / "sop").exists()


def test_load_sop_refuses_a_backbone_folder(trained):
    tmp, *_ = trained
    with pytest.raises(InputError, match="expected sop"):
        load_sop(tmp / "backbone")
    with pytest.raises(InputError, match="no trained model"):
        load_sop(tmp / "nothing_here")


def test_cli_trains_the_xdnn_and_patch_token_sop(trained, tmp_path):
    _, patches, _, _ = trained
    config = json.dumps(tiny_config(tokens="patches"))
    for command, out in (("train-xdnn", "xdnn"), ("train-backbone", "backbone")):
        result = subprocess.run(
            [sys.executable, "-m", "cosmo_sop", command, "--patches", str(patches),
             "--output", str(tmp_path / out), "--config-json", config],  # fmt: skip
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    xdnn, _ = load_backbone(tmp_path / "xdnn")
    assert xdnn.bias_free
    result = subprocess.run(
        [sys.executable, "-m", "cosmo_sop", "train-sop", "--patches", str(patches),
         "--backbone", str(tmp_path / "backbone"), "--output", str(tmp_path / "sop"),
         "--config-json", config],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parts = load_sop(tmp_path / "sop").explain(xr.open_zarr(patches).kappa.values[:3])
    assert parts.group_segments is None
    np.testing.assert_allclose((parts.scores * parts.partial).sum(axis=1), parts.prediction, atol=1e-6)
