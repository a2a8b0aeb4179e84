"""Pictures of results for the CLI: overlays, heat maps and labelled panels, at display size.

The runtime does the presenting (``postprocess`` and ``overlay``); this module only picks the
tiles and captions and keeps large photos at a bounded display size.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.image.geometry import Geometry, to_original
from gradtap.runtime.present.overlay import colorize, overlay_heatmap, panel
from gradtap.runtime.present.postprocess import gradient_image, heatmap
from gradtap.runtime.present.unseen import mark_unseen, seen_mask

Rgb8 = npt.NDArray[np.uint8]
Image = npt.NDArray[np.float32]

PANEL_HEIGHT = 224


def display_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) scaled down so the longer side is at most ``max_side`` (0 = unchanged)."""
    h, w = size
    if max_side <= 0 or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def for_display(image: Image, geometry: Geometry, max_side: int) -> tuple[Image, Geometry]:
    """The original image and its geometry, both scaled to the display size."""
    size = display_size(geometry.original_size, max_side)
    if size == geometry.original_size:
        return image, geometry
    small = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return small, replace(geometry, original_size=size)


def pictures(
    raw: npt.NDArray[np.float32],
    image: Image,
    geometry: Geometry,
    *,
    colour: bool,
    formats: Collection[str] = ("overlay", "heatmap"),
    title: str = "",
) -> dict[str, Rgb8]:
    """The pictures of one raw map named in ``formats`` (overlay, heatmap, panel), on ``image``.

    For colour gradients (``colour``: a [3, H, W] map) the overlay is the gradient picture itself
    (grey = zero) placed where the model looked, the heat map its max |gradient| over channels.
    The panel shows input | heat map | overlay under ``title``. Nothing else is computed.
    Pixels outside the model's centre crop are greyed and hatched (``unseen``), not painted as
    "unimportant".
    """
    wanted = set(formats)
    if "panel" in wanted:
        wanted |= {"overlay", "heatmap"}
    out: dict[str, Rgb8] = {}
    if not wanted & {"overlay", "heatmap"}:
        return out
    heat = heatmap(raw, geometry)
    seen = seen_mask(geometry, heat.shape)
    if "heatmap" in wanted:
        out["heatmap"] = mark_unseen(colorize(heat), seen)
    if "overlay" in wanted and colour:
        grad = to_original(gradient_image(raw), geometry, fill=0.5)
        out["overlay"] = mark_unseen(np.rint(np.clip(grad, 0.0, 1.0) * 255).astype(np.uint8), seen)
    elif "overlay" in wanted:
        out["overlay"] = mark_unseen(overlay_heatmap(image, heat), seen)
    if "panel" in wanted:
        out["panel"] = explanation_panel(image, out, title=title, colour=colour)
    return out


def explanation_panel(image: Image, pics: dict[str, Rgb8], *, title: str, colour: bool) -> Rgb8:
    """Input | heat map | overlay (or gradient picture), captioned, with ``title`` on top."""
    third = "gradient" if colour else "overlay"
    tiles = [
        ("input", image),
        ("heat map", pics["heatmap"]),
        (third, pics["overlay"]),
    ]
    return panel(tiles, height=panel_height(image.shape[:2]), title=title)


def panel_height(size: tuple[int, int]) -> int:
    """Tile height for a photo of (H, W): taller for tall photos, so tiles stay legible.

    A photo up to 1.5 times as tall as wide gets ``PANEL_HEIGHT``; a taller one grows until its
    tile is ``PANEL_HEIGHT / 1.5`` wide, up to three times ``PANEL_HEIGHT``. (Wide photos keep the
    height and grow in width, up to ``MAX_TILE_ASPECT`` times it, then are letterboxed.)
    """
    h, w = size
    aspect = h / max(1, w)
    if aspect <= 1.5:
        return PANEL_HEIGHT
    return int(min(PANEL_HEIGHT * aspect / 1.5, 3 * PANEL_HEIGHT))


def perturbation_picture(delta: npt.NDArray[np.float32]) -> Rgb8:
    """A [3, H, W] perturbation amplified to full contrast around grey."""
    scale = float(np.abs(delta).max()) or 1.0
    pic = 0.5 + 0.5 * delta.transpose(1, 2, 0) / scale
    return np.rint(np.clip(pic, 0.0, 1.0) * 255).astype(np.uint8)


def draw_box(image: Image, box: tuple[int, int, int, int] | None, mask=None) -> Rgb8:  # noqa: ANN001
    """The image with a localisation box (and a tinted mask) drawn on it."""
    out = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if mask is not None and mask.any():
        tint = out.copy()
        tint[mask] = (0.5 * tint[mask] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        out = tint
    if box is not None:
        thickness = max(2, round(max(out.shape[:2]) / 200))
        x0, y0, x1, y1 = box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 0, 0), thickness)
    return out
