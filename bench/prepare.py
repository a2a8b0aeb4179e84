"""Prepare one model in a separate process (the benchmark's parent stays small, see coldstart).

``python -m bench.prepare MODEL WEIGHTS FOLDER`` exports the explanation graph into gradtap's
cache if it is missing, counts its FLOPs, and with ``--coldstart`` saves the torch state dict of a
torchvision model and a photo into FOLDER for the cold-start comparison, and prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

TORCHVISION = ("vgg16", "resnet18", "resnet50")


def prepare(name: str, weights: str, folder: Path, *, coldstart: bool) -> dict[str, Any]:
    """Graph path, default tap, FLOPs and, for the cold start, a state dict and a photo."""
    from bench.flops import count
    from gradtap.export.models.to_onnx import model_path, read_metadata
    from gradtap.runtime import contract as c

    graph = model_path(name, weights, augmented=True)
    tap = read_metadata(graph)[c.META_DEFAULT_TAP]
    found: dict[str, Any] = {"graph": str(graph), "tap": tap, "state_dict": None}
    found["flops"] = asdict(count(graph, tap))
    if coldstart and name in TORCHVISION:
        found["photo"] = str(write_photo(folder / "cat.jpg"))
        import torch

        from gradtap.export.models.zoo import build

        model, _ = build(name, weights)
        path = folder / f"{name}.pth"
        torch.save(model.state_dict(), path)
        found["state_dict"] = str(path)
    return found


def write_photo(path: Path) -> Path:
    """A real photo (scikit-image's cat) as JPEG, or seeded noise without scikit-image."""
    import cv2

    try:
        from skimage import data

        rgb = data.chelsea()
    except ImportError:
        rgb = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


if __name__ == "__main__":
    model, weights, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    with_coldstart = len(sys.argv) > 4 and sys.argv[4] == "--coldstart"
    print(json.dumps(prepare(model, weights, out, coldstart=with_coldstart)))
