"""Pieces shared by the commands that read images and write results."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt

from gradtap.cli.config import Config
from gradtap.cli.errors import (
    EXIT_FAILED,
    Failures,
    Terminated,
    defer_signals,
    interrupt_exit_code,
    one_line,
    printable,
    recoverable,
    signals_deferred,
)
from gradtap.cli.inputs import expand, unique_stems
from gradtap.cli.outputs import GALLERY, SUMMARY, OutDir, merge_summary
from gradtap.runtime.image.read import DEFAULT_MAX_PIXELS, default_max_memory, set_max_memory
from gradtap.runtime.targets import probabilities

Array = npt.NDArray[np.float32]
OUT_DIR = click.Path(file_okay=False, path_type=Path)


def output_options(
    default_out: str, *, out_help: str | None = None, json_help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out``, ``--overwrite`` and ``--json``, shared by every command that writes results."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option(
            "--json",
            "as_json",
            is_flag=True,
            help=json_help or "Print a JSON summary of this run on stdout.",
        )(func)
        func = click.option("--overwrite", is_flag=True, help="Replace existing output files.")(
            func
        )
        return click.option(
            "-o",
            "--out",
            type=OUT_DIR,
            default=default_out,
            show_default=True,
            help=out_help or "Output folder (summary.json and index.html gallery inside).",
        )(func)

    return decorate


def max_pixels_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-pixels`` and ``--max-memory``: decompression-bomb limits, checked from the header."""
    func = click.option(
        "--max-memory",
        type=BYTES,
        default=None,
        expose_value=False,
        callback=_set_max_memory,
        metavar="BYTES",
        help="Refuse images whose decoding needs more memory (e.g. 512M, 2G; estimated from the "
        f"header before decoding). Default: an eighth of this machine's memory, "
        f"{default_max_memory() >> 20} MiB here.",
    )(func)
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="Refuse images of more than N pixels (width x height), read from the file's header "
        "before anything is decoded.",
    )(func)


class FiniteRange(click.FloatRange):
    """A float range that also refuses NaN (which passes every comparison-based range check)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class _Bytes(click.ParamType):
    name = "bytes"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in self._UNITS and not text[-1:].isdigit() else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 512M, 2G)", param, ctx)
        if not number > 0 or number * self._UNITS[unit] > 1 << 50:
            self.fail(f"{value!r} must be a positive size (e.g. 512M, 2G)", param, ctx)
        return int(number * self._UNITS[unit])


BYTES = _Bytes()


def _set_max_memory(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    set_max_memory(default_max_memory() if value is None else value)


@dataclass
class Run:
    """What one command did: written into summary.json and printed with --json."""

    command: str
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    failures: Failures = field(default_factory=Failures)
    skipped: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    exit_on_interrupt: int = 130
    interrupted_by: str = ""
    started: float = field(default_factory=time.time)

    def record(self) -> dict[str, Any]:
        """The JSON-ready run record."""
        return {
            "command": self.command,
            "model": self.model,
            "options": self.options,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 3),
            "groups": self.groups,
            "items": self.items,
            "failures": self.failures.items,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            **({"signal": self.interrupted_by} if self.interrupted_by else {}),
        }


def model_record(session: Any, path: str | Path) -> dict[str, Any]:
    """The model part of a run record."""
    info = session.info
    return {
        "name": info.name,
        "file": str(path),
        "weights": info.weights,
        "provider": session.provider,
        "classes": info.num_classes,
    }


def top_k(
    logits: Array, labels: Sequence[str], k: int = 5, *, head: str | None = None
) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` most probable classes with their probabilities (``head`` as in
    ``ModelInfo.head``: per-class sigmoids for a multi-label head)."""
    probs = probabilities(logits, head)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [{"class": int(c), "label": labels[c], "prob": round(float(p[c]), 6)} for c in row]
        for p, row in zip(probs, order, strict=True)
    ]


@dataclass(frozen=True)
class Source:
    """One input image: its path and the name of its output folder."""

    path: Path
    stem: str


def sources(
    images: Sequence[str], run: Run, cfg: Config, *, recursive: bool = False
) -> list[Source]:
    """Expand image arguments; arguments that name nothing are failures of the run.

    Entries of folders and patterns that are not image files are skipped: one note line on
    stderr names them (the first few), and the run record lists them all.

    Raises:
        click.UsageError: no image arguments at all.
    """
    if not images:
        raise click.UsageError("give at least one image file, folder or glob pattern")
    expanded = expand(images, recursive=recursive)
    for arg, problem in expanded.problems:
        run.failures.add(arg, problem)
    run.skipped += [{"input": path, "reason": why} for path, why in expanded.skipped]
    if expanded.skipped:
        cfg.note(skipped_note(expanded.skipped))
    return [Source(p, s) for p, s in zip(expanded.files, unique_stems(expanded.files), strict=True)]


