"""gradtap.runtime.evaluate.run on hand-built models whose right answers are known.

The main model is linear: logit 0 = sum over a known square R of +-W (a checkerboard) times the
pixel's channel sum, logit 1 = 0; the images carry the checkerboard inside R, so blurring them
removes the evidence. Its saliency map is W on R and 0 elsewhere, so it must point inside R, hold
all its energy there, delete and insert the class evidence faster than a random map and let
GrabCut recover R exactly; its Grad-CAM map is one constant (the tap is 1 x 1), whose scores are
also known in closed form.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate.data import EvalSet
from gradtap.runtime.evaluate.maps import MAP_METHODS, RANDOM, MapSettings, compute_maps
from gradtap.runtime.evaluate.run import EvalConfig, evaluate, pick_targets
from gradtap.runtime.session import ExplainSession
from tests.runtime_graphs import linear_model, tiny_model

SIZE = 16
R = (6, 4, 12, 10)  # x0, y0, x1, y1 of the square the class-0 logit reads
W = 0.1
STEPS = 16


def _region() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[R[1] : R[3], R[0] : R[2]] = True
    return mask


def _weight() -> np.ndarray:
    """+W / -W checkerboard on R, 0 elsewhere: [H, W]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.where(_region(), np.where((yy + xx) % 2 == 0, W, -W), 0.0)


@pytest.fixture(scope="module")
def linear() -> ExplainSession:
    weights = np.zeros((2, 3, SIZE, SIZE), np.float32)
    weights[0] = _weight()[None]
    return ExplainSession(linear_model(weights, size=SIZE))


@pytest.fixture(scope="module")
def data() -> EvalSet:
    rng = np.random.default_rng(3)
    n = 3
    images = rng.uniform(0.0, 1.0, (n, SIZE, SIZE, 3))
    bright = rng.uniform(0.7, 1.0, images.shape)
    dark = rng.uniform(0.0, 0.3, images.shape)
    images = np.where((_weight() > 0)[None, ..., None], bright, images)
    images = np.where((_weight() < 0)[None, ..., None], dark, images)
    return EvalSet(
        name="hand-built",
        images=images.astype(np.float32),
        classes=((0,),) * n,
        masks=np.repeat(_region()[None], n, axis=0),
        boxes=np.array([R] * n, np.int64),
        mask_kind="the square the logit reads",
    )


@pytest.fixture(scope="module")
def result(linear: ExplainSession, data: EvalSet):  # noqa: ANN201
    config = EvalConfig(
        methods=("saliency", "gradcam", "cam", RANDOM),
        curve_steps=STEPS,
        blur_sigma=2.0,
        sanity=False,
    )
    return evaluate(linear, data, config)


def _deletion_oracle(image: np.ndarray) -> float:
    """Deletion AUC of the saliency map, by hand: pixels of R go first (raster order) and become
    0, the logit is the weighted sum of what is left, the probability is sigmoid(logit)."""
    hw = SIZE * SIZE
    step = math.ceil(hw / STEPS)
    order = np.argsort(~_region().ravel(), kind="stable")  # R first, each part in raster order
    evidence = image.sum(axis=2).ravel()
    counts = sorted(set(range(0, hw, step)) | {hw})
    probs = []
    for c in counts:
        kept = np.ones(hw, bool)
        kept[order[:c]] = False
        logit = (_weight().ravel() * evidence)[kept].sum()
        probs.append(1.0 / (1.0 + math.exp(-logit)))
    fractions = np.array(counts) / hw
    return float(np.sum((fractions[1:] - fractions[:-1]) * (np.add(probs[1:], probs[:-1]) / 2)))


def test_saliency_of_a_region_model_points_into_the_region(result) -> None:  # noqa: ANN001
    s = result.score("saliency")
    assert s.pointing.tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(s.energy, 1.0)
    np.testing.assert_allclose(s.iou, 1.0)  # GrabCut seeded with exactly R returns R


def test_deletion_auc_matches_the_hand_computation(result, data: EvalSet) -> None:  # noqa: ANN001
    expected = [_deletion_oracle(img) for img in data.images]
    np.testing.assert_allclose(result.score("saliency").deletion, expected, rtol=1e-5)
    assert result.step == math.ceil(SIZE * SIZE / STEPS)


