"""Reader of ImageNet-S folders: real photographs with pixel-level masks of their object.

ImageNet-S (Gao et al., "Large-scale Unsupervised Semantic Segmentation", TPAMI 2022,
https://github.com/LUSSeg/ImageNet-S) adds semantic masks to ImageNet images. Its layout, per
subset (``ImageNetS50``, ``ImageNetS300``, ``ImageNetS919``)::

    <root>/<split>/<class>/<name>.JPEG                 images (class = ImageNet wnid folder)
    <root>/<split>-segmentation/<class>/<name>.png     masks of the annotated splits

with ``split`` e.g. ``train-semi`` (10 annotated training images per class) or ``validation``
(the test split keeps its masks on the evaluation server). The format, as the dataset's README
states (section "How to get the class id from the segmentation mask images?") and as
mmsegmentation's ``LoadImageNetSAnnotations`` decodes it: a mask is an RGB PNG in which the
class id of a pixel is **R + 256 G** (ids go up to 919, beyond one byte); **0** is "other"
(background, not one of the categories) and **1000** is the *ignored* part (uncertain
boundaries). Here the object mask of an image is every pixel whose id is neither 0 nor 1000;
the ignored pixels are returned separately (``extra["ignore"]``) and are neither object nor
background for the metrics that read them. A single-channel mask (mode L, I or a palette) is
read as the ids themselves, so that hand-made masks work too.

The class of an image is its folder: labels index the sorted class folders of ``split`` (or the
``classes`` given). Images are converted to RGB and resized to ``image_size`` x
``image_size`` with bilinear interpolation (the whole image, so no object pixel is cropped;
the aspect ratio is not kept), masks with nearest-neighbour interpolation.

Bad input stops the read with an :class:`~cosmo_sop.errors.InputError` naming the file: a
missing split folder, a split without images, an image without its mask, a file PIL cannot
read, or a mask whose size differs from its image's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from cosmo_sop.errors import InputError
from cosmo_sop.tasks.images.data import ImageSet

#: Image file suffixes read (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")
#: Mask id of pixels outside every category.
OTHER = 0
#: Mask id of the ignored pixels.
IGNORE = 1000


def decode_mask(mask: Image.Image) -> np.ndarray:
    """Class ids of a mask image, int64 (H, W): R + 256 G for colour masks (the ImageNet-S
    format), the value itself for grey masks and the palette index for palette masks."""
    if mask.mode in ("L", "I", "I;16", "P"):
        return np.asarray(mask, dtype=np.int64)
    rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


def list_images(
    root: str | os.PathLike, split: str, classes: Sequence[str] | int | None = None
) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """The image files of a split with their labels, and the class names in label order.

    Parameters
    ----------
    root
        Folder holding ``<split>/`` and ``<split>-segmentation/``.
    split
        Split folder name, e.g. ``"validation"`` or ``"train-semi"``.
    classes
        Class folders to read, in label order; an integer K: the first K sorted folders;
        None: all.

    Raises
    ------
    InputError
        Missing split or class folder, or no image in the chosen classes.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise InputError(folder, "ImageNet-S split folder not found")
    available = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        chosen = available
    elif isinstance(classes, int):
        chosen = available[:classes]
        if len(chosen) < classes:
            raise InputError(folder, f"{classes} classes asked for, {len(available)} found")
    else:
        chosen = list(classes)
        for name in chosen:
            if not (folder / name).is_dir():
                raise InputError(folder / name, "class folder not found")
    files = [
        (path, label)
        for label, name in enumerate(chosen)
        for path in sorted((folder / name).iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(folder, "no images (.JPEG, .jpg, .png) in its class folders")
    return files, tuple(chosen)


def mask_path(image: Path, split: str) -> Path:
    """Where the mask of ``image`` (``<root>/<split>/<class>/<name>.*``) lies."""
    return (
        image.parent.parent.parent
        / f"{split}-segmentation"
        / image.parent.name
        / (image.stem + ".png")
    )


def load_imagenet_s(
    root: str | os.PathLike,
    split: str,
    image_size: int,
    *,
    classes: Sequence[str] | int | None = None,
    with_masks: bool = True,
    max_per_class: int | None = None,
    progress: bool = True,
) -> ImageSet:
    """Read one split of an ImageNet-S folder, resized to ``image_size``.

    Parameters
    ----------
    root, split, classes
        As in :func:`list_images`.
    image_size
        Side of the square images returned, in pixels.
    with_masks
        Read the masks (every image must have one); False: masks all False (for training
        splits, which have none).
    max_per_class
        Read at most this many images of each class (the first in file-name order).
    progress
        Show a progress bar over files.

    Returns
    -------
    ImageSet
        images float32 (N, 3, S, S) in [0, 1], masks bool (N, S, S), labels int64 (N,), names
        the image paths relative to ``root``; with masks also ``extra["ignore"]`` bool
        (N, S, S), the pixels of id 1000.
    """
    files, class_names = list_images(root, split, classes)
    if max_per_class is not None:
        counts: dict[int, int] = {}
        kept = []
        for path, label in files:
            counts[label] = counts.get(label, 0) + 1
            if counts[label] <= max_per_class:
                kept.append((path, label))
        files = kept
    n, size = len(files), int(image_size)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    ignore = np.zeros((n, size, size), dtype=bool)
    for i, (path, _) in enumerate(tqdm(files, desc=f"reading {split}", disable=not progress)):
        image = _open(path)
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        if not with_masks:
            continue
        where = mask_path(path, split)
        if not where.is_file():
            raise InputError(path, f"no segmentation mask (expected {where})")
        mask = _open(where)
        if mask.size != image.size:
            raise InputError(
                where,
                f"mask is {mask.size[0]}x{mask.size[1]}, its image {image.size[0]}x"
                f"{image.size[1]} (width x height)",
            )
        ids = decode_mask(mask)
        masks[i] = _resized((ids != OTHER) & (ids != IGNORE), size)
        ignore[i] = _resized(ids == IGNORE, size)
    base = Path(root)
    return ImageSet(
        images=images,
        masks=masks,
        labels=np.array([label for _, label in files], dtype=np.int64),
        class_names=class_names,
        names=tuple(str(path.relative_to(base)) for path, _ in files),
        extra={"ignore": ignore} if with_masks else {},
    )


def _open(path: Path) -> Image.Image:
    """The decoded image at ``path``; an InputError naming it if PIL cannot read it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(path, f"not a readable image ({type(error).__name__}: {error})") from None


def _resized(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool (H, W) mask resized to (size, size) by nearest neighbour."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST)) > 127
