"""One trainer for every network of cosmo-sop: the CNN backbone and the Sum-of-Parts model.

:func:`fit` trains any :class:`torch.nn.Module` whose predictions come from a function
``predict(model, batch) -> (B, n_outputs)`` (e.g. ``model(batch["kappa"])`` for the backbone,
``model(batch["kappa"], batch["segments"])`` for SOP) against ``batch["target"]``, the
standardised (Om, s8), with a mean-squared-error loss (``training.loss: mae``: the mean
absolute error, validated by the MSE all the same; ``cross_entropy``: the cross-entropy of
logits against class indices, for the image and text classifiers), AdamW
and a one-cycle (warm-up then cosine) learning-rate schedule, and early stopping on the
validation loss.

Everything a run needs to continue lives in ``run_dir``::

    checkpoint.pt      model, optimiser, schedule, early stopping, best weights, RNG states and
                       the metrics so far; written atomically after every epoch
    metrics.csv        one row per finished epoch (rewritten from the checkpoint, so a resumed
                       run never repeats a row)
    model.safetensors  the best weights (by validation loss), written when training ends
    model.json         sidecar: model config, label scaler, training config, data provenance

Running :func:`fit` again with the same ``run_dir`` resumes from the checkpoint: an interrupted
run (killed mid-epoch, say) finishes with exactly the metrics and weights of an uninterrupted
one on the same device, because all randomness of epoch ``e`` (shuffling, augmentation,
dropout) is derived from ``(seed, e)``. A checkpoint written under another configuration is
refused.

Launched by ``torchrun`` on several processes (GPUs), :func:`fit` trains them together on the
same global batches, each process on its shard of every batch, process 0 alone writing the run
folder (:mod:`cosmo_sop.training.distributed`); its checkpoints and weights are those a single
process writes, and either resumes the other's.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cosmo_sop import __version__
from cosmo_sop.batch_shard import BatchShard, computing_shard
from cosmo_sop.errors import InputError
from cosmo_sop.layout import CHECKPOINT, METRICS, WEIGHTS
from cosmo_sop.models.weights import save_weights
from cosmo_sop.storage import unwritable
from cosmo_sop.training import distributed
from cosmo_sop.training.augment import MAP_KEYS, augment_batch, mask_random_groups
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.checkpoint import (
    config_hash,
    read_checkpoint,
    set_rng_states,
    write_checkpoint,
    write_metrics,
)
from cosmo_sop.training.evaluation import (
    LOSSES,
    Batch,
    Predict,
    accuracy_and_cross_entropy,
    mse_per_output,
    output_names,
    squared_error_sums,
    to_device,
)
from cosmo_sop.training.optimisation import Optimisation, Progress, cpu_state
from cosmo_sop.training.options import (
    Placement,
    run_scope,
    trainable_parameters,
    training_options,
)

# Purposes of derived seeds, per epoch.
_SHUFFLE, _AUGMENT, _TORCH, _WORKERS, _MASK = range(5)


def fit(
    model: torch.nn.Module,
    train_data: torch.utils.data.Dataset,
    val_data: torch.utils.data.Dataset,
    predict: Predict,
    config: dict[str, Any] | None,
    run_dir: str | os.PathLike,
    params: Iterable[torch.nn.Parameter] | None = None,
    *,
    model_config: dict[str, Any] | None = None,
    on_batch_end: Callable[[int, int, float], None] | None = None,
    restart_stale: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in place, resuming from ``run_dir`` if a checkpoint is there.

    Parameters
    ----------
    model
        Any module; its initial weights are the caller's (seed them before building it).
    train_data, val_data
        Map-style datasets of dicts with ``target`` (n_outputs,) standardised and the inputs
        ``predict`` needs, e.g. :class:`cosmo_sop.training.data.PatchDataset`. Their ``scaler``
        and ``provenance`` attributes, if present, are recorded in the sidecar.
    predict
        ``predict(model, batch) -> (B, n_outputs)`` tensor; ``batch`` is a dict of tensors on the
        training device (``kappa`` (B, C, H, W), ``segments`` (B, H, W), ``target``, ...).
    config
        Training options: ``seed`` and keys of the config's ``training`` section; the others
        take the schema's defaults (see :func:`~cosmo_sop.training.options.training_options`).
    run_dir
        Folder of the checkpoint, metrics and final weights (created if needed).
    params
        Parameters to train (default: all with ``requires_grad``); the others are frozen during
        the run, the saved weights are the whole model's. Frozen sub-networks with batch norm or
        dropout should keep themselves in eval mode (``fit`` calls ``model.train()``).
    model_config
        JSON-serialisable description of the model for the sidecar (default: ``model.config``
        if the model has a dict attribute ``config``).
    on_batch_end
        Called as ``on_batch_end(epoch, batch_index, loss)`` after each optimiser step (epochs
        counted from 1), e.g. for logging; ``loss`` is the global batch's mean loss, on every
        process of a parallel run.
    restart_stale
        Discard a checkpoint in ``run_dir`` of another configuration or data and start afresh,
        instead of refusing it (the workflow's choice: Snakemake reruns a job only then).

    Returns
    -------
    dict
        ``best_epoch``, ``best_val_loss``, ``val_mse_<target>`` at the best epoch (standardised
        units), ``epochs_completed``, ``stopped_early``, ``device``, ``processes`` (1, or the
        number of torchrun processes), ``config_hash``. ``model`` holds the best weights on
        return, on the training device, in every process.

    Raises
    ------
    InputError
        For a bad option, an empty dataset, or (unless ``restart_stale``) a checkpoint of another
        configuration (options, model or data) in ``run_dir``.
    """
    cfg, run_dir = training_options(config), Path(run_dir)
    trainable = trainable_parameters(model, params)
    trained_names, run_hash = _identify(cfg, model, trainable, train_data, val_data, run_dir)
    if model_config is None and isinstance(getattr(model, "config", None), dict):
        model_config = model.config
    checkpoint, metrics = run_dir / CHECKPOINT, run_dir / METRICS

    # Several processes under torchrun: all compute, process 0 alone writes.
    with distributed.session(cfg["device"]) as world:
        if world.main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only or full results folder: one line, no traceback
                raise unwritable(run_dir, exc) from None
        with run_scope(cfg, model, trainable):
            run = _Run(model, predict, cfg, train_data, val_data, trainable, on_batch_end, world)
            try:
                progress = _resume(run, checkpoint, run_hash, restart_stale)
                if world.main:
                    write_metrics(metrics, progress.metrics)  # drops rows the checkpoint lacks
                title, epochs = f"training {run_dir.name}", cfg["epochs"]
                with run.bar(title, epochs, "epoch", progress.epoch) as bar:
                    while progress.epoch < cfg["epochs"] and not progress.stopped:
                        row = run.epoch(progress.epoch + 1, run_dir)  # train, then validate
                        progress.end_epoch(row, model, cfg["min_delta"], cfg["patience"])
                        if world.main:
                            write_checkpoint(checkpoint, run_hash, **run.state(progress))
                            write_metrics(metrics, progress.metrics)
                        bar.update(1)
                        train, val = row["train_loss"], row["val_loss"]
                        bar.set_postfix(train=f"{train:.4g}", val=f"{val:.4g}")
            finally:
                run.close()

        model.load_state_dict(progress.best_state)
        result = _result(progress, run.placement.device, run_hash, world)
        if world.main:
            sidecar = _sidecar(
                model, model_config, cfg, trained_names, train_data, val_data, result
            )
            save_weights(run_dir / WEIGHTS, progress.best_state, sidecar)
        distributed.barrier()  # the run folder is complete when fit returns, in every process
    return copy.deepcopy(result)


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (independent streams per purpose)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class _Run:
    """The pieces every epoch of a run uses: model, loaders, optimiser and randomness.

    Building it places the model on the run's device (and memory layout) and, in a parallel
    run, wraps it in DDP (``net``; ``model`` stays the unwrapped module) and gives each loader
    this process's shards of the global batches; :meth:`close` undoes the wrapping.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        predict: Predict,
        cfg: dict[str, Any],
        train_data: torch.utils.data.Dataset,
        val_data: torch.utils.data.Dataset,
        trainable: list[torch.nn.Parameter],
        on_batch_end: Callable[[int, int, float], None] | None,
        world: distributed.World,
    ) -> None:
        self.model, self.predict, self.cfg, self.world = model, predict, cfg, world
        device = distributed.process_device(cfg["device"], world)
        self.placement = placement = Placement.of(cfg, device)
        self.on_batch_end = on_batch_end
        model.to(placement.device)
        if placement.channels_last:
            model.to(memory_format=torch.channels_last)
        self.train_sampler = EpochBatchSampler(
            len(train_data),
            cfg["batch_size"],
            shuffle=True,
            seed=derived_seed(cfg["seed"], _SHUFFLE),
            drop_last=True,
            groups=getattr(train_data, "read_groups", None),
        )
        val_sampler = EpochBatchSampler(len(val_data), cfg["eval_batch_size"], shuffle=False)
        train_batches, val_batches = self.train_sampler, val_sampler
        if world.parallel:
            distributed.check_batches(self.train_sampler, world, "training.batch_size")
            distributed.check_batches(val_sampler, world, "training.eval_batch_size")
            train_batches = self.train_shards = distributed.ShardBatchSampler(train_batches, world)
            val_batches = distributed.ShardBatchSampler(val_batches, world)
        self.train_loader = _loader(train_data, train_batches, cfg, placement.device)
        self.val_loader = _loader(val_data, val_batches, cfg, placement.device)
        steps = len(self.train_sampler)
        self.optimisation = Optimisation(
            trainable, cfg, steps, placement.device, placement.amp_dtype
        )
        self.augment = torch.Generator() if cfg["augment"] else None
        self.masker = torch.Generator() if cfg["mask_probability"] > 0 else None
        self.net, self._restore = distributed.data_parallel(model, placement.device, world)

    def close(self) -> None:
        """Undo the DDP wrapping (its gradient hooks go with the wrapper) and the BatchNorm
        swap: ``model`` is the caller's module again."""
        self._restore()
        self.net = self.model

    def bar(self, desc: str, total: int, unit: str, initial: int = 0, **kw) -> tqdm:
        """A progress bar, shown by process 0 alone."""
        return _bar(self.cfg, desc, total, unit, initial, shown=self.world.main, **kw)

    def state(self, progress: Progress) -> dict[str, Any]:
        """What the checkpoint saves besides the RNG states: model, optimiser, progress."""
        return {
            "model": cpu_state(self.model),
            "optimisation": self.optimisation.state_dict(),
            "progress": asdict(progress),
        }

    def epoch(self, epoch: int, run_dir: Path) -> dict[str, Any]:
        """Train one epoch, validate, and return the epoch's row of ``metrics.csv``."""
        start = time.perf_counter()
        self._seed_epoch(epoch)
        with self.bar(f"epoch {epoch}", len(self.train_sampler), "batch", leave=False) as bar:
            try:
                train_loss = self._train(epoch, bar)
            except FloatingPointError as exc:
                raise FloatingPointError(f"{run_dir}: epoch {epoch}: {exc}") from None
        validation = self._validate()
        if not math.isfinite(validation["val_loss"]):
            raise FloatingPointError(f"{run_dir}: non-finite validation loss at epoch {epoch}")
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            **validation,
            "lr": self.optimisation.lr,
            "seconds": time.perf_counter() - start,
        }

    def _validate(self) -> dict[str, float]:
        """The validation metrics of the epoch (over all processes' shards in a parallel run)."""
        args = (self.model, self.val_loader, self.predict, self.placement)
        if self.cfg["loss"] == "cross_entropy":
            if not self.world.parallel:
                val_ce, val_accuracy, _, _ = accuracy_and_cross_entropy(*args)
            else:
                _, _, logits, classes = accuracy_and_cross_entropy(*args)
                ce = torch.nn.functional.cross_entropy(logits.double(), classes, reduction="sum")
                correct = (logits.argmax(1) == classes).sum()
                sums = distributed.all_reduce_sum([float(ce), float(correct), len(classes)])
                val_ce, val_accuracy = float(sums[0] / sums[2]), float(sums[1] / sums[2])
            return {"val_loss": val_ce, "val_accuracy": val_accuracy}
        if not self.world.parallel:
            val_mse, _, _ = mse_per_output(*args)
        else:
            squared, count, _, _ = squared_error_sums(*args)
            sums = distributed.all_reduce_sum([*squared.double().tolist(), count])
            val_mse = sums[:-1] / sums[-1]
        names = output_names(self.val_loader.dataset, len(val_mse))
        return {
            "val_loss": float(val_mse.mean()),
            **{f"val_mse_{n}": v for n, v in zip(names, val_mse.tolist(), strict=True)},
        }

    def _seed_epoch(self, epoch: int) -> None:
        # All randomness of an epoch derives from (seed, epoch): resuming replays nothing.
        seed = self.cfg["seed"]
        self.train_sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(derived_seed(seed, _WORKERS, epoch))
        if self.augment is not None:
            self.augment.manual_seed(derived_seed(seed, _AUGMENT, epoch))
        if self.masker is not None:
            self.masker.manual_seed(derived_seed(seed, _MASK, epoch))
        torch.manual_seed(derived_seed(seed, _TORCH, epoch))  # dropout uses the global RNG

    def _transform(self, batch: Batch) -> Batch:
        """Augmentation and random masking of a training batch, then its memory layout."""
        if self.augment is not None:
            batch = augment_batch(batch, self.augment)
        if self.masker is not None:
            batch = mask_random_groups(
                batch,
                generator=self.masker,
                probability=self.cfg["mask_probability"],
                grid=self.cfg["mask_grid"],
                min_keep=self.cfg["mask_min_keep"],
                max_keep=self.cfg["mask_max_keep"],
            )
        if self.placement.channels_last:
            key = next((k for k in MAP_KEYS if k in batch), None)
            if key is not None and batch[key].ndim == 4:
                batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    def _train(self, epoch: int, bar: tqdm) -> float:
        """One pass over the training batches; returns the mean training loss (per sample)."""
        device, amp_dtype = self.placement.device, self.placement.amp_dtype
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        n_seen, n_batches = 0, len(self.train_loader)
        # In a parallel run, the rows of its global batch that each batch here is.
        shards = self.train_shards.shards() if self.world.parallel else [None] * n_batches
        for b, batch in enumerate(self.train_loader):
            shard = shards[b]
            with computing_shard(shard):  # random draws for the whole global batch
                batch = self._transform(to_device(batch, device, channels_last=False))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    pred = self.predict(self.net, batch)
            loss = LOSSES[self.cfg["loss"]](pred.float(), batch["target"])
            weight = 1.0 if shard is None else distributed.loss_weight(shard, self.world)
            self.optimisation.step(loss if weight == 1.0 else loss * weight)
            loss_sum += loss.detach().double() * pred.shape[0]
            n_seen += pred.shape[0]
            bar.update(1)
            if b % 10 == 0 or b == n_batches - 1 or self.on_batch_end is not None:
                value = self._batch_loss(loss, shard)  # synchronises, so not on every batch
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"non-finite training loss at batch {b} "
                        "(lower config key 'training.lr' or set 'training.grad_clip_norm')"
                    )
                bar.set_postfix(loss=f"{(loss_sum / n_seen).item():.4g}", refresh=False)
                if self.on_batch_end is not None:
                    self.on_batch_end(epoch, b, value)
        if self.world.parallel:
            total, count = distributed.all_reduce_sum([float(loss_sum), n_seen]).tolist()
            return total / count
        return float(loss_sum / n_seen)

    def _batch_loss(self, loss: torch.Tensor, shard: BatchShard | None) -> float:
        """The mean loss of the global batch (of this batch in a single process)."""
        if shard is None:
            return loss.item()
        return float(distributed.all_reduce_sum([loss.item() * shard.size])[0] / shard.total)