def test_the_region_map_beats_the_random_baseline(result) -> None:  # noqa: ANN001
    sal, rnd = result.score("saliency"), result.score(RANDOM)
    assert (sal.deletion < rnd.deletion).all()
    assert (sal.insertion > rnd.insertion).all()
    d = result.to_dict()["methods"]["saliency"]
    assert d["deletion_below_random"] == 1.0 and d["insertion_above_random"] == 1.0


def test_a_constant_map_scores_the_region_share(result) -> None:  # noqa: ANN001
    # Grad-CAM of a 1x1 tap is one positive number everywhere: every pixel is a tied maximum
    share = _region().mean()
    g = result.score("gradcam")
    np.testing.assert_allclose(g.pointing, share)
    # every pixel of the 16 x 16 image is within 15 px of R: the standard tolerance hits
    np.testing.assert_allclose(g.pointing_wide, 1.0)
    np.testing.assert_allclose(g.energy, share)
    assert g.iou.tolist() == [0.0, 0.0, 0.0]  # a constant map cannot seed GrabCut


def test_wide_tolerance_scores_the_dilated_region(linear, data: EvalSet) -> None:  # noqa: ANN001
    # a 1 px tolerance grows the 6 x 6 square R to 8 x 8 minus its 4 corners: 60 of 256 pixels
    config = EvalConfig(methods=("gradcam",), curve_steps=4, wide_tolerance=1.0, sanity=False)
    g = evaluate(linear, data, config).score("gradcam")
    np.testing.assert_allclose(g.pointing_wide, 60 / 256)
    np.testing.assert_allclose(g.pointing, 36 / 256)


def test_pointing_games_hit_the_filled_outline_unless_told_not_to(linear, data: EvalSet) -> None:  # noqa: ANN001
    # R with a 2 x 2 hole: the constant Grad-CAM map ties every pixel, so the pointing game is
    # the share of pixels the hit mask covers: 36 with the hole filled, 32 without
    ring = data.masks.copy()
    ring[:, 6:8, 8:10] = False
    hollow = EvalSet(data.name, data.images, data.classes, ring, data.boxes, "a square ring")
    for fill, hits in ((True, 36), (False, 32)):
        config = EvalConfig(methods=("gradcam",), curve_steps=4, fill_holes=fill, sanity=False)
        pointing = evaluate(linear, hollow, config).score("gradcam").pointing
        np.testing.assert_allclose(pointing, hits / 256)


def test_cam_is_skipped_with_the_reason(result) -> None:  # noqa: ANN001
    assert [s.method for s in result.scores] == ["saliency", "gradcam", RANDOM]
    assert "global-average-pool" in result.skipped["cam"]
    assert "Skipped cam:" in result.to_markdown()


def test_targets_are_the_most_probable_ground_truth_class() -> None:
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]], np.float32)
    targets, correct = pick_targets(logits, [(0, 2), (0, 2)])
    assert targets.tolist() == [2, 0]
    assert correct.tolist() == [False, True]


