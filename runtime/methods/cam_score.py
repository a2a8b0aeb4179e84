"""Score-CAM and Ablation-CAM: channel weights from batched forward passes of one session.

Score-CAM masks the input with each upsampled tap channel; Ablation-CAM zeroes one tap channel
per row through the graph's ``tap_scale`` input (contract 4), so neither rebuilds the model.
Both return rectified maps at tap resolution, unrescaled.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.methods.base import Explanation, finish
from gradtap.runtime.methods.cam import tap_pass
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]


def upsample_matrix(n_out: int, n_in: int) -> Array:
    """[n_out, n_in] linear interpolation with the corner samples aligned (``align_corners``)."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def channel_masks(acts: Array, size: tuple[int, int]) -> Array:
    """[K, h, w] channels -> [K, H, W] masks: bilinear upsampling, then min-max to [0, 1]."""
    k, h, w = acts.shape
    rows = upsample_matrix(size[0], h)
    cols = upsample_matrix(size[1], w)
    # two plain matrix products (numpy's stacked matmul loops over the K channels one by one)
    wide = acts.astype(np.float32).reshape(k * h, w) @ cols.T  # [K * h, W]
    wide = wide.reshape(k, h, size[1]).transpose(0, 2, 1).reshape(k * size[1], h)
    up = (wide @ rows.T).reshape(k, size[1], size[0]).transpose(0, 2, 1)  # [K, H, W]
    up = np.ascontiguousarray(up)
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    up -= lo
    up /= hi - lo + 1e-8
    return up


def _softmax(v: Array) -> Array:
    e = np.exp(v - v.max())
    return e / e.sum()


def scorecam(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    tap: str | None = None,
    top_n: int | None = None,
) -> Explanation:
    """Score-CAM (Wang et al. 2020, https://arxiv.org/abs/1910.01279). Forward passes only.

    Each tap channel, upsampled bilinearly and min-max scaled, masks the input; the softmax over
    channels of the masked inputs' target logits weighs the channels.

    Args:
        top_n: score only the ``top_n`` channels of largest activation variance (the others get
            weight 0): ``top_n`` forward passes per row instead of C.

    Returns:
        Maps [R, h, w] at tap resolution.
    """
    alias = session.info.tap(tap)
    if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
        raise OptionError(f"top_n must be an int >= 1, got {top_n!r}")
    run, prep = tap_pass(session, x, target, [alias], grads=False)
    acts = run.taps[alias]
    r, k = acts.shape[:2]
    size = prep.x.shape[2:]
    weights = np.zeros((r, k), np.float32)
    per_call = max(1, session.batch_size)
    blank: Array | None = None  # the logits of a black image: what every all-zero mask gives
    for i in range(r):
        keep = np.arange(k)
        if top_n is not None and top_n < k:
            keep = np.sort(np.argsort(-acts[i].reshape(k, -1).var(axis=1), kind="stable")[:top_n])
        scores = np.empty(len(keep), np.float32)
        zero = ~acts[i, keep].reshape(len(keep), -1).any(axis=1)  # e.g. channels a ReLU shut
        if zero.any():
            if blank is None:
                blank = session.forward(session.trust(np.zeros_like(prep.x[:1])))[0]
            scores[zero] = blank[prep.rows.target[i]]
        live = np.flatnonzero(~zero)
        for start in range(0, len(live), per_call):
            chunk = live[start : start + per_call]
            masks = channel_masks(acts[i, keep[chunk]], size)
            logits = session.forward(session.trust(masks[:, None] * prep.x[i][None]))
            scores[chunk] = logits[:, prep.rows.target[i]]
        weights[i, keep] = _softmax(scores)
    maps = np.maximum(np.einsum("rk,rkhw->rhw", weights, acts), 0)
    return finish("scorecam", maps, prep, session, row_logits=run.logits)


def ablationcam(session: ExplainSession, x: Array, target: TargetSpec = None) -> Explanation:
    """Ablation-CAM (Desai and Ramaswamy 2020, https://doi.org/10.1109/WACV45572.2020.9093360).

    Channel ``k`` weighs ``(S - S_k) / S``, where ``S_k`` is the target logit with channel ``k``
    of the default tap zeroed (one row per channel through ``tap_scale``, the layers before the
    tap computed once per chunk of rows). Forward passes only.

    Returns:
        Maps [R, h, w] at the default tap's resolution.
    """
    alias = session.info.tap(None)
    run, prep = tap_pass(session, x, target, [alias], grads=False)
    acts = run.taps[alias]
    r, k = acts.shape[:2]
    if session.tap_channels != k:
        raise ModelError(
            f"Ablation-CAM needs the tap_scale input for tap {alias!r}, which model "
            f"{session.info.name!r} lacks: augment it with interventions=True "
            "(gradtap augment --interventions)"
        )
    rows = np.arange(r)
    score = run.logits[rows, prep.rows.target]
    ablated = np.empty((r, k), np.float32)
    ablation = np.ones((k, k), np.float32) - np.eye(k, dtype=np.float32)
    for i in range(r):  # the layers up to the tap run once per chunk of channels
        ablated[i] = session.intervene(prep.x[i : i + 1], ablation)[:, prep.rows.target[i]]
    weights = (score[:, None] - ablated) / score[:, None]
    maps = np.maximum(np.einsum("rk,rkhw->rhw", weights, acts), 0)
    return finish("ablationcam", maps, prep, session, row_logits=run.logits)
