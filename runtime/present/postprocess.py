"""Presenting raw maps: channel reduction, percentile normalisation, back to the original image."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import Geometry, resize, to_original

Array = npt.NDArray[np.float32]


def normalize(values: Array, *, outlier_perc: float = 2.0, signed: bool = False) -> Array:
    """Scale a map by its ``100 - outlier_perc`` percentile of |value| and clip.

    Args:
        values: any array (a map, or a colour gradient).
        outlier_perc: percentage of the largest magnitudes clipped (2 as in captum).
        signed: keep the sign and return [-1, 1]; otherwise use |value| and return [0, 1].

    Returns:
        float32 array of the same shape; all zeros for an all-zero input.
    """
    if not 0 <= outlier_perc < 100:
        raise OptionError(f"outlier_perc must lie in [0, 100), got {outlier_perc}")
    arr = np.asarray(values, dtype=np.float32)
    _finite(arr)
    mags = np.abs(arr)
    scale = float(np.percentile(mags, 100 - outlier_perc)) if arr.size else 0.0
    if scale <= 0:
        scale = float(mags.max()) if arr.size else 0.0
    if scale <= 0:
        return np.zeros_like(arr)
    out = (arr if signed else mags) / scale
    return np.clip(out, -1.0 if signed else 0.0, 1.0).astype(np.float32)


def minmax(values: Array) -> Array:
    """Scale to [0, 1] by min and max (zeros for a constant input)."""
    arr = np.asarray(values, dtype=np.float32)
    _finite(arr)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def reduce_channels(m: Array) -> Array:
    """A [3, H, W] colour attribution to an [H, W] map (max |value| over channels); 2-D as is."""
    arr = np.asarray(m, dtype=np.float32)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[0] == 3:
        return np.abs(arr).max(axis=0)
    raise OptionError(f"expected an [H, W] map or a [3, H, W] attribution, got {arr.shape}")


def gradient_image(grad: Array, *, spread: float = 0.15) -> Array:
    """A [3, H, W] signed gradient as an H x W x 3 image in [0, 1], zero at grey.

    Centres the gradient, divides by its standard deviation and maps ``z`` to
    ``0.5 + spread * z``, clipped: the usual picture of guided backprop and deconvnet.
    """
    arr = np.asarray(grad, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise OptionError(f"expected a [3, H, W] gradient, got {arr.shape}")
    _finite(arr)
    std = float(arr.std())
    z = (arr - arr.mean()) / std if std > 0 else np.zeros_like(arr)
    return np.clip(0.5 + spread * z, 0.0, 1.0).transpose(1, 2, 0).astype(np.float32)


def heatmap(
    m: Array,
    geometry: Geometry | None = None,
    *,
    outlier_perc: float = 2.0,
    size: tuple[int, int] | None = None,
) -> Array:
    """A raw map ([h, w] or [3, H, W]) as an [H, W] heat map in [0, 1] for display.

    Channels are reduced (max |value|), the map normalised by percentile, then mapped onto the
    original image with ``geometry`` (crop-aware), or resized to ``size``, or left as is.
    """
    m01 = normalize(reduce_channels(m), outlier_perc=outlier_perc)
    if geometry is not None:
        return np.clip(to_original(m01, geometry), 0.0, 1.0)
    if size is not None:
        return np.clip(resize(m01, size), 0.0, 1.0)
    return m01


def _finite(arr: Array) -> None:
    if not np.isfinite(arr).all():
        raise OptionError("map contains NaN or Inf")
