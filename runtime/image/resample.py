"""Resizing only the part of an image that is needed, for extreme aspect ratios.

A centre-crop policy resizes the shorter side to e.g. 256 pixels: a 1 x 5000 strip would become a
256 x 1,280,000 float image (4 GB) before a 224 x 224 crop is taken. The functions here compute
the crop (and, on the way back, the map on the original image) directly, with separable linear
interpolation in OpenCV's half-pixel convention, so memory stays proportional to what is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]

# Resized images up to this many pixels are materialised (exact OpenCV resize); larger ones never.
MAX_RESIZED_PIXELS = 1 << 22


class Taps(NamedTuple):
    """Per destination position: two source indices and the weight of the second."""

    lo: Ints
    hi: Ints
    weight: Array


def taps(n_src: int, n_dst: int, start: int, count: int, *, nearest: bool = False) -> Taps:
    """Source taps of destination positions ``start .. start + count`` of an n_src -> n_dst resize.

    Linear: ``x = (d + 0.5) * n_src / n_dst - 0.5``, clamped to the edges (cv2.INTER_LINEAR);
    nearest: ``floor((d + 0.5) * n_src / n_dst)`` (cv2.INTER_NEAREST_EXACT).
    """
    d = np.arange(start, start + count, dtype=np.float64)
    if nearest:
        idx = np.clip(np.floor((d + 0.5) * n_src / n_dst), 0, n_src - 1).astype(np.int64)
        return Taps(idx, idx, np.zeros(count, np.float32))
    pos = np.clip((d + 0.5) * n_src / n_dst - 0.5, 0, n_src - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_src - 1)
    return Taps(lo, hi, (pos - lo).astype(np.float32))


def interpolate(arr: Array, axis: int, t: Taps) -> Array:
    """``arr`` resampled along ``axis`` at the taps ``t``."""
    shape = [1] * arr.ndim
    shape[axis] = -1
    w = t.weight.reshape(shape)
    lo, hi = np.take(arr, t.lo, axis=axis), np.take(arr, t.hi, axis=axis)
    return (lo * (1 - w) + hi * w).astype(np.float32)


def resized_crop(img: Array, resized: tuple[int, int], crop: tuple[int, int, int, int]) -> Array:
    """The ``crop`` (top, left, h, w) of ``img`` resized to ``resized``, without the rest."""
    top, left, ch, cw = crop
    rows = taps(img.shape[0], resized[0], top, ch)
    cols = taps(img.shape[1], resized[1], left, cw)
    if img.shape[0] * cw <= ch * img.shape[1]:  # the smaller intermediate first
        return interpolate(interpolate(img, 1, cols), 0, rows)
    return interpolate(interpolate(img, 0, rows), 1, cols)


def uncrop(
    inside: Array,
    resized: tuple[int, int],
    crop: tuple[int, int, int, int],
    original: tuple[int, int],
    *,
    fill: float,
    nearest: bool = False,
) -> Array:
    """``inside`` (the crop's pixels) placed on a ``fill`` canvas of ``resized``, then resized
    to ``original``: computed for the original's pixels only, the canvas never built."""
    top, left, ch, cw = crop
    padded = np.pad(inside, [(1, 1), (1, 1)] + [(0, 0)] * (inside.ndim - 2), constant_values=fill)
    out = padded
    for axis, (n_canvas, n_orig, offset, n_in) in enumerate(
        ((resized[0], original[0], top, ch), (resized[1], original[1], left, cw))
    ):
        t = taps(n_canvas, n_orig, 0, n_orig, nearest=nearest)
        lo, hi = _padded(t.lo, offset, n_in), _padded(t.hi, offset, n_in)
        out = interpolate(out, axis, Taps(lo, hi, t.weight))
    return out


def _padded(canvas_index: Ints, offset: int, n_in: int) -> Ints:
    """Canvas index -> index into the fill-padded crop: 0 before it, 1..n_in inside, n_in + 1 after."""
    return np.clip(canvas_index - offset + 1, 0, n_in + 1)


# How the photo is resized to the model input: "area" (OpenCV area averaging when shrinking,
# bilinear when growing; float throughout) or "torchvision" (Pillow's antialiased bilinear on the
# 8-bit image: exactly torchvision's Resize(...) + CenterCrop(...) on a PIL image, so the input
# and the predictions equal those of a torchvision training/eval pipeline).
RESAMPLE_MODES = ("area", "torchvision")


def pil_resized_crop(
    img: Array, resized: tuple[int, int], crop: tuple[int, int, int, int]
) -> Array:
    """``img`` (RGB float in [0, 1], 8-bit values) resized like torchvision on PIL, then cropped.

    Raises:
        ImageError: Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError:
        from gradtap.runtime.errors import ImageError

        raise ImageError("resample='torchvision' needs Pillow: pip install pillow") from None

    rgb8 = np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    pil = Image.fromarray(rgb8).resize((resized[1], resized[0]), Image.Resampling.BILINEAR)
    top, left, ch, cw = crop
    out = np.asarray(pil, dtype=np.float32)[top : top + ch, left : left + cw]
    return out / np.float32(255)
