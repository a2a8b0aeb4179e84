"""Shared fixtures and CLI helpers; Hypothesis runs derandomised in CI so a failure reproduces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def invoke(*args: str | Path, catch_exceptions: bool = True) -> Result:
    """Run the ``gradtap`` command group in-process with string arguments."""
    from gradtap.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch_exceptions)


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GRADTAP_MODEL`` from the developer's shell never leaks into a test."""
    monkeypatch.delenv("GRADTAP_MODEL", raising=False)
