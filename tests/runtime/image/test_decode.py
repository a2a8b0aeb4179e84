"""Decoding with Pillow: sizes from the parser the decoder uses, orientation, limits, threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image.decode import open_image, orientation, probe
from gradtap.runtime.image.read import load_image
from tests.corpus import photo, pillow_bytes

FORMATS = [
    ("PNG", {}),
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("GIF", {}),
    ("BMP", {}),
    ("WEBP", {"lossless": False}),
    ("WEBP", {"lossless": True}),
    ("TIFF", {}),
    ("PPM", {}),
    ("JPEG2000", {}),
    ("JPEG2000", {"no_jp2": True}),
]


def encoded(fmt: str, size: tuple[int, int], **kw: object) -> bytes:
    return pillow_bytes(Image.new("RGB", size, (10, 200, 30)), fmt, **kw)


@pytest.mark.parametrize(("fmt", "kw"), FORMATS)
@pytest.mark.parametrize("size", [(1, 1), (37, 5)])
def test_the_probed_size_is_the_encoded_one(fmt: str, kw: dict, size: tuple[int, int]) -> None:
    data = encoded(fmt, size, **kw)
    assert probe(open_image(data, "x"), data, "x").size == size


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"plain text", b"BM12"])
def test_unknown_or_short_headers_are_image_errors(data: bytes) -> None:
    with pytest.raises(ImageError, match="cannot decode 'x' as an image"):
        open_image(data, "x")


def test_pam_files_are_refused_by_name() -> None:
    data = b"P7\nWIDTH 2\nHEIGHT 1\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(6)
    with pytest.raises(ImageError, match="'x' is a PAM \\(P7\\) file, which gradtap does not"):
        open_image(data, "x")


@pytest.mark.parametrize("value", [1, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_orientation_read_back(fmt: str, value: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = value
    exif[0x010F] = "maker"
    data = pillow_bytes(Image.fromarray(np.zeros((4, 4, 3), np.uint8)), fmt, exif=exif.tobytes())
    assert orientation(open_image(data, "x")) == value


def test_webp_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels are rotated 90 degrees counter-clockwise for display
    arr = photo(24, 40)
    path = tmp_path / "r.webp"
    path.write_bytes(pillow_bytes(Image.fromarray(arr), "WEBP", lossless=True, exif=exif.tobytes()))
    np.testing.assert_allclose(load_image(path), np.rot90(arr, -1) / 255, atol=1e-6)


def test_a_damaged_png_raises_without_printing(capfd: pytest.CaptureFixture[str]) -> None:
    data = bytearray(encoded("PNG", (40, 24)))
    data[data.find(b"IDAT") + 6] ^= 0xFF
    with pytest.raises(ImageError, match="is damaged: broken PNG file"):
        from gradtap.runtime.image.decode import decode

        decode(open_image(bytes(data), "x"), bytes(data), "x")
    assert capfd.readouterr().err == ""


def test_pillows_global_bomb_setting_is_left_alone(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "p.png"
    path.write_bytes(encoded("PNG", (40, 24)))
    load_image(path)
    assert Image.MAX_IMAGE_PIXELS == before
