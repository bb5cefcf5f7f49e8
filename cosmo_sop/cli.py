"""The ``cosmo-sop`` command line: one subcommand per workflow step.

Every Snakemake rule calls one of these subcommands, and a user can call them by hand::

    cosmo-sop simulate-mock --root resources/mock_cosmogrid --config config/config.yaml
    cosmo-sop ingest --root resources/mock_cosmogrid --output results/patches.zarr --config config/config.yaml

``--config`` takes a YAML file; ``--config-json`` takes the same keys inline (the workflow passes
only the keys a step depends on, so Snakemake reruns exactly the steps whose keys changed).
Both are validated against the config schema and completed with its defaults. Bad input ends
with a one-line message naming the file and the problem, and exit status 2.

Heavy libraries are imported inside the subcommands, so ``--help`` is instant and the data-stage
rules run in an environment without PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cosmo_sop import __version__
from cosmo_sop.config import load_config, validate_config
from cosmo_sop.errors import InputError

Config = dict[str, Any]
RESTART_HELP = (
    "start afresh if the run folder holds a checkpoint of another config or data "
    "(default: refuse); an interrupted run with the same config always resumes"
)


def _read_config(args: argparse.Namespace) -> Config:
    if args.config_json is not None:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise InputError("--config-json", f"not valid JSON ({exc})") from None
        return validate_config(raw, "--config-json")
    if args.config is not None:
        return load_config(args.config)
    return validate_config({}, "default config")


# --- subcommands -------------------------------------------------------------------------------


def _simulate_mock(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.sources.mock.simulate import simulate_mock

    simulate_mock(args.root, config["mock"], seed=config["seed"], workers=args.workers)


def _plot_mock(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.mock import plot_mock_overview

    plot_mock_overview(args.root, args.output, config["mock"])


def _ingest(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.ingest.run import ingest_config

    ingest_config(config, root=args.root, output=args.output, workers=args.workers)


def _plot_patches(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.patches import plot_patches

    plot_patches(args.input, args.output)


def _noise(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.noise import add_noise

    levels = {level["name"]: level for level in config["noise"]}
    if args.level not in levels:
        raise InputError("--level", f"no noise level '{args.level}' in the config ({list(levels)})")
    add_noise(args.input, args.output, levels[args.level], seed=config["seed"], workers=args.workers)


def _segment(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.segmentation import segment

    segment(args.input, args.output, config["segmentation"], workers=args.workers)


def _plot_segments(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.segments import plot_segments

    plot_segments(args.patches, args.segments, args.output)


def _train_backbone(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.training.runs import train_backbone

    train_backbone(
        args.patches,
        args.output,
        config,
        bias_free=args.command == "train-xdnn",
        restart_stale=args.restart_stale,
    )


def _train_sop(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.training.runs import train_sop

    train_sop(
        args.patches, args.segments, args.backbone, args.output, config, restart_stale=args.restart_stale
    )


def _plot_training(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.training import plot_training_curves

    plot_training_curves(args.metrics, args.output)


def _explain(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.explain import explain_split

    options = config["explain"]
    explain_split(
        args.sop,
        args.patches,
        args.output,
        args.segments,
        split=options["split"],
        batch_size=options["batch_size"],
        max_maps=options["max_maps"],
    )


def _structures(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.structures.run import structure_analysis

    options = config["structures"]
    structure_analysis(
        args.explanations,
        args.patches,
        args.output_dir,
        definitions=options["definitions"],
        n_boot=options["n_boot"],
        seed=config["seed"],
        nonzero_only=options["nonzero_only"],
    )


def _faithfulness(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.faithfulness.run import faithfulness_evaluation

    options = config["evaluation"]
    samples = {"n_samples": options["n_samples"]}
    faithfulness_evaluation(
        args.explanations,
        args.patches,
        args.backbone,
        args.xdnn,
        args.output_dir,
        args.segments,
        methods=options["methods"],
        n_maps=options["n_maps"],
        keep_fraction=options["keep_fraction"],
        method_options={"kernel_shap": samples, "lime": samples},
        seed=config["seed"],
        definitions=config["structures"]["definitions"],
        n_boot=config["structures"]["n_boot"],
    )


def _summary_statistics(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.summary_statistics.features import run_summary_statistics

    options = {**config["summary_statistics"], "seed": config["seed"]}
    run_summary_statistics(args.patches, args.output, options, workers=args.workers)


def _report(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.report.build import write_report

    write_report(args.results, args.levels, args.output, config=config)


def _show_config(args: argparse.Namespace, config: Config) -> None:
    import yaml

    yaml.safe_dump(config, sys.stdout, sort_keys=False)


# --- argument parsing --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmo-sop",
        description="Weak-lensing maps -> (Omega_m, sigma_8) with Sum-of-Parts explanations.",
    )
    parser.add_argument("--version", action="version", version=f"cosmo-sop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help: str, workers: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        source = p.add_mutually_exclusive_group()
        source.add_argument("--config", type=Path, help="YAML config file (default: built-in defaults)")
        source.add_argument("--config-json", help="config keys as a JSON object")
        if workers:
            p.add_argument("--workers", type=int, default=1, help="parallel workers (default 1)")
        p.set_defaults(func=func)
        return p

    p = command("simulate-mock", _simulate_mock, "write the mock CosmoGrid (CosmoGridV1 layout)", True)
    p.add_argument("--root", type=Path, required=True, help="folder to write the mock into")

    p = command("plot-mock", _plot_mock, "figure: mock maps, spectra vs theory, one-point PDFs")
    p.add_argument("--root", type=Path, required=True, help="mock CosmoGrid folder")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")

    p = command("ingest", _ingest, "HEALPix maps -> flat patches in a Zarr store", True)
    p.add_argument("--root", type=Path, required=True, help="CosmoGridV1 (or mock) root folder")
    p.add_argument("--output", type=Path, required=True, help="Zarr store to write")

    p = command("plot-patches", _plot_patches, "figure: example patches per tomographic bin")
    p.add_argument("--input", type=Path, required=True, help="patch Zarr store")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")

    p = command("noise", _noise, "add shape noise (one configured level) to a patch store", True)
    p.add_argument("--input", type=Path, required=True, help="noiseless patch Zarr store")
    p.add_argument("--output", type=Path, required=True, help="Zarr store to write")
    p.add_argument("--level", required=True, help="name of the noise level in config 'noise'")

    p = command("segment", _segment, "segment every patch (watershed, patch grid or SLIC)", True)
    p.add_argument("--input", type=Path, required=True, help="patch Zarr store")
    p.add_argument("--output", type=Path, required=True, help="segments Zarr store to write")

    p = command("plot-segments", _plot_segments, "figure: example patches with segment boundaries")
    p.add_argument("--patches", type=Path, required=True, help="patch Zarr store")
    p.add_argument("--segments", type=Path, required=True, help="segments Zarr store")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")

    for name, what in (("train-backbone", "the CNN backbone"), ("train-xdnn", "its bias-free X-DNN twin")):
        p = command(name, _train_backbone, f"train {what} on a patch store (resumes if interrupted)")
        p.add_argument("--patches", type=Path, required=True, help="patch Zarr store of one noise level")
        p.add_argument("--output", type=Path, required=True, help="run folder (weights, metrics)")
        p.add_argument("--restart-stale", action="store_true", help=RESTART_HELP)

    p = command("train-sop", _train_sop, "train the Sum-of-Parts model around a trained backbone")
    p.add_argument("--patches", type=Path, required=True, help="patch Zarr store of one noise level")
    p.add_argument("--segments", type=Path, help="its segments Zarr store (for sop.tokens: segments)")
    p.add_argument("--backbone", type=Path, required=True, help="run folder of the trained backbone")
    p.add_argument("--output", type=Path, required=True, help="run folder (weights, metrics)")
    p.add_argument("--restart-stale", action="store_true", help=RESTART_HELP)

    p = command("plot-training", _plot_training, "figure: training and validation loss per epoch")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv of a run")
    p.add_argument("--output", type=Path, required=True, help="PNG to write")

    p = command("explain", _explain, "store the trained SOP model's explanations of a split")
    p.add_argument("--sop", type=Path, required=True, help="run folder of the trained SOP model")
    p.add_argument("--patches", type=Path, required=True, help="patch store it was trained on")
    p.add_argument("--segments", type=Path, help="segments store (for sop.tokens: segments)")
    p.add_argument("--output", type=Path, required=True, help="explanation Zarr store to write")

    p = command("structures", _structures, "voids and clusters among SOP's groups, and their weights")
    p.add_argument("--explanations", type=Path, required=True, help="explanation store")
    p.add_argument("--patches", type=Path, required=True, help="patch store explained")
    p.add_argument("--output-dir", type=Path, required=True, help="folder for tables and figures")

    p = command("faithfulness", _faithfulness, "insertion/deletion tests of SOP against post-hoc baselines")
    p.add_argument("--explanations", type=Path, required=True, help="explanation store")
    p.add_argument("--patches", type=Path, required=True, help="patch store explained")
    p.add_argument("--backbone", type=Path, required=True, help="run folder of the backbone")
    p.add_argument("--xdnn", type=Path, help="run folder of the X-DNN twin (for X-Gradient)")
    p.add_argument("--segments", type=Path, help="segments store (KernelSHAP and LIME features)")
    p.add_argument("--output-dir", type=Path, required=True, help="folder for tables and figures")

    p = command("summary-statistics", _summary_statistics, "power spectra + peak counts -> regressor", True)
    p.add_argument("--patches", type=Path, required=True, help="patch store of one noise level")
    p.add_argument("--output", type=Path, required=True, help="JSON to write (.npz beside it)")

    p = command("report", _report, "the HTML report of a run")
    p.add_argument("--results", type=Path, required=True, help="results folder")
    p.add_argument("--levels", nargs="+", required=True, help="noise levels, in display order")
    p.add_argument("--output", type=Path, required=True, help="HTML file to write")

    command("config", _show_config, "print the validated config with every default filled in")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        config = _read_config(args)
        args.func(args, config)
    except InputError as exc:
        print(f"cosmo-sop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
