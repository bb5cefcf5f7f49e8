"""The ``cosmo-sop`` command line: one subcommand per workflow step.

Every Snakemake rule calls one of these subcommands, and a user can call them by hand::

    cosmo-sop simulate-mock --root resources/mock_cosmogrid --config config/config.yaml
    cosmo-sop ingest --root resources/mock_cosmogrid --output results/patches.zarr --config config/config.yaml

``--config`` takes a YAML file; ``--config-json`` takes the same keys inline (the workflow passes
only the keys a step depends on, so Snakemake reruns exactly the steps whose keys changed).
Both are validated against the config schema and completed with its defaults. Bad input, and a
file system that refuses a write (read-only, full), end with a one-line message naming the file
and the problem, and exit status 2.

Heavy libraries are imported inside the subcommands, so ``--help`` is instant and the data-stage
rules run in an environment without PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmo_sop import __version__
from cosmo_sop.config import load_config, validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.scheduler import SCHEDULER_VARIABLE

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
    from cosmo_sop.sources.mock.simulate import run

    run(config, root=args.root, workers=args.workers)


def _plot_mock(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.mock import plot_mock_overview

    plot_mock_overview(args.root, args.output, config["mock"])


def _plot_halos(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.halos import plot_halo_diagnostics

    plot_halo_diagnostics(config["mock"], config["seed"], args.output_dir)


def _ingest(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.ingest.run import run

    run(
        config,
        root=args.root,
        output=args.output,
        workers=args.workers,
        part=args.part,
        n_parts=args.parts,
    )


def _plot_patches(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.patches import plot_patches

    plot_patches(args.input, args.output)


def _noise(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.noise import run

    run(
        config,
        level=args.level,
        input_store=args.input,
        output_store=args.output,
        workers=args.workers,
    )


def _segment(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.segmentation import run

    run(
        config,
        input_store=args.input,
        output_store=args.output,
        workers=args.workers,
        part=args.part,
        n_parts=args.parts,
    )


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
        architecture="vit" if args.command == "train-vit" else "cnn",
        restart_stale=args.restart_stale,
    )


def _train_sop(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.training.runs import train_sop

    train_sop(
        args.patches,
        args.segments,
        args.backbone,
        args.output,
        config,
        restart_stale=args.restart_stale,
    )


def _plot_training(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.figures.training import plot_training_curves

    plot_training_curves(args.metrics, args.output)


def _explain(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.explain import explain_split

    explain_split(args.sop, args.patches, args.output, args.segments, **config["explain"])


def _structures(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.structures.run import run

    run(
        config,
        explanations=args.explanations,
        patches=args.patches,
        out_dir=args.output_dir,
        sop=args.sop,
        segments=args.segments,
    )


def _faithfulness(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.faithfulness.run import run

    run(
        config,
        explanations=args.explanations,
        patches=args.patches,
        backbone=args.backbone,
        xdnn=args.xdnn,
        out_dir=args.output_dir,
        segments=args.segments,
        sop=args.sop,
    )


def _summary_statistics(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.summary_statistics.run import run

    run(config, patches=args.patches, output=args.output, workers=args.workers)


def _report(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.report.build import write_report

    write_report(args.results, args.levels, args.output, config=config, benchmarks=args.benchmarks)


def _show_config(args: argparse.Namespace, config: Config) -> None:
    import yaml

    try:
        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        # The reader took what it wanted and left (cosmo-sop config | head -1): nothing is
        # wrong, and Python's flush at exit must not complain either.
        _silence_stdout()


def _task_images(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.tasks.images.run import run

    run(config, args.output_dir)


def _task_text(args: argparse.Namespace, config: Config) -> None:
    from cosmo_sop.tasks.text.run import run

    run(config, args.output_dir)


# --- argument parsing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One subcommand: its entry, its help, and its options (each a (flag, help) pair)."""

    name: str
    entry: Callable[[argparse.Namespace, Config], None]
    help: str
    paths: tuple[tuple[str, str], ...] = ()  # required path options
    optional_paths: tuple[tuple[str, str], ...] = ()
    words: tuple[tuple[str, str], ...] = ()  # required options taking one word
    lists: tuple[tuple[str, str], ...] = ()  # required options taking one or more words
    optional_path_lists: tuple[tuple[str, str], ...] = ()  # options taking one or more paths
    workers: bool = False  # --workers, and --dask-scheduler for the array work
    parts: bool = False  # --part, --parts, --cosmologies-per-job: one job of a step in parts
    restart_stale: bool = False


PNG = ("--output", "PNG to write")
RUN_FOLDER = ("--output", "run folder (weights, metrics)")
LEVEL_PATCHES = ("--patches", "patch Zarr store of one noise level")
EXPLAINED = (("--explanations", "explanation store"), ("--patches", "patch store explained"))
OUTPUT_DIR = ("--output-dir", "folder for tables and figures")

