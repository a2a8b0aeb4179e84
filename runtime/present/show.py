"""Showing an Explanation: a short repr, heat maps and overlays on the photo, PNG and matplotlib.

Signed maps (Integrated Gradients, signed saliency, Grad-CAM without ReLU) keep their sign and
use a diverging colour map centred on zero; unsigned maps use [0, 1]. With ``shared=True`` all
rows of one image are scaled together, so maps for several targets compare by brightness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import to_original
from gradtap.runtime.present.overlay import colorize, panel, to_uint8
from gradtap.runtime.present.postprocess import gradient_image, normalize, reduce_channels
from gradtap.runtime.present.unseen import mark_unseen, seen_mask

if TYPE_CHECKING:
    from gradtap.runtime.methods.base import Explanation

Array = npt.NDArray[np.float32]
Rgb8 = npt.NDArray[np.uint8]
DIVERGING = "RdBu_r"  # matplotlib's; the PNG path builds the same blue-white-red ramp
SEQUENTIAL = "jet"
PNG_ROWS = 8  # rows shown by the notebook display


def is_signed(expl: Explanation) -> bool:
    """Whether the maps are signed scalar maps (negative evidence is part of the answer)."""
    return expl.maps.ndim == 3 and bool((expl.maps < 0).any())


def describe(expl: Explanation) -> str:
    """``Explanation(gradcam, 2 rows: image 0 -> 281 'tabby cat' p=0.412, ..., maps [2, 7, 7])``."""
    rows = [
        f"image {int(i)} -> {int(t)} {expl.labels[int(t)]!r} p={float(p):.3f}"
        for i, t, p in zip(expl.image_index, expl.target, expl.target_prob, strict=True)
    ]
    shown = rows[:4] + ([f"... {len(rows) - 4} more"] if len(rows) > 4 else [])
    shape = ", ".join(str(d) for d in expl.maps.shape)
    n = len(rows)
    return (
        f"Explanation({expl.method}, {n} row{'s' * (n != 1)}: {'; '.join(shown)}, maps [{shape}])"
    )


def heatmap(
    expl: Explanation, row: int = 0, *, shared: bool = False, outlier_perc: float = 2.0
) -> Array:
    """Row ``row`` as an [H, W] map on its original photo ([-1, 1] if signed, else [0, 1]).

    Args:
        expl: the explanation.
        row: which row.
        shared: scale by all rows of the same image (maps for several targets comparable).
        outlier_perc: percentage of the largest magnitudes clipped (2 as in captum).
    """
    _check_row(expl, row)
    signed = is_signed(expl)
    image = int(expl.image_index[row])
    group = np.flatnonzero(expl.image_index == image) if shared else np.array([row])
    raw = np.stack([_scalar(expl.maps[r], signed) for r in group])
    scaled = normalize(raw, outlier_perc=outlier_perc, signed=signed)[list(group).index(row)]
    geometry = expl.geometries[image] if expl.geometries else None
    if geometry is None:
        return scaled
    return np.clip(to_original(scaled, geometry), -1.0 if signed else 0.0, 1.0)


def overlay(
    expl: Explanation,
    row: int = 0,
    *,
    shared: bool = False,
    colormap: str | None = None,
    image_weight: float = 0.5,
) -> Rgb8:
    """Row ``row`` over its photo (RGB uint8); colour gradients as the gradient picture.

    The photo is the original when :class:`~gradtap.runtime.Explainer` made the explanation
    (``expl.images``); outside the model's centre crop it is greyed and hatched.
    """
    _check_row(expl, row)
    image = int(expl.image_index[row])
    geometry = expl.geometries[image] if expl.geometries else None
    photo = expl.images[image] if expl.images else None
    if expl.maps.ndim == 4:
        grad = gradient_image(expl.maps[row])
        pic = grad if geometry is None else to_original(grad, geometry, fill=0.5)
        out = to_uint8(np.clip(pic, 0, 1))
    else:
        heat = heatmap(expl, row, shared=shared)
        colours = _colours(heat, is_signed(expl), colormap)
        if photo is None:
            return colours
        base = to_uint8(np.clip(photo, 0, 1)) if photo.dtype != np.uint8 else photo
        blend = image_weight * base.astype(np.float32) + (1 - image_weight) * colours
        out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out if geometry is None else mark_unseen(out, seen_mask(geometry, out.shape[:2]))


def picture(expl: Explanation, *, rows: int = PNG_ROWS, height: int = 160) -> Rgb8:
    """A captioned panel of the first ``rows`` rows (what a notebook shows)."""
    tiles = []
    for r in range(min(rows, len(expl.target))):
        t = int(expl.target[r])
        caption = f"{expl.labels[t]} ({t})\np={float(expl.target_prob[r]):.3f}"
        tiles.append((caption, overlay(expl, r)))
    return panel(tiles, height=height, title=f"{expl.method}")


def png(expl: Explanation) -> bytes:
    """PNG bytes of :func:`picture`."""
    ok, buf = cv2.imencode(".png", picture(expl)[:, :, ::-1])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid RGB array
        raise OptionError("could not encode the explanation as PNG")
    return buf.tobytes()


def plot(
    expl: Explanation,
    rows: Any = None,
    *,
    shared: bool = False,
    colorbar: bool = True,
    overlay_alpha: float = 0.5,
):  # noqa: ANN201 - a matplotlib Figure; matplotlib is the optional ``plot`` extra
    """A matplotlib figure: one panel per row, the map over its photo, with a colour bar.

    Signed maps use the diverging ``RdBu_r`` centred on zero; unsigned ones ``jet`` on [0, 1].
    Needs matplotlib (``pip install 'gradtap[plot]'``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise OptionError("plot() needs matplotlib: pip install 'gradtap[plot]'") from err
    picked = list(range(len(expl.target))) if rows is None else list(np.atleast_1d(rows))
    signed = is_signed(expl)
    fig, axes = plt.subplots(1, len(picked), figsize=(3.2 * len(picked), 3.4), squeeze=False)
    for ax, r in zip(axes[0], picked, strict=True):
        image = int(expl.image_index[r])
        t = int(expl.target[r])
        ax.set_title(
            f"{expl.method}: {expl.labels[t]} ({t})\np={float(expl.target_prob[r]):.3f}", fontsize=9
        )
        ax.axis("off")
        if expl.maps.ndim == 4:
            ax.imshow(overlay(expl, r))
            continue
        heat = heatmap(expl, r, shared=shared)
        if expl.images:
            ax.imshow(expl.images[image])
        lim = (-1.0, 1.0) if signed else (0.0, 1.0)
        cmap = DIVERGING if signed else SEQUENTIAL
        alpha = overlay_alpha if expl.images else 1.0
        shown = ax.imshow(heat, cmap=cmap, vmin=lim[0], vmax=lim[1], alpha=alpha)
        if colorbar:
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            bar.set_label("relative attribution" + (" (signed)" if signed else ""), fontsize=8)
    fig.tight_layout()
    return fig


def _scalar(m: Array, signed: bool) -> Array:
    return np.asarray(m, np.float32) if signed else reduce_channels(m)


def _colours(heat: Array, signed: bool, colormap: str | None) -> Rgb8:
    if signed and colormap is None:
        return diverging(heat)
    return colorize(np.abs(heat) if signed else heat, colormap or SEQUENTIAL)


def diverging(values: Array) -> Rgb8:
    """[-1, 1] values as blue (negative), white (zero), red (positive), RGB uint8."""
    v = np.clip(np.asarray(values, np.float32), -1, 1)[..., None]
    white, red, blue = (
        np.float32(255),
        np.array([178, 24, 43], np.float32),
        np.array([33, 102, 172], np.float32),
    )
    out = np.where(v >= 0, white + v * (red - white), white + (-v) * (blue - white))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_row(expl: Explanation, row: int) -> None:
    if not 0 <= row < len(expl.target):
        raise OptionError(f"row {row} out of range: the explanation has {len(expl.target)} rows")
