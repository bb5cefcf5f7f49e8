"""Training the workflow's models on a patch store, and loading a trained SOP model in Python."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from fixtures.runs import SIZE, tiny_config, write_stores

from cosmo_sop.errors import InputError
from cosmo_sop.faithfulness.ranks import contribution_sparsity, group_contributions
from cosmo_sop.models import load_backbone, load_sop
from cosmo_sop.training import train_sop


@pytest.fixture(scope="module")
def trained(tiny_runs):
    """A backbone and a segment-token SOP trained on it (the session's tiny runs)."""
    tiny_runs("sop")  # and its backbone
    return tiny_runs.folder, tiny_runs.patches, tiny_runs.segments, tiny_config()


def test_backbone_run_folder_and_test_metrics(trained):
    tmp, *_ = trained
    run = tmp / "backbone"
    for name in (
        "model.safetensors",
        "model.json",
        "checkpoint.pt",
        "metrics.csv",
        "test_metrics.json",
    ):
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
    np.testing.assert_allclose(
        (parts.scores * parts.partial).sum(axis=1), parts.prediction, atol=1e-6
    )
    np.testing.assert_allclose(parts.scores.sum(axis=1), 1.0, atol=1e-6)
    assert parts.masks.dtype == bool and parts.masks.shape == (6, 4, SIZE, SIZE)
    # Each group's pixels are exactly the union of the segments it names.
    grid = seg.segments.values[test[0]]
    for mask, members in zip(parts.masks[0], parts.group_segments[0]):
        np.testing.assert_array_equal(mask, np.isin(grid, members))
    # Predictions are in physical units, inside the prior's neighbourhood.
    assert np.all(np.abs(parts.prediction[:, 0] - 0.3) < 0.5)
    np.testing.assert_array_equal(
        sop.predict(ds.kappa.values[test], seg.segments.values[test]), parts.prediction
    )

    single = sop.explain(ds.kappa.values[test[0]], grid)
    np.testing.assert_allclose(single.prediction[0], parts.prediction[0], rtol=1e-6)

    metrics = json.loads((tmp / "sop" / "test_metrics.json").read_text())
    assert metrics["groups"]["n_groups"] == 4
    assert 0 < metrics["groups"]["nonzero_groups_per_map"]["Om"] <= 4
    assert 0 < metrics["groups"]["mean_group_size"]["s8"] <= 1


def test_sops_recorded_sparsity_is_that_of_its_groups_contributions(trained):
    """The sparsity in test_metrics.json is the faithfulness table's: of c_i (y_i - h(0)) in
    standardised units, h(0) the backbone on the zero map, over the test maps."""
    tmp, patches, segments, _ = trained
    sop = load_sop(tmp / "sop")
    ds, seg = xr.open_zarr(patches), xr.open_zarr(segments)
    test = np.flatnonzero(ds.split.values == "test")
    parts = sop.explain(ds.kappa.values[test], seg.segments.values[test])
    with torch.no_grad():
        zero = sop.model.backbone(torch.zeros(1, *ds.kappa.shape[1:])).double().numpy()
    contributions = group_contributions(
        parts.scores, sop.scaler.transform(parts.partial), zero.repeat(len(test), 0), parts.valid
    )
    metrics = json.loads((tmp / "sop" / "test_metrics.json").read_text())["groups"]
    mass = metrics["sparsity_mass"]
    expected = contribution_sparsity(parts.masks, contributions, mass).mean(0)
    np.testing.assert_allclose([metrics["sparsity"][o] for o in ("Om", "s8")], expected, atol=0.01)


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


@pytest.mark.slow
def test_cli_trains_the_xdnn_and_patch_token_sop(trained, tmp_path):
    _, patches, _, _ = trained
    config = json.dumps(tiny_config(tokens="patches"))
    for command, out in (("train-xdnn", "xdnn"), ("train-backbone", "backbone")):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cosmo_sop",
                command,
                "--patches",
                str(patches),
                "--output",
                str(tmp_path / out),
                "--config-json",
                config,
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    xdnn, _ = load_backbone(tmp_path / "xdnn")
    assert xdnn.bias_free
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosmo_sop",
            "train-sop",
            "--patches",
            str(patches),
            "--backbone",
            str(tmp_path / "backbone"),
            "--output",
            str(tmp_path / "sop"),
            "--config-json",
            config,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parts = load_sop(tmp_path / "sop").explain(xr.open_zarr(patches).kappa.values[:3])
    assert parts.group_segments is None
    np.testing.assert_allclose(
        (parts.scores * parts.partial).sum(axis=1), parts.prediction, atol=1e-6
    )
