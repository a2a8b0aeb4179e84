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
