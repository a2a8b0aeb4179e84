"""The option blocks the image commands share (cli/shared.py): the same options everywhere."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from gradtap.cli.shared import class_option

IMAGE_COMMANDS = ("explain", "attack", "localize")
SHARED = ("images", "model", "max_pixels", "max_memory", "out", "overwrite", "as_json")


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params}


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_image_commands_take_the_same_shared_options_in_the_same_places(command: str) -> None:
    params = _params(command)
    reference = _params("explain")
    for name in SHARED:
        mine, theirs = params[name], reference[name]
        assert (mine.opts, mine.secondary_opts, mine.default) == (
            theirs.opts,
            theirs.secondary_opts,
            theirs.default,
        )
        assert getattr(mine, "help", None) == getattr(theirs, "help", None)
    names = [p.name for p in cli.commands[command].params]
    assert names[:2] == ["images", "model"]  # what the command takes first ...
    assert names[-5:] == ["max_pixels", "max_memory", "out", "overwrite", "as_json"]  # ... last


def test_evaluate_keeps_its_own_output_help_and_no_image_limits() -> None:
    params = _params("evaluate")
    assert "max_pixels" not in params and "images" not in params
    assert params["out"].default == "gradtap-eval"
    assert "evaluation.md" in params["out"].help
    assert params["as_json"].help == "Print the JSON record on stdout."


def test_class_option_takes_an_index_or_a_name_and_refuses_others_as_usage_errors() -> None:
    labels = ("cat", "dog", "tabby cat")
    assert class_option(None, labels) is None
    assert class_option("2", labels) == 2
    assert class_option("dog", labels) == 1

    @click.command()
    def bad() -> None:
        class_option("zebra", labels)

    result = CliRunner().invoke(bad)
    assert result.exit_code == 2 and "--target" in result.output
