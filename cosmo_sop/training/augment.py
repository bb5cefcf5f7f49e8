"""Augmentation of training batches: symmetries of the square, and random masking.

:func:`augment_batch` uses the isotropy of the sky: it applies one of the 8 symmetries of the
square (rotations by multiples of 90 degrees, and flips) per map, identically to the map and
its segments. :func:`mask_random_groups` zeroes random cells of some maps, so that a backbone
learns to predict from the partial maps that SOP feeds it. Both draw from a seeded
:class:`torch.Generator`, which the trainer seeds per epoch, through
:func:`~cosmo_sop.batch_shard.draw_rows`: a process of a data-parallel run draws for the whole
global batch and keeps its shard's rows, so every map gets the draws of a single-process run.
"""

from __future__ import annotations

import torch

from cosmo_sop.batch_shard import draw_rows

#: Number of symmetries of the square (the dihedral group D4) used for augmentation.
N_DIHEDRAL = 8

#: Batch keys of the inputs that augmentation and masking act on: kappa maps, or images.
MAP_KEYS = ("kappa", "images")


def map_key(batch: dict[str, torch.Tensor]) -> str:
    """The key of a batch's input maps: ``kappa`` or ``images``."""
    for key in MAP_KEYS:
        if key in batch:
            return key
    raise KeyError(f"a training batch needs one of {MAP_KEYS}, got {sorted(batch)}")


def dihedral_transform(maps: torch.Tensor, element: int) -> torch.Tensor:
    """Apply symmetry ``element`` (0..7) of the square to the last two axes of ``maps``.

    ``element = 4 * flip + r``: a flip of the x axis if ``flip``, then a rotation by ``r * 90``
    degrees. Element 0 is the identity.
    """
    flip, turns = divmod(int(element), 4)
    if flip:
        maps = maps.flip(-1)
    return torch.rot90(maps, turns, dims=(-2, -1)) if turns else maps


def augment_batch(
    batch: dict[str, torch.Tensor], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Apply a random symmetry of the square to each map of a batch, the same to its segments.

    Rotations by 90 degrees and flips leave the statistics of an isotropic field unchanged.
    Each symmetry is a permutation of the pixels, so the whole batch is moved by one gather per
    array, with the per-map permutation picked from a table of the 8 (no loop over maps, and
    deterministic on every device). Non-square maps only get the 4 symmetries that keep their
    shape.

    Parameters
    ----------
    batch
        Dict with ``kappa`` or ``images`` (B, C, H, W) and optionally ``segments`` (B, H, W), on
        any device.
    generator
        CPU generator the symmetries are drawn from (seed it per epoch for reproducible runs).

    Returns
    -------
    A new dict with contiguous maps and ``segments``; other entries (``target``, ...) are
    passed through. ``out["symmetry"]`` (B,) holds the element applied to each map (see
    :func:`dihedral_transform`).
    """
    key = map_key(batch)
    kappa = batch[key]
    n, h, w = kappa.shape[0], kappa.shape[-2], kappa.shape[-1]
    # Identity, half turn, flip and flip + half turn are the symmetries that keep H x W maps H x W.
    allowed = list(range(N_DIHEDRAL)) if h == w else [0, 2, 4, 6]
    choice = draw_rows(lambda k: torch.randint(0, len(allowed), (k,), generator=generator), n)
    pixels = torch.arange(h * w, device=kappa.device).reshape(h, w)
    # sources[j, p]: the input pixel that symmetry allowed[j] moves to output pixel p.
    sources = torch.stack([dihedral_transform(pixels, e).reshape(-1) for e in allowed])
    index = sources[choice.to(kappa.device)]  # (B, H * W)
    out = dict(batch)
    out["symmetry"] = torch.tensor(allowed)[choice].to(kappa.device)
    for name in (key, "segments"):
        if name in batch:
            maps = batch[name]
            flat = maps.reshape(n, -1, h * w)
            out[name] = flat.gather(-1, index[:, None, :].expand_as(flat)).reshape(maps.shape)
    return out


def mask_random_groups(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    probability: float,
    grid: int,
    min_keep: float,
    max_keep: float,
) -> dict[str, torch.Tensor]:
    """Zero random cells of some maps, so a backbone learns to predict from partial maps.

    A Sum-of-Parts model feeds its frozen backbone masked maps g ⊙ x that keep about 20% of the
    map, so the backbone's predictions on such inputs must mean something. Each map is masked
    with ``probability``: it is cut into a ``grid`` x ``grid`` lattice of cells (SOP's patch
    tokens) and a random fraction, uniform in [``min_keep``, ``max_keep``], of the cells is kept;
    kappa is set to 0 (its mean) elsewhere. ``min_keep = max_keep = tau`` masks like SOP's groups.

    Parameters
    ----------
    batch
        Dict with ``kappa`` or ``images`` (B, C, H, W); other entries pass through.
    generator
        CPU generator the masks are drawn from (seeded per epoch by the trainer).
    """
    key = map_key(batch)
    kappa = batch[key]
    n, h, w = kappa.shape[0], kappa.shape[-2], kappa.shape[-1]
    masked = draw_rows(lambda k: torch.rand(k, generator=generator), n) < probability
    keep = min_keep + (max_keep - min_keep) * draw_rows(
        lambda k: torch.rand(k, generator=generator), n
    )
    # A cell is kept when its random rank falls below the kept fraction of the cells.
    scores = draw_rows(lambda k: torch.rand(k, grid * grid, generator=generator), n)
    ranks = scores.argsort(dim=1).argsort(dim=1).float() / (grid * grid)
    cells = (ranks < keep[:, None]) | ~masked[:, None]  # (B, grid * grid)
    row = torch.arange(h) * grid // h
    col = torch.arange(w) * grid // w
    pixel_cell = (row[:, None] * grid + col[None, :]).reshape(-1)  # (H * W,)
    pixel_mask = cells[:, pixel_cell].reshape(n, 1, h, w).to(kappa.device, kappa.dtype)
    return {**batch, key: kappa * pixel_mask}
