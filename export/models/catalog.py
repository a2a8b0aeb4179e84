"""The built-in model names and the export cache folder: no torch, so the CLI can read them."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_NAMES = ("smallcnn", "vgg16", "resnet18", "resnet50", "efficientnet_lite0")
CACHE_ENV = "GRADTAP_CACHE"


def default_cache_dir() -> Path:
    """``$GRADTAP_CACHE``, else ``models/cache`` in a source checkout, else ``~/.cache/gradtap``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "models").is_dir():
        return root / "models" / "cache"
    return Path.home() / ".cache" / "gradtap"
