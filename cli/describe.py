"""What ``gradtap info`` reports about an ONNX file: the contract, taps, labels and metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from gradtap.export.graph.gate import branch_nodes
from gradtap.runtime import contract as c

_MEANING = {
    c.INPUT: "RGB pixels in [0, 1], NCHW; normalisation happens inside the graph",
    c.SEED: "cotangent on the logits: the graph differentiates sum(seed * logits)",
    c.RELU_RULE: "rectifier backward rule (int64 scalar; 0 for plain gradients): "
    + ", ".join(f"{v} {k}" for k, v in c.RELU_RULES.items())
    + "; LRP composites where gradtap.relu_rules lists them: "
    + ", ".join(f"{v} {k}" for k, v in c.LRP_RULES.items()),
    c.SEED_TOP1: "float32 scalar (0 for none): added to the seed on each row's predicted class",
    c.OBJECTIVE: "int64 scalar (0 for the logits): "
    + ", ".join(f"{v} {k}" for k, v in c.OBJECTIVES.items())
    + " (the cross-entropy's gradient on the logits is softmax * sum(seed) - seed)",
    c.COMPUTE: "int64 scalar (2 for everything): how much runs: "
    + ", ".join(f"{v} {k}" for k, v in c.COMPUTE_LEVELS.items()),
    c.LOGITS: "class scores (before softmax)",
    c.GRAD_INPUT: "d sum(seed * logits) / d input",
    c.PROBABILITIES: "the original graph's output: its Softmax/Sigmoid head applied to logits",
}


_PREP_KEYS = ("layout", "channel_order", "value_range", "mean", "std")
OPTIONAL_INPUTS = frozenset({c.RELU_RULE, c.SEED_TOP1, c.OBJECTIVE, c.COMPUTE})


def meaning(name: str) -> str:
    """One line saying what a graph input or output of the contract holds."""
    if name in _MEANING:
        return _MEANING[name]
    if name.startswith(c.GRAD_PREFIX + c.TAP_PREFIX):
        return f"d sum(seed * logits) / d tap {name[len(c.GRAD_PREFIX + c.TAP_PREFIX) :]!r}"
    if name.startswith(c.TAP_PREFIX):
        return f"feature map of tap {name[len(c.TAP_PREFIX) :]!r}"
    if name.startswith(c.BIAS_GRAD_PREFIX):
        return "FullGrad: sum_c minmax(|bias * d sum(seed * logits) / d layer output|)"
    return ""


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _dtype(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "?"


def describe(path: Path) -> dict[str, Any]:
    """A JSON-ready description of an ONNX file, augmented or not.

    Raises:
        ValueError: the file is not an ONNX model (one-line message naming it).
    """
    from gradtap.export.graph.augment import load_model

    model = load_model(path)
    inits = {i.name for i in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    ports = {
        "inputs": [
            v for v in model.graph.input if v.name not in inits or v.name in OPTIONAL_INPUTS
        ],
        "outputs": list(model.graph.output),
    }
    out: dict[str, Any] = {
        "file": str(path),
        "augmented": meta.get(c.META_AUGMENTED) == "1",
        "contract_version": meta.get(c.META_CONTRACT),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(branch_nodes(model)),  # the backward pass lives in If branches
    }
    ours = c.META_CONTRACT in meta  # contract names mean something only in gradtap graphs
    for key, values in ports.items():
        out[key] = [
            {
                "name": v.name,
                "dtype": _dtype(v),
                "shape": _shape(v),
                "meaning": meaning(v.name) if ours else "",
            }
            for v in values
        ]
    if out["augmented"] and meta.get(c.META_CONTRACT) == c.CONTRACT_VERSION:
        _check_metadata(meta, ports, path)
    out.update(_from_metadata(meta))
    if not out["labels"].get("count") and out["outputs"]:
        classes = out["outputs"][0]["shape"][-1:]  # the logits' class dimension
        count = classes[0] if classes and isinstance(classes[0], int) else 0
        out["labels"] = {"count": count, "first": []}
    if not out["augmented"]:
        out["foreign"] = _foreign_hints(model)
    out["metadata"] = {k: _short(k, v) for k, v in sorted(meta.items())}
    out["providers"] = _providers()
    return out


def _check_metadata(meta: dict[str, str], ports: dict[str, list], path: Path) -> None:
    """The runtime's metadata checks, so info names a wrong key as every command does."""
    from gradtap.runtime.info import parse_info

    shapes = {k: {v.name: _shape(v) for v in vs} for k, vs in ports.items()}
    parse_info(meta, inputs=shapes["inputs"], outputs=shapes["outputs"], fallback_name=path.stem)


