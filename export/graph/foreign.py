"""Pre-passes for third-party graphs: NHWC inputs, non-[0, 1] RGB preprocessing, probability heads.

The explanation graph always takes RGB pixels in [0, 1], NCHW (the contract). A deployed graph
may take something else: channels last (tf2onnx Keras models, torch channels-last exports), BGR,
0-255 values, a caffe-style mean without a std. :func:`prepend_preprocessing` puts the
conversion in front of the graph, so gradients flow through it to the contract's input.
A graph that ends in Softmax (or Sigmoid, multi-label) gives saturated probabilities, not
scores: :func:`find_head` finds that head so the pass explains its input, and
:func:`add_probabilities` puts the head back as an extra ``probabilities`` output.

Only onnx and numpy; every node emitted is an ai.onnx op with a backward rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.taps import candidate_taps, default_tap
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError

LAYOUTS = ("auto", "nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
HEADS = ("auto", "keep")
HEAD_OPS = frozenset({"Softmax", "Sigmoid"})
DEFAULT_TAP_ALIAS = "features"  # the default tap of a third-party graph: short and stable
TO_NHWC = (0, 2, 3, 1)
MODEL_INPUT = c.INPUT + "/model"  # the tensor the original graph reads after the conversion

# Windows ML image metadata (metadata_props), the one widespread convention for stating it.
_WINML_ORDER = {"Bgr8": "bgr", "Rgb8": "rgb", "Bgra8": "bgr", "Rgba8": "rgb"}
_WINML_RANGE = {
    "NominalRange_0_255": (0.0, 255.0),
    "Normalized_0_1": (0.0, 1.0),
    "Normalized_1_1": (-1.0, 1.0),
}


@dataclass(frozen=True)
class Preprocessing:
    """What the original graph expects, in its own terms.

    ``mean`` and ``std`` are in the graph's channel order and value units: caffe's BGR mean
    ``103.94,116.78,123.68`` with ``value_range=(0, 255)`` and no std, for example. The graph
    computes ``(lo + x * (hi - lo) - mean) / std`` per channel of its own order.
    """

    layout: str = "nchw"
    channel_order: str = "rgb"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def is_identity(self) -> bool:
        return (
            self.layout == "nchw"
            and self.channel_order == "rgb"
            and self.value_range == (0.0, 1.0)
            and self.mean is None
            and self.std is None
        )

    def as_rgb01(self) -> dict[str, list[float]]:
        """The same affine map as a mean and std on RGB [0, 1] pixels (the contract's terms)."""
        lo, hi = self.value_range
        mean = np.asarray(self.mean if self.mean is not None else [0.0] * 3, np.float64)
        std = np.asarray(self.std if self.std is not None else [1.0] * 3, np.float64)
        mean01, std01 = (mean - lo) / (hi - lo), std / (hi - lo)
        if self.channel_order == "bgr":
            mean01, std01 = mean01[::-1], std01[::-1]
        return {"mean": mean01.tolist(), "std": std01.tolist()}


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's one non-initializer input."""
    inits = {i.name for i in model.graph.initializer}
    images = [i for i in model.graph.input if i.name not in inits]
    if len(images) != 1:
        raise GraphError(f"expected one image input, found {[i.name for i in images]}")
    return images[0]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]


def detect_layout(model: onnx.ModelProto) -> str:
    """'nhwc' when the image input is [N, H, W, 3] and not [N, 3, H, W], else 'nchw'."""
    dims = _dims(image_input(model))
    if len(dims) == 4 and dims[3] == 3 and dims[1] != 3:
        return "nhwc"
    return "nchw"


def resolve_preprocessing(
    model: onnx.ModelProto,
    *,
    layout: str = "auto",
    channel_order: str | None = None,
    value_range: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Preprocessing, dict[str, str]]:
    """Stated options first, then the model's own metadata, then the contract's defaults.

    Returns the preprocessing and, per field, where it came from ('option', 'metadata',
    'detected', 'default').
    """
    if layout not in LAYOUTS:
        raise GraphError(f"layout {layout!r}: choose one of {list(LAYOUTS)}")
    if channel_order is not None and channel_order.lower() not in CHANNEL_ORDERS:
        raise GraphError(f"channel order {channel_order!r}: choose one of {list(CHANNEL_ORDERS)}")
    meta = {m.key: m.value for m in model.metadata_props}
    source: dict[str, str] = {}
    if layout == "auto":
        layout, source["layout"] = detect_layout(model), "detected"
    else:
        source["layout"] = "option"
    stated_order, stated_range = _from_metadata(meta)
    if channel_order is not None:
        order, source["channel_order"] = channel_order.lower(), "option"
    elif stated_order is not None:
        order, source["channel_order"] = stated_order, "metadata"
    else:
        order, source["channel_order"] = "rgb", "default"
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        source["value_range"] = "option"
    elif stated_range is not None:
        (lo, hi), source["value_range"] = stated_range, "metadata"
    else:
        (lo, hi), source["value_range"] = (0.0, 1.0), "default"
    if not hi > lo:
        raise GraphError(f"value range [{lo}, {hi}] is empty; give LO < HI")
    for name, values in (("mean", mean), ("std", std)):
        if values is not None:
            source[name] = "option"
            if len(values) != 3 or not all(np.isfinite(values)):
                raise GraphError(f"{name} needs three finite numbers, got {list(values)}")
    if std is not None and min(std) <= 0:
        raise GraphError(f"std must be > 0, got {list(std)}")
    prep = Preprocessing(
        layout=layout,
        channel_order=order,
        value_range=(lo, hi),
        mean=tuple(float(v) for v in mean) if mean is not None else None,
        std=tuple(float(v) for v in std) if std is not None else None,
    )
    return prep, source


