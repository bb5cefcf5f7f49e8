"""Data-parallel training over several processes (GPUs), launched by ``torchrun``.

With config key ``training.gpus`` above 1 the workflow starts a training command as
``torchrun --standalone --nproc_per_node <gpus> -m cosmo_sop train-...`` (see
:mod:`cosmo_sop.launch`) instead of ``python -m cosmo_sop train-...``: one process per GPU, all
running the same command. By hand::

    torchrun --standalone --nproc_per_node 4 -m cosmo_sop train-backbone \\
        --patches results/noiseless/patches.zarr --output results/noiseless/models/backbone

On several nodes (``training.nodes``), one ``torchrun`` per node meets the others at a
rendezvous on the first node; in a SLURM allocation of N nodes with one task per node::

    srun --nodes N --ntasks-per-node 1 torchrun --nnodes N --nproc_per_node 4 \\
        --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d \\
        --rdzv_endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500 \\
        -m cosmo_sop train-backbone ...

(the run folder and the stores on a file system all nodes share). Without torchrun's
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), or with one process, training is the
single-process training, unchanged.

How a run of W processes works:

- **Process group** (:func:`session`): NCCL on CUDA, gloo on the CPU; process ``LOCAL_RANK``
  computes on GPU ``cuda:LOCAL_RANK`` (config ``training.device`` ``auto`` or ``cuda``).
  :func:`~cosmo_sop.training.runs.train_backbone`, :func:`~cosmo_sop.training.runs.train_sop`
  and :func:`~cosmo_sop.training.loop.fit` open it if it is not open, and close it at the end.
- **Batches** (:class:`ShardBatchSampler`): the trainer's
  :class:`~cosmo_sop.training.batches.EpochBatchSampler` makes the same global batches of
  ``training.batch_size`` maps as in a single process; each process reads a contiguous shard of
  every one (:func:`shard_of`: sizes differ by at most one map), in its own DataLoader (its own
  ``training.num_workers`` workers reading the Zarr chunks). Training drops the last incomplete
  batch as before. Each process's loss, a mean over its shard, is weighted by
  ``shard size * W / batch size``, so the gradient that DDP averages over the processes is the
  gradient of the global batch's mean loss even when W does not divide the batch.
- **Randomness**: augmentation, random masks and SOP's sampled groups are drawn for the whole
  global batch on every process, which keeps its shard's rows (:mod:`cosmo_sop.batch_shard`):
  every map gets the draws it gets in a single-process run, whose results are unchanged.
  Dropout (off in the default models) is drawn per process.
- **Model** (:func:`data_parallel`): the trained parameters are wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel` (frozen ones, such as SOP's backbone, are
  left out by DDP itself; every trained parameter takes part in each step, so there is no
  unused-parameter search). BatchNorm layers become SyncBatchNorm on CUDA (statistics of the
  global batch, as in a single process); on the CPU, where torch has no SyncBatchNorm, a
  BatchNorm layer normalises by its shard (the default backbone has none).
- **Validation**: each process evaluates its shards of the validation batches; the sums of
  squared errors (or of cross-entropies) are all-reduced, so every process computes the same
  validation loss and agrees on the best epoch and on early stopping.
- **Files**: process 0 alone writes the checkpoint, ``metrics.csv``, the weights and the test
  metrics; the others wait at a barrier. Checkpoints and weights hold the unwrapped model's
  state, so a run may be resumed with another number of processes (the config hash leaves
  ``gpus`` and ``nodes`` out) and its weights load anywhere.

Results agree with a single-process run to float rounding (shard sums and the all-reduce add in
another order), not bit for bit: ``tests/test_distributed_training.py`` states the tolerance.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cosmo_sop.batch_shard import BatchShard
from cosmo_sop.errors import InputError
from cosmo_sop.training.batches import EpochBatchSampler
from cosmo_sop.training.options import select_device

#: How long the other processes wait for process 0 (its test evaluation, say) at a barrier.
WAIT_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's ``rank`` (and ``local_rank`` on its node) of ``size``."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """True for the process that writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched() -> World:
    """The world that torchrun's environment describes (one process without it)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    try:
        size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError(
            "torchrun environment", "RANK, LOCAL_RANK, WORLD_SIZE must be integers"
        ) from None
    return World(rank, local_rank, size) if size > 1 else World()


_STATE: dict[str, Any] = {"world": World(), "wait_group": None}


def current() -> World:
    """The world of the open :func:`session` (one process outside any)."""
    return _STATE["world"] if dist.is_available() and dist.is_initialized() else World()


def process_device(name: str, world: World) -> torch.device:
    """The device of this process: :func:`select_device` of config ``training.device``, and for
    CUDA in a parallel run the GPU of the process's local rank.

    Raises
    ------
    InputError
        For a CUDA device with an index in a parallel run, or fewer GPUs than local processes.
    """
    device = select_device(name)
    if not world.parallel or device.type != "cuda":
        return device
    where = "config key 'training.device'"
    if name not in ("auto", "cuda"):
        raise InputError(where, f"{name!r}: with several processes each takes cuda:LOCAL_RANK")
    n_gpus = torch.cuda.device_count()
    if world.local_rank >= n_gpus:
        raise InputError(where, f"process of local rank {world.local_rank}: only {n_gpus} GPU(s)")
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def session(device_name: str) -> Iterator[World]:
    """The process group of a torchrun launch, open within the block (NCCL on CUDA, gloo on the
    CPU), and this process's :class:`World`. Nested sessions share the outer one's group; without
    torchrun's environment the block runs as the one process there is.
    """
    world = launched()
    if not world.parallel or dist.is_initialized():
        yield current()
        return
    device = process_device(device_name, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size
    )
    # Waiting for process 0 may take long (its test evaluation): a CPU group with a long
    # timeout, so that no NCCL watchdog ends the waiting processes.
    _STATE.update(world=world, wait_group=dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    try:
        yield world
    finally:
        _STATE.update(world=World(), wait_group=None)
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process of the open session is here (nothing outside one)."""
    if current().parallel:
        dist.barrier(group=_STATE["wait_group"])


