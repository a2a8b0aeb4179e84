"""What ``gradtap evaluate`` measured: per-method scores, the sanity curves, a few example maps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate.cascade import SanityCurve

if TYPE_CHECKING:
    from gradtap.runtime.evaluate.checks import Checks
    from gradtap.runtime.evaluate.run import EvalConfig

Array = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MethodScores:
    """One method's per-image scores and mean curves.

    Attributes:
        method: method name.
        pointing: [N] pointing game hits (tied maxima score their share of hits).
        pointing_wide: [N] the same with the wide (default 15 px) tolerance.
        energy: [N] share of positive map energy inside the mask.
        deletion: [N] deletion AUC (lower is better).
        insertion: [N] insertion AUC (higher is better).
        iou: [N] GrabCut box IoU (0 where GrabCut found nothing or the map was constant).
        seconds: time spent computing the maps, all images.
        fractions: [S] curve abscissae (share of pixels moved).
        deletion_curve: [S] mean deletion curve.
        insertion_curve: [S] mean insertion curve.
    """

    method: str
    pointing: Floats
    pointing_wide: Floats
    energy: Floats
    deletion: Floats
    insertion: Floats
    iou: Floats
    seconds: float
    fractions: Floats
    deletion_curve: Floats
    insertion_curve: Floats


@dataclass(frozen=True)
class Examples:
    """A few images with their ground truth and every method's maps, for the example figure."""

    images: Array
    boxes: npt.NDArray[np.int64]
    maps: Mapping[str, Array]


@dataclass(frozen=True)
class EvalResult:
    """Everything ``evaluate`` measured; ``to_markdown()`` gives the table."""

    model: str
    weights: str | None
    dataset: str
    mask_kind: str
    targets: npt.NDArray[np.int64]
    correct: npt.NDArray[np.bool_]
    labels: tuple[str, ...]
    config: EvalConfig
    step: int
    blur_sigma: float
    scores: tuple[MethodScores, ...]
    sanity: tuple[SanityCurve, ...]
    skipped: Mapping[str, str]
    examples: Examples
    seconds: float
    checks: Checks | None = None

    @property
    def n_images(self) -> int:
        """Number of images evaluated."""
        return len(self.targets)

    @property
    def accuracy(self) -> float:
        """Share of images whose top-1 class is one of the ground-truth classes."""
        return float(self.correct.mean())

    def score(self, method: str) -> MethodScores:
        """The scores of one method."""
        for s in self.scores:
            if s.method == method:
                return s
        raise OptionError(
            f"method {method!r} was not evaluated; have {[s.method for s in self.scores]}"
        )

    def curve(self, method: str) -> SanityCurve:
        """The sanity-check curve of one method."""
        for c in self.sanity:
            if c.method == method:
                return c
        raise OptionError(f"no sanity curve for {method!r}; have {[c.method for c in self.sanity]}")

    def to_markdown(self) -> str:
        """The results table (and settings) as markdown."""
        from gradtap.runtime.evaluate.report import to_markdown

        return to_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: settings, means and per-image scores, curves, sanity."""
        from gradtap.runtime.evaluate.report import to_dict

        return to_dict(self)
