"""What every backward-rule module shares: the rule signature, a per-module rule set, unbroadcast.

A rule takes the forward node, one cotangent name per node output (None where none flows) and an
Emitter, and returns one cotangent name per node input (None for weights, shapes and anything the
walk does not want). A rectifier rule also takes the Rectifier that decides what guided backprop
and deconvnet do (see rectifier.py). Each rule module fills its own RuleSet; table.py assembles
the full table from all of them in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from onnx import NodeProto

from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rectifier import Rectifier

Grads = tuple[str | None, ...]
VjpRule = Callable[[NodeProto, Grads, Emitter], Grads]
RectifierRule = Callable[[NodeProto, Grads, Emitter, Rectifier], Grads]


@dataclass
class RuleSet:
    """The rules one module defines: plain rules and rectifier rules, keyed by op type."""

    module: str
    rules: dict[str, VjpRule] = field(default_factory=dict)
    rectifiers: dict[str, RectifierRule] = field(default_factory=dict)

    def rule(self, *op_types: str) -> Callable[[VjpRule], VjpRule]:
        """Decorator: register a rule for one or more op types."""

        def register(rule: VjpRule) -> VjpRule:
            for op_type in op_types:
                self.rules[op_type] = rule
            return rule

        return register

    def rectifier(self, *op_types: str) -> Callable[[RectifierRule], RectifierRule]:
        """Decorator: register a rule whose guided/deconvnet variant the Rectifier decides."""

        def register(rule: RectifierRule) -> RectifierRule:
            for op_type in op_types:
                self.rectifiers[op_type] = rule
            return rule

        return register


def unbroadcast(em: Emitter, grad: str, like: str, rank: int) -> str:
    """Sum ``grad`` (of rank ``rank``) over the axes broadcasting added or stretched in ``like``.

    Summing over an axis where ``like`` has size 1 is right whether or not it was stretched.
    """
    target = em.info.shape(like)
    lead = rank - len(target)
    if lead > 0:
        grad = em.op("ReduceSum", grad, em.ints(range(lead)), keepdims=0)
    stretched = [i for i, d in enumerate(target) if d == 1]
    if stretched:
        grad = em.op("ReduceSum", grad, em.ints(stretched), keepdims=1)
    return grad


def zero_appended(em: Emitter, w: str, axis: int) -> str:
    """``w`` with one slice of zeros appended along ``axis``, computed from ``w`` itself: where
    ``w`` is a weight, runtimes fold it once, at load time, and the file holds nothing more."""
    zero = em.op(
        "Mul", em.op("Slice", w, em.ints([0]), em.ints([1]), em.ints([axis])), em.scalar(0.0, w)
    )
    return em.op("Concat", w, zero, axis=axis)


def no_grads(node: NodeProto, first: str | None) -> Grads:
    """``first`` for the node's data input, None for the others (shapes, axes, weights)."""
    return (first,) + (None,) * (len(node.input) - 1)
