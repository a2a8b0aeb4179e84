"""``--model``: a ``.gradtap.onnx`` file, or the name of a model exported into the cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gradtap.cli.config import Config
from gradtap.cli.errors import about, one_line
from gradtap.runtime import catalog
from gradtap.runtime.catalog import AUGMENTED_SUFFIX, MODEL_NAMES

KNOWN_MODELS = MODEL_NAMES
MODEL_ENV = "GRADTAP_MODEL"
logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gradtap.runtime.session import ExplainSession


def cache_dir() -> Path:
    """Where ``gradtap export`` keeps models when no ``-o`` is given."""
    return catalog.default_cache_dir()


def resolve_model(value: str | None) -> Path:
    """The model file named by ``--model``.

    Args:
        value: a path to an augmented graph, or a model name: an export in the cache
            (``gradtap export NAME``) or a packaged model (see ``gradtap.runtime.catalog``).

    Raises:
        click.UsageError: nothing given, or the file / name cannot be found (exit 2).
    """
    if not value:
        raise click.UsageError(
            f"no model: pass --model FILE{AUGMENTED_SUFFIX} or a model name such as smallcnn "
            f"(or set {MODEL_ENV})"
        )
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.exists():  # a folder, a pipe or a device: say which
        from gradtap.runtime.errors import ModelError
        from gradtap.runtime.modelfile import check_model_file

        try:
            check_model_file(path)
        except ModelError as err:
            raise click.UsageError(f"--model: {err}") from None
        raise click.UsageError(f"--model: {value!r} is not a file")
    if value in KNOWN_MODELS or ("/" not in value and not value.endswith(".onnx")):
        from gradtap.runtime.errors import ModelError

        try:
            found = catalog.resolve_name(value)
        except ModelError as err:
            raise click.UsageError(f"--model: {err}") from None
        logger.info("model %s: using %s", value, found)
        return found
    raise click.UsageError(f"--model: file {value!r} does not exist")


def model_option(func):  # noqa: ANN001, ANN201
    """The ``-M/--model`` option shared by the commands that run a model."""
    return click.option(
        "-M",
        "--model",
        "model",
        envvar=MODEL_ENV,
        show_envvar=True,
        metavar="FILE|NAME",
        help=f"Explanation graph: a {AUGMENTED_SUFFIX} file, or a model name (an export in the "
        "cache, or a packaged model such as smallcnn).",
    )(func)


def open_session(
    cfg: Config, value: str | None, *, batch_size: int | None = None
) -> ExplainSession:
    """Resolve ``--model`` and load it with the global provider and thread settings.

    Raises:
        click.UsageError: bad --model, --provider or --threads (exit 2).
        click.ClickException: the file is not a usable augmented model (exit 1, one line).
    """
    from gradtap.runtime.errors import ModelError, OptionError
    from gradtap.runtime.session import DEFAULT_BATCH_SIZE, ExplainSession

    path = resolve_model(value)
    try:
        session = ExplainSession(
            path,
            providers=cfg.providers,
            threads=cfg.threads,
            batch_size=batch_size or DEFAULT_BATCH_SIZE,
        )
    except OptionError as err:
        raise click.UsageError(f"--provider/--threads/--batch-size: {one_line(err)}") from None
    except (ModelError, OSError, ValueError) as err:
        raise click.ClickException(about(path, err)) from None
    warn_if_random(cfg, session)
    return session


def warn_if_random(cfg: Config, session: ExplainSession) -> None:
    """One visible warning on stderr (even without -v) when the model's weights are random."""
    if catalog.is_random(session.info.weights) and not cfg.quiet:
        message = catalog.random_weights_warning(session.info.name)
        click.secho(f"gradtap: warning: {message}", err=True, fg="yellow")
