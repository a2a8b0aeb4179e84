"""Header sniffing: image sizes read without decoding, checked against Pillow-written files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gradtap.runtime.image.exif import exif_orientation, header_size

FORMATS = [
    ("PNG", {}),
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("GIF", {}),
    ("BMP", {}),
    ("WEBP", {"lossless": False}),
    ("WEBP", {"lossless": True}),
]


def encoded(fmt: str, size: tuple[int, int], mode: str = "RGB", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30) if mode == "RGB" else (10, 200, 30, 128)).save(
        buf, fmt, **kw
    )
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "kw"), FORMATS)
@pytest.mark.parametrize("size", [(1, 1), (37, 5), (300, 1201)])
def test_header_size_matches_the_encoder(fmt: str, kw: dict, size: tuple[int, int]) -> None:
    assert header_size(encoded(fmt, size, **kw)) == size


def test_webp_with_alpha_uses_the_extended_header() -> None:
    data = encoded("WEBP", (123, 45), mode="RGBA")
    assert data[12:16] in (b"VP8X", b"VP8L")
    assert header_size(data) == (123, 45)


@pytest.mark.parametrize(
    "data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"plain text", b"BM12"]
)
def test_unknown_or_short_headers_give_none(data: bytes) -> None:
    assert header_size(data) is None


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_orientation_read_back(fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "maker"  # another tag before/after, so the IFD walk is exercised
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, fmt, exif=exif.tobytes())
    assert exif_orientation(buf.getvalue()) == orientation


def test_orientation_defaults_to_upright() -> None:
    assert exif_orientation(encoded("JPEG", (4, 4))) == 1
    assert exif_orientation(encoded("PNG", (4, 4))) == 1
    assert exif_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX") == 1  # garbage TIFF
