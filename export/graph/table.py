"""The backward-rule table, assembled in one place from every rule module.

``RULES`` is the plain table (ordinary gradients); ``rule_table(rectifier)`` is the same table
with the rectifier rules closed over a Rectifier, the variant the walk uses when the graph takes
a ``relu_rule`` input. A new rule module is added to ``PARTS`` and nowhere else.
"""

from __future__ import annotations

from functools import partial

from gradtap.export.graph import (
    rules,
    rules_conv,
    rules_index,
    rules_math,
    rules_norm,
    rules_quant,
    rules_shape,
)
from gradtap.export.graph.rectifier import PLAIN, Rectifier
from gradtap.export.graph.rulebase import RuleSet, VjpRule

PARTS: tuple[RuleSet, ...] = (
    rules.PART,
    rules_math.PART,
    rules_norm.PART,
    rules_conv.PART,
    rules_shape.PART,
    rules_index.PART,
    rules_quant.PART,
)

# Ops whose outputs carry no gradient (shape arithmetic, comparisons, index outputs).
ZERO_GRAD_OPS = frozenset(
    {
        "Shape", "Size", "Constant", "ConstantOfShape", "ArgMax", "ArgMin", "Equal", "Greater",
        "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "Range",
        "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf", "EyeLike", "RandomNormalLike",
        "RandomUniformLike",
    }
)  # fmt: skip


def rule_table(rectifier: Rectifier = PLAIN) -> dict[str, VjpRule]:
    """op_type -> rule, every module's rules, the rectifier rules closed over ``rectifier``."""
    table: dict[str, VjpRule] = {}
    for part in PARTS:
        own: dict[str, VjpRule] = dict(part.rules)
        own.update({op: partial(r, rectifier=rectifier) for op, r in part.rectifiers.items()})
        for op_type, rule in own.items():
            if op_type in table:
                raise RuntimeError(f"two backward rules for {op_type} (one in {part.module})")
            table[op_type] = rule
    return table


RULES = rule_table()
