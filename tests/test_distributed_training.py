"""Data-parallel training: 2 CPU processes (torchrun, gloo) against one process.

One ``torchrun --standalone --nproc_per_node 2`` launch (``fixtures/distributed.py``) trains, on
the tiny stores of ``fixtures/runs.py``: the backbone, SOP around the single-process backbone, a
backbone resumed from a single-process checkpoint, and a backbone interrupted after its first
epoch (then resumed by one process). The config exercises everything that could part the two:
batches of 15 maps (shards of 8 and 7: the loss weighting), augmentation and random masks (drawn
for the whole global batch), SOP's sampled groups (``train_groups`` 2 of 4), maps read lazily
from Zarr in a DataLoader worker, one thread (``training.threads: 1``).

Tolerance: after 2 epochs the weights agree to ``atol 1e-6 + rtol 1e-4`` and the losses to
``rtol 1e-5`` (measured: at most 3e-8 absolute difference of a weight, 1e-7 relative of a
loss). They are not bit-equal because float addition is not associative: each process sums its
shard's losses and gradients and gloo's all-reduce adds the shards' sums, in another order than
one process summing the whole batch. Without the shard-matched random draws the weights differ
by ~6e-3 (measured), far outside the tolerance.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.distributed import Interrupted, interrupting
from fixtures.runs import tiny_config, write_stores
from fixtures.workflow import tiny_workflow_config

from cosmo_sop.batch_shard import BatchShard, computing_shard, draw_rows
from cosmo_sop.errors import InputError
from cosmo_sop.launch import training_launcher
from cosmo_sop.layout import CHECKPOINT, METRICS, SIDECAR, TEST_METRICS, WEIGHTS
from cosmo_sop.models.weights import load_sidecar, load_weights
from cosmo_sop.training import distributed
from cosmo_sop.training.batches import EpochBatchSampler
from cosmo_sop.training.runs import train_backbone, train_sop

TESTS = Path(__file__).resolve().parent
WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
LOSS_RTOL = 1e-5
LAUNCH_TIMEOUT_S = 300
#: gloo connects the processes through the loopback interface: a CI container's host name
#: may resolve to an address it cannot reach.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if sys.platform == "linux" else {}


def _config() -> dict:
    config = tiny_config("patches")
    config["training"].update(
        batch_size=15,  # 64 training maps: 4 batches, shards of 8 and 7
        threads=1,
        progress=False,
        device="cpu",
        num_workers=1,
        memory_budget_gib=1e-6,  # read lazily, in the worker
    )
    config["sop"]["train_groups"] = 2
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("distributed")
    patches, _ = write_stores(folder)
    config = _config()
    single, ddp = folder / "single", folder / "ddp"
    train_backbone(patches, single / "backbone", config)
    train_sop(patches, None, single / "backbone", single / "sop", config)
    with interrupting(ddp / "resumed", 2), pytest.raises(Interrupted):
        train_backbone(patches, ddp / "resumed", config)  # one epoch, for 2 processes to finish

    config_json = json.dumps(config)
    train = ["--patches", str(patches), "--config-json", config_json, "--output"]
    commands = [
        ["train-backbone", *train, str(ddp / "backbone")],
        ["train-sop", "--backbone", str(single / "backbone"), *train, str(ddp / "sop")],
        ["train-backbone", *train, str(ddp / "resumed")],
        ["train-backbone", *train, str(ddp / "interrupted")],
    ]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node", "2", "-m", "fixtures.distributed"]
    launch += [str(ddp), json.dumps(commands), str(ddp / "interrupted"), "2"]
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    start = time.perf_counter()
    result = subprocess.run(
        launch,
        env={**LOOPBACK, **os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]

    interrupted = sorted(p.name for p in (ddp / "interrupted").iterdir())
    shutil.copytree(ddp / "interrupted", folder / "resumed_by_one")
    train_backbone(patches, folder / "resumed_by_one", config)
    return {
        "single": single,
        "ddp": ddp,
        "folder": folder,
        "interrupted": interrupted,
        "seconds": seconds,
    }


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / METRICS, newline="") as f:
        return list(csv.DictReader(f))


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (model.safetensors holds the best epoch's)."""
    return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _assert_same_training(run: Path, reference: Path) -> None:
    for read in (lambda r: load_weights(r / WEIGHTS), _last_weights):
        weights, expected = read(run), read(reference)
        assert weights.keys() == expected.keys()
        for name, value in weights.items():
            torch.testing.assert_close(value, expected[name], **WEIGHT_TOLERANCE, msg=name)
    rows, expected_rows = _metrics(run), _metrics(reference)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected_rows]
    for row, expected_row in zip(rows, expected_rows, strict=True):
        for key in row:
            if key.startswith(("train_", "val_")) or key == "lr":
                assert float(row[key]) == pytest.approx(float(expected_row[key]), rel=LOSS_RTOL)
    got, want = load_sidecar(run / WEIGHTS)["metrics"], load_sidecar(reference / WEIGHTS)["metrics"]
    assert got["best_epoch"] == want["best_epoch"]
    assert got["best_val_loss"] == pytest.approx(want["best_val_loss"], rel=LOSS_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["backbone", "sop"])
def test_two_processes_train_as_one(runs, model):
    """Same weights, losses, best epoch and test metrics as one process, within tolerance."""
    run, reference = runs["ddp"] / model, runs["single"] / model
    _assert_same_training(run, reference)
    test, expected = (json.loads((r / TEST_METRICS).read_text()) for r in (run, reference))
    for name, value in expected["mse_standardised"].items():
        assert test["mse_standardised"][name] == pytest.approx(value, rel=1e-4)
    assert load_sidecar(run / WEIGHTS)["metrics"]["processes"] == 2
    assert load_sidecar(reference / WEIGHTS)["metrics"]["processes"] == 1
    assert runs["seconds"] < 120  # the whole launch: four trainings in two processes


