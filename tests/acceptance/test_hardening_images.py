"""Bad and awkward image files: each loads correctly or is refused with one precise line.

The corpus (tests/corpus.py) is generated into tmp_path. Good files are checked against Pillow,
an independent decoder; bad ones against the message fragment each must produce. Property tests
drive arbitrary arrays, encoded files and mutated bytes through load_image / as_image / to_input:
the result is always a float32 RGB model input in [0, 1], or an ImageError, nothing else.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import gradtap.runtime.image.read as images
from gradtap.runtime.errors import ImageError
from gradtap.runtime.image.decode import open_image, probe
from gradtap.runtime.image.geometry import geometry_for, resize, to_input, to_original
from gradtap.runtime.image.read import as_image, load_image
from gradtap.runtime.image.resample import resized_crop
from gradtap.runtime.info import ModelInfo
from gradtap.runtime.present.overlay import MAX_TILE_ASPECT, panel
from tests import corpus
from tests.corpus import photo, pillow_bytes
from tests.runtime.image.test_decode import FORMATS, encoded

JPEG_LIKE = (".jpg", ".webp")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.write_images(tmp_path_factory.mktemp("corpus"), corpus.GOOD + corpus.BAD)


def model_info(
    policy: str = "shorter_side_center_crop", hw: tuple[int, int] = (32, 32)
) -> ModelInfo:
    return ModelInfo(
        name="m",
        labels=("a", "b"),
        input_size=hw,
        resize_policy=policy,
        resize_size=max(hw) + 8 if policy != "stretch" else None,
        mean=None,
        std=None,
        taps=(),
        default_tap=None,
        relu_rules=("plain",),
    )


def pillow_reference(path: Path) -> np.ndarray:
    """What the file shows, decoded by Pillow: upright, alpha composited on white, in [0, 1]."""
    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened)
        rgba = np.asarray(img.convert("RGBA"), np.float32) / 255
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


def assert_valid_input(x: np.ndarray, hw: tuple[int, int]) -> None:
    assert x.dtype == np.float32 and x.shape == (1, 3, *hw)
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


# ----- the corpus -----


@pytest.mark.parametrize("case", corpus.GOOD, ids=lambda c: c.name)
def test_good_files_load_as_pillow_sees_them(files: dict[str, Path], case: corpus.Case) -> None:
    got = load_image(files[case.name])
    expected = pillow_reference(files[case.name])
    assert got.dtype == np.float32 and got.shape == expected.shape
    lossy = Path(case.name).suffix in JPEG_LIKE
    np.testing.assert_allclose(got, expected, atol=(12 if lossy else 1.5) / 255)
    assert np.abs(got - expected).mean() < (2 if lossy else 0.5) / 255


def test_exif_rotation_is_applied_before_anything_else(files: dict[str, Path]) -> None:
    stored = np.asarray(Image.open(files["rotated.jpg"]))  # Pillow without exif_transpose
    assert stored.shape[:2] == corpus.PHOTO_HW
    got = load_image(files["rotated.jpg"])
    assert got.shape[:2] == corpus.PHOTO_HW[::-1]  # orientation 6: 90 degrees clockwise
    np.testing.assert_allclose(got, np.rot90(stored, k=-1) / 255, atol=12 / 255)
    x, geo = to_input(files["rotated.jpg"], model_info("stretch"))
    assert geo.original_size == corpus.PHOTO_HW[::-1]
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), resize(got, (32, 32)), atol=1e-6)


def test_sixteen_bit_keeps_its_low_byte(files: dict[str, Path]) -> None:
    got = load_image(files["deep16.png"])
    np.testing.assert_allclose(got, corpus.deep16() / 65535, atol=1e-6)
    assert not np.allclose(got, np.round(got * 255) / 255, atol=1e-4)


@pytest.mark.parametrize("case", corpus.BAD, ids=lambda c: c.name)
def test_bad_files_are_refused_in_one_line_naming_the_file(
    files: dict[str, Path], case: corpus.Case, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ImageError) as err:
        load_image(files[case.name])
    message = str(err.value)
    assert case.error in message and str(files[case.name]) in message
    assert "\n" not in message
    assert capfd.readouterr().err == ""  # the codecs' own complaints do not reach the terminal


def test_harmless_jpeg_padding_is_not_damage(files: dict[str, Path]) -> None:
    # the same JPEG bytes with padding after the end marker: decoded pixels must match up to
    # the decoders' own rounding differences at block edges (measured below 0.1 of full range)
    np.testing.assert_allclose(
        load_image(files["padded.jpg"]), load_image(files["photo.jpg"]), atol=0.1
    )


@pytest.mark.parametrize("name", ["bomb.png", "bomb.jpg", "bomb.tif"])
def test_bombs_are_refused_from_the_header_without_decoding(
    files: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "decode", lambda *a: pytest.fail("the decoder was reached"))
    with pytest.raises(ImageError, match="pixels, over the limit of 100000000"):
        load_image(files[name])


def test_the_pixel_limit_is_a_parameter_checked_before_decoding(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    h, w = corpus.PHOTO_HW
    assert load_image(files["photo.png"], max_pixels=h * w).shape == (h, w, 3)
    monkeypatch.setattr(images, "decode", lambda *a: pytest.fail("the decoder was reached"))
    with pytest.raises(ImageError, match=f"is {w}x{h} pixels, over the limit of {h * w - 1}"):
        load_image(files["photo.png"], max_pixels=h * w - 1)
    with pytest.raises(ImageError, match="max_pixels must be >= 1"):
        load_image(files["photo.png"], max_pixels=0)


def test_a_file_too_big_for_the_limit_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: no disk used
        f.write(corpus.bomb_png(2, 2))
        f.truncate(images.METADATA_BYTES + 1024)
    with pytest.raises(ImageError, match=r"has \d+ bytes, more than any image within the pixel"):
        load_image(big, max_pixels=10)


# ----- extreme aspect ratios -----


def test_a_one_pixel_strip_takes_little_memory_and_time() -> None:
    strip = np.random.default_rng(0).random((1, 20_000, 3), dtype=np.float32)
    tracemalloc.start()
    try:
        x, geo = to_input(strip, model_info(hw=(224, 224)))  # resized would be 232 x 4.6M
        back = to_original(x[0, 0], geo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_valid_input(x, (224, 224))
    assert back.shape == (1, 20_000) and peak < 64 << 20


def test_panels_letterbox_strips() -> None:
    tiles = [("wide", np.zeros((1, 3000, 3), np.uint8)), ("tall", np.zeros((3000, 1, 3), np.uint8))]
    out = panel(tiles, height=100)
    assert out.shape[1] == MAX_TILE_ASPECT * 100 + 4 + 1  # the tall strip is one pixel wide
    black = (out[:100, :400] == 0).all(axis=2)
    assert black.sum() == 400 and black.any(axis=1).sum() == 1  # one row, white around it
    np.testing.assert_array_equal(out[:40, :400], 255)


@pytest.mark.parametrize("shape", [(3, 300), (40, 1000), (1000, 30), (1, 1)])
def test_the_crop_only_path_equals_opencv_resize_then_crop(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(1).random((*shape, 3), dtype=np.float32)
    geo = geometry_for(shape, model_info(hw=(224, 224)))
    top, left, ch, cw = geo.crop
    exact = resize(img, geo.resized_size)[top : top + ch, left : left + cw]
    np.testing.assert_allclose(resized_crop(img, geo.resized_size, geo.crop), exact, atol=1e-6)


# ----- property tests -----

DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any rank 1-4, channel count 0-6, dtype and values (NaN, Inf, out of range)."""
    h, w = (
        draw(st.sampled_from([(1, 1), (1, 2000), (700, 1)]))
        if draw(st.booleans())
        else (
            draw(st.integers(1, 48)),
            draw(st.integers(1, 48)),
        )
    )
    rank = draw(st.sampled_from([1, 2, 3, 3, 3, 4]))
    shape = {1: (w,), 2: (h, w), 3: (h, w, draw(st.integers(0, 6))), 4: (1, h, w, 3)}[rank]
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.issubdtype(dtype, np.floating):
        scale = draw(st.sampled_from([1.0, 1.0, 300.0, -1.0]))
        arr = (rng.random(shape) * scale).astype(dtype)
        if arr.size and draw(st.booleans()):
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 1.0])
            )
        return arr
    info = np.iinfo(dtype) if dtype is not np.bool_ else None
    lo, hi = (info.min, info.max) if info else (0, 1)
    return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)


