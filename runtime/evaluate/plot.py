"""Figures of an evaluation, drawn with OpenCV: line charts, the cascade, curves and examples.

Every function returns an RGB uint8 image; :func:`gradtap.runtime.present.overlay.write_image` saves it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.present.overlay import overlay_heatmap, panel
from gradtap.runtime.present.postprocess import normalize

if TYPE_CHECKING:
    from gradtap.runtime.evaluate.result import EvalResult

Rgb8 = npt.NDArray[np.uint8]
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]
Colour = tuple[int, int, int]

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK: Colour = (40, 40, 40)
GRID: Colour = (225, 225, 225)
BASELINE: Colour = (150, 150, 150)
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (20, 20, 20),
)
MARGIN = {"left": 64, "right": 178, "top": 30, "bottom": 46}


def colours(names: Sequence[str]) -> dict[str, Colour]:
    """A fixed colour per name; the ``random`` baseline is grey."""
    out, k = {}, 0
    for name in names:
        if name == "random":
            out[name] = BASELINE
        else:
            out[name] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def _text(img: Rgb8, text: str, org: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(img, text, org, FONT, scale, INK, 1, cv2.LINE_AA)


def _vertical_text(img: Rgb8, text: str, centre: tuple[int, int]) -> None:
    (tw, th), base = cv2.getTextSize(text, FONT, 0.4, 1)
    strip = np.full((th + base + 2, tw + 2, 3), 255, np.uint8)
    _text(strip, text, (1, th + 1))
    strip = np.ascontiguousarray(np.rot90(strip))
    x0, y0 = centre[0] - strip.shape[1] // 2, max(0, centre[1] - strip.shape[0] // 2)
    y1 = min(img.shape[0], y0 + strip.shape[0])
    img[y0:y1, x0 : x0 + strip.shape[1]] = strip[: y1 - y0]


def _ticks(lo: float, hi: float) -> list[float]:
    """Round tick values from ``lo`` to ``hi``: steps of 1, 2, 2.5 or 5 times a power of ten,
    at most seven ticks."""
    span = hi - lo
    if not span > 0:
        return [lo]
    unit = 10.0 ** math.floor(math.log10(span / 5))
    step = next(unit * m for m in (1, 2, 2.5, 5, 10) if span / (unit * m) <= 6)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(
    series: Series,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.0),
    xticks: Sequence[tuple[float, str]] | None = None,
    palette: Mapping[str, Colour] | None = None,
    size: tuple[int, int] = (520, 340),
) -> Rgb8:
    """Lines of ``series`` (name -> (x, y)); NaN values break a line; legend on the right."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = w - MARGIN["right"], h - MARGIN["bottom"]
    xs = [float(v) for x, _ in series.values() for v in x]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1.0
    y0, y1 = ylim

    def px(x: float, y: float) -> tuple[int, int]:
        y = min(max(y, y0), y1)
        return (
            round(left + (x - x0) / (x1 - x0) * (right - left)),
            round(bottom - (y - y0) / (y1 - y0) * (bottom - top)),
        )

    _vertical_text(img, ylabel, (10, (top + bottom) // 2))
    for v in _ticks(y0, y1):
        _, yy = px(x0, v)
        cv2.line(img, (left, yy), (right, yy), GRID, 1)
        label = f"{v:.2f}".rstrip("0").rstrip(".")
        (tw, _), _ = cv2.getTextSize(label, FONT, 0.4, 1)
        _text(img, label, (left - 6 - tw, yy + 4))
    for v, label in xticks or [(t, f"{t:.2g}") for t in _ticks(x0, x1)]:
        xx, _ = px(v, y0)
        cv2.line(img, (xx, bottom), (xx, bottom + 4), INK, 1)
        (tw, _), _ = cv2.getTextSize(label, FONT, 0.4, 1)
        _text(img, label, (xx - tw // 2, bottom + 17))
    cv2.rectangle(img, (left, top), (right, bottom), INK, 1)
    palette = palette or colours(list(series))
    for k, (name, (x, y)) in enumerate(series.items()):
        colour = palette.get(name, PALETTE[k % len(PALETTE)])
        points = [
            (px(a, 0.0 if math.isnan(b) else b), math.isnan(b)) for a, b in zip(x, y, strict=True)
        ]
        for (p, gap), (q, gap2) in zip(points, points[1:], strict=False):
            if not (gap or gap2):
                cv2.line(img, p, q, colour, 2, cv2.LINE_AA)
        if len(points) <= 12:
            for p, gap in points:
                if not gap:
                    cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        ly = top + 8 + 16 * k
        cv2.line(img, (right + 10, ly), (right + 30, ly), colour, 3)
        _text(img, name[:20], (right + 36, ly + 4))
    (tw, _), _ = cv2.getTextSize(title, FONT, 0.5, 1)
    cv2.putText(img, title, ((w - tw) // 2, 20), FONT, 0.5, INK, 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(xlabel, FONT, 0.4, 1)
    _text(img, xlabel, ((left + right - tw) // 2, h - 8))
    return img


def _side_by_side(images: Sequence[Rgb8]) -> Rgb8:
    h = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, h - i.shape[0]), (0, 0), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(padded, axis=1)


def sanity_figure(result: EvalResult) -> Rgb8:
    """Spearman of |map| and SSIM against the cascade depth, one line per method."""
    curves = result.sanity
    depth = curves[0].depth
    n = max(1, len(depth) // 8)
    ticks = [(float(d), str(d)) for d in depth[::n]]
    names = [c.method for c in curves]
    palette = colours([s.method for s in result.scores])
    charts = []
    for key, label in (("spearman", "Spearman rank corr. of |map|"), ("ssim", "SSIM")):
        series = {c.method: (c.depth, getattr(c, key)) for c in curves}
        charts.append(
            line_chart(
                {m: series[m] for m in names},
                title=f"{result.model}: {label}",
                xlabel=f"layers re-initialised from the top (of {_n_layers(result)})",
                ylabel=label,
                ylim=(-0.2 if key == "spearman" else 0.0, 1.0),
                xticks=ticks,
                palette=palette,
            )
        )
    return _side_by_side(charts)


def _n_layers(result: EvalResult) -> str:
    return str(result.sanity[0].depth[-1]) if result.sanity else "?"


def curves_figure(result: EvalResult) -> Rgb8:
    """Mean deletion and insertion curves (target probability against pixels moved)."""
    palette = colours([s.method for s in result.scores])
    charts = []
    for key, what in (("deletion_curve", "deletion"), ("insertion_curve", "insertion")):
        series = {s.method: (s.fractions, getattr(s, key)) for s in result.scores}
        top = max(1e-6, max(float(np.nanmax(v[1])) for v in series.values()))
        charts.append(
            line_chart(
                series,
                title=f"{result.model}: mean {what} curve",
                xlabel="share of pixels " + ("deleted" if what == "deletion" else "inserted"),
                ylabel="target probability",
                ylim=(0.0, min(1.0, math.ceil(top * 10) / 10)),
                palette=palette,
            )
        )
    return _side_by_side(charts)


def examples_figure(result: EvalResult, *, tile: int = 96) -> Rgb8:
    """Each example image with every method's map over it and the ground-truth box in green
    (the random baseline's noise is left out)."""
    ex = result.examples
    rows = []
    for i, image in enumerate(ex.images):
        rgb = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        label = result.labels[int(result.targets[i])]
        tiles = [(label[:16], _boxed(rgb, ex.boxes[i], tile))]
        for m, maps in ex.maps.items():
            if m == "random":
                continue
            heat = normalize(maps[i], outlier_perc=1.0)
            tiles.append((m[:16], _boxed(overlay_heatmap(rgb, heat), ex.boxes[i], tile)))
        title = f"{result.model} on {result.dataset}" if i == 0 else None
        rows.append(panel(tiles, height=tile, title=title))
    width = max(r.shape[1] for r in rows)
    return np.vstack(
        [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    )


def _boxed(rgb: Rgb8, box: npt.NDArray[np.int64], tile: int) -> Rgb8:
    h, w = rgb.shape[:2]
    out = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = (int(v) for v in box)
    sx, sy = tile / w, tile / h
    p, q = (round(x0 * sx), round(y0 * sy)), (round(x1 * sx) - 1, round(y1 * sy) - 1)
    cv2.rectangle(out, p, q, (0, 220, 0), 1)
    return out
