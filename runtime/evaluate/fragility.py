"""Fragility of explanations (Ghorbani et al. 2019, https://arxiv.org/abs/1710.10547), no torch.

How much of a map's top-k pixels survive a perturbation of the image that is too small to
change the predicted class? The score is the *top-k intersection*: the share of the original
map's k largest pixels that are still among the k largest of the perturbed image's map (1: the
same pixels, about k / (H * W): unrelated maps). Two perturbations, reported against ``eps``:

- **random**: uniform noise in the L-inf ball of radius ``eps`` (pixels in [0, 1]), clipped to
  [0, 1], redrawn (at most ``tries`` times) until the predicted class is unchanged;
- **adversarial** (gradient maps: ``saliency`` and ``guided_backprop``): Ghorbani et al.'s
  *top-k attack*, iterative sign steps that lower the map's mass on the original top-k pixels,
  projected to the ball and [0, 1], each step kept only if the predicted class is unchanged.
  The objective is ``D(x) = sum over the original top-k pixels p, channels c of |g_c(x)_p|``
  (the channel sum of |gradient| stands in for the map's channel max). Its gradient is
  ``H u`` with ``u = sign(g) * topk_mask`` and H the Hessian of the explained logit. A ReLU
  network is piecewise linear, so H is zero almost everywhere; Ghorbani et al. replace ReLU by
  softplus to get a useful H. Here the surrogate is the **central difference of the graph's
  own gradients**, ``(g(x + h u) - g(x - h u)) / 2h`` with ``h = eps``: the change of the
  gradient over the attack's own radius, which sees the activation patterns that flip inside
  the ball (what the softplus smoothing stands for). Two extra gradient calls per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate.maps import RANDOM, MapSettings, compute_maps
from gradtap.runtime.session import ExplainSession

Array = npt.NDArray[np.float32]
ADVERSARIAL_METHODS = {"saliency": "plain", "guided_backprop": "guided"}
"""Methods the top-k attack targets, with the rectifier rule of their gradient."""
DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def topk_intersection(a: npt.ArrayLike, b: npt.ArrayLike, k: int) -> float:
    """Share of the ``k`` largest pixels of ``a`` that are among the ``k`` largest of ``b``.

    Ties are broken in raster order (stable sort), the same for both maps.
    """
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise OptionError(f"maps must share a shape, got {np.shape(a)} and {np.shape(b)}")
    if not 1 <= k <= x.size:
        raise OptionError(f"k must be in 1..{x.size}, got {k}")
    top_a = np.argsort(-x, kind="stable")[:k]
    top_b = np.argsort(-y, kind="stable")[:k]
    return len(np.intersect1d(top_a, top_b)) / k


@dataclass(frozen=True)
class FragilityCurve:
    """One method and perturbation: mean top-k intersection per ``eps``.

    Attributes:
        method: map method.
        kind: ``"random"`` or ``"adversarial"``.
        eps: [E] L-inf radii (pixels in [0, 1]).
        intersection: [E] mean top-k intersection over the images.
        kept: [E] share of images whose perturbation kept the predicted class (the others
            are scored as unperturbed: intersection 1).
    """

    method: str
    kind: str
    eps: tuple[float, ...]
    intersection: tuple[float, ...]
    kept: tuple[float, ...]


def _onehot(t: npt.NDArray[np.int64], classes: int) -> Array:
    return np.eye(classes, dtype=np.float32)[t]


def _random_perturbed(
    session: ExplainSession, x: Array, eps: float, rng: np.random.Generator, tries: int
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """Per image, a random point of the ball that keeps the predicted class (if found)."""
    pred = session.logits(x).argmax(1)
    out, kept = x.copy(), np.zeros(len(x), bool)
    for _ in range(tries):
        todo = np.flatnonzero(~kept)
        if not len(todo):
            break
        noise = rng.uniform(-eps, eps, x[todo].shape).astype(np.float32)
        cand = np.clip(x[todo] + noise, 0.0, 1.0)
        ok = session.logits(cand).argmax(1) == pred[todo]
        out[todo[ok]], kept[todo[ok]] = cand[ok], True
    return out, kept


def _grad(session: ExplainSession, x: Array, seed: Array, rule: str) -> Array:
    return session.run(x, seed, relu_rule=rule).grad_input


def topk_attack(
    session: ExplainSession,
    x: Array,
    targets: npt.NDArray[np.int64],
    method: str,
    eps: float,
    *,
    k: int,
    iterations: int = 8,
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """Ghorbani et al.'s top-k attack on a gradient map (see the module docstring).

    Returns:
        The attacked images (the unperturbed image where no step kept the class) and whether
        each image moved.
    """
    rule = ADVERSARIAL_METHODS[method]
    seed = _onehot(targets, session.info.num_classes)
    pred = session.logits(x).argmax(1)
    g0 = np.abs(_grad(session, x, seed, rule)).max(axis=1)
    n, _, h, w = x.shape
    mask = np.zeros((n, h * w), np.float32)
    top = np.argsort(-g0.reshape(n, -1), axis=1, kind="stable")[:, :k]
    np.put_along_axis(mask, top, 1.0, axis=1)
    mask = mask.reshape(n, 1, h, w)
    step = 2.5 * eps / iterations
    adv, moved = x.copy(), np.zeros(n, bool)
    for _ in range(iterations):
        u = (np.sign(_grad(session, adv, seed, rule)) * mask).astype(np.float32)
        hvp = _grad(session, adv + eps * u, seed, rule) - _grad(session, adv - eps * u, seed, rule)
        cand = np.clip(adv - step * np.sign(hvp), x - eps, x + eps).clip(0.0, 1.0)
        ok = session.logits(cand).argmax(1) == pred
        adv[ok], moved = cand[ok], moved | ok
    return adv.astype(np.float32), moved


def fragility(
    session: ExplainSession,
    x: Array,
    targets: npt.NDArray[np.int64],
    methods: Sequence[str],
    *,
    eps: Sequence[float] = DEFAULT_EPS,
    k_fraction: float = 0.02,
    settings: MapSettings | None = None,
    iterations: int = 8,
    tries: int = 4,
    seed: int = 0,
) -> tuple[FragilityCurve, ...]:
    """Top-k intersection of every method's maps under random and adversarial perturbations.

    Args:
        session: the model.
        x: images [N, 3, H, W] in [0, 1].
        targets: explained class per image.
        methods: map methods (``random`` is skipped); the adversarial curve is computed for
            those in ``ADVERSARIAL_METHODS``.
        eps: L-inf radii.
        k_fraction: k as a share of the pixels (Ghorbani et al.: 1000 of 224 x 224, 2 %).
        settings: sampling-method settings.
        iterations: attack steps.
        tries: random draws per image to find a class-preserving one.
        seed: seed of the random perturbations.
    """
    if not 0.0 < k_fraction <= 1.0:
        raise OptionError(f"k_fraction must be in (0, 1], got {k_fraction}")
    if not eps or min(eps) <= 0 or max(eps) >= 1:
        raise OptionError(f"eps must be radii in (0, 1), got {list(eps)}")
    settings = settings or MapSettings()
    k = max(1, round(k_fraction * x.shape[2] * x.shape[3]))
    methods = [m for m in methods if m != RANDOM]
    rng = np.random.default_rng(seed)
    base = {m: compute_maps(session, m, x, targets, settings) for m in methods}
    rows: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def score(m: str, kind: str, xp: Array, kept: npt.NDArray[np.bool_]) -> None:
        maps = compute_maps(session, m, xp, targets, settings)
        inter = [topk_intersection(a, b, k) for a, b in zip(base[m], maps, strict=True)]
        got = rows.setdefault((m, kind), ([], []))
        got[0].append(float(np.mean(inter)))
        got[1].append(float(np.mean(kept)))

    for e in eps:
        noisy, kept = _random_perturbed(session, x, e, rng, tries)
        for m in methods:
            score(m, "random", noisy, kept)
        for m in methods:
            if ADVERSARIAL_METHODS.get(m) in session.info.relu_rules:
                adv, moved = topk_attack(session, x, targets, m, e, k=k, iterations=iterations)
                score(m, "adversarial", adv, moved)
    return tuple(
        FragilityCurve(m, kind, tuple(float(e) for e in eps), tuple(v[0]), tuple(v[1]))
        for (m, kind), v in rows.items()
    )
