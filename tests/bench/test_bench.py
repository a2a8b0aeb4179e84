"""The benchmark's smoke run: it runs and prints its tables. Numbers are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import REPO

pytest.importorskip("torch")

ROOT = REPO


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


def test_every_slower_cell_gets_a_reason() -> None:
    """The method's reason first, else the model's, else a pointer to the notes."""
    from bench import report
    from bench.suite import ModelResult

    def cell(gradtap: float, captum: float) -> dict[str, dict[str, float]]:
        return {"gradtap": {"median": gradtap}, "captum": {"median": captum}}

    eff = ModelResult("efficientnet_lite0", cells={(8, "saliency"): cell(1.0, 0.9)})
    vgg = ModelResult("vgg16", cells={(1, "fgsm"): cell(1.0, 0.5), (1, "saliency"): cell(1.0, 2.0)})
    other = ModelResult("resnet18", cells={(1, "gradcam"): cell(1.0, 0.8)})
    lines = report.slower_notes([eff, vgg, other], ["gradtap", "captum"])
    assert len(lines) == 3  # vgg16 saliency is faster: no line
    assert "captum 0.90x" in lines[0] and report.SLOWER_ON_MODEL["efficientnet_lite0"] in lines[0]
    assert "captum 0.50x" in lines[1] and report.SLOWER_BECAUSE["fgsm"] in lines[1]
    assert "no structural reason known" in lines[2]
