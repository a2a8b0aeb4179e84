"""``gradtap evaluate --engine ray`` on a local Ray instance (2 CPUs, bound to 127.0.0.1).

Oracle: the single-process ``gradtap evaluate`` on the same set: the same per-image scores, the
same summary table and curves (the driver sums the rows in image order, as evaluate does), the
same sanity check and trust checks. A bad image (fault injection: NaN pixels) is an error row
and leaves every other image's scores as they were.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from gradtap.runtime.evaluate.data import load_set
from gradtap.runtime.evaluate.synthetic import CLASS_NAMES
from gradtap.runtime.session import ExplainSession
from tests.conftest import invoke
from tests.runtime_graphs import tiny_model

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

N = 20
METHODS = "saliency,gradcam,random"
SMALL = ["-n", str(N), "--steps", "4", "--samples", "2", "--sanity-images", "2",
         "--sanity-steps", "2", "--check-images", "1", "--methods", METHODS]  # fmt: skip
VARIABLE = ("seconds", "ms_per_image")  # timings: the only numbers allowed to differ


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "shapes.gradtap.onnx"
    onnx.save(tiny_model(size=32, labels=CLASS_NAMES), str(path))
    return path


@pytest.fixture(scope="module")
def local(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("local")
    result = invoke("evaluate", "-M", model, *SMALL, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "evaluation.json").read_text("utf-8"))


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in VARIABLE}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_shards_of_a_set_are_its_slices(model: Path) -> None:
    info = ExplainSession(str(model)).info
    whole = load_set("synthetic", info, 7)
    part = load_set("synthetic", info, 3, start=4)
    assert np.array_equal(part.images, whole.images[4:]) and part.classes == whole.classes[4:]
    assert np.array_equal(part.masks, whole.masks[4:]) and np.array_equal(
        part.boxes, whole.boxes[4:]
    )


def test_ray_evaluate_equals_the_single_process_one(
    local_ray: None, model: Path, local: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    result = invoke("evaluate", "-M", model, *SMALL, "-o", out, "--engine", "ray")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "evaluation.json").read_text("utf-8"))
    ray_info = record.pop("ray")
    assert ray_info["images_done"] == N and ray_info["images_failed"] == 0
    assert _without_timings(record) == _without_timings(local)
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted((r["index"], r["method"]) for r in rows) == sorted(
        (i, m) for i in range(N) for m in METHODS.split(",")
    )
    deletion = {r["index"]: r["deletion"] for r in rows if r["method"] == "gradcam"}
    per_image = local["methods"]["gradcam"]["per_image"]["deletion"]  # rounded to 5 digits
    assert [round(deletion[i], 5) for i in range(N)] == per_image
    assert (out / "evaluation.md").read_text("utf-8").count("| gradcam |") >= 1


def test_a_bad_image_is_an_error_row(
    local_ray: None,
    model: Path,
    local: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRADTAP_RAY_BAD_IMAGE", "5")
    out = tmp_path / "ray"
    result = invoke("evaluate", "-M", model, *SMALL, "-o", out, "--engine", "ray", "--no-sanity")
    assert result.exit_code == 1, result.output
    assert "image 5: input contains NaN or Inf" in result.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    errors = [r for r in rows if r["error"] is not None]
    assert [r["index"] for r in errors] == [5] and errors[0]["method"] is None
    record = json.loads((out / "evaluation.json").read_text("utf-8"))
    assert record["ray"]["images_failed"] == 1 and record["dataset"]["n_images"] == N - 1
    mine = record["methods"]["saliency"]["per_image"]["pointing"]
    theirs = local["methods"]["saliency"]["per_image"]["pointing"]
    assert mine == theirs[:5] + theirs[6:]  # the other images scored as before
