"""The committed explanation graph of the trained custom CNN: current, accurate, torch-free."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from gradtap.export.graph.version import PASS_VERSION
from gradtap.runtime import ExplainSession
from gradtap.runtime import contract as c
from gradtap.runtime.evaluate.synthetic import CLASS_NAMES, TEST_SEED, make_split
from tests import REPO

MODELS = REPO / "models"
SHIPPED = MODELS / "smallcnn.gradtap.onnx"


def meta() -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(SHIPPED)).metadata_props}


def test_shipped_graph_was_written_by_the_current_pass() -> None:
    assert meta()[c.META_PASS_VERSION] == PASS_VERSION, "stale: run `make models`"


def test_shipped_graph_labels_are_the_synthetic_classes() -> None:
    assert json.loads(meta()[c.META_LABELS]) == list(CLASS_NAMES)


def test_shipped_graph_classifies_the_held_out_split_without_torch() -> None:
    session = ExplainSession(SHIPPED)
    size = session.info.input_size[0]
    split = make_split(400, seed=TEST_SEED, size=size)
    x = np.ascontiguousarray(split.images.transpose(0, 3, 1, 2), dtype=np.float32)
    accuracy = float(np.mean(session.logits(x).argmax(1) == split.labels))
    assert accuracy >= 0.95


def test_shipped_graph_equals_the_checkpoint() -> None:
    torch = pytest.importorskip("torch")
    from gradtap.export.models.zoo import build, pixel_space

    model, spec = build("smallcnn", MODELS / "smallcnn.pt")
    split = make_split(8, seed=TEST_SEED, size=spec.input_size[0])
    x = np.ascontiguousarray(split.images.transpose(0, 3, 1, 2), dtype=np.float32)
    with torch.no_grad():
        expected = pixel_space(model, spec)(torch.from_numpy(x)).numpy()
    got = ExplainSession(SHIPPED).logits(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
