"""User mistakes become one clear line and an exit code, never a traceback.

Exit codes: 0 all good, 1 some inputs failed (or the model/file could not be used), 2 usage,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
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
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror}"
    return text.splitlines()[0] if text else type(err).__name__


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


class GradtapGroup(click.Group):
    """The command group: Ctrl-C anywhere ends with one line and exit code 130.

    Whatever was being written is abandoned at its temporary name and removed (see
    :mod:`gradtap.cli.outputs`); commands that process batches record what they finished first.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("gradtap: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def about(path: Path | str, err: BaseException) -> str:
    """'path: message', without repeating the path when the message already names it."""
    message = one_line(err)
    name = str(path)
    return message if name in message or Path(name).name in message else f"{name}: {message}"


@dataclass
class Failures:
    """Per-input failures of a batch: each printed as one line on stderr when it happens."""

    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, path: Path | str, err: BaseException | str, *, what: str = "") -> None:
        """Record and print one failure for ``path``."""
        text = err if isinstance(err, str) else about(path, err)
        if isinstance(err, str) and str(path) not in text:
            text = f"{path}: {text}"
        entry = {"input": str(path), "error": text}
        if what:
            entry["step"] = what
        self.items.append(entry)
        click.echo(f"gradtap: error: {text}", err=True)
        if isinstance(err, BaseException):
            logger.debug("failure details", exc_info=err)

    def __bool__(self) -> bool:
        return bool(self.items)

    def exit_code(self) -> int:
        """1 when anything failed, else 0."""
        return EXIT_FAILED if self.items else EXIT_OK


def recoverable() -> tuple[type[BaseException], ...]:
    """Errors that fail one input of a batch but let the batch go on."""
    return USER_ERRORS
