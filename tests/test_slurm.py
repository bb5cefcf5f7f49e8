"""The workflow through its SLURM profile on a real single-node SLURM (.ci/slurm-up, as root):
the tiny workflow's data stage in parts and a backbone's training go through sbatch, and their
results equal a local run's, file for file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures.stores import assert_same_store
from fixtures.workflow import tiny_workflow_config
from safetensors.torch import load_file

from cosmo_sop import layout

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
LEVEL = "noiseless"
#: The jobs the SLURM run must have submitted (rules whose sbatch log folder must exist): 11
#: jobs with the two parts of each fanned-out step.
SUBMITTED = ("simulate_mock", "ingest_start", "ingest_part", "ingest", "add_noise")
SUBMITTED += ("segment_start", "segment_part", "segment", "train_backbone")


@pytest.fixture(scope="module")
def slurm():
    """A running SLURM: started by .ci/slurm-up (which needs root), or one already up."""
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        pytest.skip("no SLURM here and not root: .ci/slurm-up cannot start one")
    started = subprocess.run(
        ["bash", str(ROOT / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=600
    )
    assert started.returncode == 0, started.stdout + started.stderr


def _config() -> dict:
    """The tiny workflow with paths relative to the run's folder (the stores record the mock's
    root, which must read the same in both runs)."""
    config = tiny_workflow_config(Path())
    config["training"]["threads"] = 1  # the same arithmetic in a 1-CPU job and locally
    return config


def _targets(results: Path) -> list[str]:
    model = layout.model_dir(results, LEVEL, "backbone")
    return [str(layout.segments(results, LEVEL)), str(model / layout.TEST_METRICS)]


def _run(workdir: Path, config: dict, *options: str) -> subprocess.CompletedProcess:
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    command = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile)]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [*command, *options, *_targets(Path(config["results"]))],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment,
        cwd=workdir,
    )


def _profile_for_this_node(folder: Path) -> Path:
    """The SLURM profile as README tells a user to adapt it, here to a 2-CPU node: one CPU and
    4 GB per job, so that two run at once; executor, partitions and the rest unchanged."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    profile["set-threads"] = dict.fromkeys(profile["set-threads"], 1)
    for resources in profile["set-resources"].values():
        resources["mem_mb"] = min(resources["mem_mb"], 4000)
    # No slurmdbd on the test's node, so no sacct: job states come from squeue.
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 10  # jobs take ~25 s
    profile["slurm-keep-successful-logs"] = True  # the test reads them
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    shutil.copy(PROFILE / "partitions.yaml", folder / "partitions.yaml")
    return folder


@pytest.mark.slow
def test_the_workflow_through_the_slurm_profile_equals_a_local_run(slurm, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir()
    cluster.mkdir()
    ran = _run(local, _config(), "--cores", "2")
    assert ran.returncode == 0, ran.stderr[-3000:]

    config = _config()
    config["parallel"] = {"cosmologies_per_job": 3}  # 2 ingest and 2 segmentation part jobs
    profile = _profile_for_this_node(tmp_path / "profile")
    started = time.perf_counter()
    ran = _run(cluster, config, "--profile", str(profile))
    seconds = time.perf_counter() - started
    assert ran.returncode == 0, ran.stderr[-3000:]
    print(f"SLURM run: {seconds:.0f} s")

    for rule in SUBMITTED:  # each job went through sbatch: the plugin keeps its log per rule
        assert list((cluster / ".snakemake" / "slurm_logs").glob(f"rule_{rule}/**/*.log")), rule
    assert ran.stderr.count("has been submitted with SLURM jobid") == len(SUBMITTED) + 2

    results_local, results_cluster = local / config["results"], cluster / config["results"]
    for store in (layout.patches, layout.level_patches, layout.segments):
        args = () if store is layout.patches else (LEVEL,)
        assert_same_store(store(results_cluster, *args), store(results_local, *args))
    model = (LEVEL, "backbone")
    metrics = [
        json.loads((layout.model_dir(r, *model) / layout.TEST_METRICS).read_text())
        for r in (results_cluster, results_local)
    ]
    assert metrics[0] == metrics[1]
    weights = [
        load_file(layout.model_dir(r, *model) / layout.WEIGHTS)
        for r in (results_cluster, results_local)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[1])


def test_the_profile_sizes_every_rule_that_takes_all_cores():
    """A rule with ``threads: workflow.cores`` would ask SLURM for the profile's whole ``cores``;
    the profile names only rules that exist."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    rules, all_cores = set(), set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^ *(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            rules.add(name)
            if re.search(r"^\s*threads: workflow\.cores", block, re.M):
                all_cores.add(name)
    assert all_cores <= set(profile["set-threads"])
    assert set(profile["set-threads"]) | set(profile["set-resources"]) <= rules
