"""Batches of a dataset: the epoch-seeded batch sampler and the collate function.

:class:`EpochBatchSampler` reshuffles deterministically per epoch, from ``(seed, epoch)``, and
keeps each batch of a lazily read dataset within few Zarr chunks; :func:`collate_batch` lets
the whole batches of :meth:`~cosmo_sop.training.data.PatchDataset.__getitems__` pass through a
:class:`torch.utils.data.DataLoader` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def collate_batch(
    data: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """DataLoader ``collate_fn``: batches from :meth:`PatchDataset.__getitems__` pass through,
    lists of per-sample dicts (any other map-style dataset) are stacked."""
    if isinstance(data, dict):
        return data
    return torch.utils.data.default_collate(data)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset positions, reshuffled deterministically for each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at an epoch boundary
    sees exactly the batches of an uninterrupted one. With ``groups`` (the Zarr chunk of each
    item of a lazily read dataset), the groups are shuffled and the items within each group, so
    consecutive batches read consecutive chunks.

    Parameters
    ----------
    n
        Number of items.
    batch_size
        Items per batch.
    shuffle
        Shuffle (training) or keep the dataset order (evaluation).
    seed
        Seed of the shuffles.
    drop_last
        Drop the last, incomplete batch (keeps batch statistics well defined while training).
    groups
        Optional group label per item, shape ``(n,)``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        groups: np.ndarray | None = None,
    ) -> None:
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last and self.n >= self.batch_size
        self.groups = None if groups is None else np.asarray(groups)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def lengths(self) -> list[int]:
        """The number of items of each batch of an epoch, in order."""
        return [min(self.batch_size, self.n - b * self.batch_size) for b in range(len(self))]

    def order(self) -> np.ndarray:
        """The positions of this epoch, in batch order."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.groups is None:
            return rng.permutation(self.n)
        _, group = np.unique(self.groups, return_inverse=True)
        group_rank = rng.permutation(group.max() + 1)[group]
        # Sort by (shuffled group, random key): shuffled groups, shuffled within each group.
        return np.lexsort((rng.random(self.n), group_rank))

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
