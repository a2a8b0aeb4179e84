"""Header sniffing without decoding: image dimensions (for the pixel limit) and EXIF orientation.

Sizes are read for every format :mod:`gradtap.runtime.image.read` decodes: PNG, JPEG, GIF, BMP, WebP,
TIFF, PNM/PAM and JPEG 2000.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size (C4, C8 and CC are other segments)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ORIENTATION_TAG = 0x0112
_WIDTH_TAG, _HEIGHT_TAG = 0x0100, 0x0101
_TIFF = (b"II*\x00", b"MM\x00*")
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K = b"\xff\x4f\xff\x51"


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from an image file's header; ``None`` if unknown or unreadable."""
    try:
        if data[:8] == _PNG and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in _TIFF:
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"1234567":
            return _pnm_size(data)
        if data[:12] == _JP2 or data[:4] == _J2K:
            return _jpeg2000_size(data)
    except (
        struct.error,
        ValueError,
        KeyError,
        IndexError,
    ):  # header shorter than it claims: let the decoder report it
        return None
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG or PNG file; 1 when absent or unreadable."""
    tiff = _exif_block(data)
    if tiff is None:
        return 1
    try:
        return _tiff_orientation(tiff)
    except struct.error:
        return 1


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each header segment before the first scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        yield marker, data[pos + 4 : pos + 2 + length]
        pos += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, payload in _jpeg_segments(data):
        if marker in _SOF:
            h, w = struct.unpack(">HH", payload[1:5])
            return w, h
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if kind == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    tags = _tiff_tags(data, (_WIDTH_TAG, _HEIGHT_TAG))
    if _WIDTH_TAG in tags and _HEIGHT_TAG in tags:
        return tags[_WIDTH_TAG], tags[_HEIGHT_TAG]
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    """Netpbm: ``P1``-``P6`` then width and height (``#`` comments allowed); PAM: ``P7``."""
    head = data[:4096].decode("latin-1")
    if head[1] == "7":
        header = head.split("ENDHDR", 1)[0].splitlines()[1:]
        fields = dict(ln.split(None, 1) for ln in header if len(ln.split(None, 1)) == 2)
        return int(fields["WIDTH"]), int(fields["HEIGHT"])
    words = " ".join(ln.split("#", 1)[0] for ln in head[2:].splitlines()).split()
    return int(words[0]), int(words[1])


def _jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    """JP2 boxes: ``ihdr`` holds height then width; a bare codestream: the SIZ segment."""
    if data[:4] == _J2K:
        x, y, x0, y0 = struct.unpack(">IIII", data[8:24])
        return x - x0, y - y0
    pos = data.find(b"ihdr", 0, 4096)
    if pos < 0:
        return None
    h, w = struct.unpack(">II", data[pos + 4 : pos + 12])
    return w, h


def _exif_block(data: bytes) -> bytes | None:
    """The TIFF-structured EXIF payload of a JPEG (APP1) or PNG (eXIf chunk)."""
    if data[:2] == b"\xff\xd8":
        for marker, payload in _jpeg_segments(data):
            if marker == 0xE1 and payload[:6] == b"Exif\x00\x00":
                return payload[6:]
        return None
    if data[:8] == _PNG:
        pos = 8
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            if kind == b"eXIf":
                return data[pos + 8 : pos + 8 + length]
            if kind in (b"IDAT", b"IEND"):
                return None
            pos += 12 + length
    return None


def _tiff_orientation(tiff: bytes) -> int:
    value = _tiff_tags(tiff, (_ORIENTATION_TAG,)).get(_ORIENTATION_TAG, 1)
    return value if 1 <= value <= 8 else 1


def _tiff_tags(tiff: bytes, wanted: tuple[int, ...]) -> dict[int, int]:
    """SHORT or LONG values of the ``wanted`` tags in the first IFD of a TIFF structure."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return {}
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in wanted and kind == 3:  # SHORT
            found[tag] = struct.unpack(order + "H", entry[8:10])[0]
        elif tag in wanted and kind == 4:  # LONG
            found[tag] = struct.unpack(order + "I", entry[8:12])[0]
    return found
