"""The Explanation result, and the shared first and last step of every map method."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.image.geometry import Geometry
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import (
    Rows,
    TargetSpec,
    needs_logits,
    onehot,
    probabilities,
    resolve,
)

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
        head: the graph's probability head (``ModelInfo.head``): ``"Sigmoid"`` makes
            :attr:`probs` per-class sigmoids.
        extras: method-specific arrays, e.g. ``completeness_error`` for Integrated Gradients.
        geometries: per input image, how to map maps back onto it (set by :class:`Explainer`).
        images: the original photos, RGB float in [0, 1] (set by :class:`Explainer`), for
            :meth:`overlay` and :meth:`plot`.

    In a notebook an Explanation shows as a picture of its rows (``_repr_png_``); ``repr``
    names the method, each row's image, target and probability, and the map shape.
    """

    method: str
    maps: Array
    image_index: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    logits: Array
    labels: tuple[str, ...]
    head: str | None = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    geometries: tuple[Geometry, ...] | None = None
    images: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        from gradtap.runtime.present.show import describe

        return describe(self)

    def _repr_png_(self) -> bytes:
        from gradtap.runtime.present.show import png

        return png(self)

    @property
    def signed(self) -> bool:
        """Whether the maps are signed (IG, signed saliency): shown with a diverging colour map."""
        from gradtap.runtime.present.show import is_signed

        return is_signed(self)

    def heatmap(self, row: int = 0, *, shared: bool = False, outlier_perc: float = 2.0) -> Array:
        """Row ``row`` as an [H, W] map on its photo: [0, 1], or [-1, 1] when :attr:`signed`.

        ``shared=True`` scales all rows of the same image together (several targets compare).
        """
        from gradtap.runtime.present.show import heatmap

        return heatmap(self, row, shared=shared, outlier_perc=outlier_perc)

    def overlay(self, row: int = 0, **options: Any) -> npt.NDArray[np.uint8]:
        """Row ``row`` blended over its photo, RGB uint8 (options: ``shared``, ``colormap``,
        ``image_weight``); the area outside the model's centre crop greyed and hatched."""
        from gradtap.runtime.present.show import overlay

        return overlay(self, row, **options)

    def plot(self, rows: Any = None, **options: Any) -> Any:
        """A matplotlib figure of ``rows`` (default all) with colour bars (the ``plot`` extra)."""
        from gradtap.runtime.present.show import plot

        return plot(self, rows, **options)

    @property
    def probs(self) -> Array:
        """[R, classes] probabilities (softmax, or sigmoids for a multi-label head)."""
        return probabilities(self.logits, self.head)

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
    """A batch expanded to rows: ``x`` [R, 3, H, W], one-hot ``seed`` [R, classes].

    With ``top1`` the targets are the predicted classes, not known yet: the seed is zero and the
    graph seeds each row's top-1 class itself (``seed_top1``), so one call predicts and explains.
    """

    x: Array
    rows: Rows
    seed: Array
    image_logits: Array | None
    top1: bool = False

    def settled(self, logits: Array) -> Prepared:
        """The same rows with deferred top-1 targets filled in from the call's ``logits``."""
        if not self.top1:
            return self
        target = np.argmax(logits, axis=1).astype(np.int64)
        rows = Rows(image_index=self.rows.image_index, target=target)
        return replace(self, rows=rows, seed=onehot(target, logits.shape[1]), top1=False)


def check_pixels(x: Array) -> None:
    """Inputs are RGB pixels in [0, 1] (normalisation is inside the graph)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise OptionError(
            f"input pixels must lie in [0, 1] (the graph normalises), got [{lo:.4g}, {hi:.4g}]"
        )


def prepare(
    session: ExplainSession, x: Array, target: TargetSpec, *, defer_top1: bool = False
) -> Prepared:
    """Validate ``x``, resolve ``target`` (one forward call if it needs the prediction).

    With ``defer_top1`` and ``target=None`` no forward call is made: the returned rows are
    settled by :meth:`Prepared.settled` from the logits of the method's own call, which must
    pass ``top1=prep.top1`` to :meth:`ExplainSession.run`.
    """
    x = session.check_input(x)
    check_pixels(x)
    if defer_top1 and target is None:
        n = len(x)
        rows = Rows(image_index=np.arange(n, dtype=np.int64), target=np.full(n, -1, np.int64))
        seed = np.zeros((n, session.info.num_classes), np.float32)
        return Prepared(x=x, rows=rows, seed=seed, image_logits=None, top1=True)
    logits = session.logits(x) if needs_logits(target) else None
    rows = resolve(target, session.info.labels, len(x), logits)
    seed = onehot(rows.target, session.info.num_classes)
    rows_x = (
        x
        if len(rows.image_index) == len(x) and (rows.image_index == np.arange(len(x))).all()
        else x[rows.image_index]
    )
    return Prepared(x=session.trust(rows_x), rows=rows, seed=seed, image_logits=logits)


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
            image_logits = session.logits(session.trust(prep.x[first]))
        row_logits = image_logits[prep.rows.image_index]
    return Explanation(
        method=method,
        maps=np.asarray(maps, dtype=np.float32),
        image_index=prep.rows.image_index,
        target=prep.rows.target,
        logits=np.asarray(row_logits, dtype=np.float32),
        labels=session.info.labels,
        head=session.info.head,
        extras=MappingProxyType(dict(extras or {})),
    )
