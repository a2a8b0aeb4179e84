"""Packaging: dependency metadata, what the wheel carries, and what `gradtap explain` imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement

from gradtap.runtime import catalog


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in requires("gradtap") or []]


def test_no_extra_installs_onnxruntime_gpu_beside_onnxruntime() -> None:
    """Both wheels provide the `onnxruntime` module; installed together the CPU one wins."""
    reqs = _requirements()
    base = {r.name for r in reqs if r.marker is None}
    assert "onnxruntime" in base
    extras = {m for r in reqs if r.marker for m in str(r.marker).split('"')[1::2]}
    for extra in extras:
        names = {r.name for r in reqs if r.marker and r.marker.evaluate({"extra": extra})}
        assert not ({"onnxruntime-gpu", "onnxruntime-directml"} & (names | base)), extra


def test_the_plot_extra_brings_matplotlib() -> None:
    plot = [r.name for r in _requirements() if r.marker and r.marker.evaluate({"extra": "plot"})]
    assert plot == ["matplotlib"]


def test_smallcnn_is_packaged_with_the_runtime() -> None:
    path = catalog.packaged_models()["smallcnn"]
    assert path.name == "smallcnn.gradtap.onnx" and path.stat().st_size < 2_000_000


EXPLAIN = textwrap.dedent(
    """
    import sys
    from gradtap.cli.main import cli
    try:
        cli(["-q", "explain", sys.argv[1], "-M", "smallcnn", "-o", sys.argv[2]])
    except SystemExit as done:
        assert done.code == 0, done.code
    print("onnx" in sys.modules, "torch" in sys.modules)
    """
)


def test_explain_does_not_import_onnx(tmp_path: Path) -> None:
    """`import onnx` costs seconds; explain runs on onnxruntime alone."""
    import cv2

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.full((40, 50, 3), 128, np.uint8))
    done = subprocess.run(
        [sys.executable, "-c", EXPLAIN, str(photo), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "False"]  # after the index.html line
    assert (tmp_path / "out" / "p" / "gradcam.png").is_file()
