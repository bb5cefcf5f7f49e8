"""Throughput of every stage at the size of CosmoGridV1 (nside 512, 4 bins), per core, and
the full grid extrapolated from it: data volume, core-hours, wall time and job count per stage.

    python benchmarks/scaling.py                      # ~3 min on 2 cores
    python benchmarks/scaling.py --maps 12 --nodes 50 --cores-per-node 64

The maps are written in the release's real format (tests/fixtures/cosmogrid.py) and read by the
project's reader; the steps are the workflow's own (ingest alone and in parts, stage-3 noise,
watershed segmentation, a training step of the backbone and of SOP, SOP's explanation of a
map). Every figure is measured in this run on this machine; the ratios (2 workers / 1, parts /
one job) are the portable numbers. docs/scaling.md quotes one run. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from fixtures.cosmogrid import write_release  # noqa: E402 (tests/ and benchmarks/ first)
from models import best_time, training_throughput  # noqa: E402

from cosmo_sop.config import validate_config  # noqa: E402
from cosmo_sop.fanout import part_count  # noqa: E402
from cosmo_sop.ingest.run import run as run_ingest  # noqa: E402
from cosmo_sop.models import ConvRegressor, SumOfParts  # noqa: E402
from cosmo_sop.noise import run as run_noise  # noqa: E402
from cosmo_sop.segmentation import run as run_segmentation  # noqa: E402
from cosmo_sop.training import sop_model_settings  # noqa: E402

#: CosmoGridV1's grid: cosmologies, permutations, tomographic bins, nside.
GRID = {"cosmologies": 2500, "perms": 7, "bins": 4, "nside": 512}


def timed(func, *args, **kwargs) -> float:
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


def store_bytes(store: Path) -> int:
    return sum(path.stat().st_size for path in store.rglob("*") if path.is_file())


def data_stage(config: dict, root: Path, tmp: Path, n_maps: int) -> dict:
    """Rates (per second, per worker count) and bytes per sample of ingest, noise, segment."""
    rates, sizes = {}, {}
    stage3 = next(level["name"] for level in config["noise"] if level["shape_noise"])
    # Untimed first: the map files then come from the page cache in every timed run alike.
    run_ingest(config, root=root, output=tmp / "warm-up.zarr", workers=2)
    for workers in (1, 2):
        out = tmp / f"patches{workers}.zarr"
        rates["ingest", workers] = n_maps / timed(
            run_ingest, config, root=root, output=out, workers=workers
        )
    patches = tmp / "patches1.zarr"
    n_samples = xr.open_zarr(patches).sizes["sample"]
    sizes["patches"] = store_bytes(patches) / n_samples
    # The same ingest in parts of one cosmology, run one after another: the parts' overhead.
    per_job = {**config, "parallel": {**config["parallel"], "cosmologies_per_job": 1}}
    n_parts = part_count(n_maps // 2, 1)
    start = time.perf_counter()
    out = tmp / "parts.zarr"
    for part in ("start", *range(n_parts), "finish"):
        run_ingest(per_job, root=root, output=out, part=part, n_parts=n_parts)
    rates["ingest in parts", 1] = n_maps / (time.perf_counter() - start)
    for workers in (1, 2):
        out = tmp / f"{stage3}{workers}.zarr"
        rates["noise", workers] = n_samples / timed(
            run_noise, config, level=stage3, input_store=patches, output_store=out, workers=workers
        )
    noisy = tmp / f"{stage3}1.zarr"
    sizes["noise level"] = store_bytes(noisy) / n_samples
    for workers in (1, 2):
        out = tmp / f"segments{workers}.zarr"
        rates["segment", workers] = n_samples / timed(
            run_segmentation, config, input_store=noisy, output_store=out, workers=workers
        )
    sizes["segments"] = store_bytes(tmp / "segments1.zarr") / n_samples
    return {"rates": rates, "sizes": sizes, "n_samples": n_samples}


def models(config: dict) -> dict:
    """Training samples/s of the backbone and SOP, and SOP explanations per second: on the CPU
    with 1 and 2 torch threads, and on the GPU (key "gpu") where CUDA is present."""
    size, channels, sop_cfg = config["ingest"]["patch_size"], 4, config["sop"]
    batch, sop_batch = config["training"]["batch_size"], config["sop"]["training"]["batch_size"]
    devices = [(1, "cpu"), (2, "cpu")] + ([("gpu", "cuda")] if torch.cuda.is_available() else [])
    rates = {}
    for workers, device in devices:
        if device == "cpu":
            torch.set_num_threads(workers)
        torch.manual_seed(0)
        backbone = ConvRegressor(channels, input_size=size, **config["backbone"]).to(device)
        # The demo's batch sizes on the GPU; on the CPU a smaller batch gives the same rate.
        n, n_sop = (batch, sop_batch) if device == "cuda" else (64, 16)
        xb = torch.randn(n, channels, size, size, device=device) * 0.01
        rates["train backbone", workers] = training_throughput(
            backbone, list(backbone.parameters()), xb
        )
        settings = sop_model_settings(sop_cfg)
        blocks = settings.pop("encoder_blocks")
        sop = SumOfParts.from_backbone(backbone.eval(), (channels, size, size), blocks, **settings)
        sop = sop.to(device)
        trainable = [p for p in sop.parameters() if p.requires_grad]
        rates["train SOP", workers] = training_throughput(sop, trainable, xb[:n_sop])
        sop.eval()
        with torch.inference_mode():
            rates["explain (SOP)", workers] = n_sop / best_time(
                lambda s=sop, x=xb[:n_sop]: s(x), repeat=3
            )
    return rates


def plan(config: dict, measured: dict, args: argparse.Namespace) -> None:
    """The full grid on ``args.nodes`` nodes of ``args.cores_per_node`` cores."""
    n_maps = GRID["cosmologies"] * GRID["perms"]
    n_patch = 12 * config["ingest"]["centres_nside"] ** 2
    n_samples = n_maps * n_patch
    n_levels = len(config["noise"])
    epochs = config["training"]["epochs"]
    sop_epochs = config["sop"]["training"]["epochs"]
    train = config["ingest"]["split"]["train"]
    test = config["ingest"]["split"]["test"]
    rates = {**measured["data"]["rates"], **measured["models"]}
    sizes = measured["data"]["sizes"]
    cores = args.nodes * args.cores_per_node
    jobs = part_count(GRID["cosmologies"], args.cosmologies_per_job)
    raw = n_maps * GRID["bins"] * 12 * GRID["nside"] ** 2 * 4 * 2  # kappa and IA, float32
    print(
        f"\n== The full grid: {GRID['cosmologies']} cosmologies x {GRID['perms']} perms = "
        f"{n_maps} maps of {GRID['bins']} bins at nside {GRID['nside']}; {n_patch} patches "
        f"per map = {n_samples:,} samples; {n_levels} noise levels =="
    )
    print(
        f"cluster: {args.nodes} nodes x {args.cores_per_node} cores = {cores} cores; "
        f"parallel.cosmologies_per_job {args.cosmologies_per_job} -> {jobs} part jobs per store"
    )
    print(f"input maps (kappa + IA only): {raw / 1e12:.2f} TB")
    rows = [
        # stage, work units, rate key, jobs, output bytes
        ("ingest", n_maps, "ingest", jobs + 2, sizes["patches"] * n_samples),
        (
            "noise",
            n_samples * n_levels,
            "noise",
            n_levels,
            sizes["noise level"] * n_samples * n_levels,
        ),
        (
            "segment",
            n_samples * n_levels,
            "segment",
            (jobs + 2) * n_levels,
            sizes["segments"] * n_samples * n_levels,
        ),
        ("train backbone", n_samples * train * epochs * n_levels, "train backbone", n_levels, 0),
        ("train SOP", n_samples * train * sop_epochs * n_levels, "train SOP", n_levels, 0),
        ("explain (test split)", n_samples * test * n_levels, "explain (SOP)", n_levels, 0),
    ]
    print(
        f"{'stage':<22}{'per core':>12}{'core-hours':>12}{'jobs':>7}{'wall (h)':>10}"
        f"{'output (GB)':>13}"
    )
    for stage, units, key, n_jobs, output in rows:
        rate = rates[key, 1]
        core_hours = units / rate / 3600
        # A stage uses at most its jobs' cores: the parts of ingest and segmentation spread,
        # training is one job per level (its GPUs are not measured here).
        usable = cores if stage in ("ingest", "segment") else args.cores_per_node * n_jobs
        wall = core_hours / min(cores, usable)
        print(
            f"{stage:<22}{rate:>10.1f}/s{core_hours:>12.1f}{n_jobs:>7}{wall:>10.2f}"
            f"{output / 1e9:>13.1f}"
        )
    print(
        "wall (h) = core-hours / the cores its jobs can use (a stage's jobs at once, no queue wait)"
    )
    if ("train backbone", "gpu") not in rates:
        print("GPU: no CUDA device here; GPU-hours = samples / (samples/s on one GPU) / 3600")
        return
    for stage, units, key, _, _ in rows[3:]:
        gpu_hours = units / rates[key, "gpu"] / 3600
        print(f"{stage:<22}{rates[key, 'gpu']:>10.1f}/s on one GPU: {gpu_hours:.1f} GPU-hours")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maps", type=int, default=6, help="map files to time (even)")
    parser.add_argument("--nodes", type=int, default=20, help="CPU nodes of the stated cluster")
    parser.add_argument("--cores-per-node", type=int, default=32)
    parser.add_argument("--cosmologies-per-job", type=int, default=25)
    args = parser.parse_args()
    config = validate_config(
        {"source": "cosmogrid", "cosmogrid": {"root": "unused", "perms": 2}}, whole=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        release = write_release(
            tmp / "release", n_cosmologies=args.maps // 2, n_perms=2, nside=GRID["nside"]
        )
        config["cosmogrid"]["root"] = str(release.root)
        data = data_stage(config, release.root, tmp, args.maps)
    model_rates = models(config)
    print(f"\n== Measured on {args.maps} maps of nside {GRID['nside']} x {GRID['bins']} bins ==")
    for (step, workers), rate in {**data["rates"], **model_rates}.items():
        unit = "maps" if step.startswith("ingest") else "samples"
        print(f"{step:<18} {workers} worker(s): {rate:9.1f} {unit}/s")
    rates = {**data["rates"], **model_rates}
    for step in ("ingest", "noise", "segment", "train backbone", "train SOP", "explain (SOP)"):
        print(f"{step}: 2 workers / 1 = {rates[step, 2] / rates[step, 1]:.2f}")
        if (step, "gpu") in rates:
            print(f"{step}: one GPU / one core = {rates[step, 'gpu'] / rates[step, 1]:.1f}")
    in_parts = data["rates"]["ingest in parts", 1] / data["rates"]["ingest", 1]
    print(f"ingest in parts / one job (1 worker): {in_parts:.2f}")
    for store, size in data["sizes"].items():
        print(f"{store}: {size / 1e3:.1f} kB per sample on disk")
    plan(config, {"data": data, "models": model_rates}, args)


if __name__ == "__main__":
    main()
