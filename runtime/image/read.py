"""Reading images: EXIF orientation, a pixel limit and a memory limit.

Every image leaves this module as float32 RGB, H x W x 3, in [0, 1]. Files are checked before
any decoder sees them: regular files only (no folders, pipes or devices; symlink loops named as
such), and the size the decoder will produce against the pixel and memory limits, so a
decompression bomb is refused without being decoded.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image.decode import decode, open_image, orientation, probe

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.float32]

DEFAULT_MAX_PIXELS = 100_000_000
ALPHA_MODES = ("white", "black", "drop")
# No image within the pixel limit needs more bytes than 16-bit RGBA pixels plus metadata.
BYTES_PER_PIXEL = 8
METADATA_BYTES = 64 << 20


def load_image(
    path: str | os.PathLike[str],
    *,
    alpha: str = "white",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int | None = None,
) -> Image:
    """Read an image file as float32 RGB in [0, 1], H x W x 3.

    Grayscale is repeated over three channels, 16-bit images keep their precision, the EXIF
    orientation (JPEG, PNG, WebP, TIFF) is applied, and an alpha channel is handled per
    ``alpha``. Animated and multi-page files give their first frame (a warning says so). The
    size and the memory decoding needs are checked from the parsed header before any pixel is
    decoded, so a decompression bomb costs the parse of its header.

    Args:
        path: the image file: PNG, JPEG, GIF, BMP, WebP, TIFF, PNM or JPEG 2000.
        alpha: ``"white"`` composites transparent pixels on white, ``"black"`` on black,
            ``"drop"`` ignores the alpha channel.
        max_pixels: the largest width * height accepted.
        max_memory: the most bytes decoding may need (estimated from the header: decoded
            samples, the decoder's working copies and the float32 result); ``None`` = the
            process default, :func:`default_max_memory` unless :func:`set_max_memory` changed it.

    Raises:
        ImageError: missing, empty, truncated, damaged, undecodable or too large files.
    """
    _check_alpha(alpha)
    if max_pixels < 1:
        raise ImageError(f"max_pixels must be >= 1, got {max_pixels}")
    budget = _MAX_MEMORY[0] if max_memory is None else max_memory
    data = _read_bytes(
        Path(path), max_bytes=min(max_pixels * BYTES_PER_PIXEL, budget) + METADATA_BYTES
    )
    name = str(path)
    _check_complete(data, name)
    img = open_image(data, name)
    found = probe(img, data, name)
    w, h = found.size
    if w * h > max_pixels:
        raise ImageError(f"image {name!r} is {w}x{h} pixels, over the limit of {max_pixels}")
    if found.bytes_needed > budget:
        raise ImageError(
            f"image {name!r} ({w}x{h}) needs about {found.bytes_needed >> 20} MiB to decode, "
            f"over the memory limit of {budget >> 20} MiB"
        )
    if found.frames > 1:
        logger.warning("%r has %d frames; frame 1 is used", name, found.frames)
    oriented = _orient(decode(img, data, name), orientation(img))
    return _to_rgb01(oriented, alpha=alpha, name=name)


def default_max_memory() -> int:
    """An eighth of the machine's memory, between 256 MiB and 2 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(256 << 20, min(total // 8, 2 << 30))


_MAX_MEMORY = [default_max_memory()]


def max_memory() -> int:
    """The process-wide memory limit now (the CLI's ``--max-memory``, else the default)."""
    return _MAX_MEMORY[0]


def set_max_memory(limit: int) -> None:
    """Change the process-wide decoding memory limit (the CLI's ``--max-memory``)."""
    if limit < 1:
        raise ImageError(f"max_memory must be >= 1 byte, got {limit}")
    _MAX_MEMORY[0] = limit


def as_image(array: Any, *, alpha: str = "white") -> Image:
    """Accept an in-memory RGB(A) or grayscale array as an image, float32 RGB in [0, 1].

    Args:
        array: H x W, H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA); uint8, uint16, bool, or
            float already in [0, 1].
        alpha: how to handle an alpha channel, as in :func:`load_image`.

    Raises:
        ImageError: wrong rank, channel count, dtype or value range.
    """
    _check_alpha(alpha)
    arr = np.asarray(array)
    return _to_rgb01(arr, alpha=alpha, name=f"array of shape {arr.shape}")


def _check_alpha(alpha: str) -> None:
    if alpha not in ALPHA_MODES:
        raise ImageError(f"alpha mode {alpha!r} unknown; valid: {list(ALPHA_MODES)}")


def _read_bytes(path: Path, *, max_bytes: int) -> bytes:
    name = str(path)
    try:
        st = path.stat()
    except OSError as err:
        raise ImageError(_missing(path, err)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"image path {name!r} is not a file but a folder")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"image path {name!r} is not a file (a pipe, socket or device)")
    if st.st_size > max_bytes:
        raise ImageError(
            f"image file {name!r} has {st.st_size} bytes, more than any image within the "
            f"pixel limit needs ({max_bytes})"
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read image {name!r}: {err.strerror}") from None
    if not data:
        raise ImageError(f"image file {name!r} is empty (0 bytes)")
    return data


def _missing(path: Path, err: OSError) -> str:
    name = str(path)
    if err.errno == errno.ELOOP:
        return f"image path {name!r} is a symlink loop"
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"image path {name!r} is a broken symlink (to {os.readlink(path)!r})"
    if err.errno == errno.ENOENT:
        return f"image file {name!r} does not exist"
    return f"cannot read image {name!r}: {err.strerror}"


def _check_complete(data: bytes, name: str) -> None:
    """Refuse truncated JPEG and PNG files, which decoders would half-decode silently."""
    if data[:2] == b"\xff\xd8":
        scan = data.find(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            raise ImageError(f"JPEG {name!r} is truncated (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data.rfind(b"IEND") < 0:
        raise ImageError(f"PNG {name!r} is truncated (no IEND chunk)")


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) so the image displays upright."""
    if orientation in (5, 6, 7, 8):
        img = cv2.rotate(
            img,
            cv2.ROTATE_90_CLOCKWISE if orientation in (5, 6) else cv2.ROTATE_90_COUNTERCLOCKWISE,
        )
    if orientation in (2, 5, 7):
        img = img[:, ::-1]
    elif orientation in (3,):
        img = img[::-1, ::-1]
    elif orientation in (4,):
        img = img[::-1]
    return np.ascontiguousarray(img)


def _to_rgb01(arr: np.ndarray, *, alpha: str, name: str) -> Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
        raise ImageError(f"{name}: expected H x W, H x W x 1, x 3 or x 4, got {arr.shape}")
    img = _scale01(arr, name)
    if img.shape[2] in (2, 4):
        img = _apply_alpha(img[:, :, :-1], img[:, :, -1:], alpha)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img, dtype=np.float32)


def _scale01(arr: np.ndarray, name: str) -> Image:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"{name}: float pixels must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return arr.astype(np.float32)
    raise ImageError(f"{name}: dtype {arr.dtype} unsupported; valid: uint8, uint16, bool, float")


def _apply_alpha(rgb: Image, a: Image, mode: str) -> Image:
    if mode == "drop":
        logger.debug("alpha channel dropped")
        return rgb
    background = 1.0 if mode == "white" else 0.0
    logger.debug("alpha channel composited on %s", mode)
    return rgb * a + background * (1.0 - a)