COMMANDS = (
    Command(
        "simulate-mock",
        _simulate_mock,
        "write the mock CosmoGrid (CosmoGridV1 layout)",
        paths=(("--root", "folder to write the mock into"),),
        workers=True,
    ),
    Command(
        "plot-mock",
        _plot_mock,
        "figure: mock maps, spectra vs theory, one-point PDFs",
        paths=(("--root", "mock CosmoGrid folder"), PNG),
    ),
    Command(
        "plot-halos",
        _plot_halos,
        "figures: the halo mock's counts, spectra, peaks and PDF against the lognormal mock",
        paths=(OUTPUT_DIR,),
    ),
    Command(
        "ingest",
        _ingest,
        "HEALPix maps -> flat patches in a Zarr store",
        paths=(
            ("--root", "CosmoGridV1 (or mock) root folder"),
            ("--output", "Zarr store to write"),
        ),
        workers=True,
        parts=True,
    ),
    Command(
        "plot-patches",
        _plot_patches,
        "figure: example patches per tomographic bin",
        paths=(("--input", "patch Zarr store"), PNG),
    ),
    Command(
        "noise",
        _noise,
        "add shape noise (one configured level) to a patch store",
        paths=(("--input", "noiseless patch Zarr store"), ("--output", "Zarr store to write")),
        words=(("--level", "name of the noise level in config 'noise'"),),
        workers=True,
    ),
    Command(
        "segment",
        _segment,
        "segment every patch (watershed, patch grid or SLIC)",
        paths=(("--input", "patch Zarr store"), ("--output", "segments Zarr store to write")),
        workers=True,
        parts=True,
    ),
    Command(
        "plot-segments",
        _plot_segments,
        "figure: example patches with segment boundaries",
        paths=(("--patches", "patch Zarr store"), ("--segments", "segments Zarr store"), PNG),
    ),
    Command(
        "train-backbone",
        _train_backbone,
        "train the CNN backbone on a patch store (resumes if interrupted)",
        paths=(LEVEL_PATCHES, RUN_FOLDER),
        restart_stale=True,
    ),
    Command(
        "train-xdnn",
        _train_backbone,
        "train its bias-free X-DNN twin on a patch store (resumes if interrupted)",
        paths=(LEVEL_PATCHES, RUN_FOLDER),
        restart_stale=True,
    ),
    Command(
        "train-vit",
        _train_backbone,
        "train a Vision Transformer backbone (config section vit) on a patch store",
        paths=(LEVEL_PATCHES, RUN_FOLDER),
        restart_stale=True,
    ),
    Command(
        "train-sop",
        _train_sop,
        "train the Sum-of-Parts model around a trained backbone",
        paths=(LEVEL_PATCHES, ("--backbone", "run folder of the trained backbone"), RUN_FOLDER),
        optional_paths=(("--segments", "its segments Zarr store (for sop.tokens: segments)"),),
        restart_stale=True,
    ),
    Command(
        "plot-training",
        _plot_training,
        "figure: training and validation loss per epoch",
        paths=(("--metrics", "metrics.csv of a run"), PNG),
    ),
    Command(
        "explain",
        _explain,
        "store the trained SOP model's explanations of a split",
        paths=(
            ("--sop", "run folder of the trained SOP model"),
            ("--patches", "patch store it was trained on"),
            ("--output", "explanation Zarr store to write"),
        ),
        optional_paths=(("--segments", "segments store (for sop.tokens: segments)"),),
    ),
    Command(
        "structures",
        _structures,
        "voids and clusters among SOP's groups, and their weights",
        paths=(*EXPLAINED, OUTPUT_DIR),
        optional_paths=(
            ("--sop", "run folder of the trained SOP (null controls; default: the store's)"),
            ("--segments", "segments store (for sop.tokens: segments)"),
        ),
    ),
    Command(
        "faithfulness",
        _faithfulness,
        "insertion/deletion tests of SOP against post-hoc baselines",
        paths=(*EXPLAINED, ("--backbone", "run folder of the backbone"), OUTPUT_DIR),
        optional_paths=(
            ("--xdnn", "run folder of the X-DNN twin (for X-Gradient)"),
            ("--segments", "segments store (KernelSHAP and LIME features)"),
            ("--sop", "run folder of the SOP model (SOP scored on itself; default: the store's)"),
        ),
    ),
    Command(
        "summary-statistics",
        _summary_statistics,
        "power spectra + peak counts -> regressor",
        paths=(
            ("--patches", "patch store of one noise level"),
            ("--output", "JSON to write (.npz beside it)"),
        ),
        workers=True,
    ),
    Command(
        "report",
        _report,
        "the HTML report of a run",
        paths=(("--results", "results folder"), ("--output", "HTML file to write")),
        lists=(("--levels", "noise levels, in display order"),),
        optional_path_lists=(
            (
                "--benchmarks",
                "the jobs' benchmark records for the table of where the time went "
                "(default: every one under the results folder's benchmarks/)",
            ),
        ),
    ),
    Command(
        "task-images",
        _task_images,
        "task vit_images: a ViT classifier and SOP on images with exact object masks",
        paths=(("--output-dir", "task folder (models, figures, task_metrics.json)"),),
    ),
    Command(
        "task-text",
        _task_text,
        "task bert_text: MiniLM and SOP on reading comprehension with evidence sentences",
        paths=(("--output-dir", "task folder (models, figures, task_metrics.json)"),),
    ),
    Command("config", _show_config, "print the validated config with every default filled in"),
)


