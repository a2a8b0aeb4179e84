"""``gradtap visualize``: class-model visualisation by gradient ascent on class logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from gradtap.cli.batch import (
    Progress,
    Run,
    finish,
    model_record,
)
from gradtap.cli.config import Config
from gradtap.cli.errors import user_errors
from gradtap.cli.inputs import slug
from gradtap.cli.modelref import model_option, open_session, resolve_model
from gradtap.cli.outputs import OutDir
from gradtap.cli.shared import results_options
from gradtap.runtime.methods.visualize import INITS, AscentConfig, Visualization
from gradtap.runtime.present.overlay import panel, write_image
from gradtap.runtime.targets import class_index

GROUP = "class visualisations"
FOLDER = "classes"
_DEFAULTS = AscentConfig()


def _init(value: str, session: Any, max_pixels: int) -> str | np.ndarray:
    """``--init``: a named start, or an image file preprocessed to the model's input."""
    if value in INITS:
        return value
    from gradtap.runtime.errors import GradtapError
    from gradtap.runtime.image.geometry import to_input
    from gradtap.runtime.image.read import load_image

    if not Path(value).is_file():
        raise click.BadParameter(
            f"{value!r} is neither {', '.join(INITS)} nor an image file", param_hint="--init"
        )
    try:
        x, _ = to_input(load_image(value, max_pixels=max_pixels), session.info)
    except GradtapError as err:  # the start image is an option value: a usage error
        raise click.BadParameter(str(err), param_hint="--init") from None
    return x[0].transpose(1, 2, 0)


def _items(vis: Visualization, out: OutDir, names: list[str]) -> list[dict[str, Any]]:
    items = []
    for k, cls in enumerate(vis.target):
        label = vis.labels[int(cls)]
        image, pan = f"{FOLDER}/{names[k]}.png", f"{FOLDER}/{names[k]}.panel.png"
        logit0, logit1, prob1 = vis.logits[k, 0], vis.logits[k, -1], vis.probs[k, -1]
        caption = [f"{label} ({int(cls)})", f"logit {logit0:.2f} -> {logit1:.2f}, p={prob1:.3f}"]
        picture = vis.images[k]
        tile = panel([("\n".join(caption), picture)], height=224)
        out.write_all(
            {
                image: lambda p, img=picture: write_image(p, img),
                pan: lambda p, img=tile: write_image(p, img),
            }
        )
        items.append(
            {
                "key": image,
                "group": GROUP,
                "kind": "visualize",
                "method": "class_visualization",
                "class": int(cls),
                "class_label": label,
                "files": {"image": image, "panel": pan},
                "logit_start": round(float(logit0), 6),
                "logit_end": round(float(logit1), 6),
                "prob_end": round(float(prob1), 6),
                "caption": caption,
            }
        )
    return items


@click.command()
@model_option
@click.option(
    "-t",
    "--target",
    "-c",
    "--class",
    "classes",
    multiple=True,
    required=True,
    metavar="CLASS",
    help="Class index or name; repeatable (all ascend together).",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=_DEFAULTS.steps, help="Gradient ascent steps."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.lr,
    help="Mean absolute pixel change per step.",
)
@click.option(
    "--l2",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=_DEFAULTS.l2,
    help="Decay towards the mean colour per step.",
)
@click.option(
    "--blur-every",
    type=click.IntRange(min=0),
    default=_DEFAULTS.blur_every,
    help="Blur every N steps (0 = never).",
)
@click.option(
    "--blur-sigma",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.blur_sigma,
    help="Blur sigma in pixels.",
)
@click.option(
    "--jitter",
    type=click.IntRange(min=0),
    default=_DEFAULTS.jitter,
    help="Random shift of up to N pixels per step.",
)
@click.option(
    "--init", "init", default="mean", metavar="mean|zeros|noise|IMAGE", help="Start image."
)
@click.option("--seed", type=int, default=0, help="Random seed for jitter and noise.")
@results_options("gradtap-out")
def visualize(
    cfg: Config,
    model: str | None,
    classes: tuple[str, ...],
    steps: int,
    lr: float,
    l2: float,
    blur_every: int,
    blur_sigma: float,
    jitter: int,
    init: str,
    seed: int,
    max_pixels: int,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Synthesise images that a class's logit likes most (class-model visualisation).

    Writes OUT/classes/<index>-<name>.png and a captioned .panel.png per class.

    \b
    Example:
      gradtap visualize -M efficientnet_lite0 -t goldfish -t 130 --steps 200
      gradtap visualize -M mynet.gradtap.onnx -c cat --init noise --jitter 8
    """
    from gradtap.runtime.methods.visualize import class_visualization

    path = resolve_model(model)
    session = open_session(cfg, str(path))
    with user_errors("--target"):
        cls = [class_index(int(c) if c.isdigit() else c, session.info.labels) for c in classes]
    names = [f"{c}-{slug(session.info.labels[c], max_len=40)}" for c in cls]
    start = _init(init, session, max_pixels)  # before anything is created on disk
    outdir = OutDir(out, overwrite=overwrite)
    with user_errors("--out"):
        outdir.check_writable()
        outdir.plan([f"{FOLDER}/{n}{s}" for n in names for s in (".png", ".panel.png")])
    config = AscentConfig(
        steps=steps,
        lr=lr,
        l2=l2,
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        jitter=jitter,
        seed=seed,
    )
    run = Run("visualize", model=model_record(session, path))
    run.options = {
        "classes": cls,
        "init": init,
        **{
            k: getattr(config, k)
            for k in ("steps", "lr", "l2", "blur_every", "blur_sigma", "jitter", "seed")
        },
    }
    bar = Progress(cfg, steps, "ascending")
    try:
        with user_errors():
            vis = class_visualization(
                session, cls, init=start, config=config, callback=lambda *_: bar.update()
            )
    finally:
        bar.close()
    (outdir.root / FOLDER).mkdir(parents=True, exist_ok=True)
    run.items = _items(vis, outdir, names)
    finish(cfg, outdir, run, as_json=as_json)
