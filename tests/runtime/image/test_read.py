"""load_image / as_image: channel order, grayscale, alpha, 16-bit, EXIF, limits and bad files.

Files are written by Pillow (an independent encoder) so the RGB order is checked end to end.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from gradtap.runtime.errors import ImageError
from gradtap.runtime.image import read
from gradtap.runtime.image.read import as_image, load_image
from tests.corpus import bomb_png


def save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_order_is_kept(tmp_path: Path) -> None:
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[..., 0] = 200  # red
    arr[0, 0] = (0, 0, 255)  # one blue pixel
    got = load_image(save(Image.fromarray(arr), tmp_path / "red.png"))
    assert got.dtype == np.float32 and got.shape == (4, 5, 3)
    np.testing.assert_allclose(got[1, 1], [200 / 255, 0, 0], atol=1e-7)
    np.testing.assert_allclose(got[0, 0], [0, 0, 1], atol=1e-7)


def test_grayscale_is_repeated(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    got = load_image(save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    np.testing.assert_allclose(got, np.repeat(arr[:, :, None], 3, 2) / 255, atol=1e-7)


def test_sixteen_bit_keeps_precision(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 257, 65535]], np.uint16)
    path = tmp_path / "d16.png"
    cv2.imwrite(str(path), arr)  # grayscale 16-bit PNG
    got = load_image(path)
    np.testing.assert_allclose(got[0, :, 0], arr[0] / 65535, rtol=1e-6)
    assert got[0, 1, 0] > 0  # would round to 0 at 8 bits


@pytest.mark.parametrize(
    ("mode", "expected"), [("white", 0.5 + 0.5), ("black", 0.5), ("drop", 1.0)]
)
def test_alpha_modes(tmp_path: Path, mode: str, expected: float) -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 128  # half transparent red
    got = load_image(save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"), alpha=mode)
    a = 128 / 255
    red = {"white": a + (1 - a), "black": a, "drop": 1.0}[mode]
    green = {"white": 1 - a, "black": 0.0, "drop": 0.0}[mode]
    np.testing.assert_allclose(got[0, 0], [red, green, green], atol=1e-6)
    assert abs(red - expected) < 0.01


def test_unknown_alpha_mode(tmp_path: Path) -> None:
    with pytest.raises(
        ImageError, match=r"alpha mode 'blend' unknown; valid: \['white', 'black', 'drop'\]"
    ):
        load_image(tmp_path / "x.png", alpha="blend")


def exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    """A JPEG carrying an EXIF orientation tag (written by Pillow)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=98, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:8, :16] = (255, 0, 0)  # a red block in the top-left corner of the stored image
    arr[16:, 30:] = (0, 0, 255)
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(exif_jpeg(arr, orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")) / 255
    got = load_image(path)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2 / 255)


def test_exif_orientation_in_png(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = 255
    path = save(Image.fromarray(arr), tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path))) / 255
    np.testing.assert_allclose(load_image(path), expected, atol=1e-7)


huge_png = bomb_png


def test_pixel_limit_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png(100_000, 100_000))
    monkeypatch.setattr(read, "decode", lambda *a: pytest.fail("decoder reached"))
    with pytest.raises(ImageError, match="100000x100000 pixels, over the limit of 100000000"):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = save(Image.fromarray(np.zeros((10, 10, 3), np.uint8)), tmp_path / "s.png")
    assert load_image(path, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageError, match="over the limit of 99"):
        load_image(path, max_pixels=99)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty \\(0 bytes\\)"),
        (b"GIF89a", "cannot decode"),  # a header too short to hold a size
        (b"hello, I am text", "cannot decode"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_truncated_files(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpg = exif_jpeg(arr, 1)
    (tmp_path / "t.jpg").write_bytes(jpg[: len(jpg) // 2])
    with pytest.raises(ImageError, match="is truncated"):
        load_image(tmp_path / "t.jpg")
    ok, png = cv2.imencode(".png", arr)
    (tmp_path / "t.png").write_bytes(png.tobytes()[:-30])
    with pytest.raises(ImageError, match="is truncated"):
        load_image(tmp_path / "t.png")


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is not a file"):
        load_image(tmp_path)


def test_unicode_path(tmp_path: Path) -> None:
    path = save(Image.fromarray(np.full((3, 3, 3), 7, np.uint8)), tmp_path / "chât ü.png")
    np.testing.assert_allclose(load_image(path), 7 / 255, atol=1e-7)


def test_as_image_accepts_arrays() -> None:
    np.testing.assert_allclose(as_image(np.full((2, 2), 255, np.uint8)), 1.0)
    np.testing.assert_allclose(as_image(np.full((2, 2, 1), 0.25, np.float64)), 0.25)
    np.testing.assert_allclose(as_image(np.ones((2, 2), bool)), 1.0)
    rgba = np.zeros((1, 1, 4), np.float32)
    rgba[..., 3] = 0.0  # fully transparent: white background
    np.testing.assert_allclose(as_image(rgba), 1.0)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((2, 2, 5), np.uint8), r"got \(2, 2, 5\)"),
        (np.zeros((2,), np.uint8), r"got \(2,\)"),
        (
            np.full((2, 2, 3), 1.5, np.float32),
            r"float pixels must lie in \[0, 1\], got \[1.5, 1.5\]",
        ),
        (np.full((2, 2, 3), np.nan, np.float32), "NaN or Inf"),
        (np.zeros((2, 2, 3), np.int32), "dtype int32 unsupported"),
        (np.zeros((0, 2, 3), np.uint8), r"got \(0, 2, 3\)"),
    ],
)
def test_as_image_errors(arr: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        as_image(arr)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (8, 8), (220, 30, 40)).convert("CMYK").save(path, quality=95)
    expected = np.asarray(Image.open(path).convert("RGB")) / 255
    np.testing.assert_allclose(load_image(path), expected, atol=3 / 255)


def test_one_pixel_image(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "dot.png")
    np.testing.assert_allclose(load_image(path), [[[1 / 255, 2 / 255, 3 / 255]]], atol=1e-7)
