"""The Snakemake workflow itself: lint, and a real end-to-end run on a tiny config."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from fixtures.slurm import slurm_config
from fixtures.workflow import (
    ROOT,
    SNAKEMAKE,
    job_counts,
    parsed_rules,
    run_snakemake,
    shared_workflow_config,
    tiny_workflow_config,
)

from cosmo_sop import layout
from cosmo_sop.models import load_sop

#: Rules without ``benchmark:``, and why.
NO_BENCHMARK = {
    "all": "gathers the targets and runs nothing (no shell): Snakemake runs no job of it, so "
    "no record would be written",
}


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint", "--directory", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict[str, dict]:
    """The workflow as Snakemake parses it, with the tiny config and every task, in one job per
    step and with the data stage in parts (the rules the Snakefile defines only then)."""
    configs = {"one job": shared_workflow_config(), "parts": slurm_config()}
    return parsed_rules(tmp_path_factory.mktemp("parsed"), configs)


def _rules_in_the_source() -> set[str]:
    """The name of every rule the Snakefile and workflow/rules/*.smk define, in any branch."""
    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    text = "\n".join(path.read_text() for path in sources)
    pattern = r"^\s*(?:rule (\w+)\s*:|use rule \w+ as (\w+))"
    return {name for pair in re.findall(pattern, text, re.MULTILINE) for name in pair if name}


def test_every_rule_writes_a_benchmark_record_beside_its_log(parsed):
    """Every rule has a `benchmark:` (Snakemake's record of each job's time and memory, which
    the report's table of where the time went reads), at layout.benchmark: the folder named
    after the rule, the file after the job's log. Checked on the rules as Snakemake parses them,
    in both branches of the Snakefile; a rule of the source in neither would fail."""
    rules = {name: rule for run in parsed.values() for name, rule in run["rules"].items()}
    source = _rules_in_the_source()
    assert {"ingest_part", "train_vit_maps_sop", "report", "all"} <= source
    assert source <= set(rules), f"rules parsed under neither config: {source - set(rules)}"
    missing = sorted(name for name, rule in rules.items() if rule["benchmark"] is None)
    assert missing == sorted(NO_BENCHMARK), f"rules without a benchmark: directive: {missing}"
    for name in NO_BENCHMARK:
        assert not rules[name]["runs"], f"rule {name} runs a job: give it a benchmark"
    results = Path(shared_workflow_config()["results"])
    for name, rule in rules.items():
        if name in NO_BENCHMARK:
            continue
        (log,) = rule["log"]
        assert Path(rule["benchmark"]) == layout.benchmark(results, name, Path(log).stem), name


def test_the_report_waits_for_the_record_of_every_other_job(parsed, tmp_path):
    """The report rule's inputs hold the benchmark record of every job but its own, and add
    no job: per rule, as many records as a dry run plans jobs (the data stage in parts: 6 mock
    cosmologies, 3 per job)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(slurm_config()))
    dry = run_snakemake(workdir, configfile, "--cores", "2", "--dry-run", "--quiet", "rules")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = job_counts(dry.stdout + dry.stderr)
    assert planned["ingest_part"] == 2 and planned["segment_part"] == 4
    assert planned.pop("all") == 1 and planned.pop("report") == 1
    waited = parsed["parts"]["report_benchmarks"]
    assert isinstance(waited, list), waited
    assert len(set(waited)) == len(waited)
    per_rule = {}
    for path in waited:
        per_rule[layout.benchmark_rule(path)] = per_rule.get(layout.benchmark_rule(path), 0) + 1
    assert per_rule == planned


def test_invalid_config_stops_before_any_job(tmp_path):
    config = tiny_workflow_config(tmp_path)
    config["mock"]["nside"] = 33
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "--cores", "2")
    assert result.returncode != 0
    assert "nside" in result.stderr
    assert not (tmp_path / "results").exists()


def _duplicate_level(config: dict) -> None:
    config["noise"][1]["name"] = "noiseless"


def _cosmogrid_without_root(config: dict) -> None:
    config["source"] = "cosmogrid"


def _patch_too_small(config: dict) -> None:
    config["ingest"]["patch_size"] = 9  # the tiny backbone (widths [4, 8], kernel 3) needs 10


def _level_outside_results(config: dict) -> None:
    config["noise"][1]["name"] = ".."


@pytest.mark.parametrize(
    ("break_config", "message"),
    [
        (_duplicate_level, "config key 'noise' repeats a level name, 'noiseless'"),
        (_cosmogrid_without_root, "config key 'cosmogrid.root' must be set"),
        (_patch_too_small, "config key 'ingest.patch_size' = 9 is too small for the backbone"),
        (_level_outside_results, "config key 'noise.1.name' fails the schema: '..'"),
    ],
)
def test_the_clis_config_checks_stop_the_workflow_before_any_job(tmp_path, break_config, message):
    """Every check of the CLI's config validation runs when the workflow starts: one line
    naming the config file and the key, exit status 2, and no job (no results folder)."""
    config = tiny_workflow_config(tmp_path)
    break_config(config)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "--cores", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"{configfile}: {message}")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mock").exists()


@pytest.mark.slow
def test_demo_workflow_end_to_end(tiny_workflow):
    """The session's tiny run of the whole workflow (conftest.tiny_workflow): every output."""
    result = tiny_workflow.process
    assert result.returncode == 0, result.stderr[-4000:]

    results = tiny_workflow.results
    patches = xr.open_zarr(results / "patches.zarr")
    assert patches.kappa.dims == ("sample", "bin", "y", "x")
    assert patches.kappa.shape[1:] == (2, 12, 12)
    assert patches.sizes["sample"] == 6 * 12  # 6 cosmologies x 12 patches
    assert list(patches.bin.values) == [1, 3]

    for level in ("noiseless", "noisy"):
        noisy = xr.open_zarr(results / level / "patches.zarr")
        segments = xr.open_zarr(results / level / "segments.zarr")
        assert noisy.attrs["noise_level"] == level
        assert segments.segments.shape == (6 * 12, 12, 12)
        assert int(segments.segments.max()) < 12
        assert (results / level / "figures" / "segments.png").stat().st_size > 10_000
    clean = xr.open_zarr(results / "noiseless" / "patches.zarr").kappa.values
    assert (clean == patches.kappa.values).all()
    assert not (xr.open_zarr(results / "noisy" / "patches.zarr").kappa.values == clean).all()
    for figure in ("patches.png", "mock_overview.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000

    # Models per level: backbone, X-DNN and SOP, with test metrics and training curves.
    for level in ("noiseless", "noisy"):
        for model in ("backbone", "xdnn", "sop"):
            metrics = json.loads(
                (results / level / "models" / model / "test_metrics.json").read_text()
            )
            assert metrics["noise_level"] == level
            assert metrics["n_test_maps"] > 0 and set(metrics["mse"]) == {"Om", "s8"}
            assert (results / level / "figures" / f"training_{model}.png").stat().st_size > 10_000
    # SOP's floor and its interval against the backbone; the tau sweep on the first level only.
    sop_metrics = json.loads((results / "noiseless/models/sop/test_metrics.json").read_text())
    assert set(sop_metrics["floor"]["uniform_average"]) == {"Om", "s8"}
    assert sop_metrics["versus_backbone"]["n_cosmologies"] >= 1
    sweep = json.loads((results / "noiseless/models/sop_tau0.5/test_metrics.json").read_text())
    assert sweep["groups"]["keep_fraction"] == 0.5 and 0 < sweep["groups"]["sparsity"]["Om"] <= 1
    assert not (results / "noisy" / "models" / "sop_tau0.5").exists()
    # The science per level, and the report that gathers it.
    for level in ("noiseless", "noisy"):
        explanations = xr.open_zarr(results / level / "explanations.zarr")
        assert explanations.sizes["output"] == 2 and explanations.masks.dtype == bool
        for name in ("weights.csv", "verdicts.json", "faithfulness.csv", "faithfulness_curves.png"):
            assert (results / level / "science" / name).stat().st_size > 0, name
        summary = json.loads((results / level / "summary_statistics.json").read_text())
        assert summary
    page = (results / "report.html").read_text()
    assert "noiseless" in page and "noisy" in page and "data:image/png;base64" in page
    assert "The floor under SOP" in page and "Group size against error and sparsity" in page
    sop = load_sop(results / "noisy" / "models" / "sop")
    segments = xr.open_zarr(results / "noisy" / "segments.zarr").segments.values[:3]
    noisy = xr.open_zarr(results / "noisy" / "patches.zarr").kappa.values[:3]
    parts = sop.explain(noisy, segments)
    np.testing.assert_allclose(
        (parts.scores * parts.partial).sum(axis=1), parts.prediction, atol=1e-6
    )

    # Task vit_maps: the ViT and SOP around it on the first level, its science, and the report's
    # side-by-side table; SOP's groups are whole ViT patches.
    vit = results / "vit_maps" / "noiseless"
    for model in ("backbone", "sop"):
        assert json.loads((vit / "models" / model / "test_metrics.json").read_text())["mse"]
    for name in ("weights.csv", "verdicts.json", "faithfulness.csv"):
        assert (vit / "science" / name).stat().st_size > 0, name
    assert not (results / "vit_maps" / "noisy").exists()
    assert "Vision Transformer backbone" in page and "Noise level: noiseless, ViT backbone" in page
    vit_sop = load_sop(vit / "models" / "sop")
    assert vit_sop.model.backbone.config["architecture"] == "vit"
    vit_parts = vit_sop.explain(noisy)
    cells = vit_parts.masks.reshape(3, -1, 3, 4, 3, 4).astype(float).mean(axis=(3, 5))
    assert set(np.unique(cells)) <= {0.0, 1.0}

    # The image and text tasks: their records, and their tables in the report.
    for task in ("vit_images", "bert_text"):
        record = json.loads((results / task / "task_metrics.json").read_text())
        assert record["task"] == task and record["tables"], task
        assert f'id="task-{task}"' in page
    text_sop = load_sop(results / "bert_text" / "models" / "sop")  # the MiniLM reads back
    assert text_sop.model.backbone.config["architecture"] == "minilm"

    # A benchmark record of every job the run ran (per rule, as many as Snakemake's job stats
    # count), and the report's table of where the time went lists them all but its own.
    ran = job_counts(result.stdout + result.stderr)
    assert ran.pop("all") == 1 and ran["report"] == 1
    records = sorted(layout.benchmarks(results).glob("*/*.tsv"))
    per_rule = {rule: [p for p in records if layout.benchmark_rule(p) == rule] for rule in ran}
    assert {rule: len(paths) for rule, paths in per_rule.items()} == ran
    assert len(records) == sum(ran.values())
    timing = page[page.index('<h2 id="timing">') :]
    for rule, count in ran.items():
        row = f'<tr><td>{rule}</td><td class="num">{count}</td>'
        assert (row in timing) == (rule != "report"), rule
    total = sum(ran.values()) - 1
    assert f'<tr><td>all jobs</td><td class="num">{total}</td>' in timing
    assert f"{total} jobs ran for " in timing


@pytest.mark.slow
def test_a_rerun_plans_only_what_changed(tiny_workflow):
    """Nothing left to do on a rerun; a new noise level reruns only its own branch (dry runs of
    the session's tiny run, which they leave as it is)."""
    assert tiny_workflow.process.returncode == 0, tiny_workflow.process.stderr[-4000:]
    workdir = tiny_workflow.workdir
    dry = run_snakemake(workdir, tiny_workflow.configfile, "--cores", "2", "--dry-run")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    config = copy.deepcopy(tiny_workflow.config)
    config["noise"].append({"name": "deep", "n_gal_arcmin2": 30.0})
    configfile = workdir / "config_with_a_new_level.yaml"
    configfile.write_text(yaml.safe_dump(config))
    dry = run_snakemake(workdir, configfile, "--cores", "2", "--dry-run", "--quiet", "rules")
    planned = dry.stdout + dry.stderr
    assert "add_noise" in planned and "segment" in planned and "train_sop" in planned
    assert "simulate_mock" not in planned and "ingest " not in planned
