"""A procedural image-classification dataset with ground-truth object masks (numpy + OpenCV).

Every image holds exactly one object of a class in ``CLASS_NAMES`` (disc, square, triangle, star,
cross, ring) at a random position, scale and rotation, on a cluttered background (a colour
gradient, low-frequency colour blobs, pixel noise) with distractors that belong to no class (thin
lines, elongated ellipses and bars, and class shapes too small to count). Colours are drawn
independently of the class, so only the object's shape tells the label. The object's mask and box
are exact, which makes the set a localisation benchmark for explanations (pointing game,
deletion/insertion) as well as a training set.

Samples are a pure function of ``(index, seed, size)``; labels cycle through the classes
(``index % len(CLASS_NAMES)``), so any split is balanced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "star", "cross", "ring")
TRAIN_SEED = 0
"""Seed of the training split used to train the shipped custom CNN."""
TEST_SEED = 1
"""Seed of the held-out test split on which the shipped custom CNN's accuracy is reported."""
DEFAULT_SIZE = 64
MIN_SIZE = 32

_SUPERSAMPLE = 4  # shapes are rasterised at 4x and area-downsampled: anti-aliased, deterministic
_OBJECT_RADIUS = (0.12, 0.26)  # object circumradius, as a fraction of the image side
_SMALL_RADIUS = (0.025, 0.045)  # class-shaped distractors too small to count
_MIN_CONTRAST = 0.3  # mean absolute RGB difference between object and background under it

Points = npt.NDArray[np.float64]
_QUARTER_TURN = np.array([[0.0, 1.0], [-1.0, 0.0]])  # row vectors: (x, y) -> (-y, x)
Image = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Sample:
    """One generated image with its ground truth.

    Attributes:
        image: float32 [H, W, 3] RGB in [0, 1].
        label: class index into ``CLASS_NAMES``.
        mask: bool [H, W], True on the object's pixels.
        box: ``(x0, y0, x1, y1)`` pixel bounds of the mask, half-open (``x1``, ``y1`` exclusive).
    """

    image: Image
    label: int
    mask: npt.NDArray[np.bool_]
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Split:
    """Stacked samples: ``images`` [N, H, W, 3] float32, ``labels`` [N] int64, ``masks``
    [N, H, W] bool, ``boxes`` [N, 4] int64 (half-open ``x0, y0, x1, y1``)."""

    images: Image
    labels: npt.NDArray[np.int64]
    masks: npt.NDArray[np.bool_]
    boxes: npt.NDArray[np.int64]


def _regular(n: int, radii: tuple[float, ...], phase: float) -> Points:
    """Unit-centred polygon with ``n * len(radii)`` vertices cycling through ``radii``."""
    k = n * len(radii)
    angles = phase + 2 * np.pi * np.arange(k) / k
    r = np.resize(np.asarray(radii), k)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _cross(phase: float) -> Points:
    """Plus sign with arms of half-width 0.3 reaching radius 0.95, rotated by ``phase``."""
    a, w = 0.95, 0.3
    quarter = np.array([[w, -a], [w, -w], [a, -w]])  # one arm's corner run; rotate it 4 times
    pts = np.concatenate([quarter @ np.linalg.matrix_power(_QUARTER_TURN, k) for k in range(4)])
    c, s = np.cos(phase), np.sin(phase)
    return pts @ np.array([[c, s], [-s, c]])


def _class_polygons(label: int, phase: float) -> tuple[Points, Points | None]:
    """Outer polygon and optional hole of a class shape, unit circumradius."""
    name = CLASS_NAMES[label]
    if name == "disc":
        return _regular(64, (1.0,), 0.0), None
    if name == "square":
        return _regular(4, (1.0,), phase), None
    if name == "triangle":
        return _regular(3, (1.0,), phase), None
    if name == "star":
        return _regular(5, (1.0, 0.42), phase), None
    if name == "cross":
        return _cross(phase), None
    return _regular(64, (1.0,), 0.0), _regular(64, (0.55,), 0.0)  # ring


def _rasterise(size: int, outer: Points, hole: Points | None = None) -> Image:
    """Anti-aliased coverage in [0, 1] of a polygon (pixel coordinates) minus an optional hole."""
    big = size * _SUPERSAMPLE
    canvas = np.zeros((big, big), np.uint8)
    scale = _SUPERSAMPLE * 16  # cv2 fixed-point with shift=4
    cv2.fillPoly(canvas, [np.round(outer * scale).astype(np.int32)], 255, cv2.LINE_8, 4)
    if hole is not None:
        cv2.fillPoly(canvas, [np.round(hole * scale).astype(np.int32)], 0, cv2.LINE_8, 4)
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _place(unit: Points, centre: Points, radius: float) -> Points:
    return unit * radius + centre


def _background(rng: np.random.Generator, size: int) -> Image:
    """Colour gradient at a random angle plus low-frequency colour blobs."""
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0
    img = c0 + (c1 - c0) * t[..., None]
    coarse = rng.normal(0.0, 0.12, (5, 5, 3)).astype(np.float32)
    img = img + cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _composite(img: Image, alpha: Image, colour: npt.NDArray[np.float64]) -> None:
    img *= 1.0 - alpha[..., None]
    img += alpha[..., None] * colour.astype(np.float32)


