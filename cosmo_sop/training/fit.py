"""One trainer for every network of cosmo-sop: the CNN backbone and the Sum-of-Parts model.

:func:`fit` trains any :class:`torch.nn.Module` whose predictions come from a function
``predict(model, batch) -> (B, n_outputs)`` (e.g. ``model(batch["kappa"])`` for the backbone,
``model(batch["kappa"], batch["segments"])`` for SOP) against ``batch["target"]``, the
standardised (Om, s8), with a mean-squared-error loss, AdamW and a one-cycle (warm-up then
cosine) learning-rate schedule, and early stopping on the validation loss.

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
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.storage import atomic_path
from cosmo_sop.training.data import (
    EpochBatchSampler,
    augment_batch,
    collate_batch,
    mask_random_groups,
)

Batch = dict[str, torch.Tensor]
Predict = Callable[[torch.nn.Module, Batch], torch.Tensor]

#: Training options and their defaults (the ``training`` section of a config).
TRAINING_DEFAULTS: dict[str, Any] = {
    "seed": 0,  # seed of shuffling, augmentation and dropout (model initialisation is the caller's)
    "epochs": 30,  # maximum number of epochs
    "batch_size": 64,
    "lr": 1e-3,  # peak learning rate of the one-cycle schedule
    "weight_decay": 1e-4,  # AdamW decoupled weight decay, on weight matrices/kernels only
    "schedule": "onecycle",  # "onecycle" (linear warm-up, cosine decay) or "constant"
    "warmup_fraction": 0.1,  # fraction of all steps spent warming up (onecycle)
    "patience": 5,  # stop after this many epochs without a better validation loss
    "min_delta": 0.0,  # improvement smaller than this does not count
    "grad_clip_norm": None,  # clip the global gradient norm to this value if set
    "augment": True,  # random rotations by 90 degrees and flips of the training maps
    "mask_probability": 0.0,  # share of training maps with random cells zeroed (see mask_random_groups)
    "mask_grid": 14,  # cells per side of those masks (SOP's patch-token grid)
    "mask_min_keep": 0.2,  # least fraction of cells a masked map keeps (SOP's keep_fraction)
    "device": "auto",  # "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    "precision": "auto",  # "auto" (bf16 on CUDA if supported, else fp16; fp32 on CPU), "fp32", "bf16", "fp16"
    "channels_last": True,  # NHWC memory layout on CUDA (faster convolutions on tensor cores)
    "deterministic": True,  # torch.use_deterministic_algorithms during the run
    "num_workers": 0,  # DataLoader worker processes (0: load in the main process)
    "threads": None,  # torch CPU threads during the run (None: leave as is)
    "eval_batch_size": 256,
    "progress": True,  # tqdm progress bars
}

#: Options that change how fast a run goes but not its results; left out of the config hash
#: so that a run may be resumed with, e.g., more workers.
OPERATIONAL_KEYS = frozenset({"num_workers", "threads", "progress", "eval_batch_size"})

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
WEIGHTS = "model.safetensors"
_CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def resolve_training_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Fill in :data:`TRAINING_DEFAULTS` and check the values.

    Raises
    ------
    InputError
        Naming the ``training.<key>`` that is unknown or out of range.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(TRAINING_DEFAULTS))
    if unknown:
        raise InputError("config key 'training'", f"unknown option(s) {unknown}")
    cfg = {**TRAINING_DEFAULTS, **config}

    def bad(key: str, problem: str) -> InputError:
        return InputError(f"config key 'training.{key}'", f"{problem} (got {cfg[key]!r})")

    for key in ("seed", "epochs", "batch_size", "patience", "num_workers", "eval_batch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
            raise bad(key, "must be an integer")
    for key in ("epochs", "batch_size", "patience", "eval_batch_size"):
        if cfg[key] < 1:
            raise bad(key, "must be >= 1")
    if cfg["num_workers"] < 0:
        raise bad("num_workers", "must be >= 0")
    for key in ("lr", "weight_decay", "warmup_fraction", "min_delta"):
        if (
            not isinstance(cfg[key], (int, float))
            or isinstance(cfg[key], bool)
            or not math.isfinite(cfg[key])
        ):
            raise bad(key, "must be a number")
    if cfg["lr"] <= 0:
        raise bad("lr", "must be > 0")
    if cfg["weight_decay"] < 0 or cfg["min_delta"] < 0:
        raise bad("weight_decay" if cfg["weight_decay"] < 0 else "min_delta", "must be >= 0")
    if not 0 < cfg["warmup_fraction"] < 1:
        raise bad("warmup_fraction", "must be in (0, 1)")
    if cfg["grad_clip_norm"] is not None and not (
        isinstance(cfg["grad_clip_norm"], (int, float)) and cfg["grad_clip_norm"] > 0
    ):
        raise bad("grad_clip_norm", "must be a positive number or null")
    if cfg["threads"] is not None and not (isinstance(cfg["threads"], int) and cfg["threads"] >= 1):
        raise bad("threads", "must be a positive integer or null")
    if not isinstance(cfg["mask_probability"], (int, float)) or not 0 <= cfg["mask_probability"] <= 1:
        raise bad("mask_probability", "must be in [0, 1]")
    if not isinstance(cfg["mask_grid"], int) or isinstance(cfg["mask_grid"], bool) or cfg["mask_grid"] < 1:
        raise bad("mask_grid", "must be a positive integer")
    if not isinstance(cfg["mask_min_keep"], (int, float)) or not 0 < cfg["mask_min_keep"] <= 1:
        raise bad("mask_min_keep", "must be in (0, 1]")
    if cfg["schedule"] not in ("onecycle", "constant"):
        raise bad("schedule", "must be 'onecycle' or 'constant'")
    if cfg["precision"] not in ("auto", "fp32", "bf16", "fp16"):
        raise bad("precision", "must be 'auto', 'fp32', 'bf16' or 'fp16'")
    for key in ("augment", "channels_last", "deterministic", "progress"):
        if not isinstance(cfg[key], bool):
            raise bad(key, "must be true or false")
    if not isinstance(cfg["device"], str):
        raise bad("device", "must be a string")
    return cfg


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; otherwise ``name``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError("config key 'training.device'", f"not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'training.device'", f"{name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError("config key 'training.device'", f"{name!r}: only {torch.cuda.device_count()} GPU(s)")
    return device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype, or None for full fp32. Only used on CUDA: CPU autocast is slow."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def config_hash(
    cfg: dict[str, Any],
    model: torch.nn.Module,
    trainable: list[str],
    n_train: int,
    n_val: int,
    data: Any = None,
) -> str:
    """Fingerprint of everything that determines a run's results, to match checkpoints to runs.

    ``data`` is a JSON-serialisable description of the training data (e.g. the datasets'
    ``provenance``: stores, noise level, the config they were made with).
    """
    payload = {
        "training": {k: v for k, v in sorted(cfg.items()) if k not in OPERATIONAL_KEYS},
        "model": [(name, list(t.shape), str(t.dtype)) for name, t in model.state_dict().items()],
        "trainable": trainable,
        "n_train": n_train,
        "n_val": n_val,
        "data": data,
    }
    text = json.dumps(payload, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (independent streams per purpose)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# Purposes of derived seeds, per epoch.
_SHUFFLE, _AUGMENT, _TORCH, _WORKERS, _MASK = range(5)


# --------------------------------------------------------------------------------------------
# Context managers that scope global torch state to the run
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn_benchmark = torch.backends.cudnn.benchmark
    if enabled:
        # warn_only: an op without a deterministic kernel warns rather than aborting the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = cudnn_benchmark


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _only_trainable(model: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> Iterator[None]:
    """Switch off gradients of the parameters not being trained (no wasted backward work)."""
    keep = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _trainable_parameters(
    model: torch.nn.Module, params: Iterable[torch.nn.Parameter] | None
) -> list[torch.nn.Parameter]:
    if params is None:
        chosen = [p for p in model.parameters() if p.requires_grad]
    else:
        chosen = list(params)
        owned = {id(p) for p in model.parameters()}
        if any(id(p) not in owned for p in chosen):
            raise InputError("params", "contains tensors that are not parameters of the model")
    unique = list({id(p): p for p in chosen}.values())
    if not unique:
        raise InputError("params", "no trainable parameters (all frozen or an empty selection)")
    return unique


# --------------------------------------------------------------------------------------------
# Checkpoints and outputs
# --------------------------------------------------------------------------------------------


def _rng_states() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), int(pos), int(has_gauss), float(cached)))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(state: tuple) -> tuple:
    # torch.load(weights_only=True) refuses numpy arrays; keep the key vector as a tensor.
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict, contiguous (safetensors needs it) and unshared."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many types
        raise InputError(path, f"not a readable cosmo-sop checkpoint ({type(exc).__name__}: {exc})") from None


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def save_weights(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], sidecar: dict[str, Any]
) -> None:
    """Write ``state_dict`` as safetensors at ``path`` and ``sidecar`` as JSON next to it
    (same name, suffix ``.json``), both atomically. The weights are written last: their
    presence means the pair is complete."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2, default=_json_default) + "\n")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "cosmo_sop_version": __version__})


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict saved by :func:`fit` (``.safetensors``) or by ``torch.save``
    (read with ``weights_only=True``, so no code from the file is executed). A cosmo-sop
    checkpoint gives its best weights."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types
        raise InputError(path, f"cannot read weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "progress" in state:  # a checkpoint of fit()
        state = state["progress"]["best_state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "does not hold a state dict of tensors")
    return state


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a weights file (model and training config, label scaler, provenance)."""
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise InputError(path, "sidecar of the weights not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and key == "kappa" and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and random's from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader(
    data: torch.utils.data.Dataset, sampler: EpochBatchSampler, cfg: dict[str, Any], device: torch.device
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


def _output_names(data: Any, n: int) -> list[str]:
    scaler = getattr(data, "scaler", None)
    names = list(scaler.names) if scaler is not None else []
    return names if len(names) == n else [f"out{i}" for i in range(n)]


def _mse_per_output(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    predict: Predict,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    keep_predictions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-output MSE of standardised predictions over a loader (model in eval mode)."""
    model.eval()
    squared, count, preds, targets = None, 0, [], []
    with torch.inference_mode():
        for batch in loader:
            batch = _to_device(batch, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = predict(model, batch)
            pred = pred.float()
            err = ((pred - batch["target"]) ** 2).sum(0)
            squared = err if squared is None else squared + err
            count += pred.shape[0]
            if keep_predictions:
                preds.append(pred.cpu())
                targets.append(batch["target"].cpu())
    mse = (squared / count).cpu().double()
    if keep_predictions:
        return mse, torch.cat(preds), torch.cat(targets)
    return mse, None, None


class _Optimisation:
    """AdamW, its learning-rate schedule and the fp16 gradient scaler, stepped together."""

    def __init__(
        self,
        trainable: list[torch.nn.Parameter],
        cfg: dict[str, Any],
        steps_per_epoch: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.trainable = trainable
        self.grad_clip_norm = cfg["grad_clip_norm"]
        # Biases and normalisation scales (1-d parameters) are not decayed.
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
        if cfg["schedule"] == "onecycle":  # linear warm-up to lr, then cosine decay
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=cfg["lr"],
                total_steps=cfg["epochs"] * steps_per_epoch,
                pct_start=cfg["warmup_fraction"],
                anneal_strategy="cos",
                cycle_momentum=False,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        # Loss scaling only for fp16, whose narrow exponent range underflows small gradients.
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step(self, loss: torch.Tensor) -> None:
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
class _Progress:
    """Where a run stands: finished epochs, their metrics, early stopping and the best weights."""

    best_state: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def end_epoch(self, row: dict[str, Any], model: torch.nn.Module, min_delta: float, patience: int) -> None:
        self.epoch = row["epoch"]
        self.metrics.append(row)
        if row["val_loss"] < self.best_val_loss - min_delta:
            self.best_val_loss, self.best_epoch, self.bad_epochs = row["val_loss"], row["epoch"], 0
            self.best_state = _cpu_state(model)
        else:
            self.bad_epochs += 1
            self.stopped = self.bad_epochs >= patience


def _train_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    predict: Predict,
    optimisation: _Optimisation,
    augment: torch.Generator | None,
    mask: Callable[[Batch], Batch] | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    progress: tqdm,
    on_batch: Callable[[int, float], None] | None,
) -> float:
    """One pass over the training batches; returns the mean training loss (per sample)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    for b, batch in enumerate(loader):
        batch = _to_device(batch, device, channels_last=False)
        if augment is not None:
            batch = augment_batch(batch, augment)
        if mask is not None:
            batch = mask(batch)
        if channels_last:
            batch["kappa"] = batch["kappa"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = predict(model, batch)
        loss = torch.nn.functional.mse_loss(pred.float(), batch["target"])
        optimisation.step(loss)
        loss_sum += loss.detach().double() * pred.shape[0]
        n_seen += pred.shape[0]
        progress.update(1)
        if b % 10 == 0 or b == len(loader) - 1 or on_batch is not None:
            value = loss.item()  # synchronises with the device, so not on every batch
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"non-finite training loss at batch {b} "
                    "(lower config key 'training.lr' or set 'training.grad_clip_norm')"
                )
            progress.set_postfix(loss=f"{(loss_sum / n_seen).item():.4g}", refresh=False)
            if on_batch is not None:
                on_batch(b, value)
    return float(loss_sum / n_seen)


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
        ``predict`` needs, e.g. :class:`cosmo_sop.data.PatchDataset`. Their ``scaler`` and
        ``provenance`` attributes, if present, are recorded in the sidecar.
    predict
        ``predict(model, batch) -> (B, n_outputs)`` tensor; ``batch`` is a dict of tensors on the
        training device (``kappa`` (B, C, H, W), ``segments`` (B, H, W), ``target``, ...).
    config
        Training options, see :data:`TRAINING_DEFAULTS`.
    run_dir
        Folder of the checkpoint, metrics and final weights (created if needed).
    params
        Parameters to train (e.g. only SOP's group generator and selector). Default: every
        parameter with ``requires_grad``. Other parameters are frozen during the run; the saved
        weights are the whole model's. Frozen sub-networks with batch normalisation or dropout
        should be kept in eval mode by the model itself (``fit`` calls ``model.train()``).
    model_config
        JSON-serialisable description of the model for the sidecar (default: ``model.config``
        if the model has a dict attribute ``config``).
    on_batch_end
        Called as ``on_batch_end(epoch, batch_index, loss)`` after each optimiser step (epochs
        counted from 1), e.g. for logging.
    restart_stale
        A checkpoint in ``run_dir`` from another configuration or other data is discarded and
        training starts afresh, instead of being refused (the workflow's choice: Snakemake
        reruns a training job only after an interruption or a change of its config or data).

    Returns
    -------
    dict
        ``best_epoch``, ``best_val_loss``, ``val_mse_<target>`` at the best epoch (standardised
        units), ``epochs_completed``, ``stopped_early``, ``device``, ``config_hash``.
        ``model`` holds the best weights on return, on the training device.

    Raises
    ------
    InputError
        For a bad option, an empty dataset, or (unless ``restart_stale``) a checkpoint in
        ``run_dir`` from another configuration (other options, model, or data).
    """
    cfg = resolve_training_config(config)
    run_dir = Path(run_dir)
    if len(train_data) == 0 or len(val_data) == 0:
        raise InputError(run_dir, "training and validation data must not be empty")
    device = select_device(cfg["device"])
    amp_dtype = _autocast_dtype(cfg["precision"], device)
    channels_last = cfg["channels_last"] and device.type == "cuda"
    trainable = _trainable_parameters(model, params)
    names_of = {id(p): n for n, p in model.named_parameters()}
    trained_names = [names_of[id(p)] for p in trainable]
    data_provenance = [getattr(d, "provenance", None) for d in (train_data, val_data)]
    run_hash = config_hash(cfg, model, trained_names, len(train_data), len(val_data), data_provenance)
    if model_config is None and isinstance(getattr(model, "config", None), dict):
        model_config = model.config
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT

    with _determinism(cfg["deterministic"]), _threads(cfg["threads"]), _only_trainable(model, trainable):
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        train_sampler = EpochBatchSampler(
            len(train_data),
            cfg["batch_size"],
            shuffle=True,
            seed=derived_seed(cfg["seed"], _SHUFFLE),
            drop_last=True,
            groups=getattr(train_data, "read_groups", None),
        )
        train_loader = _loader(train_data, train_sampler, cfg, device)
        val_loader = _loader(
            val_data, EpochBatchSampler(len(val_data), cfg["eval_batch_size"], shuffle=False), cfg, device
        )
        optimisation = _Optimisation(trainable, cfg, len(train_sampler), device, amp_dtype)
        progress = _Progress(best_state=_cpu_state(model))
        ckpt = _load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
        if ckpt is not None:
            if ckpt.get("format") != _CHECKPOINT_FORMAT or ckpt.get("config_hash") != run_hash:
                if not restart_stale:
                    raise InputError(
                        checkpoint_path,
                        f"checkpoint of another configuration or data (hash {ckpt.get('config_hash')}, "
                        f"this run {run_hash}); use a new run folder or delete this one",
                    )
                tqdm.write(f"{checkpoint_path}: written for another configuration or data; starting afresh")
                ckpt = None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimisation.load_state_dict(ckpt["optimisation"])
            progress = _Progress(**ckpt["progress"])
            _set_rng_states(ckpt["rng"])
        _write_metrics_csv(run_dir / METRICS, progress.metrics)  # drops rows the checkpoint lacks

        epochs_bar = tqdm(
            total=cfg["epochs"],
            initial=progress.epoch,
            desc=f"training {run_dir.name}",
            unit="epoch",
            disable=not cfg["progress"],
            dynamic_ncols=True,
        )
        augment = torch.Generator() if cfg["augment"] else None
        masker = torch.Generator() if cfg["mask_probability"] > 0 else None
        mask = None
        if masker is not None:
            mask = functools.partial(
                mask_random_groups,
                generator=masker,
                probability=cfg["mask_probability"],
                grid=cfg["mask_grid"],
                min_keep=cfg["mask_min_keep"],
            )
        while progress.epoch < cfg["epochs"] and not progress.stopped:
            epoch = progress.epoch + 1
            start = time.perf_counter()
            # All randomness of an epoch derives from (seed, epoch): resuming replays nothing.
            train_sampler.set_epoch(epoch)
            train_loader.generator.manual_seed(derived_seed(cfg["seed"], _WORKERS, epoch))
            if augment is not None:
                augment.manual_seed(derived_seed(cfg["seed"], _AUGMENT, epoch))
            if masker is not None:
                masker.manual_seed(derived_seed(cfg["seed"], _MASK, epoch))
            torch.manual_seed(derived_seed(cfg["seed"], _TORCH, epoch))  # dropout uses the global RNG
            with tqdm(
                total=len(train_sampler),
                desc=f"epoch {epoch}",
                unit="batch",
                leave=False,
                disable=not cfg["progress"],
                dynamic_ncols=True,
            ) as batches_bar:
                try:
                    train_loss = _train_epoch(
                        model,
                        train_loader,
                        predict,
                        optimisation,
                        augment,
                        mask,
                        device,
                        amp_dtype,
                        channels_last,
                        batches_bar,
                        None if on_batch_end is None else functools.partial(on_batch_end, epoch),
                    )
                except FloatingPointError as exc:
                    raise FloatingPointError(f"{run_dir}: epoch {epoch}: {exc}") from None
            val_mse, _, _ = _mse_per_output(model, val_loader, predict, device, amp_dtype, channels_last)
            if not torch.isfinite(val_mse).all():
                raise FloatingPointError(f"{run_dir}: non-finite validation loss at epoch {epoch}")
            names = _output_names(val_data, len(val_mse))
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": float(val_mse.mean()),
                **{f"val_mse_{n}": v for n, v in zip(names, val_mse.tolist(), strict=True)},
                "lr": optimisation.lr,
                "seconds": time.perf_counter() - start,
            }
            progress.end_epoch(row, model, cfg["min_delta"], cfg["patience"])
            _write_checkpoint(
                checkpoint_path,
                {
                    "format": _CHECKPOINT_FORMAT,
                    "config_hash": run_hash,
                    "model": _cpu_state(model),
                    "optimisation": optimisation.state_dict(),
                    "progress": asdict(progress),
                    "rng": _rng_states(),
                },
            )
            _write_metrics_csv(run_dir / METRICS, progress.metrics)
            epochs_bar.update(1)
            epochs_bar.set_postfix(train=f"{row['train_loss']:.4g}", val=f"{row['val_loss']:.4g}")
        epochs_bar.close()

    model.load_state_dict(progress.best_state)
    best = progress.metrics[progress.best_epoch - 1]
    result = {
        "best_epoch": progress.best_epoch,
        "best_val_loss": progress.best_val_loss,
        **{k: v for k, v in best.items() if k.startswith("val_mse_")},
        "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped,
        "device": str(device),
        "config_hash": run_hash,
    }
    scaler = getattr(train_data, "scaler", None)
    sidecar = {
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
    save_weights(run_dir / WEIGHTS, progress.best_state, sidecar)
    return copy.deepcopy(result)


def evaluate(
    model: torch.nn.Module,
    data: torch.utils.data.Dataset,
    predict: Predict,
    *,
    batch_size: int = 256,
    device: str = "auto",
    scaler: Any | None = None,
) -> dict[str, Any]:
    """Mean-squared errors and predictions of ``model`` on ``data`` (fp32, eval mode).

    The model is moved to ``device`` (``"auto"``: CUDA if available) and left in eval mode.

    Parameters
    ----------
    scaler
        The :class:`cosmo_sop.data.LabelScaler` of the targets (default: ``data.scaler``); without
        one, only standardised results are given.

    Returns
    -------
    dict
        ``mse_standardised`` {target: float}, ``mse`` {target: float} in physical units (squared
        units of each target), ``predictions`` and ``targets`` (N, n_outputs) numpy arrays in
        physical units (standardised if there is no scaler), ``names``, and ``sample`` (N,) store
        indices when the dataset provides them. Rows follow the dataset order.
    """
    dev = select_device(device)
    model.to(dev)
    sampler = EpochBatchSampler(len(data), batch_size, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate_batch)
    mse_std, pred, target = _mse_per_output(model, loader, predict, dev, None, False, keep_predictions=True)
    scaler = scaler if scaler is not None else getattr(data, "scaler", None)
    names = list(scaler.names) if scaler is not None else _output_names(data, pred.shape[1])
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
