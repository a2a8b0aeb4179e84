"""One error vocabulary: gradtap's errors and I/O errors are one line; anything else is a bug."""

from __future__ import annotations

import click
import pytest

from gradtap.cli.errors import recoverable, user_errors
from gradtap.export.graph.augment import augment
from gradtap.runtime.errors import GradtapError, GraphError, OptionError, UnsupportedOpsError
from tests.graphs import one_node_model


def test_gradtap_and_os_errors_become_one_line() -> None:
    with pytest.raises(click.ClickException, match="^bad graph$"):
        with user_errors():
            raise GraphError("bad graph\nsecond line")
    with pytest.raises(click.ClickException, match="x.onnx: No such file"):
        with user_errors():
            raise FileNotFoundError(2, "No such file or directory", "x.onnx")


def test_option_errors_are_usage_errors_naming_the_option() -> None:
    with pytest.raises(click.UsageError, match="^--eps: eps must be > 0$"):
        with user_errors("--eps"):
            raise OptionError("eps must be > 0")


@pytest.mark.parametrize("bug", [ValueError("numpy said so"), TypeError("wrong call")])
def test_other_exceptions_are_bugs_and_keep_their_traceback(bug: Exception) -> None:
    with pytest.raises(type(bug)):
        with user_errors():
            raise bug
    assert not isinstance(bug, recoverable())


def test_export_errors_are_gradtap_errors() -> None:
    model = one_node_model("Relu", [1, 3])
    with pytest.raises(GradtapError, match="must be \\[N, 3, H, W\\]"):  # not an image input
        augment(model)
    assert issubclass(UnsupportedOpsError, GraphError)
