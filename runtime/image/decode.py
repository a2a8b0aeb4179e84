"""Decoding untrusted image bytes with Pillow: sizes from the parser the decoder uses, no stderr.

Pillow parses the header once, and its decoder writes into an image of exactly that size, so the
size checked against the limits is the size decoded (a TIFF with two sets of size tags or a JPEG
2000 file with a second size box cannot be checked at one size and decoded at another). Damaged
data raises instead of printing, so decoding touches no file descriptor and threads decode at
once. Pillow keeps 8 bits per colour channel; 16-bit colour files (PNG, TIFF, PPM) are decoded a
second time by OpenCV for their low bytes, after Pillow has checked and decoded them.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from gradtap.runtime.errors import ImageError

logger = logging.getLogger(__name__)

# Pillow's plugin names for the formats gradtap reads.
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "JPEG2000")
FORMATS = "PNG, JPEG, GIF, BMP, WebP, TIFF, PNM or JPEG 2000"
_ORIENTATION_TAG = 0x0112
# What decoding costs per pixel beyond the stored samples: Pillow's image and its numpy copy
# (counted from the mode below), a float32 RGBA working copy and the float32 RGB result.
_WORKING_BYTES = 16 + 12
# Pillow's storage per pixel, by mode (RGB is stored as 4 bytes).
_STORED = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "RGB": 4, "RGBA": 4, "CMYK": 4, "YCbCr": 4}
_J2K_SIZ = b"\xff\x4f\xff\x51"
# What Pillow raises on bytes it cannot parse or decode (a frame past its bomb limit included).
_PARSE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Probe:
    """What the header says, checked before any pixel is decoded.

    Attributes:
        size: (width, height) the decoder will produce.
        frames: the number of frames (animations, multi-page TIFF); frame 1 is decoded.
        bytes_needed: an upper estimate of the memory decoding and converting costs.
    """

    size: tuple[int, int]
    frames: int
    bytes_needed: int


def open_image(data: bytes, name: str) -> Image.Image:
    """Parse the header of ``data`` (nothing decoded yet).

    Pillow's own decompression-bomb check is not used: gradtap's limits are checked by the
    caller, from :func:`probe`, and Pillow's global setting stays as the user left it.

    Raises:
        ImageError: no supported format recognises the bytes.
    """
    Image.init()
    prefix = data[:16]
    if prefix[:2] == b"P7":
        raise ImageError(f"{name!r} is a PAM (P7) file, which gradtap does not read; convert it")
    for fmt in PILLOW_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not _accepts(accept, prefix):
            continue
        try:
            return factory(io.BytesIO(data), name)
        except _PARSE_ERRORS:
            logger.debug("%r is not %s", name, fmt, exc_info=True)
    raise ImageError(f"cannot decode {name!r} as an image (not a {FORMATS} file, or corrupt)")


def _accepts(accept: object, prefix: bytes) -> bool:
    result = accept(prefix)  # type: ignore[operator]
    return bool(result) and not isinstance(result, str)


def probe(img: Image.Image, data: bytes, name: str) -> Probe:
    """The size, frame count and memory estimate of an opened image.

    Raises:
        ImageError: a JPEG 2000 codestream states another size than its header box.
    """
    w, h = img.size
    bands = len(img.getbands())
    per_pixel = _STORED.get(img.mode, 4 if bands == 1 else 8) * 2 + _WORKING_BYTES
    if img.format == "JPEG2000":
        _check_codestream(data, (w, h), name)
        per_pixel += 4 * bands  # OpenJPEG decodes every component to 32-bit integers
    if _sixteen_bit_colour(img):
        per_pixel += 8 * 2  # OpenCV's 16-bit decode and its channel-reordered copy
    return Probe((w, h), _frames(img, name), w * h * per_pixel)


def _frames(img: Image.Image, name: str) -> int:
    """The frame count; counting parses every frame's header (GIF), each a possible bomb."""
    try:
        return int(getattr(img, "n_frames", 1) or 1)
    except _PARSE_ERRORS as err:
        raise ImageError(f"{name!r} is damaged: {_reason(err)}") from None
    finally:
        _first_frame(img)


def _first_frame(img: Image.Image) -> None:
    try:
        img.seek(0)
    except _PARSE_ERRORS:
        pass


