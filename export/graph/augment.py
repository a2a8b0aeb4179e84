"""The augmentation pass: a forward classifier graph in, the gradtap explanation graph out.

Needs only onnx and numpy, so it runs on third-party graphs where torch is not installed.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from gradtap.export.graph import foreign, qoperators
from gradtap.export.graph.bias import add_bias_maps, biased_layers, raw_name
from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.gate import branch_nodes, gate
from gradtap.export.graph.head import cam_outputs
from gradtap.export.graph.interventions import add_tap_scale, inputs_last
from gradtap.export.graph.lrp import add_lrp
from gradtap.export.graph.seed import add_seed
from gradtap.export.graph.taps import alias_for, candidate_taps
from gradtap.export.graph.tokens import expose_token_taps, split_spec
from gradtap.export.graph.version import PASS_VERSION
from gradtap.export.graph.vjp import add_vjp
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GraphError, OptionError
from gradtap.runtime.modelfile import check_external_data, check_model_file, external_locations

log = logging.getLogger(__name__)

TARGET_OPSET = 17  # older graphs are converted; ScatterElements(reduction="add") needs >= 16
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def augment(
    model: onnx.ModelProto,
    *,
    taps: Mapping[str, str] | Sequence[str] | None = None,
    logits: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    layout: str = "auto",
    channel_order: str | None = None,
    value_range: Sequence[float] | None = None,
    head: str = "auto",
    flat: bool = False,
    interventions: bool = False,
    bias_gradients: bool = False,
    lrp: bool = False,
    lrp_composite: str | None = None,
) -> onnx.ModelProto:
    """Add taps, a seed input, a rectifier-rule input and the backward pass to a classifier.

    Args:
        model: forward graph with one image input [N, 3, H, W] and a logits output; not mutated.
        taps: alias -> tensor name, or tensor names (aliases derived); default: the taps in the
            model's gradtap metadata, else the last spatial feature map (see taps.default_tap).
        logits: the tensor to explain (default: the graph's only output, or one named 'logits').
        mean, std: per-channel normalisation in [0, 1] pixel units, prepended to the graph so
            the result takes RGB pixels in [0, 1]; omit when the graph already takes those.
        labels: class names (index = class id), stored in the metadata if given.
        layout, channel_order, value_range: what the graph's image input is, when it is not
            RGB [0, 1] NCHW ('auto' layout: [N, H, W, 3] is NHWC); mean and std are then in the
            graph's channel order and value units (see foreign.Preprocessing). Unstated order
            and range come from the model's metadata where it has them.
        head: 'auto' explains the input of a terminal Softmax/Sigmoid (the original output
            stays available as ``probabilities``); 'keep' explains the output as it is.
        interventions: add the ``tap_scale`` input (channel scales of the default tap, for
            Score-CAM and Ablation-CAM in batched calls); off by default, since every input is
            required and embedders would have to feed it.
        bias_gradients: add the ``bias_grad/<k>`` outputs FullGrad reads, one reduced map per
            biased layer (see gradtap.export.graph.bias); off by default.
        lrp: add the relevance walk (``relu_rule`` codes 3 and up, export/graph/lrp.py),
            behind If nodes that gradient calls do not run; off by default, since it makes the
            file larger and an embedder who wants gradients only need not carry it. With
            ``flat``, name the one composite the graph carries instead.
        lrp_composite: for the flat variant, the LRP composite (a name in
            ``contract.LRP_RULES``, with or without its ``lrp_`` prefix: ``epsilon_plus``)
            whose walk every call runs beside the gradient walk; the graph lists codes 0-2 and
            this one. Implies ``lrp``.
        flat: no If nodes and no ``compute`` input: every call runs the whole backward pass
            (for runtimes that cannot run If, such as tract); the ``relu_rule`` switch stays.

    Returns:
        The explanation graph described in gradtap.runtime.contract.
    """
    if lrp_composite is not None:
        if not lrp_composite.startswith("lrp_"):  # as -m lrp --lrp-rule names them
            lrp_composite = f"lrp_{lrp_composite}"
        if lrp_composite not in c.LRP_RULES:
            raise OptionError(
                f"unknown LRP composite {lrp_composite!r}; valid: {list(c.LRP_RULES)}"
            )
        if not flat:
            raise OptionError("lrp_composite is for the flat variant; the gated graph carries all")
        lrp = True
    elif lrp and flat:  # the walk's switch is If nodes, which the flat variant has none of
        raise OptionError(
            "the flat variant carries one LRP composite, computed in every call: name it "
            f"(lrp_composite, one of {list(c.LRP_RULES)})"
        )
    model = _upgrade(copy.deepcopy(model))
    if qoperators.expand(model):  # QLinearConv & co.: into the QDQ form the rules know
        log.info("integer operators rewritten into QuantizeLinear/DequantizeLinear")
    if any(m.key == c.META_AUGMENTED for m in model.metadata_props):
        raise GraphError("the model is already augmented by gradtap; augment its forward graph")
    found_head = foreign.find_head(model, logits, head)
    if found_head is not None:
        foreign.detach_head(model, found_head)
        logits = found_head.scores
    prep, source = foreign.resolve_preprocessing(
        model, layout=layout, channel_order=channel_order, value_range=value_range,
        mean=mean, std=std,
    )  # fmt: skip
    plain = prep.layout == "nchw" and prep.channel_order == "rgb" and prep.value_range == (0, 1)
    if not plain:
        foreign.prepend_preprocessing(model, prep)
    _rename_io(model, logits)
    if plain and (mean is not None or std is not None):
        _prepend_normalization(model, mean, std)
    if not prep.is_identity:
        foreign.record(model, prep, source)
    if found_head is not None:
        _set_meta(model, c.META_HEAD, found_head.metadata())
    meta = {m.key: m.value for m in model.metadata_props}
    chosen = expose_token_taps(model, resolve_taps(model, taps, meta), c.INPUT)
    graph = model.graph
    for alias, tensor in chosen.items():
        graph.node.append(
            helper.make_node("Identity", [tensor], [c.tap_output(alias)], name=f"tap/{alias}")
        )
        graph.output.append(helper.make_empty_tensor_value_info(c.tap_output(alias)))
    for alias, why in cam_outputs(model, chosen).items():
        log.info("no CAM weights for tap %r: %s", alias, why)
    if interventions and chosen:  # after the CAM heads: the scaling sits between tap and readers
        default = meta.get(c.META_DEFAULT_TAP)
        add_tap_scale(model, chosen[default if default in chosen else next(iter(chosen))])
    wrt = {c.INPUT: c.GRAD_INPUT}
    wrt.update({tensor: c.tap_grad_output(alias) for alias, tensor in chosen.items()})
    layers = biased_layers(model) if bias_gradients else {}
    for k, tensor in enumerate(layers):
        wrt.setdefault(tensor, raw_name(k))
    seed = add_seed(model)
    out = add_vjp(model, seed_of=c.LOGITS, seed=seed, wrt=wrt, relu_rule=c.RELU_RULE)
    # FullGrad's layer gradients are gradients only (empty in relevance calls)
    lrp_wrt = {t: name for t, name in wrt.items() if t not in layers}
    refused = lrp and add_lrp(
        out, wrt=lrp_wrt, seed=seed, relu_rule=c.RELU_RULE, composite=lrp_composite
    )
    relevance = lrp and not refused
    if refused:
        log.warning("no LRP walk: %s", refused)
    if layers:
        add_bias_maps(out, layers, wrt)
    out = out if flat else gate(out)
    inputs_last(out)
    if found_head is not None:
        foreign.add_probabilities(out, found_head)
    _stamp(out, meta, chosen, labels)
    rules = dict(c.RELU_RULES)
    if relevance:
        carried = c.LRP_RULES if lrp_composite is None else [lrp_composite]
        rules.update({k: c.LRP_RULES[k] for k in carried})
    _set_meta(out, c.META_RELU_RULES, json.dumps(rules))
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    if not flat:
        _declare_gated_outputs(out)
    _ensure(out)
    return out


def augment_file(src: str | Path, dst: str | Path, **options: object) -> onnx.ModelProto:
    """Load ``src`` (external data beside it allowed), augment it, write ``dst`` atomically."""
    model = load_model(src)
    out = augment(model, **options)  # type: ignore[arg-type]
    save_model(out, dst)
    return out


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, refusing external-data paths that leave the file's folder.

    Every tensor is checked (initializers, node attributes, subgraphs, functions) before any
    external data is read; an empty or graph-less file is not an ONNX model.
    """
    path = Path(path)
    check_model_file(path)  # no folders, pipes, devices or files over 2 GiB
    check_external_data(path)  # a structural pre-scan: junk is refused before onnx parses it
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises several unrelated types for garbage input
        raise GraphError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    if not model.graph.node:
        raise GraphError(f"{path}: not an ONNX model (no graph nodes)")
    base = path.resolve().parent
    if external_locations(path):
        onnx.load_external_data_for_model(model, str(base))
    return model


def save_model(model: onnx.ModelProto, dst: str | Path) -> None:
    """Write ``model`` to ``dst`` through a temporary file, so no half-written file remains."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_taps(
    model: onnx.ModelProto, taps: Mapping[str, str] | Sequence[str] | None, meta: Mapping[str, str]
) -> dict[str, str]:
    """alias -> tensor name, checked against the graph's feature maps."""
    if taps is None and c.META_TAPS in meta:
        taps = json.loads(meta[c.META_TAPS])
    if taps is None:
        found = foreign.foreign_default_tap(model)
        taps = {meta.get(c.META_DEFAULT_TAP) or foreign.DEFAULT_TAP_ALIAS: found}
    if not isinstance(taps, Mapping):
        taps = {alias_for(t): t for t in taps}
    produced = {o for n in model.graph.node for o in n.output}
    for alias, tensor in taps.items():
        if split_spec(tensor)[0] not in produced:
            names = [t.name for t in candidate_taps(model)][-8:]
            raise GraphError(
                f"unknown tap tensor {tensor!r} (alias {alias!r}); feature maps near the head: {names}"
            )
    return dict(taps)


def _upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    if opset < 16:
        log.info("converting opset %d to %d", opset, TARGET_OPSET)
        # IR 3 lists initializers among the inputs; read as IR 4, where they need not be
        # (the converter otherwise calls an initializer-only tensor "undefined").
        model.ir_version = max(model.ir_version, 4)
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as err:  # the converter raises its own types, with C++ wording
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise GraphError(
                f"cannot convert opset {opset} to {TARGET_OPSET}: {first}; convert the model "
                "with a newer exporter"
            ) from None
        model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(model.opset_import))
    return model


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        for names in (node.input, node.output):
            for k, name in enumerate(names):
                if name == old:
                    names[k] = new
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _rename_io(model: onnx.ModelProto, logits: str | None) -> None:
    """Name the image input 'input' and the explained output 'logits'; drop other outputs."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    images = [i for i in graph.input if i.name not in inits]
    if len(images) != 1:
        raise GraphError(f"expected one image input, found {[i.name for i in images]}")
    dims = images[0].type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise GraphError(f"image input {images[0].name!r} must be [N, 3, H, W]")
    _rename(graph, images[0].name, c.INPUT)
    outputs = [o.name for o in graph.output]
    if logits is None:
        if len(outputs) != 1 and c.LOGITS not in outputs:
            raise GraphError(f"several outputs {outputs}: say which holds the logits")
        logits = c.LOGITS if c.LOGITS in outputs else outputs[0]
    if logits not in {o for n in graph.node for o in n.output}:
        raise GraphError(f"no tensor named {logits!r} in the graph")
    if logits not in outputs:
        graph.output.append(helper.make_empty_tensor_value_info(logits))
    keep = [o for o in graph.output if o.name == logits]
    del graph.output[:]
    graph.output.extend(keep)
    _rename(graph, logits, c.LOGITS)


def _prepend_normalization(
    model: onnx.ModelProto, mean: Sequence[float] | None, std: Sequence[float] | None
) -> None:
    graph = model.graph
    m = np.asarray(mean if mean is not None else [0.0] * 3, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std if std is not None else [1.0] * 3, np.float32).reshape(1, 3, 1, 1)
    inner = "input/normalized"
    _rename(graph, c.INPUT, inner)
    graph.input[[i.name for i in graph.input].index(inner)].name = c.INPUT
    graph.initializer.extend(
        [numpy_helper.from_array(m, "input/mean"), numpy_helper.from_array(s, "input/std")]
    )
    nodes = [
        helper.make_node("Sub", [c.INPUT, "input/mean"], ["input/centered"], name="input/Sub"),
        helper.make_node("Div", ["input/centered", "input/std"], [inner], name="input/Div"),
    ]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    _set_meta(
        model,
        c.META_NORMALIZATION,
        json.dumps({"mean": m.ravel().tolist(), "std": s.ravel().tolist(), "in_graph": True}),
    )


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _declare_gated_outputs(model: onnx.ModelProto) -> None:
    """Gradient outputs declared as rank-4 tensors of their own symbolic dimensions: they come
    back empty from a call that does not compute them, so a fixed declared size would be false."""
    for out in model.graph.output:
        if not out.name.startswith(c.GRAD_PREFIX):
            continue
        dims = out.type.tensor_type.shape.dim
        for k, dim in enumerate(dims):
            dim.Clear()
            dim.dim_param = f"{out.name}:{k}"


def _resize_spec(meta: Mapping[str, str]) -> str:
    """The resize metadata with the filter and the crop named, so an embedder can match them."""
    spec = json.loads(meta[c.META_RESIZE]) if c.META_RESIZE in meta else {"policy": "stretch"}
    spec.setdefault("filter", c.RESIZE_FILTER)
    if spec.get("policy") == "shorter_side_center_crop":
        spec.setdefault("crop", "center")
    return json.dumps(spec)


def _stamp(
    model: onnx.ModelProto,
    meta: Mapping[str, str],
    taps: Mapping[str, str],
    labels: Sequence[str] | None,
) -> None:
    defaults = {
        c.META_COLOR_ORDER: "RGB",
        c.META_VALUE_RANGE: "[0, 1]",
        c.META_NORMALIZATION: json.dumps({"mean": [0.0] * 3, "std": [1.0] * 3, "in_graph": True}),
    }
    for key, value in defaults.items():
        if key not in meta:
            _set_meta(model, key, value)
    default = meta.get(c.META_DEFAULT_TAP)
    _set_meta(model, c.META_TAPS, json.dumps(dict(taps)))
    if taps:
        _set_meta(
            model, c.META_DEFAULT_TAP, default if default and default in taps else next(iter(taps))
        )
    _set_meta(model, c.META_RESIZE, _resize_spec(meta))
    _set_meta(model, c.META_RELU_RULES, json.dumps(c.RELU_RULES))
    _set_meta(model, c.META_CONTRACT, c.CONTRACT_VERSION)
    _set_meta(model, c.META_AUGMENTED, "1")
    _set_meta(model, c.META_PASS_VERSION, PASS_VERSION)
    if labels is not None:
        _set_meta(model, c.META_LABELS, json.dumps(list(labels)))
    info = GraphInfo.of(model, complete=False)
    if c.META_INPUT_SIZE not in meta and all(isinstance(d, int) for d in info.shape(c.INPUT)[2:]):
        _set_meta(model, c.META_INPUT_SIZE, json.dumps(list(info.shape(c.INPUT)[2:])))


def _ensure(model: onnx.ModelProto) -> None:
    """Postconditions: standard ops only, a valid model, strict shape inference passes."""
    foreign = sorted(
        {f"{n.domain}:{n.op_type}" for n in branch_nodes(model) if n.domain not in STANDARD_DOMAINS}
    )
    if foreign:
        raise GraphError(f"non-standard ops in the graph: {foreign}")
    if model.ByteSize() < 2**31 - 2**20:
        onnx.checker.check_model(model, full_check=True)
