"""Gradient methods: saliency, guided backprop and deconvnet, each over one fused session call.

Every method takes ``(session, x, target=None, **options)`` where ``x`` is a batch [N, 3, H, W] of
RGB pixels in [0, 1] and ``target`` follows :mod:`gradtap.runtime.targets`, and returns an
:class:`~gradtap.runtime.methods.base.Explanation` with raw maps at native resolution.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.base import Explanation, finish, prepare
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]


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
    if not 0 < input_scale < np.inf:
        raise OptionError(f"input_scale must be finite and > 0, got {input_scale}")
    prep = prepare(session, x, target, defer_top1=input_scale == 1.0)
    xin = prep.x if input_scale == 1.0 else session.trust(prep.x * np.float32(input_scale))
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
