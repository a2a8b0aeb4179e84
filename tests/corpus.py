"""A corpus of bad and awkward inputs, generated into a folder by the tests (no binary files in git).

Images are encoded by Pillow or OpenCV from seeded arrays, then damaged in a controlled way; each
case says what ``load_image`` must do with it: load, or refuse with a one-line message fragment.
Models are small ONNX graphs built with ``onnx.helper``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import helper, numpy_helper
from PIL import Image

from gradtap.export.graph.augment import augment
from tests.graphs import tiny_cnn

LABELS = ["cat", "dog", "bird"]
SIZE = 16
PHOTO_HW = (24, 40)


def photo(h: int = PHOTO_HW[0], w: int = PHOTO_HW[1], seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 picture with a bright block top-left (so orientation is visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), 90 + 0 * xx], -1)
    img = img.astype(np.int64) + rng.integers(-10, 10, (h, w, 3))
    img[: max(1, h // 3), : max(1, w // 3)] = (250, 250, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(ext: str, rgb: np.ndarray) -> bytes:
    """``rgb`` encoded by OpenCV (which expects BGR channel order)."""
    arr = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    return cv2.imencode(ext, np.ascontiguousarray(arr))[1].tobytes()


def deep16() -> np.ndarray:
    """The photo at 16 bits, with low bytes an 8-bit reading would lose."""
    return photo().astype(np.uint16) * 256 + 129


def pillow_bytes(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to rotate the stored pixels for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pillow_bytes(Image.fromarray(arr), "JPEG", quality=97, exif=exif.tobytes())


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height``: decoding it would allocate gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its checksum."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def bomb_jpeg(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(".jpg", photo()))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bomb_tiff(width: int, height: int) -> bytes:
    """A TIFF whose first IFD claims ``width`` x ``height``."""
    data = bytearray(encode(".tif", photo()))
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        value = {256: width, 257: height}.get(tag)
        if value is not None:
            data[at + 2 : at + 12] = struct.pack("<HII", 4, 1, value)  # LONG
    return bytes(data)


def cut_jpeg_scan() -> bytes:
    """A JPEG cut in the middle of its pixel data, with an end-of-image marker appended."""
    data = encode(".jpg", photo(48, 64))
    mid = (data.find(b"\xff\xda") + len(data)) // 2
    return data[:mid] + data[-2:]


def crc_png() -> bytes:
    """A PNG with one flipped byte inside its pixel chunk (the chunk's CRC no longer matches)."""
    data = bytearray(encode(".png", photo()))
    data[data.find(b"IDAT") + 20] ^= 0xFF
    return bytes(data)


def padded_jpeg() -> bytes:
    """A JPEG with harmless padding before its end marker (some cameras write these)."""
    data = encode(".jpg", photo())
    return data[:-2] + b"\x00\x00\x00" + data[-2:]


@dataclass(frozen=True)
class Case:
    """One corpus file: how to make it, and the ImageError fragment expected (None = loads)."""

    name: str
    make: Callable[[Path], None]
    error: str | None = None


def _bytes(data: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data())


def _pillow(img: Callable[[], Image.Image], fmt: str, **kw: object) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(pillow_bytes(img(), fmt, **kw))


def _cv(rgb: Callable[[], np.ndarray], ext: str) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(encode(ext, rgb()))


def _rgb() -> Image.Image:
    return Image.fromarray(photo())


def _truncated(ext: str) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(encode(ext, photo())[:300])


GOOD = [
    Case("photo.png", _pillow(_rgb, "PNG")),
    Case("photo.jpg", _pillow(_rgb, "JPEG", quality=95)),
    Case("photo.bmp", _pillow(_rgb, "BMP")),
    Case("photo.webp", _pillow(_rgb, "WEBP", lossless=True)),
    Case("photo.tif", _pillow(_rgb, "TIFF")),
    Case("photo.ppm", _pillow(_rgb, "PPM")),
    Case("gray.png", _pillow(lambda: _rgb().convert("L"), "PNG")),
    Case(
        "rgba.png", _pillow(lambda: Image.fromarray(np.dstack([photo(), photo()[..., :1]])), "PNG")
    ),
    Case("gray-alpha.png", _pillow(lambda: _rgb().convert("LA"), "PNG")),
    Case("palette.png", _pillow(lambda: _rgb().convert("P"), "PNG")),
    Case("deep16.png", _cv(deep16, ".png")),
    Case("cmyk.jpg", _pillow(lambda: _rgb().convert("CMYK"), "JPEG", quality=95)),
    Case("rotated.jpg", _bytes(lambda: exif_jpeg(photo(), 6))),
    Case("dot.png", _pillow(lambda: Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")),
    Case("strip.png", _cv(lambda: photo(1, 3000), ".png")),
    Case("padded.jpg", _bytes(padded_jpeg)),
    Case("chat tigr\u00e9 \u732b.png", _pillow(_rgb, "PNG")),
]

BAD = [
    Case("empty.png", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    Case("truncated.jpg", _truncated(".jpg"), "is truncated (no end-of-image marker)"),
    Case("truncated.png", _truncated(".png"), "is truncated (no IEND chunk)"),
    Case("bad-crc.png", _bytes(crc_png), "is damaged: broken PNG file"),
    Case("text.png", lambda p: p.write_text("not an image\n"), "cannot decode"),
    Case("page.jpg", lambda p: p.write_text("<html></html>"), "cannot decode"),
    Case("bomb.png", _bytes(lambda: bomb_png(100_000, 100_000)), "100000x100000 pixels, over"),
    Case("bomb.jpg", _bytes(lambda: bomb_jpeg(60_000, 50_000)), "60000x50000 pixels, over"),
    Case("bomb.tif", _bytes(lambda: bomb_tiff(70_000, 70_000)), "70000x70000 pixels, over"),
    Case("loop.png", lambda p: os.symlink(p, p), "is a symlink loop"),
    Case("dangling.png", lambda p: os.symlink(p.with_name("gone.png"), p), "is a broken symlink"),
    Case("folder.png", lambda p: p.mkdir(), "is not a file but a folder"),
    # libjpeg fills a scan cut short by a marker with grey and only warns; Pillow passes the
    # warning over, so JPEGs are also checked by libjpeg-turbo with warnings as errors
    Case("cut-scan.jpg", _bytes(cut_jpeg_scan), "is damaged: Corrupt JPEG data"),
]


def write_images(folder: Path, cases: list[Case]) -> dict[str, Path]:
    """Write ``cases`` into ``folder``; file name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        case.make(folder / case.name)
        paths[case.name] = folder / case.name
    return paths


def augmented_model(path: Path, forward: onnx.ModelProto | None = None) -> Path:
    """The tiny CNN (or ``forward``) augmented with three labels, saved to ``path``."""
    model = augment(
        forward or tiny_cnn(size=SIZE),
        labels=LABELS,
        interventions=True,
        bias_gradients=True,
        lrp=True,
    )
    onnx.save(model, str(path))  # interventions: every method applies, Ablation-CAM too
    return path


def with_bias(value: float) -> onnx.ModelProto:
    """The tiny CNN with every logit bias set to ``value`` (NaN or Inf poison the logits)."""
    model = tiny_cnn(size=SIZE)
    for init in model.graph.initializer:
        if init.name == "fc_b":
            init.CopyFrom(numpy_helper.from_array(np.full(3, value, np.float32), "fc_b"))
    return model


def with_input_shape(shape: list[int | str]) -> onnx.ModelProto:
    """The tiny CNN whose declared image input has another rank or channel count."""
    model = tiny_cnn(size=SIZE)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", 1, shape))
    return model


def with_external_data(
    model: onnx.ModelProto, location: str, *, in_constant: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` whose conv weight ``w2`` (or, with ``in_constant``, a Constant inside
    an If branch) keeps its bytes in the file ``location``, relative to the model's folder."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if in_constant:
        tensor = numpy_helper.from_array(np.ones(2, np.float32), "k")
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["k_out"], value=tensor)],
            "branch",
            [],
            [helper.make_empty_tensor_value_info("k_out")],
        )
        out.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch))
        tensor = out.graph.node[-1].attribute[0].g.node[0].attribute[0].t
    else:
        tensor = next(t for t in out.graph.initializer if t.name == "w2")
    onnx.external_data_helper.set_external_data(tensor, location=location)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    return out
