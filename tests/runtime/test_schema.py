"""The shipped JSON Schemas validate real outputs, and refuse broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from gradtap.runtime import catalog
from gradtap.runtime.image.geometry import Geometry, to_original
from gradtap.runtime.schema import SCHEMAS, load_schema, metadata_document


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("schema")
    photo = root / "wide.png"
    img = np.full((60, 150, 3), 90, np.uint8)
    cv2.circle(img, (75, 30), 18, (20, 220, 240), -1)
    cv2.imwrite(str(photo), img)
    out = root / "out"
    runner = CliRunner()
    for args in (
        ["explain", str(photo), "-m", "gradcam", "-m", "saliency", "-t", "top-2", "--format",
         "overlay,npy"],
        ["attack", str(photo)],
        ["localize", str(photo)],
        ["visualize", "-t", "disc", "--steps", "1"],
    ):  # fmt: skip
        done = runner.invoke(cli, ["-q", *args, "-M", "smallcnn", "-o", str(out)])
        assert done.exit_code == 0, done.output
    return json.loads((out / "summary.json").read_text()), out


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


def test_summary_of_every_command_validates(summary: tuple[dict, Path]) -> None:
    record, _ = summary
    jsonschema.validate(record, load_schema("summary"))
    assert {r["command"] for r in record["runs"]} == {"explain", "attack", "localize", "visualize"}
    broken = json.loads(json.dumps(record))
    broken["groups"]["wide"]["geometry"]["crop"]["width"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, load_schema("summary"))
    del broken["items"][0]["files"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, load_schema("summary"))


def test_summary_geometry_maps_a_saved_map_onto_the_photo(summary: tuple[dict, Path]) -> None:
    """Following the recorded geometry by hand puts the map where to_original puts it."""
    record, out = summary
    g = record["groups"]["wide"]["geometry"]
    assert g["original_size"] == [60, 150]
    crop = g["crop"]
    geometry = Geometry(
        tuple(g["original_size"]),
        tuple(g["resized_size"]),
        (crop["top"], crop["left"], crop["height"], crop["width"]),
    )
    raw = np.load(out / "wide" / "saliency-0.npy")
    by_hand = np.zeros(g["resized_size"], np.float32)
    inside = _resize(raw, (crop["height"], crop["width"]))
    top, left = crop["top"], crop["left"]
    by_hand[top : top + crop["height"], left : left + crop["width"]] = inside
    by_hand = _resize(by_hand, (60, 150))
    np.testing.assert_allclose(to_original(raw, geometry), by_hand, atol=1e-5)


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """As the schema says: area averaging when shrinking, bilinear when growing."""
    if arr.shape == size:
        return arr
    shrink = size[0] <= arr.shape[0] and size[1] <= arr.shape[1]
    flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(arr, (size[1], size[0]), interpolation=flag)


def test_model_metadata_validates() -> None:
    path = catalog.packaged_models()["smallcnn"]
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    doc = metadata_document(meta.custom_metadata_map)
    jsonschema.validate(doc, load_schema("model-metadata"))
    assert doc["gradtap.labels"][0] == "disc"
    doc["gradtap.resize"] = {"policy": "squash"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema("model-metadata"))
