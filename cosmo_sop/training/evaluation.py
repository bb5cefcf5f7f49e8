"""Evaluation of a model on a dataset: per-output mean-squared errors, and its predictions.

:func:`evaluate` is the public entry (test metrics of a trained model, in standardised and
physical units); :func:`mse_per_output` is the validation pass that the trainer runs after
every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from cosmo_sop.config import defaults
from cosmo_sop.training.augment import MAP_KEYS
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.options import Placement, select_device

Batch = dict[str, torch.Tensor]
#: The training losses (config key ``training.loss``): ``loss(prediction, target)``, batch mean.
#: ``mae`` (the mean absolute error) trains a regression as ``mse`` does and is validated and
#: tested by its MSE as well; ``cross_entropy`` takes logits (B, K) and class indices (B,).
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": torch.nn.functional.mse_loss,
    "mae": torch.nn.functional.l1_loss,
    "cross_entropy": torch.nn.functional.cross_entropy,
}
#: ``predict(model, batch) -> (B, n_outputs)``: how a model's prediction comes from a batch.
Predict = Callable[[torch.nn.Module, Batch], torch.Tensor]


def to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    """The tensors of ``batch`` on ``device``; with ``channels_last``, maps in NHWC layout."""
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and key in MAP_KEYS and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def output_names(data: Any, n: int) -> list[str]:
    """Names of the ``n`` outputs: the targets of ``data.scaler``, else ``out0``, ``out1``..."""
    scaler = getattr(data, "scaler", None)
    names = list(scaler.names) if scaler is not None else []
    return names if len(names) == n else [f"out{i}" for i in range(n)]


def mse_per_output(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    predict: Predict,
    placement: Placement,
    keep_predictions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-output MSE of standardised predictions over a loader (model in eval mode).

    Returns
    -------
    mse : Tensor
        float64, shape (n_outputs,), on the CPU.
    predictions, targets : Tensor or None
        (N, n_outputs) on the CPU with ``keep_predictions``, else None.
    """
    squared, count, preds, targets = squared_error_sums(
        model, loader, predict, placement, keep_predictions
    )
    mse = (squared / count).cpu().double()
    if keep_predictions:
        return mse, torch.cat(preds), torch.cat(targets)
    return mse, None, None


def squared_error_sums(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    predict: Predict,
    placement: Placement,
    keep_predictions: bool = False,
) -> tuple[torch.Tensor | None, int, list[torch.Tensor], list[torch.Tensor]]:
    """Per-output sums of squared errors over a loader (model in eval mode), and their count.

    Returns
    -------
    squared : Tensor or None
        float32 (n_outputs,) on the model's device; None for a loader without batches.
    count : int
        Samples summed.
    predictions, targets : list of Tensor
        Per batch, on the CPU, with ``keep_predictions`` (else empty).
    """
    device, amp_dtype = placement.device, placement.amp_dtype
    model.eval()
    squared, count, preds, targets = None, 0, [], []
    with torch.inference_mode():
        for batch in loader:
            batch = to_device(batch, device, placement.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = predict(model, batch)
            pred = pred.float()
            err = ((pred - batch["target"]) ** 2).sum(0)
            squared = err if squared is None else squared + err
            count += pred.shape[0]
            if keep_predictions:
                preds.append(pred.cpu())
                targets.append(batch["target"].cpu())
    return squared, count, preds, targets


def accuracy_and_cross_entropy(
    model: torch.nn.Module, loader: Iterable[Batch], predict: Predict, placement: Placement
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of a classifier over a loader (model in eval mode).

    ``predict`` gives logits (B, K); ``batch["target"]`` holds class indices (B,).

    Returns
    -------
    cross_entropy, accuracy : float
        Means over all samples (nats; fraction correct).
    logits, targets : Tensor
        (N, K) float32 and (N,) int64, on the CPU.
    """
    device, amp_dtype = placement.device, placement.amp_dtype
    model.eval()
    logits, targets = [], []
    with torch.inference_mode():
        for batch in loader:
            batch = to_device(batch, device, placement.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits.append(predict(model, batch).float().cpu())
            targets.append(batch["target"].cpu())
    all_logits, all_targets = torch.cat(logits), torch.cat(targets)
    cross_entropy = torch.nn.functional.cross_entropy(all_logits.double(), all_targets)
    accuracy = (all_logits.argmax(1) == all_targets).double().mean()
    return float(cross_entropy), float(accuracy), all_logits, all_targets


def evaluate(
    model: torch.nn.Module,
    data: torch.utils.data.Dataset,
    predict: Predict,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    scaler: Any | None = None,
    loss: str = "mse",
) -> dict[str, Any]:
    """Mean-squared errors and predictions of ``model`` on ``data`` (fp32, eval mode).

    The model is moved to ``device`` and left in eval mode.

    Parameters
    ----------
    batch_size, device
        Maps per batch and the torch device (``"auto"``: CUDA if available); None takes the
        config schema's ``training.eval_batch_size`` and ``training.device``.
    scaler
        The :class:`~cosmo_sop.models.targets.LabelScaler` of the targets (default:
        ``data.scaler``); without one, only standardised results are given.
    loss
        ``"mse"`` (regression) or ``"cross_entropy"`` (classification: ``predictions`` are then
        logits (N, K), ``targets`` class indices (N,), and the result has ``cross_entropy`` and
        ``accuracy`` instead of the MSEs).

    Returns
    -------
    dict
        ``mse_standardised`` {target: float}, ``mse`` {target: float} in physical units (squared
        units of each target), ``predictions`` and ``targets`` (N, n_outputs) numpy arrays in
        physical units (standardised if there is no scaler), ``names``, and ``sample`` (N,) store
        indices when the dataset provides them. Rows follow the dataset order.
    """
    if batch_size is None or device is None:
        schema = defaults("training")
        batch_size = schema["eval_batch_size"] if batch_size is None else batch_size
        device = schema["device"] if device is None else device
    placement = Placement(select_device(device))
    model.to(placement.device)
    sampler = EpochBatchSampler(len(data), batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate_batch)
    if loss == "cross_entropy":
        cross_entropy, accuracy, logits, classes = accuracy_and_cross_entropy(
            model, loader, predict, placement
        )
        result = {
            "cross_entropy": cross_entropy,
            "accuracy": accuracy,
            "predictions": logits.numpy(),
            "targets": classes.numpy(),
        }
        if hasattr(data, "sample_indices"):
            result["sample"] = np.asarray(data.sample_indices)
        return result
    if loss != "mse":
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    mse_std, pred, target = mse_per_output(model, loader, predict, placement, keep_predictions=True)
    scaler = scaler if scaler is not None else getattr(data, "scaler", None)
    names = list(scaler.names) if scaler is not None else output_names(data, pred.shape[1])
    pred_np, target_np = pred.double().numpy(), target.double().numpy()
    if scaler is not None:
        pred_np, target_np = scaler.inverse_transform(pred_np), scaler.inverse_transform(target_np)
    result = {
        "names": names,
        "mse_standardised": dict(zip(names, mse_std.tolist(), strict=True)),
        "mse": dict(zip(names, ((pred_np - target_np) ** 2).mean(axis=0).tolist(), strict=True)),
        "predictions": pred_np,
        "targets": target_np,
    }
    if hasattr(data, "sample_indices"):
        result["sample"] = np.asarray(data.sample_indices)
    return result
