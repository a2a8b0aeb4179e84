"""FullGrad over one fused call: the input gradient and the graph's ``bias_grad/<k>`` maps."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ModelError
from gradtap.runtime.image.geometry import resize
from gradtap.runtime.methods.base import Explanation, finish, prepare
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]
_EPS = 1e-7


def channel_scaled(v: Array) -> Array:
    """[R, K, h, w] -> each channel min-max scaled over its locations: ``(v - min) / (span + eps)``."""
    lo = v.min(axis=(2, 3), keepdims=True)
    span = v.max(axis=(2, 3), keepdims=True) - lo
    return ((v - lo) / (span + _EPS)).astype(np.float32)


def fullgrad(session: ExplainSession, x: Array, target: TargetSpec = None) -> Explanation:
    """FullGrad (Srinivas and Fleuret 2019, https://arxiv.org/abs/1905.00780).

    ``sum_c minmax(|x * dS/dx|_c) + sum_layers upsample(sum_c minmax(|b_c * dS/dz_c|))``: the
    input-gradient term plus the bias-gradients of every biased convolution/BatchNorm layer,
    each channel min-max scaled and the layer maps upsampled bilinearly (pytorch-grad-cam's
    post-processing). The layer maps come reduced from the graph (``bias_grad/<k>``, a graph
    augmented with ``bias_gradients=True``); one call computes everything.

    Returns:
        Maps [R, H, W] at input resolution, unrescaled.

    Raises:
        ModelError: the graph has no bias-gradient outputs.
    """
    names = session.bias_outputs
    if not names:
        raise ModelError(
            f"FullGrad needs the bias gradients, which model {session.info.name!r} lacks: "
            "augment it with bias_gradients=True (gradtap augment --fullgrad)"
        )
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, top1=prep.top1, outputs=names)
    prep = prep.settled(run.logits)
    assert run.grad_input is not None  # fetched: grad_input=True
    maps = channel_scaled(np.abs(run.grad_input * prep.x)).sum(axis=1)
    size = prep.x.shape[2:]
    for name in names:
        layer = run.outputs[name]
        maps += np.stack([resize(m, size) for m in layer])
    return finish("fullgrad", maps, prep, session, row_logits=run.logits)
