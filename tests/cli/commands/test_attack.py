"""``gradtap attack``, ``visualize`` and ``localize``: results checked with the forward graph.

Oracles: the plain forward graph in onnxruntime (cross-entropy before and after FGSM, the class
the fooling image reaches, the logit a class visualisation raises), the FGSM definition
(every unclipped pixel moves by exactly eps), and a hand-built model whose gradient is zero
outside a known square, so GrabCut must return that square.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from gradtap.export.graph.augment import augment
from gradtap.runtime.image.geometry import to_input
from gradtap.runtime.image.read import load_image
from gradtap.runtime.session import ExplainSession
from tests.conftest import invoke
from tests.graphs import tiny_cnn

LABELS = ["cat", "dog", "bird"]
SIZE = 16
SQUARE = (8, 20, 12, 24)  # rows 8..19, columns 12..23 of the 32 x 32 input


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {k: folder / f"{k}.onnx" for k in ("forward", "augmented", "square")}
    onnx.save(tiny_cnn(size=SIZE), str(paths["forward"]))
    onnx.save(augment(tiny_cnn(size=SIZE), labels=LABELS), str(paths["augmented"]))
    onnx.save(augment(square_model(), labels=["object", "other"]), str(paths["square"]))
    return paths


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    return path


def square_model() -> onnx.ModelProto:
    """logits = Gemm(GAP(Relu(Conv(x * mask)))): d logits / dx is zero outside the square."""
    r0, r1, c0, c1 = SQUARE
    mask = np.zeros((1, 1, 32, 32), np.float32)
    mask[..., r0:r1, c0:c1] = 1
    inits = {
        "mask": mask,
        "w": np.ones((2, 3, 3, 3), np.float32) / 27,
        "fc_w": np.array([[1.0, 1.0], [-1.0, 0.5]], np.float32),
        "fc_b": np.zeros(2, np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["input", "mask"], ["masked"], name="mask"),
        helper.make_node("Conv", ["masked", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"], name="relu"),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "square",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def forward(models: dict[str, Path], x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(models["forward"])).run(None, {"input": x})[0]


def cross_entropy(logits: np.ndarray, label: int) -> float:
    z = logits.astype(np.float64)
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[label])


def model_input(models: dict[str, Path], photo: Path) -> np.ndarray:
    return to_input(load_image(photo), ExplainSession(models["augmented"]).info)[0]


def test_fgsm_moves_every_free_pixel_by_eps_and_raises_the_loss(
    models: dict[str, Path], photo: Path, tmp_path: Path
) -> None:
    eps = 0.02
    result = invoke(
        "attack", photo, "-M", models["augmented"], "--eps", eps, "-o", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["items"][0]
    x = model_input(models, photo)
    adv = np.load(tmp_path / "chelsea" / "fgsm.npy")[None]
    free = (x > eps) & (x < 1 - eps)
    step = np.abs(adv - x)[free]  # sign(gradient) * eps, or 0 where the gradient is exactly 0
    assert np.all(np.isclose(step, eps, atol=1e-6) | (step == 0)) and (step > 0).mean() > 0.5
    assert np.abs(adv - x).max() <= eps + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    label = int(forward(models, x)[0].argmax())
    assert item["class"] == label and not item["targeted"]
    assert cross_entropy(forward(models, adv)[0], label) > cross_entropy(
        forward(models, x)[0], label
    )
    assert item["after"]["class"] == int(forward(models, adv)[0].argmax())
    for suffix in (".png", ".panel.png"):
        assert (tmp_path / "chelsea" / f"fgsm{suffix}").is_file()


def test_iterative_fooling_reaches_the_target_within_budget(
    models: dict[str, Path], photo: Path, tmp_path: Path
) -> None:
    x = model_input(models, photo)
    target = 0  # reachable from this photo for these weights; the model predicts another class
    assert int(forward(models, x)[0].argmax()) != target
    args = ["-t", LABELS[target], "--steps", "60", "--step-size", "0.02", "--eps", "0.5"]
    result = invoke("attack", photo, "-M", models["augmented"], *args, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["items"][0]
    adv = np.load(tmp_path / "chelsea" / f"fool-{target}.npy")[None]
    assert item["success"] and item["targeted"] and 1 <= item["steps"] <= 60
    assert int(forward(models, adv)[0].argmax()) == target
    assert np.abs(adv - x).max() <= 0.5 + 1e-6
    assert item["linf"] == pytest.approx(float(np.abs(adv - x).max()), abs=1e-5)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--steps", "5"], "needs --target-class"),
        (["--eps", "-0.1"], "--eps"),
        (["--eps", "0"], "--eps"),
        (["--steps", "0"], "--steps"),
        (["-t", "zebra"], "unknown class name"),
        (["-t", "9"], "out of range"),
    ],
)
def test_attack_usage_errors(
    models: dict[str, Path], photo: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    result = invoke("attack", photo, "-M", models["augmented"], *args, "-o", tmp_path / "out")
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_attack_batch_goes_on_past_a_bad_file(
    models: dict[str, Path], photo: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = invoke("attack", bad, photo, "-M", models["augmented"], "-o", tmp_path / "out")
    assert result.exit_code == 1 and "bad.png" in result.stderr and "Traceback" not in result.output
    assert (tmp_path / "out" / "chelsea" / "fgsm.png").is_file()
    again = invoke("attack", photo, "-M", models["augmented"], "-o", tmp_path / "out")
    assert again.exit_code == 1 and "--overwrite" in again.stderr


def test_visualize_raises_the_class_logit(models: dict[str, Path], tmp_path: Path) -> None:
    result = invoke(
        "visualize",
        "-M",
        models["augmented"],
        "-c",
        "cat",
        "-c",
        "2",
        "--steps",
        "40",
        "--jitter",
        "0",
        "--blur-every",
        "0",
        "-o",
        tmp_path,
        "--json",
    )
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert [i["class"] for i in items] == [0, 2]
    start = forward(models, np.zeros((1, 3, SIZE, SIZE), np.float32))[0]  # init "mean" = 0 here
    for item, name in zip(items, ("0-cat", "2-bird"), strict=True):
        img = load_image(tmp_path / "classes" / f"{name}.png").transpose(2, 0, 1)[None]
        logit = forward(models, img)[0][item["class"]]
        assert logit > start[item["class"]] + 1e-3
        assert item["logit_end"] > item["logit_start"]
        assert (tmp_path / "classes" / f"{name}.panel.png").is_file()
    assert "class visualisations" in (tmp_path / "index.html").read_text()


def test_visualize_from_an_image_and_its_errors(
    models: dict[str, Path], photo: Path, tmp_path: Path
) -> None:
    ok = invoke(
        "visualize",
        "-M",
        models["augmented"],
        "-c",
        "1",
        "--steps",
        "2",
        "--init",
        photo,
        "-o",
        tmp_path,
    )
    assert ok.exit_code == 0, ok.output
    for args, needle in (
        (["-c", "9"], "out of range"),
        (["-c", "0", "--init", "plasma"], "--init"),
        (["-c", "0", "--steps", "0"], "--steps"),
        (["-c", "0", "--l2", "1"], "--l2"),
    ):
        result = invoke("visualize", "-M", models["augmented"], *args, "-o", tmp_path / "x")
        assert result.exit_code == 2 and needle in result.output, result.output
    assert (
        invoke("visualize", "-M", models["augmented"], "-c", "1", "-o", tmp_path).exit_code == 1
    )  # exists


def test_localize_finds_the_only_square_the_model_sees(
    models: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)  # grey noise, 2x the input size
    r0, r1, c0, c1 = (2 * v for v in SQUARE)
    image[r0:r1, c0:c1] = (30, 30, 220)  # a red square in RGB, written as BGR below
    path = tmp_path / "square.png"
    cv2.imwrite(str(path), image)
    result = invoke("localize", path, "-M", models["square"], "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["items"][0]
    assert item["image_size"] == [64, 64]
    np.testing.assert_allclose(item["box"], [c0, r0, c1, r1], atol=2)
    drawn = cv2.imread(str(tmp_path / "out" / "square" / "localize.png"))
    assert drawn.shape == image.shape
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["items"][0]["box"] == item["box"]


def test_localize_errors(models: dict[str, Path], tmp_path: Path) -> None:
    args = ["localize", tmp_path / "none.png", "-M", models["square"], "-o", tmp_path / "out"]
    assert invoke(*args).exit_code == 1
    bad = invoke(*args, "--fg-quantile", "0.2", "--bg-quantile", "0.5")
    assert bad.exit_code == 2 and "--bg-quantile" in bad.output
