"""``make demo``: export two models, then explain real photos with the torch-free CLI.

Steps: write scikit-image's sample photos (and a few generated shape images for the custom CNN)
into ``out/demo``; export the custom CNN (``models/smallcnn.pt`` when present, else random
weights, with a warning) and EfficientNet-Lite0 (ImageNet weights) into the model cache; run
``gradtap explain``, ``attack``, ``visualize`` and ``localize`` as separate processes, which
import no torch; link both galleries from ``out/demo/index.html``.

Run ``python -m gradtap.cli.demo --help`` for the options.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from gradtap.cli.gallery import esc, href
from gradtap.cli.outputs import write_text

logger = logging.getLogger(__name__)

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SMALLCNN_CHECKPOINT = Path("models/smallcnn.pt")
ROBUST_CHECKPOINT = Path("models/smallcnn_robust.pt")
EXPLAIN_METHODS = "saliency,guided_backprop,gradcam,guided_gradcam"
FOOL_PHOTO, FOOL_CLASS = "coffee", "goldfish"
VIS_CLASSES = ("goldfish", "flamingo", "espresso")
SHAPE_SAMPLES = 6
SECTIONS = {
    "efficientnet_lite0": "ImageNet photos: saliency, guided backprop, Grad-CAM, Guided Grad-CAM, "
    "FGSM, a fooling image, class visualisations, GrabCut boxes",
    "smallcnn": "the custom CNN on generated shapes: Grad-CAM, guided backprop, saliency, "
    "class visualisations",
    "smallcnn_robust": "the adversarially trained custom CNN on the same shapes: Grad-CAM, "
    "guided backprop, saliency, class visualisations (compare with smallcnn)",
}


def write_photos(folder: Path, names: Sequence[str]) -> list[Path]:
    """scikit-image's sample photos as PNG files (skipped when already there)."""
    import cv2
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.is_file():
            rgb = getattr(data, name)()
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def write_shapes(folder: Path, count: int, size: int = 128) -> list[Path]:
    """Held-out images of the synthetic shapes the custom CNN is trained on."""
    import cv2

    from gradtap.runtime.evaluate.synthetic import CLASS_NAMES, TEST_SEED, make_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        sample = make_sample(index, seed=TEST_SEED, size=size)
        path = folder / f"{index:02d}-{CLASS_NAMES[sample.label]}.png"
        bgr = cv2.cvtColor((sample.image * 255).round().astype("uint8"), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path), bgr)
        paths.append(path)
    return paths


def export_models() -> dict[str, Path]:
    """The augmented custom CNN and EfficientNet-Lite0 in the cache (exported when missing)."""
    try:
        from gradtap.export.models.to_onnx import model_path
    except ModuleNotFoundError as err:
        raise click.ClickException(
            f"the demo exports models and needs {err.name}: run `make setup` or "
            "pip install 'gradtap[export]'"
        ) from None
    weights = str(SMALLCNN_CHECKPOINT) if SMALLCNN_CHECKPOINT.is_file() else "random"
    if weights == "random":
        click.echo(
            f"warning: {SMALLCNN_CHECKPOINT} not found; the custom CNN gets random weights, "
            "so its maps show an untrained network",
            err=True,
        )
    models = {
        "smallcnn": model_path("smallcnn", weights, augmented=True),
        "efficientnet_lite0": model_path("efficientnet_lite0", "IMAGENET1K", augmented=True),
    }
    if ROBUST_CHECKPOINT.is_file():
        models["smallcnn_robust"] = model_path("smallcnn", str(ROBUST_CHECKPOINT), augmented=True)
    return models


def gradtap(*args: str | Path) -> None:
    """Run one torch-free CLI command in its own process; stop the demo if it fails."""
    cmd = [sys.executable, "-m", "gradtap.cli", *map(str, args)]
    click.echo("$ gradtap " + " ".join(map(str, args)), err=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"`gradtap {args[0]}` failed with exit code {done.returncode}")


def run_efficientnet(model: Path, photos: list[Path], out: Path, quick: bool) -> None:
    """Explanations, FGSM, a fooling image, class visualisations and boxes for the photos."""
    common = ["-M", model, "-o", out, "--overwrite"]
    gradtap("explain", *photos, *common, "-m", EXPLAIN_METHODS, "--format", "overlay,heatmap,panel")
    gradtap("attack", *photos, *common, "--eps", "0.01")
    fool = next(p for p in photos if p.stem == FOOL_PHOTO)
    gradtap("attack", fool, *common, "-t", FOOL_CLASS, "--steps", "8" if quick else "60")
    steps = "4" if quick else "150"
    classes = [a for c in VIS_CLASSES for a in ("-c", c)]
    settings = ["--lr", "0.02", "--blur-sigma", "1", "--jitter", "8", "--l2", "0.002"]
    gradtap("visualize", *common, *classes, "--steps", steps, *settings, "--init", "noise")
    gradtap("localize", *photos, *common)


def run_smallcnn(model: Path, shapes: list[Path], out: Path, quick: bool) -> None:
    """Explanations and class visualisations for the custom CNN on its own kind of images."""
    common = ["-M", model, "-o", out, "--overwrite"]
    gradtap("explain", *shapes, *common, "-m", "gradcam,guided_backprop,saliency")
    gradtap(
        "visualize", *common, "-c", "0", "-c", "1", "-c", "3", "--steps", "4" if quick else "100"
    )


def write_index(out: Path, sections: dict[str, str]) -> Path:
    """``out/index.html`` linking the per-model galleries."""
    items = "\n".join(
        f'<li><a href="{href(f"{name}/index.html")}">{esc(name)}</a>: {esc(text)}</li>'
        for name, text in sections.items()
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>gradtap demo</title>'
        '</head><body style="font-family: system-ui, sans-serif; margin: 2em">\n'
        "<h1>gradtap demo</h1>\n<p>Every picture was computed by onnxruntime from one ONNX "
        "explanation graph per model, without torch.</p>\n"
        f"<ul>\n{items}\n</ul>\n</body></html>\n"
    )
    write_text(out / "index.html", page)
    return out / "index.html"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default="out/demo",
    show_default=True,
    help="Demo output folder.",
)
@click.option("--quick", is_flag=True, help="Two photos and a few steps only (for tests).")
def main(out: Path, quick: bool) -> None:
    """Export the custom CNN and EfficientNet-Lite0, then explain real photos into OUT."""
    start = time.perf_counter()
    photos = write_photos(out / "photos", PHOTOS[:2] if quick else PHOTOS)
    shapes = write_shapes(out / "shapes", 2 if quick else SHAPE_SAMPLES)
    models = export_models()
    run_efficientnet(models["efficientnet_lite0"], photos, out / "efficientnet_lite0", quick)
    run_smallcnn(models["smallcnn"], shapes, out / "smallcnn", quick)
    if "smallcnn_robust" in models:  # the same images, the adversarially trained twin
        run_smallcnn(models["smallcnn_robust"], shapes, out / "smallcnn_robust", quick)
    index = write_index(out, {k: v for k, v in SECTIONS.items() if k in models})
    click.echo(f"demo done in {time.perf_counter() - start:.0f} s; open {index}")


if __name__ == "__main__":  # pragma: no cover
    main()
