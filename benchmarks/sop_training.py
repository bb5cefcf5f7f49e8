"""SOP training throughput: samples/s of one optimiser step, before and after the cheaper steps.

    python benchmarks/sop_training.py [--batch 32] [--threads 2] [--compile]

Variants, all on the demo's model sizes (4 x 66 x 66 maps, m = 20 groups):
  all groups      every step runs the backbone on all m masked maps (the code before issue 8)
  train_groups=k  each map uses a random k of its m groups per step (``sop.train_groups``)
  channels_last   the same with NHWC tensors (``training.channels_last``, the default)
  compile         torch.compile of the backbone's embedding (with --compile; slow to build)

Prints samples/s and the ratio to "all groups", measured in this run on this machine.
Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from cosmo_sop.config import validate_config
from cosmo_sop.models import ConvRegressor, SumOfParts
from cosmo_sop.training import sop_model_settings


def build_sop(train_groups: int | None) -> SumOfParts:
    config = validate_config({})
    size, channels = config["ingest"]["patch_size"], len(config["ingest"]["bins"])
    torch.manual_seed(0)
    backbone = ConvRegressor(channels, input_size=size, **config["backbone"])
    settings = sop_model_settings(config["sop"])
    settings.pop("encoder_blocks")
    settings["train_groups"] = train_groups
    return SumOfParts.from_backbone(
        backbone, (channels, size, size), config["sop"]["encoder_blocks"], **settings
    )


def samples_per_second(model: SumOfParts, x: torch.Tensor, repeat: int = 4) -> float:
    """Best of ``repeat`` timed AdamW steps (after one warm-up step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    target = torch.zeros(x.shape[0], model.n_outputs)
    model.train()
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimiser.step()
        if i:
            times.append(time.perf_counter() - start)
    return x.shape[0] / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = build_sop(None)
    x = torch.randn(args.batch, *probe.input_shape, generator=torch.Generator().manual_seed(0))
    x = x * 0.01
    m = probe.config["n_groups"]
    rows: list[tuple[str, float]] = [("all groups", samples_per_second(probe, x))]
    for k in (8, 4):
        rows.append((f"train_groups={k}", samples_per_second(build_sop(k), x)))
    nhwc = build_sop(8).to(memory_format=torch.channels_last)
    rows.append(
        (
            "train_groups=8, channels_last",
            samples_per_second(nhwc, x.to(memory_format=torch.channels_last)),
        )
    )
    if args.compile:
        compiled = build_sop(8)
        compiled.backbone.embed = torch.compile(compiled.backbone.embed)
        samples_per_second(compiled, x, repeat=1)  # compile outside the timing
        rows.append(("train_groups=8, compiled backbone", samples_per_second(compiled, x)))
    print(f"SOP training steps, batch {args.batch}, m = {m}, {torch.get_num_threads()} threads")
    for name, rate in rows:
        print(f"  {name:36s} {rate:8.1f} samples/s  x{rate / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
