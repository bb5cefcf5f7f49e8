"""The shard of a global batch that this process computes on, for batch-wide random draws.

Data-parallel training (:mod:`cosmo_sop.training.distributed`) splits every global batch of
``total`` maps into contiguous shards, one per process. Randomness drawn per batch (the
augmentation's symmetries, the backbone's random masks, SOP's sampled groups) would give a shard
other numbers than the same maps get in a single-process run, where one draw covers the whole
batch. :func:`draw_rows` keeps them equal: inside :func:`computing_shard`, a draw for the shard's
``n`` rows is made for all ``total`` rows of the global batch, from the same generator state on
every process, and the shard's rows are kept. Outside it (a single process) the draw is exactly
the call it replaces, so single-process runs consume their generators as before.

Only draws made through :func:`draw_rows` are matched; dropout (torch's own layers) draws per
process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchShard:
    """Rows ``start:stop`` of a global batch of ``total`` rows."""

    start: int
    stop: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop <= self.total:
            raise ValueError(f"not a shard of a batch: {self}")

    @property
    def size(self) -> int:
        return self.stop - self.start


_CURRENT: ContextVar[BatchShard | None] = ContextVar("cosmo_sop_batch_shard", default=None)


@contextlib.contextmanager
def computing_shard(shard: BatchShard | None) -> Iterator[None]:
    """Within the block, :func:`draw_rows` draws for the global batch of ``shard`` (None: for
    the batch at hand, as in a single process)."""
    token = _CURRENT.set(shard)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_shard() -> BatchShard | None:
    """The shard set by the innermost :func:`computing_shard`, or None."""
    return _CURRENT.get()


def draw_rows(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """``draw(n)``, random numbers for ``n`` rows (first axis), as this shard's rows of the draw
    for the whole global batch when a shard is set (see the module docstring).

    Raises
    ------
    ValueError
        If a shard is set and ``n`` is not its size (a draw for another batch than the shard's).
    """
    shard = _CURRENT.get()
    if shard is None:
        return draw(n)
    if n != shard.size:
        raise ValueError(f"a draw for {n} rows inside a shard of {shard.size} rows ({shard})")
    return draw(shard.total)[shard.start : shard.stop]
