"""More of the CAM family over the taps of one call: HiResCAM, XGrad-CAM, LayerCAM (one tap or
fused over several), Eigen-CAM and Eigen-Grad-CAM.

Each variant is its formula over the tap's activations and gradients, made a method by
:func:`~gradtap.runtime.methods.cam.tap_method`. Each map is rectified (``relu``) like
Grad-CAM's and returned at tap resolution, unrescaled; a LayerCAM fused over several taps is returned at the input resolution (each tap's map is min-max
scaled, upsampled bilinearly, averaged and scaled again, as in the LayerCAM paper's fusion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import resize
from gradtap.runtime.methods.base import Explanation, finish
from gradtap.runtime.methods.cam import tap_method, tap_pass
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]
_EPS = 1e-7


def hirescam_map(acts: Array, grads: Array) -> Array:
    """HiResCAM: ``sum_k dS/dA_k * A_k`` element-wise (no spatial averaging of the gradient)."""
    return (grads * acts).sum(axis=1)


def xgradcam_map(acts: Array, grads: Array) -> Array:
    """XGrad-CAM: channel weights ``sum_hw(g * A) / (sum_hw A + eps)``, then ``sum_k w_k A_k``."""
    total = acts.sum(axis=(2, 3), keepdims=True)
    weights = (grads * acts / (total + _EPS)).sum(axis=(2, 3))
    return np.einsum("rk,rkhw->rhw", weights, acts)


def layercam_map(acts: Array, grads: Array) -> Array:
    """LayerCAM: ``sum_k relu(dS/dA_k) * A_k`` (a positive gradient weighs each location)."""
    return (np.maximum(grads, 0) * acts).sum(axis=1)


def first_component(acts: Array) -> Array:
    """[R, K, h, w] -> [R, h, w]: each row's projection on its first principal component.

    The K-dimensional location vectors are centred per channel, and projected on the first right
    singular vector; the sign is the SVD's (as the Eigen-CAM paper and pytorch-grad-cam leave it).
    """
    r, k, h, w = acts.shape
    flat = acts.reshape(r, k, h * w).transpose(0, 2, 1).astype(np.float32)
    flat = flat - flat.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return np.einsum("rpk,rk->rp", flat, vt[:, 0]).reshape(r, h, w).astype(np.float32)


hirescam = tap_method(
    "hirescam", hirescam_map, "HiResCAM (Draelos and Carin 2020, https://arxiv.org/abs/2011.08891)."
)
xgradcam = tap_method(
    "xgradcam", xgradcam_map, "XGrad-CAM (Fu et al. 2020, https://arxiv.org/abs/2008.02312)."
)
eigencam = tap_method(
    "eigencam",
    lambda acts, _: first_component(acts),
    "Eigen-CAM (Muhammad and Yeasin 2020, https://arxiv.org/abs/2008.00299): the first principal"
    " component of the tap's activations, rectified; class-agnostic (the target only labels the"
    " rows). Forward only.",
    grads=False,
    relu_option=False,
)
eigengradcam = tap_method(
    "eigengradcam",
    lambda acts, grads: first_component(acts * grads),
    "Eigen-Grad-CAM: Eigen-CAM (https://arxiv.org/abs/2008.00299) of ``dS/dA * A``.",
    relu_option=False,
)


def layercam(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    tap: str | None = None,
    taps: Sequence[str] | str | None = None,
) -> Explanation:
    """LayerCAM (Jiang et al. 2021, https://doi.org/10.1109/TIP.2021.3089943).

    Args:
        tap: the tap of a single-layer LayerCAM (default tap when ``None``).
        taps: several tap aliases (or ``"all"``) to fuse: each tap's rectified map is min-max
            scaled, upsampled bilinearly to the input size, the maps averaged and scaled to
            [0, 1]. All taps come out of the same single call.

    Returns:
        Maps [R, h, w] at tap resolution (one tap), or [R, H, W] at input resolution (fused).
    """
    if taps is None:
        aliases = [session.info.tap(tap)]
    else:
        if taps == "all":
            names = list(session.info.taps)
        else:
            names = [taps] if isinstance(taps, str) else list(taps)
        if not names:
            raise OptionError("taps must name at least one tap")
        aliases = [session.info.tap(t) for t in names]
    run, prep = tap_pass(session, x, target, aliases, grads=True)
    cams = [np.maximum(layercam_map(run.taps[a], run.tap_grads[a]), 0) for a in aliases]
    if taps is None:
        maps = cams[0]
    else:
        size = prep.x.shape[2:]
        maps = scale(np.mean([[resize(m, size) for m in scale(c)] for c in cams], axis=0))
    return finish("layercam", maps, prep, session, row_logits=run.logits)


def scale(maps: Array) -> Array:
    """Min-max scale each map of [R, ...] to [0, 1] (a constant map becomes 0)."""
    axes = tuple(range(1, maps.ndim))
    lo = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - lo
    return ((maps - lo) / (span + _EPS)).astype(np.float32)
