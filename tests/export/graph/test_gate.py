"""The gated explanation graph: the ``compute`` input runs only the parts asked for (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from gradtap.export.graph.augment import augment
from gradtap.export.graph.gate import branch_nodes, gate, ungate
from gradtap.export.graph.lrp import LRP_ROWS
from gradtap.export.graph.scopes import reads
from gradtap.runtime import contract as c
from tests.graphs import controls, session, tiny_cnn, with_defaults

RNG = np.random.default_rng(11)
NAMES = [c.LOGITS, "tap/features", c.GRAD_INPUT, "grad/tap/features"]
BACKWARD_OPS = {"ConvTranspose", "ScatterElements", "Where", "Sum"}


@pytest.fixture(scope="module")
def gated() -> onnx.ModelProto:
    return augment(tiny_cnn(), taps={"features": "features"}, lrp=True)  # its rows gated too


@pytest.fixture(scope="module")
def flat() -> onnx.ModelProto:
    """The same graph with the gating step skipped: every node at the top level."""
    return augment(tiny_cnn(), taps={"features": "features"}, flat=True)


def _flat(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds of a flat graph: it has no ``compute`` input."""
    return {k: v for k, v in f.items() if k != c.COMPUTE}


def feeds(rule: int = 0, **extra: int) -> dict[str, np.ndarray]:
    out = {
        c.INPUT: RNG.random((2, 3, 8, 8), dtype=np.float32),
        c.SEED: RNG.normal(size=(2, 3)).astype(np.float32),
        **controls(relu_rule=rule),
    }
    out.update({k: np.asarray(v, np.int64) for k, v in extra.items()})
    return out