def decode(img: Image.Image, data: bytes, name: str) -> np.ndarray:
    """Decode the first frame as RGB(A), grayscale(+alpha) or 16-bit samples (numpy, RGB order).

    Raises:
        ImageError: the data is damaged or truncated, or the mode is not an image's.
    """
    deep = _sixteen_bit_colour(img)  # read before load(), which clears the tile list
    try:
        if img.format == "PNG":  # chunk checksums, the image data's included
            _verify(data)
        if img.format == "JPEG":  # libjpeg's warnings: a scan cut short, corrupt entropy data
            _check_jpeg(data, name)
        img.load()
        arr = _to_array(img, name)
    except ImageError:
        raise
    except _PARSE_ERRORS as err:
        raise ImageError(f"{name!r} is damaged: {_reason(err)}") from None
    except MemoryError:
        raise ImageError(f"{name!r} needs more memory to decode than is free") from None
    if deep:
        arr = _opencv_16bit(data, arr.shape[:2], name)
    return arr


def _check_jpeg(data: bytes, name: str) -> None:
    """libjpeg-turbo's warnings as errors, at its smallest DCT scale (every scan is still read).

    Pillow decodes a JPEG whose scan a marker cuts short as grey rows and passes libjpeg's
    warning over; simplejpeg raises it. Its other refusals (a colour conversion it does not do)
    leave Pillow's decoding standing.
    """
    try:
        simplejpeg.decode_jpeg(data, strict=True, min_height=1, min_width=1)
    except ValueError as err:
        text = str(err).lower()
        if "extraneous bytes before marker" in text:  # padding some cameras write: harmless
            return
        if "corrupt jpeg data" in text or "premature end" in text:
            raise ImageError(f"{name!r} is damaged: {_reason(err)}") from None


def _verify(data: bytes) -> None:
    factory, _ = Image.OPEN["PNG"]  # not Image.open: its bomb check is Pillow's global setting
    factory(io.BytesIO(data), "").verify()


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of JPEG, PNG, WebP and TIFF files; 1 when absent or odd."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except (*_PARSE_ERRORS, KeyError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_array(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        img = img.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    elif mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{name!r}: 32-bit integer samples outside 0-65535 are unsupported")
        return arr.astype(np.uint16)
    elif mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageError(f"{name!r}: image mode {img.mode!r} unsupported")
    return np.asarray(img)


def _sixteen_bit_colour(img: Image.Image) -> bool:
    """Whether Pillow reduces this file's colour samples from 16 to 8 bits."""
    if img.mode not in ("RGB", "RGBA") or img.format not in ("PNG", "TIFF", "PPM"):
        return False
    tile = getattr(img, "tile", None)  # ImageFile's list of decoder calls
    args = tile[0][3] if tile and len(tile[0]) > 3 else ()
    args = args if isinstance(args, tuple) else (args,)
    if img.format == "PPM":  # ("RGB", maxval)
        return len(args) > 1 and isinstance(args[1], int) and args[1] > 255
    return bool(args) and isinstance(args[0], str) and ";16" in args[0]


def _opencv_16bit(data: bytes, hw: tuple[int, ...], name: str) -> np.ndarray:
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # its message names OpenCV's source files: not for users
        decoded = None
    if decoded is None or decoded.shape[:2] != tuple(hw) or decoded.ndim != 3:
        raise ImageError(f"{name!r} is damaged: its 16-bit samples do not decode")
    order = [2, 1, 0] if decoded.shape[2] == 3 else [2, 1, 0, 3]
    return np.ascontiguousarray(decoded[:, :, order])


def _check_codestream(data: bytes, size: tuple[int, int], name: str) -> None:
    """OpenJPEG allocates what the codestream's SIZ segment says, whatever the JP2 box said."""
    at = data.find(_J2K_SIZ)
    if at < 0 or len(data) < at + 24:
        raise ImageError(f"{name!r} is damaged: a JPEG 2000 file without a size segment")
    x1, y1, x0, y0 = struct.unpack(">IIII", data[at + 8 : at + 24])
    if (x1 - x0, y1 - y0) != size:
        raise ImageError(
            f"{name!r} states two sizes: {size[0]}x{size[1]} in its header, "
            f"{x1 - x0}x{y1 - y0} in its codestream; refused"
        )


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
