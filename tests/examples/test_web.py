"""examples/web: the page explains a photo entirely in headless Chromium (onnxruntime-web, wasm),
served on 127.0.0.1 only, and its maps are the Python runtime's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from gradtap.runtime.session import ExplainSession
from tests.examples.common import MODEL, NPM, ROOT, correlation, need, photos, reference

SERVE = ROOT / "examples" / "web" / "serve.mjs"
TIMEOUT_S = 180
# headless, as root in a container (no sandbox, small /dev/shm), no GPU
CHROMIUM = [
    "chromium",
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _explain_in_browser(tmp_path: Path, image: str) -> dict:
    result = tmp_path / f"{image}.json"
    server = subprocess.Popen(
        ["node", str(SERVE), str(MODEL), "--port", "0", "--files", str(tmp_path), "--result", str(result)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    browser = None
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:"), url
        browser = subprocess.Popen(
            [*CHROMIUM, "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             f"{url}?image=/files/{image}&report=/result"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        server.wait(TIMEOUT_S)  # the server exits once the page has posted its result
    finally:
        for proc in (browser, server):
            if proc is not None:
                _stop(proc)
    data = json.loads(result.read_text())
    assert "error" not in data, data
    return data


def test_the_page_matches_python_on_real_photos(tmp_path: Path) -> None:
    need("chromium", "Chromium")
    need("node", "Node.js")
    need(NPM / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs", "npm package onnxruntime-web")
    session = ExplainSession(MODEL)
    for photo in photos(tmp_path).values():
        start = time.monotonic()
        got = _explain_in_browser(tmp_path, photo.name)
        assert time.monotonic() - start < TIMEOUT_S
        ref = reference(session, photo)
        assert got["target"] == ref.target
        # the browser decodes and resizes (examples/web/gradtap.mjs) on its own: the pixels may
        # differ from OpenCV's by rounding and by the JPEG decoder, so the maps are compared by
        # correlation; the input tensor itself stays within a grey level
        assert np.abs(np.asarray(got["input"]) - ref.x.ravel()).max() < 1 / 255
        assert correlation(got["gradcam"], ref.gradcam) >= 0.99
        assert correlation(got["guided"], ref.guided) >= 0.99
        assert correlation(got["lrp"], ref.lrp) >= 0.99  # relu_rule 8 in onnxruntime-web
