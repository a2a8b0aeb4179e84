"""``gradtap localize``: object boxes by GrabCut seeded from an explanation map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gradtap.cli.batch import Run, Source, finish, model_record, sources, top_k
from gradtap.cli.config import Config
from gradtap.cli.modelref import open_session, resolve_model
from gradtap.cli.outputs import OutDir
from gradtap.cli.shared import class_option, each_image, image_inputs, results_options, writable
from gradtap.runtime.image.geometry import to_input
from gradtap.runtime.image.read import load_image
from gradtap.runtime.methods.localize import grabcut
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.present.overlay import colorize, panel, write_image
from gradtap.runtime.present.pictures import draw_box, for_display
from gradtap.runtime.present.postprocess import heatmap
from gradtap.runtime.session import ExplainSession

TAG = "localize"


def _scale_box(
    box: tuple[int, int, int, int] | None, shown: tuple[int, int], original: tuple[int, int]
) -> list[int] | None:
    """A box on the display image in original-image pixels (x0, y0, x1, y1; x1, y1 exclusive)."""
    if box is None:
        return None
    sy, sx = original[0] / shown[0], original[1] / shown[1]
    x0, y0, x1, y1 = box
    return [
        round(x0 * sx),
        round(y0 * sy),
        min(original[1], round(x1 * sx)),
        min(original[0], round(y1 * sy)),
    ]


def _one(session: ExplainSession, src: Source, opts: dict[str, Any], out: OutDir, run: Run) -> None:
    names = {"image": f"{src.stem}/{TAG}.png", "panel": f"{src.stem}/{TAG}.panel.png"}
    out.plan(list(names.values()))
    rgb = load_image(src.path, max_pixels=opts["max_pixels"])
    x, geometry = to_input(rgb, session.info)
    image, shown = for_display(rgb, geometry, opts["max_side"])
    expl = METHODS[opts["method"]](session, x, opts["target"])
    heat = heatmap(expl.maps[0], shown, outlier_perc=0)
    loc = grabcut(
        image,
        heat,
        fg_quantile=opts["fg_quantile"],
        bg_quantile=opts["bg_quantile"],
        iterations=opts["iterations"],
    )
    box = _scale_box(loc.box, shown.original_size, geometry.original_size)
    target = int(expl.target[0])
    label = f"{expl.labels[target]} ({target})"
    drawn = draw_box(image, loc.box, loc.mask)
    shown_map = colorize(heatmap(expl.maps[0], shown))  # percentile-normalised for the eye
    tiles = [("input", image), (f"{opts['method']} map", shown_map), (f"box {box}", drawn)]
    pan = panel(tiles, title=f"GrabCut localisation of {label} - {src.stem}")
    out.write_all(
        {
            names["image"]: lambda p: write_image(p, drawn),
            names["panel"]: lambda p: write_image(p, pan),
        }
    )
    run.groups[src.stem] = {
        "source": str(src.path),
        "predictions": top_k(expl.logits[:1], expl.labels, head=expl.head)[0],
    }
    run.items.append(
        {
            "key": names["image"],
            "group": src.stem,
            "kind": "localize",
            "method": opts["method"],
            "target": target,
            "target_label": expl.labels[target],
            "box": box,
            "box_format": "x0, y0, x1, y1 in original-image pixels (x1, y1 exclusive)",
            "image_size": list(geometry.original_size),
            "files": names,
            "caption": [f"{TAG}: {label}", f"box {box}"],
        }
    )


@click.command()
@image_inputs
@click.option(
    "-t",
    "--target",
    metavar="CLASS",
    help="Class to localise (index or name) [default: the predicted class].",
)
@click.option(
    "-m",
    "--method",
    type=click.Choice(sorted(METHODS)),
    default="saliency",
    help="Map that seeds GrabCut.",
)
@click.option(
    "--fg-quantile",
    type=click.FloatRange(0, 1),
    default=0.95,
    help="Map quantile above which pixels are certain foreground.",
)
@click.option(
    "--bg-quantile",
    type=click.FloatRange(0, 1),
    default=0.30,
    help="Map quantile below which pixels are certain background.",
)
@click.option("--iterations", type=click.IntRange(min=1), default=5, help="GrabCut iterations.")
@click.option(
    "--max-side", type=click.IntRange(min=16), default=512, help="Longest side GrabCut works at."
)
@results_options("gradtap-out")
def localize(
    cfg: Config,
    images: tuple[str, ...],
    model: str | None,
    target: str | None,
    method: str,
    fg_quantile: float,
    bg_quantile: float,
    iterations: int,
    max_side: int,
    max_pixels: int,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Localise the object of a class with GrabCut seeded from its explanation map.

    Writes OUT/<image>/localize.png (box and mask drawn) and .panel.png; the boxes, in
    original-image pixels, are in summary.json and the --json output.

    \b
    Example:
      gradtap localize photos/*.jpg -M efficientnet_lite0
      gradtap localize cat.jpg -M efficientnet_lite0 --method gradcam --json
    """
    if not bg_quantile < fg_quantile:
        raise click.BadParameter("must be below --fg-quantile", param_hint="--bg-quantile")
    path = resolve_model(model)
    session = open_session(cfg, str(path))
    cls = class_option(target, session.info.labels)
    run = Run("localize", model=model_record(session, path))
    opts = {
        "target": cls,
        "method": method,
        "fg_quantile": fg_quantile,
        "bg_quantile": bg_quantile,
        "iterations": iterations,
        "max_side": max_side,
        "max_pixels": max_pixels,
    }
    run.options = dict(opts)
    outdir = writable(out, overwrite=overwrite)
    files = sources(images, run, cfg)
    each_image(cfg, run, files, "localizing", TAG, lambda s: _one(session, s, opts, outdir, run))
    finish(cfg, outdir, run, as_json=as_json)