def skipped_note(skipped: Sequence[tuple[str, str]], shown: int = 5) -> str:
    """One line naming the skipped entries (the first ``shown``) and why."""
    names = [f"{printable(path)}: {why}" for path, why in skipped[:shown]]
    more = f"; and {len(skipped) - shown} more, see summary.json" if len(skipped) > shown else ""
    return f"gradtap: note: skipped {len(skipped)} entries: {'; '.join(names)}{more}"


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def attempt(run: Run, path: Path | str, func: Callable[[], Any], *, what: str = "") -> Any:
    """``func()``, or ``None`` after recording a failure for ``path`` if it raised a user error."""
    try:
        return func()
    except recoverable() as err:
        run.failures.add(path, err, what=what)
        return None


def finish(cfg: Config, out: OutDir, run: Run, *, as_json: bool) -> None:
    """Merge the run into summary.json, rebuild the gallery, report, exit 0, 1 or 128 + signal.

    summary.json is written whenever something happened (results, failures or an interruption),
    so every failure of a batch is on record; an interrupted run keeps the results it finished.
    """
    kept = True
    with signals_deferred() as pending:
        if pending and not run.interrupted:  # arrived after the batch, before this record
            run.interrupted, run.exit_on_interrupt = True, 128 + pending[0]
            run.interrupted_by = signal.Signals(pending[0]).name
        run.failures.report_repeats()
        record = run.record()
        if run.items or run.failures or run.interrupted or (out.root / SUMMARY).exists():
            kept = _record(out, record)
    if pending and not run.interrupted:  # arrived while the record was written: it is whole
        run.interrupted, run.exit_on_interrupt = True, 128 + pending[0]
    if as_json:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False, default=_materialise))
    n = len(run.items)
    if run.interrupted:
        where = f"{out.root} (summary.json)" if kept else str(out.root)
        click.echo(
            f"gradtap: interrupted{run.interrupted_by and f' ({run.interrupted_by})'}; "
            f"{n} result(s) kept in {where}",
            err=True,
        )
        click.get_current_context().exit(run.exit_on_interrupt)
    if not kept:
        click.get_current_context().exit(EXIT_FAILED)
    if not as_json:
        failed = f", {len(run.failures.items)} failed" if run.failures else ""
        cfg.note(f"{n} result(s) in {out.root}{failed}")
        if run.items:
            click.echo(str(out.root / GALLERY))
    click.get_current_context().exit(run.failures.exit_code())


def _record(out: OutDir, record: dict[str, Any]) -> bool:
    """Merge the run into summary.json and rebuild the gallery; one error line if that fails."""
    from gradtap.cli.gallery import write_gallery

    def gallery(summary: dict[str, Any]) -> None:
        try:
            write_gallery(out.root, summary)
        except OSError as err:
            click.echo(f"gradtap: error: cannot write the gallery: {one_line(err)}", err=True)

    try:
        merge_summary(out.root, record, then=gallery, result=False)
    except OSError as err:
        click.echo(f"gradtap: error: cannot record this run: {one_line(err)}", err=True)
        return False
    return True


def _materialise(value: Any) -> Any:
    """Spooled items and groups (cli/spool.py) as a JSON list and object, for --json."""
    return dict(value.items()) if hasattr(value, "items") else list(value)


def interruptible(run: Run, work: Callable[[], None]) -> None:
    """Run a batch; Ctrl-C, SIGTERM or SIGHUP stop it, and ``run`` records the interruption."""
    try:
        work()
    except KeyboardInterrupt as err:
        run.interrupted = True
        run.exit_on_interrupt = interrupt_exit_code(err)
        run.interrupted_by = err.args[0] if isinstance(err, Terminated) else ""
    finally:
        defer_signals()  # a signal from here on is noted, and :func:`finish` records it


class Progress:
    """A progress bar on stderr when interactive and not -q; silent otherwise."""

    def __init__(self, cfg: Config, total: int, label: str) -> None:
        self._bar = None
        if cfg.show_progress() and total > 1:
            self._bar = click.progressbar(
                length=total, label=label, file=click.get_text_stream("stderr")
            )
            self._bar.__enter__()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
