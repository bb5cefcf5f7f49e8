"""The backbone's throughput by memory layout, block order and batch size: what its masked
passes cost.

    python benchmarks/backbone_layout.py [--threads 1 2] [--batches 16 32 64 128 256 512]

Every SOP step, explanation, floor, null and faithfulness curve is the demo's CNN on batches
of masked maps (4 x 66 x 66). For each thread count and batch size this prints maps/s of

  NCHW            the conv blocks on the caller's contiguous (NCHW) tensors
  act->pool       channels-last, every block activated before pooling (the usual order)
  embed           ``ConvRegressor.embed``: channels-last, and pooled before the activation
                  where no gradient flows (in the training step it runs act->pool)

in inference and in a training step (forward and backward to the input, as SOP's generator
needs), and the ratios of embed to both, measured in this run on this machine. The batch
size that gives the most maps/s is what ``sop.max_backbone_batch`` and the faithfulness
engine's ``max_batch`` are set from. Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from cosmo_sop.config import validate_config
from cosmo_sop.models import ConvRegressor


def nchw_embed(model: ConvRegressor, x: torch.Tensor) -> torch.Tensor:
    """``model.embed`` without the layout change: the blocks on the tensor as it comes."""
    x = model.scale(x)
    for block in model.blocks:
        x = block(x)
    return model.mlp(x)


def activate_then_pool_embed(model: ConvRegressor, x: torch.Tensor) -> torch.Tensor:
    """``model.embed`` with each block activated before its pooling (same values)."""
    x = model.scale(x.contiguous(memory_format=torch.channels_last))
    for block in model.blocks:
        x = block.pool(block.act(block.conv(x)))
    return model.mlp(x)


def maps_per_second(
    embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, train: bool, seconds: float
) -> float:
    """Maps/s of ``embed`` over ``x`` (one batch), repeated for about ``seconds``."""

    def once() -> None:
        if train:
            inputs = x.detach().requires_grad_(True)
            embed(inputs).square().sum().backward()
        else:
            with torch.inference_mode():
                embed(x)

    once()  # warm-up: kernel choice and allocation
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        once()
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    args = parser.parse_args()

    config = validate_config({})
    size, channels = config["ingest"]["patch_size"], len(config["ingest"]["bins"])
    torch.manual_seed(0)
    model = ConvRegressor(channels, input_size=size, **config["backbone"]).eval()
    model.requires_grad_(False)
    maps = torch.randn(max(args.batches), channels, size, size)
    print(f"demo backbone, {channels} x {size} x {size} maps; maps/s (embed / each other)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for train in (False, True):
            kind = "training step" if train else "inference"
            for batch in args.batches:
                x = maps[:batch]
                nchw = maps_per_second(lambda b: nchw_embed(model, b), x, train, args.seconds)
                act_first = maps_per_second(
                    lambda b: activate_then_pool_embed(model, b), x, train, args.seconds
                )
                last = maps_per_second(model.embed, x, train, args.seconds)
                print(
                    f"{threads} thread(s), {kind:13s} batch {batch:4d}: NCHW {nchw:7.0f}  "
                    f"act->pool {act_first:7.0f}  embed {last:7.0f}  "
                    f"(x{last / nchw:.2f}, x{last / act_first:.2f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
