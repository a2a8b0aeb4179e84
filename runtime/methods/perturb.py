"""Sampled attributions over batched calls: input x gradient, GradientShap, a noise tunnel over
any gradient method (SmoothGrad, SmoothGrad squared, VarGrad) and RISE (forward passes only).

Samples go through onnxruntime in chunks of ``session.batch_size`` rows, so memory stays flat in
the number of samples or masks; every random draw comes from a seeded numpy generator.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.base import Explanation, Prepared, finish, prepare
from gradtap.runtime.methods.sampling import _baseline, _chunks, _positive
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec, softmax

Array = npt.NDArray[np.float32]

# name -> (relu rule, multiply the gradient by the (noisy) input, absolute value)
BASES: dict[str, tuple[str, bool, bool]] = {
    "saliency": ("plain", False, True),
    "gradient": ("plain", False, False),
    "input_x_gradient": ("plain", True, False),
    "guided_backprop": ("guided", False, False),
    "deconvnet": ("deconvnet", False, False),
}
TUNNELS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def input_x_gradient(session: ExplainSession, x: Array, target: TargetSpec = None) -> Explanation:
    """Input x gradient (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713).

    Returns:
        Maps [R, H, W]: the channel sum of ``x * dS/dx``; ``extras["attributions"]`` [R, 3, H, W].
    """
    prep = prepare(session, x, target, defer_top1=True)
    run = session.run(prep.x, prep.seed, top1=prep.top1)
    prep = prep.settled(run.logits)
    attr = prep.x * run.grad_input
    return finish(
        "input_x_gradient",
        attr.sum(axis=1),
        prep,
        session,
        row_logits=run.logits,
        extras={"attributions": attr},
    )


def gradients(session: ExplainSession, xs: Array, seed: Array, base: str = "gradient") -> Array:
    """Per-sample attributions of ``base`` (see ``BASES``) at inputs ``xs`` [S, R, 3, H, W].

    ``seed`` [R, classes] is each row's cotangent; samples run in chunks of the batch size.
    """
    rule, times_input, absolute = BASES[base]
    r = len(seed)
    out = np.empty_like(xs)
    for chunk in _chunks(len(xs), max(1, session.batch_size // r)):
        part = xs[chunk[0] : chunk[-1] + 1]
        flat = part.reshape(-1, *part.shape[2:])
        g = session.run(flat, np.tile(seed, (len(chunk), 1)), relu_rule=rule).grad_input
        g = g * flat if times_input else g
        out[chunk[0] : chunk[-1] + 1] = (np.abs(g) if absolute else g).reshape(part.shape)
    return out


def tunnel(samples: Array, kind: str) -> Array:
    """Aggregate per-sample attributions [S, ...] by ``kind`` (one of ``TUNNELS``)."""
    if kind == "smoothgrad":
        return samples.mean(axis=0)
    if kind == "smoothgrad_sq":
        return np.square(samples).mean(axis=0)
    if kind == "vargrad":
        return np.square(samples).mean(axis=0) - np.square(samples.mean(axis=0))
    raise OptionError(f"noise tunnel {kind!r} unknown; valid: {list(TUNNELS)}")


def tunnel_from_noise(
    session: ExplainSession, prep: Prepared, noise: Array, base: str, kind: str
) -> Array:
    """The noise tunnel of ``base`` over given draws ``noise`` [S, R, 3, H, W] (in pixel units)."""
    return tunnel(gradients(session, prep.x[None] + noise, prep.seed, base), kind)


def noise_tunnel(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    base: str = "saliency",
    kind: str = "smoothgrad",
    samples: int = 16,
    stdev: float = 0.1,
    seed: int | None = 0,
) -> Explanation:
    """A noise tunnel over a gradient method: SmoothGrad (https://arxiv.org/abs/1706.03825),
    SmoothGrad squared and VarGrad (Adebayo et al. 2018, https://arxiv.org/abs/1810.03307).

    Each row's image gets ``samples`` copies with Gaussian noise of std ``stdev`` (pixel units,
    as captum's ``stdevs``); the attributions of ``base`` are averaged (``smoothgrad``), their
    squares averaged (``smoothgrad_sq``) or their variance taken (``vargrad``).

    Args:
        base: one of ``BASES``: ``saliency`` (|gradient|), ``gradient``, ``input_x_gradient``,
            ``guided_backprop``, ``deconvnet``.
        kind: one of ``TUNNELS``.

    Returns:
        Maps [R, H, W] (channel sums); ``extras["attributions"]`` [R, 3, H, W].
    """
    if base not in BASES:
        raise OptionError(f"base method {base!r} unknown; valid: {list(BASES)}")
    if kind not in TUNNELS:
        raise OptionError(f"noise tunnel {kind!r} unknown; valid: {list(TUNNELS)}")
    _positive("samples", samples)
    if not stdev >= 0:
        raise OptionError(f"stdev must be >= 0, got {stdev}")
    prep = prepare(session, x, target)
    rng = np.random.default_rng(seed)
    noise = (stdev * rng.standard_normal((samples, *prep.x.shape))).astype(np.float32)
    attr = tunnel_from_noise(session, prep, noise, base, kind)
    return finish("noise_tunnel", attr.sum(axis=1), prep, session, extras={"attributions": attr})


def shap_from_draws(
    session: ExplainSession, prep: Prepared, baselines: Array, alpha: Array, noise: Array
) -> Array:
    """GradientShap over given draws: ``baselines`` [S, R, 3, H, W], ``alpha`` [S, R] in [0, 1],
    ``noise`` [S, R, 3, H, W] added to the input; the mean of ``(x + n - b) * dS/dx`` at
    ``b + alpha * (x + n - b)``."""
    noisy = prep.x[None] + noise
    points = baselines + alpha[:, :, None, None, None] * (noisy - baselines)
    grads = gradients(session, points.astype(np.float32), prep.seed)
    return ((noisy - baselines) * grads).mean(axis=0)


def gradient_shap(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    baselines: str | float | Array = "black",
    samples: int = 16,
    stdev: float = 0.0,
    seed: int | None = 0,
) -> Explanation:
    """GradientShap (Lundberg and Lee 2017, https://arxiv.org/abs/1705.07874; as in captum).

    Expected gradients: ``samples`` draws of a baseline (uniformly from ``baselines``) and a
    point uniformly on the path from it to the (optionally noised) image; the attribution is the
    mean of ``(x - baseline) * gradient`` at those points.

    Args:
        baselines: ``"black"``, ``"white"``, ``"blur"``, ``"uniform"`` (a fresh uniform-noise
            image per sample), a pixel value, or an array [B, 3, H, W] of baseline images.
        stdev: std of Gaussian noise added to the input at each sample (pixel units).

    Returns:
        Maps [R, H, W] (channel sums); ``extras``: ``attributions`` [R, 3, H, W] and
        ``completeness_error`` [R] = sum(attr) - (S(x) - mean S(baseline)) (in expectation zero).
    """
    _positive("samples", samples)
    if not stdev >= 0:
        raise OptionError(f"stdev must be >= 0, got {stdev}")
    prep = prepare(session, x, target)
    rng = np.random.default_rng(seed)
    shape = (samples, *prep.x.shape)
    r = len(prep.x)
    if isinstance(baselines, str) and baselines == "uniform":
        drawn = rng.random(shape, dtype=np.float32)
    elif isinstance(baselines, np.ndarray) and baselines.ndim == 4:
        pool = np.asarray(baselines, np.float32)
        if pool.shape[1:] != prep.x.shape[1:] or pool.min() < 0 or pool.max() > 1:
            raise OptionError(f"baselines must be [B, 3, H, W] pixels in [0, 1], got {pool.shape}")
        drawn = pool[rng.integers(0, len(pool), (samples, r))]
    else:
        one = _baseline(baselines, prep.x, prep.rows.image_index, seed)
        drawn = np.broadcast_to(one, shape)
    alpha = rng.random((samples, r)).astype(np.float32)
    noise = (stdev * rng.standard_normal(shape)).astype(np.float32)
    attr = shap_from_draws(session, prep, drawn, alpha, noise)
    rows, t = np.arange(r), prep.rows.target
    logits = session.logits(prep.x)
    flat = session.logits(drawn.reshape(-1, *shape[2:])).reshape(samples, r, -1)
    base_scores = flat[:, rows, t].mean(axis=0)
    extras = {
        "attributions": attr,
        "completeness_error": attr.sum(axis=(1, 2, 3)) - (logits[rows, t] - base_scores),
    }
    return finish(
        "gradient_shap", attr.sum(axis=1), prep, session, row_logits=logits, extras=extras
    )


def rise_masks(
    count: int, size: tuple[int, int], *, cells: int = 8, p: float = 0.5, seed: int | None = 0
) -> Array:
    """RISE's random masks [count, H, W] in [0, 1]: a ``cells`` x ``cells`` binary grid with
    keep probability ``p``, upsampled bilinearly to ``(cells + 1)`` cell sizes and cropped at a
    random shift of up to one cell."""
    if not 0 < p <= 1:
        raise OptionError(f"p must be in (0, 1], got {p}")
    _positive("cells", cells)
    rng = np.random.default_rng(seed)
    h, w = size
    ch, cw = int(np.ceil(h / cells)), int(np.ceil(w / cells))
    up = ((cells + 1) * ch, (cells + 1) * cw)
    grids = (rng.random((count, cells, cells)) < p).astype(np.float32)
    shifts = rng.integers(0, [ch, cw], size=(count, 2))
    masks = np.empty((count, h, w), np.float32)
    for k in range(count):
        big = cv2.resize(grids[k], (up[1], up[0]), interpolation=cv2.INTER_LINEAR)
        i, j = shifts[k]
        masks[k] = big[i : i + h, j : j + w]
    return masks


def rise_from_masks(session: ExplainSession, prep: Prepared, masks: Array, p: float) -> Array:
    """``sum_k P(target | x * M_k) * M_k / (count * p)`` for masks [count, H, W]."""
    r = len(prep.x)
    rows, t = np.arange(r), prep.rows.target
    total = np.zeros((r, *masks.shape[1:]), np.float64)
    for chunk in _chunks(len(masks), max(1, session.batch_size // r)):
        m = masks[chunk[0] : chunk[-1] + 1]
        xs = (prep.x[None] * m[:, None, None]).reshape(-1, *prep.x.shape[1:])
        probs = softmax(session.forward(xs)).reshape(len(m), r, -1)[:, rows, t]
        total += np.einsum("kr,khw->rhw", probs, m)
    return (total / (len(masks) * p)).astype(np.float32)


def rise(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    samples: int = 500,
    cells: int = 8,
    p: float = 0.5,
    seed: int | None = 0,
) -> Explanation:
    """RISE (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421). Forward passes only.

    Each pixel's saliency is the target probability averaged over ``samples`` random masks
    (``rise_masks``) weighted by
    the mask's value there, divided by the keep probability ``p``.

    Returns:
        Maps [R, H, W].
    """
    _positive("samples", samples)
    prep = prepare(session, x, target)
    drawn = rise_masks(samples, prep.x.shape[2:], cells=cells, p=p, seed=seed)
    return finish("rise", rise_from_masks(session, prep, drawn, p), prep, session)
