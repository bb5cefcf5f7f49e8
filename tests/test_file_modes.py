"""Every file cosmo-sop writes takes the permissions of the user's umask, so that a results
folder shared on a file system is readable (and, under umask 002, writable) by the group."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from fixtures.runs import tiny_config, write_stores

from cosmo_sop.layout import WEIGHTS
from cosmo_sop.models.weights import save_weights
from cosmo_sop.storage import current_umask, write_json, write_zarr
from cosmo_sop.training.runs import train_backbone


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    """Run the test under this umask, and restore the previous one after."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    """Permission bits of everything under ``folder`` (itself excluded), by relative path."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.lstat().st_mode) for p in folder.rglob("*")}


def assert_umask_modes(folder: Path, umask: int) -> None:
    expected = {False: 0o666 & ~umask, True: 0o777 & ~umask}
    wrong = {
        name: oct(mode)
        for name, mode in modes(folder).items()
        if mode != expected[(folder / name).is_dir()]
    }
    assert not wrong, f"not the modes of umask {umask:03o}: {wrong}"


def test_the_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_training_outputs_and_stores_honour_the_umask(umask, tmp_path):
    # the stores (zarr), a JSON record, and a whole training run: weights (safetensors
    # writes 0600 by itself), sidecar, checkpoint, history, test predictions
    data = tmp_path / "data"
    patches, _ = write_stores(data)
    write_zarr(xr.Dataset({"k": ("s", np.arange(3.0))}), data / "other.zarr")
    write_json(data / "record.json", {"a": 1})
    run = tmp_path / "run"
    train_backbone(patches, run, tiny_config())
    assert (run / WEIGHTS).is_file()
    save_weights(tmp_path / "direct" / "model.safetensors", {"w": torch.ones(2)}, {"a": 1})
    assert_umask_modes(tmp_path, umask)