def _distractor(rng: np.random.Generator, size: int) -> Image:
    """Coverage of one shape that belongs to no class."""
    kind = rng.integers(4)
    centre = rng.uniform(0.05 * size, 0.95 * size, 2)
    phase = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(phase), np.sin(phase)], [-np.sin(phase), np.cos(phase)]])
    if kind == 0:  # thin line
        half = rng.uniform(0.15, 0.45) * size
        width = rng.uniform(0.4, 1.2)
        pts = np.array([[-half, -width], [half, -width], [half, width], [-half, width]])
        return _rasterise(size, pts @ rot + centre)
    if kind == 1:  # elongated ellipse
        a = rng.uniform(0.1, 0.2) * size
        ring = _regular(48, (1.0,), 0.0) * [a, a / rng.uniform(2.8, 4.0)]
        return _rasterise(size, ring @ rot + centre)
    if kind == 2:  # elongated bar
        a = rng.uniform(0.1, 0.22) * size
        b = a / rng.uniform(3.0, 5.0)
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        return _rasterise(size, pts @ rot + centre)
    outer, hole = _class_polygons(int(rng.integers(len(CLASS_NAMES))), phase)
    radius = rng.uniform(*_SMALL_RADIUS) * size
    hole_px = None if hole is None else _place(hole, centre, radius)
    return _rasterise(size, _place(outer, centre, radius), hole_px)


def _object_colour(
    rng: np.random.Generator, under: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """A random colour that stands out from the mean background colour under the object."""
    colour = rng.uniform(0.0, 1.0, 3)
    for _ in range(32):
        if np.abs(colour - under).mean() >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 1.0, 3)
    else:
        colour = np.where(under > 0.5, 0.0, 1.0)
    return colour


def _check(index: int, seed: int, size: int) -> None:
    if index < 0:
        raise OptionError(f"sample index must be >= 0, got {index}")
    if seed < 0:
        raise OptionError(f"seed must be >= 0, got {seed}")
    if size < MIN_SIZE:
        raise OptionError(f"image size must be >= {MIN_SIZE} pixels, got {size}")


def _box(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def make_sample(index: int, seed: int = TRAIN_SEED, size: int = DEFAULT_SIZE) -> Sample:
    """Generate sample ``index`` of the split ``seed`` at ``size`` x ``size`` pixels.

    Args:
        index: position in the split (>= 0); the label is ``index % len(CLASS_NAMES)``.
        seed: split seed (>= 0); different seeds give disjoint random streams.
        size: image side in pixels (>= 32).

    Returns:
        The image with its label, exact object mask and box.
    """
    _check(index, seed, size)
    rng = np.random.default_rng([seed, index, size])
    label = index % len(CLASS_NAMES)
    img = _background(rng, size)
    radius = rng.uniform(*_OBJECT_RADIUS) * size
    centre = rng.uniform(radius + 1.0, size - radius - 1.0, 2)
    outer, hole = _class_polygons(label, rng.uniform(0, 2 * np.pi))
    hole_px = None if hole is None else _place(hole, centre, radius)
    obj = _rasterise(size, _place(outer, centre, radius), hole_px)
    halo = cv2.dilate((obj > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(8):
            alpha = _distractor(rng, size)
            if not (alpha[halo] > 0).any():
                _composite(img, alpha, rng.uniform(0.0, 1.0, 3))
                break
    mask = obj >= 0.5
    _composite(img, obj, _object_colour(rng, img[mask].mean(axis=0)))
    img += rng.normal(0.0, rng.uniform(0.01, 0.05), img.shape).astype(np.float32)
    return Sample(np.clip(img, 0.0, 1.0), label, mask, _box(mask))


def iter_samples(
    n: int, seed: int = TRAIN_SEED, size: int = DEFAULT_SIZE, start: int = 0
) -> Iterator[Sample]:
    """Yield samples ``start`` .. ``start + n - 1`` of split ``seed``."""
    if n < 0:
        raise OptionError(f"number of samples must be >= 0, got {n}")
    for index in range(start, start + n):
        yield make_sample(index, seed, size)


def make_split(n: int, seed: int = TRAIN_SEED, size: int = DEFAULT_SIZE, start: int = 0) -> Split:
    """Generate and stack samples ``start`` .. ``start + n - 1`` of split ``seed``.

    Args:
        n: number of samples (>= 1).
        seed: split seed; ``TRAIN_SEED`` and ``TEST_SEED`` are the shipped model's splits.
        size: image side in pixels (>= 32).
        start: index of the first sample.

    Returns:
        The stacked images, labels, masks and boxes.
    """
    if n < 1:
        raise OptionError(f"a split needs at least 1 sample, got n={n}")
    samples = list(iter_samples(n, seed, size, start))
    return Split(
        images=np.stack([s.image for s in samples]),
        labels=np.array([s.label for s in samples], np.int64),
        masks=np.stack([s.mask for s in samples]),
        boxes=np.array([s.box for s in samples], np.int64),
    )


def as_uint8(images: Image) -> npt.NDArray[np.uint8]:
    """Quantise images in [0, 1] to uint8, e.g. to store a large split compactly."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
