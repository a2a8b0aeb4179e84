"""``--model``: a ``.gradtap.onnx`` file, or the name of a model exported into the cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gradtap.cli.config import Config
from gradtap.cli.errors import about, one_line
from gradtap.export.models.catalog import MODEL_NAMES, default_cache_dir

KNOWN_MODELS = MODEL_NAMES
MODEL_ENV = "GRADTAP_MODEL"
AUGMENTED_SUFFIX = ".gradtap.onnx"
logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from gradtap.runtime.session import ExplainSession


def cache_dir() -> Path:
    """Where ``gradtap export`` keeps models when no ``-o`` is given."""
    return default_cache_dir()


def cached_models(name: str) -> list[Path]:
    """Augmented graphs of ``name`` in the cache: trained weights before random, then newest."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{name}-*{AUGMENTED_SUFFIX}") if p.is_file()]
    return sorted(found, key=lambda p: (p.name.startswith(f"{name}-random."), -p.stat().st_mtime))


def resolve_model(value: str | None) -> Path:
    """The model file named by ``--model``.

    Args:
        value: a path to an augmented graph, or a model name exported with ``gradtap export``
            (the newest cached export of that name is used).

    Raises:
        click.UsageError: nothing given, or the file / name cannot be found (exit 2).
    """
    if not value:
        raise click.UsageError(
            f"no model: pass --model FILE{AUGMENTED_SUFFIX} or a name exported with "
            f"`gradtap export NAME` (or set {MODEL_ENV})"
        )
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise click.UsageError(f"--model: {value!r} is not a file")
    if value in KNOWN_MODELS or ("/" not in value and not value.endswith(".onnx")):
        found = cached_models(value)
        if found:
            logger.info("model %s: using %s", value, found[0])
            return found[0]
        raise click.UsageError(
            f"--model: no exported {value!r} in {str(cache_dir())!r}; run `gradtap export "
            f"{value}` first, or pass a {AUGMENTED_SUFFIX} file"
        )
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
        help=f"Augmented model: a {AUGMENTED_SUFFIX} file, or a model name exported with "
        "`gradtap export` (looked up in the cache).",
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
        return ExplainSession(
            path,
            providers=cfg.providers,
            threads=cfg.threads,
            batch_size=batch_size or DEFAULT_BATCH_SIZE,
        )
    except OptionError as err:
        raise click.UsageError(f"--provider/--threads/--batch-size: {one_line(err)}") from None
    except (ModelError, OSError, ValueError) as err:
        raise click.ClickException(about(path, err)) from None