def test_random_baseline_does_not_depend_on_the_model(data: EvalSet) -> None:
    x, targets = data.batch, np.zeros(len(data), np.int64)
    a = compute_maps(ExplainSession(tiny_model(size=SIZE)), RANDOM, x, targets, MapSettings())
    b = compute_maps(
        ExplainSession(tiny_model(size=SIZE, seed=5)), RANDOM, x, targets, MapSettings()
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # one map per image
    c = compute_maps(None, RANDOM, x, targets, MapSettings(seed=1))  # type: ignore[arg-type]
    assert not np.array_equal(a, c)


def test_colour_and_cam_maps_come_back_at_input_resolution(data: EvalSet) -> None:
    session = ExplainSession(tiny_model(size=SIZE))
    x, targets = data.batch, np.array([0, 1, 0])
    for method in ("guided_backprop", "gradcam", "occlusion"):
        maps = compute_maps(session, method, x, targets, MapSettings(samples=2))
        assert maps.shape == (3, SIZE, SIZE)
    raw = session.run(x[:1], np.eye(3, dtype=np.float32)[:1], relu_rule="guided").grad_input
    guided = compute_maps(session, "guided_backprop", x[:1], targets[:1], MapSettings())
    np.testing.assert_allclose(guided[0], np.abs(raw[0]).max(axis=0), rtol=1e-6)


def test_markdown_and_json_records(result) -> None:  # noqa: ANN001
    md = result.to_markdown()
    main = md.split("\n#### ")[0]  # the trust checks' tables follow under their headings
    rows = [line for line in main.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header and one row per method
    assert rows[1].startswith("| saliency | 1.000 ± 0.000 | 1.000 ± 0.000 |")
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["dataset"]["n_images"] == 3
    assert record["methods"]["saliency"]["pointing"] == {"mean": 1.0, "sem": 0.0}
    assert record["settings"]["pixels_per_step"] == result.step


def test_trust_checks_of_the_linear_model(result) -> None:  # noqa: ANN001
    # a linear model: the twin is exact, its gradient does not move (saliency unchanged and
    # unattackable), gradient x input moves with the shifted input
    checks = result.checks
    assert checks is not None and checks.images == 3
    rows = {r.method: r for r in checks.invariance.rows}
    assert rows["saliency"].invariant and not rows["gradient_x_input"].invariant
    adv = next(c for c in checks.fragility if c.kind == "adversarial")
    assert adv.method == "saliency" and adv.intersection == (1.0,) * len(adv.eps)
    assert [s.method for s in checks.peers] == ["saliency", "gradcam"]
    record = result.to_dict()["checks"]
    assert record["invariance"]["methods"]["saliency"]["unchanged"] is True


def test_region_perturbation_of_the_checks_is_the_patch_deletion(linear, result) -> None:  # noqa: ANN001
    # 16 px input, 8 x 8 cells: 2 x 2 patches, one patch (4 pixels) per stage, most relevant
    # first; the constant Grad-CAM map deletes the patches in raster order
    from gradtap.runtime.evaluate import metrics, peers
    from gradtap.runtime.targets import softmax

    x = result.examples.images.transpose(0, 3, 1, 2).astype(np.float32)
    scores = {s.method: s for s in result.checks.peers}
    for method in ("saliency", "gradcam"):
        for i in range(len(x)):
            m = result.examples.maps[method][i]
            expected = metrics.deletion(
                lambda b: softmax(linear.logits(b)), x[i], peers.region_map(m, 2), 0, step=4
            ).auc
            assert scores[method].region[i] == pytest.approx(expected, abs=1e-9)
    assert "| Region pert. AUC ↓ |" in result.to_markdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ("saliency", "lime")}, "unknown methods ['lime']"),
        ({"methods": ()}, "unknown methods []"),
        ({"methods": ("saliency", "saliency")}, "listed twice"),
        ({"curve_steps": 0}, "curve_steps must be an int >= 1"),
        ({"substrate": "noise"}, "substrate 'noise'"),
        ({"blur_sigma": 0.0}, "blur_sigma must be > 0"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EvalConfig(**kwargs)


def test_all_methods_are_known() -> None:
    assert set(MAP_METHODS) == set(EvalConfig().methods)
    with pytest.raises(OptionError, match="samples must be an int >= 1"):
        MapSettings(samples=0)
    with pytest.raises(OptionError, match="need 2 boxes"):
        EvalSet(
            "x",
            np.zeros((2, 8, 8, 3), np.float32),
            ((0,), (0,)),
            np.zeros((2, 8, 8), bool),
            np.zeros((1, 4), np.int64),
            "m",
        )


def test_methods_needing_a_missing_rectifier_rule_are_not_applicable() -> None:
    from types import SimpleNamespace

    from gradtap.runtime.evaluate.maps import not_applicable

    info = SimpleNamespace(name="plain-only", relu_rules=("plain",), tap=lambda alias: "t")
    fake = SimpleNamespace(info=info)
    assert "no 'guided' rectifier rule" in not_applicable(fake, "guided_backprop")
    assert "no 'guided' rectifier rule" in not_applicable(fake, "guided_gradcam")
    assert "no 'deconvnet' rectifier rule" in not_applicable(fake, "deconvnet")
    assert not_applicable(fake, "saliency") is None
    with pytest.raises(OptionError, match="unknown method 'lime'"):
        not_applicable(fake, "lime")
