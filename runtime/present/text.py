"""Text on pictures in any script: a TrueType font found on the system, drawn with Pillow.

OpenCV's built-in Hershey fonts are ASCII only, so class names such as "café" or "猫" would
come out as question marks. ``$GRADTAP_FONT`` names a font file; otherwise the first of the
usual system fonts found is used (DejaVu, Noto, Liberation on Linux; Arial Unicode on macOS;
Segoe UI on Windows; matplotlib's bundled DejaVu). Without Pillow or any font, text falls back
to OpenCV's ASCII rendering.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Rgb8 = npt.NDArray[np.uint8]
FONT_ENV = "GRADTAP_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/segoeui.ttf",
    "C:/Windows/Fonts/arial.ttf",
)
_HERSHEY = cv2.FONT_HERSHEY_SIMPLEX


@cache
def font_path() -> Path | None:
    """The TrueType font used for labels, or None (ASCII fallback)."""
    candidates = [os.environ.get(FONT_ENV, ""), *FONT_CANDIDATES]
    try:
        import matplotlib

        candidates.append(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"))
    except ImportError:
        pass
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@cache
def _font(size: int):  # noqa: ANN202
    try:
        from PIL import ImageFont
    except ImportError:
        return None
    path = font_path()
    if path is None:
        return None
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return None


def text_block(lines: Sequence[str], width: int, *, size: int = 14) -> Rgb8:
    """A white strip of ``width`` with black text lines, the font shrunk to fit the width."""
    lines = [ln for ln in lines if ln] or [""]
    font = _font(size)
    if font is None:
        return _hershey_block(lines, width)
    widest = max(font.getlength(ln) for ln in lines)
    if widest > width - 6:
        font = _font(max(7, int(size * (width - 6) / widest))) or font
    from PIL import Image, ImageDraw

    ascent, descent = font.getmetrics()
    line_h = ascent + descent + 3
    block = Image.new("RGB", (width, line_h * len(lines) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(block)
    for i, ln in enumerate(lines):
        draw.text((3, 3 + i * line_h), ln, fill=(0, 0, 0), font=font)
    return np.asarray(block, dtype=np.uint8).copy()


def _hershey_block(lines: Sequence[str], width: int) -> Rgb8:
    lines = [ln.encode("ascii", "replace").decode() for ln in lines]
    scale = 0.5
    widest = max(cv2.getTextSize(ln, _HERSHEY, scale, 1)[0][0] for ln in lines)
    if widest > width - 6:
        scale = max(0.25, scale * (width - 6) / widest)
    line_h = int(cv2.getTextSize("Ag", _HERSHEY, scale, 1)[0][1] * 1.8) + 2
    block = np.full((line_h * len(lines) + 6, width, 3), 255, np.uint8)
    for i, ln in enumerate(lines):
        cv2.putText(block, ln, (3, line_h * (i + 1)), _HERSHEY, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return block
