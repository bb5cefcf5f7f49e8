"""Where every result lives: the one module that spells out the ``results/`` tree.

The Snakemake rules (``workflow/rules/common.smk``), the steps that write a folder's files, the
report and the figures all take their paths from here, so a name changes in one place::

    results/
      patches.zarr                      ingest
      figures/{patches,mock_overview}.png, mock_halo_{counts,spectra,peaks,pdf}.png, mock_halos.json
      <level>/
        patches.zarr  segments.zarr     add_noise, segment
        models/<model>/                 train_backbone (backbone, xdnn), train_sop (sop)
          model.safetensors  model.json  metrics.csv  test_metrics.json  test_predictions.npz
        explanations.zarr               explain
        science/                        structures, faithfulness
        summary_statistics.json         summary_statistics (.npz beside it)
        figures/
      report.html                       report
      logs/
      benchmarks/<rule>/<job>.tsv       every job: Snakemake's record of its time and memory
      vit_maps/<level>/...              task vit_maps: models/, explanations.zarr, science/
      vit_images/  bert_text/           the image and text tasks (task_metrics.json last)

Functions take the results folder and a level name; pass ``"{level}"`` to get a Snakemake
pattern. Standard library only: the Snakefile imports this module before any rule runs.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CHECKPOINT",
    "EXAMPLE_GROUPS",
    "FAITHFULNESS_CSV",
    "FAITHFULNESS_CURVES",
    "FAITHFULNESS_STORE",
    "METRICS",
    "MOCK_FIGURE",
    "HALO_FIGURES",
    "HALO_DIAGNOSTICS",
    "MODELS",
    "PATCHES_FIGURE",
    "PURITY_CSV",
    "PURITY_SOP",
    "SEGMENTS_FIGURE",
    "SIDECAR",
    "TEST_METRICS",
    "TEST_PREDICTIONS",
    "VERDICTS",
    "WEIGHTS",
    "WEIGHTS_CSV",
    "WEIGHT_HISTOGRAMS",
    "explanations",
    "figures",
    "level_dir",
    "level_figures",
    "level_patches",
    "log",
    "model_dir",
    "sweep_model_dir",
    "sweep_keep_fraction",
    "SWEEP_PREFIX",
    "benchmark",
    "benchmark_rule",
    "benchmarks",
    "TASKS",
    "TASK_METRICS",
    "task_dir",
    "task_metrics",
    "patches",
    "parts_dir",
    "parts_plan",
    "parts_store",
    "part_record",
    "report",
    "science_dir",
    "segments",
    "shared_entries",
    "summary_statistics",
    "summary_statistics_predictions",
    "training_figure",
]

Folder = str | os.PathLike

#: The further tasks (config key ``tasks``), each a folder of ``results/``.
TASKS = ("vit_maps", "vit_images", "bert_text")
#: The record an image or text task writes last.
TASK_METRICS = "task_metrics.json"

#: The models trained per noise level, in display order.
MODELS = ("backbone", "xdnn", "sop")
#: Run folders of SOP at other group sizes are this prefix and tau, e.g. ``sop_tau0.3``.
SWEEP_PREFIX = "sop_tau"

# Figures of the data stage.
PATCHES_FIGURE = "patches.png"
MOCK_FIGURE = "mock_overview.png"
#: Physics checks of the halo mock (cosmo_sop/figures/halos.py) and the numbers they show.
HALO_FIGURES = {
    "counts": "mock_halo_counts.png",
    "spectra": "mock_halo_spectra.png",
    "peaks": "mock_halo_peaks.png",
    "pdf": "mock_halo_pdf.png",
}
HALO_DIAGNOSTICS = "mock_halos.json"
SEGMENTS_FIGURE = "segments.png"

# Files of a model's run folder.
WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.npz"

# Files of a level's science folder.
WEIGHTS_CSV = "weights.csv"
VERDICTS = "verdicts.json"
PURITY_SOP = "purity_sop.json"
WEIGHT_HISTOGRAMS = "weight_histograms.png"
EXAMPLE_GROUPS = "example_groups.png"
FAITHFULNESS_CSV = "faithfulness.csv"
FAITHFULNESS_STORE = "faithfulness.zarr"
FAITHFULNESS_CURVES = "faithfulness_curves.png"
PURITY_CSV = "purity.csv"


def patches(results: Folder) -> Path:
    """The noiseless patch store written by ``ingest``."""
    return Path(results) / "patches.zarr"


def figures(results: Folder) -> Path:
    """Figures of the data stage, shared by every level."""
    return Path(results) / "figures"


def level_dir(results: Folder, level: str) -> Path:
    """Everything downstream of one noise level."""
    return Path(results) / level


def level_patches(results: Folder, level: str) -> Path:
    return level_dir(results, level) / "patches.zarr"


def segments(results: Folder, level: str) -> Path:
    return level_dir(results, level) / "segments.zarr"


def model_dir(results: Folder, level: str, model: str) -> Path:
    """Run folder of one model (:data:`MODELS`): weights, sidecar, metrics, checkpoint."""
    return level_dir(results, level) / "models" / model


def sweep_model_dir(results: Folder, level: str, keep_fraction: float | str) -> Path:
    """Run folder of SOP trained at another group size tau (``sop.sweep_keep_fractions``)."""
    return level_dir(results, level) / "models" / f"{SWEEP_PREFIX}{keep_fraction}"


def sweep_keep_fraction(run_folder_name: str) -> float | None:
    """The tau of a :func:`sweep_model_dir` folder name, None for any other folder."""
    if not run_folder_name.startswith(SWEEP_PREFIX):
        return None
    try:
        return float(run_folder_name[len(SWEEP_PREFIX) :])
    except ValueError:
        return None


def explanations(results: Folder, level: str) -> Path:
    return level_dir(results, level) / "explanations.zarr"


def science_dir(results: Folder, level: str) -> Path:
    """Tables, records and figures of ``structures`` and ``faithfulness``."""
    return level_dir(results, level) / "science"


def summary_statistics(results: Folder, level: str) -> Path:
    return level_dir(results, level) / "summary_statistics.json"


def summary_statistics_predictions(results: Folder, level: str) -> Path:
    return summary_statistics(results, level).with_suffix(".npz")


def level_figures(results: Folder, level: str) -> Path:
    return level_dir(results, level) / "figures"


def training_figure(results: Folder, level: str, model: str) -> Path:
    return level_figures(results, level) / f"training_{model}.png"


def report(results: Folder) -> Path:
    return Path(results) / "report.html"


def log(results: Folder, name: str) -> Path:
    return Path(results) / "logs" / f"{name}.log"


def benchmarks(results: Folder) -> Path:
    """The folder of every job's benchmark record (:func:`benchmark`)."""
    return Path(results) / "benchmarks"