def _add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    p = sub.add_parser(command.name, help=command.help, description=command.help)
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--config", type=_path, help="YAML config file (default: built-in defaults)"
    )
    source.add_argument("--config-json", help="config keys as a JSON object")
    for flag, help in command.paths:
        p.add_argument(flag, type=_path, required=True, help=help)
    for flag, help in command.optional_paths:
        p.add_argument(flag, type=_path, help=help)
    for flag, help in command.words:
        p.add_argument(flag, required=True, help=help)
    for flag, help in command.lists:
        p.add_argument(flag, nargs="+", required=True, help=help)
    for flag, help in command.optional_path_lists:
        p.add_argument(flag, type=_path, nargs="+", help=help)
    if command.workers:
        p.add_argument("--workers", type=int, default=1, help="parallel workers (default 1)")
        p.add_argument(
            "--dask-scheduler",
            metavar="ADDRESS",
            default=os.environ.get(SCHEDULER_VARIABLE) or None,
            help="compute on this dask.distributed scheduler (overrides parallel.dask_scheduler; "
            f"default: ${SCHEDULER_VARIABLE}, which the workflow sets)",
        )
    if command.parts:
        p.add_argument(
            "--part",
            type=_part,
            help="one step of the store in parts: start, a part number, or finish",
        )
        p.add_argument("--parts", type=int, help="parts the workflow planned (default: all)")
        p.add_argument(
            "--cosmologies-per-job",
            type=int,
            help="cosmologies per part (overrides parallel.cosmologies_per_job)",
        )
    if command.restart_stale:
        p.add_argument("--restart-stale", action="store_true", help=RESTART_HELP)
    p.set_defaults(func=command.entry)


class _EmptyPath(str):
    """What an empty path option (``--output ""``) parses to: ``Path("")`` would be the working
    folder, so :func:`main` refuses it with one line instead (argparse's own error prints the
    usage as well)."""


def _path(text: str) -> Path | _EmptyPath:
    return Path(text) if text.strip() else _EmptyPath(text)


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse the empty path options, naming the option."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, _EmptyPath) for item in values):
            raise InputError(
                "--" + dest.replace("_", "-"), "empty path (give a file or folder name)"
            )


def _part(text: str) -> str | int:
    if text in ("start", "finish"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not start, a part number, or finish"
        ) from None


def _with_parallel_options(args: argparse.Namespace, config: Config) -> Config:
    """The config with the command line's ``parallel`` options in place of the config's (the
    workflow passes them on the command line, so that changing them reruns nothing)."""
    given = {
        "dask_scheduler": getattr(args, "dask_scheduler", None),
        "cosmologies_per_job": getattr(args, "cosmologies_per_job", None),
    }
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return config
    merged = validate_config({"parallel": {**config["parallel"], **given}}, "--options")
    return {**config, "parallel": merged["parallel"]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmo-sop",
        description="Weak-lensing maps -> (Omega_m, sigma_8) with Sum-of-Parts explanations.",
    )
    parser.add_argument("--version", action="version", version=f"cosmo-sop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, also when the reader of ``cosmo-sop
    config`` went away, as ``| head -1``; 2 bad input, or a file system that refused)."""
    args = _parser().parse_args(argv)
    try:
        _check_paths(args)
        config = _with_parallel_options(args, _read_config(args))
        args.func(args, config)
    except InputError as exc:
        print(f"cosmo-sop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # What the writers did not name themselves (a run folder that cannot be created, ...):
        # a read-only or full file system is the user's to fix, not a traceback to read.
        print(f"cosmo-sop {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _os_error_line(exc: OSError) -> str:
    """``path: cause [ERRNO]`` for an OSError (both paths of a failed rename)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno) if exc.errno else None
    where = exc.filename if exc.filename is not None else "cosmo-sop"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {cause}" + (f" [{code}]" if code else "")


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit has a reader."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
