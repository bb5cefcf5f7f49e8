import json
import shlex
import sys
from pathlib import Path

# The results tree is named once, in cosmo_sop/layout.py (standard library only), for the rules,
# the report and the figures alike; this checkout's copy is imported whether or not it is installed.
sys.path.insert(0, workflow.basedir)
from cosmo_sop import layout
from cosmo_sop.config import task_config, validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.scheduler import SCHEDULER_VARIABLE

# The CLI's own validation (one schema, workflow/schemas links to cosmo_sop/schemas, and every
# check across keys), before any job: a bad config costs no work. It fills every default into
# Snakemake's config in place, so rules can index config freely. A bad config is one line, as
# the CLI prints it, and exit status 2: an exception would come wrapped in Snakemake's frames.
CONFIG_FILES = " + ".join(str(path) for path in workflow.configfiles) or "config"
try:
    config.update(validate_config(config, CONFIG_FILES, whole=True))
except InputError as error:
    print(error, file=sys.stderr)
    sys.exit(2)

# Rules run `python -m cosmo_sop` from this checkout with the interpreter that runs Snakemake
# (a venv need not be activated), so the library needs no install inside per-rule conda envs
# (conda cannot pip-install a path relative to an env file). With --use-conda the rule's env is
# activated in front of that interpreter and wins. Snakemake's own prefix is kept.
# A dask.distributed scheduler (`parallel.dask_scheduler`) reaches the data-stage commands
# the same way, as their default for --dask-scheduler: the commands, which Snakemake compares
# between runs, stay the same.
DASK_SCHEDULER = config["parallel"]["dask_scheduler"]
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}" + "${{PYTHONPATH:+:$PYTHONPATH}}; "
    f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
    + (f"export {SCHEDULER_VARIABLE}={shlex.quote(DASK_SCHEDULER)}; " if DASK_SCHEDULER else "")
)

RESULTS = Path(config["results"])
NOISE_LEVELS = [level["name"] for level in config["noise"]]
MOCK_ROOT = Path(config["mock"]["root"])
# Task vit_maps: a results tree of its own, for the ViT's models, explanations and science.
VIT_ROOT = layout.task_dir(RESULTS, "vit_maps")


def vit_levels():
    return config["vit_maps"]["levels"] or NOISE_LEVELS[:1]


def vit_config_json(*sections):
    """The keys of one ViT step: `sections` with the `vit_maps` overrides merged in."""
    return json.dumps(task_config(config, "vit_maps", *sections), sort_keys=True)


def vit_sop_segments(wildcards):
    if task_config(config, "vit_maps", "sop")["sop"]["tokens"] == "segments":
        return {"segments": layout.segments(RESULTS, wildcards.level)}
    return {}


def task_outputs():
    outputs = []
    if "vit_maps" in config["tasks"]:
        for level in vit_levels():
            science = layout.science_dir(VIT_ROOT, level)
            outputs += [science / layout.WEIGHTS_CSV, science / layout.FAITHFULNESS_CSV]
            for model in ("backbone", "sop"):
                outputs.append(layout.model_dir(VIT_ROOT, level, model) / layout.TEST_METRICS)
                outputs.append(layout.training_figure(VIT_ROOT, level, model))
    for task in ("vit_images", "bert_text"):
        if task in config["tasks"]:
            outputs.append(layout.task_metrics(RESULTS, task))
    return outputs


def config_json(*sections):
    """The config keys of one step, as JSON. It is passed to the CLI and used as a params
    value, so Snakemake reruns a step when (and only when) one of its own keys changes."""
    return json.dumps({key: config[key] for key in ("seed", *sections)}, sort_keys=True)


def sweep_config_json(keep_fraction):
    """The train_sop keys with `sop.keep_fraction` set to one value of the sweep."""
    keys = json.loads(config_json("training", "sop"))
    keys["sop"] = {**keys["sop"], "keep_fraction": keep_fraction}
    return json.dumps(keys, sort_keys=True)


def sweep_outputs():
    """Test metrics of SOP at every swept group size, on the first noise level."""
    level = config["noise"][0]["name"]
    return [
        layout.sweep_model_dir(RESULTS, level, tau) / layout.TEST_METRICS
        for tau in config["sop"]["sweep_keep_fractions"]
    ]


def noise_level(name):
    return next(level for level in config["noise"] if level["name"] == name)


def ingest_input(wildcards):
    if config["source"] == "mock":
        return rules.simulate_mock.output
    # The real release is an existing folder no rule produces; its metainfo file stands for it.
    return {"metainfo": source_root() / "CosmoGridV1_metainfo.h5"}


def sop_segments(wildcards):
    # Patch tokens do not use the segmentation: SOP then need not rerun when it changes.
    if config["sop"]["tokens"] == "segments":
        return {"segments": layout.segments(RESULTS, wildcards.level)}
    return {}


