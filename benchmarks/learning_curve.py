"""Learning curves: test MSE of the CNN and of the summary statistics against training cosmologies.

    python benchmarks/learning_curve.py                     # N = 64, 128, 256, 512; both levels
    python benchmarks/learning_curve.py --nside 512         # 6.9 arcmin pixels instead of 13.7
    python benchmarks/learning_curve.py --sizes 8 16 --n-val 4 --n-test 8 --work /tmp/lc
    python benchmarks/learning_curve.py --write learning_curve.json

Simulates one mock whose training split holds the largest N cosmologies (``--n-val`` and
``--n-test`` more for validation and test, by default the demo's 16 and 40) and runs its data
stage once through the workflow (simulate, ingest, one patch store per noise level: Snakemake,
``--configfile`` over config/config.yaml). Then, per level and N, it writes a patch store of
the first N training cosmologies (in the order of the mock's Sobol design, so each N's
cosmologies include every smaller N's) and the whole validation and test splits, and trains on
it what the workflow trains: the CNN backbone (:func:`cosmo_sop.training.train_backbone`) and
the summary-statistics regressors (C_ell and peak counts,
:func:`cosmo_sop.summary_statistics.run.run`). Every setting (epochs, early stopping on the
validation split, the MLP, the seeds) is config/config.yaml's; what is fitted on training data
(label and map scales, the peak-height unit, the feature scaling) comes from the N cosmologies
alone; nothing is chosen on the test split, and every N is tested on the same maps.

Prints, per level and N, the test MSE of the CNN and of the summary-statistics MLP per
parameter, in units of the label variance of the whole training split (one unit for every N;
at the largest N these are the workflow's standardised MSEs), with 95 % intervals from a
bootstrap over test cosmologies, and the ratio CNN / summary MSE with its paired interval
(both predict the same maps: the report's :func:`cosmo_sop.report.comparison.cnn_over_summary`,
whose replicates are also those of the MSE intervals); below 1, the CNN is the more accurate.
Draws the curves, MSE against N on log-log axes (``--figure``, PNG and PDF), and ``--write``
saves every number as JSON. The work folder is reused: the data stage reruns only what its
config changes, and a (level, N) done with the same config is not trained again (the largest
of ``--sizes`` sets the mock: keep it to keep the mock).

Slow. The default, estimated on 2 cores from the demo's stage times and a small run: about
10 min for the data stage (568 cosmologies), 6 min of CNN training and 3 min of summary
statistics per level and N = 64 ... 512 together, about 30 min in all, and 16 GB of disk (the
mock 7 GB). ``--nside 512``: the simulation about twice as long, and the mock 4 times as big
(29 GB). The small run above (28 cosmologies) takes 3 min. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
from snakemake.utils import update_config

from cosmo_sop import layout
from cosmo_sop.config import validate_config
from cosmo_sop.figures import save_figure
from cosmo_sop.figures.labels import MODEL_LABELS, summary_label, tex
from cosmo_sop.figures.predictions import MODEL_COLOURS
from cosmo_sop.ingest.split import split_counts
from cosmo_sop.report.comparison import BOOT_SEED, N_BOOT, SUMMARY_KIND, cnn_over_summary
from cosmo_sop.statistics import bootstrap_mean
from cosmo_sop.storage import open_zarr, read_json, write_json, write_zarr
from cosmo_sop.summary_statistics.run import run as run_summary_statistics
from cosmo_sop.training import PatchData, train_backbone
from cosmo_sop.training.comparison import read_test_predictions

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "config" / "config.yaml"
#: Training cosmologies of each point of the curves.
SIZES = (64, 128, 256, 512)
#: Validation and test cosmologies: the demo's (config/config.yaml's split of 160).
N_VAL, N_TEST = 16, 40
#: Pixel side (arcmin) at each simulated nside: about its HEALPix pixel, as config/README.md
#: says; the patches keep config/config.yaml's 66 pixels (the CNN's input, which the SOP paper
#: uses for CosmoGrid's nside 512), so at nside 512 they cover a quarter of the area.
RESOLUTION_ARCMIN = {256: 13.7, 512: 6.9}
#: The file in each (N, level) folder that says with which config it was computed.
STAMP = "learning_curve_config.json"
#: Display names of the two methods.
CNN_LABEL, SUMMARY = MODEL_LABELS["backbone"], summary_label(SUMMARY_KIND)


# --------------------------------------------------------------------------------------------
# The config and the data stage


def split_fractions(n_train: int, n_val: int, n_test: int) -> dict[str, float]:
    """``ingest.split`` fractions that give exactly these numbers of cosmologies.

    Raises
    ------
    SystemExit
        If the split's rounding would not give them (it does for any sizes in practice).
    """
    total = n_train + n_val + n_test
    fractions = {"train": n_train / total, "val": n_val / total, "test": n_test / total}
    wanted = {"train": n_train, "val": n_val, "test": n_test}
    if split_counts(total, fractions) != wanted:
        sys.exit(f"the split of {total} cosmologies does not give {wanted}")
    return fractions


def run_config(
    work: Path,
    n_train: int,
    levels: Sequence[str],
    nside: int,
    seed: int,
    n_val: int = N_VAL,
    n_test: int = N_TEST,
) -> dict[str, Any]:
    """config/config.yaml with this run's mock, split, levels, seed and folders on top.

    Parameters
    ----------
    work
        Folder of the mock, the data stage and the trained models.
    n_train, n_val, n_test
        Cosmologies of the training, validation and test splits.
    levels
        Names of config/config.yaml's noise levels to run.
    nside, seed
        Simulated resolution and master seed.
    """
    # merged as Snakemake merges --configfile files over the Snakefile's configfile
    config = yaml.safe_load(DEMO.read_text())
    update_config(
        config,
        {
            "seed": seed,
            "results": str(work / "data"),
            "tasks": [],
            "mock": {
                "root": str(work / "mock"),
                "n_cosmologies": n_train + n_val + n_test,
                "nside": nside,
            },
            "ingest": {
                "resolution_arcmin": RESOLUTION_ARCMIN[nside],
                "split": split_fractions(n_train, n_val, n_test),
            },
            "sop": {"sweep_keep_fractions": []},
            "training": {"progress": False},
            "summary_statistics": {"progress": False},
        },
    )
    config["noise"] = [level for level in config["noise"] if level["name"] in levels]
    return config


def run_data_stage(config: dict[str, Any], work: Path, cores: int) -> float:
    """Simulate, ingest and one patch store per noise level, through the workflow in ``work``
    (its own Snakemake lock and metadata; nothing reruns that is done); returns the seconds."""
    start = time.perf_counter()
    configfile = work / "config.yaml"
    work.mkdir(parents=True, exist_ok=True)
    configfile.write_text(yaml.safe_dump(config))
    results = Path(config["results"])
    targets = [str(layout.level_patches(results, level["name"])) for level in config["noise"]]
    command = [
        sys.executable, "-m", "snakemake", *targets, "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(work), "--configfile", str(configfile), "--cores", str(cores),
        "--quiet", "rules",
    ]  # fmt: skip
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = work / "snakemake.log"
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
    if done.returncode != 0:
        sys.exit(f"{configfile}: the data stage failed, see {log}")
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# One point of a curve: a store of N training cosmologies, and the models trained on it


def size_folder(work: Path, n_train: int) -> Path:
    """The results folder (the workflow's layout) of the models trained on N cosmologies."""
    return work / f"n{n_train:04d}"


def prepare(folder: Path, stamp: Mapping[str, Any]) -> bool:
    """Make ``folder`` ready for the run described by ``stamp``; True if it is done already.

    A folder of the same stamp is kept (done, or resumed: an interrupted training resumes from
    its checkpoint); one of another stamp, which this script wrote, is removed.
    """
    previous = read_json(folder / STAMP)
    if previous == json.loads(json.dumps(stamp)):
        return (folder / "timing.json").is_file()
    if folder.exists():
        if previous is None:
            sys.exit(f"{folder}: exists but this script did not write it; remove it or move --work")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / STAMP, stamp)
    return False


