"""Explanation display and the Python API conventions: inputs, one target per image, pictures."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from gradtap.runtime import Each, Explainer
from gradtap.runtime.errors import TargetError
from gradtap.runtime.image.geometry import Geometry
from gradtap.runtime.present import show
from gradtap.runtime.present.postprocess import normalize
from gradtap.runtime.present.unseen import mark_unseen, seen_mask


@pytest.fixture(scope="module")
def ex() -> Explainer:
    return Explainer("smallcnn")  # the packaged graph, resolved by name


def _photo(seed: int, shape: tuple[int, int] = (80, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), 0.2, np.float32)
    cv2.circle(img, (shape[1] // 2, shape[0] // 2), min(shape) // 4, (0.9, 0.8, 0.1), -1)
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)


def test_a_list_of_targets_is_one_per_image(ex: Explainer) -> None:
    a, b = _photo(0), _photo(1)
    both = ex.saliency([a, b], target=[1, 3])
    assert both.image_index.tolist() == [0, 1] and both.target.tolist() == [1, 3]
    np.testing.assert_allclose(both.maps[0], ex.saliency(a, target=1).maps[0], rtol=1e-5)
    np.testing.assert_allclose(both.maps[1], ex.saliency(b, target=3).maps[0], rtol=1e-5)
    arr = ex.saliency([a, b], target=np.array([1, 3]))
    np.testing.assert_array_equal(arr.maps, both.maps)


def test_targets_each_is_the_cross_product(ex: Explainer) -> None:
    e = ex.gradcam([_photo(0), _photo(1)], targets_each=[1, "square", 4])
    assert e.image_index.tolist() == [0, 0, 0, 1, 1, 1] and e.target.tolist() == [1, 1, 4] * 2
    assert ex.gradcam(_photo(0), target=Each([2, 4])).target.tolist() == [2, 4]
    with pytest.raises(TargetError, match="targets_each"):
        ex.gradcam([_photo(0), _photo(1)], target=[1, 2, 3])
    with pytest.raises(TargetError, match="not both"):
        ex.gradcam(_photo(0), target=1, targets_each=[2])


def test_images_as_pil_hwc_chw_uint8_float_and_paths(ex: Explainer, tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    rgb8 = np.rint(_photo(2) * 255).astype(np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(rgb8).save(path)
    ref, _ = ex.inputs(rgb8)
    for form in (Image.fromarray(rgb8), rgb8.transpose(2, 0, 1), rgb8 / 255.0, str(path), path):
        x, _ = ex.inputs(form)
        np.testing.assert_allclose(x, ref, atol=1e-6)
    x, geometries = ex.inputs([Image.fromarray(rgb8), rgb8, path])
    assert len(x) == 3 and len(geometries) == 3


def test_repr_is_short_and_names_rows(ex: Explainer) -> None:
    e = ex.gradcam([_photo(0), _photo(1)], target=[1, 3])
    text = repr(e)
    assert text.startswith("Explanation(gradcam, 2 rows:") and len(text) < 300
    assert "image 0 -> 1 'square' p=" in text and "image 1 -> 3 'star'" in text
    assert text.endswith(f"maps [{', '.join(map(str, e.maps.shape))}])")


def test_repr_png_is_a_picture(ex: Explainer) -> None:
    e = ex.guided_backprop([_photo(0), _photo(1)])
    pic = cv2.imdecode(np.frombuffer(e._repr_png_(), np.uint8), cv2.IMREAD_COLOR)
    assert pic is not None and pic.shape[0] > 160 and pic.shape[1] > 2 * 160


def test_signed_maps_use_a_diverging_colour_map(ex: Explainer) -> None:
    ig = ex.integrated_gradients(_photo(0), target=1, steps=4)
    assert ig.signed and not ex.saliency(_photo(0)).signed
    heat = ig.heatmap(0)
    assert heat.min() < 0 < heat.max() and heat.min() >= -1 and heat.max() <= 1
    ramp = show.diverging(np.array([-1.0, 0.0, 1.0], np.float32))
    assert ramp[1].tolist() == [255, 255, 255]
    assert ramp[0, 2] > ramp[0, 0] and ramp[2, 0] > ramp[2, 2]  # blue negative, red positive


def test_shared_scale_compares_targets_of_one_image(ex: Explainer) -> None:
    e = replace(ex.saliency(_photo(0), targets_each=[0, 1, 2]), geometries=None)
    own = [e.heatmap(r) for r in range(3)]
    shared = [e.heatmap(r, shared=True) for r in range(3)]
    expected = normalize(np.stack([np.abs(m) for m in e.maps]))
    np.testing.assert_allclose(np.stack(shared), expected, atol=1e-6)
    assert all(np.percentile(m, 98) == pytest.approx(1.0, abs=1e-3) for m in own)
    strength = [float(np.abs(m).sum()) for m in e.maps]
    weakest = int(np.argmin(strength))
    assert shared[weakest].mean() < own[weakest].mean()


def test_overlay_greys_what_the_model_never_saw(ex: Explainer) -> None:
    wide = _photo(3, (64, 192))  # smallcnn: shorter side 64, centre crop 64 x 64 of 64 x 192
    e = ex.gradcam(wide)
    pic = e.overlay(0)
    assert pic.shape == (64, 192, 3)
    left, centre = pic[:, :60].astype(int), pic[:, 70:120].astype(int)
    assert (left.max(axis=2) - left.min(axis=2)).max() == 0  # grey only
    assert (centre.max(axis=2) - centre.min(axis=2)).max() > 30  # coloured heat


def test_seen_mask_matches_the_crop() -> None:
    g = Geometry(original_size=(100, 300), resized_size=(64, 192), crop=(0, 64, 64, 64))
    mask = seen_mask(g)
    cols = np.flatnonzero(mask[50])
    assert mask.shape == (100, 300) and cols[0] == 100 and cols[-1] == 199 and mask[:, 150].all()
    half = seen_mask(g, (50, 150))
    assert np.flatnonzero(half[0]).tolist() == list(range(50, 100))
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[..., 0] = 255
    out = mark_unseen(rgb, mask)
    assert (out[mask] == rgb[mask]).all() and (out[~mask][:, 0] == out[~mask][:, 1]).all()


def test_plot_has_a_colour_bar_per_map(ex: Explainer) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    fig = ex.integrated_gradients([_photo(0), _photo(1)], target=[1, 2], steps=2).plot()
    assert len(fig.axes) == 4  # two maps, two colour bars
    assert fig.axes[0].images[-1].get_cmap().name == "RdBu_r"
    assert fig.axes[0].images[-1].get_clim() == (-1.0, 1.0)


def test_panels_of_tall_photos_stay_legible() -> None:
    from gradtap.runtime.present.pictures import PANEL_HEIGHT, explanation_panel, panel_height

    assert panel_height((300, 400)) == PANEL_HEIGHT
    assert panel_height((900, 300)) == 2 * PANEL_HEIGHT  # tile width stays PANEL_HEIGHT / 1.5
    assert panel_height((5000, 10)) == 3 * PANEL_HEIGHT
    tall = np.zeros((600, 100, 3), np.uint8)
    pics = {"heatmap": tall, "overlay": tall}
    out = explanation_panel(tall, pics, title="t", colour=False)
    assert out.shape[0] > 3 * PANEL_HEIGHT - 1 and out.shape[1] >= 3 * (3 * PANEL_HEIGHT // 6)


def test_labels_render_unicode_with_a_system_font() -> None:
    from gradtap.runtime.present.text import font_path, text_block

    assert font_path() is not None  # fonts-dejavu (Debian) or matplotlib's DejaVu
    accented, ascii_only = text_block(["café"], 200), text_block(["caf?"], 200)
    assert accented.shape == ascii_only.shape and not np.array_equal(accented, ascii_only)
    cyrillic = text_block(["кот"], 200)
    assert (cyrillic < 128).any() and not np.array_equal(cyrillic, text_block(["???"], 200))


def test_cli_pictures_grey_what_the_model_never_saw() -> None:
    """The CLI's overlay and heat map mark the cropped-away sides, not paint them 'cold'."""
    from gradtap.runtime.present.pictures import pictures

    g = Geometry(original_size=(64, 192), resized_size=(64, 192), crop=(0, 64, 64, 64))
    raw = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    photo = np.full((64, 192, 3), 0.5, np.float32)
    for name, pic in pictures(raw, photo, g, colour=False).items():
        side, centre = pic[:, :60].astype(int), pic[:, 70:120].astype(int)
        assert (side.max(axis=2) == side.min(axis=2)).all(), name  # grey, hatched
        assert (centre.max(axis=2) - centre.min(axis=2)).max() > 30, name  # the colour map
