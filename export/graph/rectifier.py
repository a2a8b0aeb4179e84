"""The relu_rule switch: what guided backprop and deconvnet do to a rectifier's backward pass.

Guided backprop and deconvnet are variants of the rule table, not model surgery: the table is
built once per pass with a Rectifier (table.rule_table), and rectifier rules (Relu, Clip with min
0, GELU) hand their cotangent to it. The plain Rectifier emits the ordinary gradient; a switched
one reads the int64 ``relu_rule`` input (0 plain, 1 guided backprop, 2 deconvnet) at run time.

With ``passes`` where the forward op has slope 1 (a hard rectifier):
plain: dy where passes; guided backprop: relu(dy) where passes; deconvnet: relu(dy) everywhere.
A soft rectifier (GELU) with slope s(x): plain: dy * s; guided: relu(dy) * s; deconvnet: relu(dy),
the slope of the rectifier's positive side standing in for the forward pass (README, "Guided
backprop and deconvnet on GELU graphs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradtap.export.graph.emitter import Emitter


@dataclass(frozen=True)
class Rectifier:
    """Run-time rectifier flags (scalar tensor names), or none for plain gradients only.

    ``floor`` is -inf for plain gradients and 0 otherwise (dy is kept where not dy < floor);
    ``is_deconv`` is a boolean scalar.
    """

    floor: str | None = None
    is_deconv: str | None = None

    @classmethod
    def switch(cls, em: Emitter, relu_rule: str) -> Rectifier:
        """Emit the two flags from the ``relu_rule`` input (once per pass)."""
        with em.scoped("relu_rule"):
            zero, two = em.const(0, dtype=np.int64), em.const(2, dtype=np.int64)
            no_floor = em.const(-np.inf, dtype=np.float32)
            floor = em.op(
                "Where", em.op("Equal", relu_rule, zero), no_floor, em.const(0.0, dtype=np.float32)
            )
            return cls(floor, em.op("Equal", relu_rule, two))

    def hard(self, em: Emitter, dy: str, passes: str, like: str) -> str:
        """dy kept where ``(passes or deconvnet) and not dy < floor``.

        The extra ops are on booleans, a quarter of a float tensor's memory each, and a NaN in
        dy is passed on, not hidden.
        """
        if self.floor is None or self.is_deconv is None:
            return em.keep(passes, dy, like)
        keep = em.op(
            "And", em.op("Or", passes, self.is_deconv), em.op("Not", em.op("Less", dy, self.floor))
        )
        return em.keep(keep, dy, like)

    def soft(self, em: Emitter, dy: str, slope: str, like: str) -> str:
        """dy * slope (plain), relu(dy) * slope (guided), relu(dy) (deconvnet)."""
        if self.floor is None or self.is_deconv is None:
            return em.op("Mul", dy, slope)
        one = em.scalar(1.0, like)
        factor = em.op("Where", self.is_deconv, one, slope)
        return em.keep(em.op("Not", em.op("Less", dy, self.floor)), em.op("Mul", dy, factor), like)


PLAIN = Rectifier()
