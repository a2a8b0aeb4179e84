"""Evaluate explanation methods against ground truth and against the model itself (no torch).

For every map method on an :class:`~gradtap.runtime.evaluate.data.EvalSet`, explained for the
ground-truth class:

- pointing game and energy-based pointing game against the ground-truth masks;
- deletion and insertion AUC (Petsiuk et al. 2018) of the target's softmax probability, deletion
  to a fixed substrate (black by default), insertion from the Gaussian-blurred image, a fixed
  number of pixels per stage, trapezoid AUC; the ``random`` map is the baseline to beat;
- GrabCut localisation (seeded from the map) box IoU against the ground-truth boxes;
- the model-randomisation sanity check (:mod:`gradtap.runtime.evaluate.cascade`).

Example::

    session = ExplainSession("models/smallcnn.gradtap.onnx")
    data = synthetic_set(session.info, 50)
    result = evaluate(session, data, EvalConfig(methods=("saliency", "gradcam", "random")))
    print(result.to_markdown())
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate import metrics
from gradtap.runtime.evaluate.cascade import Progress, SanityCurve, sanity_check
from gradtap.runtime.evaluate.checks import ChecksConfig, run_checks
from gradtap.runtime.evaluate.data import EvalSet
from gradtap.runtime.evaluate.maps import (
    MAP_METHODS,
    RANDOM,
    MapSettings,
    compute_maps,
    not_applicable,
)
from gradtap.runtime.evaluate.result import EvalResult, Examples, MethodScores
from gradtap.runtime.methods.localize import grabcut
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import softmax

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EvalConfig:
    """What to measure, and how much work to spend on it.

    Attributes:
        methods: map methods (``MAP_METHODS``; ``"random"`` is the baseline).
        curve_steps: stages of the deletion and insertion curves; each stage moves
            ``ceil(H * W / curve_steps)`` pixels.
        substrate: what deleted pixels become: ``"zeros"`` (black), ``"mean"``, ``"blur"``.
        blur_sigma: Gaussian blur (pixels) of the insertion start; ``None``: input side / 32.
        tolerance: pointing-game tolerance in pixels (0: the maximum must be on the object).
        wide_tolerance: the second pointing game's tolerance, reported beside it; default the
            standard 15 px of Zhang et al., so the numbers compare with the literature.
        fill_holes: the pointing games hit the object's filled outline (its mask with the
            holes filled, ``metrics.fill_holes``): a peak in a ring's hole points at the ring.
        maps: settings of the sampling methods.
        sanity: run the model-randomisation sanity check.
        sanity_images: images (the first ones of the set) used by the sanity check.
        sanity_steps: cascade depths evaluated (0 = every layer).
        seed: seed of the re-initialisation.
        examples: images whose maps are kept for the example figure.
        checks: the trust checks (input invariance, fragility, the peers' metrics) on the
            first images; ``ChecksConfig(images=0)`` turns them off.
    """

    methods: tuple[str, ...] = MAP_METHODS
    curve_steps: int = 32
    substrate: str = "zeros"
    blur_sigma: float | None = None
    tolerance: float = 0.0
    wide_tolerance: float = metrics.ZHANG_TOLERANCE
    fill_holes: bool = True
    maps: MapSettings = field(default_factory=MapSettings)
    sanity: bool = True
    sanity_images: int = 8
    sanity_steps: int = 8
    seed: int = 0
    examples: int = 3
    checks: ChecksConfig = field(default_factory=ChecksConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in MAP_METHODS]
        if unknown or not self.methods:
            raise OptionError(f"unknown methods {unknown}; valid: {list(MAP_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise OptionError(f"methods listed twice: {list(self.methods)}")
        for name in ("curve_steps", "sanity_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OptionError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.substrate not in metrics.SUBSTRATES:
            raise OptionError(f"substrate {self.substrate!r}; valid: {sorted(metrics.SUBSTRATES)}")
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise OptionError(f"blur_sigma must be > 0, got {self.blur_sigma}")
        if min(self.tolerance, self.wide_tolerance, self.sanity_steps, self.examples) < 0:
            raise OptionError("tolerances, sanity_steps and examples must be >= 0")


def pick_targets(
    logits: Array, classes: Sequence[tuple[int, ...]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per image, the most probable ground-truth class, and whether the top-1 class is one."""
    targets = np.array([max(c, key=lambda k: logits[i, k]) for i, c in enumerate(classes)])
    correct = np.array([int(np.argmax(logits[i])) in c for i, c in enumerate(classes)])
    return targets.astype(np.int64), correct.astype(bool)


def _grabcut_iou(image: Array, m: Array, box: npt.NDArray[np.int64]) -> float:
    try:
        found = grabcut(image, m).box
    except OptionError:  # a constant map seeds nothing
        return 0.0
    return 0.0 if found is None else metrics.box_iou(found, box)


@dataclass(frozen=True)
class _Job:
    """What scoring one method's maps needs."""

    session: ExplainSession
    data: EvalSet
    x: Array
    targets: npt.NDArray[np.int64]
    config: EvalConfig
    step: int
    sigma: float
    progress: Progress | None

    def probs(self, batch: Array) -> Array:
        return softmax(self.session.forward(batch))


def _image(job: _Job, i: int, m: Array) -> tuple[tuple[float, ...], metrics.Curve, metrics.Curve]:
    """The six scores of map ``m`` of image ``i``, and its deletion and insertion curves."""
    t, mask, c = int(job.targets[i]), job.data.masks[i], job.config
    dele = metrics.deletion(
        job.probs, job.x[i], m, t, step=job.step, substrate=c.substrate, batch_size=64
    )
    ins = metrics.insertion(
        job.probs, job.x[i], m, t, step=job.step, blur_sigma=job.sigma, batch_size=64
    )
    hit = metrics.fill_holes(mask) if c.fill_holes else mask
    point = metrics.pointing_game(m, hit, tolerance=c.tolerance)
    wide = metrics.pointing_game(m, hit, tolerance=c.wide_tolerance)
    energy = metrics.energy_pointing_game(m, mask)
    iou = _grabcut_iou(job.data.images[i], m, job.data.boxes[i])
    return (point, wide, energy, dele.auc, ins.auc, iou), dele, ins


def _score(job: _Job, method: str, maps: Array, seconds: float) -> MethodScores:
    rows, deletions, insertions = [], [], []
    for i, m in enumerate(maps):
        row, dele, ins = _image(job, i, m)
        rows.append(row)
        deletions.append(dele.scores)
        insertions.append(ins.scores)
        if job.progress is not None:
            job.progress(method, i + 1, len(maps))
    cols = np.array(rows, dtype=np.float64).T
    return MethodScores(
        method, *cols, seconds, dele.fractions, np.mean(deletions, 0), np.mean(insertions, 0)
    )


def evaluate(
    session: ExplainSession,
    data: EvalSet,
    config: EvalConfig | None = None,
    *,
    progress: Progress | None = None,
) -> EvalResult:
    """Score every method of ``config`` on ``data`` with the model of ``session``.

    Args:
        session: the augmented model.
        data: images at the model's input size with ground truth (see :mod:`gradtap.runtime.evaluate.data`).
        config: what to measure; default :class:`EvalConfig`.
        progress: called as ``progress(stage, done, total)``; stages are method names (per
            image) and ``"sanity"`` (per cascade depth).

    Returns:
        The :class:`EvalResult`. Methods that do not apply to the model (CAM without a global
        average pool -> linear head, tap methods without a tap) are listed in ``skipped``.
    """
    config = config or EvalConfig()
    start = time.perf_counter()
    x = session.check_input(data.batch)
    h, w = x.shape[2:]
    targets, correct = pick_targets(session.logits(x), data.classes)
    skipped = {m: why for m in config.methods if (why := not_applicable(session, m))}
    methods = [m for m in config.methods if m not in skipped]
    step = math.ceil(h * w / config.curve_steps)
    sigma = config.blur_sigma or min(h, w) / 32
    job = _Job(session, data, x, targets, config, step, sigma, progress)
    scores, kept = [], {}
    for m in methods:
        t0 = time.perf_counter()
        maps = compute_maps(session, m, x, targets, config.maps)
        seconds = time.perf_counter() - t0
        logger.info("%s: %.1f s for %d maps", m, seconds, len(maps))
        scores.append(_score(job, m, maps, seconds))
        kept[m] = maps[: config.examples]
    curves: list[SanityCurve] = []
    checked = [m for m in methods if m != RANDOM]
    if config.sanity and checked:
        k = min(config.sanity_images, len(x))
        curves = sanity_check(
            session,
            x[:k],
            targets[:k],
            checked,
            config.maps,
            steps=config.sanity_steps,
            seed=config.seed,
            progress=progress,
        )
    checks = run_checks(session, x, targets, methods, config.checks, config.maps)
    n_ex = min(config.examples, len(x))
    return EvalResult(
        model=session.info.name,
        weights=session.info.weights,
        dataset=data.name,
        mask_kind=data.mask_kind,
        targets=targets,
        correct=correct,
        labels=session.info.labels,
        config=config,
        step=step,
        blur_sigma=float(sigma),
        scores=tuple(scores),
        sanity=tuple(curves),
        skipped=skipped,
        examples=Examples(data.images[:n_ex], data.boxes[:n_ex], kept),
        seconds=time.perf_counter() - start,
        checks=checks,
    )
