"""Decoding with Pillow: sizes from the parser the decoder uses, orientation, limits, threads."""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image import read
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


def tiff_two_sizes(first: tuple[int, int], second: tuple[int, int]) -> bytes:
    """A 37x5 TIFF whose IFD states width and height twice (``first``, then ``second``)."""
    data = bytearray(encoded("TIFF", (37, 5)))
    ifd = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[ifd : ifd + 2])[0]
    entries = []
    for i in range(n):
        entry = bytes(data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        tag = struct.unpack("<H", entry[:2])[0]
        if tag in (256, 257):
            for value in (first[tag - 256], second[tag - 256]):
                entries.append(struct.pack("<HHII", tag, 4, 1, value))
        else:
            entries.append(entry)
    data[4:8] = struct.pack("<I", len(data))
    return bytes(data + struct.pack("<H", len(entries)) + b"".join(entries) + b"\0" * 4)


@pytest.mark.parametrize(
    ("first", "second"), [((37, 5), (30000, 30000)), ((30000, 30000), (37, 5))]
)
def test_a_tiff_with_two_sizes_is_decoded_at_the_size_checked(
    tmp_path: Path, first: tuple[int, int], second: tuple[int, int]
) -> None:
    path = tmp_path / "two.tif"
    path.write_bytes(tiff_two_sizes(first, second))
    data = path.read_bytes()
    w, h = probe(open_image(data, "x"), data, "x").size
    if w * h > 1000:
        with pytest.raises(ImageError, match="30000x30000 pixels, over the limit of 1000"):
            load_image(path, max_pixels=1000)
    else:
        assert load_image(path, max_pixels=1000).shape == (h, w, 3)


def test_a_jpeg2000_codestream_with_another_size_is_refused(tmp_path: Path) -> None:
    data = bytearray(encoded("JPEG2000", (37, 5)))
    siz = data.find(b"\xff\x4f\xff\x51")
    data[siz + 8 : siz + 16] = struct.pack(">II", 30000, 30000)  # the box still says 37x5
    path = tmp_path / "two.jp2"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="states two sizes: 37x5 in its header, 30000x30000"):
        load_image(path)


def os2_bmp(rgb: np.ndarray) -> bytes:
    """An OS/2 1.x bitmap (12-byte BITMAPCOREHEADER, 24 bits, rows bottom-up, padded to 4)."""
    h, w, _ = rgb.shape
    stride = (w * 3 + 3) & ~3
    rows = b"".join(rgb[y, :, ::-1].tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1))
    header = struct.pack("<IHHHH", 12, w, h, 1, 24)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + rows


def test_an_os2_bitmap_loads_at_its_size(tmp_path: Path) -> None:
    arr = photo(6, 7)
    path = tmp_path / "os2.bmp"
    path.write_bytes(os2_bmp(arr))
    np.testing.assert_allclose(load_image(path), arr / 255, atol=1e-6)


def test_an_animation_gives_frame_one_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with caplog.at_level(logging.WARNING, logger="gradtap"):
        img = load_image(path)
    assert img[0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.02)
    assert f"{str(path)!r} has 3 frames; frame 1 is used" in caplog.text


def test_the_memory_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(encoded("PNG", (100, 100)))
    assert load_image(path, max_memory=10 << 20).shape == (100, 100, 3)
    monkeypatch.setattr(read, "decode", lambda *a: pytest.fail("the decoder was reached"))
    with pytest.raises(ImageError, match=r"\(100x100\) needs about 0 MiB to decode, over"):
        load_image(path, max_memory=100 * 100 * 10)
    assert 256 << 20 <= read.default_max_memory() <= 2 << 30


def test_decoding_never_touches_file_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four threads decode many images at once: each equals its serial decode, none is refused.

    Redirecting file descriptor 2 around codec calls swallowed other threads' output and
    refused good images; a decoder that raises needs neither ``dup`` nor ``dup2``.
    """
    paths = []
    for i, (fmt, kw) in enumerate(FORMATS[:8] * 5):
        path = tmp_path / f"{i}.{fmt.lower()}"
        path.write_bytes(pillow_bytes(Image.fromarray(photo(24, 40, seed=i)), fmt, **kw))
        paths.append(path)
    serial = [load_image(p) for p in paths]

    duplicated: list[tuple[object, ...]] = []
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for _ in range(3):
                for k in range(offset, len(paths), 4):
                    results[k] = load_image(paths[k])
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    with monkeypatch.context() as m:  # undone before pytest's own capturing needs dup2 again
        m.setattr(os, "dup", lambda *a: duplicated.append(a))
        m.setattr(os, "dup2", lambda *a: duplicated.append(a))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and not duplicated
    for k, expected in enumerate(serial):
        np.testing.assert_array_equal(results[k], expected)


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
