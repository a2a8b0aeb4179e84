"""``gradtap explain``: explanation maps for images, files and a gallery."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from gradtap.cli.batch import (
    Progress,
    Run,
    finish,
    interruptible,
    model_record,
    sources,
)
from gradtap.cli.config import Config
from gradtap.cli.errors import user_errors
from gradtap.cli.modelref import open_session, resolve_model
from gradtap.cli.outputs import OutDir
from gradtap.cli.shared import engine_options, image_inputs, results_options
from gradtap.cli.spool import Spool
from gradtap.runtime.image.resample import RESAMPLE_MODES
from gradtap.runtime.methods.lrp import LRP_COMPOSITES
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.targets import Each, TargetSpec, class_index, needs_logits, resolve

ALL = "all"
DEFAULT_FORMATS = "overlay,panel"


def parse_methods(values: Sequence[str]) -> tuple[str, ...]:
    """``-m`` values (repeatable, comma lists allowed, ``all``) to method names in order."""
    names: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            chosen = list(METHODS) if name == ALL else [name]
            if name != ALL and name not in METHODS:
                valid = ", ".join([*METHODS, ALL])
                raise click.BadParameter(
                    f"unknown method {name!r}; valid: {valid}", param_hint="-m"
                )
            names += [n for n in chosen if n not in names]
    return tuple(names)


def parse_formats(value: str) -> tuple[str, ...]:
    """``--format`` comma list to format names."""
    from gradtap.cli.commands.explain_run import FORMATS

    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise click.BadParameter(
            f"{value!r}: choose from {', '.join(FORMATS)}", param_hint="--format"
        )
    return names


def parse_target(values: Sequence[str], labels: Sequence[str]) -> TargetSpec:
    """``-t`` values to a target spec, checked against the labels now (usage errors, exit 2)."""
    items: list[int | str] = [int(v) if v.strip().isdigit() else v.strip() for v in values]
    with user_errors("--target"):
        for item in items:
            if not needs_logits(item):
                class_index(item, labels)
            else:  # top-k: k checked against the class count now, not per image
                resolve(item, labels, 1, np.zeros((1, len(labels)), np.float32))
    if not items:
        return None
    return items[0] if len(items) == 1 else Each(items)  # repeated -t: every class on every image


NON_FINITE = ("nan", "inf", "+inf", "-inf", "infinity", "-infinity")


def parse_options(values: Sequence[str], methods: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` values (JSON values, else strings), checked against the methods."""
    from gradtap.cli.commands.explain_run import accepted_options

    valid = accepted_options(methods)
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or key not in valid:
            hint = f"valid for {', '.join(methods)}: {', '.join(sorted(valid)) or 'none'}"
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE; {hint}", param_hint="--set")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
        value = options[key]
        if (isinstance(value, float) and not math.isfinite(value)) or raw.lower() in NON_FINITE:
            raise click.BadParameter(f"{item!r}: not a finite number", param_hint="--set")
    return options


def listed(images: Sequence[str]) -> list[str]:
    """``@FILE`` arguments replaced by the paths in FILE (one a line; blank and # lines skipped)."""
    found: list[str] = []
    for arg in images:
        if not arg.startswith("@"):
            found.append(arg)
            continue
        try:
            lines = Path(arg[1:]).read_text("utf-8").splitlines()
        except OSError as err:
            raise click.BadParameter(f"{arg}: {err.strerror}", param_hint="IMAGES") from None
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return found


def _check_tap(session: Any, tap: str | None) -> None:
    from gradtap.runtime.errors import ModelError

    if tap is not None:
        try:
            session.info.tap(tap)
        except ModelError as err:
            raise click.BadParameter(str(err), param_hint="--tap") from None


