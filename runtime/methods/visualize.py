"""Class-model visualisation: gradient ascent on class logits, in pixel space."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import class_index, onehot, softmax

Array = npt.NDArray[np.float32]
Progress = Callable[[int, Array, Array], None]
INITS = ("mean", "zeros", "noise")


@dataclass(frozen=True)
class Visualization:
    """Images that maximise class logits, and how the ascent went.

    Attributes:
        images: [K, H, W, 3] RGB in [0, 1], one per target.
        target: [K] the classes.
        logits: [K, steps + 1] the target logit before each step and after the last.
        probs: [K, steps + 1] the target probability likewise.
        labels: the model's class names.
    """

    images: Array
    target: npt.NDArray[np.int64]
    logits: Array
    probs: Array
    labels: tuple[str, ...]


@dataclass(frozen=True)
class AscentConfig:
    """Settings of the ascent (Yosinski et al. 2015 regularisers).

    Attributes:
        steps: gradient steps.
        lr: mean absolute pixel change per step (the gradient is scaled to unit mean |g|).
        l2: decay of the image towards the mean colour after each step (0 = none).
        blur_every: blur the image every this many steps (0 = never).
        blur_sigma: Gaussian blur sigma in pixels.
        jitter: random shift of up to this many pixels before each step.
        seed: random seed for jitter and noise.
    """

    steps: int = 150
    lr: float = 0.02
    l2: float = 1e-3
    blur_every: int = 4
    blur_sigma: float = 0.5
    jitter: int = 4
    seed: int | None = 0

    def check(self) -> None:
        """Raise OptionError for out-of-range settings."""
        ints = {"steps": self.steps, "blur_every": self.blur_every, "jitter": self.jitter}
        bad = [f"{k}={v!r}" for k, v in ints.items() if not isinstance(v, int) or v < 0]
        bad += [] if self.steps >= 1 else ["steps must be >= 1"]
        bad += [] if self.lr > 0 else [f"lr={self.lr!r} must be > 0"]
        bad += [] if 0 <= self.l2 < 1 else [f"l2={self.l2!r} must lie in [0, 1)"]
        bad += [] if self.blur_sigma >= 0 else [f"blur_sigma={self.blur_sigma!r} must be >= 0"]
        if bad:
            raise OptionError(f"invalid class-visualisation settings: {', '.join(bad)}")


def class_visualization(
    session: ExplainSession,
    target: int | str | Sequence[int | str],
    *,
    init: str | Array = "mean",
    config: AscentConfig | None = None,
    callback: Progress | None = None,
) -> Visualization:
    """Class model visualisation (Simonyan et al. 2013, https://arxiv.org/abs/1312.6034).

    Gradient ascent on the target logit from the model's mean colour (its zero input), noise or
    an image, with L2 decay, periodic blur, jitter and pixel clipping (Yosinski et al. 2015,
    https://arxiv.org/abs/1506.06579). All targets ascend together in one batch.

    Args:
        session: the model.
        target: one class (index or name) or several.
        init: ``"mean"`` (normalisation mean colour), ``"zeros"`` (black), ``"noise"``, or an
            RGB image [H, W, 3] in [0, 1] at the model's input size.
        config: ascent settings (:class:`AscentConfig` defaults when ``None``).
        callback: called after each step with (step, target logits [K], probabilities [K]).
    """
    cfg = config or AscentConfig()
    cfg.check()
    targets = [target] if isinstance(target, (int, str, np.integer)) else list(target)
    cls = np.array([class_index(t, session.info.labels) for t in targets], dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    mean = _mean_colour(session)
    x = _initial(init, session, len(cls), mean, rng)
    seed = onehot(cls, session.info.num_classes)
    rows = np.arange(len(cls))
    logits_hist, probs_hist = [], []
    for step in range(cfg.steps):
        dy, dx = rng.integers(-cfg.jitter, cfg.jitter + 1, size=2) if cfg.jitter else (0, 0)
        run = session.run(np.roll(x, (dy, dx), axis=(2, 3)), seed)
        grad = np.roll(run.grad_input, (-dy, -dx), axis=(2, 3))
        logits_hist.append(run.logits[rows, cls])
        probs_hist.append(softmax(run.logits)[rows, cls])
        scale = np.abs(grad).mean(axis=(1, 2, 3), keepdims=True) + 1e-12
        x = x + np.float32(cfg.lr) * grad / scale
        x = mean + np.float32(1 - cfg.l2) * (x - mean)
        if cfg.blur_every and cfg.blur_sigma > 0 and (step + 1) % cfg.blur_every == 0:
            x = _blur(x, cfg.blur_sigma)
        x = np.clip(x, 0.0, 1.0).astype(np.float32)
        if callback is not None:
            callback(step, logits_hist[-1], probs_hist[-1])
    final = session.logits(x)
    logits_hist.append(final[rows, cls])
    probs_hist.append(softmax(final)[rows, cls])
    return Visualization(
        images=np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
        target=cls,
        logits=np.stack(logits_hist, axis=1).astype(np.float32),
        probs=np.stack(probs_hist, axis=1).astype(np.float32),
        labels=session.info.labels,
    )


def _mean_colour(session: ExplainSession) -> Array:
    mean = session.info.mean or (0.5, 0.5, 0.5)
    return np.asarray(mean, np.float32).reshape(1, 3, 1, 1)


def _initial(
    init: str | Array, session: ExplainSession, k: int, mean: Array, rng: np.random.Generator
) -> Array:
    h, w = session.info.input_size
    if isinstance(init, str):
        if init not in INITS:
            raise OptionError(f"init {init!r} unknown; valid: {list(INITS)} or an RGB image")
        if init == "zeros":
            return np.zeros((k, 3, h, w), np.float32)
        x = np.broadcast_to(mean, (k, 3, h, w)).astype(np.float32)
        if init == "noise":
            x = np.clip(x + 0.1 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
        return x
    img = np.asarray(init, dtype=np.float32)
    if img.shape != (h, w, 3) or img.min() < 0 or img.max() > 1:
        raise OptionError(
            f"init image must be RGB [{h}, {w}, 3] in [0, 1] (use to_input), got {img.shape}"
        )
    return np.repeat(img.transpose(2, 0, 1)[None], k, axis=0).astype(np.float32)


def _blur(x: Array, sigma: float) -> Array:
    out = np.empty_like(x)
    for i, im in enumerate(x):
        out[i] = cv2.GaussianBlur(im.transpose(1, 2, 0), (0, 0), sigma).transpose(2, 0, 1)
    return out
