"""The end-to-end benchmark's smoke run, and the user scripts it measures gradtap against.

Numbers are never asserted. The scripts are checked for doing the work they are timed for:
one file per photo and method, pictures at the photo's size, maps that are not constant.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests import REPO

pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

SMALLCNN = ("smallcnn", str(REPO / "models" / "smallcnn.pt"))


@pytest.fixture(scope="module")
def photos() -> Path:
    from bench.e2e import photos as make

    return make(3, small=True)


def test_smoke_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "e2e.md"
    cmd = [sys.executable, str(REPO / "bench" / "e2e.py"), "--smoke", "--sides",
           "gradtap,gradtap --serial", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| images | methods | format | side | seconds | images/s |" in done.stdout
    for fmt in ("overlay", "npy"):
        assert f"| 3 | gradcam | {fmt} | gradtap | " in done.stdout
        assert f"| 3 | gradcam | {fmt} | gradtap --serial | " in done.stdout
    assert out.read_text(encoding="utf-8").strip() == done.stdout.strip()


@pytest.mark.parametrize(
    ("library", "methods", "fmt"),
    [("gradcam", "gradcam", "overlay"), ("captum", "gradcam,guided_backprop,saliency", "npy"),
     ("captum", "guided_backprop", "overlay")],
)  # fmt: skip
def test_user_script_writes_every_result(
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    library: str,
    methods: str,
    fmt: str,
) -> None:
    from bench import e2e_scripts

    out = tmp_path / "out"
    argv = ["e2e_scripts", library, *SMALLCNN, str(photos), str(out), "--batch", "2",
            "--format", fmt, "--methods", methods]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    e2e_scripts.main()
    for photo in sorted(photos.glob("*.jpg")):
        for method in methods.split(","):
            if fmt == "npy":
                m = np.load(out / photo.stem / f"{method}.npy")
                assert m.ndim == 2 and np.ptp(m) > 0, (photo, method)
            else:
                pic = cv2.imread(str(out / photo.stem / f"{method}.png"))
                assert pic.shape == cv2.imread(str(photo)).shape, (photo, method)
