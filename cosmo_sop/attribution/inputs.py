"""The calling conventions shared by the attribution methods.

Every method of :mod:`cosmo_sop.attribution.registry` gets its arguments through these checks
and returns through :func:`finish`: inputs follow the model's device and dtype and are never
modified; segments are relabelled 0..S-1 per map; the model is in eval mode for the call; the
stochastic methods draw from torch's and numpy's global generators seeded for the block (captum
samples from both and takes no generator), whose state is put back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cosmo_sop.errors import InputError


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore its train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global generators for the block, then restore them.

    captum's samplers draw from the global generators (``torch.randn``, ``torch.bernoulli``,
    ``np.random.choice``, ``np.random.uniform``) and take no generator argument, so the only
    way to make them reproducible is to seed the global state; it is put back afterwards so
    that the caller's random streams are not disturbed. ``seed=None`` uses the state as is.
    """
    if seed is None:
        yield
        return
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


def over_maps(iterable: range, enabled: bool, name: str) -> Iterator[int]:
    """``iterable`` with a progress bar over maps named ``name`` when ``enabled``."""
    return iter(tqdm(iterable, desc=name, unit="map", disable=not enabled, leave=False))


def _reference(model: nn.Module) -> Tensor | None:
    """A parameter or buffer of ``model``, to read its device and dtype; None if it has none."""
    return next(model.parameters(), next(model.buffers(), None))


def prepare_inputs(model: nn.Module, inputs: Any, where: str) -> Tensor:
    """``inputs`` as a detached (B, C, H, W) float tensor on the model's device and dtype."""
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        got = (
            f"{inputs.dtype} tensor of shape {tuple(inputs.shape)}"
            if isinstance(inputs, Tensor)
            else type(inputs).__name__
        )
        raise InputError(where, f"inputs must be a float tensor of shape (B, C, H, W), got {got}")
    if inputs.shape[0] == 0:
        raise InputError(where, "inputs hold no maps (batch size 0)")
    reference = _reference(model)
    if reference is not None:
        inputs = inputs.to(device=reference.device, dtype=reference.dtype)
    return inputs.detach()


def check_target(model: nn.Module, target: Any, where: str) -> int:
    """``target`` as an output index of ``model`` (checked against its ``n_outputs``)."""
    is_int = isinstance(target, (int, np.integer)) and not isinstance(target, bool)
    n_outputs = getattr(model, "n_outputs", None)
    if not is_int or target < 0 or (isinstance(n_outputs, int) and target >= n_outputs):
        valid = f"0..{n_outputs - 1}" if isinstance(n_outputs, int) else "a non-negative integer"
        raise InputError(where, f"target must be an output index in {valid}, got {target!r}")
    return int(target)


def prepare_segments(segments: Any, inputs: Tensor, where: str) -> Tensor:
    """Label maps (B, H, W) relabelled 0..S_b-1 per map, int64, on the inputs' device.

    Labels need not be contiguous (a map may have lost a segment to a crop); relabelling
    makes every captum feature cover at least one pixel.
    """
    if segments is None:
        raise InputError(
            where, "needs segments: integer label maps of shape (B, H, W), one per input map"
        )
    if isinstance(segments, np.ndarray):
        segments = torch.from_numpy(segments)
    expected = (inputs.shape[0], *inputs.shape[2:])
    if not isinstance(segments, Tensor) or tuple(segments.shape) != expected:
        got = tuple(segments.shape) if isinstance(segments, Tensor) else type(segments).__name__
        raise InputError(where, f"segments must have shape (B, H, W) = {expected}, got {got}")
    if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
        raise InputError(where, f"segments must hold integer labels, got dtype {segments.dtype}")
    segments = segments.to(device=inputs.device, dtype=torch.int64)
    # Give every map its own label range, rank all labels at once, then restart each map at 0:
    # the labels of one map form a contiguous block of the ranks.
    shifted = segments - segments.min()
    keyed = shifted + torch.arange(len(segments), device=segments.device)[:, None, None] * (
        shifted.max() + 1
    )
    ranks = torch.unique(keyed, return_inverse=True)[1]
    return ranks - ranks.flatten(1).min(dim=1).values[:, None, None]


def finish(attribution: Tensor) -> Tensor:
    """An attribution as returned by every method: detached, float32, on the CPU."""
    return attribution.detach().to(device="cpu", dtype=torch.float32)
