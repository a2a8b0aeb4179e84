"""Explanation-quality metrics over saliency maps (numpy only, any backend).

Maps are 2-D arrays at image resolution. Model-based metrics take ``prob_fn``: a callable that
maps a batch of images, float32 [N, 3, H, W] RGB in [0, 1], to class probabilities [N, classes]
(``lambda x: softmax(session.logits(x))`` for example), so they work with any runtime.

- Pointing game (Zhang et al. 2016, https://arxiv.org/abs/1608.00507) and the energy-based
  pointing game (Wang et al. 2020, https://arxiv.org/abs/1910.01279).
- Deletion and insertion curves (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421).
- Spearman rank correlation and SSIM between two maps, the similarity measures of the model
  randomisation sanity check (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).
- Box and mask intersection over union.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]
ProbFn = Callable[[npt.NDArray[np.float32]], npt.ArrayLike]
Box = tuple[float, float, float, float]

ZHANG_TOLERANCE = 15.0
"""The pointing game's standard tolerance in pixels (Zhang et al. 2016): a maximum within 15 px
of the object counts as a hit, which is how the literature's numbers are reported."""

SUBSTRATES = frozenset({"zeros", "mean", "blur"})
"""Named pixel substrates: black, the image's per-channel mean, or the image Gaussian-blurred."""


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: target probability against the fraction of pixels moved."""

    fractions: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    auc: float


def _map(name: str, value: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise OptionError(f"{name} must be a non-empty 2-D map [H, W], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise OptionError(f"{name} contains NaN or Inf")
    return arr


def _mask(name: str, value: npt.ArrayLike, shape: tuple[int, ...]) -> BoolArray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise OptionError(f"{name} has shape {arr.shape}, the map has shape {shape}")
    if arr.dtype != np.bool_:
        raise OptionError(f"{name} must be a bool mask, got dtype {arr.dtype}")
    return arr


def box_to_mask(box: Box, shape: tuple[int, int]) -> BoolArray:
    """Bool mask [H, W] of a half-open pixel box ``(x0, y0, x1, y1)``, clipped to the image."""
    x0, y0, x1, y1 = _box("box", box)
    mask = np.zeros(shape, bool)
    ys = slice(max(0, math.floor(y0)), max(0, math.ceil(y1)))
    mask[ys, slice(max(0, math.floor(x0)), max(0, math.ceil(x1)))] = True
    return mask


def dilate(mask: BoolArray, radius: float) -> BoolArray:
    """Pixels within Euclidean distance ``radius`` of a True pixel of ``mask``."""
    r = int(math.floor(radius))
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                src = mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
                out[max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)] |= src
    return out


def fill_holes(mask: npt.ArrayLike) -> BoolArray:
    """The mask with its holes filled: its filled outline (a ring becomes a disc).

    A hole is a background pixel that no 4-connected path of background pixels joins to the
    image border. The pointing game's hit test on hollow objects uses it, so a map whose peak
    sits in a ring's hole (the feature that tells a ring from a disc) points at the object.
    """
    obj = np.asarray(mask, bool)
    if obj.ndim != 2:
        raise OptionError(f"mask must be 2-D [H, W], got shape {obj.shape}")
    outside = np.zeros_like(obj)
    outside[[0, -1], :] = ~obj[[0, -1], :]
    outside[:, [0, -1]] |= ~obj[:, [0, -1]]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= ~obj
        if (grown == outside).all():
            return ~outside
        outside = grown


def pointing_game(saliency: npt.ArrayLike, mask: npt.ArrayLike, *, tolerance: float = 0) -> float:
    """Whether the map's maximum falls on the object (within ``tolerance`` pixels).

    Args:
        saliency: map [H, W].
        mask: bool ground-truth mask [H, W].
        tolerance: a maximum within this Euclidean distance (pixels) of the mask counts.

    Returns:
        1.0 for a hit, 0.0 for a miss; when several pixels share the maximum, the share of them
        that hit (the expected score under random tie-breaking), so a flat map cannot cheat.
    """
    sal = _map("saliency", saliency)
    target = _mask("mask", mask, sal.shape)
    if tolerance < 0:
        raise OptionError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance > 0:
        target = dilate(target, tolerance)
    peaks = sal == sal.max()
    return float(np.count_nonzero(peaks & target) / np.count_nonzero(peaks))


def energy_pointing_game(saliency: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Share of the map's positive energy inside the mask (use ``box_to_mask`` for a box).

    Returns:
        ``sum(relu(map) * mask) / sum(relu(map))`` in [0, 1]; a map with no positive energy
        points nowhere and scores 0.0.
    """
    sal = _map("saliency", saliency)
    target = _mask("mask", mask, sal.shape)
    energy = np.maximum(sal, 0.0)
    total = energy.sum()
    return float(energy[target].sum() / total) if total > 0 else 0.0


