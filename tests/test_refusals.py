"""Bad input and hostile surroundings end in one line naming the path and the problem: a user's
folder given as an output, empty output paths, resolutions the maps cannot hold, non-finite
parameters and maps, read-only or full disks, broken YAML, a closed pipe."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fixtures.cosmogrid import write_release

from cosmo_sop import storage
from cosmo_sop.cli import main
from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError

# Patches that nside-16 maps hold: the HEALPix pixel there is 220', so 110' and up.
INGEST = {
    "bins": [1, 2],
    "patch_size": 9,
    "resolution_arcmin": 220.0,
    "centres_nside": 1,
    "split": {"train": 0.5, "val": 0.25, "test": 0.25},
    "chunk_samples": 10,
}


def _release(tmp_path: Path, **ingest) -> tuple[Path, dict]:
    """A small release (nside 16, three cosmologies, one perm) and the config that ingests it."""
    release = write_release(tmp_path / "release", n_cosmologies=3, n_perms=1, nside=16)
    config = validate_config(
        {
            "source": "cosmogrid",
            "cosmogrid": {"root": str(release.root), "perms": 1},
            "ingest": {**INGEST, **ingest},
            # Networks that fit 9-pixel patches (the CLI checks them before any work).
            "backbone": {"widths": [4, 8], "kernel_size": 2, "hidden": [8]},
            "sop": {"patch_tokens": 3, "n_heads": 2, "d_model": 8},
        }
    )
    return release.root, config


def _ingest_argv(root: Path, output: Path | str, config: dict) -> list[str]:
    return ["ingest", "--root", str(root), "--output", str(output), "--config-json"] + [
        json.dumps(config)
    ]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Progress bars aside (tqdm draws on standard error), one line says it.
    lines = [line for line in err.splitlines() if line.startswith("cosmo-sop ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cosmo-sop {command}: error: ")
    return lines[0].removeprefix(f"cosmo-sop {command}: error: ")


def _users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "some" / "dir"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    return folder


# --- 1. a folder that cosmo-sop did not write is never replaced ---------------------------------


def test_ingest_refuses_to_replace_a_users_folder(tmp_path, capsys):
    root, config = _release(tmp_path)
    folder = _users_folder(tmp_path)
    assert main(_ingest_argv(root, folder, config)) == 2
    line = _one_error_line(capsys, "ingest")
    assert line.startswith(f"{folder}: is a folder that cosmo-sop did not write")
    assert (folder / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["dir"]  # no temporary left


def test_writers_refuse_a_users_folder_and_replace_their_own_stores(tmp_path):
    folder = _users_folder(tmp_path)
    ds = xr.Dataset({"kappa": ("sample", np.zeros(3, np.float32))})
    for write in (
        lambda: storage.write_zarr(ds, folder),
        lambda: storage.write_json(folder, {"a": 1}),
        lambda: storage.move_into_place(tmp_path, folder),
    ):
        with pytest.raises(InputError, match="is a folder that cosmo-sop did not write"):
            write()
        assert (folder / "notes.txt").read_text() == "my notes\n"
    # A Zarr store of another tool is no more ours than any folder.
    foreign = tmp_path / "foreign.zarr"
    ds.to_zarr(foreign, zarr_format=2, consolidated=True)
    with pytest.raises(InputError, match=str(foreign)):
        storage.write_zarr(ds, foreign)
    # cosmo-sop's own stores are marked, so a rerun replaces them.
    ours = storage.write_zarr(ds, tmp_path / "ours.zarr")
    assert storage.written_by_cosmo_sop(ours)
    storage.write_zarr(ds.assign(kappa=ds.kappa + 1), ours)
    assert float(xr.open_zarr(ours).kappa.sum()) == 3.0
    # A file never replaces a folder, not even a store of ours.
    with pytest.raises(InputError, match="refusing to replace it with a file"):
        storage.write_json(ours, {"a": 1})
    assert storage.written_by_cosmo_sop(ours)


# --- 2. empty output paths ---------------------------------------------------------------------


@pytest.mark.parametrize("results", ["", "  "])
def test_an_empty_results_folder_is_refused(results):
    with pytest.raises(InputError) as info:
        validate_config({"results": results}, "config.yaml", whole=True)
    assert str(info.value) == (
        "config.yaml: config key 'results' is empty: name the folder for the outputs (e.g. results)"
    )


def test_an_empty_output_option_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "--root", str(tmp_path), "--output", ""]) == 2
    assert _one_error_line(capsys, "ingest") == "--output: empty path (give a file or folder name)"
    assert list(tmp_path.iterdir()) == []


# --- 3. a patch pixel finer than the maps --------------------------------------------------------


def test_a_resolution_finer_than_the_maps_is_refused(tmp_path, capsys):
    root, config = _release(tmp_path, resolution_arcmin=1.0)
    output = tmp_path / "out" / "patches.zarr"
    assert main(_ingest_argv(root, output, config)) == 2
    assert _one_error_line(capsys, "ingest") == (
        "config key 'ingest.resolution_arcmin': 1 arcmin is finer than the maps hold: their "
        "HEALPix pixels (nside 16) are 220 arcmin across, so a patch pixel must be at least "
        "half that, 110 arcmin"
    )
    assert not output.parent.exists()


# --- 4. non-finite cosmological parameters -------------------------------------------------------


@pytest.mark.parametrize(("column", "value"), [("Om", np.nan), ("s8", np.inf), ("Om", -0.3)])
def test_a_non_finite_parameter_is_refused_at_ingest(tmp_path, capsys, column, value):
    from fixtures.cosmogrid import parameter_table, write_metainfo

    root, config = _release(tmp_path)
    ids = ["cosmo_000001", "cosmo_000002", "cosmo_000003"]
    table = parameter_table("grid", ids, [0.2, 0.3, 0.4], 0.8)
    table[column][1] = value
    metainfo = write_metainfo(root, {"grid": table}, {"grid": 1})
    output = tmp_path / "out" / "patches.zarr"
    assert main(_ingest_argv(root, output, config)) == 2
    assert _one_error_line(capsys, "ingest") == (
        f"{metainfo}: table 'parameters/grid' gives cosmology cosmo_000002 {column} = "
        f"{value:g}, not a finite positive number"
    )
    assert not output.parent.exists()


# --- 5. the Python API on a NaN or huge map ------------------------------------------------------


@pytest.fixture(scope="module")
def trained_sop():
    """An untrained, tiny SOP behind the public API (the checks come before any weight)."""
    import torch

    from cosmo_sop.models import ConvRegressor, SumOfParts
    from cosmo_sop.models.trained import TrainedSOP

    torch.manual_seed(0)
    backbone = ConvRegressor(2, input_size=24, widths=(4, 8, 8), kernel_size=3, hidden=(16, 8))
    model = SumOfParts.from_backbone(
        backbone, (2, 24, 24), patch_tokens=6, n_heads=2, d_model=8, n_groups=5
    )
    return TrainedSOP(model, None, {})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.nan, "kappa: holds NaN or infinity in 1 pixel(s), first at index (1, 0, 3, 4)"),
        (
            1e30,
            "kappa: holds values above 1e+06 in magnitude (up to 1e+30); convergence maps are "
            "of order 0.01: is the map mis-scaled?",
        ),
    ],
)
def test_the_api_refuses_a_nan_or_huge_map(trained_sop, value, problem):
    kappa = np.random.default_rng(0).normal(0, 0.01, (2, 2, 24, 24))
    assert trained_sop.predict(kappa).shape == (2, 2)
    kappa[1, 0, 3, 4] = value
    with pytest.raises(InputError) as info:
        trained_sop.explain(kappa)
    assert str(info.value) == problem
    with pytest.raises(InputError, match="expected maps of shape"):
        trained_sop.explain(kappa[0, 0])


# --- 6. a read-only or full file system ---------------------------------------------------------


def _noise_argv(tmp_path: Path, output: Path) -> list[str]:
    from fixtures.runs import write_stores

    patches, _ = write_stores(tmp_path / "stores")
    return ["noise", "--input", str(patches), "--output", str(output), "--level", "noiseless"]


def _train_argv(tmp_path: Path, output: Path) -> list[str]:
    from fixtures.runs import tiny_config, write_stores

    patches, _ = write_stores(tmp_path / "stores")
    config = json.dumps(tiny_config())
    return ["train-backbone", "--patches", str(patches), "--output", str(output)] + [
        "--config-json",
        config,
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
@pytest.mark.parametrize("command", ["ingest", "noise", "train-backbone"])
def test_a_read_only_results_folder_is_one_line(tmp_path, capsys, command):
    results = tmp_path / "results"
    results.mkdir()
    output = results / ("run" if command == "train-backbone" else "patches.zarr")
    if command == "ingest":
        root, config = _release(tmp_path)
        argv = _ingest_argv(root, output, config)
    else:
        argv = (_noise_argv if command == "noise" else _train_argv)(tmp_path, output)
    results.chmod(0o555)
    try:
        assert main(argv) == 2
    finally:
        results.chmod(0o755)
    line = _one_error_line(capsys, command)
    assert line.startswith(f"{output}: ") and "Permission denied [EACCES]" in line
    assert list(results.iterdir()) == []


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_naming_the_store(tmp_path, capsys, monkeypatch):
    output = tmp_path / "out" / "patches.zarr"
    argv = _noise_argv(tmp_path, output)
    monkeypatch.setattr(xr.Dataset, "to_zarr", _disk_full)
    assert main(argv) == 2
    assert _one_error_line(capsys, "noise") == (
        f"{output}: cannot write: No space left on device [ENOSPC]"
    )
    assert list(output.parent.iterdir()) == []  # no temporary left


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch):
    import torch

    from cosmo_sop.training.checkpoint import write_checkpoint

    path = tmp_path / "run" / "checkpoint.pt"
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    with pytest.raises(InputError) as info:
        write_checkpoint(path, "hash", model=torch.nn.Linear(2, 2).state_dict())
    assert str(info.value) == f"{path}: cannot write: No space left on device [ENOSPC]"
    assert list(path.parent.iterdir()) == []


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "ro" / "run"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    argv = _train_argv(tmp_path, run_dir)
    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(argv) == 2
    assert _one_error_line(capsys, "train-backbone") == (
        f"{run_dir}: cannot write: Read-only file system [EROFS]"
    )


def test_any_other_file_system_error_is_one_line(tmp_path, capsys, monkeypatch):
    from cosmo_sop.training import runs

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/shared/results/x")

    monkeypatch.setattr(runs, "train_backbone", denied)
    argv = ["train-backbone", "--patches", "p.zarr", "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    assert _one_error_line(capsys, "train-backbone") == (
        "/shared/results/x: Permission denied [EACCES]"
    )


# --- 7. YAML errors with their place -----------------------------------------------------------


def test_a_yaml_error_names_file_line_column_and_the_line(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("seed: 1\ningest:\n  bins: [1, 2\n  patch_size: 9\n")
    assert main(["config", "--config", str(config)]) == 2
    assert _one_error_line(capsys, "config") == (
        f"{config}:4:13: not valid YAML: expected ',' or ']', but got ':' (while parsing a "
        "flow sequence begun at 3:9), at line 'patch_size: 9'"
    )


# --- 8. a closed pipe -------------------------------------------------------------------------


class _ClosedPipe:
    """Standard output whose reader has gone (``| head -1`` after its line)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def test_config_into_a_closed_pipe_exits_quietly(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["config"]) == 0
    assert capsys.readouterr().err == ""


def test_config_piped_into_head_leaves_no_traceback():
    result = subprocess.run(
        f"{sys.executable} -m cosmo_sop config | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.startswith("seed:") and result.stderr == ""
