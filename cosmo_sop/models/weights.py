"""The files of a trained model: its weights (safetensors) and their JSON sidecar.

:func:`save_weights` writes both, the sidecar first, so that the weights' presence means the
pair is complete; :func:`load_weights` and :func:`load_sidecar` read them back. The file names
of a run folder are those of :mod:`cosmo_sop.layout` (``WEIGHTS``, ``SIDECAR``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.storage import atomic_path, read_json, write_json


def save_weights(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], sidecar: dict[str, Any]
) -> None:
    """Write ``state_dict`` as safetensors at ``path`` and ``sidecar`` as JSON next to it
    (same name, suffix ``.json``), both atomically. The weights are written last: their
    presence means the pair is complete."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    write_json(path.with_suffix(".json"), sidecar)
    # Serialised in memory and written by Python, so a full disk is an OSError with its errno
    # (safetensors' writer reports it as its own error type), which atomic_path turns into one
    # line naming the file.
    content = save(tensors, metadata={"format": "pt", "cosmo_sop_version": __version__})
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict saved by :func:`save_weights` (``.safetensors``) or by ``torch.save``
    (read with ``weights_only=True``, so no code from the file is executed). A checkpoint of
    :func:`cosmo_sop.training.loop.fit` gives its best weights."""
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
    """The JSON sidecar of a weights file (model and training config, label scaler, provenance).

    Raises
    ------
    InputError
        If the sidecar is missing or not valid JSON.
    """
    path = Path(path).with_suffix(".json")
    sidecar = read_json(path)
    if sidecar is None:
        raise InputError(path, "sidecar of the weights not found")
    return sidecar