def softmax(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    """Numerically stable softmax, to turn a logits function into a ``prob_fn``."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def gaussian_blur(image: npt.ArrayLike, sigma: float, truncate: float = 4.0) -> FloatArray:
    """Separable Gaussian blur of a [C, H, W] image over H and W, borders mirrored."""
    img = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        raise OptionError(f"blur sigma must be > 0 pixels, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="symmetric")
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        img = windows @ kernel
    return img


def random_map(shape: tuple[int, int], seed: int = 0) -> npt.NDArray[np.float64]:
    """Uniform random map: the baseline every method's deletion/insertion AUC is compared with."""
    return np.random.default_rng(seed).random(shape)


def _image(image: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise OptionError(f"image must be [3, H, W] or [1, 3, H, W] RGB, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise OptionError("image pixels must be finite and in [0, 1]")
    return arr


def _substrate(kind: str | float | npt.ArrayLike, image: np.ndarray, sigma: float) -> np.ndarray:
    if isinstance(kind, str):
        if kind not in SUBSTRATES:
            raise OptionError(f"unknown substrate {kind!r}; valid: {sorted(SUBSTRATES)}")
        if kind == "zeros":
            return np.zeros_like(image)
        if kind == "mean":
            return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).copy()
        return gaussian_blur(image, sigma).astype(np.float32)
    arr = np.broadcast_to(np.asarray(kind, dtype=np.float32), image.shape)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise OptionError("substrate pixels must be finite and in [0, 1]")
    return arr.copy()


def _probs(prob_fn: ProbFn, batch: np.ndarray, target: int) -> npt.NDArray[np.float64]:
    out = np.asarray(prob_fn(batch), dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise OptionError(f"prob_fn must return [N, classes] for N={len(batch)}, got {out.shape}")
    if not 0 <= target < out.shape[1]:
        raise OptionError(f"target {target} out of range for {out.shape[1]} classes")
    sums = out.sum(axis=1)
    if not np.isfinite(out).all() or out.min() < -1e-6 or not np.allclose(sums, 1.0, atol=1e-3):
        raise OptionError(
            "prob_fn must return class probabilities (rows in [0, 1] summing to 1); got rows "
            f"summing to {sums.min():.4g}..{sums.max():.4g}; wrap a logits function in softmax"
        )
    return out[:, target]


def _curve(
    prob_fn: ProbFn,
    base: np.ndarray,
    fill: np.ndarray,
    saliency: npt.ArrayLike,
    target: int,
    step: int | None,
    batch_size: int,
) -> Curve:
    """Move pixels from ``fill`` into ``base`` in decreasing saliency order, scoring each stage."""
    sal = _map("saliency", saliency)
    c, h, w = base.shape
    if sal.shape != (h, w):
        raise OptionError(f"saliency has shape {sal.shape}, the image is {h}x{w}")
    step = w if step is None else step
    if step < 1 or batch_size < 1:
        raise OptionError(f"step and batch_size must be >= 1, got {step} and {batch_size}")
    order = np.argsort(-sal.ravel(), kind="stable")
    rank = np.empty(h * w, np.int64)
    rank[order] = np.arange(h * w)
    counts = np.unique(np.append(np.arange(0, h * w, step), h * w))
    base_flat, fill_flat = base.reshape(c, 1, -1), fill.reshape(c, 1, -1)
    scores = []
    for i in range(0, len(counts), batch_size):
        moved = rank[None, :] < counts[i : i + batch_size, None]  # [B, H*W]
        batch = np.where(moved[None], fill_flat, base_flat).transpose(1, 0, 2)
        scores.append(_probs(prob_fn, batch.reshape(-1, c, h, w).astype(np.float32), target))
    fractions = counts / (h * w)
    values = np.concatenate(scores)
    return Curve(fractions, values, trapezoid_auc(fractions, values))


def trapezoid_auc(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Area under the piecewise-linear curve through the points ``(x[i], y[i])``."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float((np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0).sum())


def deletion(
    prob_fn: ProbFn,
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    target: int,
    *,
    step: int | None = None,
    substrate: str | float | npt.ArrayLike = "zeros",
    blur_sigma: float = 5.0,
    batch_size: int = 32,
) -> Curve:
    """Deletion curve: replace the most salient pixels first by ``substrate``; lower AUC is better.

    Args:
        prob_fn: images [N, 3, H, W] in [0, 1] -> class probabilities [N, classes].
        image: the explained image, [3, H, W] or [1, 3, H, W] in [0, 1].
        saliency: map [H, W]; ties are removed in raster order.
        target: class whose probability is tracked.
        step: pixels changed per stage (all channels of a pixel at once); default the image
            width, i.e. H stages as in Petsiuk et al.
        substrate: "zeros", "mean", "blur" (Gaussian, ``blur_sigma``), a value or an image.
        blur_sigma: blur strength in pixels for the "blur" substrate.
        batch_size: most images per ``prob_fn`` call.

    Returns:
        The curve over fractions 0, step/HW, ..., 1 and its trapezoid AUC.
    """
    img = _image(image)
    fill = _substrate(substrate, img, blur_sigma)
    return _curve(prob_fn, img, fill, saliency, target, step, batch_size)


def insertion(
    prob_fn: ProbFn,
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    target: int,
    *,
    step: int | None = None,
    start: str | float | npt.ArrayLike = "blur",
    blur_sigma: float = 5.0,
    batch_size: int = 32,
) -> Curve:
    """Insertion curve: put the most salient pixels back first into ``start``; higher AUC is
    better. Arguments as in ``deletion``; ``start`` defaults to the Gaussian-blurred image."""
    img = _image(image)
    base = _substrate(start, img, blur_sigma)
    return _curve(prob_fn, base, img, saliency, target, step, batch_size)


def rankdata(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """1-based ranks of the flattened values; tied values share their average rank."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(flat)]
    ranks = np.empty(len(flat))
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def spearman(a: npt.ArrayLike, b: npt.ArrayLike, *, absolute: bool = False) -> float:
    """Spearman rank correlation between two maps of the same shape.

    Args:
        a: first map.
        b: second map.
        absolute: rank the maps' absolute values (Adebayo et al.'s "absolute value" variant).

    Returns:
        The correlation in [-1, 1]; NaN when either map is constant (undefined, as in scipy).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise OptionError(f"maps must share a shape with >= 2 values, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise OptionError("maps contain NaN or Inf")
    if absolute:
        x, y = np.abs(x), np.abs(y)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else math.nan


def _box_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window that fits inside the image ("valid" box filter)."""
    s = np.pad(img, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def ssim(
    a: npt.ArrayLike, b: npt.ArrayLike, *, data_range: float | None = None, win_size: int = 7
) -> float:
    """Mean structural similarity (Wang et al. 2004) of two maps, uniform ``win_size`` windows.

    Uses sample covariances, K1 = 0.01, K2 = 0.03 and only windows that fit inside the map, the
    conventions of scikit-image's ``structural_similarity`` defaults.

    Args:
        a: first map [H, W].
        b: second map [H, W].
        data_range: value range of the maps; default the joint max minus min of both.
        win_size: odd window side, at most the smaller map side.

    Returns:
        The mean SSIM, 1.0 for identical maps.
    """
    x, y = _map("first map", a), _map("second map", b)
    if x.shape != y.shape:
        raise OptionError(f"maps must share a shape, got {x.shape} and {y.shape}")
    if win_size < 3 or win_size % 2 == 0 or win_size > min(x.shape):
        raise OptionError(f"win_size must be odd, >= 3 and <= {min(x.shape)}, got {win_size}")
    if data_range is None:
        data_range = float(max(x.max(), y.max()) - min(x.min(), y.min()))
    if data_range <= 0:
        raise OptionError(f"data_range must be > 0, got {data_range} (are both maps constant?)")
    norm = win_size**2 / (win_size**2 - 1)
    mx, my = _box_mean(x, win_size), _box_mean(y, win_size)
    vx = norm * (_box_mean(x * x, win_size) - mx * mx)
    vy = norm * (_box_mean(y * y, win_size) - my * my)
    cxy = norm * (_box_mean(x * y, win_size) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def _box(name: str, box: npt.ArrayLike) -> Box:
    arr = np.asarray(box, dtype=np.float64)
    if arr.shape != (4,) or not np.isfinite(arr).all() or arr[2] < arr[0] or arr[3] < arr[1]:
        raise OptionError(
            f"{name} must be finite (x0, y0, x1, y1) with x1 >= x0, y1 >= y0; got {box!r}"
        )
    return float(arr[0]), float(arr[1]), float(arr[2]), float(arr[3])


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (half-open pixel bounds)."""
    ax0, ay0, ax1, ay1 = _box("first box", a)
    bx0, by0, bx1, by1 = _box("second box", b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    if union <= 0:
        raise OptionError(f"IoU undefined: both boxes are empty ({a!r}, {b!r})")
    return inter / union


def mask_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Intersection over union of two bool masks of the same shape."""
    x = np.asarray(a)
    y = _mask("second mask", b, x.shape)
    x = _mask("first mask", x, y.shape)
    union = np.count_nonzero(x | y)
    if union == 0:
        raise OptionError("IoU undefined: both masks are empty")
    return np.count_nonzero(x & y) / union
