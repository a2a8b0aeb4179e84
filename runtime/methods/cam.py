"""The CAM family: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM, over the taps of one call.

Every method takes ``(session, x, target=None, **options)`` like the gradient methods and returns
maps at tap resolution (guided Grad-CAM: colour maps at input resolution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.image.geometry import resize
from gradtap.runtime.methods.base import Explanation, Prepared, finish, prepare
from gradtap.runtime.session import ExplainSession, Pass
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]

UPSAMPLING = ("bilinear", "nearest")


def tap_pass(
    session: ExplainSession,
    x: Array,
    target: TargetSpec,
    aliases: Sequence[str],
    *,
    grads: bool,
    constants: Sequence[str] = (),
) -> tuple[Pass, Prepared]:
    """The CAM family's one call: the taps (and their gradients with ``grads``), the backward
    pass stopping at the taps, the predicted class explained in the call that predicts it."""
    prep = prepare(session, x, target, defer_top1=True)
    if grads:
        run = session.run(
            prep.x, prep.seed, grad_input=False, taps=aliases, top1=prep.top1, constants=constants
        )
    else:
        run = session.run(
            prep.x, None, grad_input=False, taps=aliases, tap_grads=False, constants=constants
        )
    return run, prep.settled(run.logits)


Formula = Callable[[Array, "Array | None"], Array]  # (taps [R, K, h, w], their gradients) -> maps


def tap_method(
    name: str, formula: Formula, summary: str, *, grads: bool = True, relu_option: bool = True
) -> Callable[..., Explanation]:
    """A CAM-family method from its formula: one :func:`tap_pass` on one tap, the formula, a ReLU.

    Args:
        name: the registry name the Explanation carries.
        formula: maps [R, h, w] from the tap's activations and gradients (``None`` without
            ``grads``).
        summary: the method's docstring line, citing its paper.
        grads: the formula reads the tap gradient (else the call is forward only).
        relu_option: the method takes ``relu`` (rectify, default True); else it always does.

    Returns:
        ``method(session, x, target=None, *, tap=None[, relu=True])`` returning maps [R, h, w]
        at tap resolution.
    """

    def compute(session: ExplainSession, x: Array, target: TargetSpec, tap: str | None,
                relu: bool) -> Explanation:  # fmt: skip
        alias = session.info.tap(tap)
        run, prep = tap_pass(session, x, target, [alias], grads=grads)
        maps = formula(run.taps[alias], run.tap_grads[alias] if grads else None)
        maps = np.maximum(maps, 0) if relu else maps
        return finish(name, maps, prep, session, row_logits=run.logits)

    if relu_option:

        def method(
            session: ExplainSession,
            x: Array,
            target: TargetSpec = None,
            *,
            tap: str | None = None,
            relu: bool = True,
        ) -> Explanation:
            return compute(session, x, target, tap, relu)

    else:

        def method(  # type: ignore[misc]  # the same method without the relu option
            session: ExplainSession, x: Array, target: TargetSpec = None, *, tap: str | None = None
        ) -> Explanation:
            return compute(session, x, target, tap, True)

    method.__name__ = method.__qualname__ = name.replace("++", "pp")
    method.__doc__ = f"{summary}\n\nReturns:\n    Maps [R, h, w] at tap resolution.\n"
    return method


def cam(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    tap: str | None = None,
    relu: bool = True,
) -> Explanation:
    """Class activation mapping (Zhou et al. 2016, https://arxiv.org/abs/1512.04150).

    ``M_c = sum_k w_ck A_k`` with the class weights of the linear layer read from the graph; needs
    global average pooling then a linear layer right after the tap. Forward pass only.

    Args:
        tap: tap alias (default tap when ``None``). relu: rectify the map (as Grad-CAM does).

    Returns:
        Maps [R, h, w] at tap resolution.
    """
    alias = session.info.tap(tap)
    if alias not in session.info.cam_taps:
        raise ModelError(
            f"CAM needs global average pooling and a linear layer right after tap {alias!r}; "
            f"model {session.info.name!r} has them after {list(session.info.cam_taps) or 'no tap'}"
            " (use gradcam otherwise)"
        )
    weights_out = c.cam_output(alias)
    run, prep = tap_pass(session, x, target, [alias], grads=False, constants=[weights_out])
    weights = run.constants[weights_out]
    maps = np.einsum("rk,rkhw->rhw", weights[prep.rows.target], run.taps[alias])
    maps = np.maximum(maps, 0) if relu else maps
    return finish("cam", maps, prep, session, row_logits=run.logits)


def gradcam_map(acts: Array, grads: Array, *, relu: bool = True) -> Array:
    """Grad-CAM: ``relu(sum_k mean_hw(dS/dA_k) * A_k)`` for [R, K, h, w] activations."""
    weights = grads.mean(axis=(2, 3))
    maps = np.einsum("rk,rkhw->rhw", weights, acts)
    return np.maximum(maps, 0) if relu else maps


def gradcampp_map(acts: Array, grads: Array, *, eps: float = 1e-6) -> Array:
    """Grad-CAM++: pixel weights ``g^2 / (2 g^2 + sum_ab A_ab g^3)`` on relu(g), then as Grad-CAM.

    ``eps`` is added to the denominator for numerical stability.
    """
    g2 = grads.astype(np.float64) ** 2
    act_sum = acts.sum(axis=(2, 3), dtype=np.float64)[:, :, None, None]
    alpha = np.where(grads != 0, g2 / (2 * g2 + act_sum * g2 * grads + eps), 0.0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3))
    return np.maximum(np.einsum("rk,rkhw->rhw", weights, acts), 0).astype(np.float32)


gradcam = tap_method(
    "gradcam",
    lambda acts, grads: gradcam_map(acts, grads, relu=False),  # type: ignore[arg-type]
    "Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391); the backward pass "
    "runs only down to the tap.",
)
gradcampp = tap_method(
    "gradcam++",
    gradcampp_map,  # type: ignore[arg-type]
    "Grad-CAM++ (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063).",
    relu_option=False,
)


def guided_gradcam(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    tap: str | None = None,
    upsample: str = "bilinear",
) -> Explanation:
    """Guided Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

    Guided backprop times the Grad-CAM map upsampled to the input size.

    Args:
        upsample: ``"bilinear"`` (the paper) or ``"nearest"`` for the Grad-CAM upsampling.

    Returns:
        Colour maps [R, 3, H, W].
    """
    if upsample not in UPSAMPLING:
        raise OptionError(f"upsample {upsample!r} unknown; valid: {list(UPSAMPLING)}")
    alias = session.info.tap(tap)
    plain, prep = tap_pass(session, x, target, [alias], grads=True)
    guided = session.run(prep.x, prep.seed, relu_rule="guided")
    cams = gradcam_map(plain.taps[alias], plain.tap_grads[alias])
    size = prep.x.shape[2:]
    up = np.stack([resize(m, size, nearest=upsample == "nearest") for m in cams])
    return finish(
        "guided_gradcam", guided.grad_input * up[:, None], prep, session, row_logits=plain.logits
    )
