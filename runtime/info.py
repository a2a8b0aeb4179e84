"""ModelInfo: what the runtime needs to know about an augmented graph, read from its metadata."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError
from gradtap.runtime.targets import probabilities

# The largest side an input size or resize size may state (nothing allocates from larger).
MAX_SIDE = 16384
_HOW_TO_FIX = (
    "run `gradtap augment MODEL.onnx -o MODEL.gradtap.onnx` on a forward graph, "
    "or `gradtap export NAME` for a built-in model"
)


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of an augmented model.

    Attributes:
        name: model name (``gradtap.model_name``), or the file stem when absent.
        labels: class names, index = class id (``class_<i>`` when the graph carries none).
        input_size: (H, W) the graph expects.
        resize_policy: ``"shorter_side_center_crop"`` or ``"stretch"``.
        resize_size: shorter side before the centre crop (``None`` for ``stretch``).
        mean: per-channel normalisation mean applied inside the graph, if recorded.
        std: per-channel normalisation std applied inside the graph, if recorded.
        taps: aliases of the feature taps, in graph output order.
        default_tap: alias used when a method needs a tap and none is given.
        relu_rules: ReLU backward rules the graph can switch between.
        cam_taps: taps a global-average-pool -> linear head reads (with a ``cam/`` output).
        head: the op augment took off the logits (``"Softmax"``, or ``"Sigmoid"`` for a
            multi-label head), ``None`` when the graph ended in plain logits.
        weights: the weights the graph was exported with, if recorded.
        source: where the architecture came from, if recorded.
        metadata: every ``metadata_props`` entry, raw.
    """

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    resize_policy: str
    resize_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    taps: tuple[str, ...]
    default_tap: str | None
    relu_rules: tuple[str, ...]
    cam_taps: tuple[str, ...] = ()
    head: str | None = None
    weights: str | None = None
    source: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of the logits)."""
        return len(self.labels)

    def tap(self, alias: str | None) -> str:
        """Resolve a tap alias (``None`` = the default tap) and check it exists.

        Raises:
            ModelError: the alias is unknown, or the graph has no taps at all.
        """
        if alias is None:
            alias = self.default_tap or (self.taps[0] if self.taps else None)
        if alias is None or alias not in self.taps:
            what = "no default tap" if alias is None else f"unknown tap {alias!r}"
            raise ModelError(f"model {self.name!r} has {what}; taps: {list(self.taps) or 'none'}")
        return alias

    def probabilities(self, logits: Any) -> Any:
        """[N, classes] probabilities: per-class sigmoids for a Sigmoid head, else a softmax."""
        return probabilities(logits, self.head)


def parse_info(
    meta: Mapping[str, str],
    *,
    inputs: Mapping[str, Sequence[Any]],
    outputs: Mapping[str, Sequence[Any]],
    fallback_name: str,
) -> ModelInfo:
    """Build a ModelInfo from metadata and the graph's input/output shapes.

    Args:
        meta: the model's ``metadata_props``.
        inputs: graph input name -> shape (ints, or strings for symbolic dims).
        outputs: graph output name -> shape.
        fallback_name: name to use when the metadata has none (e.g. the file stem).

    Raises:
        ModelError: the graph is not an augmented gradtap graph of a supported contract version.
    """
    _check_contract(meta, inputs, outputs, fallback_name)
    name = meta.get(c.META_NAME) or fallback_name
    labels = _labels(meta, outputs[c.LOGITS], name)
    input_size = _input_size(meta, inputs[c.INPUT], name)
    policy, resize_size = _resize(meta, input_size, name)
    norm = _normalization(meta, name)
    taps = tuple(o[len(c.TAP_PREFIX) :] for o in outputs if o.startswith(c.TAP_PREFIX))
    missing = [t for t in taps if c.tap_grad_output(t) not in outputs]
    if missing:
        raise ModelError(f"model {name!r}: taps {missing} have no {c.GRAD_PREFIX}tap/ output")
    default_tap = meta.get(c.META_DEFAULT_TAP) or None
    if default_tap is not None and default_tap not in taps:
        raise ModelError(f"model {name!r}: default tap {default_tap!r} is not among taps {taps}")
    rules = _backward_rules(meta) if c.RELU_RULE in inputs else ("plain",)
    return ModelInfo(
        name=name,
        labels=labels,
        input_size=input_size,
        resize_policy=policy,
        resize_size=resize_size,
        mean=norm.get("mean"),
        std=norm.get("std"),
        taps=taps,
        default_tap=default_tap,
        relu_rules=rules,
        cam_taps=tuple(t for t in taps if c.cam_output(t) in outputs),
        head=_head(meta, name),
        weights=meta.get(c.META_WEIGHTS),
        source=meta.get(c.META_SOURCE),
        metadata=MappingProxyType(dict(meta)),
    )


def _check_contract(
    meta: Mapping[str, str],
    inputs: Mapping[str, Sequence[Any]],
    outputs: Mapping[str, Sequence[Any]],
    name: str,
) -> None:
    missing = [n for n in (c.INPUT, c.SEED) if n not in inputs]
    missing += [n for n in (c.LOGITS, c.GRAD_INPUT) if n not in outputs]
    if meta.get(c.META_AUGMENTED) != "1" or missing:
        why = f"missing {missing}" if missing else f"no {c.META_AUGMENTED}=1 metadata"
        raise ModelError(f"{name!r} is not an augmented gradtap model ({why}); {_HOW_TO_FIX}")
    version = meta.get(c.META_CONTRACT)
    if version != c.CONTRACT_VERSION:
        raise ModelError(
            f"{name!r} follows gradtap contract version {version!r}, this runtime reads "
            f"{c.CONTRACT_VERSION!r}; re-run `gradtap augment` with this version"
        )


def _json(meta: Mapping[str, str], key: str, name: str) -> Any:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelError(f"model {name!r}: metadata {key} is not valid JSON ({err})") from None


def _labels(meta: Mapping[str, str], logits_shape: Sequence[Any], name: str) -> tuple[str, ...]:
    labels = _json(meta, c.META_LABELS, name)
    n = logits_shape[-1] if logits_shape else None
    if labels is None:
        if not isinstance(n, int):
            raise ModelError(f"model {name!r}: no {c.META_LABELS} and the class count is dynamic")
        return tuple(f"class_{i}" for i in range(n))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"model {name!r}: metadata {c.META_LABELS} must be a JSON list of strings")
    if not labels:
        raise ModelError(f"model {name!r}: metadata {c.META_LABELS} is an empty list")
    if isinstance(n, int) and n > 0 and n != len(labels):
        raise ModelError(
            f"model {name!r}: metadata {c.META_LABELS} has {len(labels)} names, but the logits "
            f"have {n} classes"
        )
    return tuple(labels)


def _input_size(meta: Mapping[str, str], shape: Sequence[Any], name: str) -> tuple[int, int]:
    size = _json(meta, c.META_INPUT_SIZE, name)
    if size is None and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        size = list(shape[2:])
    ok = isinstance(size, list) and len(size) == 2
    if not ok or not all(_is_int(d) and 0 < d <= MAX_SIDE for d in size):
        raise ModelError(
            f"model {name!r}: metadata {c.META_INPUT_SIZE} must be [H, W] with sides in "
            f"1..{MAX_SIDE}, got {_short(size)}"
        )
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ModelError(f"model {name!r}: input {c.INPUT!r} must be [N, 3, H, W], got {shape}")
    static = [d for d in shape[2:] if isinstance(d, int) and d > 0]
    if len(static) == 2 and list(static) != list(size):
        raise ModelError(
            f"model {name!r}: metadata {c.META_INPUT_SIZE} is {size}, but the graph's input "
            f"{c.INPUT!r} is {static[0]}x{static[1]}"
        )
    return int(size[0]), int(size[1])


def _normalization(meta: Mapping[str, str], name: str) -> dict[str, tuple[float, ...]]:
    norm = _json(meta, c.META_NORMALIZATION, name)
    if norm is None:
        return {}
    if not isinstance(norm, dict):
        raise ModelError(
            f"model {name!r}: metadata {c.META_NORMALIZATION} must be a JSON object with "
            f'"mean" and "std", got {_short(norm)}'
        )
    out = {}
    for key in ("mean", "std"):
        values = norm.get(key)
        if values is None:
            continue
        ok = isinstance(values, list) and len(values) == 3
        ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if not ok or (key == "std" and not all(v > 0 for v in values)):
            need = "3 finite numbers" + (" > 0" if key == "std" else "")
            raise ModelError(
                f"model {name!r}: metadata {c.META_NORMALIZATION} {key!r} must be {need}, "
                f"got {_short(values)}"
            )
        out[key] = tuple(float(v) for v in values)
    return out


def _head(meta: Mapping[str, str], name: str) -> str | None:
    head = _json(meta, c.META_HEAD, name)
    if head is None:
        return None
    op = head.get("op") if isinstance(head, dict) else None
    if op not in ("Softmax", "Sigmoid"):
        raise ModelError(
            f"model {name!r}: metadata {c.META_HEAD} must name op Softmax or Sigmoid, "
            f"got {_short(op)}"
        )
    return str(op)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resize(
    meta: Mapping[str, str], input_size: tuple[int, int], name: str
) -> tuple[str, int | None]:
    spec = _json(meta, c.META_RESIZE, name) or {"policy": "stretch"}
    policy = spec.get("policy") if isinstance(spec, dict) else None
    if not isinstance(policy, str) or policy not in c.RESIZE_POLICIES:
        raise ModelError(
            f"model {name!r}: metadata {c.META_RESIZE} policy {_short(policy)} unknown; valid: "
            f"{sorted(c.RESIZE_POLICIES)}"
        )
    if policy == "stretch":
        return policy, None
    size = spec.get("size", max(input_size))
    if not _is_int(size) or not max(input_size) <= size <= MAX_SIDE:
        raise ModelError(
            f"model {name!r}: metadata {c.META_RESIZE} size {_short(size)} must be an int from "
            f"the input size {max(input_size)} to {MAX_SIDE}"
        )
    return policy, size


def _backward_rules(meta: Mapping[str, str]) -> tuple[str, ...]:
    """The relu_rule codes the graph lists (contract 5 adds the LRP ones), by name; a graph
    without the list (or an unreadable one) has the three rectifier rules."""
    try:
        listed = json.loads(meta.get(c.META_RELU_RULES, "{}"))
    except ValueError:
        listed = {}
    known = (
        tuple(k for k in listed if c.BACKWARD_RULES.get(k) == listed[k])
        if isinstance(listed, dict)
        else ()
    )
    return tuple(dict.fromkeys((*c.RELU_RULES, *known)))
