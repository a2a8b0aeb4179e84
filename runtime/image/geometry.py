"""Images to model inputs by the model's own resize policy, and maps back onto the original."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image.read import DEFAULT_MAX_PIXELS, as_image, load_image
from gradtap.runtime.image.resample import (
    MAX_RESIZED_PIXELS,
    RESAMPLE_MODES,
    pil_resized_crop,
    resized_crop,
    uncrop,
)
from gradtap.runtime.info import ModelInfo

Array = npt.NDArray[np.float32]
ImageLike = str | os.PathLike[str] | np.ndarray


@dataclass(frozen=True)
class Geometry:
    """How an original image became the model input, so maps can be mapped back.

    Attributes:
        original_size: (H, W) of the original image.
        resized_size: (H, W) after resizing, before the crop.
        crop: (top, left, height, width) of the model input inside the resized image.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, object]:
        """JSON form (``summary.json``): how to map a saved map back onto the photo.

        A map of any resolution is resized to the crop's height x width, placed at (top, left)
        in a canvas of ``resized_size``, and the canvas resized to ``original_size``;
        :func:`to_original` does exactly this.
        """
        top, left, height, width = self.crop
        return {
            "original_size": list(self.original_size),
            "resized_size": list(self.resized_size),
            "crop": {"top": top, "left": left, "height": height, "width": width},
        }


def geometry_for(size: tuple[int, int], info: ModelInfo) -> Geometry:
    """The resize and crop the model's policy applies to an image of (H, W) ``size``."""
    h, w = size
    in_h, in_w = info.input_size
    if info.resize_policy == "stretch":
        return Geometry((h, w), (in_h, in_w), (0, 0, in_h, in_w))
    short = info.resize_size or max(in_h, in_w)
    if h <= w:
        rh, rw = short, max(int(short * w / h), in_w)
    else:
        rh, rw = max(int(short * h / w), in_h), short
    top, left = int(round((rh - in_h) / 2.0)), int(round((rw - in_w) / 2.0))
    return Geometry((h, w), (rh, rw), (top, left, in_h, in_w))


def to_input(
    image: ImageLike,
    info: ModelInfo,
    *,
    alpha: str = "white",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resample: str = "area",
) -> tuple[Array, Geometry]:
    """One image (path or array) to a model input [1, 3, H, W] float32 in [0, 1].

    Args:
        image: a file path (read with :func:`load_image`) or an RGB(A)/grayscale array
            (see :func:`as_image`).
        info: the model's metadata (input size and resize policy).
        alpha: how transparency is flattened (see :func:`load_image`).
        max_pixels: the largest image file accepted (see :func:`load_image`).
        resample: ``"area"`` (default) or ``"torchvision"``, Pillow's antialiased bilinear on
            the 8-bit image, identical to torchvision's ``Resize + CenterCrop`` on a PIL image
            (see ``resample.RESAMPLE_MODES`` and docs/preprocessing.md).

    Returns:
        The input batch of one, and the :class:`Geometry` to map results back.
    """
    if resample not in RESAMPLE_MODES:
        raise ImageError(f"resample mode {resample!r} unknown; valid: {list(RESAMPLE_MODES)}")
    if isinstance(image, (str, os.PathLike)):
        img = load_image(image, alpha=alpha, max_pixels=max_pixels)
    else:
        img = as_image(image, alpha=alpha)
    geo = geometry_for(img.shape[:2], info)
    top, left, ch, cw = geo.crop
    if resample == "torchvision":
        crop = pil_resized_crop(img, geo.resized_size, geo.crop)
    elif _huge(geo):
        crop = resized_crop(img, geo.resized_size, geo.crop)
    else:
        crop = resize(img, geo.resized_size)[top : top + ch, left : left + cw]
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
    return np.clip(x, 0.0, 1.0, out=x), geo  # resampling may overshoot [0, 1] by rounding


def to_batch(
    images: Sequence[ImageLike], info: ModelInfo, **options: Any
) -> tuple[Array, tuple[Geometry, ...]]:
    """Several images to one input batch [N, 3, H, W] and their geometries.

    ``options`` (``alpha``, ``max_pixels``) go to :func:`to_input`.
    """
    if len(images) == 0:
        raise ImageError("no images given")
    pairs = [to_input(img, info, **options) for img in images]
    return np.concatenate([p[0] for p in pairs]), tuple(p[1] for p in pairs)


def to_original(
    result: Any, geometry: Geometry, *, fill: float = 0.0, nearest: bool = False
) -> Array:
    """Map a model-resolution result onto the original image.

    The result is first resized to the model input (it may come at tap resolution, e.g. 7 x 7),
    placed at the crop position inside the resized image, the cropped-away border set to
    ``fill``, then resized to the original size.

    Args:
        result: an H x W map or an H x W x C image at any resolution covering the model input.
        geometry: from :func:`to_input`.
        fill: value for original pixels the model never saw (outside the centre crop).
        nearest: nearest-neighbour instead of (bi)linear interpolation.

    Returns:
        float32 array of the original (H, W), with the channels of ``result`` if any.
    """
    arr = np.asarray(result, dtype=np.float32)
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ImageError(f"to_original expects an H x W map or H x W x C image, got {arr.shape}")
    top, left, ch, cw = geometry.crop
    inside = resize(arr, (ch, cw), nearest=nearest)
    if _huge(geometry):
        size = geometry.original_size
        return uncrop(
            inside, geometry.resized_size, geometry.crop, size, fill=fill, nearest=nearest
        )
    canvas = np.full(geometry.resized_size + arr.shape[2:], fill, dtype=np.float32)
    canvas[top : top + ch, left : left + cw] = inside
    return resize(canvas, geometry.original_size, nearest=nearest)


def _huge(geometry: Geometry) -> bool:
    """Whether the resized image is too large to build (extreme aspect ratios); see resample."""
    return geometry.resized_size[0] * geometry.resized_size[1] > MAX_RESIZED_PIXELS


def resize(arr: Array, size: tuple[int, int], *, nearest: bool = False) -> Array:
    """Resize an H x W (x C) float array to (H, W): area when shrinking, linear when growing."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr.astype(np.float32, copy=True)
    if nearest:
        flag = cv2.INTER_NEAREST_EXACT
    elif h <= arr.shape[0] and w <= arr.shape[1]:
        flag = cv2.INTER_AREA
    else:
        flag = cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(arr, np.float32), (w, h), interpolation=flag)
    return out.reshape((h, w) + arr.shape[2:])
