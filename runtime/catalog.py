"""Model names: the built-in names, the export cache, packaged models, and how to resolve a name.

``gradtap explain -M NAME`` and ``Explainer("NAME")`` resolve a name the same way, here:

1. a trained export of ``NAME`` in the cache (``gradtap export NAME --weights ...``), newest first;
2. a packaged graph: ``smallcnn`` ships inside the gradtap wheel, and model wheels such as
   ``gradtap-models-imagenet`` register theirs under the ``gradtap.models`` entry-point group
   (name = model name, value = the package holding ``NAME.gradtap.onnx``);
3. an export of ``NAME`` with random weights in the cache (a warning is logged when it is used).

No torch and no ``gradtap.export`` import: the CLI and the runtime both read these.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gradtap.runtime.errors import ModelError

MODEL_NAMES = ("smallcnn", "vgg16", "resnet18", "resnet50", "efficientnet_lite0")
CACHE_ENV = "GRADTAP_CACHE"
AUGMENTED_SUFFIX = ".gradtap.onnx"
ENTRY_POINT_GROUP = "gradtap.models"
RANDOM = "random"  # the ``gradtap.weights`` metadata value of a randomly initialised export
# The weights choice that gives trained ImageNet weights on a machine without network access.
TRAINED_WEIGHTS = {
    "efficientnet_lite0": "IMAGENET1K",
    "resnet18": "IMAGENET1K_V1",
    "resnet50": "IMAGENET1K_V1",
    "vgg16": "IMAGENET1K_V1",
}
IMAGENET_WHEEL = "gradtap-models-imagenet"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # site-packages/gradtap, or the checkout
logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$GRADTAP_CACHE``, else ``models/cache`` in a source checkout, else ``~/.cache/gradtap``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if (_PACKAGE_ROOT / "pyproject.toml").is_file() and (_PACKAGE_ROOT / "models").is_dir():
        return _PACKAGE_ROOT / "models" / "cache"
    return Path.home() / ".cache" / "gradtap"


def cached_models(name: str, cache_dir: Path | None = None) -> list[Path]:
    """Augmented graphs of ``name`` in the cache: trained weights before random, then newest."""
    folder = default_cache_dir() if cache_dir is None else cache_dir
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{name}-*{AUGMENTED_SUFFIX}") if p.is_file()]
    return sorted(found, key=lambda p: (_is_random_file(p, name), -p.stat().st_mtime))


def packaged_models() -> dict[str, Path]:
    """Model name -> packaged explanation graph (the gradtap wheel's own, then model wheels')."""
    found = {
        p.name[: -len(AUGMENTED_SUFFIX)]: p for p in _bundled_dir().glob(f"*{AUGMENTED_SUFFIX}")
    }
    for name, path in _entry_point_models().items():
        found.setdefault(name, path)
    return found


def resolve_name(name: str, cache_dir: Path | None = None) -> Path:
    """The explanation graph a model name stands for (see the module docstring for the order).

    Raises:
        ModelError: nothing of that name is cached or packaged; the message names the command
            that provides it.
    """
    cached = cached_models(name, cache_dir)
    trained = [p for p in cached if not _is_random_file(p, name)]
    if trained:
        return trained[0]
    packaged = packaged_models().get(name)
    if packaged is not None:
        return packaged
    if cached:
        return cached[0]
    folder = default_cache_dir() if cache_dir is None else cache_dir
    raise ModelError(
        f"no model {name!r} in the cache ({str(folder)!r}) or installed; {how_to_get(name)}"
    )


def how_to_get(name: str) -> str:
    """The command that provides model ``name`` with trained weights."""
    if name not in MODEL_NAMES:
        return (
            f"pass a {AUGMENTED_SUFFIX} file (`gradtap augment MODEL.onnx`), or one of the "
            f"built-in names: {', '.join(MODEL_NAMES)}"
        )
    if name == "smallcnn":
        return "it ships with gradtap: reinstall gradtap (`pip install --force-reinstall gradtap`)"
    weights = TRAINED_WEIGHTS[name]
    fix = f"run `gradtap export {name} --weights {weights}` (needs `pip install 'gradtap[export]'`)"
    if name == "efficientnet_lite0":
        return f"{fix}, or install the {IMAGENET_WHEEL} wheel (`make wheels` builds it)"
    return f"{fix}; the weights must be in the torch hub cache, or pass --weights FILE.pth"


def is_random(weights: str | None) -> bool:
    """Whether a ``gradtap.weights`` metadata value says the weights are random."""
    return weights is not None and weights.strip().lower().startswith(RANDOM)


def random_weights_warning(name: str) -> str:
    """The warning shown when a model with random weights explains anything."""
    fix = how_to_get(name) if name in TRAINED_WEIGHTS else "export it with trained weights"
    return (
        f"model {name!r} has RANDOM weights: its predictions and explanations mean nothing; {fix}"
    )


def _is_random_file(path: Path, name: str) -> bool:
    return path.name.startswith(f"{name}-{RANDOM}.")


def _bundled_dir() -> Path:
    """``gradtap/models`` in a wheel; the checkout's ``models/`` in an editable install."""
    return _PACKAGE_ROOT / "models"


def _entry_point_models() -> dict[str, Path]:
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    found: dict[str, Path] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = find_spec(ep.value)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec else []
        for folder in locations:
            path = Path(folder) / f"{ep.name}{AUGMENTED_SUFFIX}"
            if path.is_file():
                found.setdefault(ep.name, path)
                break
        else:
            logger.warning("model package %r (entry point %r) has no graph", ep.value, ep.name)
    return found
