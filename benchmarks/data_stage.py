"""Throughput of the data stage: simulate, ingest and segment, with 1 and 2 workers.

    python benchmarks/data_stage.py              # maps/s per step and worker count
    python benchmarks/data_stage.py --demo       # also the wall time of the demo's data stage

Everything is written to a temporary folder. Numbers are measured in one run on this machine;
compare the ratios, not absolute times across machines. Not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr
import yaml

from cosmo_sop import layout
from cosmo_sop.config import load_config, validate_config
from cosmo_sop.ingest.run import run as ingest_run
from cosmo_sop.segmentation import segment
from cosmo_sop.sources.mock import simulate_mock

ROOT = Path(__file__).resolve().parents[1]


def timed(func, *args, **kwargs) -> float:
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cosmologies", type=int, default=16, help="mock cosmologies (maps) to time"
    )
    parser.add_argument(
        "--demo", action="store_true", help="also time the demo's data stage (minutes)"
    )
    args = parser.parse_args()

    demo = load_config(ROOT / "config" / "config.yaml")
    config = validate_config({**demo, "mock": {**demo["mock"], "n_cosmologies": args.cosmologies}})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, n_patches = time_steps(config, tmp)
        print(
            f"\n{args.cosmologies} maps of nside {config['mock']['nside']} x {len(config['ingest']['bins'])} bins;"
            f" {n_patches} patches of {config['ingest']['patch_size']}^2 pixels"
        )
        print(f"{'step':<10}{'workers':>8}{'per second':>14}   unit")
        for step, workers, rate in rows:
            unit = "patches" if step == "segment" else "maps"
            print(f"{step:<10}{workers:>8}{rate:>14.1f}   {unit}")
        for step in ("simulate", "ingest", "segment"):
            one, two = (rate for s, _, rate in rows if s == step)
            print(f"{step}: 2 workers / 1 worker = {two / one:.2f}")
        if args.demo:
            seconds = time_demo(demo, tmp / "demo")
            print(
                f"demo data stage (simulate -> ingest -> noise -> segment, "
                f"{demo['mock']['n_cosmologies']} cosmologies): {seconds:.0f} s wall"
            )


def time_steps(config: dict, tmp: Path) -> tuple[list[tuple[str, int, float]], int]:
    """(step, workers, maps or patches per second) of simulate, ingest and segment, and the
    number of patches."""
    n_maps = config["mock"]["n_cosmologies"]
    rows = []
    for workers in (1, 2):
        root = tmp / f"mock{workers}"
        seconds = timed(simulate_mock, root, config["mock"], seed=config["seed"], workers=workers)
        rows.append(("simulate", workers, n_maps / seconds))
    for workers in (1, 2):
        out = tmp / f"patches{workers}.zarr"
        seconds = timed(ingest_run, config, root=tmp / "mock1", output=out, workers=workers)
        rows.append(("ingest", workers, n_maps / seconds))
    n_patches = xr.open_zarr(tmp / "patches1.zarr").sizes["sample"]
    for workers in (1, 2):
        out = tmp / f"segments{workers}.zarr"
        seconds = timed(
            segment, tmp / "patches1.zarr", out, config["segmentation"], workers=workers
        )
        rows.append(("segment", workers, n_patches / seconds))
    return rows, n_patches


def time_demo(demo: dict, workdir: Path) -> float:
    """Wall seconds of the demo's data stage exactly as `snakemake --cores all` runs it, in
    a fresh folder."""
    workdir.mkdir()
    cfg = {
        **demo,
        "results": str(workdir / "results"),
        "mock": {**demo["mock"], "root": str(workdir / "mock")},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [str(layout.segments(workdir / "results", level["name"])) for level in demo["noise"]]
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            *targets,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--cores",
            "all",
            "--directory",
            str(workdir),
            "--configfile",
            str(workdir / "config.yaml"),
            "--quiet",
            "all",
        ],
        check=True,
    )
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
