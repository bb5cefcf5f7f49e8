"""The workflow through its SLURM profile on a real single-node SLURM (.ci/slurm-up, as root, only
when asked: COSMO_SOP_TEST_SLURM=1): the tiny workflow's data stage in parts and a backbone's
training go through sbatch, and their results equal the session's local run's, file for file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from fixtures.slurm import LEVEL, OPT_IN, PROFILE
from fixtures.stores import assert_same_store
from fixtures.workflow import ROOT
from safetensors.torch import load_file

from cosmo_sop import layout

#: The jobs the SLURM run must have submitted (rules whose sbatch log folder must exist): 11
#: jobs with the two parts of each fanned-out step.
SUBMITTED = ("simulate_mock", "ingest_start", "ingest_part", "ingest", "add_noise")
SUBMITTED += ("segment_start", "segment_part", "segment", "train_backbone")


@pytest.mark.slow
def test_the_workflow_through_the_slurm_profile_equals_a_local_run(slurm_run, tiny_workflow):
    cluster = slurm_run
    assert cluster.slurm_up.returncode == 0, cluster.slurm_up.stdout + cluster.slurm_up.stderr
    ran = cluster.process
    assert ran.returncode == 0, ran.stderr[-3000:]
    print(f"SLURM run: {cluster.seconds:.0f} s")
    assert tiny_workflow.process.returncode == 0, tiny_workflow.process.stderr[-3000:]

    logs = cluster.workdir / ".snakemake" / "slurm_logs"
    for rule in SUBMITTED:  # each job went through sbatch: the plugin keeps its log per rule
        assert list(logs.glob(f"rule_{rule}/**/*.log")), rule
    assert ran.stderr.count("has been submitted with SLURM jobid") == len(SUBMITTED) + 2

    results_local = tiny_workflow.results
    results_cluster = cluster.workdir / tiny_workflow.config["results"]
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


def test_without_the_opt_in_the_slurm_test_is_skipped_and_installs_nothing(tmp_path):
    """The README's test command, as root, changes nothing on the machine: without
    COSMO_SOP_TEST_SLURM=1 the SLURM test is skipped with its one-line reason and neither
    .ci/slurm-up nor a package manager runs (stand-ins first on PATH note any call)."""
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt", "dpkg", "slurmctld", "slurmd", "munged", "sinfo", "sbatch"):
        stand_in = bin_dir / tool
        stand_in.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 1\n')
        stand_in.chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key != OPT_IN}
    environment["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    test = "tests/test_slurm.py::test_the_workflow_through_the_slurm_profile_equals_a_local_run"
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
        + ["--basetemp", str(tmp_path / "session")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "1 skipped" in ran.stdout, ran.stdout[-3000:]
    assert f"SLURM test off: set {OPT_IN}=1" in ran.stdout, ran.stdout[-3000:]
    assert not calls.exists(), calls.read_text()
