"""runtime.modelfile: every external-data reference of an ONNX file, found without loading it.

Oracles: onnx's own walk over a model's tensors, and protobuf's parser for what a well-formed
message is (groups included, which it skips as unknown fields).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.runtime.errors import ModelError
from gradtap.runtime.modelfile import check_external_data, external_locations
from tests import corpus
from tests.graphs import tiny_cnn

OUTSIDE = "points outside the model's folder; refused"


def secret(folder: Path) -> Path:
    path = folder / "secret.bin"
    path.write_bytes(np.ones(6 * 4 * 3 * 3, np.float32).tobytes())
    return path


def test_the_scanner_agrees_with_onnx_on_where_external_data_lives() -> None:
    """Oracle: onnx's own walk over every tensor of a model (graphs, attributes, functions)."""
    model = corpus.with_external_data(tiny_cnn(), "a.bin")
    model = corpus.with_external_data(model, "sub/b.bin", in_constant=True)
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(np.ones(2, np.float32), "sv"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0, 3], np.int64), "si"))
    sparse.dims.extend([4])
    onnx.external_data_helper.set_external_data(sparse.values, location="c.bin")
    model.graph.sparse_initializer.append(sparse)
    fn_tensor = numpy_helper.from_array(np.ones(1, np.float32), "f")
    onnx.external_data_helper.set_external_data(fn_tensor, location="d.bin")
    fn = helper.make_function(
        "my", "fn", [], ["y"], [helper.make_node("Constant", [], ["y"], value=fn_tensor)], []
    )
    model.functions.append(fn)
    expected = {
        (t.name, next(e.value for e in t.external_data if e.key == "location"))
        for t in onnx.external_data_helper._get_all_tensors(model)
        if t.external_data
    }
    expected |= {("sv", "c.bin"), ("f", "d.bin")}  # onnx's walk skips sparse and functions
    assert set(external_locations(model.SerializeToString())) == expected


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x3a\x05ab", "a field runs past the end of the data"),
        (b"\x0b\x08\x01", "an unterminated group"),
        (b"\x0c", "an end of group outside a group"),
        (b"\x3a\xff", "a truncated number"),
        (b"\x0f", "unexpected wire type 7"),
    ],
)
def test_malformed_protobuf_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ModelError, match=f"cannot load '<in-memory model>' .*{why}"):
        check_external_data(data)


def test_groups_are_skipped_like_protobuf_does() -> None:
    """A group before the graph must not hide an external reference from the scan."""
    model = corpus.with_external_data(tiny_cnn(), "../escape.bin").SerializeToString()
    group = b"\xa3\x06\x08\x01\xa4\x06"  # field 100: start group, a varint, end group
    assert onnx.load_from_string(group + model).graph.node  # protobuf accepts it
    with pytest.raises(ModelError, match=f"'../escape.bin' of tensor 'w2' {OUTSIDE}"):
        check_external_data(group + model)


def test_a_symlinked_model_is_checked_in_both_folders(tmp_path: Path) -> None:
    """Loaders differ on which folder a symlinked model's data is relative to: check both."""
    store, models = tmp_path / "store", tmp_path / "models"
    store.mkdir()
    models.mkdir()
    aug = corpus.with_external_data(augment(tiny_cnn(size=corpus.SIZE)), "w.bin")
    (store / "m.onnx").write_bytes(aug.SerializeToString())
    (store / "w.bin").write_bytes(np.ones(6 * 4 * 3 * 3, np.float32).tobytes())
    os.symlink(store / "m.onnx", models / "m.onnx")
    os.symlink(secret(tmp_path), models / "w.bin")  # what a loader using models/ would read
    check_external_data(store / "m.onnx")
    with pytest.raises(ModelError, match=f"'w.bin' of tensor 'w2' {OUTSIDE}"):
        check_external_data(models / "m.onnx")