def _identify(
    cfg: dict[str, Any],
    model: torch.nn.Module,
    trainable: list[torch.nn.Parameter],
    train_data: torch.utils.data.Dataset,
    val_data: torch.utils.data.Dataset,
    run_dir: Path,
) -> tuple[list[str], str]:
    """Names of the trained parameters, and the run's :func:`config_hash`."""
    if len(train_data) == 0 or len(val_data) == 0:
        raise InputError(run_dir, "training and validation data must not be empty")
    names_of = {id(p): n for n, p in model.named_parameters()}
    trained_names = [names_of[id(p)] for p in trainable]
    provenance = [getattr(d, "provenance", None) for d in (train_data, val_data)]
    run_hash = config_hash(cfg, model, trained_names, len(train_data), len(val_data), provenance)
    return trained_names, run_hash


def _resume(run: _Run, path: Path, run_hash: str, restart_stale: bool) -> Progress:
    """The run's progress so far: from its checkpoint (restoring model, optimiser and RNG
    states), or a fresh start."""
    progress = Progress(best_state=cpu_state(run.model))
    ckpt = read_checkpoint(path, run_hash, restart_stale)
    if ckpt is not None:
        run.model.load_state_dict(ckpt["model"])
        run.optimisation.load_state_dict(ckpt["optimisation"])
        progress = Progress(**ckpt["progress"])
        set_rng_states(ckpt["rng"])
    return progress


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader(
    data: torch.utils.data.Dataset,
    sampler: EpochBatchSampler,
    cfg: dict[str, Any],
    device: torch.device,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=cfg["num_workers"],
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker,
        generator=torch.Generator(),
    )


