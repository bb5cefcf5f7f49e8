"""Stores written in parts by several jobs (parallel.cosmologies_per_job) against the store one
job writes: equal bit for bit, whatever the order of the parts; and dask.distributed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from fixtures.cosmogrid import write_release
from fixtures.stores import assert_same_store

from cosmo_sop import layout, scheduler
from cosmo_sop.cli import main
from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.fanout import part_count, part_regions
from cosmo_sop.ingest.run import run as run_ingest
from cosmo_sop.segmentation import run as run_segmentation
from cosmo_sop.sources import cosmogrid

N_PATCH = 12  # centres_nside 1
# Chunks of 3 maps, parts of 2 maps (one cosmology of 2 permutations): most part bounds fall
# inside a chunk and must move up to the next one.
INGEST = {
    "bins": [1, 2],
    "patch_size": 9,
    "resolution_arcmin": 220.0,
    "centres_nside": 1,
    "chunk_samples": 3 * N_PATCH,
}
SEGMENTATION = {"max_segments": 8, "min_distance_pixels": 1}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), n_cosmologies=5, n_perms=2, nside=16)


def _config(release, **parallel) -> dict:
    return validate_config(
        {
            "source": "cosmogrid",
            "cosmogrid": {"root": str(release.root), "perms": 2},
            "ingest": INGEST,
            "segmentation": SEGMENTATION,
            "parallel": parallel,
            "backbone": {"widths": [4, 8], "kernel_size": 2, "hidden": [8]},
            "sop": {"patch_tokens": 3, "n_heads": 2, "d_model": 8},
        }
    )


def _in_parts(step, config, n_parts, order, **paths) -> Path:
    """Run ``step`` as its start job, its part jobs in ``order`` and its finishing job."""
    step(config, part="start", n_parts=n_parts, **paths)
    for part in order:
        step(config, part=part, n_parts=n_parts, workers=2, **paths)
    return step(config, part="finish", n_parts=n_parts, **paths)


@pytest.fixture(scope="module")
def single(release, tmp_path_factory):
    """The patch and segment stores of one job each."""
    folder = tmp_path_factory.mktemp("single")
    config = _config(release)
    patches = run_ingest(config, root=release.root, output=folder / "patches.zarr", workers=2)
    segments = run_segmentation(
        config, input_store=patches, output_store=folder / "segments.zarr", workers=2
    )
    return patches, segments


def test_part_regions_cover_the_samples_in_whole_chunks():
    cosmology = np.repeat(["a", "b", "c", "d", "e"], 24)  # 2 maps of 12 patches each
    regions = part_regions(cosmology, chunk=36, cosmologies_per_job=1, n_parts=5)
    assert regions == [(0, 36), (36, 72), (72, 72), (72, 108), (108, 120)]
    assert part_regions(cosmology, 36, 2, 4)[-1] == (120, 120)  # planned more: empty
    assert part_count(5, 2) == 3
    with pytest.raises(InputError, match="planned 2"):
        part_regions(cosmology, 36, 2, 2)
    with pytest.raises(InputError, match="consecutive"):
        part_regions(["a", "b", "a"], 1, 1, 3)


def test_ingest_and_segmentation_in_parts_equal_one_job_bit_for_bit(release, single, tmp_path):
    config = _config(release, cosmologies_per_job=1)
    n_parts = part_count(5, 1)
    patches = _in_parts(
        run_ingest,
        config,
        n_parts,
        [4, 0, 2, 1, 3],
        root=release.root,
        output=tmp_path / "patches.zarr",
    )
    assert_same_store(patches, single[0])
    segments = _in_parts(
        run_segmentation,
        config,
        n_parts,
        [3, 1, 4, 2, 0],
        input_store=patches,
        output_store=tmp_path / "segments.zarr",
    )
    assert_same_store(segments, single[1])
    # Nothing of the parts is left but their records (Snakemake's temporary files).
    records = sorted(p.name for p in layout.parts_dir(patches).iterdir())
    assert records == sorted(["plan.json"] + [f"part-{i}.json" for i in range(n_parts)])


def test_the_command_line_runs_the_parts(release, single, tmp_path):
    """As the workflow calls it: the parts options on the command line, not in the config."""
    output = tmp_path / "patches.zarr"
    keys = {
        "source": "cosmogrid",
        "cosmogrid": {"root": str(release.root), "perms": 2},
        "ingest": INGEST,
    }
    common = ["--config-json", json.dumps(keys)]
    paths = ["ingest", "--root", str(release.root), "--output", str(output)]
    options = ["--parts", "3", "--cosmologies-per-job", "2"]
    for part in ("start", "2", "1", "0", "finish"):
        assert main([*paths, *common, *options, "--part", part]) == 0
    assert_same_store(output, single[0])


def test_an_unfinished_part_leaves_no_store(release, tmp_path):
    config = _config(release, cosmologies_per_job=2)
    output = tmp_path / "patches.zarr"
    paths = {"root": release.root, "output": output}
    run_ingest(config, part="start", n_parts=3, **paths)
    run_ingest(config, part=0, n_parts=3, **paths)
    run_ingest(config, part=2, n_parts=3, **paths)
    with pytest.raises(InputError, match="part 1 of .* is not complete"):
        run_ingest(config, part="finish", n_parts=3, **paths)
    assert not output.exists()
    with pytest.raises(InputError, match="planned 2"):
        run_ingest(config, part="start", n_parts=2, **paths)


def test_parts_skip_bad_maps_as_one_job_does(tmp_path):
    release = write_release(tmp_path / "release", n_cosmologies=4, n_perms=2, nside=16)
    maps = cosmogrid.list_maps(release.root, "grid", "all", 2)
    with h5py.File(maps[5].path, "r+") as file:  # a NaN in cosmology 3's second map
        file["kg/stage3_lensing2"][100] = np.nan
    config = _config(release, cosmologies_per_job=1)
    config["ingest"]["on_bad_map"] = "skip"
    with pytest.warns(UserWarning):
        single = run_ingest(config, root=release.root, output=tmp_path / "single.zarr")
    with pytest.warns(UserWarning):
        parts = _in_parts(
            run_ingest, config, 4, [3, 2, 1, 0], root=release.root, output=tmp_path / "p.zarr"
        )
    assert_same_store(parts, single)
    assert str(maps[5].path) in xr.open_zarr(parts).attrs["skipped_maps"]
    assert not layout.parts_store(parts).exists()


def test_a_dask_distributed_scheduler_computes_the_same_stores(release, single, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        config = _config(release, dask_scheduler=cluster.scheduler_address)
        patches = run_ingest(config, root=release.root, output=tmp_path / "patches.zarr")
        segments = run_segmentation(
            config, input_store=patches, output_store=tmp_path / "segments.zarr"
        )
    assert_same_store(patches, single[0])
    assert_same_store(segments, single[1])


def test_an_unreachable_scheduler_is_one_line(release, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT", "2s")
    output = tmp_path / "patches.zarr"
    root = str(release.root)
    status = main(
        [
            "ingest",
            "--root",
            root,
            "--output",
            str(output),
            "--dask-scheduler",
            "tcp://127.0.0.1:9",
            "--config-json",
            json.dumps(
                {"source": "cosmogrid", "cosmogrid": {"root": root, "perms": 2}, "ingest": INGEST}
            ),
        ]
    )
    assert status == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("cosmo-sop ingest: error: config key 'parallel.dask_scheduler'")
    assert "tcp://127.0.0.1:9" in message and len(message.splitlines()) == 1
    assert not output.exists() and not os.listdir(tmp_path)
