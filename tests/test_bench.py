"""The benchmark's smoke run: it runs and prints its tables. Numbers are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--threads", "1"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, out.read_text(encoding="utf-8")


def test_smoke_prints_a_row_per_method(smoke_report: tuple[str, str]) -> None:
    from bench import config

    stdout, _ = smoke_report
    os.environ[config.SMOKE_ENV] = "1"
    try:
        titles = config.titles()
    finally:
        del os.environ[config.SMOKE_ENV]
    for method in config.METHODS:
        assert f"| smallcnn | 1 | {titles[method]} |" in stdout, method


def test_smoke_prints_every_section(smoke_report: tuple[str, str]) -> None:
    stdout, written = smoke_report
    for heading in (
        "## Time per call",
        "### Where gradtap is slower",
        "## Achieved GFLOP/s",
        "## Peak RSS per library",
        "## Installed size",
    ):
        assert heading in stdout
    assert "| model | batch | method | gradtap | captum | pytorch-grad-cam | torch autograd |" in (
        stdout
    )
    assert written.strip() == stdout.strip()


def test_smoke_gradtap_worker_is_torch_free(smoke_report: tuple[str, str]) -> None:
    stdout, _ = smoke_report
    assert "gradtap worker torch-free: yes" in stdout
