"""Gradient and CAM-family explanation methods, each a small function over one fused session call.

Every method takes ``(session, x, target=None, **options)`` where ``x`` is a batch [N, 3, H, W] of
RGB pixels in [0, 1] and ``target`` follows :mod:`gradtap.runtime.targets`, and returns an
:class:`~gradtap.runtime.explanation.Explanation` with raw maps at native resolution.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.explanation import Explanation, finish, prepare
from gradtap.runtime.head import class_weights
from gradtap.runtime.preprocess import resize
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]

UPSAMPLING = ("bilinear", "nearest")


def saliency_map(grad: Array, *, signed: bool = False) -> Array:
    """[R, 3, H, W] gradients to [R, H, W]: max |g| over channels, or the channel sum if signed."""
    return grad.sum(axis=1) if signed else np.abs(grad).max(axis=1)


def saliency(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    signed: bool = False,
    times_input: bool = False,
    input_scale: float = 1.0,
) -> Explanation:
    """Image-specific class saliency (Simonyan et al. 2013, https://arxiv.org/abs/1312.6034).

    Args:
        session: the model. x: [N, 3, H, W] pixels in [0, 1]. target: see ``targets``.
        signed: keep the gradient's sign (channel sum) instead of max |gradient| over channels.
        times_input: multiply the gradient by the input (gradient x input).
        input_scale: evaluate the gradient at ``input_scale * x`` (some course material scales
            the input by 0.05 before taking the map).

    Returns:
        Maps [R, H, W].
    """
    if not input_scale > 0:
        raise OptionError(f"input_scale must be > 0, got {input_scale}")
    prep = prepare(session, x, target, defer_top1=input_scale == 1.0)
    xin = prep.x * np.float32(input_scale)
    run = session.run(xin, prep.seed, top1=prep.top1)
    prep = prep.settled(run.logits)
    grad = run.grad_input * xin if times_input else run.grad_input
    logits = run.logits if input_scale == 1.0 else None
    return finish("saliency", saliency_map(grad, signed=signed), prep, session, row_logits=logits)


def guided_backprop(session: ExplainSession, x: Array, target: TargetSpec = None) -> Explanation:
    """Guided backpropagation (Springenberg et al. 2014, https://arxiv.org/abs/1412.6806).

    Returns:
        Colour gradient images [R, 3, H, W]: rectifiers pass back only positive gradients
        through positive activations. Every row of the batch is computed.
    """
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, relu_rule="guided", top1=prep.top1)
    prep = prep.settled(run.logits)
    return finish("guided_backprop", run.grad_input, prep, session, row_logits=run.logits)


def deconvnet(session: ExplainSession, x: Array, target: TargetSpec = None) -> Explanation:
    """Deconvnet (Zeiler and Fergus 2014, https://arxiv.org/abs/1311.2901).

    Returns:
        Colour images [R, 3, H, W]: rectifiers pass back the rectified upstream gradient.
    """
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, relu_rule="deconvnet", top1=prep.top1)
    prep = prep.settled(run.logits)
    return finish("deconvnet", run.grad_input, prep, session, row_logits=run.logits)


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
    weights = class_weights(session.model_proto(), alias)
    prep = prepare(session, x, target)
    run = session.run(prep.x, None, grad_input=False, taps=[alias], tap_grads=False)
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


def gradcam(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    tap: str | None = None,
    relu: bool = True,
) -> Explanation:
    """Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

    The backward pass runs only down to the tap.

    Returns:
        Maps [R, h, w] at tap resolution.
    """
    alias = session.info.tap(tap)
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, grad_input=False, taps=[alias], top1=prep.top1)
    prep = prep.settled(run.logits)
    maps = gradcam_map(run.taps[alias], run.tap_grads[alias], relu=relu)
    return finish("gradcam", maps, prep, session, row_logits=run.logits)


def gradcampp(
    session: ExplainSession, x: Array, target: TargetSpec = None, *, tap: str | None = None
) -> Explanation:
    """Grad-CAM++ (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063).

    Returns:
        Maps [R, h, w] at tap resolution.
    """
    alias = session.info.tap(tap)
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, grad_input=False, taps=[alias], top1=prep.top1)
    prep = prep.settled(run.logits)
    maps = gradcampp_map(run.taps[alias], run.tap_grads[alias])
    return finish("gradcam++", maps, prep, session, row_logits=run.logits)


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
    prep = prepare(session, x, target, defer_top1=True)
    plain = session.run(prep.x, prep.seed, grad_input=False, taps=[alias], top1=prep.top1)
    prep = prep.settled(plain.logits)
    guided = session.run(prep.x, prep.seed, relu_rule="guided")
    cams = gradcam_map(plain.taps[alias], plain.tap_grads[alias])
    size = prep.x.shape[2:]
    up = np.stack([resize(m, size, nearest=upsample == "nearest") for m in cams])
    return finish(
        "guided_gradcam", guided.grad_input * up[:, None], prep, session, row_logits=plain.logits
    )