def _bar(
    cfg: dict[str, Any],
    desc: str,
    total: int,
    unit: str,
    initial: int = 0,
    *,
    shown: bool = True,
    **kw,
) -> tqdm:
    """A progress bar (switched off by option ``progress``, or by ``shown``)."""
    disable = not (cfg["progress"] and shown)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=disable,
        dynamic_ncols=True,
        **kw,
    )


def _result(
    progress: Progress, device: torch.device, run_hash: str, world: distributed.World
) -> dict[str, Any]:
    """What :func:`fit` returns, and the sidecar records: the best epoch and how the run went."""
    best = progress.metrics[progress.best_epoch - 1]
    return {
        "best_epoch": progress.best_epoch,
        "best_val_loss": progress.best_val_loss,
        **{k: v for k, v in best.items() if k.startswith("val_mse_")},
        "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped,
        "device": str(device),
        "processes": world.size,
        "config_hash": run_hash,
    }


def _sidecar(
    model: torch.nn.Module,
    model_config: dict[str, Any] | None,
    cfg: dict[str, Any],
    trained_names: list[str],
    train_data: torch.utils.data.Dataset,
    val_data: torch.utils.data.Dataset,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The sidecar of the trained weights: model, label scaler, options, data, metrics."""
    scaler = getattr(train_data, "scaler", None)
    return {
        "cosmo_sop_version": __version__,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_config": model_config,
        "label_scaler": scaler.state_dict() if scaler is not None else None,
        "training_config": cfg,
        "trained_parameters": trained_names,
        "data": {
            "train": getattr(train_data, "provenance", None),
            "val": getattr(val_data, "provenance", None),
        },
        "metrics": result,
    }
