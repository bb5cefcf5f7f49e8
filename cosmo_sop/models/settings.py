"""Validation of the Sum-of-Parts constructor's settings, with errors that name the argument."""

from __future__ import annotations

from collections.abc import Sequence


def check_sop_settings(
    input_shape: Sequence[int],
    task: str,
    tokens: str,
    patch_tokens: int,
    n_heads: int,
    d_model: int,
    n_groups: int,
    keep_fraction: float,
    attention: str,
    max_overlap: float,
    selector_init: str,
    selector_normalisation: str,
    train_groups: int | None,
    max_backbone_batch: int,
) -> None:
    """Raise ValueError naming the first invalid constructor argument."""
    choices = {
        "task": (task, ("regression", "classification")),
        "tokens": (tokens, ("patches", "segments")),
        "attention": (attention, ("sparsemax", "softmax")),
        "selector_init": (selector_init, ("uniform", "backbone")),
        "selector_normalisation": (selector_normalisation, ("sparsemax", "entmax15", "softmax")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    counts = dict(
        patch_tokens=patch_tokens,
        n_heads=n_heads,
        d_model=d_model,
        n_groups=n_groups,
        max_backbone_batch=max_backbone_batch,
        **({} if train_groups is None else {"train_groups": train_groups}),
    )
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if not 0.0 < max_overlap <= 1.0:
        raise ValueError(f"max_overlap must lie in (0, 1], got {max_overlap!r}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction!r}")
    if len(input_shape) != 3 or any(int(n) < 1 for n in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive sizes, got {input_shape!r}")
    if tokens == "patches" and patch_tokens > min(input_shape[1:]):
        raise ValueError(f"patch_tokens={patch_tokens} exceeds the input size {input_shape!r}")
