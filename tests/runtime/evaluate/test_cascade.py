"""The model-randomisation sanity check of gradtap evaluate, against scipy and hand-built models."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from onnx import numpy_helper
from scipy.stats import spearmanr

from gradtap.runtime.evaluate import randomize as sanity
from gradtap.runtime.evaluate.cascade import cascade_depths, compare, sanity_check
from gradtap.runtime.evaluate.data import EvalSet
from gradtap.runtime.evaluate.maps import MapSettings
from gradtap.runtime.evaluate.run import EvalConfig, evaluate
from gradtap.runtime.session import ExplainSession
from tests.runtime_graphs import linear_model, tiny_model

SIZE = 16


@pytest.mark.parametrize(
    ("n_layers", "steps", "expected"),
    [
        (7, 0, [1, 2, 3, 4, 5, 6, 7]),
        (7, 7, [1, 2, 3, 4, 5, 6, 7]),
        (7, 20, [1, 2, 3, 4, 5, 6, 7]),
        (50, 3, [1, 26, 50]),  # linspace(1, 50, 3) = 1, 25.5, 50 (25.5 rounds to even)
        (50, 2, [1, 50]),
        (5, 1, [5]),
    ],
)
def test_cascade_depths(n_layers: int, steps: int, expected: list[int]) -> None:
    assert cascade_depths(n_layers, steps) == expected


def test_identical_maps_compare_as_one_and_a_flat_map_is_undefined() -> None:
    m = np.random.default_rng(0).normal(size=(12, 12)).astype(np.float32)
    assert compare(m, m) == pytest.approx((1.0, 1.0, 1.0))
    rho, signed, _ = compare(m, np.zeros_like(m))
    assert math.isnan(rho) and math.isnan(signed)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def test_randomising_a_linear_model_matches_scipy_on_the_redrawn_weights() -> None:
    weights = np.zeros((2, 3, SIZE, SIZE), np.float32)
    weights[0, :, 4:10, 6:12] = 0.05
    model = linear_model(weights, size=SIZE)
    x, targets = _images(3), np.array([0, 0, 0])
    [curve] = sanity_check(ExplainSession(model), x, targets, ["saliency"], MapSettings(), seed=7)
    # oracle: the redrawn weights, read from the randomised copy, ARE the new gradient
    copy = sanity.randomize_top(model, 1, seed=7)
    new = numpy_helper.to_array(next(t for t in copy.graph.initializer if t.name == "w"))
    expected = spearmanr(np.abs(weights[0]).max(0).ravel(), np.abs(new[0]).max(0).ravel())[0]
    assert curve.depth == (1,) and curve.layers == ("conv",)
    assert curve.spearman[0] == pytest.approx(expected, abs=1e-9)
    assert abs(curve.spearman[0]) < 0.3  # randomisation is detected: the map is unrelated
    assert curve.undefined == (0,)


@pytest.fixture(scope="module")
def cascade() -> list:
    session = ExplainSession(tiny_model(size=SIZE))
    methods = ["saliency", "guided_backprop", "gradcam"]
    return sanity_check(session, _images(4), np.array([0, 1, 2, 0]), methods, MapSettings())


def test_cascade_walks_the_tiny_cnn_from_the_logits_down(cascade: list) -> None:
    for curve in cascade:
        assert curve.depth == (1, 2, 3)
        assert curve.layers == ("fc", "conv2", "conv1")
        assert len(curve.spearman) == len(curve.ssim) == len(curve.spearman_signed) == 3


def test_plain_gradient_correlation_falls_after_randomisation(cascade: list) -> None:
    saliency = next(c for c in cascade if c.method == "saliency")
    assert saliency.spearman[-1] < 0.5
    assert saliency.ssim[-1] < 0.5


def test_guided_backprop_is_reported_whatever_it_does(cascade: list) -> None:
    guided = next(c for c in cascade if c.method == "guided_backprop")
    values = [*guided.spearman, *guided.ssim]
    assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in values)


def test_evaluate_reports_the_cascade_in_its_table() -> None:
    session = ExplainSession(tiny_model(size=SIZE, labels=("a", "b")))
    n = 3
    mask = np.zeros((n, SIZE, SIZE), bool)
    mask[:, 4:12, 4:12] = True
    data = EvalSet(
        "tiny",
        _images(n).transpose(0, 2, 3, 1).copy(),
        ((0,), (1,), (0,)),
        mask,
        np.array([[4, 4, 12, 12]] * n, np.int64),
        "a square",
    )
    config = EvalConfig(
        methods=("saliency", "guided_backprop", "random"), curve_steps=4, sanity_images=2
    )
    result = evaluate(session, data, config)
    assert [c.method for c in result.sanity] == ["saliency", "guided_backprop"]  # not random
    row = next(line for line in result.to_markdown().splitlines() if line.startswith("| saliency"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    curve = result.curve("saliency")
    assert cells[9:12] == [  # after the 0 px and the wide pointing games
        f"{curve.spearman[0]:.3f}",
        f"{curve.spearman[-1]:.3f}",
        f"{curve.ssim[-1]:.3f}",
    ]
    assert result.to_dict()["sanity"]["guided_backprop"]["layers"] == ["fc", "conv2", "conv1"]
    assert "Spearman undefined" not in result.to_markdown()
    flat = replace(curve, spearman=(math.nan, 0.5, math.nan), undefined=(2, 0, 2))
    md = replace(result, sanity=(flat, result.sanity[1])).to_markdown()
    assert "image × depth pairs: saliency 4." in md
    row = next(line for line in md.splitlines() if line.startswith("| saliency"))
    assert row.split("|")[10:12] == [" n/a ", " n/a "]  # sanity ρ columns