def source_root():
    if config["source"] == "mock":
        return MOCK_ROOT
    return Path(config["cosmogrid"]["root"])


def model_outputs():
    outputs = []
    for level in NOISE_LEVELS:
        for model in layout.MODELS:
            outputs.append(layout.model_dir(RESULTS, level, model) / layout.TEST_METRICS)
            outputs.append(layout.training_figure(RESULTS, level, model))
    return outputs


def science_outputs():
    outputs = []
    for level in NOISE_LEVELS:
        science = layout.science_dir(RESULTS, level)
        outputs += [science / layout.WEIGHTS_CSV, science / layout.FAITHFULNESS_CSV]
        outputs.append(layout.summary_statistics(RESULTS, level))
    if config["source"] == "mock":
        outputs.append(layout.figures(RESULTS) / layout.HALO_DIAGNOSTICS)  # the report shows it
    return outputs + model_outputs() + sweep_outputs() + task_outputs()


def data_stage_outputs():
    outputs = [layout.figures(RESULTS) / layout.PATCHES_FIGURE]
    if config["source"] == "mock":
        outputs.append(layout.figures(RESULTS) / layout.MOCK_FIGURE)
        outputs.append(layout.figures(RESULTS) / layout.HALO_DIAGNOSTICS)
    for level in NOISE_LEVELS:
        outputs.append(layout.segments(RESULTS, level))
        outputs.append(layout.level_figures(RESULTS, level) / layout.SEGMENTS_FIGURE)
    return outputs


def job_benchmarks(wildcards):
    """The benchmark record of every job of the run but the report's own, from each rule's
    `benchmark:` pattern and the wildcards of its jobs (the targets above, rule by rule). The
    report reads them into its table of where the time went; as its inputs they make it the
    last job. An input function: the rules of tasks.smk are defined after the report's."""
    levels = NOISE_LEVELS
    taus = config["sop"]["sweep_keep_fractions"]
    jobs = [
        (rules.ingest, {}),
        (rules.plot_patches, {}),
        (rules.add_noise, {"level": levels}),
        (rules.segment, {"level": levels}),
        (rules.plot_segments, {"level": levels}),
        (rules.train_backbone, {"model": ["backbone", "xdnn"], "level": levels}),
        (rules.train_sop, {"level": levels}),
        (rules.train_sop_sweep, {"level": levels[:1], "tau": taus}),
        (rules.plot_training, {"model": layout.MODELS, "level": levels}),
        (rules.explain, {"level": levels}),
        (rules.structures, {"level": levels}),
        (rules.faithfulness, {"level": levels}),
        (rules.summary_statistics, {"level": levels}),
    ]
    if N_PARTS:
        jobs += [
            (rules.ingest_start, {}),
            (rules.ingest_part, {"part": range(N_PARTS)}),
            (rules.segment_start, {"level": levels}),
            (rules.segment_part, {"level": levels, "part": range(N_PARTS)}),
        ]
    if config["source"] == "mock":
        jobs += [
            (rules.simulate_mock, {}),
            (rules.plot_mock_overview, {}),
            (rules.plot_mock_halos, {}),
        ]
    if "vit_maps" in config["tasks"]:
        vit = {"level": vit_levels()}
        jobs += [
            (rules.train_vit_maps_backbone, vit),
            (rules.train_vit_maps_sop, vit),
            (rules.plot_training_vit_maps, {**vit, "model": ["backbone", "sop"]}),
            (rules.explain_vit_maps, vit),
            (rules.structures_vit_maps, vit),
            (rules.faithfulness_vit_maps, vit),
        ]
    for task in ("vit_images", "bert_text"):
        if task in config["tasks"]:
            jobs.append((getattr(rules, f"task_{task}"), {}))
    return [path for rule, values in jobs for path in expand(rule.benchmark, **values)]


# The data stage on a cluster (config section `parallel`). Its options go on the command lines
# as these globals, not in params: changing them changes no result, so it reruns nothing.
COSMOLOGIES_PER_JOB = config["parallel"]["cosmologies_per_job"]


def planned_parts():
    """Parts of ingest and segmentation: one per `parallel.cosmologies_per_job` cosmologies
    (0: one job each). The release's cosmologies are counted in its metainfo file."""
    if not COSMOLOGIES_PER_JOB:
        return 0
    from cosmo_sop.fanout import part_count
    from cosmo_sop.ingest.run import cosmology_count

    try:
        return part_count(cosmology_count(config, source_root()), COSMOLOGIES_PER_JOB)
    except InputError as error:
        print(error, file=sys.stderr)
        sys.exit(2)


N_PARTS = planned_parts()
PARTS_OPTIONS = f"--parts {N_PARTS} --cosmologies-per-job {COSMOLOGIES_PER_JOB}"