def _from_metadata(meta: Mapping[str, str]) -> tuple[str | None, tuple[float, float] | None]:
    """Channel order and value range a graph states about its input, if it does."""
    order = _WINML_ORDER.get(meta.get("Image.BitmapPixelFormat", ""))
    value_range = _WINML_RANGE.get(meta.get("Image.NominalPixelRange", ""))
    if meta.get(c.META_COLOR_ORDER, "").upper() in ("RGB", "BGR"):
        order = meta[c.META_COLOR_ORDER].lower()
    raw = meta.get(c.META_VALUE_RANGE)
    if raw:
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, list) and len(parsed) == 2:
                value_range = (float(parsed[0]), float(parsed[1]))
        except (ValueError, TypeError):
            pass
    return order, value_range


def prepend_preprocessing(model: onnx.ModelProto, prep: Preprocessing) -> None:
    """Make the graph take RGB [0, 1] NCHW as ``input``, converting to what it expects.

    Emits, as needed: a channel reversal (Split + Concat), ``lo + x * (hi - lo)``, ``- mean``,
    ``/ std`` and a Transpose to NHWC; all have backward rules, so ``grad/input`` is with
    respect to the RGB [0, 1] pixels.
    """
    graph = model.graph
    image = image_input(model)
    dims = image.type.tensor_type.shape.dim
    channel_axis = 3 if prep.layout == "nhwc" else 1
    if len(dims) != 4 or (
        dims[channel_axis].HasField("dim_value") and dims[channel_axis].dim_value != 3
    ):
        layout = "[N, H, W, 3]" if prep.layout == "nhwc" else "[N, 3, H, W]"
        hint = "" if prep.layout == "nhwc" else " (channels last? give --layout nhwc)"
        raise GraphError(f"image input {image.name!r} must be {layout}{hint}")
    if prep.is_identity:
        return
    produced = {o for n in graph.node for o in n.output}
    if MODEL_INPUT in produced or any(i.name == MODEL_INPUT for i in graph.input):
        raise GraphError(f"the graph already has a tensor named {MODEL_INPUT!r}")
    _rename_tensor(graph, image.name, MODEL_INPUT)
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    if prep.layout == "nhwc":
        shape = [shape[0], shape[3], shape[1], shape[2]]
    new_input = helper.make_tensor_value_info(c.INPUT, image.type.tensor_type.elem_type, shape)
    position = [i.name for i in graph.input].index(image.name)
    graph.input.remove(image)
    graph.input.insert(position, new_input)

    nodes, inits, x = [], [], c.INPUT

    def const(name: str, values: Sequence[float]) -> str:
        inits.append(
            numpy_helper.from_array(np.asarray(values, np.float32).reshape(1, 3, 1, 1), name)
        )
        return name

    def step(op: str, name: str, *inputs: str, **attrs: Any) -> None:
        nonlocal x
        out = f"{c.INPUT}/{name}"
        nodes.append(
            helper.make_node(op, [x, *inputs], [out], name=f"{c.INPUT}/{op}_{name}", **attrs)
        )
        x = out

    if prep.channel_order == "bgr":  # the Split's three outputs, concatenated in reverse
        parts = [f"{c.INPUT}/{ch}" for ch in "rgb"]
        split: dict[str, Any] = (
            {"num_outputs": 3} if _opset(model) >= 18 else {}
        )  # equal parts before 18
        nodes.append(
            helper.make_node("Split", [x], parts, name=f"{c.INPUT}/Split_rgb", axis=1, **split)
        )
        nodes.append(
            helper.make_node(
                "Concat", parts[::-1], [f"{c.INPUT}/bgr"], name=f"{c.INPUT}/Concat_bgr", axis=1
            )
        )
        x = f"{c.INPUT}/bgr"
    lo, hi = prep.value_range
    if hi - lo != 1.0:
        step("Mul", "scaled", const(f"{c.INPUT}/scale", [hi - lo] * 3))
    if lo != 0.0:
        step("Add", "offset", const(f"{c.INPUT}/low", [lo] * 3))
    if prep.mean is not None:
        step("Sub", "centered", const(f"{c.INPUT}/mean", prep.mean))
    if prep.std is not None:
        step("Div", "normalized", const(f"{c.INPUT}/std", prep.std))
    if prep.layout == "nhwc":
        step("Transpose", "nhwc", perm=list(TO_NHWC))
    nodes.append(helper.make_node("Identity", [x], [MODEL_INPUT], name=f"{c.INPUT}/Identity_model"))
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    graph.initializer.extend(inits)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for names in (node.input, node.output):
            for k, name in enumerate(names):
                if name == old:
                    names[k] = new
    for vi in [*graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


@dataclass(frozen=True)
class Head:
    """A terminal Softmax or Sigmoid the pass removed from the explained path."""

    op: str
    axis: int | None
    output: str  # the graph output it produced
    scores: str  # its input: the tensor explained as the logits

    def metadata(self) -> str:
        return json.dumps({**asdict(self), "probabilities": c.PROBABILITIES})


def find_head(model: onnx.ModelProto, logits: str | None, head: str = "auto") -> Head | None:
    """The Softmax/Sigmoid that computes the graph's one (or 'logits') output, if any.

    Identity and Flatten/Reshape/Squeeze between the head and the output are looked through.
    ``head='keep'`` or an explicit ``logits`` tensor turns detection off.
    """
    if head not in HEADS:
        raise GraphError(f"head {head!r}: choose one of {list(HEADS)}")
    outputs = [o.name for o in model.graph.output]
    if head == "keep" or logits is not None:
        return None
    if len(outputs) != 1 and c.LOGITS not in outputs:
        return None  # _rename_io asks which output holds the scores
    target = c.LOGITS if c.LOGITS in outputs else outputs[0]
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(target)
    while node is not None and node.op_type in ("Identity", "Flatten", "Reshape", "Squeeze"):
        node = producer.get(node.input[0])
    if node is None or node.op_type not in HEAD_OPS:
        return None
    axis = None
    if node.op_type == "Softmax":
        axis = next(
            (a.i for a in node.attribute if a.name == "axis"), -1 if _opset(model) >= 13 else 1
        )
        rank = len(GraphInfo.of(model).shapes.get(node.input[0]) or ())
        if rank and axis % rank != rank - 1:
            return None  # a softmax over something other than the classes is not a head
    return Head(node.op_type, axis, target, node.input[0])


def detach_head(model: onnx.ModelProto, head: Head) -> None:
    """Make the head's input the graph output; the head's own output leaves the outputs."""
    graph = model.graph
    _rename_tensor(graph, head.output, f"{c.PROBABILITIES}/original")
    keep = [o for o in graph.output if o.name != f"{c.PROBABILITIES}/original"]
    del graph.output[:]
    graph.output.extend([*keep, helper.make_empty_tensor_value_info(head.scores)])


def add_probabilities(model: onnx.ModelProto, head: Head) -> None:
    """Append ``probabilities = head(logits)``: what the original graph returned."""
    attrs: dict[str, Any] = {"axis": -1} if head.op == "Softmax" else {}
    model.graph.node.append(
        helper.make_node(
            head.op, [c.LOGITS], [c.PROBABILITIES], name=f"{c.PROBABILITIES}/{head.op}", **attrs
        )
    )
    model.graph.output.append(helper.make_empty_tensor_value_info(c.PROBABILITIES))


def foreign_default_tap(model: onnx.ModelProto) -> str:
    """The default tap tensor, moved off a channels-last copy onto its NCHW source.

    tf2onnx graphs compute in NCHW and transpose back to NHWC before the pooling; the tap must be
    the [N, C, h, w] map the runtime's CAM methods expect, so a Transpose(0, 2, 3, 1) output is
    replaced by its input.
    """
    found = default_tap(model).name
    producer = {o: n for n in model.graph.node for o in n.output}
    names = {t.name for t in candidate_taps(model)}
    node = producer.get(found)
    while node is not None and node.op_type == "Transpose":
        perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), ())
        if perm != TO_NHWC or node.input[0] not in names:
            break
        found, node = node.input[0], producer.get(node.input[0])
    return found


def record(model: onnx.ModelProto, prep: Preprocessing, source: Mapping[str, str]) -> None:
    """Write what the pre-pass applied, and the contract-level normalisation it amounts to."""
    stated = {
        "layout": prep.layout,
        "channel_order": prep.channel_order.upper(),
        "value_range": list(prep.value_range),
        "mean": list(prep.mean) if prep.mean is not None else None,
        "std": list(prep.std) if prep.std is not None else None,
        "source": dict(source),
    }
    _set(model, c.META_PREPROCESSING, json.dumps(stated))
    _set(model, c.META_NORMALIZATION, json.dumps({**prep.as_rgb01(), "in_graph": True}))
    _set(model, c.META_COLOR_ORDER, "RGB")
    _set(model, c.META_VALUE_RANGE, json.dumps([0, 1]))


def _set(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
