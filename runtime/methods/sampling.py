"""Sampling attributions: SmoothGrad, Integrated Gradients and occlusion, batched with flat memory.

Samples go through onnxruntime in chunks of ``session.batch_size`` rows, so memory does not grow
with the number of samples, steps or windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.base import Explanation, finish, prepare
from gradtap.runtime.methods.gradient import saliency_map
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

Array = npt.NDArray[np.float32]
Baseline = str | float | Array

IG_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")
BASELINES = ("black", "white", "blur", "uniform")


def smoothgrad(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    samples: int = 25,
    noise: float = 0.15,
    squared: bool = False,
    seed: int | None = 0,
) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017, https://arxiv.org/abs/1706.03825).

    Averages |gradient| (or its square) over ``samples`` copies of the image with Gaussian noise
    of std ``noise * (max(x) - min(x))``, then takes the max over channels.

    Returns:
        Maps [R, H, W].
    """
    _positive("samples", samples)
    if not noise >= 0:
        raise OptionError(f"noise must be >= 0, got {noise}")
    prep = prepare(session, x, target)
    rng = np.random.default_rng(seed)
    sigma = noise * (prep.x.max(axis=(1, 2, 3)) - prep.x.min(axis=(1, 2, 3)))
    sigma = sigma.astype(np.float32)[:, None, None, None]

    def noisy(k0: int, k1: int) -> Array:
        return prep.x + sigma * rng.standard_normal((k1 - k0, *prep.x.shape), dtype=np.float32)

    reduce = np.square if squared else np.abs
    total = _accumulate(session, prep.seed, noisy, np.full(samples, 1.0 / samples), reduce)
    return finish("smoothgrad", saliency_map(total), prep, session)


def integrated_gradients(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    baseline: Baseline = "black",
    steps: int = 32,
    rule: str = "gausslegendre",
    seed: int | None = 0,
) -> Explanation:
    """Integrated Gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365).

    ``attr = (x - x0) * integral_0^1 dS(x0 + a (x - x0)) / dx da`` by a quadrature ``rule``.

    Args:
        baseline: ``"black"``, ``"white"``, ``"blur"`` (Gaussian blur of x), ``"uniform"`` noise,
            a pixel value, or an array broadcastable to x [N, 3, H, W] in [0, 1].
        steps: quadrature points. rule: one of ``IG_RULES``. seed: for the ``uniform`` baseline.

    Returns:
        Maps [R, H, W] (channel sums); ``extras``: ``attributions`` [R, 3, H, W],
        ``completeness_error`` [R] = sum(attr) - (S(x) - S(x0)) in logits, ``delta`` [R] =
        S(x) - S(x0).
    """
    _positive("steps", steps)
    prep = prepare(session, x, target)
    x0 = _baseline(baseline, prep.x, prep.rows.image_index, seed)
    alphas, weights = quadrature(rule, steps)
    diff = prep.x - x0

    def path(k0: int, k1: int) -> Array:
        return x0 + alphas[k0:k1, None, None, None, None] * diff

    attr = diff * _accumulate(session, prep.seed, path, weights)
    r, rows, t = len(prep.x), np.arange(len(prep.x)), prep.rows.target
    ends = session.logits(np.concatenate([prep.x, x0]))
    delta = ends[:r][rows, t] - ends[r:][rows, t]
    extras = {
        "attributions": attr,
        "completeness_error": attr.sum(axis=(1, 2, 3)) - delta,
        "delta": delta,
    }
    maps = attr.sum(axis=1)
    return finish("integrated_gradients", maps, prep, session, row_logits=ends[:r], extras=extras)