@settings(max_examples=150, deadline=None)
@given(arr=arrays(), policy=st.sampled_from(["shorter_side_center_crop", "stretch"]))
def test_any_array_becomes_a_valid_input_or_an_image_error(arr: np.ndarray, policy: str) -> None:
    try:
        x, geo = to_input(arr, model_info(policy, hw=(16, 24)))
    except ImageError as err:
        assert "\n" not in str(err)
        return
    assert_valid_input(x, (16, 24))
    assert to_original(x[0, 0], geo).shape == geo.original_size == as_image(arr).shape[:2]


ENCODINGS = {".png": (np.uint8, np.uint16), ".tif": (np.uint8, np.uint16), ".bmp": (np.uint8,)}
ENCODINGS |= {".ppm": (np.uint8,), ".webp": (np.uint8,), ".jpg": (np.uint8,)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    channels=st.sampled_from([1, 3, 4]),
    ext=st.sampled_from(sorted(ENCODINGS)),
    deep=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_encoded_files_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    h: int,
    w: int,
    channels: int,
    ext: str,
    deep: bool,
    seed: int,
) -> None:
    dtype = ENCODINGS[ext][-1] if deep else np.uint8
    if (ext in (".jpg", ".bmp") and channels == 4) or ext == ".ppm":  # what the encoders take
        channels = 3
    arr = np.random.default_rng(seed).integers(
        0, np.iinfo(dtype).max, (h, w, channels), endpoint=True
    )
    arr = arr.astype(dtype)
    ok, buf = cv2.imencode(ext, arr.squeeze(-1) if channels == 1 else arr)
    assert ok
    path = tmp_path_factory.mktemp("enc") / f"img{ext}"
    path.write_bytes(buf.tobytes())
    got = load_image(path, alpha="drop")
    assert got.dtype == np.float32 and got.shape == (h, w, 3)
    bgr = arr[..., :3] if channels >= 3 else np.repeat(arr, 3, axis=2)
    expected = bgr[..., ::-1] / np.iinfo(dtype).max if channels >= 3 else bgr / np.iinfo(dtype).max
    if ext in (".jpg", ".webp"):
        assert np.isfinite(got).all() and 0 <= got.min() and got.max() <= 1
    else:
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert_valid_input(to_input(path, model_info(hw=(8, 12)))[0], (8, 12))


