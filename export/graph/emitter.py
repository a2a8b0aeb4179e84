"""A small node emitter for backward rules, and what rules may know about the forward graph."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gradtap.export.graph import qdq
from gradtap.export.graph.shapes import Dim, Shape, infer
from gradtap.runtime.errors import GraphError

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)

__all__ = ["Dim", "Emitter", "GraphInfo", "Shape"]


class Constants(Mapping[str, np.ndarray]):
    """Initializers and Constant outputs by name, turned into arrays on first use (weights are
    large, and most rules read only a few small constants)."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]) -> None:
        self._tensors = tensors
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._tensors[name])
        return self._arrays[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@dataclass
class GraphInfo:
    """Static facts about the forward graph: inferred shapes, constant values, opset."""

    shapes: dict[str, Shape]
    dtypes: dict[str, int]
    consts: Mapping[str, np.ndarray]
    opset: int
    folded: dict[str, np.ndarray] = field(default_factory=dict)  # batch-independent, computed
    producers: dict[str, str] = field(default_factory=dict)  # tensor -> op type of its node
    quantised: dict[str, onnx.NodeProto] = field(default_factory=dict)  # Q/DQ of constants

    @classmethod
    def of(cls, model: onnx.ModelProto, *, complete: bool = True) -> GraphInfo:
        """Shapes from onnx's inference, completed where it gives up unless ``complete`` is
        False (see shapes.py); ``consts`` are initializers and Constant outputs."""
        inferred = infer(model, complete=complete)
        shapes, dtypes = inferred.shapes, inferred.dtypes
        tensors = {init.name: init for init in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                tensors[node.output[0]] = node.attribute[0].t
        for name, tensor in tensors.items():
            shapes.setdefault(name, tuple(int(d) for d in tensor.dims))
            dtypes.setdefault(name, tensor.data_type)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        folded = {k: v for k, v in inferred.values.items() if k not in tensors}
        producers = {out: node.op_type for node in model.graph.node for out in node.output}
        quantised: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:  # quantised weights: computed when first read
            known = all(not i or i in tensors or i in folded or i in quantised for i in node.input)
            if qdq.evaluable(node) and known:
                quantised[node.output[0]] = node
        return cls(shapes, dtypes, Constants(tensors), opset, folded, producers, quantised)

    def shape(self, name: str) -> Shape:
        if name not in self.shapes:
            raise GraphError(f"no inferred shape for tensor {name!r}; shape inference failed there")
        return self.shapes[name]

    def static_shape(self, name: str) -> tuple[int, ...]:
        shape = self.shape(name)
        dims = tuple(d for d in shape if isinstance(d, int))
        if len(dims) != len(shape):
            raise GraphError(f"tensor {name!r} needs a static shape here, got {list(shape)}")
        return dims

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer, a Constant output or a shape computation that is the same
        whatever the batch; None when it is only known at run time."""
        if not name:
            return None
        if name in self.quantised and name not in self.folded:
            node = self.quantised[name]
            self.folded[name] = qdq.evaluate(node, [self.const(i) for i in node.input])
        return self.consts.get(name, self.folded.get(name))


@dataclass
class Emitter:
    """Collects backward nodes and constants; every name is unique and traceable to its node.

    ``em.op("Mul", a, b)`` emits one node and returns its output name; ``em.ops(..., outputs=k)``
    returns a list. Names read ``<prefix><scope>/vjp/<k>``, the scope being the forward node a rule
    differentiates (``with em.scoped(node.name): ...``).
    """

    info: GraphInfo
    prefix: str = "grad/"
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    wanted: frozenset[str] = frozenset()  # tensors whose cotangent the walk needs
    _scope: str = field(default="graph", init=False)
    _count: int = field(default=0, init=False)

    @contextmanager
    def scoped(self, scope: str) -> Iterator[None]:
        """Name the nodes emitted inside the block after ``scope``."""
        outer, self._scope = self._scope, scope
        try:
            yield
        finally:
            self._scope = outer

    def fresh(self, hint: str = "") -> str:
        self._count += 1
        return f"{self.prefix}{self._scope}/vjp/{self._count}{hint}"

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        """Emit one node with one output; return the output's name."""
        return self.ops(op_type, *inputs, outputs=1, **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs: Any) -> list[str]:
        """Emit one node with ``outputs`` outputs (Split, TopK); return their names."""
        if not onnx.defs.has(op_type):
            raise RuntimeError(f"{op_type!r} is not an ai.onnx operator")
        names = [self.fresh() for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=names[0] + "/" + op_type, **attrs)
        )
        return names

    def const(self, value: np.ndarray | Sequence[int] | float, dtype: type = np.int64) -> str:
        array = np.asarray(value, dtype=dtype) if not isinstance(value, np.ndarray) else value
        name = self.fresh("/const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def scalar(self, value: float, like: str) -> str:
        """A float scalar constant in the element type of tensor ``like``."""
        dtype = helper.tensor_dtype_to_np_dtype(self.info.dtypes.get(like, TensorProto.FLOAT))
        return self.const(np.asarray(value, dtype=dtype))

    def grad_dtype(self, name: str) -> int:
        """The element type of a gradient with respect to forward tensor ``name``: its own, or
        float for an integer tensor (a quantised one, between QuantizeLinear and its readers)."""
        dtype = self.info.dtypes.get(name, TensorProto.FLOAT)
        return dtype if dtype in FLOAT_TYPES else TensorProto.FLOAT

    def zeros_like(self, name: str) -> str:
        """Zeros of ``name``'s shape, a gradient buffer for it (of :meth:`grad_dtype`)."""
        zero = helper.make_tensor("value", self.grad_dtype(name), [1], [0])
        return self.op("ConstantOfShape", self.op("Shape", name), value=zero)

    def keep(self, condition: str, grad: str, like: str) -> str:
        """``grad`` where ``condition`` holds, 0 elsewhere: a multiply by the condition cast to
        the element type of forward tensor ``like``.

        onnxruntime's Where holds two full-size selection buffers besides its output; this holds
        one (the cast mask), which on the first layers of a large CNN is hundreds of MB.
        """
        return self.op("Mul", grad, self.mask(condition, like))

    def mask(self, condition: str, like: str) -> str:
        """Cast a boolean tensor to the element type of ``like`` (1 where true, else 0)."""
        return self.op("Cast", condition, to=self.grad_dtype(like))

    def wants(self, name: str) -> bool:
        return name in self.wanted
