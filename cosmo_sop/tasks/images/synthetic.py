"""Generated shape images whose object masks are exact: the image task's built-in data.

In the spirit of synthetic XAI benchmarks such as FunnyBirds (Hesse et al., ICCV 2023): the
ground truth of what an explanation should point at is known by construction. Every image holds
one object, a shape of one of K classes,

    disc, square, triangle, cross, ring, diamond   (the first ``n_classes``),

at a random position and size and in a random colour, on a random textured background (smooth
Gaussian noise or stripes of random orientation and frequency). The class depends only on the
shape: position, size, colour and background are drawn independently of it, so the background
carries no information about the label and a faithful explanation of a correct prediction must
point at the object. The mask is the set of pixels the object was painted on, so it is exact:
the image equals the object colour there and the background elsewhere.

Geometry, in pixels, for an object of size r (uniform in ``size_range`` times the image side)
centred at (cy, cx) and pixel centres (y + 0.5, x + 0.5), offsets (dy, dx) from the centre:

- disc: dy² + dx² <= r²; ring: (0.55 r)² <= dy² + dx² <= r²
- square: max(|dy|, |dx|) <= 0.8 r; diamond: |dy| + |dx| <= 1.1 r
- cross: two bars of half-length r and half-width r / 3
- triangle: equilateral, pointing up, circumradius R = 1.15 r: dy <= R / 2 and
  sqrt(3) |dx| <= dy + R

The object lies wholly inside the image (its centre is at least 1.15 r + 1 from every edge).
Contrast: the object colour differs from the background's base colour by at least 0.45 in one
channel and the texture moves the background by at most 0.15, so every object pixel differs
from the background under it by at least 0.3 in that channel.

Optional distractors: a thin line segment in a random colour, drawn before the object (the
object covers it where they cross), independent of the class; its visible pixels are returned
in ``extra["distractor"]``.

Everything is vectorised over the images of a call, and seeded: the same arguments give the
same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from cosmo_sop.tasks.images.data import ImageSet

#: The shape classes, in label order.
SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "diamond")
#: Backgrounds drawn with equal probability.
TEXTURES: tuple[str, ...] = ("noise", "stripes")

# Largest extent of any shape in units of r (the triangle's circumradius).
_EXTENT = 1.15
_TEXTURE_AMPLITUDE = 0.15
_MIN_CONTRAST = 0.45


def shape_masks(
    label: np.ndarray, dy: np.ndarray, dx: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Pixels covered by the shape of each class, bool (N, H, W).

    Parameters
    ----------
    label
        int (N,) class indices into :data:`SHAPES`.
    dy, dx
        float offsets, broadcasting to (N, H, W), of the pixel centres from each object's centre, in pixels.
    radius
        float (N,) object size r, in pixels.
    """
    dy, dx = np.broadcast_arrays(dy, dx)
    r = radius[:, None, None]
    d2 = dy**2 + dx**2
    ady, adx = np.abs(dy), np.abs(dx)
    big = _EXTENT * r
    rules = {
        "disc": d2 <= r**2,
        "square": np.maximum(ady, adx) <= 0.8 * r,
        "triangle": (dy <= big / 2) & (np.sqrt(3.0) * adx <= dy + big),
        "cross": ((ady <= r / 3) & (adx <= r)) | ((adx <= r / 3) & (ady <= r)),
        "ring": (d2 <= r**2) & (d2 >= (0.55 * r) ** 2),
        "diamond": ady + adx <= 1.1 * r,
    }
    out = np.zeros(dy.shape, dtype=bool)
    for index, name in enumerate(SHAPES):
        chosen = label == index
        out[chosen] = rules[name][chosen]
    return out


