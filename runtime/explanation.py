"""The Explanation result, and the shared first and last step of every map method."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from gradtap.runtime.errors import OptionError
from gradtap.runtime.preprocess import Geometry
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import Rows, TargetSpec, needs_logits, onehot, resolve, softmax

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Explanation:
    """Maps for a batch of (image, target) rows, with what is needed to read them.

    Attributes:
        method: the method's registry name, e.g. ``"gradcam"``.
        maps: raw maps at native resolution, one per row: [R, h, w] (tap resolution for the CAM
            family, input resolution otherwise) or [R, 3, H, W] for colour gradient images
            (guided backprop, deconvnet, guided Grad-CAM). Not normalised.
        image_index: [R] which input image each row explains.
        target: [R] the class each row explains.
        logits: [R, classes] the model's logits for the row's image.
        labels: the model's class names.
        extras: method-specific arrays, e.g. ``completeness_error`` for Integrated Gradients.
        geometries: per input image, how to map maps back onto it (set by :class:`Explainer`).
    """

    method: str
    maps: Array
    image_index: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    logits: Array
    labels: tuple[str, ...]
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    geometries: tuple[Geometry, ...] | None = None

    @property
    def probs(self) -> Array:
        """[R, classes] softmax probabilities."""
        return softmax(self.logits)

    @property
    def predicted(self) -> npt.NDArray[np.int64]:
        """[R] the predicted (top-1) class of each row's image."""
        return np.argmax(self.logits, axis=1).astype(np.int64)

    @property
    def predicted_prob(self) -> Array:
        """[R] probability of the predicted class."""
        return self.probs.max(axis=1)

    @property
    def target_prob(self) -> Array:
        """[R] probability of the explained class."""
        return self.probs[np.arange(len(self.target)), self.target]

    @property
    def target_labels(self) -> tuple[str, ...]:
        """Class names of the explained targets."""
        return tuple(self.labels[t] for t in self.target)

    @property
    def predicted_labels(self) -> tuple[str, ...]:
        """Class names of the predictions."""
        return tuple(self.labels[t] for t in self.predicted)


@dataclass(frozen=True)
class Prepared:
    """A batch expanded to rows: ``x`` [R, 3, H, W], one-hot ``seed`` [R, classes]."""

    x: Array
    rows: Rows
    seed: Array
    image_logits: Array | None


def check_pixels(x: Array) -> None:
    """Inputs are RGB pixels in [0, 1] (normalisation is inside the graph)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise OptionError(
            f"input pixels must lie in [0, 1] (the graph normalises), got [{lo:.4g}, {hi:.4g}]"
        )


def prepare(session: ExplainSession, x: Array, target: TargetSpec) -> Prepared:
    """Validate ``x``, resolve ``target`` (one forward call if it needs the prediction)."""
    x = session.check_input(x)
    check_pixels(x)
    logits = session.logits(x) if needs_logits(target) else None
    rows = resolve(target, session.info.labels, len(x), logits)
    seed = onehot(rows.target, session.info.num_classes)
    return Prepared(x=x[rows.image_index], rows=rows, seed=seed, image_logits=logits)


def finish(
    method: str,
    maps: Array,
    prep: Prepared,
    session: ExplainSession,
    *,
    row_logits: Array | None = None,
    extras: Mapping[str, Any] | None = None,
) -> Explanation:
    """Wrap maps into an Explanation; ``row_logits`` are the logits of ``prep.x`` if known."""
    if row_logits is None:
        image_logits = prep.image_logits
        if image_logits is None:
            first = np.unique(prep.rows.image_index, return_index=True)[1]
            image_logits = session.logits(prep.x[first])
        row_logits = image_logits[prep.rows.image_index]
    return Explanation(
        method=method,
        maps=np.asarray(maps, dtype=np.float32),
        image_index=prep.rows.image_index,
        target=prep.rows.target,
        logits=np.asarray(row_logits, dtype=np.float32),
        labels=session.info.labels,
        extras=MappingProxyType(dict(extras or {})),
    )
