"""The Explainer facade end to end on a saved tiny model, and a run of every method with torch
blocked in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from gradtap.runtime import METHODS, Explainer, get_method, softmax
from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import to_original
from gradtap.runtime.targets import Each
from tests.runtime_graphs import LABELS, tiny_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.gradtap.onnx"
    onnx.save(tiny_model(resize={"policy": "shorter_side_center_crop", "size": 16}), path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(rng.integers(0, 255, (30, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_explain_files_and_arrays(model_file: Path, photo: Path) -> None:
    ex = Explainer(model_file, threads=1)
    array = np.asarray(Image.open(photo))
    e = ex.gradcam([photo, array[:20]], target=Each([None, "Dog"]))
    assert e.geometries is not None and [g.original_size for g in e.geometries] == [
        (30, 48),
        (20, 48),
    ]
    assert e.image_index.tolist() == [0, 0, 1, 1] and e.target_labels[1] == "Dog"
    same = ex.gradcam(photo, target=Each([None, "Dog"]))
    np.testing.assert_allclose(e.maps[:2], same.maps, rtol=1e-6)  # a file equals its pixels
    heat = ex.heatmap(e, 3)
    assert heat.shape == (20, 48) and 0 <= heat.min() and heat.max() <= 1
    scaled = np.clip(e.maps[3] / np.percentile(e.maps[3], 98), 0, 1)
    raw = np.clip(to_original(scaled, e.geometries[1]), 0, 1)
    np.testing.assert_allclose(heat, raw, atol=1e-5)  # normalise, then onto the original


def test_every_method_by_name(model_file: Path, photo: Path) -> None:
    ex = Explainer(model_file)
    for name in METHODS:
        e = ex.explain(name, photo, target="top-2")
        assert e.method == name and len(e.maps) == 2 and np.isfinite(e.maps).all()
    with pytest.raises(OptionError, match=r"unknown method 'lime'; valid: \['ablationcam', "):
        get_method("lime")


def test_predict_matches_the_logits(model_file: Path, photo: Path) -> None:
    ex = Explainer(model_file)
    top = ex.predict(photo, k=3)[0]
    x, _ = ex.inputs(photo)
    probs = softmax(ex.session.logits(x))[0]
    assert [label for label, _ in top] == [LABELS[i] for i in np.argsort(-probs)]
    np.testing.assert_allclose([p for _, p in top], np.sort(probs)[::-1], rtol=1e-6)


def test_attack_visualize_and_localize(model_file: Path, photo: Path) -> None:
    ex = Explainer(model_file)
    attack = ex.fgsm(photo, 2 / 255)
    assert attack.x.shape == (1, 3, 16, 16) and np.all(attack.linf <= 2 / 255 + 1e-6)
    vis = ex.visualize("Dog", steps=3, init=photo)
    assert vis.images.shape == (1, 16, 16, 3) and vis.logits.shape == (1, 4)
    loc, expl = ex.localize(photo, target=0)
    assert loc.mask.shape == (30, 48) and expl.target.tolist() == [0]
    if loc.box is not None:
        x0, y0, x1, y1 = loc.box
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 30


NO_TORCH = textwrap.dedent(
    """
    import sys

    class NoTorch:  # as if torch were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision"}:
                raise ImportError(f"{name} is blocked in this check")
            return None

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    from gradtap import runtime as rt

    model, photo, out = sys.argv[1:4]
    ex = rt.Explainer(model)
    for name in rt.METHODS:
        e = ex.explain(name, photo, target=rt.Each([None, 1]))
        heat = ex.heatmap(e, 0)
    img = rt.load_image(photo)
    tiles = [("original", img), ("overlay", rt.overlay_heatmap(img, heat, colormap="turbo"))]
    tiles.append(("guided", rt.gradient_image(ex.guided_backprop(photo).maps[0])))
    ex.fgsm(photo, 2 / 255)
    ex.fool(photo, 0, max_steps=3)
    ex.visualize([0, 2], steps=2)
    ex.localize(photo)
    rt.write_image(out, rt.panel(tiles, title="tiny"))
    print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision"}))
    """
)


def test_every_method_runs_without_torch(model_file: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "panel.png"
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(model_file), str(photo), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert Image.open(out).mode == "RGB"