@click.command()
@image_inputs
@click.option(
    "-m",
    "--method",
    "methods",
    multiple=True,
    default=("gradcam",),
    show_default=True,
    help=f"Method, repeatable or comma-separated, or '{ALL}': {', '.join(METHODS)}.",
)
@click.option(
    "-t",
    "--target",
    "targets",
    multiple=True,
    metavar="CLASS|top-K",
    help="Class to explain: index, name (any ImageNet synonym) or top-K; repeated, every image "
    "is explained for each class [default: the predicted class].",
)
@click.option("--tap", help="Tap alias for the CAM family [default: the model's default tap].")
@click.option(
    "--lrp-rule",
    type=click.Choice(LRP_COMPOSITES),
    help="LRP composite for -m lrp (the same as --set lrp_rule=...) [default: epsilon_plus].",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option, e.g. --set samples=50 --set baseline=blur (for methods that take it).",
)
@click.option(
    "--format", "formats", default=DEFAULT_FORMATS, help="Outputs: overlay, heatmap, npy, panel."
)
@click.option(
    "-b",
    "--batch-size",
    type=click.IntRange(min=1),
    help="Images per onnxruntime call [default: as many as the model's memory per row fits in "
    "--max-memory, at most 32].",
)
@click.option(
    "--max-side",
    type=click.IntRange(min=0),
    default=1024,
    help="Longest side of pictures (0 = original size).",
)
@click.option(
    "-r", "--recursive", is_flag=True, help="Also take images in subfolders of folder arguments."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Skip images whose outputs in OUT are complete (an interrupted run goes on); "
    "incomplete ones are redone.",
)
@click.option(
    "--pipeline/--serial",
    default=True,
    help="Read and write in threads while onnxruntime computes (same results).",
)
@engine_options
@click.option(
    "--resample",
    type=click.Choice(RESAMPLE_MODES),
    default="area",
    show_default=True,
    help="Resize filter: area (OpenCV) or torchvision (Resize+CenterCrop as torchvision does it).",
)
@results_options("gradtap-out")
def explain(
    cfg: Config,
    images: tuple[str, ...],
    model: str | None,
    methods: tuple[str, ...],
    targets: tuple[str, ...],
    tap: str | None,
    lrp_rule: str | None,
    settings: tuple[str, ...],
    formats: str,
    batch_size: int | None,
    max_side: int,
    recursive: bool,
    resample: str,
    max_pixels: int,
    resume: bool,
    pipeline: bool,
    engine: str,
    ray_address: str | None,
    workers: int,
    worker_cpus: float,
    worker_gpus: float,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Explain images (files, folders, glob patterns or @FILE lists) with one or more methods.

    Writes OUT/<image>/<method>.png (overlay), .heatmap.png, .npy (raw map), .panel.png,
    plus OUT/summary.json and the OUT/index.html gallery.

    \b
    Example:
      gradtap explain cat.jpg -M efficientnet_lite0 -m gradcam -m guided_backprop
      gradtap explain photos/ -M mynet.gradtap.onnx -m all -t top-3 --format overlay,npy
    """
    from gradtap.cli.commands.explain_run import Settings, run_explain

    chosen = parse_methods(methods)
    fmt = parse_formats(formats)
    options = parse_options(settings, chosen)
    if tap is not None:
        options["tap"] = tap
    if lrp_rule is not None:
        options["lrp_rule"] = lrp_rule
    path = resolve_model(model)
    chunking = {"batch_size": batch_size, "chosen": "-b"}
    if batch_size is None:  # from the model's memory per row and the budget
        from gradtap.cli.chunking import auto_chunk

        batch_size, per_row = auto_chunk(path)
        chunking = {"batch_size": batch_size, "chosen": "memory", "row_bytes": per_row}
    session = open_session(cfg, str(path), batch_size=batch_size)
    _check_tap(session, tap)
    target = parse_target(targets, session.info.labels)
    run = Run("explain", model=model_record(session, path))
    spool = Spool()  # the items and groups of a job of any size live on disk, not here
    click.get_current_context().call_on_close(spool.close)
    run.items, run.groups = spool.items, spool.groups  # type: ignore[assignment]
    run.options = {"methods": list(chosen), "target": target, "formats": list(fmt), "set": options}
    run.options["chunks"] = chunking
    outdir = OutDir(out, overwrite=overwrite or resume)
    with user_errors("--out"):
        outdir.check_writable()
    files = sources(listed(images), run, cfg, recursive=recursive)
    settings_ = Settings(
        chosen, target, fmt, options, batch_size, max_side, max_pixels, resample=resample
    )
    if engine == "ray":
        from gradtap.cli.engines.ray_engine import RayOptions, check_ray, run_ray

        check_ray(outdir, resume=resume)
        threads = cfg.threads or max(1, round(worker_cpus))  # actors share the cores
        opts = RayOptions(
            ray_address, workers, str(path), cfg.providers, threads, worker_cpus, worker_gpus
        )
        interruptible(run, lambda: run_ray(files, settings_, outdir, run, opts, cfg))
        finish(cfg, outdir, run, as_json=as_json)
        return
    journal = None
    if resume:
        from gradtap.cli.resume import Journal
        from gradtap.cli.resume import resume as pending

        files, done = pending(out, files, run)
        run.options["resumed"] = done
        if done:
            cfg.note(f"gradtap: note: resuming: {done} image(s) already done in {out}")
        journal = Journal(out, run)
    bar = Progress(cfg, len(files) * len(chosen), "explaining")
    try:
        with user_errors("--set"):  # a bad option is one usage error, not one per image
            interruptible(
                run,
                lambda: run_explain(
                    session,
                    files,
                    settings_,
                    outdir,
                    run,
                    bar,
                    pipelined=pipeline,
                    checkpoint=journal.checkpoint if journal else None,
                ),
            )
    finally:
        bar.close()
    try:
        finish(cfg, outdir, run, as_json=as_json)
    except click.exceptions.Exit:  # summary.json now holds what the journal did
        if journal is not None:
            journal.remove()
        raise
