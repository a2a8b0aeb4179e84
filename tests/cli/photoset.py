"""Small folders of real photos (scikit-image samples, cropped and resized) for batch tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from onnx import save
from skimage import data

from gradtap.export.graph.augment import augment
from tests.graphs import tiny_cnn

LABELS = ["cat", "dog", "bird"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "coins", "camera")


def tiny_model(folder: Path, size: int = 16) -> Path:
    """The augmented tiny CNN of tests/graphs.py, saved in ``folder``."""
    path = folder / "tiny.gradtap.onnx"
    save(augment(tiny_cnn(size=size), labels=LABELS), str(path))
    return path


def photo_folder(folder: Path, n: int, side: int = 48) -> list[Path]:
    """``n`` distinct crops of the sample photos, ``side`` pixels or so, as PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for k in range(n):
        photo = getattr(data, PHOTOS[k % len(PHOTOS)])()
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = cv2.resize(photo[y : y + ch, x : x + cw, :3], (side + k % 7, side))
        path = folder / f"img{k:03d}.{'jpg' if k % 2 else 'png'}"
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