@pytest.mark.slow
@pytest.mark.parametrize("model", ["backbone", "sop"])
def test_process_0_alone_writes_the_files_of_one_process(runs, model):
    """Process 1 ran under an audit hook refusing any change under ddp/ (the launch would have
    failed); the run folder holds exactly the files of a single-process run."""
    files = sorted(p.name for p in (runs["ddp"] / model).iterdir())
    assert files == sorted(p.name for p in (runs["single"] / model).iterdir())
    assert {WEIGHTS, SIDECAR, METRICS, TEST_METRICS} <= set(files)
    assert not (runs["ddp"] / "probe").exists()  # the hook's own check refused it


@pytest.mark.slow
def test_runs_resume_across_process_counts(runs):
    """A single-process checkpoint finished by 2 processes, and a 2-process checkpoint finished
    by one process, give the uninterrupted run's weights and metrics."""
    assert runs["interrupted"] == sorted(["checkpoint.pt", METRICS])
    assert len(_metrics(runs["ddp"] / "interrupted")) == 1
    _assert_same_training(runs["ddp"] / "resumed", runs["single"] / "backbone")
    _assert_same_training(runs["folder"] / "resumed_by_one", runs["single"] / "backbone")


# --- the pieces, in one process ------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("total", [1, 7, 8, 15])
def test_shards_cover_every_row_once(total, size):
    shards = [distributed.shard_of(total, distributed.World(r, r, size)) for r in range(size)]
    rows = np.concatenate([np.arange(s.start, s.stop) for s in shards])
    assert rows.tolist() == list(range(total))
    assert max(s.size for s in shards) - min(s.size for s in shards) <= 1
    if total >= size:  # as training requires: DDP's average of weighted shard means
        losses = np.random.default_rng(total).random(total)
        world = distributed.World(size=size)
        weighted = [
            distributed.loss_weight(s, world) * losses[s.start : s.stop].mean() for s in shards
        ]
        assert np.mean(weighted) == pytest.approx(losses.mean())


def test_shard_samplers_read_the_global_batches():
    batches = EpochBatchSampler(23, 5, shuffle=True, seed=3, drop_last=True)
    batches.set_epoch(2)
    world = [distributed.World(r, r, 3) for r in range(3)]
    samplers = [distributed.ShardBatchSampler(batches, w) for w in world]
    parts = [list(s) for s in samplers]
    assert [sum((p[b] for p in parts), []) for b in range(len(batches))] == list(batches)
    assert [len(s) for s in samplers] == [4, 4, 4]
    assert samplers[2].shard(0) == BatchShard(4, 5, 5)
    small = distributed.ShardBatchSampler(EpochBatchSampler(7, 5, shuffle=False), world[2])
    assert list(small) == [[4]] and len(small) == 1  # the last batch's shard is empty: skipped
    with pytest.raises(InputError, match="training.batch_size"):
        distributed.check_batches(
            EpochBatchSampler(2, 5, shuffle=False), world[0], "training.batch_size"
        )


def test_draws_within_a_shard_are_the_global_batch_rows():
    def draw(n):
        return torch.rand(n, 3, generator=torch.Generator().manual_seed(1))

    whole = draw(8)
    assert torch.equal(draw_rows(draw, 8), whole)
    with computing_shard(BatchShard(3, 6, 8)):
        assert torch.equal(draw_rows(draw, 3), whole[3:6])
        with pytest.raises(ValueError, match="3 rows"):
            draw_rows(draw, 4)


def test_outside_torchrun_training_is_one_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched() == distributed.World()
    with distributed.session("cpu") as world:
        assert not world.parallel and world.main
        assert torch.equal(
            distributed.all_reduce_sum([1.0, 2.0]), torch.tensor([1.0, 2.0]).double()
        )
        distributed.barrier()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launched() == distributed.World()


def test_launchers():
    assert training_launcher(0) == training_launcher(1) == "python"
    assert training_launcher(2) == "torchrun --standalone --nproc_per_node 2"
    multi = training_launcher(4, nodes=3)
    assert multi.startswith("srun --nodes 3 --ntasks-per-node 1 torchrun --nnodes 3")
    assert "--nproc_per_node 4" in multi and "--rdzv_backend c10d" in multi
    assert "{" not in multi  # Snakemake formats the shell command
    with pytest.raises(ValueError):
        training_launcher(2, nodes=0)


def test_the_training_rules_launch_torchrun_for_several_gpus(tmp_path):
    config = tiny_workflow_config(tmp_path)
    config["training"]["gpus"] = 2
    configfile = tmp_path / "config.yaml"
    configfile.write_text(json.dumps(config))  # JSON is YAML
    dry_run = [sys.executable, "-m", "snakemake", "--snakefile", str(TESTS.parent / "Snakefile")]
    dry_run += ["--directory", str(tmp_path), "--configfile", str(configfile)]
    result = subprocess.run(
        [*dry_run, "--cores", "2", "--dry-run", "--printshellcmds"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if " -m cosmo_sop " in line]
    training = [line for line in commands if " -m cosmo_sop train-" in line]
    assert {"train-backbone", "train-xdnn", "train-sop"} <= {
        line.split(" -m cosmo_sop ")[1].split()[0] for line in training
    }
    launch = "torchrun --standalone --nproc_per_node 2 -m cosmo_sop train-"
    assert all(launch in line for line in training)
    assert not any("torchrun" in line for line in commands if line not in training)
