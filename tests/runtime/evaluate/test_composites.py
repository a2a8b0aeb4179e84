"""Real-photo composites: the photo lies exactly inside the box, every pair is covered, errors."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from gradtap.runtime.errors import GradtapError, OptionError
from gradtap.runtime.evaluate import composites
from gradtap.runtime.evaluate.composites import BACKGROUNDS, OBJECTS, make_composite, photo
from gradtap.runtime.evaluate.data import composite_set
from tests.runtime_graphs import tiny_model


def _crop(name: str) -> np.ndarray:
    obj = next(o for o in OBJECTS if o.name == name)
    x0, y0, x1, y1 = obj.crop
    return photo(obj.photo)[y0:y1, x0:x1]


@pytest.mark.parametrize("index", [0, 1, 2, 3, 7, 13])
@pytest.mark.parametrize("size", [(224, 224), (96, 128)])
def test_the_object_photo_fills_exactly_the_box(index: int, size: tuple[int, int]) -> None:
    c = make_composite(index, size=size, seed=3)
    x0, y0, x1, y1 = c.box
    assert 0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]
    expected_mask = np.zeros(size, bool)
    expected_mask[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(c.mask, expected_mask)
    crop = _crop(c.object)
    inside = c.image[y0:y1, x0:x1]
    views = [crop, crop[:, ::-1]]  # the object may be mirrored
    resized = [
        cv2.resize(np.ascontiguousarray(v), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        for v in views
    ]
    assert min(float(np.abs(inside - r).max()) for r in resized) < 1e-6
    longest = max(x1 - x0, y1 - y0) / min(size)
    assert composites.SCALE[0] - 0.02 <= longest <= composites.SCALE[1] + 0.02
    # the aspect ratio of the crop is kept (to a pixel of rounding)
    assert abs((x1 - x0) / (y1 - y0) - crop.shape[1] / crop.shape[0]) < 2.5 / min(x1 - x0, y1 - y0)


@pytest.mark.parametrize("index", [0, 1, 3, 4, 9, 11])
def test_outside_the_box_is_the_grey_background(index: int) -> None:
    # indices 0..11 hold the colour photos (cat, espresso, motorcycle) on the grey textures
    # (brick, grass, gravel): every grey pixel must lie outside the box, every colour one inside
    c = make_composite(index, seed=1)
    assert c.background in ("brick", "grass", "gravel") and c.object != "tripod"
    colour = np.abs(np.diff(c.image, axis=2)).max(axis=2) > 0
    assert not colour[~c.mask].any()
    assert colour[c.mask].mean() > 0.5
    assert 0.0 <= c.image.min() and c.image.max() <= 1.0 and c.image.dtype == np.float32


def test_consecutive_indices_cover_every_pair_once() -> None:
    n = len(OBJECTS) * len(BACKGROUNDS)
    for start in (0, 7):
        pairs = {(c.object, c.background) for c in map(make_composite, range(start, start + n))}
        assert len(pairs) == n


def test_composites_are_deterministic_and_seeded() -> None:
    a, b = make_composite(5, seed=2), make_composite(5, seed=2)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.box == b.box
    assert make_composite(5, seed=3).box != a.box or not np.array_equal(
        make_composite(5, seed=3).image, a.image
    )


def test_classes_are_imagenet_indices() -> None:
    assert [o.name for o in OBJECTS] == ["cat", "espresso", "tripod", "motorcycle"]
    assert all(0 <= k < 1000 for o in OBJECTS for k in o.classes)
    assert next(o for o in OBJECTS if o.name == "espresso").classes[0] == 967


def test_composite_set_needs_an_imagenet_model() -> None:
    from gradtap.runtime.errors import ModelError
    from gradtap.runtime.session import ExplainSession

    small = ExplainSession(tiny_model(size=32))
    with pytest.raises(ModelError, match="has 3 classes; the composites need an ImageNet-1k"):
        composite_set(small.info, 2)
    big = ExplainSession(tiny_model(size=32, labels=[f"c{k}" for k in range(1000)]))
    data = composite_set(big.info, 3)
    assert data.images.shape == (3, 32, 32, 3)
    assert data.classes[1] == OBJECTS[1].classes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"index": -1}, "must be >= 0"), ({"index": 0, "size": (16, 64)}, "at least 32 x 32")],
)
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        make_composite(**kwargs)


def test_missing_scikit_image_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    photo.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage` fail
    try:
        with pytest.raises(GradtapError, match="composites need scikit-image") as err:
            make_composite(0)
        assert "\n" not in str(err.value)
    finally:
        photo.cache_clear()


@pytest.mark.slow
def test_efficientnet_sees_the_pasted_objects_and_gradcam_finds_them() -> None:
    pytest.importorskip("torch")  # builds the ImageNet model into the cache on first use
    from gradtap.export.models.to_onnx import model_path
    from gradtap.runtime.evaluate.run import EvalConfig, evaluate
    from gradtap.runtime.session import ExplainSession

    session = ExplainSession(model_path("efficientnet_lite0", "IMAGENET1K", augmented=True))
    data = composite_set(session.info, 12)
    config = EvalConfig(methods=("gradcam", "random"), curve_steps=8, sanity=False)
    result = evaluate(session, data, config)
    assert result.accuracy >= 0.6
    gradcam, rnd = result.score("gradcam"), result.score("random")
    assert gradcam.pointing.mean() >= 0.75 > rnd.pointing.mean()
    assert gradcam.energy.mean() > rnd.energy.mean() + 0.15
    assert gradcam.deletion.mean() < rnd.deletion.mean()