def train_subset(source: Path, target: Path, n_train: int) -> None:
    """Write the patch store ``target``: ``source`` with only its first ``n_train`` training
    cosmologies (in cosmology order) and all validation and test maps.

    With all of them, ``target`` is a link to ``source``.
    """
    ds = open_zarr(source, ("kappa", "split", "cosmology"), check_values=False)
    split = np.asarray(ds["split"].values).astype(str)
    cosmology = np.asarray(ds["cosmology"].values).astype(str)
    train = np.unique(cosmology[split == "train"])
    if n_train > train.size:
        sys.exit(f"{source}: {train.size} training cosmologies, fewer than {n_train}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if n_train == train.size:
        target.symlink_to(source.resolve(), target_is_directory=True)
        return
    keep = np.flatnonzero((split != "train") | np.isin(cosmology, train[:n_train]))
    subset = ds.isel(sample=keep).chunk({"sample": ds["kappa"].encoding["chunks"][0]})
    for variable in subset.variables.values():
        variable.encoding = {}  # the source's chunks no longer fit
    subset.attrs = {**ds.attrs, "train_cosmologies": f"the first {n_train} of {train.size}"}
    write_zarr(subset, target)


def train_size(
    config: dict[str, Any], data: Path, folder: Path, level: str, n_train: int, cores: int
) -> tuple[dict[str, float], bool]:
    """Train the CNN and the summary-statistics regressors of one level on the first
    ``n_train`` training cosmologies, into the results folder ``folder``.

    Returns
    -------
    seconds, done_before
        The seconds of each step, and whether they are those recorded by an earlier run
        (which trained nothing now).
    """
    here = layout.level_dir(folder, level)
    # the config less the other levels: running fewer levels keeps this one's points
    mine = [entry for entry in config["noise"] if entry["name"] == level]
    stamp = {"config": {**config, "noise": mine}, "n_train_cosmologies": n_train}
    if prepare(here, stamp):
        return read_json(here / "timing.json"), True
    patches = layout.level_patches(folder, level)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if patches.is_symlink():  # a store of an interrupted run: written again
        patches.unlink()
    elif patches.exists():
        shutil.rmtree(patches)
    train_subset(layout.level_patches(data, level), patches, n_train)
    seconds["subset"] = time.perf_counter() - start
    start = time.perf_counter()
    train_backbone(patches, layout.model_dir(folder, level, "backbone"), config, restart_stale=True)
    seconds["cnn"] = time.perf_counter() - start
    start = time.perf_counter()
    run_summary_statistics(
        config, patches=patches, output=layout.summary_statistics(folder, level), workers=cores
    )
    seconds["summary_statistics"] = time.perf_counter() - start
    write_json(here / "timing.json", seconds)  # last: its presence means the point is done
    return seconds, False


# --------------------------------------------------------------------------------------------
# Test errors


def squared_errors(folder: Path, level: str) -> dict[str, Any]:
    """Squared test errors (physical units) of the CNN and of the summary-statistics
    regressors of one point, row by row the same maps, and those maps' cosmologies.

    Returns
    -------
    dict
        ``names`` of the outputs, ``cosmology`` of each map, ``maps`` (the sorted (cosmology,
        perm, patch) of the test maps) and ``squared`` {``cnn``, ``mlp``, ``ridge``: (maps,
        outputs)}.
    """
    cnn = read_test_predictions(
        layout.model_dir(folder, level, "backbone") / layout.TEST_PREDICTIONS
    )
    with np.load(layout.summary_statistics_predictions(folder, level)) as stored:
        summary = {key: stored[key] for key in stored.files}
    order_cnn, order_summary = np.argsort(cnn["sample"]), np.argsort(summary["sample"])
    sample = cnn["sample"][order_cnn]
    if not np.array_equal(sample, summary["sample"][order_summary]):
        sys.exit(f"{layout.level_dir(folder, level)}: CNN and summary statistics tested other maps")
    names = [str(name) for name in cnn["names"]]
    if names != [str(name) for name in summary["names"]]:
        sys.exit(f"{layout.level_dir(folder, level)}: CNN and summary predict other parameters")
    ds = open_zarr(layout.level_patches(folder, level), ("cosmology",), check_values=False)
    keys = ("cosmology", "perm", "patch_index")
    maps = [np.asarray(ds[key].values[sample]).astype(str) for key in keys]
    kinds = [key.removeprefix("predicted_") for key in summary if key.startswith("predicted_")]
    return {
        "names": names,
        "cosmology": maps[0],
        "maps": sorted(zip(*maps, strict=True)),  # to check that every N tests the same maps
        "squared": {
            "cnn": (cnn["predictions"] - cnn["targets"])[order_cnn] ** 2,
            **{
                kind: (summary[f"predicted_{kind}"] - summary["true"])[order_summary] ** 2
                for kind in kinds
            },
        },
    }


def intervals(values: np.ndarray, cosmologies: np.ndarray, names: Sequence[str]) -> dict:
    """Per output: the mean of ``values`` (N, outputs) with its cosmology-bootstrap interval,
    drawn as the report draws the CNN / summary ratio (so the same replicates)."""
    interval = bootstrap_mean(values, cosmologies, N_BOOT, BOOT_SEED)
    return {
        name: {
            "mse": float(interval.estimate[i]),
            "ci_low": float(interval.low[i]),
            "ci_high": float(interval.high[i]),
        }
        for i, name in enumerate(names)
    }


def point(folder: Path, level: str, variance: Mapping[str, float]) -> dict[str, Any]:
    """The numbers of one point of a curve: MSEs in units of ``variance`` (per output) and the
    CNN / summary ratio, each with its interval."""
    errors = squared_errors(folder, level)
    names = errors["names"]
    unit = np.array([variance[name] for name in names])
    ratios = cnn_over_summary(folder, level)
    if ratios is None:
        sys.exit(f"{layout.level_dir(folder, level)}: no CNN / summary ratio")
    return {
        "maps": errors["maps"],
        "n_test_maps": len(errors["maps"]),
        "n_test_cosmologies": len(set(errors["cosmology"])),
        "mse_standardised": {
            method: intervals(squared / unit, errors["cosmology"], names)
            for method, squared in errors["squared"].items()
        },
        "cnn_over_summary": {
            name: {"ratio": float(r), "ci_low": float(low), "ci_high": float(high)}
            for name, (r, low, high) in ratios.items()
        },
    }


# --------------------------------------------------------------------------------------------
# Output


def _cell(entry: Mapping[str, float], key: str = "mse") -> str:
    return f"{entry[key]:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def print_table(level: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """The curves of one level, a line per N and parameter."""
    first = rows[0]
    print(
        f"\n{level}: test {first['n_test_maps']} maps of {first['n_test_cosmologies']} "
        "cosmologies; MSE in units of the label variance of the whole training split; "
        f"[95 % CI], bootstrap over test cosmologies ({N_BOOT} replicates)"
    )
    print(f"{'N':>5} {'maps':>6}  {'':<3}{'CNN MSE':<24}{'summary MSE':<24}CNN / summary (paired)")
    for row in rows:
        for i, (name, cnn) in enumerate(row["mse_standardised"]["cnn"].items()):
            summary = row["mse_standardised"][SUMMARY_KIND][name]
            lead = (
                f"{row['n_train_cosmologies']:>5} {row['n_train_maps']:>6}" if i == 0 else " " * 12
            )
            print(
                f"{lead}  {name:<3}{_cell(cnn):<24}{_cell(summary):<24}"
                f"{_cell(row['cnn_over_summary'][name], 'ratio')}"
            )


def plot_curves(curves: Mapping[str, Mapping[str, Any]], out_png: Path) -> Path:
    """MSE against N on log-log axes, a row per level and a column per parameter, CNN and
    summary statistics with their intervals; PNG and PDF."""
    levels = list(curves)
    names = list(curves[levels[0]]["points"][0]["cnn_over_summary"])
    fig = Figure(figsize=(4.2 * len(names), 3.2 * len(levels)), layout="constrained")
    axes = fig.subplots(len(levels), len(names), squeeze=False, sharex=True)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for row, level in zip(axes, levels, strict=True):
        rows = curves[level]["points"]
        sizes = np.array([r["n_train_cosmologies"] for r in rows])
        for ax, name in zip(row, names, strict=True):
            for method, label, shift in (("cnn", CNN_LABEL, 0.97), (SUMMARY_KIND, SUMMARY, 1.03)):
                entries = [r["mse_standardised"][method][name] for r in rows]
                mse = np.array([e["mse"] for e in entries])
                low = mse - np.array([e["ci_low"] for e in entries])
                high = np.array([e["ci_high"] for e in entries]) - mse
                ax.errorbar(
                    sizes * shift,  # side by side, not on top of each other
                    mse,
                    yerr=[low, high],
                    marker="o",
                    capsize=3,
                    color=MODEL_COLOURS[label],
                    label=label,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{level}: {tex(name)}")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training cosmologies N")
    for ax in axes[:, 0]:
        ax.set_ylabel("test MSE (standardised)")
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------


def main() -> None:
    demo = yaml.safe_load(DEMO.read_text())
    all_levels = [level["name"] for level in demo["noise"]]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="training cosmologies"
    )
    parser.add_argument("--levels", nargs="+", default=all_levels, choices=all_levels)
    parser.add_argument("--nside", type=int, default=256, choices=sorted(RESOLUTION_ARCMIN))
    parser.add_argument("--n-val", type=int, default=N_VAL, help="validation cosmologies")
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test cosmologies")
    parser.add_argument("--seed", type=int, default=demo["seed"], help="master seed")
    parser.add_argument("--work", type=Path, help="default: results_learning_curve_nside<nside>")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--figure", type=Path, help="PNG (and PDF beside it); default: in --work")
    parser.add_argument("--write", type=Path, help="save every number as JSON here")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    if sizes[0] < 2 or min(args.n_val, args.n_test) < 1:
        parser.error("need at least 2 training cosmologies and 1 of validation and test")
    work = (args.work or ROOT / f"results_learning_curve_nside{args.nside}").resolve()
    figure = args.figure or work / "learning_curve.png"

    raw = run_config(work, sizes[-1], args.levels, args.nside, args.seed, args.n_val, args.n_test)
    config = validate_config(raw, work / "config.yaml", whole=True)
    timing: dict[str, Any] = {"data_stage": run_data_stage(raw, work, args.cores)}
    print(
        f"data stage ({config['mock']['n_cosmologies']} cosmologies): {timing['data_stage']:.0f} s"
    )
    data = Path(config["results"])

    curves: dict[str, dict[str, Any]] = {}
    for level in args.levels:
        # One unit for every N: the label variance of the whole training split.
        scaler = PatchData(layout.level_patches(data, level)).scaler()
        variance = {name: float(s) ** 2 for name, s in zip(scaler.names, scaler.std, strict=True)}
        points, tested = [], []
        for n_train in sizes:
            folder = size_folder(work, n_train)
            seconds, before = train_size(config, data, folder, level, n_train, args.cores)
            timing[f"{level}/{n_train}"] = seconds
            text = ", ".join(f"{step} {s:.0f} s" for step, s in seconds.items())
            text += " (done before, in this --work)" if before else ""
            print(f"{level}, N = {n_train}: {text}", flush=True)
            numbers = point(folder, level, variance)
            tested.append(numbers.pop("maps"))
            n_maps = read_json(layout.summary_statistics(folder, level))["n_maps"]["train"]
            points.append({"n_train_cosmologies": n_train, "n_train_maps": n_maps, **numbers})
        if any(maps != tested[0] for maps in tested):
            sys.exit(f"{level}: the points were tested on different maps")
        curves[level] = {"label_variance": variance, "points": points}
    for level, curve in curves.items():
        print_table(level, curve["points"])
    print(f"\nfigure: {plot_curves(curves, figure)} (and .pdf)")
    if args.write:
        write_json(
            args.write,
            {
                "sizes": sizes,
                "levels": args.levels,
                "nside": args.nside,
                "resolution_arcmin": config["ingest"]["resolution_arcmin"],
                "patch_size": config["ingest"]["patch_size"],
                "seed": args.seed,
                "cosmologies": {"train": sizes[-1], "val": args.n_val, "test": args.n_test},
                "epochs": config["training"]["epochs"],
                "n_boot": N_BOOT,
                "boot_seed": BOOT_SEED,
                "summary_regressor": SUMMARY_KIND,
                "curves": curves,
                "seconds": timing,
            },
        )


if __name__ == "__main__":
    main()