def benchmark(results: Folder, rule: str, name: str | None = None) -> Path:
    """The benchmark record of one job of ``rule``: the file of a rule's ``benchmark:``.

    Snakemake writes it when the job ends: a TSV of one header and one row with the columns
    ``s``, ``h:m:s``, ``max_rss``, ``max_vms``, ``max_uss``, ``max_pss``, ``io_in``,
    ``io_out``, ``mean_load`` and ``cpu_time`` (seconds, MiB, MiB read and written, CPU
    seconds); the report's table of where the time went reads them
    (:func:`cosmo_sop.report.inputs.read_benchmarks`).

    Parameters
    ----------
    results
        The results folder.
    rule
        The name of the rule, the folder of its jobs' records: the reader takes the rule from
        the folder (:func:`benchmark_rule`), never from the file name.
    name
        The job's name, as its log's (:func:`log`), e.g. ``"train_{model}_{level}"``: a
        Snakemake pattern with the rule's wildcards. Default: ``rule`` (a rule of one job).

    Returns
    -------
    Path
        ``results/benchmarks/<rule>/<name>.tsv``.
    """
    return benchmarks(results) / rule / f"{name or rule}.tsv"


def benchmark_rule(path: Folder) -> str:
    """The rule whose job wrote the benchmark record ``path`` (:func:`benchmark`)."""
    return Path(path).parent.name


def parts_dir(store: Folder) -> Path:
    """Where the jobs of a store written in parts meet (config key
    ``parallel.cosmologies_per_job``): a hidden folder beside it with the store being filled,
    its plan and one record per part (:mod:`cosmo_sop.fanout`)."""
    store = Path(store)
    return store.parent / ".parts" / store.name


def parts_store(store: Folder) -> Path:
    """The store being filled by the parts; it is moved onto ``store`` once complete."""
    return parts_dir(store) / "store.zarr"


def parts_plan(store: Folder) -> Path:
    """The plan of a store written in parts: the sample region of every part."""
    return parts_dir(store) / "plan.json"


def part_record(store: Folder, part: int | str) -> Path:
    """What one part wrote (its region), written when its region is complete."""
    return parts_dir(store) / f"part-{part}.json"


def task_dir(results: Folder, task: str) -> Path:
    """Everything of one further task (:data:`TASKS`). For ``vit_maps`` it is a results tree
    of its own: ``task_dir(results, "vit_maps")`` takes the place of ``results`` in
    :func:`model_dir`, :func:`explanations` and :func:`science_dir` of the ViT."""
    return Path(results) / task


def task_metrics(results: Folder, task: str) -> Path:
    """The record of an image or text task (its last output)."""
    return task_dir(results, task) / TASK_METRICS


def shared_entries() -> tuple[str, ...]:
    """Names that ``results/`` itself holds beside the level folders, which no noise level may
    take (a level ``figures`` would write into the shared figures)."""
    root = Path()
    shared = (patches(root), figures(root), report(root), log(root, "_").parent, benchmarks(root))
    return tuple(path.name for path in shared) + TASKS
