"""The metrics other explanation libraries ship, computed on gradtap's maps (numpy only).

- **ROAD** (Rong et al. 2022, https://arxiv.org/abs/2202.00449), as pytorch-grad-cam computes
  it: the map's most (MoRF) or least (LeRF) relevant pixels above a percentile are replaced by
  *noisy linear imputation* (each removed pixel the weighted mean of its 8 neighbours, solved
  as one linear system, plus Gaussian noise), and the change of the target score is averaged
  over the percentiles 10..90; the combined score is ``(LeRF - MoRF) / 2`` (higher is better).
  The system is solved here by conjugate gradients on the 8-neighbour stencil instead of a
  sparse direct solver (the same solution to ~1e-6; no scipy needed).
- **Average drop and increase in confidence** (Chattopadhyay et al. 2018, Grad-CAM++,
  https://arxiv.org/abs/1710.11063): the image multiplied by the map (scaled to [0, 1]) is
  classified again; drop ``max(0, Y - O) / Y``, increase ``O > Y`` with Y, O the target's
  probability before and after. pytorch-grad-cam reports the drop without dividing by Y.
- **Infidelity** (Yeh et al. 2019, https://arxiv.org/abs/1901.09392), as captum computes it:
  ``E[(I . map - (f(x) - f(x - I)))^2]`` over Gaussian perturbations I (one value per pixel,
  the same on the three channels), with captum's ``normalize=True`` optimal rescaling of the
  map, so the map's arbitrary scale does not matter (lower is better).
- **Max-sensitivity** (Yeh et al. 2019), as captum's ``sensitivity_max``: the largest
  ``||map(x + d) - map(x)|| / ||map(x)||`` (Frobenius norms) over uniform perturbations d in
  the L-inf ball of radius ``radius`` (lower is better).
- **Region perturbation** (Samek et al. 2017, https://arxiv.org/abs/1509.06321), as Quantus'
  ``RegionPerturbation``: the deletion curve of ``region_map`` (each pixel holds the summed
  relevance of its square patch), ``patch * patch`` pixels per stage, deletes whole patches in
  the order of their relevance.

Score functions: ``score_fn(images [N, 3, H, W]) -> [N]`` (the target's probability or logit),
``explain_fn(images) -> maps [N, H, W]``; maps are [H, W] at image resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError

Array = npt.NDArray[np.float32]
ScoreFn = Callable[[Array], npt.ArrayLike]
ExplainFn = Callable[[Array], npt.ArrayLike]
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01
"""pytorch-grad-cam's imputation noise; in its normalised-input units, so gradtap, which
imputes pixels in [0, 1], uses ``ROAD_NOISE * std`` of the model's normalisation."""
_NEIGHBOURS = (  # (dy, dx), weight: pytorch-grad-cam / Rong et al.'s imputation stencil
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[..., y, x] = a[..., y + dy, x + dx]``, zero outside the image."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = slice(max(0, dy), h + min(0, dy)), slice(max(0, -dy), h + min(0, -dy))
    xs, xd = slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w + min(0, -dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def linear_impute(
    image: npt.ArrayLike, keep: npt.ArrayLike, *, tol: float = 1e-10, max_iter: int = 5000
) -> npt.NDArray[np.float64]:
    """Fill the pixels where ``keep`` is False with the noise-free linear imputation.

    Each filled pixel equals the weighted mean of its in-image neighbours (weights 1/6 for the
    4 direct and 1/12 for the 4 diagonal ones), known or filled: one symmetric positive
    definite system for all filled pixels, solved by conjugate gradients per channel.

    Args:
        image: [C, H, W].
        keep: bool [H, W], True where the pixel is kept.
    """
    img = np.asarray(image, np.float64)
    known = np.asarray(keep, bool)
    if known.shape != img.shape[1:]:
        raise OptionError(f"keep mask {known.shape} does not match the image {img.shape}")
    unknown = (~known).astype(np.float64)
    ones = np.ones(known.shape)
    weight_sum = sum(w * _shift(ones, dy, dx) for (dy, dx), w in _NEIGHBOURS)
    rhs = sum(w * _shift(img * known, dy, dx) for (dy, dx), w in _NEIGHBOURS) * unknown

    def apply(u: np.ndarray) -> np.ndarray:  # (diag(weights) - W_uu) u on the unknown pixels
        near = sum(w * _shift(u, dy, dx) for (dy, dx), w in _NEIGHBOURS)
        return (weight_sum * u - near) * unknown

    u = np.zeros_like(img)
    r = rhs - apply(u)
    p, rr = r.copy(), (r * r).sum(axis=(1, 2))
    scale = np.maximum((rhs * rhs).sum(axis=(1, 2)), 1e-300)
    for _ in range(max_iter):
        if (rr <= tol * tol * scale).all():
            break
        ap = apply(p)
        alpha = rr / np.maximum((p * ap).sum(axis=(1, 2)), 1e-300)
        u += alpha[:, None, None] * p
        r -= alpha[:, None, None] * ap
        rr_new = (r * r).sum(axis=(1, 2))
        p = r + (rr_new / np.maximum(rr, 1e-300))[:, None, None] * p
        rr = rr_new
    return np.where(known, img, u)


def _unit(m: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map scaled to [0, 1] by min-max (a constant map becomes zeros)."""
    a = np.asarray(m, np.float64)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def road_images(
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    *,
    most_relevant_first: bool,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = ROAD_NOISE,
    rng: np.random.Generator | None = None,
) -> Array:
    """The imputed images [P, C, H, W] of ROAD MoRF or LeRF at each percentile.

    As pytorch-grad-cam: the map is taken as given (it expects [0, 1]); MoRF imputes the pixels
    whose value is >= the percentile of the map, LeRF those of ``1 - map``.
    """
    img = np.asarray(image, np.float64)
    m = np.asarray(saliency, np.float64)
    m = m if most_relevant_first else 1.0 - m
    rng = rng or np.random.default_rng(0)
    out = []
    for p in percentiles:
        keep = m < np.percentile(m, p)
        filled = linear_impute(img, keep)
        if noise:
            filled = np.where(keep, filled, filled + noise * rng.standard_normal(img.shape))
        out.append(filled)
    return np.asarray(out, np.float32)


def road(
    score_fn: ScoreFn,
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    *,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    noise: float = ROAD_NOISE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """ROAD of one map: ``(combined, MoRF, LeRF)`` mean score changes over the percentiles.

    The map is scaled to [0, 1] first (min-max). MoRF should fall fast (negative), LeRF stay
    (near 0); combined ``(LeRF - MoRF) / 2``, higher is better.
    """
    img = np.asarray(image, np.float32)
    m = _unit(saliency)
    rng = np.random.default_rng(seed)
    base = float(np.asarray(score_fn(img[None]))[0])
    morf = road_images(
        img, m, most_relevant_first=True, percentiles=percentiles, noise=noise, rng=rng
    )
    lerf = road_images(
        img, m, most_relevant_first=False, percentiles=percentiles, noise=noise, rng=rng
    )
    s_morf = float(np.mean(np.asarray(score_fn(morf)) - base))
    s_lerf = float(np.mean(np.asarray(score_fn(lerf)) - base))
    return (s_lerf - s_morf) / 2, s_morf, s_lerf


def confidence_change(
    score_fn: ScoreFn, image: npt.ArrayLike, saliency: npt.ArrayLike
) -> tuple[float, float]:
    """``(average drop, increase)`` terms of one map: ``max(0, Y - O) / Y`` and ``O > Y``.

    ``O`` is the target probability of the image multiplied by the map scaled to [0, 1]
    (min-max), ``Y`` that of the image; average both over images for the dataset numbers.
    """
    img = np.asarray(image, np.float32)
    masked = (img * _unit(saliency)[None]).astype(np.float32)
    y, o = (float(v) for v in np.asarray(score_fn(np.stack([img, masked]))))
    return (max(0.0, y - o) / y if y > 0 else 0.0), float(o > y)


def infidelity(
    score_fn: ScoreFn,
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    *,
    noise: npt.ArrayLike | None = None,
    samples: int = 16,
    sigma: float = 0.05,
    seed: int = 0,
) -> float:
    """Infidelity of one map, captum's ``normalize=True`` definition.

    Args:
        score_fn: images -> target scores.
        image: [C, H, W].
        saliency: [H, W].
        noise: perturbations I [S, H, W] (one value per pixel, all channels); default
            ``samples`` Gaussian ones of std ``sigma``.
    """
    img = np.asarray(image, np.float32)
    m = np.asarray(saliency, np.float64)
    if noise is None:
        noise = np.random.default_rng(seed).normal(0.0, sigma, (samples, *m.shape))
    pert = np.asarray(noise, np.float32)
    scores = np.asarray(score_fn(np.concatenate([img[None], img[None] - pert[:, None]])), float)
    b = scores[0] - scores[1:]
    a = (pert.astype(np.float64) * m).sum(axis=(1, 2))
    aa, ab, bb = (a * a).sum(), (a * b).sum(), (b * b).sum()
    beta = ab / aa if aa != 0 else 0.0
    return float((beta * beta * aa - 2 * beta * ab + bb) / len(a))


def max_sensitivity(
    explain_fn: ExplainFn,
    image: npt.ArrayLike,
    saliency: npt.ArrayLike,
    *,
    noise: npt.ArrayLike | None = None,
    samples: int = 8,
    radius: float = 0.02,
    seed: int = 0,
) -> float:
    """Max-sensitivity of one map, captum's ``sensitivity_max`` definition (Frobenius norm).

    Args:
        explain_fn: images [S, C, H, W] -> maps [S, H, W] (the method being scored).
        image: [C, H, W].
        saliency: the method's map of ``image`` [H, W].
        noise: perturbations d [S, C, H, W]; default ``samples`` uniform ones in
            [-radius, radius] (not clipped to valid pixels, as captum).
    """
    img = np.asarray(image, np.float32)
    m = np.asarray(saliency, np.float64)
    if noise is None:
        rng = np.random.default_rng(seed)
        noise = rng.uniform(-radius, radius, (samples, *img.shape))
    maps = np.asarray(explain_fn((img[None] + np.asarray(noise, np.float32)).astype(np.float32)))
    norm = np.linalg.norm(m)
    diffs = np.linalg.norm((maps - m).reshape(len(maps), -1), axis=1)
    return float(diffs.max() / (norm if norm > 0 else 1.0))


def region_map(saliency: npt.ArrayLike, patch: int) -> npt.NDArray[np.float64]:
    """Each pixel replaced by the sum of the map over its ``patch`` x ``patch`` grid cell.

    Deleting the pixels of this map in decreasing order, ``patch * patch`` per stage
    (``metrics.deletion(..., step=patch * patch)``), removes one whole cell per stage, most
    relevant first: Samek et al.'s region perturbation on a non-overlapping grid, as Quantus
    computes it. Cells at the right and bottom edges may be smaller than ``patch``.
    """
    m = np.asarray(saliency, np.float64)
    if m.ndim != 2 or patch < 1:
        raise OptionError(f"region_map needs a 2-D map and patch >= 1, got {m.shape}, {patch}")
    h, w = m.shape
    ch, cw = -(-h // patch), -(-w // patch)
    padded = np.zeros((ch * patch, cw * patch))
    padded[:h, :w] = m
    sums = padded.reshape(ch, patch, cw, patch).sum(axis=(1, 3))
    return np.repeat(np.repeat(sums, patch, axis=0), patch, axis=1)[:h, :w]