def occlusion(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    baseline: float = 0.0,
) -> Explanation:
    """Occlusion (Zeiler and Fergus 2014, https://arxiv.org/abs/1311.2901). Forward passes only.

    Slides a ``window`` (all channels set to ``baseline``) with ``stride``; each pixel gets the
    mean drop of the target logit over the windows covering it (0 where none does).

    Returns:
        Maps [R, H, W].
    """
    (wh, ww), (sh, sw) = _pair("window", window), _pair("stride", stride)
    prep = prepare(session, x, target)
    r, _, h, w = prep.x.shape
    if wh > h or ww > w:
        raise OptionError(f"window {(wh, ww)} larger than the input {(h, w)}")
    boxes = [(i, j) for i in range(0, h - wh + 1, sh) for j in range(0, w - ww + 1, sw)]
    logits0 = session.forward(prep.x)  # forward-only passes throughout: one summation order
    score = logits0[np.arange(r), prep.rows.target]
    total, count = np.zeros((r, h, w), np.float32), np.zeros((h, w), np.float32)
    for chunk in _chunks(len(boxes), max(1, session.batch_size // r)):
        xs = np.repeat(prep.x[None], len(chunk), axis=0)
        for n, b in enumerate(chunk):
            i, j = boxes[b]
            xs[n, :, :, i : i + wh, j : j + ww] = baseline
        logits = session.forward(xs.reshape(-1, *prep.x.shape[1:])).reshape(len(chunk), r, -1)
        for n, b in enumerate(chunk):
            i, j = boxes[b]
            total[:, i : i + wh, j : j + ww] += (score - logits[n, np.arange(r), prep.rows.target])[
                :, None, None
            ]
            count[i : i + wh, j : j + ww] += 1
    maps = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return finish("occlusion", maps, prep, session, row_logits=logits0)


MAX_GAUSS_LEGENDRE = 1024
# Samples and steps are run in chunks of the session's batch; their weights are kept whole.
MAX_SAMPLES = 100_000


def quadrature(rule: str, steps: int) -> tuple[Array, Array]:
    """Points in [0, 1] and weights summing to 1 for integrating over the path."""
    if rule == "gausslegendre":
        if steps > MAX_GAUSS_LEGENDRE:  # numpy builds a steps x steps matrix for the nodes
            raise OptionError(
                f"gausslegendre needs steps <= {MAX_GAUSS_LEGENDRE} (more adds no accuracy), got "
                f"{steps}; use rule=riemann_trapezoid for more steps"
            )
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (nodes + 1)).astype(np.float32), (0.5 * weights).astype(np.float32)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise OptionError("riemann_trapezoid needs steps >= 2")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, steps, dtype=np.float32), weights.astype(np.float32)
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if rule not in offsets:
        raise OptionError(f"integration rule {rule!r} unknown; valid: {list(IG_RULES)}")
    points = (np.arange(steps) + offsets[rule]) / steps
    return points.astype(np.float32), np.full(steps, 1.0 / steps, np.float32)


def _accumulate(
    session: ExplainSession,
    seed: Array,
    make: Callable[[int, int], Array],
    weights: npt.NDArray[np.floating],
    reduce: Callable[[Array], Array] | None = None,
) -> Array:
    """sum_k weights[k] * reduce(grad at make(...)[k]) over samples k, in bounded chunks."""
    r = len(seed)
    total: Array | None = None
    for chunk in _chunks(len(weights), max(1, session.batch_size // r)):
        xs = make(chunk[0], chunk[-1] + 1)
        grads = session.run(xs.reshape(-1, *xs.shape[2:]), np.tile(seed, (len(chunk), 1)))
        g = grads.grad_input.reshape(xs.shape)
        g = reduce(g) if reduce is not None else g
        part = np.tensordot(weights[chunk].astype(np.float32), g, axes=1)
        total = part if total is None else total + part
    assert total is not None
    return total


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def _baseline(
    baseline: Baseline, x: Array, image_index: npt.NDArray[np.int64], seed: int | None
) -> Array:
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise OptionError(f"baseline {baseline!r} unknown; valid: {list(BASELINES)} or array")
        if baseline == "uniform":
            return np.random.default_rng(seed).random(x.shape, dtype=np.float32)
        if baseline == "blur":
            blur = [cv2.GaussianBlur(im.transpose(1, 2, 0), (0, 0), 5.0) for im in x]
            return np.stack(blur).transpose(0, 3, 1, 2).copy()
        return np.full_like(x, 0.0 if baseline == "black" else 1.0)
    arr = np.asarray(baseline, dtype=np.float32)
    if arr.ndim == 4 and len(arr) == image_index.max() + 1 and len(arr) != len(x):
        arr = arr[image_index]  # one baseline per input image, repeated over its targets
    try:
        out = np.broadcast_to(arr, x.shape).astype(np.float32)
    except ValueError:
        raise OptionError(
            f"baseline of shape {arr.shape} does not broadcast to {x.shape}"
        ) from None
    if out.min() < 0 or out.max() > 1:
        raise OptionError("baseline pixels must lie in [0, 1]")
    return out


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise OptionError(f"{name} must be a positive int or (h, w), got {value!r}")
    return int(pair[0]), int(pair[1])


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be an int >= 1, got {value!r}")
    if value > MAX_SAMPLES:  # the per-sample weights alone would not fit in memory
        raise OptionError(f"{name} must be at most {MAX_SAMPLES}, got {value}")
