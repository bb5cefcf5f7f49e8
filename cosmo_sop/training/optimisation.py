"""The optimiser of a run and its early stopping.

:class:`Optimisation` steps AdamW, its learning-rate schedule (one-cycle: linear warm-up, then
cosine decay; linear warm-up then inverse square root; or constant) and the fp16 gradient scaler together. :class:`Progress` is where a
run stands: finished epochs, their metrics, early stopping on the validation loss and the best
weights. Both are saved in the checkpoint after every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict, contiguous (safetensors needs it) and unshared."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _inverse_sqrt(step: int, warmup: float) -> float:
    """Learning-rate factor of step ``step`` (from 0): linear warm-up, then inverse square root.

    The decay of the authors' SOP runs: the rate falls slowly, so late steps still learn.
    """
    step += 1
    return step / warmup if step < warmup else math.sqrt(warmup / step)


class Optimisation:
    """AdamW, its learning-rate schedule and the fp16 gradient scaler, stepped together.

    Parameters
    ----------
    trainable
        The parameters to train; biases and normalisation scales (1-d) are not decayed.
    cfg
        Training options (``lr``, ``weight_decay``, ``schedule``, ``warmup_fraction``,
        ``epochs``, ``grad_clip_norm``).
    steps_per_epoch
        Optimiser steps per epoch, for the length of the schedule.
    amp_dtype
        Autocast dtype of the run; fp16 gets loss scaling.
    """

    def __init__(
        self,
        trainable: list[torch.nn.Parameter],
        cfg: Mapping[str, Any],
        steps_per_epoch: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.trainable = trainable
        self.grad_clip_norm = cfg["grad_clip_norm"]
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
        if cfg["schedule"] == "onecycle":  # linear warm-up to lr, then cosine decay
            total_steps = cfg["epochs"] * steps_per_epoch
            warmup = cfg["warmup_fraction"]
            if float(warmup * total_steps) == 1.0:
                # A warm-up of exactly one step ends where it starts, and torch divides by its
                # length (ZeroDivisionError at the first step, e.g. 0.1 of 2 epochs x 5
                # batches). A hair shorter is the same schedule: the peak from step 0 on.
                warmup = (1 - 1e-9) / total_steps
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=cfg["lr"],
                total_steps=total_steps,
                pct_start=warmup,
                anneal_strategy="cos",
                cycle_momentum=False,
            )
        elif cfg["schedule"] == "inverse_sqrt":  # linear warm-up, then lr sqrt(warm-up / step)
            warmup = max(1.0, cfg["warmup_fraction"] * cfg["epochs"] * steps_per_epoch)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, partial(_inverse_sqrt, warmup=warmup)
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(
                self.optimizer, factor=1.0, total_iters=0
            )
        # Loss scaling only for fp16, whose narrow exponent range underflows small gradients.
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and take one step of the optimiser and the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        if self.grad_clip_norm is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])


@dataclass
class Progress:
    """Where a run stands: finished epochs, their metrics, early stopping and the best weights.

    Attributes
    ----------
    best_state
        CPU copy of the weights of the best epoch so far (the initial weights before any).
    epoch
        Epochs finished.
    metrics
        One row per finished epoch (the rows of ``metrics.csv``).
    best_val_loss, best_epoch
        The lowest validation loss and its epoch (counted from 1).
    bad_epochs
        Epochs since the last improvement by more than ``min_delta``.
    stopped
        True once ``patience`` epochs in a row brought no improvement.
    """

    best_state: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def end_epoch(
        self, row: dict[str, Any], model: torch.nn.Module, min_delta: float, patience: int
    ) -> None:
        """Record an epoch's metrics ``row``, keep the weights if best, decide on stopping."""
        self.epoch = row["epoch"]
        self.metrics.append(row)
        if row["val_loss"] < self.best_val_loss - min_delta:
            self.best_val_loss, self.best_epoch, self.bad_epochs = row["val_loss"], row["epoch"], 0
            self.best_state = cpu_state(model)
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= patience
