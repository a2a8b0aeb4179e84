"""Marking the parts of a photo the model never saw (outside its centre crop) as such.

A map mapped back onto the original is zero outside the crop, and a colour map paints zero as
"unimportant" (blue in jet): a claim the model never made. These pixels are shown greyed and
hatched instead, on overlays and heat maps alike.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.image.geometry import Geometry

Rgb8 = npt.NDArray[np.uint8]
HATCH_PERIOD = 10  # pixels between hatch lines
_GREY, _HATCH = 200.0, 150


def seen_mask(geometry: Geometry, size: tuple[int, int] | None = None) -> npt.NDArray[np.bool_]:
    """[H, W] True where the original pixel lies inside the model's input crop.

    Args:
        geometry: how the original became the model input.
        size: (H, W) of the picture, if the original was scaled for display.
    """
    h, w = size or geometry.original_size
    oh, ow = geometry.original_size
    rh, rw = geometry.resized_size
    top, left, ch, cw = geometry.crop
    ys = (np.arange(h) + 0.5) * (oh / h) * (rh / oh)  # row centres in resized coordinates
    xs = (np.arange(w) + 0.5) * (ow / w) * (rw / ow)
    rows = (ys >= top) & (ys < top + ch)
    cols = (xs >= left) & (xs < left + cw)
    return rows[:, None] & cols[None, :]


def mark_unseen(picture: Rgb8, seen: npt.NDArray[np.bool_]) -> Rgb8:
    """``picture`` with the pixels outside ``seen`` washed out to grey and hatched."""
    if seen.all():
        return picture
    out = picture.copy()
    grey = picture.astype(np.float32).mean(axis=2, keepdims=True)
    washed = np.rint(0.35 * grey + 0.65 * _GREY).astype(np.uint8)
    h, w = seen.shape
    yy, xx = np.mgrid[0:h, 0:w]
    hatch = ((yy + xx) % HATCH_PERIOD) < 2
    unseen = ~seen
    out[unseen] = np.repeat(washed, 3, axis=2)[unseen]
    out[unseen & hatch] = _HATCH
    return out
