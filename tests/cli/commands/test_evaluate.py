"""``gradtap evaluate`` end to end on tiny models: files written, JSON record, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import onnx
import pytest
from click.testing import Result

from gradtap.runtime.evaluate.synthetic import CLASS_NAMES
from tests.conftest import invoke
from tests.runtime_graphs import tiny_model

SMALL = ["-n", "3", "--steps", "4", "--samples", "2", "--sanity-images", "2", "--check-images", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {k: folder / f"{k}.gradtap.onnx" for k in ("shapes", "other", "imagenet")}
    onnx.save(tiny_model(size=32, labels=CLASS_NAMES), str(paths["shapes"]))
    onnx.save(tiny_model(size=32, labels=("cat", "dog")), str(paths["other"]))
    imagenet = [f"class {k}" for k in range(1000)]
    onnx.save(tiny_model(size=32, labels=imagenet), str(paths["imagenet"]))
    return paths


def run(*args: str) -> Result:
    return invoke(*args, catch_exceptions=False)


def test_synthetic_run_writes_the_report(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    methods = "saliency,gradcam,random"
    result = run("evaluate", "-M", str(models["shapes"]), *SMALL, "--methods", methods,
                 "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert list(record["methods"]) == ["saliency", "gradcam", "random"]
    assert record["dataset"]["n_images"] == 3
    assert list(record["sanity"]) == ["saliency", "gradcam"]
    for name in ("evaluation.md", "evaluation.json", "curves.png", "sanity.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    for name in ("curves.png", "sanity.png", "examples.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 200
    md = (out / "evaluation.md").read_text("utf-8")
    assert "| gradcam |" in md and "![sanity check cascade](sanity.png)" in md
    assert "Pointing, wide" in md and record["settings"]["wide_tolerance"] == 15.0
    assert record["settings"]["fill_holes"] is True and "holes filled" in md
    assert "Region pert. AUC" in md and len(checks_peers := record["checks"]["peers"]) == 2
    assert all(len(v["region"]) == 1 for v in checks_peers.values())
    assert "### Fragility" in md and "### The peers' metrics" in md
    checks = record["checks"]
    assert checks["images"] == 1 and list(checks["peers"]) == ["saliency", "gradcam"]
    # the tiny CNN's first layer is a zero-padded Conv: no exact twin, said so
    assert "invariance" in checks or "Input invariance not checked" in md
    assert json.loads((out / "evaluation.json").read_text("utf-8")) == record
    assert "evaluate: sanity 3/3 cascade depth" in result.stderr


def test_composites_run_without_the_sanity_check(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run("evaluate", "-M", str(models["imagenet"]), "--dataset", "composites", *SMALL,
                 "--methods", "saliency", "--methods", "random", "--no-sanity", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "evaluation.md")
    record = json.loads((out / "evaluation.json").read_text("utf-8"))
    assert record["dataset"]["ground_truth"] == "pasted rectangle"
    assert record["sanity"] == {} and not (out / "sanity.png").exists()


@pytest.mark.parametrize(
    ("model", "extra", "code", "message"),
    [
        ("other", [], 1, "has no labels ['disc', 'square'"),
        ("other", ["--dataset", "composites"], 1, "need an ImageNet-1k classifier"),
        ("shapes", ["--methods", "saliency,lime"], 2, "unknown ['lime']"),
        ("missing", [], 2, "does not exist"),
    ],
)
def test_errors_are_one_line(
    models: dict[str, Path], tmp_path: Path, model: str, extra: list[str], code: int, message: str
) -> None:
    path = models.get(model, tmp_path / "missing.gradtap.onnx")
    result = run("evaluate", "-M", str(path), "-n", "2", "--out", str(tmp_path / "o"), *extra)
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.stderr.strip().splitlines()) <= 2  # the note line and the error


def test_existing_report_needs_overwrite(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "evaluation.md").write_text("old", "utf-8")
    args = ["evaluate", "-M", str(models["shapes"]), *SMALL, "--methods", "random", "--no-sanity"]
    refused = run(*args, "--out", str(tmp_path))
    assert refused.exit_code == 1
    assert "exists; pass --overwrite" in refused.stderr
    assert (tmp_path / "evaluation.md").read_text("utf-8") == "old"
    assert run(*args, "--out", str(tmp_path), "--overwrite").exit_code == 0
    assert (tmp_path / "evaluation.md").read_text("utf-8").startswith("## ")


def test_every_registered_method_is_evaluated(models: dict[str, Path], tmp_path: Path) -> None:
    from gradtap.runtime.methods.registry import METHODS

    out = tmp_path / "eval"
    result = run("evaluate", "-M", str(models["shapes"]), *SMALL, "--no-sanity",
                 "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["methods"]) == {*METHODS, "random"}


def test_exact_holes_turns_the_filled_outline_off(models: dict[str, Path], tmp_path: Path) -> None:
    result = run("evaluate", "-M", str(models["shapes"]), "-n", "2", "--steps", "4",
                 "--no-sanity", "--check-images", "0", "--methods", "gradcam,random",
                 "--exact-holes", "--out", str(tmp_path / "e"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["fill_holes"] is False
    assert "exact mask" in (tmp_path / "e" / "evaluation.md").read_text("utf-8")