SEEDS = {
    ".png": lambda: corpus.encode(".png", corpus.photo()),
    ".jpg": lambda: corpus.encode(".jpg", corpus.photo()),
    ".tif": lambda: corpus.encode(".tif", corpus.photo()),
    ".bmp": lambda: corpus.encode(".bmp", corpus.photo()),
    ".webp": lambda: corpus.pillow_bytes(Image.fromarray(corpus.photo()), "WEBP"),
    ".gif": lambda: corpus.pillow_bytes(Image.fromarray(corpus.photo()), "GIF"),
    ".jp2": lambda: corpus.pillow_bytes(Image.fromarray(corpus.photo()), "JPEG2000"),
    ".16.png": lambda: corpus.encode(".png", corpus.deep16()),  # Pillow checks, OpenCV decodes
}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid file with bytes flipped, cut, inserted or its header rewritten."""
    ext = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[ext]())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[draw(st.integers(0, 32)) : 34] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return ext, bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=mutated())
def test_mutated_files_load_or_fail_with_an_image_error(
    tmp_path_factory: pytest.TempPathFactory, sample: tuple[str, bytes]
) -> None:
    ext, data = sample
    path = tmp_path_factory.mktemp("fuzz") / f"m{ext}"
    path.write_bytes(data)
    try:
        img = load_image(path)
    except ImageError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        assert ".cpp" not in str(err) and "::" not in str(err)  # no OpenCV or C++ internals
        return
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
    assert_valid_input(to_input(img, model_info())[0], (32, 32))


# ----- sizes the decoder honours, memory, frames, threads (round two) -----


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
    monkeypatch.setattr(images, "decode", lambda *a: pytest.fail("the decoder was reached"))
    with pytest.raises(ImageError, match=r"\(100x100\) needs about 0 MiB to decode, over"):
        load_image(path, max_memory=100 * 100 * 10)
    assert 256 << 20 <= images.default_max_memory() <= 2 << 30


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
