"""examples/node: onnxruntime-node (its native library ships inside the npm package, so it runs
offline) gives the Python runtime's Grad-CAM, guided backprop and LRP."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradtap.runtime.session import ExplainSession
from tests.examples.common import MODEL, NPM, ROOT, correlation, need, photos, reference, run

SCRIPT = ROOT / "examples" / "node" / "explain.mjs"


def test_node_matches_python_on_real_photos(tmp_path: Path) -> None:
    need("node", "Node.js")
    for package in ("onnxruntime-node", "pngjs", "jpeg-js"):
        need(NPM / package, f"npm package {package}")
    session = ExplainSession(MODEL)
    for name, photo in photos(tmp_path).items():
        ref = reference(session, photo)
        x = tmp_path / f"{name}.f32"
        ref.x.tofile(x)
        # the same input tensor: the same engine (onnxruntime 1.30 in Node, the wheel's in Python)
        out = run(["node", str(SCRIPT), str(MODEL), str(photo), str(tmp_path / name), str(x)])
        assert out.stdout.startswith(f"class {ref.target} ")
        cam = np.fromfile(tmp_path / f"{name}_gradcam.f32", np.float32).reshape(ref.gradcam.shape)
        guided = np.fromfile(tmp_path / f"{name}_guided.f32", np.float32).reshape(ref.guided.shape)
        np.testing.assert_allclose(cam, ref.gradcam, rtol=0, atol=1e-5 * ref.gradcam.max())
        np.testing.assert_allclose(guided, ref.guided, rtol=0, atol=1e-5 * np.abs(ref.guided).max())
        relevance = np.fromfile(tmp_path / f"{name}_lrp.f32", np.float32).reshape(ref.lrp.shape)
        np.testing.assert_allclose(relevance, ref.lrp, rtol=0, atol=1e-5 * np.abs(ref.lrp).max())
        # its own decoding (pngjs, jpeg-js) and resize (examples/web/gradtap.mjs)
        own = tmp_path / f"{name}_own"
        out = run(["node", str(SCRIPT), str(MODEL), str(photo), str(own)])
        assert out.stdout.startswith(f"class {ref.target} ")
        cam = np.fromfile(f"{own}_gradcam.f32", np.float32)
        guided = np.fromfile(f"{own}_guided.f32", np.float32)
        assert correlation(cam, ref.gradcam) >= 0.99 and correlation(guided, ref.guided) >= 0.99
        assert correlation(np.fromfile(f"{own}_lrp.f32", np.float32), ref.lrp) >= 0.99
        assert (
            Path(f"{own}_gradcam.png").stat().st_size and Path(f"{own}_guided.png").stat().st_size
        )
