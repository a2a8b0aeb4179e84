"""User mistakes become one clear line and an exit code, never a traceback.

Exit codes: 0 all good, 1 some inputs failed (or the model/file could not be used), 2 usage,
128 + the signal's number when interrupted: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP.
SIGTERM and SIGHUP are handled exactly like Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from gradtap.cli.outputs import UnwritableError
from gradtap.runtime.errors import GradtapError, OptionError, TargetError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def one_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if empty)."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.strerror:
        where = f"{printable(str(err.filename))}: " if err.filename else ""
        text = f"{where}{err.strerror}"
    return text.splitlines()[0] if text else type(err).__name__


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def printable(text: str) -> str:
    """``text`` with control characters escaped (a newline in a file name cannot split a line)."""
    return text.translate(_CONTROL)


USER_ERRORS: tuple[type[BaseException], ...] = (GradtapError, OSError)
"""What a user can cause and fix: gradtap's own errors (runtime and export) and I/O errors.

Anything else (a ValueError from numpy or onnx, a TypeError) is a bug and keeps its traceback.
"""


@contextmanager
def user_errors(option: str | None = None, *, path: Path | str | None = None) -> Iterator[None]:
    """Turn library errors into click errors.

    Option and target errors, and an unwritable output folder, are usage errors (exit 2, naming
    ``option`` when given); other user-facing errors (bad model or image files, unsupported ops,
    I/O) exit 1 with one line, naming ``path`` when given and the message does not.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (OptionError, TargetError, UnwritableError) as err:
        hint = f"{option}: " if option else ""
        raise click.UsageError(f"{hint}{one_line(err)}") from None
    except USER_ERRORS as err:
        logger.debug("user error", exc_info=True)
        raise click.ClickException(about(path, err) if path else one_line(err)) from None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def interrupt_exit_code(err: BaseException) -> int:
    """128 + the signal's number (130 for Ctrl-C)."""
    return 128 + err.signum if isinstance(err, Terminated) else EXIT_INTERRUPTED


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` (a KeyboardInterrupt) inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _PENDING.clear()
    saved = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGINT, *STOP_SIGNALS)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block ends (so a record is written whole).

    Yields the list of signals that arrived meanwhile.
    """
    if threading.current_thread() is not threading.main_thread():
        yield _PENDING
        return
    saved = defer_signals()
    try:
        yield _PENDING
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


_PENDING: list[int] = []


def defer_signals() -> dict[int, object]:
    """From now on Ctrl-C, SIGTERM and SIGHUP are only noted (see :func:`signals_deferred`);
    returns the handlers they replace. The command group restores them when the command ends."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    stops = (signal.SIGINT, *STOP_SIGNALS)
    return {s: signal.signal(s, lambda n, f: _PENDING.append(n)) for s in stops}


class GradtapGroup(click.Group):
    """The command group: Ctrl-C, SIGTERM or SIGHUP anywhere end with one line and 128 + signal.

    Whatever was being written is abandoned at its temporary name and removed (see
    :mod:`gradtap.runtime.atomic`); commands that process batches record what they finished
    first.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            with signals_as_interrupts():
                return super().invoke(ctx)
        except KeyboardInterrupt as err:
            click.echo(f"gradtap: interrupted{_by(err)}", err=True)
            ctx.exit(interrupt_exit_code(err))


def _by(err: BaseException) -> str:
    return f" ({err.args[0]})" if isinstance(err, Terminated) else ""


def about(path: Path | str, err: BaseException) -> str:
    """'path: message', without repeating the path when the message already names it."""
    message = one_line(err)
    name = str(path)
    if name in message or repr(name) in message or Path(name).name in message:
        return message
    return f"{printable(name)}: {message}"


@dataclass
class Failures:
    """Per-input failures of a batch: each printed as one line on stderr when it happens."""

    items: list[dict[str, str]] = field(default_factory=list)
    repeats: dict[str, int] = field(default_factory=dict)

    def add(self, path: Path | str, err: BaseException | str, *, what: str = "") -> None:
        """Record and print one failure for ``path``."""
        text = err if isinstance(err, str) else about(path, err)
        if isinstance(err, str) and str(path) not in text and repr(str(path)) not in text:
            text = f"{printable(str(path))}: {text}"
        text = printable(text)
        entry = {"input": str(path), "error": text}
        if what:
            entry["step"] = what
        self.items.append(entry)
        said = str(err)
        about_the_file = str(path) in said or Path(str(path)).name in said
        same = "" if about_the_file else _without(text, str(path))
        if same and same in self.repeats:  # an earlier image's failure, not about this file:
            # a model-level problem, printed once
            self.repeats[same] += 1
        else:
            if same:
                self.repeats[same] = 0
            click.echo(f"gradtap: error: {text}", err=True)
        if isinstance(err, BaseException):
            logger.debug("failure details", exc_info=err)

    def report_repeats(self) -> None:
        """One line per failure that repeated on other images (printed once when it happened)."""
        for same, more in self.repeats.items():
            if more:
                noun = "image" if more == 1 else "images"
                click.echo(
                    f"gradtap: error: {more} more {noun} failed the same way ({same}); "
                    "all are listed in summary.json",
                    err=True,
                )

    def __bool__(self) -> bool:
        return bool(self.items)

    def exit_code(self) -> int:
        """1 when anything failed, else 0."""
        return EXIT_FAILED if self.items else EXIT_OK


def _without(text: str, name: str) -> str:
    """A failure's message without the file it is about (to see when failures repeat)."""
    for form in (repr(name), printable(repr(name)), printable(name), name):
        text = text.replace(f"{form}: ", "").replace(form, "<image>")
    return text


def recoverable() -> tuple[type[BaseException], ...]:
    """Errors that fail one input of a batch but let the batch go on."""
    return USER_ERRORS
