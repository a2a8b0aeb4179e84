"""Weakly supervised localisation: GrabCut seeded from a saliency map (OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Localization:
    """An object mask and its bounding box.

    Attributes:
        mask: [H, W] bool, the largest connected foreground component.
        box: (x0, y0, x1, y1) in pixels, x1/y1 exclusive; ``None`` when the mask is empty.
        foreground: [H, W] bool, every pixel GrabCut labelled foreground.
    """

    mask: npt.NDArray[np.bool_]
    box: tuple[int, int, int, int] | None
    foreground: npt.NDArray[np.bool_]


def grabcut(
    image: npt.NDArray[np.generic],
    saliency: Array,
    *,
    fg_quantile: float = 0.95,
    bg_quantile: float = 0.30,
    iterations: int = 5,
    seed: int = 0,
) -> Localization:
    """Localise the object from a saliency map (Simonyan et al. 2013, §3.2, https://arxiv.org/abs/1312.6034).

    Pixels above the ``fg_quantile`` of the map seed the foreground, pixels below
    ``bg_quantile`` the background, the rest is left to GrabCut; the box is that of the
    largest connected foreground component.

    Args:
        image: RGB [H, W, 3], float in [0, 1] or uint8.
        saliency: [H, W] map at the image's resolution (see ``to_original``), larger = more salient.
        fg_quantile: quantile above which pixels are certain foreground.
        bg_quantile: quantile below which pixels are certain background.
        iterations: GrabCut iterations.
        seed: OpenCV random seed (GrabCut's k-means initialisation).

    Raises:
        OptionError: mismatched shapes, bad quantiles, or a constant map.
    """
    img, sal = _check(image, saliency, fg_quantile, bg_quantile, iterations)
    hi, lo = np.quantile(sal, fg_quantile), np.quantile(sal, bg_quantile)
    if hi <= lo:
        raise OptionError("saliency map is (nearly) constant: nothing to seed GrabCut with")
    mask = np.where(sal > np.median(sal), cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[sal >= hi] = cv2.GC_FGD
    mask[sal <= lo] = cv2.GC_BGD
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(img, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    foreground = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    largest, box = largest_component(foreground)
    return Localization(mask=largest, box=box, foreground=foreground)


def largest_component(
    mask: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.bool_], tuple[int, int, int, int] | None]:
    """The largest 8-connected component of ``mask`` and its (x0, y0, x1, y1) box."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool), None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return labels == best, (x, y, x + w, y + h)


def _check(
    image: npt.NDArray[np.generic], saliency: Array, hi: float, lo: float, iterations: int
) -> tuple[npt.NDArray[np.uint8], Array]:
    img = np.asarray(image)
    sal = np.asarray(saliency, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise OptionError(f"image must be RGB [H, W, 3], got {img.shape}")
    if sal.shape != img.shape[:2]:
        raise OptionError(f"saliency map {sal.shape} must match the image {img.shape[:2]}")
    if not 0 <= lo < hi <= 1:
        raise OptionError(f"need 0 <= bg_quantile < fg_quantile <= 1, got {lo}, {hi}")
    if not isinstance(iterations, int) or iterations < 1:
        raise OptionError(f"iterations must be an int >= 1, got {iterations!r}")
    if not np.isfinite(sal).all():
        raise OptionError("saliency map contains NaN or Inf")
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), sal
