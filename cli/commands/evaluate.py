"""``gradtap evaluate``: score the explanation methods against ground truth and the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from gradtap.cli.config import Config
from gradtap.cli.errors import user_errors
from gradtap.cli.modelref import model_option, open_session
from gradtap.cli.outputs import OutDir
from gradtap.cli.shared import engine_options, results_options
from gradtap.runtime.evaluate.checks import ChecksConfig
from gradtap.runtime.evaluate.data import DATASETS, load_set
from gradtap.runtime.evaluate.invariance import DEFAULT_SHIFT
from gradtap.runtime.evaluate.maps import MAP_METHODS, MapSettings
from gradtap.runtime.evaluate.metrics import ZHANG_TOLERANCE
from gradtap.runtime.evaluate.report import FILES, write_report

EVAL_BATCH = 64


def _methods(values: tuple[str, ...]) -> tuple[str, ...]:
    """``-m/--method``: repeatable and/or comma-separated; default every method."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in MAP_METHODS]
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; valid: {', '.join(MAP_METHODS)}", param_hint="-m/--method"
        )
    return tuple(dict.fromkeys(names)) or MAP_METHODS


class _Reporter:
    """Progress lines on stderr: one per finished method and per cascade depth."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.start = cfg, time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == total or stage == "sanity":
            what = "cascade depth" if stage == "sanity" else "images"
            elapsed = time.perf_counter() - self.start
            self.cfg.note(f"evaluate: {stage} {done}/{total} {what} ({elapsed:.0f} s)")


@click.command(name="evaluate")
@model_option
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default="synthetic",
    help="synthetic: generated shapes with exact masks (a model trained on them); composites: "
    "photos pasted onto backgrounds (ImageNet-1k models; needs scikit-image).",
)
@click.option(
    "-m",
    "--method",
    "--methods",
    "methods",
    multiple=True,
    metavar="NAMES",
    help=f"Methods, comma-separated or repeated [default: all: {', '.join(MAP_METHODS)}].",
)
@click.option("-n", "--n-images", type=click.IntRange(min=1), default=50, help="Images to score.")
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=32,
    help="Stages of the deletion and insertion curves.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=16,
    help="SmoothGrad samples and Integrated Gradients points.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Pointing-game tolerance in pixels (0: the maximum must lie on the object).",
)
@click.option(
    "--wide-tolerance",
    type=click.FloatRange(min=0),
    default=ZHANG_TOLERANCE,
    show_default=True,
    help="Tolerance of the second pointing game reported beside it (Zhang et al.'s 15 px).",
)
@click.option(
    "--fill-holes/--exact-holes",
    default=True,
    show_default=True,
    help="Pointing games hit the object's filled outline (a peak in a ring's hole is a hit), "
    "or only its exact mask.",
)
@click.option(
    "--check-images",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Images (the first ones) for the trust checks: input invariance, fragility and the "
    "peers' metrics (ROAD, average drop, infidelity, max-sensitivity); 0 = none.",
)
@click.option(
    "--shift",
    type=float,
    default=DEFAULT_SHIFT,
    show_default=True,
    help="Input shift of the invariance check's twin model (pixel units).",
)
@click.option(
    "--sanity/--no-sanity", default=True, help="Run the model-randomisation sanity check."
)
@click.option(
    "--sanity-images",
    type=click.IntRange(min=1),
    default=8,
    help="Images used by the sanity check (the first ones).",
)
@click.option(
    "--sanity-steps",
    type=click.IntRange(min=0),
    default=8,
    help="Cascade depths evaluated, from the top layer to all layers (0 = every layer).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), help="Dataset seed [default: the held-out one]."
)
@engine_options
@results_options(
    "gradtap-eval",
    images=False,
    out_help="Output folder: evaluation.md, evaluation.json and PNG plots.",
    json_help="Print the JSON record on stdout.",
)
def evaluate_cmd(
    cfg: Config,
    model: str | None,
    dataset: str,
    methods: tuple[str, ...],
    n_images: int,
    steps: int,
    samples: int,
    tolerance: float,
    wide_tolerance: float,
    fill_holes: bool,
    check_images: int,
    shift: float,
    sanity: bool,
    sanity_images: int,
    sanity_steps: int,
    seed: int | None,
    engine: str,
    ray_address: str | None,
    workers: int,
    worker_cpus: float,
    worker_gpus: float,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Score explanation methods: pointing games, deletion/insertion AUC, GrabCut IoU and the
    model-randomisation sanity check.

    \b
    Example:
      gradtap evaluate -M models/smallcnn.gradtap.onnx --dataset synthetic -n 200
      gradtap evaluate -M efficientnet_lite0 --dataset composites -n 40 --out eval/
      gradtap evaluate -M smallcnn -m saliency,gradcam,random -n 10 --no-sanity
    """
    from gradtap.runtime.evaluate.run import EvalConfig, evaluate  # onnx: the randomisation

    config = EvalConfig(
        methods=_methods(methods),
        curve_steps=steps,
        tolerance=tolerance,
        wide_tolerance=wide_tolerance,
        fill_holes=fill_holes,
        maps=MapSettings(samples=samples),
        sanity=sanity,
        sanity_images=sanity_images,
        sanity_steps=sanity_steps,
        checks=ChecksConfig(images=check_images, shift=shift),
    )
    outdir = OutDir(out, overwrite=overwrite)
    with user_errors("--out"):
        outdir.plan(list(FILES.values()))
        outdir.check_writable()
    session = open_session(cfg, model, batch_size=EVAL_BATCH)
    with user_errors("--dataset"):
        data = load_set(dataset, session.info, 1 if engine == "ray" else n_images, seed=seed)
    if engine == "ray":
        from gradtap.cli.engines.ray_evaluate import evaluate_on_ray

        evaluate_on_ray(cfg, session, model, dataset, n_images, seed, config, outdir, as_json,
                        (ray_address, workers, worker_cpus, worker_gpus))  # fmt: skip
        return
    cfg.note(f"evaluate: {session.info.name} on {data.name}, {len(data)} images")
    with user_errors():
        result = evaluate(session, data, config, progress=_Reporter(cfg))
        written = write_report(result, out)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, ensure_ascii=False))
    cfg.note(f"evaluate: done in {result.seconds:.0f} s; wrote {len(written)} files")
    click.echo(str(written["markdown"]), err=as_json)