def all_reduce_sum(values: torch.Tensor | list[float]) -> torch.Tensor:
    """The sums over the processes of ``values`` (float64, on the CPU; ``values`` unchanged)."""
    total = torch.as_tensor(values, dtype=torch.float64).detach().cpu().clone()
    if current().parallel:
        if dist.get_backend() == "nccl":
            on_device = total.cuda()
            dist.all_reduce(on_device)
            return on_device.cpu()
        dist.all_reduce(total)
    return total


# --------------------------------------------------------------------------------------------
# Batches


def shard_of(total: int, world: World) -> BatchShard:
    """This process's contiguous rows of a global batch of ``total`` rows: the first
    ``total % size`` processes take one row more."""
    base, extra = divmod(total, world.size)
    start = world.rank * base + min(world.rank, extra)
    return BatchShard(start, start + base + (world.rank < extra), total)


class ShardBatchSampler(torch.utils.data.Sampler):
    """This process's shard of every batch of an :class:`EpochBatchSampler` (empty shards, of
    batches with fewer rows than processes, are skipped).

    ``set_epoch`` reaches the wrapped sampler, so the global batches stay those of a
    single-process run; :meth:`shard` says which rows of its global batch a shard is.
    """

    def __init__(self, batches: EpochBatchSampler, world: World) -> None:
        self.batches, self.world = batches, world

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def shards(self) -> list[BatchShard]:
        """The shards this process reads, in order (one per non-empty shard)."""
        shards = (shard_of(n, self.world) for n in self.batches.lengths())
        return [shard for shard in shards if shard.size > 0]

    def shard(self, index: int) -> BatchShard:
        """The shard of the ``index``-th batch this process reads."""
        return self.shards()[index]

    def __len__(self) -> int:
        return len(self.shards())

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            shard = shard_of(len(batch), self.world)
            if shard.size > 0:
                yield batch[shard.start : shard.stop]


def check_batches(batches: EpochBatchSampler, world: World, what: str) -> None:
    """Refuse batches that leave a process without rows (fewer rows than processes).

    Raises
    ------
    InputError
        Naming the config key (``what``) to raise.
    """
    lengths = batches.lengths()  # the first batch is the largest
    if world.parallel and (not lengths or lengths[0] < world.size):
        raise InputError(
            f"config key '{what}'",
            f"batches of {lengths[0] if lengths else 0} maps for {world.size} processes: "
            "each process needs at least one map of every batch",
        )


def loss_weight(shard: BatchShard, world: World) -> float:
    """Factor of a shard's mean loss that makes DDP's average over the processes the gradient
    of the global batch's mean loss (1 when the shards are equal)."""
    return shard.size * world.size / shard.total


# --------------------------------------------------------------------------------------------
# Model


class _DataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP whose other attributes are the wrapped module's (``predict`` functions read, e.g.,
    ``model.config``; calls must go through ``forward`` for gradients to be averaged)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def data_parallel(
    model: torch.nn.Module, device: torch.device, world: World
) -> tuple[torch.nn.Module, Callable[[], None]]:
    """``model`` for training steps: wrapped in DDP in a parallel run (BatchNorm made
    SyncBatchNorm on CUDA), else itself; and the function that undoes the BatchNorm swap.

    Call it with the model on ``device`` and the frozen parameters' ``requires_grad`` off.
    The swapped layers share their parameters and statistics with the originals, so ``model``'s
    state dict is the same before, during and after.
    """
    if not world.parallel:
        return model, lambda: None
    swapped = []
    if device.type == "cuda":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, torch.nn.SyncBatchNorm
                ):
                    setattr(parent, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
                    swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)

    net = _DataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False,
    )
    return net, restore
