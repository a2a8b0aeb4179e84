"""examples/cpp: the C++ program gives the Python runtime's Grad-CAM, guided backprop and LRP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradtap.runtime.session import ExplainSession
from tests.examples.common import (
    MODEL,
    ORT_DIR,
    ROOT,
    correlation,
    need,
    photos,
    reference,
    run,
)  # fmt: skip

BUILD = ROOT / "build" / "cpp"


@pytest.fixture(scope="module")
def program() -> Path:
    """Configure and build examples/cpp (what `make examples` does; incremental)."""
    need(ORT_DIR / "include" / "onnxruntime_cxx_api.h", "onnxruntime C++ headers")
    need(ORT_DIR / "lib" / "libonnxruntime.so.1", "libonnxruntime from the onnxruntime wheel")
    need(Path("/usr/include/stb/stb_image.h"), "stb (Debian libstb-dev)")
    src = ROOT / "examples" / "cpp"
    run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(BUILD),
            f"-DORT_DIR={ORT_DIR}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
    )
    run(["cmake", "--build", str(BUILD)])
    assert len((src / "explain.cpp").read_text().splitlines()) < 200
    return BUILD / "explain"


def _maps(prefix: Path, cam_shape: tuple[int, ...], guided_shape: tuple[int, ...]):
    cam = np.fromfile(f"{prefix}_gradcam.f32", np.float32).reshape(cam_shape)
    guided = np.fromfile(f"{prefix}_guided.f32", np.float32).reshape(guided_shape)
    assert (
        Path(f"{prefix}_gradcam.png").stat().st_size and Path(f"{prefix}_guided.png").stat().st_size
    )
    return cam, guided


def test_cpp_matches_python_on_real_photos(program: Path, tmp_path: Path) -> None:
    session = ExplainSession(MODEL)
    for name, photo in photos(tmp_path).items():
        ref = reference(session, photo)
        # the same input tensor: one engine (onnxruntime) on both sides, only summation order
        # in the Grad-CAM weights differs
        x = tmp_path / f"{name}.f32"
        ref.x.tofile(x)
        out = run([str(program), str(MODEL), str(photo), str(tmp_path / name), str(x)])
        assert out.stdout.startswith(f"class {ref.target} ") and not out.stderr
        cam, guided = _maps(tmp_path / name, ref.gradcam.shape, ref.guided.shape)
        np.testing.assert_allclose(cam, ref.gradcam, rtol=0, atol=1e-5 * ref.gradcam.max())
        np.testing.assert_allclose(guided, ref.guided, rtol=0, atol=1e-5 * np.abs(ref.guided).max())
        relevance = np.fromfile(tmp_path / f"{name}_lrp.f32", np.float32).reshape(ref.lrp.shape)
        np.testing.assert_allclose(relevance, ref.lrp, rtol=0, atol=1e-5 * np.abs(ref.lrp).max())
        assert Path(tmp_path / f"{name}_lrp.png").stat().st_size
        # its own decoding (stb) and resizing (stb box filter for area, triangle for bilinear):
        # pixels differ slightly from OpenCV's, the maps must still agree
        out = run([str(program), str(MODEL), str(photo), str(tmp_path / f"{name}_own")])
        assert out.stdout.startswith(f"class {ref.target} ")
        cam, guided = _maps(tmp_path / f"{name}_own", ref.gradcam.shape, ref.guided.shape)
        assert correlation(cam, ref.gradcam) >= 0.99
        assert correlation(guided, ref.guided) >= 0.99
        own = np.fromfile(tmp_path / f"{name}_own_lrp.f32", np.float32)
        assert correlation(own, ref.lrp) >= 0.99


def test_cpp_reports_a_missing_image_in_one_line(program: Path, tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [str(program), str(MODEL), str(tmp_path / "nope.png"), str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"explain: cannot read image {tmp_path / 'nope.png'}"
    ]
