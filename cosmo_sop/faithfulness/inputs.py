"""Checks of the arguments of the faithfulness metrics, shared by all of them.

Every check raises a ValueError that names the argument and the shapes it must match, so a
wrong call fails before the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

#: Model under test: inputs (R, C, H, W) -> standardised outputs (R, n_outputs).
Predict = Callable[[Tensor], Tensor]


def checked_tensor(
    name: str, value: Tensor | np.ndarray, ndim: int, device: torch.device | None = None
) -> Tensor:
    """``value`` as a tensor with ``ndim`` dimensions (on ``device``), or a ValueError naming it."""
    try:
        tensor = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        kind = type(value).__name__
        raise ValueError(f"{name} must be an array or tensor, got {kind}") from error
    if tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    return tensor


def checked_inputs(x: Tensor | np.ndarray) -> Tensor:
    """Inputs (N, C, H, W): floating point and not empty."""
    x = checked_tensor("x", x, 4)
    if not x.dtype.is_floating_point:
        raise ValueError(f"x (N, C, H, W) must be floating point, got dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"x (N, C, H, W) must not be empty, got shape {tuple(x.shape)}")
    return x


def checked_importance(
    importance: Tensor | np.ndarray, x: Tensor, name: str = "importance"
) -> Tensor:
    """Pixel importance (N, H, W) as float64 on x's device, checked against x."""
    importance = checked_tensor(name, importance, 3, x.device)
    expected = (x.shape[0], *x.shape[2:])
    if tuple(importance.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(importance.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"needs (N, H, W) = {expected}"
        )
    if importance.dtype == torch.bool or importance.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {importance.dtype}")
    importance = importance.to(torch.float64)
    if not torch.isfinite(importance).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return importance


def checked_masks(masks: Tensor | np.ndarray, x: Tensor, name: str = "masks") -> Tensor:
    """Group masks (N, m, H, W) as bool on x's device, checked against x."""
    masks = checked_tensor(name, masks, 4, x.device)
    expected = (x.shape[0], masks.shape[1], *x.shape[2:])
    if tuple(masks.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(masks.shape)} but x (N, C, H, W) = {tuple(x.shape)} "
            f"needs (N, m, H, W) = {expected}"
        )
    if masks.dtype != torch.bool:
        binary = not (masks.dtype.is_floating_point or masks.is_complex())
        if not (binary and ((masks == 0) | (masks == 1)).all()):
            raise ValueError(f"{name} must be bool (or integer 0/1), got dtype {masks.dtype}")
        masks = masks.bool()
    return masks


def checked_group_vector(
    name: str, value: Tensor | np.ndarray | None, masks: Tensor, dtype: torch.dtype
) -> Tensor | None:
    """(N, m) scores or validity matching the masks, or None."""
    if value is None:
        return None
    value = checked_tensor(name, value, 2, masks.device)
    if tuple(value.shape) != tuple(masks.shape[:2]):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but masks (N, m, H, W) = "
            f"{tuple(masks.shape)} needs (N, m) = {tuple(masks.shape[:2])}"
        )
    if dtype == torch.bool and value.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got dtype {value.dtype}")
    return value.to(dtype)


def checked_labels(labels: Tensor | np.ndarray | None, n_maps: int) -> np.ndarray | None:
    """Labels (N, n_outputs) as float64, or None."""
    if labels is None:
        return None
    labels = np.asarray(torch.as_tensor(labels).detach().cpu(), dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] != n_maps:
        raise ValueError(
            f"labels must have shape (N, n_outputs) with N = {n_maps} maps, got {labels.shape}"
        )
    return labels


def checked_fractions(
    fractions: Sequence[float] | np.ndarray, name: str = "fractions"
) -> np.ndarray:
    """Strictly increasing fractions in [0, 1], at least two."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size < 2:
        raise ValueError(f"{name} must be a 1-d sequence of at least 2 values, got {fractions!r}")
    if not (np.isfinite(fractions).all() and fractions.min() >= 0 and fractions.max() <= 1):
        raise ValueError(f"{name} must lie in [0, 1], got {fractions!r}")
    if np.any(np.diff(fractions) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {fractions!r}")
    return fractions


def pixel_counts(fraction: np.ndarray | float, n_pixels: int) -> np.ndarray:
    """Pixel counts round(fraction * n_pixels), halves rounded up (not to even)."""
    return np.floor(np.asarray(fraction) * n_pixels + 0.5).astype(np.int64)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """A ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_settings(
    error: str, reference: str, normalise: str, max_batch: int, labels: np.ndarray | None
) -> None:
    """The settings shared by every metric: error kind, reference, normalisation, batch size."""
    check_choice("error", error, ("absolute", "squared"))
    check_choice("reference", reference, ("prediction", "label"))
    check_choice("normalise", normalise, ("pooled", "map", "none"))
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    if reference == "label" and labels is None:
        raise ValueError('reference="label" needs labels (N, n_outputs)')


def check_predict(predict: Predict) -> None:
    """A model in training mode is refused."""
    # Dropout or BatchNorm in training mode would make every metric random.
    if isinstance(predict, nn.Module) and predict.training:
        raise ValueError("the model is in training mode; call model.eval() before scoring it")


def output_index(output: int) -> int:
    """``output`` as a non-negative column index."""
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)) or output < 0:
        raise ValueError(f"output must be a non-negative integer, got {output!r}")
    return int(output)
