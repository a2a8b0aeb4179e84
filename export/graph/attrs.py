"""Typed access to node attributes: one helper per attribute type, each with an optional default.

ONNX stores an attribute as a tagged union; a rule asks for the type it expects and gets a plain
``int``, ``float``, ``str`` or ``list[int]``, or a GraphError naming the node when the attribute
is missing without a default or has another type.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx import AttributeProto, NodeProto

from gradtap.runtime.errors import GraphError


def find(node: NodeProto, name: str) -> AttributeProto | None:
    """The attribute ``name`` of ``node``, or None when the node does not set it."""
    return next((a for a in node.attribute if a.name == name), None)


def has_attr(node: NodeProto, name: str) -> bool:
    return find(node, name) is not None


def _typed(node: NodeProto, name: str, kind: int) -> AttributeProto | None:
    attr = find(node, name)
    if attr is not None and attr.type != kind:
        raise GraphError(
            f"{node.op_type} node {node.name!r}: attribute {name!r} is "
            f"{AttributeProto.AttributeType.Name(attr.type)}, expected "
            f"{AttributeProto.AttributeType.Name(kind)}"
        )
    return attr


def _missing(node: NodeProto, name: str) -> GraphError:
    return GraphError(f"{node.op_type} node {node.name!r}: attribute {name!r} is required")


def attr_int(node: NodeProto, name: str, default: int | None = None) -> int:
    attr = _typed(node, name, AttributeProto.INT)
    if attr is not None:
        return int(attr.i)
    if default is None:
        raise _missing(node, name)
    return default


def attr_float(node: NodeProto, name: str, default: float | None = None) -> float:
    attr = _typed(node, name, AttributeProto.FLOAT)
    if attr is not None:
        return float(attr.f)
    if default is None:
        raise _missing(node, name)
    return default


def attr_str(node: NodeProto, name: str, default: str | None = None) -> str:
    attr = _typed(node, name, AttributeProto.STRING)
    if attr is not None:
        return attr.s.decode()
    if default is None:
        raise _missing(node, name)
    return default


def attr_ints(node: NodeProto, name: str, default: Sequence[int] | None = None) -> list[int]:
    attr = _typed(node, name, AttributeProto.INTS)
    if attr is not None:
        return [int(v) for v in attr.ints]
    if default is None:
        raise _missing(node, name)
    return list(default)


def attr_floats(node: NodeProto, name: str, default: Sequence[float] | None = None) -> list[float]:
    attr = _typed(node, name, AttributeProto.FLOATS)
    if attr is not None:
        return [float(v) for v in attr.floats]
    if default is None:
        raise _missing(node, name)
    return list(default)
