"""One [H, W] map per image and method, at input resolution, for the evaluation metrics.

Colour attributions (guided backprop, deconvnet, guided Grad-CAM) are reduced by max |value| over
channels, the CAM family is upsampled bilinearly from the tap, and the other maps are kept as the
methods return them (Integrated Gradients and occlusion keep their sign). ``random`` is the
baseline: uniform noise seeded by the image's index, so it never depends on the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.evaluate.metrics import random_map
from gradtap.runtime.image.geometry import resize
from gradtap.runtime.methods.registry import METHODS, Method
from gradtap.runtime.present.postprocess import reduce_channels
from gradtap.runtime.session import ExplainSession

Array = npt.NDArray[np.float32]
RANDOM = "random"
MAP_METHODS: tuple[str, ...] = (*METHODS, RANDOM)


@dataclass(frozen=True)
class MapSettings:
    """Bounded settings of the sampling methods.

    Attributes:
        samples: SmoothGrad noise samples and Integrated Gradients quadrature points.
        occlusion_window: occluding square's side as a fraction of the input side.
        occlusion_stride: its stride as a fraction of the input side.
        seed: seed of SmoothGrad's noise and of the random baseline.
    """

    samples: int = 16
    occlusion_window: float = 1 / 8
    occlusion_stride: float = 1 / 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 1:
            raise OptionError(f"samples must be an int >= 1, got {self.samples!r}")
        for name in ("occlusion_window", "occlusion_stride"):
            if not 0 < getattr(self, name) <= 1:
                raise OptionError(f"{name} must lie in (0, 1], got {getattr(self, name)}")


def not_applicable(session: ExplainSession, method: str) -> str | None:
    """Why ``method`` cannot run on this model, or ``None`` when it can."""
    if method not in MAP_METHODS:
        raise OptionError(f"unknown method {method!r}; valid: {list(MAP_METHODS)}")
    if method == RANDOM:
        return None
    record = METHODS[method]
    rule = record.rectifier
    if rule is not None and rule not in session.info.relu_rules:
        return f"model {session.info.name!r} has no {rule!r} rectifier rule (no relu_rule input)"
    try:
        if record.needs_tap:
            tap = session.info.tap(None)
    except ModelError as err:
        return str(err)
    if record.needs_bias and not session.bias_outputs:
        return f"model {session.info.name!r} has no bias_grad outputs (augment --fullgrad)"
    if record.needs_head and tap not in session.info.cam_taps:
        return (
            f"model {session.info.name!r} has no global-average-pool -> linear head after {tap!r}"
        )
    return None


def _options(method: Method, size: tuple[int, int], settings: MapSettings) -> dict[str, object]:
    """The bounded settings, under the option names the method takes."""
    side = min(size)
    candidates: dict[str, object] = {
        "samples": settings.samples,
        "steps": settings.samples,
        "seed": settings.seed,
        "window": max(1, round(side * settings.occlusion_window)),
        "stride": max(1, round(side * settings.occlusion_stride)),
    }
    return method.accepted(candidates)


def _to_map(raw: Array, size: tuple[int, int]) -> Array:
    flat = reduce_channels(raw)
    return flat if flat.shape == size else resize(flat, size)


def compute_maps(
    session: ExplainSession,
    method: str,
    x: Array,
    targets: npt.NDArray[np.int64],
    settings: MapSettings,
    *,
    index: npt.NDArray[np.int64] | None = None,
) -> Array:
    """Maps [N, H, W] of ``method`` for images ``x`` [N, 3, H, W] and their ``targets``.

    Images that share a target run as one batch. ``index`` numbers the images for the random
    baseline's seeds (default ``0..N-1``).
    """
    n, size = len(x), tuple(x.shape[2:])
    out = np.zeros((n, *size), np.float32)
    if method == RANDOM:
        ids = np.arange(n) if index is None else index
        for i, k in enumerate(ids):
            out[i] = random_map(size, seed=settings.seed * 1_000_003 + int(k))
        return out
    func = METHODS[method]
    options = _options(func, size, settings)
    for cls in np.unique(targets):
        rows = np.flatnonzero(targets == cls)
        expl = func(session, x[rows], int(cls), **options)
        for r, raw in zip(rows, expl.maps, strict=True):
            out[r] = _to_map(raw, size)
    return out
