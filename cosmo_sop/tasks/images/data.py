"""Labelled images with exact object masks, and the torch dataset the trainer reads.

Both sources of the image task, the generated shapes of :mod:`~cosmo_sop.tasks.images.synthetic`
and ImageNet-S folders (:mod:`~cosmo_sop.tasks.images.imagenet_s`), return an :class:`ImageSet`:
RGB images in [0, 1], one bool object mask per image and the class labels. The models see the
images centred on the training set's mean colour (:func:`channel_statistics`), so the 0 that
SOP puts outside a group, and that the faithfulness curves insert, is the mean colour rather
than black.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ImageSet:
    """Images, their object masks and class labels.

    Attributes
    ----------
    images
        float32 (N, 3, H, W) RGB in [0, 1].
    masks
        bool (N, H, W): the pixels of the object that decides the class.
    labels
        int64 (N,) class indices 0..K-1.
    class_names
        Name of every class, K entries.
    names
        One identifier per image (a file name, or ``"synthetic-<index>"``).
    extra
        Further per-image arrays of the source (e.g. ``"distractor"`` masks, ``"ignore"``).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    names: tuple[str, ...]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.shape[0] != n or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) for N={n}, got {self.images.shape}")
        if self.masks.shape != (n, *self.images.shape[2:]) or self.masks.dtype != bool:
            raise ValueError(
                f"masks must be bool (N, H, W), got {self.masks.dtype} {self.masks.shape}"
            )
        if len(self.names) != n:
            raise ValueError(f"names must hold {n} entries, got {len(self.names)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        """Side H (= W) of the images, in pixels."""
        return int(self.images.shape[2])


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, 3, H, W) images, float32 (3,) each.

    The standard deviation is floored at 1e-6 so that a constant channel does not divide by 0.
    """
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def centred(images: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Images minus the per-channel ``mean`` (3,): the models' input, 0 = the mean colour."""
    return (images - mean[None, :, None, None]).astype(np.float32)


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of centred images for :func:`cosmo_sop.training.loop.fit`.

    Items are ``{"images": (3, H, W) float32, "target": () int64, "index": () int64}``; the
    key ``images`` is the one the trainer's random masking applies to.

    Parameters
    ----------
    data
        The images.
    mean
        Per-channel mean (3,) subtracted from every image (the training set's).
    provenance
        Recorded by the trainer in the model's sidecar (and in its checkpoint hash).
    """

    def __init__(self, data: ImageSet, mean: np.ndarray, provenance: dict[str, Any]) -> None:
        self.images = torch.from_numpy(centred(data.images, mean))
        self.targets = torch.from_numpy(data.labels.astype(np.int64))
        self.provenance = provenance

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "images": self.images[index],
            "target": self.targets[index],
            "index": torch.tensor(index, dtype=torch.int64),
        }
