"""Shapes past onnx's inference: Reshapes fed by Shape and Slices with a dynamic batch.

The graphs are written as torch's TorchScript exporter writes them with a dynamic batch; the
backward passes are checked against finite differences at two batch sizes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from tests.export.graph.test_rules import assert_vjp


def model_of(nodes: list[onnx.NodeProto], x_shape: list, inits: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def channel_shuffle(groups: int = 2) -> onnx.ModelProto:
    """torchvision's channel_shuffle: view(n, g, c/g, h, w), transpose(1, 2), view(n, -1, h, w),
    the sizes read with Shape/Gather, then a pool that needs static spatial sizes."""
    dim = {k: np.asarray(k, np.int64) for k in range(4)}
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    for k, name in ((0, "n"), (2, "h"), (3, "w")):
        nodes += [
            helper.make_node("Gather", ["s", f"i{k}"], [name], axis=0),
            helper.make_node("Unsqueeze", [name, "zero"], [f"{name}1"]),
        ]
    nodes += [
        helper.make_node("Concat", ["n1", "g", "cg", "h1", "w1"], ["shape5"], axis=0),
        helper.make_node("Reshape", ["x", "shape5"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Concat", ["n1", "minus1", "h1", "w1"], ["shape4"], axis=0),
        helper.make_node("Reshape", ["swapped", "shape4"], ["shuffled"]),
        helper.make_node("AveragePool", ["shuffled"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = {f"i{k}": dim[k] for k in (0, 2, 3)}
    inits.update(zero=np.asarray([0]), g=np.asarray([groups]), cg=np.asarray([6 // groups]),
                 minus1=np.asarray([-1]))  # fmt: skip
    return model_of(nodes, ["N", 6, 4, 4], inits)


def test_onnx_loses_the_shuffled_shape_and_graph_info_recovers_it() -> None:
    model = channel_shuffle()
    plain = onnx.shape_inference.infer_shapes(model, data_prop=True)
    lost = {vi.name: vi for vi in plain.graph.value_info}
    dims = lost["shuffled"].type.tensor_type.shape.dim if "shuffled" in lost else []
    assert not dims or not all(d.HasField("dim_value") for d in dims[1:])  # why shapes.py exists
    info = GraphInfo.of(model)
    assert info.shape("shuffled")[1:] == (6, 4, 4)
    assert info.shape("shuffled")[0] == "N"  # the batch stays dynamic, under the input's name
    assert info.shape("grouped")[1:] == (2, 3, 4, 4)


def test_channel_shuffle_with_a_dynamic_batch_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # piecewise linear: a large step has no truncation error
        x = rng.normal(size=(batch, 6, 4, 4)).astype(np.float32)
        assert_vjp(channel_shuffle(), {"x": x}, eps=1.0, rng=rng)


def test_slice_with_a_dynamic_batch_matches_finite_differences() -> None:
    """ghostnet/rexnet slice channels ``x[:, :c]`` of a tensor whose batch is dynamic."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["t"]),
        helper.make_node("Slice", ["t", "zero", "big", "zero"], ["y"]),
    ]
    inits = {"starts": np.asarray([1, -3]), "ends": np.asarray([4, 100]),
             "axes": np.asarray([1, 2]), "zero": np.asarray([0]), "big": np.asarray([2**63 - 1])}  # fmt: skip
    model = model_of(nodes, ["N", 6, 5], inits)
    for batch in (2, 3):
        x = rng.normal(size=(batch, 6, 5)).astype(np.float32)
        assert_vjp(model, {"x": x}, eps=1.0, rng=rng)


def test_resize_to_sizes_read_from_shape_keeps_the_batch() -> None:
    """HRNet's fuse layers (TorchScript, dynamic batch): Resize to ``sizes`` = the input's own
    [N, C] from Shape, then the spatial size. onnx names the output's batch afresh; a dynamic
    first axis on both sides is the batch, which the backward pass leaves alone."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["r", "", "", "sizes"], ["y"], mode="linear"),
    ]
    inits = {"zero": np.asarray([0]), "two": np.asarray([2]), "hw": np.asarray([6, 8])}
    model = model_of(nodes, ["N", 2, 3, 4], inits)
    info = GraphInfo.of(model)
    assert info.shape("y")[1:] == (2, 6, 8) and info.shape("y")[0] != info.shape("r")[0]
    for batch in (1, 3):
        x = rng.normal(size=(batch, 2, 3, 4)).astype(np.float32)
        assert_vjp(model, {"x": x}, eps=1e-2, rng=rng)
