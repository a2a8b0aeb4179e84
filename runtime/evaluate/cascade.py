"""The model-randomisation sanity check over the cascade (Adebayo et al. 2018).

Re-initialise the model's parameterised layers from the logits down (:mod:`gradtap.runtime.evaluate.randomize`),
recompute every method's maps for the same images and targets on each randomised copy, and compare
them with the original maps: Spearman rank correlation of |map| (and of the signed map) and SSIM of
the maps scaled to [0, 1] by their maximum |value|. A method whose maps stay similar while the
weights that produced the prediction are gone does not explain the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate import randomize as sanity
from gradtap.runtime.evaluate.maps import MapSettings, compute_maps
from gradtap.runtime.evaluate.metrics import spearman, ssim
from gradtap.runtime.session import ExplainSession

Array = npt.NDArray[np.float32]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SanityCurve:
    """One method's similarity to its original maps along the cascade (means over images).

    Attributes:
        method: the method name.
        depth: per step, how many layers are re-initialised (from the top).
        layers: per step, the deepest re-initialised layer's node name.
        spearman: per step, mean Spearman correlation of |map| (NaN where undefined for all).
        spearman_signed: per step, mean Spearman correlation of the signed maps.
        ssim: per step, mean SSIM of the maps scaled by their maximum |value|.
        undefined: per step, images whose Spearman is undefined (a constant map).
    """

    method: str
    depth: tuple[int, ...]
    layers: tuple[str, ...]
    spearman: tuple[float, ...]
    spearman_signed: tuple[float, ...]
    ssim: tuple[float, ...]
    undefined: tuple[int, ...]


def cascade_depths(n_layers: int, steps: int) -> list[int]:
    """Cascade depths to evaluate: all ``1..n_layers`` (``steps`` 0), else ``steps`` evenly
    spaced ones that always include the top layer alone and every layer."""
    if n_layers < 1:
        raise OptionError(f"the cascade needs at least one layer, got {n_layers}")
    if steps < 0:
        raise OptionError(f"sanity steps must be >= 0, got {steps}")
    if steps == 0 or steps >= n_layers:
        return list(range(1, n_layers + 1))
    if steps == 1:
        return [n_layers]
    return sorted({int(round(v)) for v in np.linspace(1, n_layers, steps)})


def _scaled(m: Array) -> npt.NDArray[np.float64]:
    peak = float(np.abs(m).max())
    return np.abs(m).astype(np.float64) / peak if peak > 0 else np.zeros(m.shape)


def compare(original: Array, randomised: Array) -> tuple[float, float, float]:
    """(Spearman of |map|, Spearman of the signed maps, SSIM) of two [H, W] maps."""
    rho = spearman(original, randomised, absolute=True)
    signed = spearman(original, randomised)
    side = min(original.shape)
    win = min(7, side if side % 2 else side - 1)
    s = ssim(_scaled(original), _scaled(randomised), data_range=1.0, win_size=win)
    return rho, signed, s


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def sanity_check(
    session: ExplainSession,
    x: Array,
    targets: npt.NDArray[np.int64],
    methods: Sequence[str],
    settings: MapSettings,
    *,
    steps: int = 0,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[SanityCurve]:
    """Cascade curves of ``methods`` for images ``x`` [N, 3, H, W] explained for ``targets``.

    Args:
        steps: cascade depths to evaluate (0 = every layer; see ``cascade_depths``).
        seed: seed of the re-initialisation.
        progress: called as ``progress("sanity", done, total)`` after each depth.
    """
    model = session.model_proto()
    layers = sanity.parameterised_layers(model)
    depths = cascade_depths(len(layers), steps)
    original = {m: compute_maps(session, m, x, targets, settings) for m in methods}
    scores: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in methods}
    providers = list(dict.fromkeys([session.provider, "CPUExecutionProvider"]))
    for done, k in enumerate(depths, start=1):
        copy = sanity.randomize_layers(model, layers[:k], seed=seed)
        randomised = ExplainSession(copy, providers=providers, batch_size=session.batch_size)
        for m in methods:
            maps = compute_maps(randomised, m, x, targets, settings)
            triples = [compare(a, b) for a, b in zip(original[m], maps, strict=True)]
            undefined = sum(math.isnan(t[0]) for t in triples)
            rho, rho_signed, ssim_ = (_mean([t[i] for t in triples]) for i in range(3))
            scores[m].append((rho, rho_signed, ssim_, undefined))
        if progress is not None:
            progress("sanity", done, len(depths))
    names = tuple(layers[k - 1].node for k in depths)
    return [
        SanityCurve(
            method=m,
            depth=tuple(depths),
            layers=names,
            spearman=tuple(s[0] for s in scores[m]),
            spearman_signed=tuple(s[1] for s in scores[m]),
            ssim=tuple(s[2] for s in scores[m]),
            undefined=tuple(int(s[3]) for s in scores[m]),
        )
        for m in methods
    ]
