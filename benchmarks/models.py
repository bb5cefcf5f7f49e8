"""Cost of the models: backbone and SOP forward time per map, SOP's backbone passes per map
against the floor m + 1, training samples/s, and peak memory; on CPU, and on CUDA if present.

    python benchmarks/models.py [--batch 16] [--channels 4]
    python benchmarks/models.py --demo-training results   # + wall time of training the demo's models

Every figure is measured in this run on this machine; ratios are the portable numbers.
Not a test.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from cosmo_sop import layout
from cosmo_sop.config import load_config, validate_config
from cosmo_sop.models import ConvRegressor, SumOfParts
from cosmo_sop.training import sop_model_settings


def best_time(func, repeat: int = 5) -> float:
    func()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


class CountingEmbed:
    """Counts the rows the backbone embeds (each row is one backbone pass over one map)."""

    def __init__(self, backbone: ConvRegressor) -> None:
        self.rows = 0
        self._embed = backbone.embed
        backbone.embed = self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self._embed(x)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def benchmark(device: torch.device, batch: int, channels: int) -> None:
    config = validate_config({})
    size, sop_cfg = config["ingest"]["patch_size"], config["sop"]
    backbone = ConvRegressor(channels, input_size=size, **config["backbone"]).to(device).eval()
    settings = sop_model_settings(sop_cfg)
    settings.pop("encoder_blocks")
    sop = SumOfParts.from_backbone(
        backbone, (channels, size, size), sop_cfg["encoder_blocks"], **settings
    )
    sop = sop.to(device).eval()
    x = torch.randn(batch, channels, size, size, device=device) * 0.01
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\n== {name}: batch {batch}, {channels} x {size} x {size}, m = {sop_cfg['n_groups']} groups =="
    )

    with torch.inference_mode():
        t_backbone = best_time(lambda: backbone(x)) / batch
        t_sop = best_time(lambda: sop(x)) / batch
        counter = CountingEmbed(backbone)
        sop(x)
        passes = counter.rows / batch
        backbone.embed = counter._embed
    m = sop_cfg["n_groups"]
    print(f"backbone forward: {1e3 * t_backbone:8.3f} ms/map")
    print(
        f"SOP forward:      {1e3 * t_sop:8.3f} ms/map = {t_sop / t_backbone:.1f} backbone passes "
        f"(floor m + 1 = {m + 1}); backbone rows per map: {passes:.0f}"
    )

    # Training throughput: one optimiser step of each model on a batch of 64 maps.
    for label, model, params in (
        (
            "backbone",
            ConvRegressor(channels, input_size=size, **config["backbone"]).to(device),
            None,
        ),
        ("SOP", sop, [p for p in sop.parameters() if p.requires_grad]),
    ):
        n = 64 if label == "backbone" else batch
        xb = torch.randn(n, channels, size, size, device=device) * 0.01
        samples_per_second = training_throughput(model, params or list(model.parameters()), xb)
        print(f"{label} training: {samples_per_second:8.1f} samples/s")
    memory = "GPU allocated" if device.type == "cuda" else "process RSS"
    print(f"peak memory: {peak_memory_mb(device):.0f} MB ({memory})")


def training_throughput(
    model: torch.nn.Module, params: list[torch.nn.Parameter], xb: torch.Tensor
) -> float:
    """Samples per second of one AdamW step of ``model`` on the batch ``xb``."""
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    yb = torch.randn(xb.shape[0], 2, device=xb.device)
    model.train()

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        optimiser.step()

    return xb.shape[0] / best_time(step, repeat=3)


def demo_training(results: Path) -> None:
    """Train every model of the demo config on every noise level of ``results`` (its patch and
    segment stores), in a temporary folder, and print the wall time of each."""
    from cosmo_sop.training import train_backbone, train_sop

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for level in (level["name"] for level in config["noise"]):
            patches = layout.level_patches(results, level)
            segments = layout.segments(results, level)
            runs = Path(tmp) / level
            for name, train, args in (
                ("backbone", train_backbone, (patches, runs / "backbone", config)),
                ("xdnn", partial(train_backbone, bias_free=True), (patches, runs / "xdnn", config)),
                ("sop", train_sop, (patches, segments, runs / "backbone", runs / "sop", config)),
            ):
                start = time.perf_counter()
                train(*args)
                seconds = time.perf_counter() - start
                total += seconds
                print(f"demo training {level:>10s} {name:>8s}: {seconds:6.0f} s")
    print(f"demo training, all models and noise levels: {total:.0f} s ({total / 60:.1f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument(
        "--demo-training",
        type=Path,
        metavar="RESULTS",
        help="also time training the demo's models on the stores of this results folder",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    benchmark(torch.device("cpu"), args.batch, args.channels)
    if torch.cuda.is_available():
        benchmark(torch.device("cuda"), args.batch, args.channels)
    if args.demo_training is not None:
        demo_training(args.demo_training)


if __name__ == "__main__":
    main()
