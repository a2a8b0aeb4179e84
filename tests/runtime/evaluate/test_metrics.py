"""Explanation metrics against hand-computed values, scipy and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.metrics import structural_similarity

from gradtap.runtime.evaluate import metrics

# ---------------------------------------------------------------- pointing games


def _disc_mask(h: int = 20, w: int = 24, cy: int = 8, cx: int = 14, r: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_pointing_game_mask_perfect_map_hits_and_outside_map_misses() -> None:
    mask = _disc_mask()
    assert metrics.pointing_game(mask.astype(float), mask) == 1.0
    assert metrics.pointing_game((~mask).astype(float), mask) == 0.0


def test_pointing_game_single_peak_tolerance_is_euclidean() -> None:
    mask = np.zeros((15, 15), bool)
    mask[7, 7] = True
    sal = np.zeros((15, 15))
    sal[7 + 3, 7 + 4] = 1.0  # distance 5 from the only mask pixel
    assert metrics.pointing_game(sal, mask, tolerance=4.9) == 0.0
    assert metrics.pointing_game(sal, mask, tolerance=5.0) == 1.0


def test_pointing_game_standard_tolerance_is_15_pixels_by_hand() -> None:
    # Zhang et al.: a maximum within 15 px of the object is a hit
    assert metrics.ZHANG_TOLERANCE == 15.0
    mask = np.zeros((40, 40), bool)
    mask[2, 2] = True
    tol = metrics.ZHANG_TOLERANCE
    at_15 = np.zeros((40, 40))
    at_15[2 + 9, 2 + 12] = 1.0  # a 9-12-15 triangle: exactly 15 px away
    assert metrics.pointing_game(at_15, mask, tolerance=tol) == 1.0
    assert metrics.pointing_game(at_15, mask) == 0.0
    beyond = np.zeros((40, 40))
    beyond[2 + 11, 2 + 11] = 1.0  # 11 * sqrt(2) = 15.56 px away
    assert metrics.pointing_game(beyond, mask, tolerance=tol) == 0.0
    ties = at_15 + beyond  # two tied maxima, one inside the tolerance: half a hit
    assert metrics.pointing_game(ties, mask, tolerance=tol) == 0.5


def test_pointing_game_tolerance_is_clipped_at_the_border() -> None:
    # a mask on the border dilates only into the image: 3 x 3 corner block minus nothing
    # outside; the flat map scores (pixels within 2 px of (0, 0)) / all = 6 / 100
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    flat = np.ones((10, 10))
    assert metrics.pointing_game(flat, mask, tolerance=2) == pytest.approx(6 / 100)


def test_pointing_game_flat_map_scores_share_of_ties_inside() -> None:
    mask = _disc_mask()
    expected = mask.sum() / mask.size
    assert metrics.pointing_game(np.ones(mask.shape), mask) == pytest.approx(expected)


@pytest.mark.parametrize("radius", [1, 2.5, 6])
def test_dilate_matches_distance_transform(radius: float) -> None:
    mask = np.random.default_rng(3).random((30, 26)) > 0.97
    oracle = ndimage.distance_transform_edt(~mask) <= radius
    np.testing.assert_array_equal(metrics.dilate(mask, radius), oracle)


def test_fill_holes_matches_scipy_and_fills_a_ring() -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((40, 36)) > 0.45)
        # scipy's default structuring element: holes are background not 4-connected to the border
        np.testing.assert_array_equal(metrics.fill_holes(mask), ndimage.binary_fill_holes(mask))
    yy, xx = np.mgrid[:21, :21]
    r = np.hypot(yy - 10, xx - 10)
    ring = (r <= 8) & (r > 4)
    np.testing.assert_array_equal(metrics.fill_holes(ring), r <= 8)
    peak = np.zeros(ring.shape)
    peak[10, 10] = 1.0  # the centre of the hole
    assert metrics.pointing_game(peak, ring) == 0.0
    assert metrics.pointing_game(peak, metrics.fill_holes(ring)) == 1.0


def test_energy_pointing_game_hand_values() -> None:
    sal = np.array([[1.0, -5.0, 2.0], [0.0, 3.0, -1.0]])
    mask = np.array([[True, True, False], [False, True, False]])
    assert metrics.energy_pointing_game(sal, mask) == pytest.approx(4.0 / 6.0)
    assert metrics.energy_pointing_game(-np.abs(sal), mask) == 0.0


def test_energy_pointing_game_with_box_mask() -> None:
    sal = np.zeros((10, 10))
    sal[2:5, 3:7] = 1.0
    sal[8, 8] = 4.0
    box_mask = metrics.box_to_mask((3, 2, 7, 5), sal.shape)
    assert box_mask.sum() == 12
    assert metrics.energy_pointing_game(sal, box_mask) == pytest.approx(12.0 / 16.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.pointing_game(np.zeros((3, 3)), np.zeros((3, 4), bool)), "shape"),
        (lambda: metrics.pointing_game(np.zeros((3, 3)), np.zeros((3, 3))), "bool mask"),
        (lambda: metrics.pointing_game(np.zeros(9), np.zeros(9, bool)), "2-D"),
        (lambda: metrics.pointing_game(np.full((2, 2), np.nan), np.ones((2, 2), bool)), "NaN"),
        (
            lambda: metrics.pointing_game(np.zeros((2, 2)), np.ones((2, 2), bool), tolerance=-1),
            ">=",
        ),
    ],
)
def test_pointing_game_rejects_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- deletion / insertion

WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])


def _linear_prob(x: np.ndarray) -> np.ndarray:
    """A 'model' on a 1x4 image: P(class 0) = weighted mean of channel 0."""
    p0 = x[:, 0, 0, :] @ WEIGHTS
    return np.stack([p0, 1.0 - p0], axis=1)


ONES = np.ones((3, 1, 4), np.float32)
SAL = np.array([[0.1, 0.9, 0.3, 0.5]])  # removal order: pixel 1, 3, 2, 0


def test_deletion_hand_computed_curve_and_auc() -> None:
    curve = metrics.deletion(_linear_prob, ONES, SAL, 0, step=1)
    np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.scores, [1.0, 0.7, 0.6, 0.4, 0.0], atol=1e-7)
    assert curve.auc == pytest.approx(0.25 * (0.85 + 0.65 + 0.5 + 0.2))


def test_deletion_last_step_is_clipped_to_all_pixels() -> None:
    curve = metrics.deletion(_linear_prob, ONES, SAL, 0, step=3)
    np.testing.assert_allclose(curve.fractions, [0, 0.75, 1.0])
    np.testing.assert_allclose(curve.scores, [1.0, 0.4, 0.0], atol=1e-7)
    assert curve.auc == pytest.approx(0.75 * 0.7 + 0.25 * 0.2)


def test_insertion_hand_computed_from_black() -> None:
    curve = metrics.insertion(_linear_prob, ONES, SAL, 0, step=1, start="zeros")
    np.testing.assert_allclose(curve.scores, [0.0, 0.3, 0.4, 0.6, 1.0], atol=1e-7)
    assert curve.auc == pytest.approx(0.25 * (0.15 + 0.35 + 0.5 + 0.8))


def test_deletion_mean_substrate_and_constant_substrate() -> None:
    img = np.zeros((3, 1, 4), np.float32)
    img[0] = [[1.0, 0.0, 1.0, 0.0]]  # channel-0 mean 0.5
    curve = metrics.deletion(_linear_prob, img, SAL, 0, step=4, substrate="mean")
    np.testing.assert_allclose(curve.scores, [0.6, 0.5], atol=1e-7)
    curve = metrics.deletion(_linear_prob, img, SAL, 0, step=4, substrate=0.25)
    np.testing.assert_allclose(curve.scores, [0.6, 0.25], atol=1e-7)


def _object_scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = _disc_mask(32, 32, 12, 18, 6)
    img = rng.uniform(0.2, 0.5, (3, 32, 32)).astype(np.float32)
    img[:, mask] = 0.95
    return img, mask


def _object_prob_fn(mask: np.ndarray, calls: list[int]):
    def prob_fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        evidence = x[:, :, mask].mean(axis=(1, 2))  # how much of the bright object is present
        logit = 12.0 * (evidence - 0.6)
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.stack([p, 1.0 - p], axis=1)

    return prob_fn


def test_object_map_deletes_faster_and_inserts_faster_than_random() -> None:
    img, mask = _object_scene()
    calls: list[int] = []
    prob_fn = _object_prob_fn(mask, calls)
    good = mask + 0.01 * metrics.random_map(mask.shape, seed=1)
    rand = metrics.random_map(mask.shape, seed=2)
    del_good = metrics.deletion(prob_fn, img, good, 0, batch_size=5)
    del_rand = metrics.deletion(prob_fn, img, rand, 0, batch_size=5)
    ins_good = metrics.insertion(prob_fn, img, good, 0, start="zeros", batch_size=5)
    ins_rand = metrics.insertion(prob_fn, img, rand, 0, start="zeros", batch_size=5)
    assert del_good.auc < 0.1 < 0.25 < del_rand.auc
    assert ins_good.auc > 0.85 > 0.6 > ins_rand.auc
    assert len(del_good.scores) == 32 + 1  # default step: one image row of pixels
    assert max(calls) <= 5


def test_batch_size_does_not_change_the_curve() -> None:
    img, mask = _object_scene()
    sal = metrics.random_map(mask.shape, seed=5)
    calls: list[int] = []
    small = metrics.deletion(_object_prob_fn(mask, calls), img, sal, 0, step=50, batch_size=3)
    assert max(calls) == 3
    big = metrics.deletion(_object_prob_fn(mask, []), img, sal, 0, step=50, batch_size=100)
    np.testing.assert_allclose(small.scores, big.scores)
    assert small.auc == big.auc


def test_gaussian_blur_matches_scipy() -> None:
    img = np.random.default_rng(1).random((3, 17, 23))
    ours = metrics.gaussian_blur(img, 2.5)
    oracle = np.stack([ndimage.gaussian_filter(c, 2.5, mode="reflect") for c in img])
    np.testing.assert_allclose(ours, oracle, atol=1e-12)


def test_insertion_default_start_is_the_blurred_image() -> None:
    img, mask = _object_scene()
    seen: list[np.ndarray] = []

    def prob_fn(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return np.tile([0.5, 0.5], (len(x), 1))

    metrics.insertion(prob_fn, img, mask.astype(float), 0, blur_sigma=3.0)
    blurred = np.stack([ndimage.gaussian_filter(c, 3.0, mode="reflect") for c in img])
    np.testing.assert_allclose(seen[0][0], blurred, atol=1e-6)
    np.testing.assert_allclose(seen[-1][-1], img)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prob_fn": lambda x: np.zeros((len(x), 2)) + 3.0}, "probabilities"),
        ({"prob_fn": lambda x: np.ones((len(x), 2)) / 2, "target": 2}, "target 2 out of range"),
        ({"prob_fn": lambda x: np.ones((1, 2)) / 2}, r"\[N, classes\]"),
        ({"image": np.ones((1, 4), np.float32)}, r"\[3, H, W\]"),
        ({"image": ONES * 2}, r"\[0, 1\]"),
        ({"saliency": np.ones((2, 4))}, "1x4"),
        ({"substrate": "noise"}, "valid: \\['blur', 'mean', 'zeros'\\]"),
        ({"step": 0}, ">= 1"),
    ],
)
def test_deletion_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"prob_fn": _linear_prob, "image": ONES, "saliency": SAL, "target": 0} | kwargs
    prob_fn, image, sal, target = (args.pop(k) for k in ("prob_fn", "image", "saliency", "target"))
    with pytest.raises(ValueError, match=message):
        metrics.deletion(prob_fn, image, sal, target, **args)


def test_softmax_rows_sum_to_one_and_match_scipy() -> None:
    from scipy.special import softmax

    z = np.random.default_rng(0).normal(0, 30, (4, 7))
    np.testing.assert_allclose(metrics.softmax(z), softmax(z, axis=-1), rtol=1e-12)


# ---------------------------------------------------------------- map similarity


@pytest.mark.parametrize("seed", range(4))
def test_rankdata_and_spearman_match_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(-3, 4, (9, 11)).astype(float)  # many ties, negative values
    b = a + rng.integers(-2, 3, a.shape)
    np.testing.assert_array_equal(metrics.rankdata(a), stats.rankdata(a.ravel()))
    rho = stats.spearmanr(a.ravel(), b.ravel()).statistic
    assert metrics.spearman(a, b) == pytest.approx(rho, abs=1e-12)
    rho_abs = stats.spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic
    assert metrics.spearman(a, b, absolute=True) == pytest.approx(rho_abs, abs=1e-12)


def test_spearman_known_values() -> None:
    a = np.arange(12.0).reshape(3, 4)
    assert metrics.spearman(a, a**3) == pytest.approx(1.0)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a - 5.5, -(a - 5.5), absolute=True) == pytest.approx(1.0)
    assert np.isnan(metrics.spearman(a, np.ones_like(a)))
    with pytest.raises(ValueError, match="share a shape"):
        metrics.spearman(a, a.T)


@pytest.mark.parametrize(("shape", "win"), [((16, 16), 7), ((20, 13), 7), ((9, 30), 3)])
def test_ssim_matches_skimage(shape: tuple[int, int], win: int) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.2, shape), 0, 1)
    oracle = structural_similarity(a, b, data_range=1.0, win_size=win)
    assert metrics.ssim(a, b, data_range=1.0, win_size=win) == pytest.approx(oracle, abs=1e-10)
    joint = max(a.max(), b.max()) - min(a.min(), b.min())
    oracle = structural_similarity(a, b, data_range=joint, win_size=win)
    assert metrics.ssim(a, b, win_size=win) == pytest.approx(oracle, abs=1e-10)


def test_ssim_identical_is_one_and_rejects_bad_window() -> None:
    a = np.random.default_rng(0).random((12, 12))
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim(a, a, win_size=13)
    with pytest.raises(ValueError, match="data_range"):
        metrics.ssim(np.ones((8, 8)), np.ones((8, 8)))


# ---------------------------------------------------------------- IoU


def test_box_iou_hand_values() -> None:
    assert metrics.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert metrics.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert metrics.box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0
    assert metrics.box_iou((0, 0, 4, 2), (1, 0, 2, 2)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="x1 >= x0"):
        metrics.box_iou((3, 0, 1, 2), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="both boxes are empty"):
        metrics.box_iou((1, 1, 1, 1), (2, 2, 2, 2))


@pytest.mark.parametrize("seed", range(3))
def test_mask_iou_of_box_masks_equals_box_iou(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = (*rng.integers(0, 10, 2), *rng.integers(10, 20, 2))
    b = (*rng.integers(0, 10, 2), *rng.integers(10, 20, 2))
    ma, mb = metrics.box_to_mask(a, (20, 20)), metrics.box_to_mask(b, (20, 20))
    assert metrics.mask_iou(ma, mb) == pytest.approx(metrics.box_iou(a, b))


def test_mask_iou_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError, match="both masks are empty"):
        metrics.mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.mask_iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_trapezoid_auc_matches_scipy_on_uneven_steps() -> None:
    from scipy.integrate import trapezoid

    x = np.array([0.0, 0.1, 0.45, 0.5, 1.0])
    y = np.array([1.0, 0.2, 0.7, 0.1, 0.0])
    assert metrics.trapezoid_auc(x, y) == pytest.approx(trapezoid(y, x), abs=1e-15)
