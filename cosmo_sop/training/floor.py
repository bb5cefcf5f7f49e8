"""The floor under SOP's error: the backbone on random groups of SOP's own tokens.

SOP predicts a convex combination of the backbone's predictions on its m groups, so it can do
no better than the best such combination, and an SOP whose generator and selector learnt
nothing does as well as the *uniform average over random groups*. Two numbers per output put
the trained SOP in context (test split, standardised MSE):

- ``single_group``: the backbone on one random group of ``ceil(tau T)`` tokens;
- ``uniform_average``: the mean of the backbone's predictions on m random groups.

Random groups are drawn per map among its valid tokens (grid cells, or the segments present in
its label map) with a seeded generator, so the floor is deterministic.
"""

from __future__ import annotations

from typing import Any

import torch

from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.tokens import n_kept_tokens
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch


def random_token_sets(
    token_valid: torch.Tensor, n_groups: int, keep_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Random groups of ``ceil(keep_fraction x valid tokens)`` valid tokens per map.

    Parameters
    ----------
    token_valid
        bool, shape (B, T); the tokens a group may hold.
    generator
        CPU generator the groups are drawn from.

    Returns
    -------
    Tensor
        bool, shape (B, n_groups, T).
    """
    n_batch, n_tokens = token_valid.shape
    draw = torch.rand(n_batch, n_groups, n_tokens, generator=generator)
    draw = draw.to(token_valid.device) + (~token_valid[:, None, :]).float()  # invalid sort last
    ranks = draw.argsort(-1).argsort(-1)
    n_keep = n_kept_tokens(token_valid.sum(1), keep_fraction)
    return ranks < n_keep[:, None, None]


def present_tokens(token_map: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """bool (B, n_tokens): which token indices occur in each map of ``token_map`` (B, H, W)."""
    present = torch.zeros(token_map.shape[0], n_tokens, dtype=torch.bool, device=token_map.device)
    return present.scatter_(1, token_map.flatten(1), True)


@torch.inference_mode()
def random_group_floor(
    model: SumOfParts, data: torch.utils.data.Dataset, batch_size: int, seed: int
) -> dict[str, Any]:
    """Standardised test MSE per output of the backbone on random groups of SOP's tokens.

    Parameters
    ----------
    model
        The SOP model: its backbone, tokens, ``n_groups`` and ``keep_fraction`` are used.
    data
        Dataset of dicts with ``kappa``, ``target`` and, for segment tokens, ``segments``.
    seed
        Seed of the random groups.

    Returns
    -------
    dict
        ``single_group`` and ``uniform_average``: {output name: MSE}; ``n_maps``, ``n_groups``,
        ``keep_fraction``.
    """
    model.eval()
    device = next(model.parameters()).device
    n_groups, keep_fraction = model.config["n_groups"], model.config["keep_fraction"]
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=EpochBatchSampler(len(data), batch_size, shuffle=False),
        collate_fn=collate_batch,
    )
    single, average, n_maps = 0.0, 0.0, 0
    for batch in loader:
        kappa, target = batch["kappa"].to(device), batch["target"].to(device)
        segments = batch.get("segments") if model.config["tokens"] == "segments" else None
        segments = None if segments is None else segments.to(device)
        token_map = model.token_map(kappa, segments)
        n_tokens = int(token_map.max()) + 1
        groups = random_token_sets(
            present_tokens(token_map, n_tokens), n_groups, keep_fraction, generator
        )
        partial, _ = model.parts_of(kappa, groups, segments)
        single = single + ((partial[:, 0] - target) ** 2).sum(0).double()
        average = average + ((partial.mean(1) - target) ** 2).sum(0).double()
        n_maps += kappa.shape[0]
    names = list(data.scaler.names)
    as_dict = lambda total: dict(zip(names, (total / n_maps).tolist(), strict=True))  # noqa: E731
    return {
        "n_maps": n_maps,
        "n_groups": n_groups,
        "keep_fraction": keep_fraction,
        "single_group": as_dict(single),
        "uniform_average": as_dict(average),
    }
