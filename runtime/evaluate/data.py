"""Evaluation sets: images with ground-truth masks, boxes and the classes that count as correct.

``synthetic_set`` draws the procedural shapes (:mod:`gradtap.runtime.evaluate.synthetic`) at the model's
input size and maps their class names onto the model's labels; ``composite_set`` draws real-photo
composites (:mod:`gradtap.runtime.evaluate.composites`) for ImageNet-1k models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.evaluate import composites, synthetic
from gradtap.runtime.info import ModelInfo

Array = npt.NDArray[np.float32]
DATASETS = ("synthetic", "composites")
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class EvalSet:
    """Images and their ground truth, at the model's input size.

    Attributes:
        name: description, e.g. ``"synthetic(seed=1)"``.
        images: float32 [N, H, W, 3] RGB in [0, 1].
        classes: per image, the model class indices that name its object (any counts as correct;
            the explained target is the most probable of them).
        masks: bool [N, H, W] ground-truth object masks.
        boxes: int64 [N, 4] ground-truth boxes ``(x0, y0, x1, y1)``, half-open.
        mask_kind: what the masks are, e.g. ``"exact object mask"``.
    """

    name: str
    images: Array
    classes: tuple[tuple[int, ...], ...]
    masks: npt.NDArray[np.bool_]
    boxes: npt.NDArray[np.int64]
    mask_kind: str

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise OptionError("an evaluation set needs at least one image")
        if self.images.ndim != 4 or self.images.shape[3] != 3:
            raise OptionError(f"images must be [N, H, W, 3], got {self.images.shape}")
        if self.masks.shape != self.images.shape[:3] or self.masks.dtype != np.bool_:
            raise OptionError(f"masks must be bool {list(self.images.shape[:3])}")
        if self.boxes.shape != (n, 4) or len(self.classes) != n or not all(self.classes):
            raise OptionError(f"need {n} boxes [N, 4] and {n} non-empty class tuples")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def batch(self) -> Array:
        """The images as a model input batch [N, 3, H, W]."""
        return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2))

    def subset(self, n: int) -> EvalSet:
        """The first ``n`` images."""
        return EvalSet(
            self.name,
            self.images[:n],
            self.classes[:n],
            self.masks[:n],
            self.boxes[:n],
            self.mask_kind,
        )


def _square_size(info: ModelInfo) -> int:
    h, w = info.input_size
    if h != w:
        raise ModelError(f"model {info.name!r} takes {h}x{w} inputs; the sets are square")
    return h


def synthetic_set(
    info: ModelInfo, n: int, *, seed: int = synthetic.TEST_SEED, start: int = 0
) -> EvalSet:
    """``n`` synthetic shapes (default: the held-out split) at the model's input size, from
    sample ``start`` on (a shard of a larger set: the same images as its slice).

    Raises:
        ModelError: the model's labels do not name every synthetic class.
    """
    _count(n)
    missing = [name for name in synthetic.CLASS_NAMES if name not in info.labels]
    if missing:
        raise ModelError(
            f"model {info.name!r} has no labels {missing}; the synthetic set needs a model "
            f"trained on it (labels {list(synthetic.CLASS_NAMES)}), got {list(info.labels[:8])}"
        )
    split = synthetic.make_split(n, seed, _square_size(info), start=start)
    to_model = [info.labels.index(name) for name in synthetic.CLASS_NAMES]
    return EvalSet(
        name=f"synthetic(seed={seed})",
        images=split.images,
        classes=tuple((to_model[int(label)],) for label in split.labels),
        masks=split.masks,
        boxes=split.boxes,
        mask_kind="exact object mask",
    )


def composite_set(info: ModelInfo, n: int, *, seed: int = 0, start: int = 0) -> EvalSet:
    """``n`` real-photo composites at the model's input size, for ImageNet-1k classifiers,
    from composite ``start`` on.

    Raises:
        ModelError: the model does not have the 1000 ImageNet-1k classes.
    """
    _count(n)
    if info.num_classes != IMAGENET_CLASSES:
        raise ModelError(
            f"model {info.name!r} has {info.num_classes} classes; the composites need an "
            f"ImageNet-1k classifier ({IMAGENET_CLASSES} classes)"
        )
    size = _square_size(info)
    items = [
        composites.make_composite(i, size=(size, size), seed=seed) for i in range(start, start + n)
    ]
    return EvalSet(
        name=f"composites(seed={seed})",
        images=np.stack([c.image for c in items]),
        classes=tuple(c.classes for c in items),
        masks=np.stack([c.mask for c in items]),
        boxes=np.array([c.box for c in items], np.int64),
        mask_kind="pasted rectangle",
    )


def load_set(
    name: str, info: ModelInfo, n: int, *, seed: int | None = None, start: int = 0
) -> EvalSet:
    """The evaluation set ``name`` (one of ``DATASETS``) for a model (images ``start`` on)."""
    if name == "synthetic":
        seed = synthetic.TEST_SEED if seed is None else seed
        return synthetic_set(info, n, seed=seed, start=start)
    if name == "composites":
        return composite_set(info, n, seed=0 if seed is None else seed, start=start)
    raise OptionError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")


def _count(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise OptionError(f"number of images must be an int >= 1, got {n!r}")
