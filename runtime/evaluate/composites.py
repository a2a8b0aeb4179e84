"""Composites of real photos pasted onto real backgrounds at known boxes (ImageNet classifiers).

Objects are hand-chosen crops of scikit-image's sample photos whose ImageNet-1k classes are clear
(a cat, an espresso, a camera on its tripod, a motorcycle); backgrounds are its texture
and scene photos (brick, grass, gravel, the Hubble deep field, a stained tissue slide). Composite
``index`` pastes object ``index % len(OBJECTS)`` onto background ``(index // len(OBJECTS)) %
len(BACKGROUNDS)`` at a random scale and position, so any ``len(OBJECTS) * len(BACKGROUNDS)``
consecutive indices cover every pair once.

The ground truth is the pasted rectangle: its box, and a mask that is the whole rectangle. The crops
are tight, but the rectangle still holds some of the photo's own surroundings (table, grass,
the garage), so a perfect map scores an energy-based pointing game a little below 1.

scikit-image is needed only here (for its bundled photos; nothing is downloaded); without it the
functions raise one clear :class:`GradtapError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import GradtapError, OptionError

Array = npt.NDArray[np.float32]
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PhotoObject:
    """A crop of a sample photo and the ImageNet-1k classes it counts as.

    Attributes:
        name: short name.
        photo: the ``skimage.data`` function that loads the photo.
        crop: ``(x0, y0, x1, y1)`` of the object in the photo, half-open.
        classes: ImageNet-1k class indices that name the object (any of them is correct).
    """

    name: str
    photo: str
    crop: Box
    classes: tuple[int, ...]


OBJECTS: tuple[PhotoObject, ...] = (
    # tabby, tiger cat, Persian, Siamese, Egyptian cat
    PhotoObject("cat", "chelsea", (20, 0, 420, 300), (281, 282, 283, 284, 285)),
    PhotoObject("espresso", "coffee", (75, 15, 480, 390), (967, 968)),  # espresso, cup
    PhotoObject("tripod", "camera", (225, 130, 345, 505), (872,)),
    PhotoObject("motorcycle", "stereo_motorcycle", (90, 95, 690, 455), (665, 670)),  # moped,
    # motor scooter
)
BACKGROUNDS: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
)
SCALE = (0.45, 0.7)
"""Range of the pasted object's longer side, as a fraction of the image side."""


@dataclass(frozen=True)
class Composite:
    """One composite image and its ground truth.

    Attributes:
        image: float32 [H, W, 3] RGB in [0, 1].
        object: the pasted object's name.
        background: the background photo's name.
        classes: ImageNet-1k classes of the object.
        box: ``(x0, y0, x1, y1)`` of the pasted rectangle, half-open.
        mask: bool [H, W], True inside the pasted rectangle.
    """

    image: Array
    object: str
    background: str
    classes: tuple[int, ...]
    box: Box
    mask: npt.NDArray[np.bool_]


def _skimage_data() -> Any:
    try:
        from skimage import data
    except ImportError:
        raise GradtapError(
            "composites need scikit-image for its sample photos: pip install scikit-image"
        ) from None
    return data


@functools.lru_cache(maxsize=16)
def photo(name: str) -> Array:
    """A scikit-image sample photo as float32 RGB [H, W, 3] in [0, 1] (grey ones repeated)."""
    loaded = getattr(_skimage_data(), name)()
    img = loaded[0] if isinstance(loaded, tuple) else loaded  # stereo pairs: the left view
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    out = (img.astype(np.float32) / scale).clip(0.0, 1.0)
    out.setflags(write=False)
    return out


def _background(name: str, size: tuple[int, int], rng: np.random.Generator) -> Array:
    """A random square-ish crop of the background photo, resized to ``size``."""
    img = photo(name)
    h, w = size
    side = int(min(img.shape[:2]) * rng.uniform(0.5, 1.0))
    ch, cw = (side, int(side * w / h)) if w <= h else (int(side * h / w), side)
    ch, cw = min(ch, img.shape[0]), min(cw, img.shape[1])
    y0 = int(rng.integers(0, img.shape[0] - ch + 1))
    x0 = int(rng.integers(0, img.shape[1] - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def _object(obj: PhotoObject, size: tuple[int, int], rng: np.random.Generator) -> Array:
    """The object's crop, randomly mirrored, resized so its longer side is a ``SCALE`` share."""
    x0, y0, x1, y1 = obj.crop
    crop = photo(obj.photo)[y0:y1, x0:x1]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    longest = rng.uniform(*SCALE) * min(size)
    f = longest / max(crop.shape[:2])
    oh, ow = max(1, round(crop.shape[0] * f)), max(1, round(crop.shape[1] * f))
    return cv2.resize(np.ascontiguousarray(crop), (ow, oh), interpolation=cv2.INTER_AREA)


def make_composite(index: int, *, size: tuple[int, int] = (224, 224), seed: int = 0) -> Composite:
    """Composite ``index``: an object pasted onto a background at a random scale and position.

    Args:
        index: composite number (>= 0); picks the object and background pair (see the module).
        size: (H, W) of the image, e.g. the model's input size.
        seed: random stream (>= 0) for the background crop, scale, mirroring and position.

    Returns:
        The composite with the pasted rectangle's box and mask.
    """
    if index < 0 or seed < 0:
        raise OptionError(f"index and seed must be >= 0, got {index} and {seed}")
    h, w = size
    if min(h, w) < 32:
        raise OptionError(f"composite size must be at least 32 x 32, got {size}")
    obj = OBJECTS[index % len(OBJECTS)]
    bg_name = BACKGROUNDS[(index // len(OBJECTS)) % len(BACKGROUNDS)]
    rng = np.random.default_rng([seed, index])
    image = _background(bg_name, size, rng).copy()
    patch = _object(obj, size, rng)
    oh, ow = patch.shape[:2]
    y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    image[y0 : y0 + oh, x0 : x0 + ow] = patch
    np.clip(image, 0.0, 1.0, out=image)  # area resampling can overshoot by a rounding error
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + oh, x0 : x0 + ow] = True
    box = (x0, y0, x0 + ow, y0 + oh)
    return Composite(image, obj.name, bg_name, obj.classes, box, mask)