def _from_metadata(meta: dict[str, str]) -> dict[str, Any]:
    labels = _json(meta.get(c.META_LABELS)) or []
    taps = _json(meta.get(c.META_TAPS)) or {}
    return {
        "name": meta.get(c.META_NAME),
        "weights": meta.get(c.META_WEIGHTS),
        "taps": taps if isinstance(taps, dict) else {},
        "default_tap": meta.get(c.META_DEFAULT_TAP),
        "relu_rules": _json(meta.get(c.META_RELU_RULES)) or {},
        "labels": {"count": len(labels), "first": labels[:5]} if isinstance(labels, list) else {},
        "input_size": _json(meta.get(c.META_INPUT_SIZE)),
        "resize": _json(meta.get(c.META_RESIZE)),
        "normalization": _json(meta.get(c.META_NORMALIZATION)),
        "preprocessing": _json(meta.get(c.META_PREPROCESSING)),
        "head": _json(meta.get(c.META_HEAD)),
    }


def _foreign_hints(model: onnx.ModelProto) -> dict[str, Any]:
    """What ``augment`` would convert in a forward graph: its layout and a probability head."""
    from gradtap.export.graph.foreign import detect_layout, find_head
    from gradtap.runtime.errors import GradtapError

    try:
        head = find_head(model, None)
        return {"layout": detect_layout(model), "head": head.op if head else None}
    except GradtapError:
        return {}


def _json(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _short(key: str, value: str, limit: int = 200) -> str:
    if key == c.META_LABELS and len(value) > limit:
        labels = _json(value)
        count = len(labels) if isinstance(labels, list) else "?"
        return f"{value[:limit]}... ({count} labels)"
    return value


def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def to_text(info: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``gradtap info``."""
    lines = [f"file      {info['file']}"]
    state = f"augmented (gradtap contract {info['contract_version']})"
    lines.append(
        f"graph     {state if info['augmented'] else 'plain forward graph, not augmented'}"
    )
    lines.append(f"model     {info['name'] or '?'}  weights: {info['weights'] or '?'}")
    lines.append(f"opset     {info['opset']}  nodes: {info['nodes']}")
    for key in ("inputs", "outputs"):
        lines.append(f"{key}:")
        for port in info[key]:
            shape = "[" + ", ".join(str(d) for d in port["shape"]) + "]"
            text = f"  {port['name']:<24} {port['dtype']:<8} {shape:<20}"
            lines.append(f"{text} {port['meaning']}".rstrip())
    taps = info["taps"]
    tap_list = ", ".join(f"{a} = {t}" for a, t in taps.items()) or "none"
    lines.append(f"taps      {tap_list}  (default: {info['default_tap'] or '-'})")
    rules = info["relu_rules"]
    lines.append("rules     " + (", ".join(f"{k}={v}" for k, v in rules.items()) or "-"))
    labels = info["labels"]
    first = ", ".join(labels.get("first", []))
    names = f"  ({first}, ...)" if first else "  (no names in the metadata: class_<i>)"
    lines.append(f"labels    {labels.get('count', 0)}{names}")
    resize = json.dumps(info["resize"] or {"policy": "stretch"})
    lines.append(f"input     size {json.dumps(info['input_size'])}  resize {resize}")
    lines.append(f"normalize {json.dumps(info['normalization'])}")
    prep = info.get("preprocessing")
    if isinstance(prep, dict):
        stated = ", ".join(f"{k} {json.dumps(prep.get(k))}" for k in _PREP_KEYS)
        lines.append(f"original  the graph expected {stated}; converted in the graph")
    head = info.get("head")
    if isinstance(head, dict):
        lines.append(
            f"head      {head.get('op')} removed: logits are its input {head.get('scores')!r}, "
            f"its output is {head.get('probabilities')!r}; gradients explain the logits"
        )
    lines.append("metadata:")
    lines += [f"  {k} = {v}" for k, v in info["metadata"].items()]
    lines.append("providers " + ", ".join(info["providers"]))
    hints = info.get("foreign") or {}
    if hints.get("layout") == "nhwc":
        lines.append("note: channels-last input [N, H, W, 3]: augment prepends a Transpose")
    if hints.get("head"):
        lines.append(
            f"note: the output is a {hints['head']} head: augment explains its input and keeps "
            "the output as 'probabilities' (--keep-head to explain it as it is)"
        )
    if not info["augmented"]:
        lines.append(
            "hint: run `gradtap augment FILE -o OUT.gradtap.onnx` to add the backward pass"
        )
    return lines
