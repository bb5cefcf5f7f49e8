"""Options of a training run, the device and precision they select, and the torch state they set.

The options are the ``training`` section of the config (its defaults are the schema's, see
:func:`cosmo_sop.config.with_defaults`) plus the master ``seed``; :func:`training_options`
completes and checks them. The run then computes on a :class:`Placement` (device, autocast dtype,
memory layout), and the context managers here scope the global torch settings it changes
(deterministic algorithms, CPU threads, frozen parameters) to the run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cosmo_sop.config import defaults, with_defaults
from cosmo_sop.errors import InputError

#: Keys of the ``training`` section that the workflow reads (memory held by the datasets, GPUs
#: and nodes a job asks the scheduler for and launches processes on), not
#: :func:`cosmo_sop.training.loop.fit`; left out of its options, so that a run may be resumed on
#: another number of processes.
WORKFLOW_KEYS = frozenset({"memory_budget_gib", "gpus", "nodes"})

#: Options that change how fast a run goes but not its results; left out of the config hash
#: so that a run may be resumed with, e.g., more workers.
OPERATIONAL_KEYS = frozenset({"num_workers", "threads", "progress", "eval_batch_size"})


def training_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options of :func:`~cosmo_sop.training.loop.fit`: ``seed`` and the ``training`` section,
    validated by the config schema and completed with its defaults.

    Keys come in a fixed order (``seed``, then the schema's), which the sidecar of the trained
    weights records; the section's :data:`WORKFLOW_KEYS` are accepted and left out.

    Raises
    ------
    InputError
        Naming the ``training.<key>`` that is unknown or out of range.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - {"seed"} - set(defaults("training")))
    if unknown:
        raise InputError("config key 'training'", f"unknown option(s) {unknown}")
    seed = options.pop("seed") if "seed" in options else defaults("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError("config key 'seed'", f"must be an integer (got {seed!r})")
    section = with_defaults("training", options)
    # JSON Schema lets infinity through ("number"); a run needs finite values.
    for key, value in section.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"config key 'training.{key}'", f"must be finite (got {value!r})")
    ordered = (key for key in defaults("training") if key not in WORKFLOW_KEYS)
    return {"seed": seed, **{key: section[key] for key in ordered}}


@dataclass(frozen=True)
class Placement:
    """Where and how a run computes.

    Attributes
    ----------
    device
        The torch device of the model and batches.
    amp_dtype
        Autocast dtype (bf16 or fp16), or None for full fp32.
    channels_last
        NHWC memory layout of the maps and convolutions (on CPU too: ~1.5x faster training
        steps of the demo's backbone and SOP on one core, measured by
        ``benchmarks/sop_training.py``).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, cfg: Mapping[str, Any], device: torch.device | None = None) -> Placement:
        """The placement that options ``device``, ``precision`` and ``channels_last`` select
        (``device``, if given, instead of option ``device``)."""
        device = select_device(cfg["device"]) if device is None else device
        return cls(
            device,
            autocast_dtype(cfg["precision"], device),
            cfg["channels_last"],
        )


def select_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; otherwise ``name``.

    Raises
    ------
    InputError
        If ``name`` is not a torch device, or a CUDA device that is not there.
    """
    where = "config key 'training.device'"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(where, f"not a torch device: {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(where, f"{name!r} requested but CUDA is not available")
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= n_gpus:
        raise InputError(where, f"{name!r}: only {n_gpus} GPU(s)")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype, or None for full fp32. Only used on CUDA: CPU autocast is slow."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (and no cuDNN benchmarking) within the block, if ``enabled``."""
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
def cpu_threads(n: int | None) -> Iterator[None]:
    """``n`` torch CPU threads within the block (None: leave the number as it is)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def only_trainable(model: torch.nn.Module, trainable: list[torch.nn.Parameter]) -> Iterator[None]:
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


@contextlib.contextmanager
def run_scope(
    cfg: Mapping[str, Any], model: torch.nn.Module, trainable: list[torch.nn.Parameter]
) -> Iterator[None]:
    """The global torch state of a run, for its duration: deterministic algorithms (option
    ``deterministic``), CPU threads (``threads``), and gradients of ``trainable`` only."""
    with (
        determinism(cfg["deterministic"]),
        cpu_threads(cfg["threads"]),
        only_trainable(model, trainable),
    ):
        yield


def trainable_parameters(
    model: torch.nn.Module, params: Iterable[torch.nn.Parameter] | None
) -> list[torch.nn.Parameter]:
    """The distinct parameters to train: ``params``, or every one with ``requires_grad``.

    Raises
    ------
    InputError
        If ``params`` holds tensors foreign to ``model``, or nothing is left to train.
    """
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