def backgrounds(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random textured backgrounds, float32 (N, 3, H, W) in [0, 1], and their base colours.

    A base colour in [0.15, 0.85]³ plus, per channel, an amplitude in [0, 0.15] times one
    pattern in [-1, 1]: smooth noise (white noise under a Gaussian of size / 8 pixels, periodic)
    or stripes (a sine of 2 to 5 cycles per image side in a random direction and phase).

    Returns
    -------
    background : ndarray
        float32 (N, 3, H, W).
    base : ndarray
        float64 (N, 3), the colour the texture varies around (by at most 0.15).
    """
    base = rng.uniform(0.15, 0.85, size=(n, 3))
    amplitude = rng.uniform(0.0, _TEXTURE_AMPLITUDE, size=(n, 3))
    kind = rng.integers(0, len(TEXTURES), size=n)
    noise = ndimage.gaussian_filter(
        rng.standard_normal((n, size, size)), sigma=(0, size / 8, size / 8), mode="wrap"
    )
    noise /= np.maximum(np.abs(noise).max(axis=(1, 2), keepdims=True), 1e-12)
    y, x = _pixel_centres(size)
    angle = rng.uniform(0.0, np.pi, size=n)[:, None, None]
    cycles = rng.uniform(2.0, 5.0, size=n)[:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, size=n)[:, None, None]
    stripes = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) / size + phase)
    pattern = np.where((kind == 0)[:, None, None], noise, stripes)
    out = base[:, :, None, None] + amplitude[:, :, None, None] * pattern[:, None]
    return out.astype(np.float32), base


def contrasting_colours(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Random colours (N, 3) in [0, 1] at least 0.45 from ``base`` (N, 3) in one channel.

    The channel where a uniform draw is farthest from the base is pushed to base ± 0.45 (towards
    the middle of [0, 1]) when it is closer than that.
    """
    colour = rng.uniform(0.0, 1.0, size=base.shape)
    rows = np.arange(len(base))
    channel = np.abs(colour - base).argmax(axis=1)
    b = base[rows, channel]
    pushed = np.where(b < 0.5, b + _MIN_CONTRAST, b - _MIN_CONTRAST)
    weak = np.abs(colour[rows, channel] - b) < _MIN_CONTRAST
    colour[rows[weak], channel[weak]] = pushed[weak]
    return colour


def generate(
    n: int,
    n_classes: int,
    image_size: int,
    seed: int | Sequence[int],
    *,
    size_range: tuple[float, float] = (0.18, 0.32),
    distractors: bool = False,
    return_background: bool = False,
) -> ImageSet:
    """N images of shapes with exact masks; see the module docstring.

    Parameters
    ----------
    n
        Number of images; the classes are balanced (counts differ by at most 1), in random order.
    n_classes
        K, 2 to ``len(SHAPES)``: the first K shapes of :data:`SHAPES`.
    image_size
        Side H = W in pixels (at least 16).
    seed
        Seed (or seed sequence) of the numpy Generator; everything is drawn from it.
    size_range
        Object size r as fractions of the image side, low <= high; the object must fit:
        2 (1.15 high image_size + 1) <= image_size.
    distractors
        Also draw a class-independent line segment under the object.
    return_background
        Put the backgrounds (N, 3, H, W) (with the distractor, before the object) in
        ``extra["background"]``, e.g. to check the masks.

    Returns
    -------
    ImageSet
        images float32 (N, 3, H, W) in [0, 1], masks bool (N, H, W), labels int64 (N,),
        class names the shapes; ``extra["centre"]`` (N, 2) (row, column) and ``extra["size"]``
        (N,) r of every object, in pixels.
    """
    low, high = (float(v) for v in size_range)
    if not 2 <= n_classes <= len(SHAPES):
        raise ValueError(f"n_classes must lie in [2, {len(SHAPES)}], got {n_classes!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size!r}")
    if not 0 < low <= high or 2 * (_EXTENT * high * image_size + 1) > image_size:
        raise ValueError(f"size_range {size_range} must be increasing, > 0 and fit the image")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    radius = rng.uniform(low, high, size=n) * image_size
    margin = _EXTENT * radius + 1
    cy = rng.uniform(margin, image_size - margin)
    cx = rng.uniform(margin, image_size - margin)
    background, base = backgrounds(rng, n, image_size)
    y, x = _pixel_centres(image_size)
    extra: dict[str, np.ndarray] = {}
    if distractors:
        line = line_masks(rng, n, image_size)
        line_colour = contrasting_colours(rng, base).astype(np.float32)
        background = np.where(line[:, None], line_colour[:, :, None, None], background)
    masks = shape_masks(labels, y - cy[:, None, None], x - cx[:, None, None], radius)
    # Contrast is measured from the texture's base colour, so it holds against the texture
    # (a distractor under the object may, by chance, be close to the object's colour).
    colour = contrasting_colours(rng, base).astype(np.float32)
    images = np.where(masks[:, None], colour[:, :, None, None], background)
    extra["centre"] = np.stack([cy, cx], axis=1)
    extra["size"] = radius
    if distractors:
        extra["distractor"] = line & ~masks
    if return_background:
        extra["background"] = background.astype(np.float32)
    return ImageSet(
        images=images,
        masks=masks,
        labels=labels,
        class_names=SHAPES[:n_classes],
        names=tuple(f"synthetic-{i}" for i in range(n)),
        extra=extra,
    )


def line_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Thin random line segments, bool (N, H, W): pixel centres within 0.75 px of the segment.

    One end uniform in the image, direction uniform, length 0.3 to 0.6 image sides; the segment
    is clipped to the image by the mask itself.
    """
    start = rng.uniform(0.0, size, size=(n, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    length = rng.uniform(0.3, 0.6, size=n) * size
    step = np.stack([np.sin(angle), np.cos(angle)], axis=1) * length[:, None]
    y, x = _pixel_centres(size)
    py, px = y - start[:, 0, None, None], x - start[:, 1, None, None]
    # Distance of every pixel centre to the segment: project, clamp to [0, 1], measure.
    t = (py * step[:, 0, None, None] + px * step[:, 1, None, None]) / length[:, None, None] ** 2
    t = np.clip(t, 0.0, 1.0)
    ey = py - t * step[:, 0, None, None]
    ex = px - t * step[:, 1, None, None]
    return ey**2 + ex**2 <= 0.75**2


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of the pixel centres, (1, H, 1) and (1, 1, W), in pixels."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    return centres[None, :, None], centres[None, None, :]
