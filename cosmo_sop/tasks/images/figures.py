"""The image task's figure: test images with their object, SOP's top group and a baseline's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cosmo_sop.storage import atomic_path
from cosmo_sop.tasks.images.data import ImageSet


def plot_examples(
    path: str | os.PathLike,
    data: ImageSet,
    sop_group: np.ndarray,
    baseline: np.ndarray | None,
    baseline_name: str | None,
    n_images: int,
) -> Path:
    """One row per test image: the image, its object mask, SOP's top group, a baseline's top pixels.

    Selected pixels are shown in their colours and the rest dimmed; the object's outline is
    drawn on every panel.

    Parameters
    ----------
    path
        PNG written (atomically).
    data
        The test images (their first ``n_images``).
    sop_group
        bool (N, H, W) SOP's top group per image.
    baseline, baseline_name
        bool (N, H, W) the baseline's selection and its name, or None to leave the column out.
    n_images
        Rows drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(int(n_images), len(data))
    panels = [("image", None), ("object", data.masks), ("SOP top group", sop_group)]
    if baseline is not None:
        panels.append((f"{baseline_name} top 20%", baseline))
    fig, axes = plt.subplots(n, len(panels), figsize=(2.0 * len(panels), 2.0 * n), squeeze=False)
    for row in range(n):
        image = data.images[row].transpose(1, 2, 0)
        for col, (title, selection) in enumerate(panels):
            ax = axes[row, col]
            shown = (
                image
                if selection is None
                else np.where(selection[row][..., None], image, 0.25 * image + 0.75)
            )
            ax.imshow(np.clip(shown, 0, 1), interpolation="nearest")
            if col > 0:
                ax.contour(data.masks[row], levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row, 0].set_ylabel(data.class_names[data.labels[row]], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
