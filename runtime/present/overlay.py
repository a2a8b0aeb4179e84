"""Colour maps, blending, labelled panels, and writing images (the only RGB -> BGR conversion)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.atomic import write_bytes
from gradtap.runtime.errors import ImageError, OptionError

Array = npt.NDArray[np.float32]
Rgb8 = npt.NDArray[np.uint8]

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "gray": None,
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
_FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_TILE_ASPECT = 4  # a panel tile is at most this many times as wide as high


def to_uint8(image: npt.NDArray[np.generic]) -> Rgb8:
    """An image in [0, 1] (float) or uint8 as uint8, rounding; other ranges are refused."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ImageError(f"image dtype {arr.dtype} unsupported; valid: uint8, float in [0, 1]")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
        raise ImageError("float image values must be finite and lie in [0, 1]")
    return np.rint(arr * 255).astype(np.uint8)


def colorize(mask: Array, colormap: str = "jet") -> Rgb8:
    """An [H, W] map in [0, 1] as an RGB uint8 image through ``colormap``."""
    m = _check_mask(mask)
    idx = np.rint(m * 255).astype(np.uint8)
    return _palette(colormap)[idx]


def overlay_heatmap(
    image: npt.NDArray[np.generic],
    mask: Array,
    *,
    colormap: str = "jet",
    image_weight: float = 0.5,
) -> Rgb8:
    """Blend a coloured heat map over an RGB image.

    Args:
        image: RGB [H, W, 3], float in [0, 1] or uint8.
        mask: [H, W] in [0, 1], same size as the image (see ``postprocess.heatmap``).
        colormap: one of ``COLORMAPS``.
        image_weight: weight of the image in the blend, in [0, 1].

    Returns:
        RGB uint8 [H, W, 3].

    Raises:
        OptionError / ImageError: mismatched sizes, values out of range, unknown colour map.
    """
    if not 0 <= image_weight <= 1:
        raise OptionError(f"image_weight must lie in [0, 1], got {image_weight}")
    img = _check_rgb(image)
    m = _check_mask(mask)
    if m.shape != img.shape[:2]:
        raise OptionError(f"mask {m.shape} and image {img.shape[:2]} sizes differ")
    heat = colorize(m, colormap).astype(np.float32)
    blend = image_weight * img.astype(np.float32) + (1 - image_weight) * heat
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def panel(
    tiles: Sequence[tuple[str, npt.NDArray[np.generic]]],
    *,
    height: int = 224,
    title: str | None = None,
) -> Rgb8:
    """Tiles side by side, each with its caption underneath, and an optional title on top.

    Args:
        tiles: (caption, RGB image) pairs; images uint8 or float in [0, 1], any size (each is
            resized to ``height``, keeping its aspect ratio, at most ``MAX_TILE_ASPECT`` times as
            wide as high: wider strips are letterboxed). Captions may hold several lines.
        height: tile height in pixels.
        title: a line written above the tiles.

    Returns:
        RGB uint8 image.
    """
    if not tiles:
        raise OptionError("panel needs at least one tile")
    if height < 16:
        raise OptionError(f"panel height must be >= 16, got {height}")
    resized = []
    for caption, image in tiles:
        tile = _fit(_check_rgb(image), height, MAX_TILE_ASPECT * height)
        resized.append(np.vstack([tile, _text_block(caption.split("\n"), tile.shape[1])]))
    rows = max(t.shape[0] for t in resized)
    gap = np.full((rows, 4, 3), 255, np.uint8)
    body = [
        np.vstack([t, np.full((rows - t.shape[0], t.shape[1], 3), 255, np.uint8)]) for t in resized
    ]
    out = np.hstack([x for t in body for x in (t, gap)][:-1])
    if title:
        out = np.vstack([_text_block([title], out.shape[1]), out])
    return out


def write_image(path: str | os.PathLike[str], rgb: npt.NDArray[np.generic]) -> Path:
    """Write an RGB (or grayscale) image atomically: a temporary file, then a rename.

    This is the only RGB -> BGR conversion (OpenCV encodes BGR).

    Args:
        path: destination; the suffix picks the format (one of ``IMAGE_SUFFIXES``).
        rgb: [H, W, 3] RGB or [H, W] grayscale, uint8, or float in [0, 1].

    Raises:
        ImageError: unknown suffix, bad image, missing folder, or a failed write.
    """
    out = Path(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(
            f"cannot write {str(out)!r}: suffix must be one of {sorted(IMAGE_SUFFIXES)}"
        )
    img = to_uint8(rgb)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim != 2:
        raise ImageError(f"expected an [H, W, 3] RGB or [H, W] image, got {img.shape}")
    ok, buf = cv2.imencode(out.suffix.lower(), np.ascontiguousarray(img))
    if not ok:
        raise ImageError(f"OpenCV could not encode {str(out)!r}")
    if not out.parent.is_dir():
        raise ImageError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
    try:
        write_bytes(out, buf.tobytes())
    except OSError as err:
        raise ImageError(f"cannot write {str(out)!r}: {err.strerror}") from None
    return out


def _fit(img: Rgb8, height: int, max_width: int) -> Rgb8:
    """Resized to ``height`` keeping the aspect ratio; wider than ``max_width``: letterboxed."""
    scale = min(height / img.shape[0], max_width / img.shape[1])
    h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
    tile = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if h == height:
        return tile
    top = (height - h) // 2
    return cv2.copyMakeBorder(
        tile, top, height - h - top, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)
    )


@cache
def _palette(name: str) -> Rgb8:
    """256 x 3 RGB lookup table of a colour map (OpenCV's tables are BGR; reversed here once)."""
    if name not in COLORMAPS:
        raise OptionError(f"colour map {name!r} unknown; valid: {sorted(COLORMAPS)}")
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    if COLORMAPS[name] is None:
        return np.repeat(ramp, 3, axis=1)
    return np.ascontiguousarray(cv2.applyColorMap(ramp, COLORMAPS[name])[:, 0, ::-1])


def _check_mask(mask: Array) -> Array:
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise OptionError(f"mask must be [H, W], got {m.shape}")
    if m.size and (not np.isfinite(m).all() or m.min() < 0 or m.max() > 1):
        raise OptionError(
            "mask values must be finite and lie in [0, 1] (use postprocess.normalize)"
        )
    return m


def _check_rgb(image: npt.NDArray[np.generic]) -> Rgb8:
    img = to_uint8(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise ImageError(f"expected an RGB [H, W, 3] image, got {img.shape}")
    return img


def _text_block(lines: Sequence[str], width: int) -> Rgb8:
    """White strip with black text lines, the font shrunk to fit ``width``."""
    lines = [ln.encode("ascii", "replace").decode() for ln in lines if ln] or [""]
    scale = 0.5
    widest = max(cv2.getTextSize(ln, _FONT, scale, 1)[0][0] for ln in lines)
    if widest > width - 6:
        scale = max(0.25, scale * (width - 6) / widest)
    line_h = int(cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] * 1.8) + 2
    block = np.full((line_h * len(lines) + 6, width, 3), 255, np.uint8)
    for i, ln in enumerate(lines):
        cv2.putText(block, ln, (3, line_h * (i + 1)), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return block
