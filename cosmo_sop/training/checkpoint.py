"""What a run leaves behind to be resumed: the checkpoint, the metrics table, the config hash.

The checkpoint (:data:`~cosmo_sop.layout.CHECKPOINT`) holds the model, the optimiser and its
schedule, the :class:`~cosmo_sop.training.optimisation.Progress` (metrics, early stopping, best
weights) and the RNG states; it is written atomically after every epoch. It is matched to a run
by :func:`config_hash`, the fingerprint of everything that determines the run's results, so a
checkpoint of another configuration or other data is never resumed by mistake.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cosmo_sop.errors import InputError
from cosmo_sop.storage import atomic_path, json_text, write_csv
from cosmo_sop.training.options import OPERATIONAL_KEYS

#: Version of the checkpoint's layout; a checkpoint of another version is not resumed.
CHECKPOINT_FORMAT = 1


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
    ``provenance``: stores, noise level, the config they were made with). Options in
    :data:`~cosmo_sop.training.options.OPERATIONAL_KEYS` are left out.
    """
    payload = {
        "training": {k: v for k, v in sorted(cfg.items()) if k not in OPERATIONAL_KEYS},
        "model": [(name, list(t.shape), str(t.dtype)) for name, t in model.state_dict().items()],
        "trainable": trainable,
        "n_train": n_train,
        "n_val": n_val,
        "data": data,
    }
    text = json_text(payload, indent=None, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_checkpoint(path: Path, run_hash: str, restart_stale: bool) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to the run of ``run_hash``; None if there is
    none, or (with ``restart_stale``) if it belongs to another run.

    Raises
    ------
    InputError
        If the file is unreadable, or belongs to another run and ``restart_stale`` is False.
    """
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many types
        problem = f"not a readable cosmo-sop checkpoint ({type(exc).__name__}: {exc})"
        raise InputError(path, problem) from None
    if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("config_hash") == run_hash:
        return ckpt
    if not restart_stale:
        raise InputError(
            path,
            f"checkpoint of another configuration or data (hash {ckpt.get('config_hash')}, "
            f"this run {run_hash}); use a new run folder or delete this one",
        )
    tqdm.write(f"{path}: written for another configuration or data; starting afresh")
    return None


def write_checkpoint(path: Path, run_hash: str, **state: Any) -> None:
    """Write the checkpoint of the run of ``run_hash`` atomically, with the RNG states.

    ``state``: ``model``, ``optimisation`` and ``progress``, as state dicts.
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "config_hash": run_hash, **state}
    checkpoint["rng"] = rng_states()
    # Serialised in memory and written by Python: torch's own file writer reports a full disk
    # as "basic_ios::clear: iostream error", Python's as an OSError with its errno, which
    # atomic_path turns into one line naming the file. A checkpoint is a few MB.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the metrics table, one row per epoch (nothing before the first epoch)."""
    if rows:
        header = list(rows[0])
        write_csv(path, header, ([row[key] for key in header] for row in rows))


# --------------------------------------------------------------------------------------------
# RNG states (numpy's as tensors: torch.load(weights_only=True) refuses numpy arrays)


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and ``random``.

    In a parallel run (:mod:`cosmo_sop.training.distributed`) the CUDA states are left out:
    reading every GPU's state would put a CUDA context of process 0 on all the others' GPUs,
    and the trainer reseeds every generator per epoch anyway.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and not _parallel():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_states`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), int(pos), int(has_gauss), float(cached)))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and not _parallel():
        # Of as many GPUs as there are here (a checkpoint may come from a machine with more).
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _parallel() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
