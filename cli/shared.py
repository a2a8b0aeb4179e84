"""Option blocks and steps that the image commands (explain, attack, localize, visualize,
evaluate) share: what they take first, what they write, and their per-image loop.

Click lists options in the order their decorators appear, so :func:`image_inputs` goes right
below ``@click.command()`` and :func:`results_options` right above the function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from gradtap.cli.batch import Progress, Run, Source, attempt, interruptible, max_pixels_option
from gradtap.cli.batch import output_options as _output_options
from gradtap.cli.config import Config
from gradtap.cli.errors import user_errors
from gradtap.cli.modelref import model_option
from gradtap.cli.outputs import OutDir

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def image_inputs(func: Callable[..., Any]) -> Callable[..., Any]:
    """``IMAGES...`` (files, folders, globs) and ``-M/--model``."""
    return click.argument("images", nargs=-1, metavar="IMAGES...")(model_option(func))


def results_options(
    default_out: str = "gradtap-out",
    *,
    images: bool = True,
    out_help: str | None = None,
    json_help: str | None = None,
) -> Decorator:
    """``--max-pixels``/``--max-memory`` (when the command reads ``images``), ``-o/--out``,
    ``--overwrite`` and ``--json``, then the :class:`Config` as the first argument."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = _output_options(default_out, out_help=out_help, json_help=json_help)(
            click.pass_obj(func)
        )
        return max_pixels_option(func) if images else func

    return decorate


def engine_options(func: Any) -> Any:
    """``--engine``, ``--ray-address`` and ``--workers``: where a large batch runs."""
    func = click.option(
        "--worker-gpus",
        type=click.FloatRange(min=0),
        default=0.0,
        help="Ray engine: GPUs per actor (e.g. 1 with --provider cuda).",
    )(func)
    func = click.option(
        "--worker-cpus",
        type=click.FloatRange(min=0.01),
        default=1.0,
        show_default=True,
        help="Ray engine: CPUs per actor, also its onnxruntime threads unless --threads is given.",
    )(func)
    func = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Ray engine: explaining actors (each holds one model session).",
    )(func)
    func = click.option(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray engine: join this cluster (e.g. ray://head:10001 or auto) "
        "[default: start a local Ray instance].",
    )(func)
    return click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: this process; ray: Ray Data over a local instance or a cluster "
        "(pip install 'gradtap[ray]').",
    )(func)


def class_option(value: str | None, labels: Sequence[str]) -> int | None:
    """A ``-t/--target CLASS`` value (index or name) to a class index; a usage error if unknown."""
    from gradtap.runtime.targets import class_index

    if value is None:
        return None
    with user_errors("--target"):
        return class_index(int(value) if value.isdigit() else value, labels)


def writable(out: Path, *, overwrite: bool) -> OutDir:
    """The output folder, created and checked writable (a usage error if not)."""
    outdir = OutDir(out, overwrite=overwrite)
    with user_errors("--out"):
        outdir.check_writable()
    return outdir


def each_image(
    cfg: Config, run: Run, files: Sequence[Source], label: str, what: str,
    one: Callable[[Source], Any],
) -> None:  # fmt: skip
    """``one(src)`` for every image with a progress bar; a failing image is recorded in ``run``,
    Ctrl-C stops the loop (and ``run`` records it)."""
    bar = Progress(cfg, len(files), label)

    def work() -> None:
        for src in files:
            attempt(run, src.path, lambda s=src: one(s), what=what)
            bar.update()

    try:
        interruptible(run, work)
    finally:
        bar.close()