def gates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The If nodes that hold the backward pass (not the residual ones)."""
    return [n for n in model.graph.node if n.op_type == "If" and "/residual/" not in n.name]


def residuals(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "If" and "/residual/" in n.name]


def body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "then_branch")


def test_the_backward_pass_lives_in_two_if_branches(gated: onnx.ModelProto) -> None:
    top = [n.op_type for n in gated.graph.node]
    assert [n.name for n in gates(gated)] == ["gate/to_taps/If", "gate/to_input/If"]
    assert not BACKWARD_OPS & set(top)
    inner = {m.op_type for n in gates(gated) for m in body(n).node}
    assert {"Conv", "ScatterElements", "Mul"} <= inner  # stride-1 backward convs are Convs
    assert "ConvTranspose" not in inner and len(branch_nodes(gated)) > len(top)
    # the flipped weights depend on constants only: in the branch that reads them, where
    # runtimes fold them at load, so forward-only calls never pay for them
    assert not {"Transpose", "Slice"} & set(top)
    assert {"Transpose", "Slice"} <= {m.op_type for m in body(gates(gated)[1]).node}
    assert c.COMPUTE in {i.name for i in gated.graph.input}


def test_the_backward_pass_reads_compact_residuals_not_activations(
    gated: onnx.ModelProto,
) -> None:
    """Rectifier masks (bool) and max-pool argmaxes (int32) are computed in the forward pass,
    in small If nodes of their own, so the activations they summarise die there."""
    read = {x for n in gates(gated) for m in body(n).node for x in reads(m)}  # branches too
    assert not read & {"c1", "r1", "c2", "features"}  # conv and ReLU outputs
    every = [m for n in residuals(gated) for m in body(n).node]
    inner = [m for m in every if not m.output[0].startswith("lrp/")]  # the LRP walk: below
    assert {m.op_type for m in inner} <= {"Greater", "Mod", "Cast", "Shape", "Size"}
    # the LRP walk's copies of activations: Ifs yielding an empty tensor in gradient calls
    rows = [m for m in every if m.output[0].startswith(LRP_ROWS)]
    assert {m.op_type for m in rows} == {"GreaterOrEqual", "If"}
    copied = {x for m in rows if m.op_type == "If" for x in body(m).node[0].input}
    assert {"c1", "c2"} <= copied
    for m in rows:
        if m.op_type == "If":
            off = next(a.g for a in m.attribute if a.name == "else_branch")
            assert [k.op_type for k in off.node] == ["Constant", "ConstantOfShape"]
    kinds = {
        o.type.tensor_type.elem_type
        for n in residuals(gated)
        for o in body(n).output
        if not o.name.startswith(LRP_ROWS)
    }
    assert {TensorProto.BOOL, TensorProto.INT32} <= kinds
    producer = {o: m for m in inner for o in m.output}
    for o in (o for n in residuals(gated) for o in body(n).output):
        if o.name.startswith(LRP_ROWS):
            continue
        if o.type.tensor_type.elem_type == TensorProto.FLOAT:  # only element counts, cast
            assert producer[o.name].op_type == "Cast"
            assert producer[producer[o.name].input[0]].op_type in ("Size", "Shape")
    relu1 = next(n for n in residuals(gated) if "r1" in {x for m in body(n).node for x in m.input})
    assert relu1.input == ["gate/to_input"]  # read below the tap only: off for Grad-CAM


def test_onnxruntime_computes_each_residual_before_the_next_layer(tmp_path: Path) -> None:
    """The node order makes onnxruntime's depth-first scheduler run the first ReLU's mask before
    the second convolution, so the first activation is not held through the forward pass."""
    gated = augment(tiny_cnn(), taps={})  # every residual below the (absent) taps
    relu1 = next(n for n in residuals(gated) if "r1" in {x for m in body(n).node for x in m.input})
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    s = ort.InferenceSession(gated.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    s.run([c.LOGITS, c.GRAD_INPUT], feeds())
    events = json.loads(Path(s.end_profiling()).read_text())
    ran = [
        (e["name"].removesuffix("_kernel_time"), e["args"]["op_name"])
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    convs = [
        i
        for i, (name, op) in enumerate(ran)
        if "Conv" in op and not name.startswith(("grad", "lrp"))
    ]
    assert len(convs) == 2  # the forward pass's two convolutions (fused or not)
    assert [name for name, _ in ran].index(relu1.name) < convs[1]


@pytest.mark.parametrize("rule", list(c.RELU_RULES.values()))
def test_full_compute_equals_the_flat_graph(
    gated: onnx.ModelProto, flat: onnx.ModelProto, rule: int
) -> None:
    f = feeds(rule)
    want = session(flat).run(NAMES, _flat(f))
    got = session(gated).run(NAMES, f)  # compute = 2: everything
    for g, w, name in zip(got, want, NAMES, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=name)


def test_lower_levels_return_empty_gradients_of_the_right_rank(
    gated: onnx.ModelProto, flat: onnx.ModelProto
) -> None:
    f = feeds()
    want = dict(zip(NAMES, session(flat).run(NAMES, _flat(f)), strict=True))
    taps = dict(
        zip(
            NAMES, session(gated).run(NAMES, {**f, c.COMPUTE: np.asarray(1, np.int64)}), strict=True
        )
    )
    fwd = dict(
        zip(
            NAMES, session(gated).run(NAMES, {**f, c.COMPUTE: np.asarray(0, np.int64)}), strict=True
        )
    )
    for name in (c.LOGITS, "tap/features"):
        np.testing.assert_allclose(taps[name], want[name], rtol=1e-6)
        np.testing.assert_allclose(fwd[name], want[name], rtol=1e-6)
    np.testing.assert_allclose(taps["grad/tap/features"], want["grad/tap/features"], rtol=1e-6)
    assert taps[c.GRAD_INPUT].shape == (0, 0, 0, 0)
    assert fwd[c.GRAD_INPUT].shape == (0, 0, 0, 0) and fwd["grad/tap/features"].size == 0


def test_the_reference_evaluator_agrees_at_every_level(
    gated: onnx.ModelProto, flat: onnx.ModelProto
) -> None:
    """onnx's own evaluator (an independent engine, If included) gives onnxruntime's numbers."""
    ref, s = ReferenceEvaluator(gated), session(gated)
    for level in c.COMPUTE_LEVELS.values():
        f = with_defaults(s, feeds(rule=1, compute=level))
        for got, want in zip(ref.run(NAMES, f), s.run(NAMES, f), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_without_taps_gates_only_the_input_gradient() -> None:
    model = augment(tiny_cnn(), taps={})
    assert [n.name for n in gates(model)] == ["gate/to_input/If"]
    assert all(n.input == ["gate/to_input"] for n in residuals(model))
    s = session(model)
    f = feeds()
    got = s.run([c.GRAD_INPUT], {**f, c.COMPUTE: np.asarray(0, np.int64)})[0]
    assert got.size == 0 and s.run([c.GRAD_INPUT], f)[0].shape == (2, 3, 8, 8)


def test_ungate_inlines_the_branches_back(gated: onnx.ModelProto, flat: onnx.ModelProto) -> None:
    inlined = ungate(gated)
    assert "If" not in {n.op_type for n in inlined.graph.node}
    onnx.checker.check_model(inlined)
    f = feeds(rule=2)
    for got, want in zip(
        session(inlined).run(NAMES, f), session(flat).run(NAMES, _flat(f)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tapped", [False, True])
def test_a_residual_reading_an_earlier_layers_residual_comes_after_it(tapped: bool) -> None:
    """A mask combining two layers' masks: its If reads the earlier layer's If, so it must be
    listed after it even though residuals are otherwise listed latest layer first; and when the
    pass down to a tap reads the combined mask, both run at ``compute = 1``."""
    node = helper.make_node
    tap = [
        node("Identity", ["b"], ["tap/b"]),
        node("Mul", ["both_f", "b"], ["grad/tap/b"]),
    ]
    nodes = [
        node("Relu", [c.INPUT], ["a"]),
        node("Sub", ["a", "half"], ["a_shift"]),
        node("Relu", ["a_shift"], ["b"]),
        node("ReduceMean", ["b", "axes"], ["pooled"], keepdims=0),
        node("Identity", ["pooled"], [c.LOGITS]),
        # a stand-in backward pass: x where both layers' ReLUs pass
        node("Greater", ["a", "zero"], ["a_on"]),
        node("Greater", ["b", "zero"], ["b_on"]),
        node("And", ["a_on", "b_on"], ["both_on"]),
        node("Cast", ["both_on"], ["both_f"], to=TensorProto.FLOAT),
        node("Mul", ["both_f", c.INPUT], [c.GRAD_INPUT]),
        *(tap if tapped else []),
    ]
    outputs = [c.LOGITS, c.GRAD_INPUT] + (["tap/b", "grad/tap/b"] if tapped else [])
    graph = helper.make_graph(
        nodes,
        "two_layer_mask",
        [helper.make_tensor_value_info(c.INPUT, TensorProto.FLOAT, ["n", 3, 4, 4])],
        [
            helper.make_tensor_value_info(
                o, TensorProto.FLOAT, ["n", 3] if o == c.LOGITS else ["n", 3, 4, 4]
            )
            for o in outputs
        ],
        initializer=[
            numpy_helper.from_array(np.float32(0.5), "half"),
            numpy_helper.from_array(np.float32(0.0), "zero"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ],
    )
    flat = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    flat.ir_version = 8
    gated = gate(onnx.ModelProto.FromString(flat.SerializeToString()))
    onnx.checker.check_model(gated, full_check=True)  # nodes topologically sorted
    assert len(residuals(gated)) == 2
    level = "gate/to_taps" if tapped else "gate/to_input"
    assert all(n.input == [level] for n in residuals(gated))
    x = {c.INPUT: RNG.normal(size=(2, 3, 4, 4)).astype(np.float32) + 0.5}
    want = dict(zip(outputs, session(flat).run(outputs, x), strict=True))
    for compute in (2, 1):
        feed = {**x, c.COMPUTE: np.asarray(compute, np.int64)}
        got = dict(zip(outputs, session(gated).run(outputs, feed), strict=True))
        np.testing.assert_array_equal(got[c.LOGITS], want[c.LOGITS])
        if tapped:
            np.testing.assert_array_equal(got["grad/tap/b"], want["grad/tap/b"])
        if compute == 2:
            np.testing.assert_array_equal(got[c.GRAD_INPUT], want[c.GRAD_INPUT])
        else:
            assert got[c.GRAD_INPUT].size == 0
